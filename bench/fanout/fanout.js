// Fan-out load client: N dashboards on the websocket sink (`ws`) or the socketio sink
// (`sio`, socket.io-client over WebSocket). Each counts the events it gets and samples their
// latency from ingest (the event's `receivedAt`, set by enrich) to arrival. After a warm-up
// once all are connected, measures for SECONDS and prints one JSON object with the raw
// figures (scripts/bench-fanout.sh runs several of these processes and adds them up):
//   {"mode","clients","seconds","counts":[per dashboard],"latencies_ms":[samples],"disconnects"}
//   node fanout.js ws|sio URL CLIENTS SECONDS [WARMUP]
// NODE_PATH must hold `ws` and `socket.io-client` (scripts/deps.sh installs them).
const [mode, url, clientsArg, secondsArg, warmupArg] = process.argv.slice(2);
const clients = Number(clientsArg), seconds = Number(secondsArg), warmup = Number(warmupArg || 2);
let measuring = false;
const counts = new Array(clients).fill(0);
const latencies = [];
let connected = 0, disconnects = 0;

function onEvent(i, text) {
  if (!measuring) return;
  counts[i] += 1;
  // Every dashboard's every 10th event, and all of the first dashboard's.
  if (counts[i] % 10 === 0 || i === 0) {
    const e = typeof text === "string" ? JSON.parse(text) : text;
    latencies.push(Date.now() - Date.parse(e.receivedAt));
  }
}

const sockets = [];
for (let i = 0; i < clients; i++) {
  if (mode === "ws") {
    const WebSocket = require("ws");
    const s = new WebSocket(url);
    s.on("open", () => { connected += 1; });
    s.on("close", () => { if (measuring) disconnects += 1; });
    s.on("message", (data) => onEvent(i, data.toString()));
    sockets.push(() => s.close());
  } else {
    const { io } = require("socket.io-client");
    const s = io(url, { transports: ["websocket"], reconnection: false });
    s.on("connect", () => { connected += 1; });
    s.on("disconnect", () => { if (measuring) disconnects += 1; });
    s.on("new_event", (e) => onEvent(i, e));
    sockets.push(() => s.close());
  }
}

const waitConnected = setInterval(() => {
  if (connected < clients) return;
  clearInterval(waitConnected);
  setTimeout(() => {
    measuring = true;
    setTimeout(() => {
      measuring = false;
      console.log(JSON.stringify({ mode, clients, seconds, counts, latencies_ms: latencies, disconnects }));
      sockets.forEach((close) => close());
      process.exit(0);
    }, seconds * 1000);
  }, warmup * 1000);
}, 20);

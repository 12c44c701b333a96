// Fan-out load client: N dashboards on the websocket sink (`ws`) or the socketio sink
// (`sio`, socket.io-client over WebSocket). Each counts the events it gets and their latency
// from ingest (the event's `receivedAt`, set by enrich) to arrival. Prints one JSON object
// after SECONDS of measuring (after a warm-up).
//   node fanout.js ws|sio URL CLIENTS SECONDS [WARMUP]
// NODE_PATH must hold `ws` and `socket.io-client` (scripts/deps.sh installs them).
const [mode, url, clientsArg, secondsArg, warmupArg] = process.argv.slice(2);
const clients = Number(clientsArg), seconds = Number(secondsArg), warmup = Number(warmupArg || 2);
let measuring = false;
const counts = new Array(clients).fill(0);
const latencies = [];
let connected = 0;

function onEvent(i, text) {
  if (!measuring) return;
  counts[i] += 1;
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
    s.on("message", (data) => onEvent(i, data.toString()));
    sockets.push(() => s.close());
  } else {
    const { io } = require("socket.io-client");
    const s = io(url, { transports: ["websocket"], reconnection: false });
    s.on("connect", () => { connected += 1; });
    s.on("new_event", (e) => onEvent(i, e));
    sockets.push(() => s.close());
  }
}

const waitConnected = setInterval(() => {
  if (connected < clients) return;
  clearInterval(waitConnected);
  console.error(`${clients} connected`);
  setTimeout(() => {
    measuring = true;
    setTimeout(() => {
      measuring = false;
      latencies.sort((a, b) => a - b);
      const pct = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] : null;
      const sorted = [...counts].sort((a, b) => a - b);
      console.log(JSON.stringify({
        mode, clients,
        events_per_dashboard_per_sec: Math.round(sorted[Math.floor(clients / 2)] / seconds),
        slowest_dashboard_per_sec: Math.round(sorted[0] / seconds),
        deliveries_per_sec: Math.round(counts.reduce((a, b) => a + b, 0) / seconds),
        p50_ms: pct(0.5), p99_ms: pct(0.99),
      }));
      sockets.forEach((close) => close());
      process.exit(0);
    }, seconds * 1000);
  }, warmup * 1000);
}, 20);

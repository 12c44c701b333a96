// A Socket.IO client for the end-to-end tests, on the real npm socket.io-client@4.
//   node socketio_client.js URL '{"transports":["websocket"],"path":"/socket.io/","auth":{...},"query":{...}}'
// (socket.io-client's options; reconnection is off unless asked for, and "emitOnConnect": EVENT
// sends EVENT with {} on every (re)connection, as a dashboard re-joins its room)
// Prints one JSON line per thing it sees on stdout:
//   {"on":"connect","sid":…,"transport":"websocket"|"polling"}, {"on":"disconnect","reason":…},
//   {"on":EVENT,"data":…} for every event from the server, {"on":"ack","id":N,"data":…}.
// Reads one JSON command per line on stdin:
//   {"emit":EVENT,"data":…}              send an event
//   {"emit":EVENT,"data":…,"ack":N}      send an event asking for an acknowledgement (printed as "ack" with id N)
//   {"close":true}                       disconnect and exit
const { io } = require("socket.io-client");
const readline = require("readline");

const url = process.argv[2];
const opts = JSON.parse(process.argv[3] || "{}");
const onConnect = opts.emitOnConnect;
delete opts.emitOnConnect;
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const socket = io(url, Object.assign({ reconnection: false, timeout: 10000 }, opts));
socket.on("connect", () => {
  out({ on: "connect", sid: socket.id, transport: socket.io.engine.transport.name });
  if (onConnect) socket.emit(onConnect, {});
});
socket.on("connect_error", (e) => out({ on: "connect_error", message: String(e && e.message) }));
socket.on("disconnect", (reason) => out({ on: "disconnect", reason }));
socket.onAny((event, data) => out({ on: event, data }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.close) {
    socket.close();
    setTimeout(() => process.exit(0), 50);
  } else if (cmd.ack !== undefined) {
    socket.timeout(15000).emit(cmd.emit, cmd.data, (err, data) => out({ on: "ack", id: cmd.ack, data, error: err ? String(err) : undefined }));
  } else {
    socket.emit(cmd.emit, cmd.data);
  }
});

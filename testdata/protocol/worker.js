// A supervisor worker in Node (core modules only). Run:
//   supervisor -- node worker.js
// It serves HTTP on the socket the supervisor passes as fd 3 (standalone: on
// $PORT). Node has no unix datagram sockets in core, so it sends the worker
// protocol through systemd-notify (Debian package "systemd"), one short-lived
// process per message: READY=1 once listening, WATCHDOG=1 every
// WATCHDOG_USEC/2, X_REQUESTS=N every 0.25 s when N changed. The master
// counts a message from any process in the worker's process group, which a
// child of node is. Without systemd-notify, --ready listen (or auto) still
// sees the worker ready. On SIGTERM it stops accepting, finishes what it
// accepted (answering with "Connection: close"), closes idle keep-alive
// connections, and exits 0.
'use strict';
const http = require('http');
const { execFile } = require('child_process');

// notify sends one message; messages go out one at a time, in order.
let sending = Promise.resolve();
let warned = false;
function notify(state) {
  if (!process.env.NOTIFY_SOCKET) return sending;
  sending = sending.then(() => new Promise((done) => {
    execFile('systemd-notify', [state], (err) => {
      // err.signal: the SIGTERM to the worker's group reached it too.
      if (err && !err.signal && !warned) { warned = true; console.error(`worker: ${err.message}`); }
      done();
    });
  }));
  return sending;
}

let requests = 0;
let draining = false;
const server = http.createServer((req, res) => {
  requests++;
  if (draining) res.setHeader('Connection', 'close'); // a busy keep-alive connection ends too
  res.end(`hello from pid ${process.pid}\n`);
});

const inherited = process.env.LISTEN_PID === String(process.pid) && process.env.LISTEN_FDS;
server.listen(inherited ? { fd: 3 } : { port: Number(process.env.PORT || 8080) }, () => notify('READY=1'));

let sent = 0;
const reports = setInterval(() => {
  if (requests !== sent) { sent = requests; notify(`X_REQUESTS=${sent}`); }
}, 250);
const usec = Number(process.env.WATCHDOG_USEC || 0);
const forUs = (process.env.WATCHDOG_PID || String(process.pid)) === String(process.pid);
const beats = usec > 0 && forUs ? setInterval(() => notify('WATCHDOG=1'), usec / 2000) : null;

process.on('SIGTERM', () => {
  draining = true;
  notify('STOPPING=1');
  server.close(() => { // stop accepting; called once every connection has ended
    clearInterval(reports);
    clearInterval(beats);
    notify(`X_REQUESTS=${requests}`).then(() => process.exit(0));
  });
  server.closeIdleConnections();
});

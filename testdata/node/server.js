// A tiny HTTP server for the supervisor's Node tests: run unmodified under
// the supervisor, which hands it the listening socket as fd 3
// (systemd socket-activation convention):
//   supervisor --ready auto -- node testdata/node/server.js
// It answers every request with its own pid. On SIGTERM it drains: it stops
// accepting, closes idle keep-alive connections, answers what is in flight
// with "Connection: close" (a busy keep-alive connection would otherwise
// never end), and exits once the last connection is gone.
'use strict';
const http = require('http');

let draining = false;
const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close');
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from pid ${process.pid}\n`);
});

server.listen({ fd: 3 });

process.on('SIGTERM', () => {
  draining = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

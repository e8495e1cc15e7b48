'use strict';
// Broadcast server on Node's `ws`, written the way its README shows: a WebSocketServer,
// the "server broadcast" loop over wss.clients with client.send(data, { binary }), and the
// README's ping/pong heartbeat to drop dead connections. No permessage-deflate (ws's
// server default). Messages come from crier's publisher protocol (publisher.js).
//
//   node ws-server.js --listen 127.0.0.1:8080 --publish-socket /tmp/peer.sock

const { WebSocketServer, WebSocket } = require('ws');
const { listenPublisher, onShutdown, parseArgs } = require('./publisher');

const { host, port, socket } = parseArgs(process.argv.slice(2));

const wss = new WebSocketServer({ host, port, backlog: 4096, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  ws.on('error', () => {});
  ws.on('message', () => {}); // subscribers have nothing to say
});

// The heartbeat from ws's README, at crier's default ping interval.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (ws.isAlive === false) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, 30_000);

function broadcast(payload, isBinary) {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(payload, { binary: isBinary });
  }
}

let ready = 0;
const announce = () => {
  if (++ready === 2) {
    console.error(`ready ws=${host}:${port} publish=${socket} server=ws/${require('ws/package.json').version} node=${process.version}`);
  }
};
wss.on('listening', announce);
const publisher = listenPublisher(socket, broadcast, announce);

onShutdown(() => {
  clearInterval(heartbeat);
  publisher.close();
  wss.close();
});

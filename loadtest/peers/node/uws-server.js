'use strict';
// Broadcast server on uWebSockets.js, written the way its examples do it: one App, a
// ws('/*') route whose open handler subscribes the socket to topics, and app.publish() for
// every message (uWS frames it once and queues it to each subscriber of the topic). Like
// crier, every socket hears the broadcast channel `*`, and also the channels named in its
// URL's `?channels=a,b` (one uWS topic per channel, ws.subscribe() in open). No compression
// (uWS.DISABLED, the default), automatic pings (idleTimeout), and a 1 MiB per-connection
// backpressure limit like crier's --max-queue-bytes. Messages come from crier's publisher
// protocol on a Unix socket (publisher.js, Node's net module on the same event loop).
//
//   node uws-server.js --listen 127.0.0.1:8080 --publish-socket /tmp/peer.sock

const uWS = require('@trufflesuite/uws-js-unofficial');
const { listenPublisher, onShutdown, parseArgs } = require('./publisher');

// This package falls back to a pure-JS implementation when its native addon does not load;
// that would not be uWebSockets, so refuse to run.
if (!String(uWS.App).includes('[native code]')) {
  console.error('uWebSockets.js native addon did not load');
  process.exit(1);
}

const { host, port, socket } = parseArgs(process.argv.slice(2));
const TOPIC = 'broadcast';
// A channel's topic; the prefix keeps a channel named "broadcast" apart from `*`.
const topicOf = (channel) => (channel === '*' ? TOPIC : `ch:${channel}`);

const app = uWS.App().ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 1024 * 1024,
  idleTimeout: 120,
  // The upgrade uWS does by default, plus the channels from the query for open().
  upgrade: (res, req, context) => {
    const list = new URLSearchParams(req.getQuery() || '').get('channels');
    res.upgrade(
      { channels: list ? list.split(',').filter((c) => c.length > 0) : [] },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    ws.subscribe(TOPIC);
    // v20.30 hands the user data back through getUserData(); older ones merged it into ws.
    const data = typeof ws.getUserData === 'function' ? ws.getUserData() : ws;
    for (const c of data.channels) ws.subscribe(topicOf(c));
  },
  message: () => {}, // subscribers have nothing to say
});

function broadcast(payload, isBinary, channel) {
  app.publish(topicOf(channel), payload, isBinary);
}

let listenSocket = null;
let ready = 0;
const announce = () => {
  if (++ready === 2) {
    console.error(`ready ws=${host}:${port} publish=${socket} server=uWebSockets.js/${require('@trufflesuite/uws-js-unofficial/package.json').version} node=${process.version}`);
  }
};
app.listen(host, port, (token) => {
  if (!token) {
    console.error(`cannot listen on ${host}:${port}`);
    process.exit(1);
  }
  listenSocket = token;
  announce();
});
const publisher = listenPublisher(socket, broadcast, announce);

onShutdown(() => {
  publisher.close();
  if (listenSocket) uWS.us_listen_socket_close(listenSocket);
});

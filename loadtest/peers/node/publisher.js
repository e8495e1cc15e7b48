'use strict';
// crier's publisher protocol on a Unix socket, shared by the two Node peers:
//
//   PUB <channel> <nbytes> [text|binary]\r\n<payload>\r\n  ->  +OK <seq>\r\n
//   PING\r\n                                               ->  +PONG\r\n
//
// Commands may be pipelined and split anywhere across reads. Lines end in \r\n or \n.
// The channel is handed to broadcast() with the payload: uws-server.js publishes to that
// channel's topic (crier's semantics: `*` reaches everyone), ws-server.js ignores it and
// sends every message to every connection (enough for crier-load's broadcast modes, which
// publish to `*`; peers.sh does not run it in channels mode). Replies number the messages
// per channel from 1, as crier does.

const fs = require('node:fs');
const net = require('node:net');
const { isUtf8 } = require('node:buffer');

const MAX_LINE = 1024;
const MAX_PAYLOAD = 1024 * 1024;

// listenPublisher(path, broadcast(payload: Buffer, isBinary: boolean, channel: string)) -> net.Server
function listenPublisher(path, broadcast, onListening) {
  const seqs = new Map();
  try {
    fs.unlinkSync(path);
  } catch {
    // no stale socket file
  }
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    let pending = null; // { channel, n, binary } while waiting for a payload
    sock.on('data', (chunk) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      let off = 0;
      let out = '';
      for (;;) {
        if (pending === null) {
          const nl = buf.indexOf(10, off);
          if (nl < 0) {
            if (buf.length - off > MAX_LINE) return fail(sock, out, 'line too long');
            break;
          }
          if (nl - off > MAX_LINE) return fail(sock, out, 'line too long');
          const end = nl > off && buf[nl - 1] === 13 ? nl - 1 : nl;
          const parts = buf.toString('latin1', off, end).split(' ');
          off = nl + 1;
          if (parts[0] === 'PING' && parts.length === 1) {
            out += '+PONG\r\n';
          } else if (parts[0] === 'PUB' && (parts.length === 3 || parts.length === 4)) {
            const n = Number(parts[2]);
            if (!/^[0-9]+$/.test(parts[2]) || n > MAX_PAYLOAD) {
              return fail(sock, out, `malformed length '${parts[2]}'`);
            }
            const type = parts[3] || 'text';
            pending = { channel: parts[1], n, binary: type === 'binary', badType: type !== 'text' && type !== 'binary' ? type : null };
          } else {
            out += `-ERR unknown command '${parts[0]}'\r\n`;
          }
        } else {
          const { channel, n, binary, badType } = pending;
          // payload, then \r\n or \n
          if (buf.length - off < n + 1) break;
          let term = 0;
          if (buf[off + n] === 10) term = 1;
          else if (buf[off + n] === 13) {
            if (buf.length - off < n + 2) break;
            if (buf[off + n + 1] === 10) term = 2;
          }
          if (term === 0) return fail(sock, out, 'payload not followed by CRLF');
          const payload = buf.subarray(off, off + n);
          off += n + term;
          pending = null;
          if (badType !== null) {
            out += `-ERR bad type '${badType}': expected text or binary\r\n`;
          } else if (!binary && !isUtf8(payload)) {
            out += '-ERR text payload is not valid UTF-8\r\n';
          } else {
            const seq = (seqs.get(channel) || 0) + 1;
            seqs.set(channel, seq);
            broadcast(payload, binary, channel);
            out += `+OK ${seq}\r\n`;
          }
        }
      }
      buf = off === buf.length ? Buffer.alloc(0) : buf.subarray(off);
      if (out) sock.write(out);
    });
    sock.on('error', () => {});
  });
  server.listen(path, onListening);
  return server;
}

function fail(sock, out, reason) {
  sock.end(`${out}-ERR ${reason}\r\n`);
}

// onShutdown(fn): SIGTERM/SIGINT run fn, then exit.
function onShutdown(fn) {
  const stop = () => {
    try {
      fn();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// parseArgs(argv) -> { host, port, socket } from --listen HOST:PORT --publish-socket PATH
function parseArgs(argv) {
  const args = { listen: '127.0.0.1:8080', 'publish-socket': '/tmp/crier-peer.sock' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) || i + 1 >= argv.length) {
      throw new Error(`usage: --listen HOST:PORT --publish-socket PATH (got '${argv[i]}')`);
    }
    args[key] = argv[i + 1];
  }
  const colon = args.listen.lastIndexOf(':');
  return {
    host: args.listen.slice(0, colon),
    port: Number(args.listen.slice(colon + 1)),
    socket: args['publish-socket'],
  };
}

module.exports = { listenPublisher, onShutdown, parseArgs };

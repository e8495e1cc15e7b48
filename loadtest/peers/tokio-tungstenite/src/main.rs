//! Broadcast server on tokio-tungstenite, written the way its users write one: a
//! current-thread tokio runtime (one core), `accept_async` per connection, one task per
//! connection that forwards a `tokio::sync::broadcast` channel into the WebSocket sink, and
//! crier's publisher protocol on a Unix socket feeding that channel.
//!
//! Frames: tungstenite has no API to write pre-encoded bytes, so each connection's
//! `WebSocketStream` encodes every frame itself (header plus a copy of the payload into its
//! write buffer). The payload is shared: `Message::Text` holds `Utf8Bytes`, a reference-
//! counted `Bytes`, so the broadcast channel clones a pointer, not 256 bytes. Messages that
//! are already waiting are `feed`ed and flushed together (one `write` for several frames),
//! which is what `StreamExt::forward` does; a lone message costs what `send` costs.
//!
//! Channels: like crier, every connection hears the broadcast channel `*` (the
//! `tokio::sync::broadcast` channel above) and the channels named in its URL's
//! `?channels=a,b`. For those the peer does what tokio's chat example does for its peers,
//! per channel: a connection registers an `mpsc::Sender` under each of its channels, and a
//! publish to a channel `try_send`s the message (a reference-counted clone) to each of
//! them; a connection whose queue is full ([`CHANNEL_CAPACITY`]) misses the message.
//!
//! Configuration is tungstenite's default `WebSocketConfig` unless `--read-buffer-size` is
//! given. Its default read buffer is 128 KiB per connection, and tungstenite zero-fills the
//! free part of it (up to 128 KiB) before every read attempt, so every connection touches
//! all of it: subscribers that send nothing are better served by a few KiB.
//!
//! ```sh
//! peer-tokio-tungstenite --listen 127.0.0.1:8080 --publish-socket /tmp/peer.sock [--read-buffer-size 4096]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use crier::channel::ChannelName;
use crier::publish::protocol::{self, Parsed};
use crier::ws::frame::MessageKind;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages a connection may fall behind by before it loses some: 1 MiB of 256-byte
/// messages, like crier's default `--max-queue-bytes`.
const CHANNEL_CAPACITY: usize = 4096;
const MAX_PAYLOAD: usize = 1024 * 1024;

/// Channel name → the queues of the connections subscribed to it, by connection id.
#[derive(Default)]
struct Channels {
    next_id: AtomicU64,
    subscribers: Mutex<HashMap<String, HashMap<u64, mpsc::Sender<Message>>>>,
}

impl Channels {
    fn subscribe(&self, names: &[String], tx: &mpsc::Sender<Message>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut map = self.subscribers.lock().unwrap();
        for n in names {
            map.entry(n.clone()).or_default().insert(id, tx.clone());
        }
        id
    }

    fn unsubscribe(&self, names: &[String], id: u64) {
        let mut map = self.subscribers.lock().unwrap();
        for n in names {
            if let Some(subs) = map.get_mut(n) {
                subs.remove(&id);
                if subs.is_empty() {
                    map.remove(n);
                }
            }
        }
    }

    fn publish(&self, name: &str, msg: &Message) {
        if let Some(subs) = self.subscribers.lock().unwrap().get(name) {
            for tx in subs.values() {
                let _ = tx.try_send(msg.clone()); // full: this subscriber misses it
            }
        }
    }
}

/// The `channels` parameter of a request's query (`%2C` for `,` allowed); `*` and
/// duplicates are left out (every connection hears `*` anyway).
fn channels_of(query: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        if let Some(list) = pair.strip_prefix("channels=") {
            for c in list.replace("%2C", ",").replace("%2c", ",").split(',') {
                if !c.is_empty() && c != "*" && !out.iter().any(|o| o == c) {
                    out.push(c.to_string());
                }
            }
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (listen, socket_path, config) = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!(
                "{e}\nusage: peer-tokio-tungstenite --listen HOST:PORT --publish-socket PATH [--read-buffer-size BYTES]"
            );
            std::process::exit(2);
        }
    };
    let (tx, _) = broadcast::channel::<Message>(CHANNEL_CAPACITY);
    let channels = Arc::new(Channels::default());

    let tcp = TcpSocket::new_v4().expect("socket");
    tcp.set_reuseaddr(true).expect("SO_REUSEADDR");
    tcp.bind(listen).unwrap_or_else(|e| panic!("cannot listen on {listen}: {e}"));
    let listener = tcp.listen(4096).expect("listen");
    let _ = std::fs::remove_file(&socket_path);
    let publishers =
        UnixListener::bind(&socket_path).unwrap_or_else(|e| panic!("cannot bind {}: {e}", socket_path.display()));
    eprintln!(
        "ready ws={listen} publish={} server=tokio-tungstenite/0.30.0 read_buffer_size={}",
        socket_path.display(),
        config.read_buffer_size
    );

    let mut sigterm = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut sigint = signal(SignalKind::interrupt()).expect("SIGINT handler");
    loop {
        tokio::select! {
            conn = listener.accept() => if let Ok((stream, _)) = conn {
                tokio::spawn(subscriber(stream, tx.clone(), channels.clone(), config));
            },
            conn = publishers.accept() => if let Ok((stream, _)) = conn {
                tokio::spawn(publisher(stream, tx.clone(), channels.clone()));
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket_path);
}

fn parse_args() -> Result<(SocketAddr, PathBuf, WebSocketConfig), String> {
    let mut listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut socket = PathBuf::from("/tmp/crier-peer.sock");
    let mut config = WebSocketConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value.parse().map_err(|e| format!("--listen {value}: {e}"))?,
            "--publish-socket" => socket = value.into(),
            "--read-buffer-size" => {
                let n = value.parse().map_err(|e| format!("--read-buffer-size {value}: {e}"))?;
                config = config.read_buffer_size(n);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok((listen, socket, config))
}

/// One WebSocket subscriber: every broadcast message out, incoming frames read so that
/// pings are answered and a close is noticed.
async fn subscriber(
    stream: TcpStream,
    tx: broadcast::Sender<Message>,
    channels: Arc<Channels>,
    config: WebSocketConfig,
) {
    let _ = stream.set_nodelay(true);
    let mut query = None;
    let callback = |req: &Request, resp: Response| {
        query = req.uri().query().map(str::to_owned);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    let names = channels_of(query.as_deref());
    let (chan_tx, mut chan_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    let id = channels.subscribe(&names, &chan_tx);
    drop(chan_tx);
    let mut rx = tx.subscribe();
    drop(tx);
    let (mut sink, mut source) = ws.split();
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg {
                Ok(msg) => msg,
                Err(RecvError::Lagged(_)) => continue, // fell behind: those messages are lost
                Err(RecvError::Closed) => break,
            },
            Some(msg) = chan_rx.recv(), if !names.is_empty() => msg,
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue, // pongs to our pings are queued by tungstenite itself
            },
        };
        if sink.feed(first).await.is_err() {
            break;
        }
        // Whatever else is already waiting goes out in the same write.
        let mut ok = true;
        loop {
            let next = match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => chan_rx.try_recv().ok(),
            };
            let Some(msg) = next else { break };
            if sink.feed(msg).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || sink.flush().await.is_err() {
            break;
        }
    }
    channels.unsubscribe(&names, id);
}

/// One publisher connection speaking crier's pipelined protocol.
async fn publisher(mut stream: UnixStream, tx: broadcast::Sender<Message>, channels: Arc<Channels>) {
    let mut seqs: HashMap<ChannelName, u64> = HashMap::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // crier's own parser, so that the peer answers publishers exactly as crier does.
        let mut used = 0;
        let mut close = false;
        while let Some((cmd, n)) = protocol::parse(&buf[used..], MAX_PAYLOAD) {
            used += n;
            match cmd {
                Parsed::Publish { channel, kind, payload } => {
                    let payload = Bytes::copy_from_slice(payload);
                    let msg = match kind {
                        MessageKind::Binary => Message::Binary(payload),
                        // The parser has checked that a text payload is UTF-8.
                        MessageKind::Text => Message::Text(Utf8Bytes::try_from(payload).expect("UTF-8")),
                    };
                    if channel.is_broadcast() {
                        let _ = tx.send(msg); // Err only when nobody is subscribed
                    } else {
                        channels.publish(channel.as_str(), &msg);
                    }
                    let seq = seqs.entry(channel).or_insert(0);
                    *seq += 1;
                    out.extend_from_slice(format!("+OK {seq}\r\n").as_bytes());
                }
                Parsed::Ping => out.extend_from_slice(b"+PONG\r\n"),
                Parsed::Empty => {}
                Parsed::Refused { message, close: fatal, .. } => {
                    out.extend_from_slice(format!("-ERR {message}\r\n").as_bytes());
                    if fatal {
                        close = true;
                        break;
                    }
                }
            }
        }
        buf.advance(used);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            return;
        }
    }
}

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

use bytes::{Buf, Bytes, BytesMut};
use crier::channel::ChannelName;
use crier::ws::frame::MessageKind;
use crier::publish::protocol::{self, Parsed};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages a connection may fall behind by before it loses some: 1 MiB of 256-byte
/// messages, like crier's default `--max-queue-bytes`.
const CHANNEL_CAPACITY: usize = 4096;
const MAX_PAYLOAD: usize = 1024 * 1024;

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
                tokio::spawn(subscriber(stream, tx.clone(), config));
            },
            conn = publishers.accept() => if let Ok((stream, _)) = conn {
                tokio::spawn(publisher(stream, tx.clone()));
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
async fn subscriber(stream: TcpStream, tx: broadcast::Sender<Message>, config: WebSocketConfig) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
    let mut rx = tx.subscribe();
    drop(tx);
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(RecvError::Lagged(_)) => continue, // fell behind: those messages are lost
                    Err(RecvError::Closed) => break,
                };
                if sink.feed(msg).await.is_err() {
                    break;
                }
                // Whatever else is already waiting goes out in the same write.
                let mut ok = true;
                loop {
                    match rx.try_recv() {
                        Ok(msg) => {
                            if sink.feed(msg).await.is_err() {
                                ok = false;
                                break;
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    break;
                }
            }
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {} // pongs to our pings are queued by tungstenite itself
            },
        }
    }
}

/// One publisher connection speaking crier's pipelined protocol.
async fn publisher(mut stream: UnixStream, tx: broadcast::Sender<Message>) {
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
                    let seq = seqs.entry(channel).or_insert(0);
                    *seq += 1;
                    let _ = tx.send(msg); // Err only when nobody is subscribed
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

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

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::{Buf, Bytes, BytesMut};
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
const MAX_LINE: usize = 1024;
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
    let mut seqs: std::collections::HashMap<Bytes, u64> = Default::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    // (channel, payload length, binary, bad type) of a PUB whose payload has not fully arrived
    let mut pending: Option<(Bytes, usize, bool, Option<String>)> = None;
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut fatal = None;
        loop {
            if let Some((_, n, _, _)) = &pending {
                let n = *n;
                let term = match (buf.get(n), buf.get(n + 1)) {
                    (None, _) => break,
                    (Some(b'\n'), _) => 1,
                    (Some(b'\r'), None) => break,
                    (Some(b'\r'), Some(b'\n')) => 2,
                    _ => {
                        fatal = Some("payload not followed by CRLF".to_string());
                        break;
                    }
                };
                let (channel, _, binary, bad_type) = pending.take().unwrap();
                let payload = Bytes::copy_from_slice(&buf[..n]);
                buf.advance(n + term);
                let msg = if let Some(t) = bad_type {
                    Err(format!("bad type '{t}': expected text or binary"))
                } else if binary {
                    Ok(Message::Binary(payload))
                } else {
                    Utf8Bytes::try_from(payload)
                        .map(Message::Text)
                        .map_err(|_| "text payload is not valid UTF-8".to_string())
                };
                match msg {
                    Ok(msg) => {
                        let seq = seqs.entry(channel).or_insert(0);
                        *seq += 1;
                        let _ = tx.send(msg); // Err only when nobody is subscribed
                        out.extend_from_slice(format!("+OK {seq}\r\n").as_bytes());
                    }
                    Err(e) => out.extend_from_slice(format!("-ERR {e}\r\n").as_bytes()),
                }
                continue;
            }
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_LINE {
                    fatal = Some("line too long".to_string());
                }
                break;
            };
            if nl > MAX_LINE {
                fatal = Some("line too long".to_string());
                break;
            }
            let line = buf.split_to(nl + 1).freeze();
            let line = line.strip_suffix(b"\n").unwrap();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            match parts.as_slice() {
                [b"PING"] => out.extend_from_slice(b"+PONG\r\n"),
                [b"PUB", channel, n, rest @ ..] if rest.len() <= 1 => {
                    let n = std::str::from_utf8(n).ok().filter(|n| n.bytes().all(|b| b.is_ascii_digit()));
                    let Some(n) = n.and_then(|n| n.parse::<usize>().ok()).filter(|&n| n <= MAX_PAYLOAD) else {
                        fatal = Some(format!("malformed length '{}'", String::from_utf8_lossy(parts[2])));
                        break;
                    };
                    let (binary, bad_type) = match rest.first().copied() {
                        None | Some(b"text") => (false, None),
                        Some(b"binary") => (true, None),
                        Some(t) => (false, Some(String::from_utf8_lossy(t).into_owned())),
                    };
                    buf.reserve(n + 2);
                    pending = Some((Bytes::copy_from_slice(channel), n, binary, bad_type));
                }
                [cmd, ..] => out.extend_from_slice(
                    format!("-ERR unknown command '{}'\r\n", String::from_utf8_lossy(cmd)).as_bytes(),
                ),
                [] => {}
            }
        }
        if let Some(reason) = &fatal {
            out.extend_from_slice(format!("-ERR {reason}\r\n").as_bytes());
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if fatal.is_some() {
            return;
        }
    }
}

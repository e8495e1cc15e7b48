//! Publishers: the Unix-socket ingress that feeds the hub, and the `crier publish` client.
//!
//! The listener and every publisher connection run on the control thread, next to the
//! hub, so a publish is parsed, sequenced, encoded and handed to the shards without
//! crossing a thread. Replies are batched: one write answers every command parsed from one
//! read, which is what makes pipelining cheap.

pub mod client;
pub mod protocol;

use std::cell::RefCell;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use monoio::net::{UnixListener, UnixStream};

use crate::config::Config;
use crate::hub::{Hub, SHARD_QUEUE_HIGH_WATER};
use crate::metrics::{Metrics, PublishError};
use crate::sockio::{recv_some, send_all};
use protocol::{MAX_LINE, Parsed};

/// What publisher tasks share on the control thread.
pub struct Ingress {
    pub hub: RefCell<Hub>,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
}

/// Why the publisher socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another crier is already listening on {0}; stop it or choose another --publish-socket")]
    InUse(String),
    #[error("cannot create publisher socket {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Binds the publisher socket: replaces a stale file from a crashed run, refuses to steal
/// a live one, and applies `--publish-socket-mode`.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, BindError> {
    let shown = path.display().to_string();
    let io_err = |source| BindError::Io { path: shown.clone(), source };
    if path.symlink_metadata().is_ok() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(shown)),
            Err(_) => {
                tracing::info!("removing stale publisher socket {shown}");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// Accepts publishers until the process exits.
pub async fn accept_loop(listener: UnixListener, ingress: Rc<Ingress>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(serve(stream, ingress.clone()));
            }
            Err(e) => {
                tracing::warn!("publisher accept: {e}");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one publisher connection.
async fn serve(stream: UnixStream, ingress: Rc<Ingress>) {
    ingress.metrics.publishers.fetch_add(1, Relaxed);
    let result = serve_inner(&stream, &ingress).await;
    if let Err(e) = result {
        tracing::debug!("publisher connection ended: {e}");
    }
    ingress.metrics.publishers.fetch_sub(1, Relaxed);
}

async fn serve_inner(stream: &UnixStream, ingress: &Ingress) -> io::Result<()> {
    let max_payload = ingress.cfg.max_message_bytes;
    let max_buf = max_payload + MAX_LINE + 4;
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    let mut replies = Vec::with_capacity(1024);
    // Cluster mode: Redis numbers each publish; its answers are spliced into `replies` in
    // command order (offset in `replies`, pending answer).
    let cluster = crate::cluster::get();
    let mut awaiting = Vec::new();
    loop {
        let mut pos = 0;
        let mut close = false;
        while let Some((cmd, used)) = protocol::parse(&buf[pos..len], max_payload) {
            pos += used;
            match cmd {
                Parsed::Publish { channel, kind, payload } => {
                    if ingress.metrics.draining.load(Relaxed) {
                        ingress.metrics.publish_error(PublishError::ShuttingDown);
                        replies.extend_from_slice(b"-ERR server shutting down\r\n");
                        close = true;
                        break;
                    }
                    if let Some(cluster) = cluster {
                        // Sent now, answered later: every publish of this read is in flight
                        // at once (pipelined), and nothing is numbered here.
                        awaiting.push((replies.len(), cluster.publish(channel, kind, payload)));
                        continue;
                    }
                    let seq = ingress.hub.borrow_mut().publish(channel, kind, payload);
                    replies.extend_from_slice(format!("+OK {seq}\r\n").as_bytes());
                }
                Parsed::Ping => replies.extend_from_slice(b"+PONG\r\n"),
                Parsed::Empty => {}
                Parsed::Refused { error, message, close: fatal } => {
                    ingress.metrics.publish_error(error);
                    replies.extend_from_slice(format!("-ERR {message}\r\n").as_bytes());
                    if fatal {
                        close = true;
                        break;
                    }
                }
            }
        }
        buf.copy_within(pos..len, 0);
        len -= pos;
        if !awaiting.is_empty() {
            crate::cluster::splice_replies(&mut replies, &mut awaiting, &ingress.metrics).await;
        }
        if !replies.is_empty() {
            send_all(stream, &replies).await?;
            replies.clear();
        }
        if close {
            return Ok(());
        }
        // Backpressure: a shard that cannot keep up slows publishers instead of growing
        // its queue without bound. Accepted messages are never dropped.
        while ingress.hub.borrow().backlog() > SHARD_QUEUE_HIGH_WATER {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(max_buf), 0);
        } else if len == 0 && buf.len() > 64 * 1024 {
            buf = vec![0u8; 16 * 1024]; // give back what a large message needed
        }
        let n = recv_some(stream, &mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

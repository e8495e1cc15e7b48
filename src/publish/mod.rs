//! Publishers: the Unix-socket ingress that feeds the hub, and the `crier publish` client.
//!
//! The listener and every publisher connection run on the control thread, next to the
//! hub, so a publish is parsed, sequenced, encoded and handed to the shards without
//! crossing a thread. Replies are batched: one write answers every command parsed from one
//! read, which is what makes pipelining cheap. Publishers take turns (`turns.rs`): each
//! handles a bounded number of commands and bytes, then lets the others run, so one that
//! floods a backlog cannot hold back everyone else's messages.
//!
//! In cluster mode (`--redis`) the hub numbers nothing: each `PUB` of a turn goes to the
//! cluster thread at once (pipelined), and the turn's replies are written once Redis has
//! answered them all, in command order. That wait is crier's, not the publisher's: it does
//! not count against `--publish-timeout`, whose clock starts again after it. The turn
//! limits and the publisher cap apply unchanged.

pub mod client;
pub mod protocol;
mod socket;
mod turns;

#[cfg(test)]
mod proptests;

pub use socket::{BindError, Bound, Checked, SocketFile, UnsafeDir, bind, private_dir};

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use monoio::net::{UnixListener, UnixStream};

use crate::cluster::ClusterHandle;
use crate::config::Config;
use crate::hub::Hub;
use crate::ops::capacity::{AcceptErrors, MAX_PUBLISHERS};
use crate::ops::metrics::{Metrics, PublishError};
use crate::shard::sockio::{recv_some, send_all, send_now};
use protocol::{MAX_LINE, Parsed};
use turns::{TURN_BYTES, TURN_COMMANDS, Turns};

/// What publisher tasks share on the control thread.
pub struct Ingress {
    pub hub: RefCell<Hub>,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Publishers take turns: see [`turns`].
    turns: Turns,
    /// Cluster mode (`--redis`): publishes go through Redis, which numbers them.
    cluster: Option<ClusterHandle>,
}

impl Ingress {
    /// Waits while a shard's queue is over its high-water mark (`Hub::backlogged`): the
    /// backpressure publishers and, in cluster mode, deliveries from Redis get. True if it
    /// waited.
    async fn wait_for_shards(&self) -> bool {
        let mut waited = false;
        while self.hub.borrow().backlogged() {
            monoio::time::sleep(Duration::from_millis(1)).await;
            waited = true;
        }
        waited
    }

    pub fn new(hub: Hub, cfg: Arc<Config>, metrics: Arc<Metrics>, cluster: Option<ClusterHandle>) -> Self {
        Self { hub: RefCell::new(hub), cfg, metrics, turns: Turns::default(), cluster }
    }
}

/// How often the accept loop checks that the file at `--publish-socket` is still its socket.
const SOCKET_CHECK: Duration = Duration::from_secs(1);

/// Accepts publishers until the process exits, and every [`SOCKET_CHECK`] checks the
/// socket file (see [`SocketFile::check`]); a recreated socket replaces the listener here.
/// At most `MAX_PUBLISHERS` are served at once (their descriptors are part of the reserve,
/// see `capacity`); one more is told so and closed.
pub async fn accept_loop(listener: UnixListener, file: Arc<SocketFile>, ingress: Rc<Ingress>) {
    let mut listener = listener;
    let mut next_check = Instant::now() + SOCKET_CHECK;
    let open = Rc::new(Cell::new(0usize));
    let mut errors = AcceptErrors::default();
    // Before any publisher is accepted, so that it has run before anyone yields.
    let pump = ingress.clone();
    monoio::spawn(async move { pump.turns.pump().await });
    loop {
        let wait = next_check.saturating_duration_since(Instant::now());
        // The control thread runs the epoll driver, where dropping a pending accept at the
        // timeout cancels only a readiness wait (no accepted socket can be lost).
        match monoio::time::timeout(wait, listener.accept()).await {
            Ok(Ok((stream, _))) if open.get() >= MAX_PUBLISHERS => {
                ingress.metrics.publish_error(PublishError::TooManyPublishers);
                let reply = format!("-ERR too many publishers: {MAX_PUBLISHERS} connected\r\n");
                let _ = send_now(stream.as_raw_fd(), reply.as_bytes());
            }
            Ok(Ok((stream, _))) => {
                let (ingress, open) = (ingress.clone(), open.clone());
                open.set(open.get() + 1);
                monoio::spawn(async move {
                    serve(stream, ingress).await;
                    open.set(open.get() - 1);
                });
            }
            Ok(Err(e)) => errors.handle("publisher", &e).await,
            Err(_) => {}
        }
        if Instant::now() < next_check {
            continue;
        }
        next_check = Instant::now() + SOCKET_CHECK;
        if let Checked::Recreated(new) = file.check(&ingress.cfg, &ingress.metrics) {
            match UnixListener::from_std(new) {
                // The old listener's file is gone: nobody can connect to it any more.
                Ok(new) => listener = new,
                Err(e) => tracing::error!("publisher socket {}: {e}", file.path().display()),
            }
        }
    }
}

/// On the control thread: hands every message from Redis to the hub, in the order the
/// cluster thread delivers them (seq order per channel).
pub fn spawn_cluster_deliveries(deliveries: crate::cluster::Deliveries, ingress: Rc<Ingress>) {
    monoio::spawn(async move {
        while let Ok(d) = deliveries.recv_async().await {
            // The same backpressure as publishers get: a shard that cannot keep up stops
            // this loop, which fills the bounded delivery queue and stops the cluster
            // thread reading pub/sub (see `cluster::start`).
            ingress.wait_for_shards().await;
            let mut hub = ingress.hub.borrow_mut();
            hub.deliver(d.channel, d.seq, d.epoch, d.kind, &d.payload, d.received_at);
            if deliveries.is_empty() {
                hub.send_pending();
            }
        }
    });
}

/// Appends `+OK <seq>\r\n` without formatting machinery or an allocation: one per publish.
fn push_ok(replies: &mut Vec<u8>, seq: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = seq;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    replies.extend_from_slice(b"+OK ");
    replies.extend_from_slice(&digits[i..]);
    replies.extend_from_slice(b"\r\n");
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
    // Work done in this turn (see `turns`): commands handled and bytes they used.
    let (mut turn_commands, mut turn_bytes) = (0, 0);
    let timeout = ingress.cfg.publish_timeout;
    // When the incomplete command at the front of `buf` began to arrive.
    let mut started: Option<Instant> = None;
    // Cluster mode: Redis numbers each publish; its answers are spliced into `replies` in
    // command order (offset in `replies`, pending answer). At most one turn's commands
    // are awaited at once, so this is bounded by TURN_COMMANDS.
    let cluster = ingress.cluster.as_ref();
    let mut awaiting = Vec::new();
    loop {
        let mut pos = 0;
        let mut close = false;
        let mut turn_over = false;
        loop {
            if turn_commands >= TURN_COMMANDS || turn_bytes >= TURN_BYTES {
                turn_over = true;
                break;
            }
            let Some((cmd, used)) = protocol::parse(&buf[pos..len], max_payload) else {
                break;
            };
            pos += used;
            turn_commands += 1;
            turn_bytes += used;
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
                    push_ok(&mut replies, seq);
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
        // Before any +OK goes out: an accepted message is in every shard's queue.
        ingress.hub.borrow_mut().send_pending();
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
        // The clock of --publish-timeout runs while a command is incomplete, from its
        // first byte: a new command starts it, a publisher with nothing buffered (idle
        // between commands) has none.
        if len == 0 {
            started = None;
        } else if pos > 0 || started.is_none() {
            started = Some(Instant::now());
        }
        // Backpressure: a shard that cannot keep up slows publishers instead of growing
        // its queue without bound. Accepted messages are never dropped.
        let waited = ingress.wait_for_shards().await;
        if waited && started.is_some() {
            started = Some(Instant::now()); // crier's wait, not the publisher's
        }
        if turn_over {
            // Let the other publishers (and /metrics) run, then go on with what is
            // already buffered before reading more.
            ingress.turns.yield_turn().await;
            (turn_commands, turn_bytes) = (0, 0);
            continue;
        }
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(max_buf), 0);
        } else if len == 0 && buf.len() > 64 * 1024 {
            buf = vec![0u8; 16 * 1024]; // give back what a large message needed
        }
        let n = match started {
            None => recv_some(stream, &mut buf[len..]).await?,
            Some(since) => {
                let left = (since + timeout).saturating_duration_since(Instant::now());
                // The control thread runs the epoll driver: dropping the read at the
                // deadline cancels only a readiness wait.
                match monoio::time::timeout(left, recv_some(stream, &mut buf[len..])).await {
                    Ok(read) => read?,
                    Err(_) => {
                        ingress.metrics.publish_error(PublishError::Timeout);
                        let reply = format!(
                            "-ERR publish timeout: command not complete within {} (--publish-timeout)\r\n",
                            humantime::format_duration(timeout)
                        );
                        // Bounded too: a publisher that is stuck may not read either.
                        let _ = monoio::time::timeout(timeout, send_all(stream, reply.as_bytes())).await;
                        return Ok(());
                    }
                }
            }
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ok_replies_are_formatted_as_before() {
        for seq in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = b"x".to_vec();
            super::push_ok(&mut out, seq);
            assert_eq!(out, format!("x+OK {seq}\r\n").into_bytes());
        }
    }
}

//! The `crier-cluster` thread: a current-thread tokio runtime that owns the Redis
//! connections.
//!
//! A *session* is one multiplexed command connection plus one pub/sub connection
//! (PSUBSCRIBE to every channel of the prefix). While a session is up:
//! - publishes are batched (whatever is queued when a call can be made, up to
//!   [`MAX_BATCH`]) into one script call, and up to [`MAX_IN_FLIGHT`] calls are pipelined;
//! - pub/sub messages go through the [`Sequencer`]; a gap is read back from the stream
//!   (XRANGE) and delivered before the message that revealed it;
//! - an idle subscription is probed: the node publishes to its own probe channel and ends
//!   the session if the probe does not come back (centrifugal/centrifugo#1189).
//!
//! When the session breaks, every publish is answered "unavailable" until the next one is
//! up; reconnects back off exponentially with full jitter. Each new session first
//! resynchronises every channel this node has delivered (HMGET + XRANGE), then goes live.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::PubSubStream;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::link::{Link, subscribe};
use super::receive::receive;
use super::script;
use super::sequencer::Sequencer;
use super::{
    Backoff, CONNECT_TIMEOUT, Command, Delivery, Fetched, PublishFailure, PublishOutcome, RESPONSE_TIMEOUT,
    RedisConfig, node_id,
};
use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::frame::MessageKind;

/// Script calls in flight at once. Kept below the connection's request buffer
/// ([`PIPELINE_BUFFER`]) so that queueing a request never waits: see [`dispatch`].
const MAX_IN_FLIGHT: usize = 16;
const PIPELINE_BUFFER: usize = 64;
/// Messages, and payload bytes, per script call.
const MAX_BATCH: usize = 128;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Runs the cluster thread until the process exits.
pub fn run(
    cfg: RedisConfig,
    metrics: Arc<Metrics>,
    commands: flume::Receiver<Command>,
    deliveries: flume::Sender<Delivery>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            // Without the runtime every publish is refused (the command channel closes).
            tracing::error!("cluster mode: cannot start the tokio runtime: {e}");
            return;
        }
    };
    let client = match redis::Client::open(cfg.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("--redis {}: {e}", cfg.shown_url());
            return;
        }
    };
    let node = Node {
        prefix: cfg.prefix.clone(),
        cfg,
        metrics,
        client,
        commands,
        deliveries,
        sequencer: Sequencer::default(),
        node_id: node_id(),
        script: redis::Script::new(script::PUBLISH_LUA),
    };
    rt.block_on(node.run());
}

struct Node {
    cfg: RedisConfig,
    prefix: String,
    metrics: Arc<Metrics>,
    client: redis::Client,
    commands: flume::Receiver<Command>,
    deliveries: flume::Sender<Delivery>,
    sequencer: Sequencer,
    node_id: u64,
    script: redis::Script,
}

/// One publish waiting for its script call.
struct Pending {
    channel: ChannelName,
    kind: MessageKind,
    payload: Bytes,
    reply: tokio::sync::oneshot::Sender<PublishOutcome>,
}

impl Node {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut logged_down = false;
        loop {
            match self.connect().await {
                Ok((link, stream)) => {
                    self.metrics.redis.up.store(true, Relaxed);
                    tracing::info!("redis {}: connected", self.cfg.shown_url());
                    backoff.reset();
                    logged_down = false;
                    let why = self.session(&link, stream).await;
                    self.metrics.redis.up.store(false, Relaxed);
                    tracing::warn!(
                        "redis {}: {why}; publishes are refused until it is back, subscribers stay connected",
                        self.cfg.shown_url()
                    );
                }
                Err(e) if !logged_down => {
                    tracing::warn!("redis {}: cannot connect: {e}; retrying with back-off", self.cfg.shown_url());
                    logged_down = true;
                }
                Err(e) => tracing::debug!("redis {}: cannot connect: {e}", self.cfg.shown_url()),
            }
            self.refuse_for(backoff.next_wait()).await;
            self.metrics.redis.reconnects.fetch_add(1, Relaxed);
        }
    }

    /// While there is no session: answer every request "unavailable" at once.
    async fn refuse_for(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                cmd = self.commands.recv_async() => match cmd {
                    Ok(cmd) => cmd.refuse(),
                    // The control thread is gone: the process is exiting.
                    Err(_) => std::future::pending::<()>().await,
                },
            }
        }
    }

    async fn connect(&self) -> Result<(Link, PubSubStream), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        let mut conn =
            self.client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| e.to_string())?;
        // Load the script once per session; every publish then uses EVALSHA.
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script::PUBLISH_LUA)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        if sha != self.script.get_hash() {
            return Err(format!("SCRIPT LOAD returned {sha}, expected {}", self.script.get_hash()));
        }
        let stream = subscribe(&self.client, &self.prefix).await?;
        let link = Link { conn, broken: Arc::new(Notify::new()), metrics: self.metrics.clone() };
        Ok((link, stream))
    }

    /// Runs one session until it breaks; returns why.
    async fn session(&mut self, link: &Link, stream: PubSubStream) -> &'static str {
        let commands = self.commands.clone();
        let (prefix, script_hash) = (self.prefix.clone(), self.script.get_hash().to_string());
        let cfg = self.cfg.clone();
        tokio::select! {
            why = receive(&self.client, &mut self.sequencer, &self.deliveries, link, stream, &prefix, self.node_id) => why,
            why = serve_commands(&commands, link, &prefix, &script_hash, &cfg) => why,
        }
    }
}

/// Takes publishes off the queue, batches them and keeps up to MAX_IN_FLIGHT script calls
/// in flight. Returns when a request failed for want of a connection.
async fn serve_commands(
    commands: &flume::Receiver<Command>,
    link: &Link,
    prefix: &str,
    sha: &str,
    cfg: &RedisConfig,
) -> &'static str {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let stream_ttl = cfg.stream_ttl.as_millis().to_string();
    let meta_ttl = cfg.meta_ttl.as_millis().to_string();
    let stream_len = cfg.stream_len.to_string();
    loop {
        let first = tokio::select! {
            c = commands.recv_async() => c,
            _ = link.broken.notified() => return "connection lost",
        };
        let Ok(first) = first else {
            std::future::pending::<()>().await;
            return "stopped";
        };
        let first = match first {
            Command::Fetch { channel, after, reply } => {
                spawn_fetch(link, prefix, channel, after, reply);
                continue;
            }
            Command::Publish { channel, kind, payload, reply } => Pending { channel, kind, payload, reply },
        };
        // Waiting for a free slot is what makes batches grow when Redis is busy: everything
        // queued meanwhile joins the next call.
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => p,
            _ = link.broken.notified() => {
                let _ = first.reply.send(Err(PublishFailure::Unavailable));
                return "connection lost";
            }
        };
        let Ok(permit) = permit else { return "stopped" };
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match commands.try_recv() {
                Ok(Command::Publish { channel, kind, payload, reply }) => {
                    bytes += payload.len();
                    batch.push(Pending { channel, kind, payload, reply });
                }
                Ok(Command::Fetch { channel, after, reply }) => spawn_fetch(link, prefix, channel, after, reply),
                Err(_) => break,
            }
        }
        let mut cmd = redis::cmd("EVALSHA");
        let (mut keys, mut args) = (Vec::with_capacity(2 * batch.len()), Vec::with_capacity(3 * batch.len()));
        for p in &batch {
            script::push_message(&mut keys, &mut args, prefix, &p.channel, p.kind, p.payload.clone());
        }
        cmd.arg(sha).arg(keys.len()).arg(&keys).arg(&stream_len).arg(&stream_ttl).arg(&meta_ttl).arg("publish");
        for a in &args {
            cmd.arg(&a[..]);
        }
        dispatch(link, cmd, batch, permit).await;
    }
}

/// Sends one script call and hands its answer to each publisher of the batch.
///
/// The call's future is polled once here, before the next call is built. That first poll
/// puts the request on the connection's queue (it has room: at most MAX_IN_FLIGHT <
/// PIPELINE_BUFFER requests are outstanding, and `unconstrained` keeps tokio's cooperative
/// budget from deferring it), so requests reach Redis in the order publishers sent them,
/// and seqs on a channel follow each publisher's command order. The rest of the wait runs
/// in its own task, so many calls are in flight.
async fn dispatch(link: &Link, cmd: redis::Cmd, batch: Vec<Pending>, permit: OwnedSemaphorePermit) {
    let started = Instant::now();
    let mut conn = link.conn.clone();
    let mut call: Pin<Box<dyn Future<Output = redis::RedisResult<Value>> + Send>> =
        Box::pin(tokio::task::unconstrained(async move { conn.send_packed_command(&cmd).await }));
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    let link = link.clone();
    let finish = move |result: redis::RedisResult<Value>| {
        drop(permit);
        let outcome: Result<Vec<(u64, u64)>, PublishFailure> = match &result {
            Ok(v) => script::parse_reply(v, batch.len()).ok_or_else(|| {
                // Answered, but not as the script answers: something else ran under its
                // name, or it failed after publishing part of the batch.
                tracing::warn!("redis: unexpected reply from the publish script: {v:?}");
                PublishFailure::Unknown
            }),
            Err(e) => {
                link.failed(e);
                Err(failure_of(e))
            }
        };
        link.metrics.redis.record_publish(started.elapsed(), batch.len() as u64);
        for (i, p) in batch.into_iter().enumerate() {
            let _ = p.reply.send(outcome.as_ref().map(|s| s[i].1).map_err(|f| *f));
        }
    };
    match first {
        Poll::Ready(result) => finish(result),
        Poll::Pending => {
            tokio::spawn(async move { finish(call.await) });
        }
    }
}

/// What a failed script call means for its messages. Only a refusal that says the script
/// never ran (`NOSCRIPT`, `BUSY`, `LOADING`), or one that no write of it can pass
/// (`READONLY`, `MASTERDOWN`: a replica), proves nothing was published; a broken connection or a timeout leaves the call's
/// fate unknown, and so does an error raised inside the script (Redis keeps the writes it
/// made before the error).
pub(super) fn failure_of(e: &redis::RedisError) -> PublishFailure {
    let refused_before_running = matches!(e.code(), Some("NOSCRIPT" | "BUSY" | "LOADING" | "MASTERDOWN" | "READONLY"));
    if refused_before_running { PublishFailure::Unavailable } else { PublishFailure::Unknown }
}

fn spawn_fetch(
    link: &Link,
    prefix: &str,
    channel: ChannelName,
    after: u64,
    reply: tokio::sync::oneshot::Sender<Option<Fetched>>,
) {
    let (link, prefix) = (link.clone(), prefix.to_string());
    tokio::spawn(async move {
        let fetched = link.fetch(&prefix, &channel, after + 1, None).await;
        let _ = reply.send(fetched);
    });
}

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
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::script::{self, Addressed, Names};
use super::sequencer::{Sequencer, Verdict};
use super::{Command, DELIVERY_QUEUE, Delivery, Fetched, PublishFailure, PublishOutcome, RedisConfig};
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
/// A Redis that does not answer within this is treated as gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect back-off: from MIN, doubling to MAX, each wait drawn uniformly from [0, cap].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A subscription silent this long is probed; a probe not back within the timeout ends
/// the session.
const PROBE_IDLE: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TICK: Duration = Duration::from_millis(500);

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

/// A number unlikely to be shared by two nodes (for probe channels).
fn node_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 40)
}

/// A cheap random number in [0, 1) for jitter (xorshift on the clock; nothing secret).
fn jitter_fraction() -> f64 {
    let mut x = node_id() | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % 1_000_000) as f64 / 1_000_000.0
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

/// What a session needs to issue commands.
#[derive(Clone)]
struct Link {
    conn: MultiplexedConnection,
    /// Notified by any task whose request failed for want of a connection.
    broken: Arc<Notify>,
    metrics: Arc<Metrics>,
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl Link {
    async fn query(&self, cmd: &redis::Cmd) -> Option<Value> {
        let mut conn = self.conn.clone();
        match conn.send_packed_command(cmd).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    fn failed(&self, e: &redis::RedisError) {
        if is_connection_error(e) {
            self.broken.notify_one();
        } else {
            tracing::warn!("redis refused a command: {e}");
        }
    }

    /// Reads a channel's meta and the stream entries in `from..=to` (`to` None: to the end),
    /// atomically, so that the entries belong to the epoch returned.
    async fn fetch(&self, prefix: &str, channel: &ChannelName, from: u64, to: Option<u64>) -> Option<Fetched> {
        let names = Names::new(prefix, channel);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HMGET").arg(&names.meta).arg("e").arg("s");
        let end = to.map_or_else(|| "+".to_string(), |t| format!("{t}-0"));
        pipe.cmd("XRANGE").arg(&names.stream).arg(format!("{from}-0")).arg(end);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        let [meta, entries] = reply.as_slice() else { return None };
        let Value::Array(meta) = meta else { return None };
        let epoch = meta.first().and_then(script::as_u64);
        let head = meta.get(1).and_then(script::as_u64).unwrap_or(0);
        let entries = match entries {
            Value::Array(items) => items.iter().filter_map(script::parse_entry).collect(),
            _ => Vec::new(),
        };
        Some(Fetched { epoch, head, entries })
    }
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
        let mut backoff = BACKOFF_MIN;
        let mut logged_down = false;
        loop {
            match self.connect().await {
                Ok((link, stream)) => {
                    self.metrics.redis.up.store(true, Relaxed);
                    tracing::info!("redis {}: connected", self.cfg.shown_url());
                    backoff = BACKOFF_MIN;
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
            // Full jitter, so that many nodes do not return to a restarted Redis at once.
            let wait = backoff.mul_f64(jitter_fraction());
            self.refuse_for(wait).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
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
                    Ok(Command::Publish { reply, .. }) => { let _ = reply.send(Err(PublishFailure::Unavailable)); }
                    Ok(Command::Fetch { reply, .. }) => { let _ = reply.send(None); }
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

/// Opens a pub/sub connection subscribed to every channel of the prefix.
async fn subscribe(client: &redis::Client, prefix: &str) -> Result<PubSubStream, String> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "pub/sub connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.psubscribe(script::pattern(prefix)))
        .await
        .map_err(|_| "PSUBSCRIBE timed out".to_string())?
        .map_err(|e| format!("PSUBSCRIBE: {e}"))?;
    Ok(pubsub.into_on_message())
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

/// Consumes pub/sub until the session breaks. When the control thread falls behind (see
/// [`deliver`]) it drops the subscription, with whatever redis-rs has buffered for it,
/// waits for the delivery queue to drain, and subscribes again: the resynchronisation at
/// the start of [`listen`] reads what was missed from the streams. Publishing goes on
/// meanwhile, on the session's command connection.
async fn receive(
    client: &redis::Client,
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    link: &Link,
    stream: PubSubStream,
    prefix: &str,
    node: u64,
) -> &'static str {
    let mut stream = stream;
    loop {
        let mut current = stream;
        match listen(sequencer, deliveries, link, &mut current, prefix, node).await {
            Err(Behind { channel, seq, epoch }) => {
                link.metrics.redis.fell_behind.fetch_add(1, Relaxed);
                // The resynchronisation reads back the channels the sequencer knows. Make
                // it know every channel whose messages are about to be dropped: the one
                // that did not fit, and those redis-rs has already buffered.
                sequencer.missed(&channel, seq, epoch);
                while let Some(Some(msg)) = current.next().now_or_never() {
                    if let (Addressed::Channel(c), Some(m)) = (
                        script::addressed(prefix, msg.get_channel_name()),
                        script::parse_message(msg.get_payload_bytes()),
                    ) {
                        sequencer.missed(&c, m.seq, m.epoch);
                    }
                }
                // Closes the pub/sub connection: redis-rs stops reading it into its buffer.
                drop(current);
                tracing::warn!(
                    "redis: this node fell behind the messages Redis sends it; re-subscribing and reading the streams"
                );
                while deliveries.len() > DELIVERY_QUEUE / 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                stream = match subscribe(client, prefix).await {
                    Ok(s) => s,
                    Err(_) => return "pub/sub reconnect failed",
                };
            }
            Ok(why) => return why,
        }
    }
}

/// The control thread did not take this message within [`BEHIND_AFTER`].
struct Behind {
    channel: ChannelName,
    seq: u64,
    epoch: u64,
}

/// How long [`deliver`] waits for room in the delivery queue before the node counts as
/// behind. It bounds what redis-rs buffers meanwhile (it reads pub/sub into an unbounded
/// channel whether or not anyone takes from it): this long of the node's inbound traffic.
const BEHIND_AFTER: Duration = Duration::from_millis(250);

/// Consumes one subscription: resynchronises first, then delivers in seq order, repairing
/// gaps, and probes when idle. Returns why the subscription (and the session) ended, or
/// `Behind`.
async fn listen(
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    link: &Link,
    stream: &mut PubSubStream,
    prefix: &str,
    node: u64,
) -> Result<&'static str, Behind> {
    let metrics = &link.metrics;
    // Resynchronise: what was published while this node was not subscribed is in the
    // streams. Messages arriving meanwhile wait in the pub/sub stream; the sequencer drops
    // the ones the catch-up already delivered.
    for (channel, pos) in sequencer.positions() {
        let Some(f) = link.fetch(prefix, &channel, pos.seq + 1, None).await else {
            return Ok("resynchronisation failed");
        };
        let f = match f.epoch {
            None => continue, // Redis holds nothing for it; the next message starts an epoch
            Some(e) if e == pos.epoch => f,
            Some(_) => match link.fetch(prefix, &channel, 1, None).await {
                Some(f) => f,
                None => return Ok("resynchronisation failed"),
            },
        };
        let Some(epoch) = f.epoch else { continue };
        repair_from(sequencer, deliveries, metrics, &channel, epoch, f.entries, None).await?;
    }
    let probe_channel = script::probe_channel(prefix, node);
    let mut probe: Option<(String, Instant)> = None;
    let mut probes = 0u64;
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(PROBE_TICK);
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = tick.tick() => {
                match &probe {
                    Some((_, sent)) if sent.elapsed() > PROBE_TIMEOUT => {
                        metrics.redis.probes_failed.fetch_add(1, Relaxed);
                        return Ok("subscription probe did not come back");
                    }
                    None if last_heard.elapsed() > PROBE_IDLE => {
                        probes += 1;
                        let token = format!("{node}:{probes}");
                        let mut cmd = redis::cmd("PUBLISH");
                        cmd.arg(&probe_channel).arg(&token);
                        let l = link.clone();
                        tokio::spawn(async move { l.query(&cmd).await });
                        probe = Some((token, Instant::now()));
                    }
                    _ => {}
                }
                continue;
            }
        };
        let Some(msg) = msg else { return Ok("subscription closed") };
        last_heard = Instant::now();
        match script::addressed(prefix, msg.get_channel_name()) {
            Addressed::Probe(n) if n == node => {
                if probe.as_ref().is_some_and(|(t, _)| t.as_bytes() == msg.get_payload_bytes()) {
                    probe = None;
                }
            }
            Addressed::Probe(_) | Addressed::Foreign => {}
            Addressed::Channel(channel) => {
                let Some(m) = script::parse_message(msg.get_payload_bytes()) else {
                    tracing::warn!("redis: malformed message on {}; ignored", msg.get_channel_name());
                    continue;
                };
                probe = None; // anything heard proves the subscription delivers
                match sequencer.check(&channel, m.seq, m.epoch) {
                    Verdict::Duplicate => {}
                    Verdict::Deliver => {
                        deliver(sequencer, deliveries, &channel, m.seq, m.epoch, m.kind, m.payload).await?
                    }
                    Verdict::Missing { from, to } => {
                        // Read the hole back from the stream before this message goes out.
                        let Some(f) = link.fetch(prefix, &channel, from, Some(to)).await else {
                            return Ok("repair failed");
                        };
                        let entries = if f.epoch == Some(m.epoch) { f.entries } else { Vec::new() };
                        repair_from(sequencer, deliveries, metrics, &channel, m.epoch, entries, Some(to)).await?;
                        deliver(sequencer, deliveries, &channel, m.seq, m.epoch, m.kind, m.payload).await?;
                    }
                }
            }
        }
    }
}

/// Delivers fetched entries that the sequencer still lacks, counting what was repaired and
/// what Redis no longer held (up to `to`, or up to the last entry).
async fn repair_from(
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    metrics: &Metrics,
    channel: &ChannelName,
    epoch: u64,
    entries: Vec<(u64, MessageKind, Bytes)>,
    to: Option<u64>,
) -> Result<(), Behind> {
    let start = match sequencer.position(channel) {
        Some(p) if p.epoch == epoch => p.seq,
        _ => 0,
    };
    let mut expected = start + 1;
    for (seq, kind, payload) in entries {
        if seq < expected {
            continue;
        }
        if seq > expected {
            metrics.redis.unrepairable.fetch_add(seq - expected, Relaxed);
        }
        metrics.redis.repaired.fetch_add(1, Relaxed);
        deliver(sequencer, deliveries, channel, seq, epoch, kind, payload).await?;
        expected = seq + 1;
    }
    if let Some(to) = to
        && to >= expected
    {
        let lost = to - expected + 1;
        metrics.redis.unrepairable.fetch_add(lost, Relaxed);
        tracing::warn!("redis: {lost} message(s) of {channel} before seq {} are no longer in its stream", to + 1);
    }
    Ok(())
}

/// Hands one message to the control thread, waiting up to [`BEHIND_AFTER`] for room in its
/// queue. The message counts as delivered only once queued, so after `Behind` the
/// resynchronisation reads it (and what follows) back from the stream.
async fn deliver(
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    channel: &ChannelName,
    seq: u64,
    epoch: u64,
    kind: MessageKind,
    payload: Bytes,
) -> Result<(), Behind> {
    let d = Delivery { channel: channel.clone(), seq, epoch, kind, payload, received_at: Instant::now() };
    match deliveries.try_send(d) {
        Ok(()) => {}
        Err(flume::TrySendError::Full(d)) => match tokio::time::timeout(BEHIND_AFTER, deliveries.send_async(d)).await {
            Ok(_) => {}
            Err(_) => return Err(Behind { channel: channel.clone(), seq, epoch }),
        },
        // The control thread is gone: the process is exiting.
        Err(flume::TrySendError::Disconnected(_)) => {}
    }
    sequencer.delivered(channel, seq, epoch);
    Ok(())
}

//! Redis Cluster: publishes grouped by hash slot, up to [`PER_SLOT`] calls in flight per
//! slot, in publisher order.
//!
//! A script may only touch keys of one slot, and a channel's keys and pub/sub channel
//! share one hash tag, so every call carries the messages of one slot (of one or more
//! channels). Calls are pushed in publisher order and each is queued on the cluster
//! connection at its first poll, in that order (as on a standalone Redis, this leans on
//! redis-rs taking requests first-in first-out: its request channel, its per-node
//! pipeline, and `FuturesUnordered`'s ready queue are all FIFO). Everything queued for a
//! slot while [`PER_SLOT`] of its calls are out joins the next call, so batches grow with
//! load; calls of different slots (so different masters) run side by side, up to
//! [`MAX_CALLS`].
//!
//! Redirections and retries: the cluster client is built with no retries of its own (a
//! retry after a dropped connection could run a publish twice). A call that Redis answers
//! with "not run" (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, NOSCRIPT) is sent again only if it
//! is the newest call of its slot, and no newer call goes out until it is answered: a
//! later call of the slot cannot then have run before it. An older one is refused (`-ERR
//! redis unavailable`), as are retries past [`RETRY_FOR`]. So during a resharding the
//! seqs of a channel still follow its +OKs; some publishes of the moving slot are refused
//! or delayed. ASK is followed with ASKING to the importing node.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisError, RetryMethod, Value};
use tokio::sync::Notify;

use super::script::{self, Names};
use super::slots::slot_of;
use super::{Command, Fetched, PublishFailure, PublishOutcome, RedisConfig};
use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::frame::MessageKind;

/// Script calls in flight at once, over all slots.
pub const MAX_CALLS: usize = 64;
/// Script calls of one slot in flight at once.
pub const PER_SLOT: usize = 8;
/// Messages, and payload bytes, per script call.
const MAX_BATCH: usize = 128;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long a call is retried while Redis says it did not run it (a redirection, a slot
/// migrating, the cluster reconfiguring).
pub const RETRY_FOR: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What both halves of a session share: the cluster connection, and the signal that it
/// broke.
#[derive(Clone)]
pub struct Link {
    pub conn: ClusterConnection,
    pub broken: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Redis answered that it did not run the command, and running it again is safe.
pub fn not_run(e: &RedisError) -> bool {
    matches!(
        e.retry_method(),
        RetryMethod::MovedRedirect
            | RetryMethod::AskRedirect
            | RetryMethod::WaitAndRetry
            | RetryMethod::RefreshSlotsAndRetry
    )
}

/// The route of a slot's master.
pub fn master_of(slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)))
}

impl Link {
    pub fn failed(&self, e: &RedisError) {
        if is_connection_error(e) {
            self.broken.notify_one();
        } else {
            tracing::warn!("redis cluster refused a command: {e}");
        }
    }

    /// Runs `cmd` on the master of `slot`, again while Redis says it did not run it (for
    /// commands whose order does not matter: probes, reads).
    pub async fn route(&self, cmd: &redis::Cmd, slot: u16) -> Result<Value, RedisError> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut again = None;
        loop {
            match send(self, cmd, slot, again.take()).await {
                Err(e) if retryable(&e) && Instant::now() < deadline => again = Some(Again::after(&e)),
                other => return other,
            }
        }
    }

    /// Reads a channel's meta and stream entries `from..=to` in one script run (atomic,
    /// and a single command, so a migrating slot's ASK can be followed).
    pub async fn fetch(&self, prefix: &str, channel: &ChannelName, from: u64, to: Option<u64>) -> Option<Fetched> {
        let names = Names::new(prefix, channel);
        let cmd = script::fetch_cmd(&names, from, to);
        match self.route(&cmd, slot_of(names.pubsub.as_bytes())).await {
            Ok(Value::Array(v)) => script::parse_fetched(&v),
            Ok(other) => {
                tracing::warn!("redis cluster: unexpected reply to a stream read: {other:?}");
                None
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }
}

/// Redis did not run it and says so; sending it again is safe.
fn retryable(e: &RedisError) -> bool {
    not_run(e) || e.code() == Some("NOSCRIPT")
}

/// One publish waiting for its script call.
struct Pending {
    channel: ChannelName,
    kind: MessageKind,
    payload: Bytes,
    reply: tokio::sync::oneshot::Sender<PublishOutcome>,
}

#[derive(Default)]
struct SlotQueue {
    waiting: VecDeque<Pending>,
    /// Calls of this slot out now.
    in_flight: usize,
    /// Calls of this slot sent so far; a call's index is its number.
    sent: u64,
    /// The newest call is being retried: nothing more goes out for this slot until then.
    retrying: bool,
    /// On the list of slots to call.
    listed: bool,
}

impl SlotQueue {
    fn may_send(&self) -> bool {
        !self.retrying && self.in_flight < PER_SLOT && !self.waiting.is_empty()
    }
}

/// One script call and what became of it.
struct Done {
    slot: u16,
    index: u64,
    batch: Vec<Pending>,
    cmd: redis::Cmd,
    result: Result<Value, RedisError>,
    started: Instant,
}

type Call = Pin<Box<dyn Future<Output = Done> + Send>>;

/// How a call is sent again.
enum Again {
    /// After a pause (TRYAGAIN, CLUSTERDOWN, MOVED: the slot map is being refreshed).
    Later,
    /// After loading the script on the slot's master (NOSCRIPT).
    Load,
    /// To the importing node, behind ASKING (ASK: the slot is migrating, the channel's
    /// keys already moved).
    Ask(String, u16),
}

impl Again {
    fn after(e: &RedisError) -> Self {
        if e.code() == Some("NOSCRIPT") {
            return Again::Load;
        }
        match (e.retry_method(), e.redirect_node()) {
            (RetryMethod::AskRedirect, Some((node, _))) => match node.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => {
                    Again::Ask(host.to_string(), port.parse().unwrap_or_default())
                }
                _ => Again::Later,
            },
            _ => Again::Later,
        }
    }
}

/// Sends `cmd` to the master of `slot`, or again as `again` says.
async fn send(link: &Link, cmd: &redis::Cmd, slot: u16, again: Option<Again>) -> Result<Value, RedisError> {
    let mut conn = link.conn.clone();
    match again {
        Some(Again::Ask(host, port)) => {
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").add_command(cmd.clone());
            let at = SingleNodeRoutingInfo::ByAddress { host, port };
            conn.route_pipeline(pipe, 1, 1, at).await.map(|mut v| v.pop().unwrap_or(Value::Nil))
        }
        Some(Again::Load) => {
            let mut l = redis::cmd("SCRIPT");
            l.arg("LOAD").arg(script::PUBLISH_LUA);
            let _ = conn.route_command(l, master_of(slot)).await;
            conn.route_command(cmd.clone(), master_of(slot)).await
        }
        Some(Again::Later) => {
            tokio::time::sleep(RETRY_PAUSE).await;
            conn.route_command(cmd.clone(), master_of(slot)).await
        }
        None => conn.route_command(cmd.clone(), master_of(slot)).await,
    }
}

/// Sends a script call (or sends it again).
fn call(
    link: &Link,
    slot: u16,
    index: u64,
    batch: Vec<Pending>,
    cmd: redis::Cmd,
    started: Instant,
    again: Option<Again>,
) -> Call {
    let link = link.clone();
    Box::pin(async move {
        let result = send(&link, &cmd, slot, again).await;
        Done { slot, index, batch, cmd, result, started }
    })
}

/// The publish half of a session. Returns when the connection broke.
///
/// Up to [`PER_SLOT`] calls of a slot are in flight, sent in publisher order (each call's
/// first poll queues it on the cluster connection, in the order the calls were pushed).
/// A call that Redis did not run is retried only if it is the newest of its slot (no
/// later call of the slot could then have run before it), and no newer call goes out
/// until the retry is answered; an older one is refused instead. Either way the seqs of a
/// channel follow the order of its +OKs.
pub async fn serve_commands(
    commands: &flume::Receiver<Command>,
    link: &Link,
    cfg: &RedisConfig,
    sha: &str,
) -> &'static str {
    let stream_ttl = cfg.stream_ttl.as_millis().to_string();
    let meta_ttl = cfg.meta_ttl.as_millis().to_string();
    let stream_len = cfg.stream_len.to_string();
    let prefix = cfg.prefix.as_str();
    let mut slots: HashMap<u16, SlotQueue> = HashMap::new();
    let mut ready: VecDeque<u16> = VecDeque::new();
    let mut calls: FuturesUnordered<Call> = FuturesUnordered::new();
    let list = |slot: u16, q: &mut SlotQueue, ready: &mut VecDeque<u16>| {
        if q.may_send() && !q.listed {
            q.listed = true;
            ready.push_back(slot);
        }
    };
    let why = loop {
        let take = |cmd: Command, slots: &mut HashMap<u16, SlotQueue>, ready: &mut VecDeque<u16>| match cmd {
            Command::Fetch { channel, after, reply } => {
                let (link, prefix) = (link.clone(), prefix.to_string());
                tokio::spawn(async move {
                    let _ = reply.send(link.fetch(&prefix, &channel, after + 1, None).await);
                });
            }
            Command::Publish { channel, kind, payload, reply } => {
                let slot = slot_of(Names::new(prefix, &channel).pubsub.as_bytes());
                let q = slots.entry(slot).or_default();
                q.waiting.push_back(Pending { channel, kind, payload, reply });
                list(slot, q, ready);
            }
        };
        tokio::select! {
            done = calls.next(), if !calls.is_empty() => {
                let Some(d) = done else { continue };
                let Some(q) = slots.get_mut(&d.slot) else { continue };
                let retry = match &d.result {
                    Err(e) if retryable(e) => {
                        d.index == q.sent && d.started.elapsed() < RETRY_FOR
                    }
                    _ => false,
                };
                if retry && let Err(e) = &d.result {
                    q.retrying = true;
                    let again = Again::after(e);
                    calls.push(call(link, d.slot, d.index, d.batch, d.cmd, d.started, Some(again)));
                    continue;
                }
                if d.index == q.sent {
                    q.retrying = false;
                }
                q.in_flight -= 1;
                finish(link, d.batch, d.result, d.started);
                if q.in_flight == 0 && q.waiting.is_empty() {
                    slots.remove(&d.slot);
                } else {
                    list(d.slot, q, &mut ready);
                }
            }
            c = commands.recv_async() => {
                let Ok(c) = c else {
                    // The control thread is gone: the process is exiting.
                    std::future::pending::<()>().await;
                    break "stopped";
                };
                take(c, &mut slots, &mut ready);
                // Everything else already queued joins this round.
                for _ in 0..4 * MAX_BATCH {
                    let Ok(c) = commands.try_recv() else { break };
                    take(c, &mut slots, &mut ready);
                }
            }
            _ = link.broken.notified() => break "connection lost",
        }
        while calls.len() < MAX_CALLS
            && let Some(slot) = ready.pop_front()
        {
            let Some(q) = slots.get_mut(&slot) else { continue };
            q.listed = false;
            if !q.may_send() {
                continue;
            }
            let mut bytes = 0;
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH
                && bytes < MAX_BATCH_BYTES
                && let Some(p) = q.waiting.pop_front()
            {
                bytes += p.payload.len();
                batch.push(p);
            }
            let (mut keys, mut args) = (Vec::with_capacity(2 * batch.len()), Vec::with_capacity(3 * batch.len()));
            for p in &batch {
                script::push_message(&mut keys, &mut args, prefix, &p.channel, p.kind, p.payload.clone());
            }
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(keys.len()).arg(&keys).arg(&stream_len).arg(&stream_ttl).arg(&meta_ttl).arg("spublish");
            for a in &args {
                cmd.arg(&a[..]);
            }
            q.in_flight += 1;
            q.sent += 1;
            calls.push(call(link, slot, q.sent, batch, cmd, Instant::now(), None));
            // More of this slot may go at once, behind this one.
            list(slot, q, &mut ready);
        }
    };
    // Nothing more will be called in this session: every waiting publish is refused (those
    // in flight are answered "outcome unknown" when their calls are dropped: they were
    // sent, and may have run).
    for (_, q) in slots {
        for p in q.waiting {
            let _ = p.reply.send(Err(PublishFailure::Unavailable));
        }
    }
    drop(calls);
    why
}

/// Hands a call's answer to each publisher of its batch.
fn finish(link: &Link, batch: Vec<Pending>, result: Result<Value, RedisError>, started: Instant) {
    // As with `--redis` (see `redis_thread::failure_of`): "unavailable" only when Redis
    // provably did not run the script (a redirect or a retry-later answer included).
    let outcome: Result<Vec<(u64, u64)>, PublishFailure> = match &result {
        Ok(v) => script::parse_reply(v, batch.len()).ok_or_else(|| {
            tracing::warn!("redis cluster: unexpected reply from the publish script: {v:?}");
            PublishFailure::Unknown
        }),
        Err(e) => {
            link.failed(e);
            Err(if not_run(e) { PublishFailure::Unavailable } else { super::redis_thread::failure_of(e) })
        }
    };
    link.metrics.redis.record_publish(started.elapsed(), batch.len() as u64);
    for (i, p) in batch.into_iter().enumerate() {
        let _ = p.reply.send(outcome.as_ref().map(|s| s[i].1).map_err(|f| *f));
    }
}

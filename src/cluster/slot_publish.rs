//! Redis Cluster: publishes grouped by hash slot, one script call in flight per slot.
//!
//! A script may only touch keys of one slot, and a channel's keys and pub/sub channel
//! share one hash tag, so every call carries the messages of one slot (of one or more
//! channels). Per-channel order holds by construction: a slot's next call is built only
//! after Redis answered the previous one, so the calls of a channel reach Redis in the
//! order publishers sent them whatever redis-rs does inside (it routes each request on its
//! own and may retry one later than the next). Everything queued for a slot while its call
//! is out joins the next call, so batches grow with load. Calls for different slots (and
//! so different masters) run side by side, up to [`MAX_CALLS`].
//!
//! Redirections: the cluster client is built with no retries of its own (a retry after a
//! dropped connection could run a publish twice), and crier retries only the replies that
//! say the script did not run (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, NOSCRIPT), within
//! [`RETRY_FOR`]. During a resharding the slot's call is retried until the new owner takes
//! it; the next call of that slot waits for it, so order is kept and publishes of a
//! migrating slot are only delayed (or refused after [`RETRY_FOR`]).

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
use super::{Command, Fetched, RedisConfig};
use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::frame::MessageKind;

/// Script calls in flight at once, over all slots.
pub const MAX_CALLS: usize = 64;
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
fn not_run(e: &RedisError) -> bool {
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

    /// Runs `cmd` on the master of `slot`, retrying what Redis did not run.
    pub async fn route(&self, cmd: &redis::Cmd, slot: u16) -> Result<Value, RedisError> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut loaded = false;
        loop {
            let mut conn = self.conn.clone();
            match conn.route_command(cmd.clone(), master_of(slot)).await {
                Err(e) if e.code() == Some("NOSCRIPT") && !loaded => {
                    // A master that never saw the script (a promoted replica, a restart
                    // without persistence): load it there and run the call again.
                    loaded = true;
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(script::PUBLISH_LUA);
                    conn.route_command(load, master_of(slot)).await?;
                }
                Err(e) if not_run(&e) && Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
                other => return other,
            }
        }
    }

    /// Reads a channel's meta and stream entries `from..=to` (see [`script::fetch_pipe`]).
    pub async fn fetch(&self, prefix: &str, channel: &ChannelName, from: u64, to: Option<u64>) -> Option<Fetched> {
        let names = Names::new(prefix, channel);
        let pipe = script::fetch_pipe(&names, from, to);
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let mut conn = self.conn.clone();
            match pipe.query_async::<Vec<Value>>(&mut conn).await {
                Ok(v) => return script::parse_fetched(&v),
                Err(e) if not_run(&e) && Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
                Err(e) => {
                    self.failed(&e);
                    return None;
                }
            }
        }
    }
}

/// One publish waiting for its script call.
struct Pending {
    channel: ChannelName,
    kind: MessageKind,
    payload: Bytes,
    reply: tokio::sync::oneshot::Sender<Option<u64>>,
}

#[derive(Default)]
struct SlotQueue {
    waiting: VecDeque<Pending>,
    /// A call of this slot is out.
    busy: bool,
    /// On the list of slots to call.
    listed: bool,
}

type Call = Pin<Box<dyn Future<Output = (u16, Vec<Pending>, Result<Value, RedisError>, Instant)> + Send>>;

/// The publish half of a session. Returns when the connection broke.
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
                if !q.busy && !q.listed {
                    q.listed = true;
                    ready.push_back(slot);
                }
            }
        };
        tokio::select! {
            done = calls.next(), if !calls.is_empty() => {
                let Some((slot, batch, result, started)) = done else { continue };
                finish(link, batch, result, started);
                if let Some(q) = slots.get_mut(&slot) {
                    q.busy = false;
                    if q.waiting.is_empty() {
                        slots.remove(&slot);
                    } else if !q.listed {
                        q.listed = true;
                        ready.push_back(slot);
                    }
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
            let mut bytes = 0;
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH
                && bytes < MAX_BATCH_BYTES
                && let Some(p) = q.waiting.pop_front()
            {
                bytes += p.payload.len();
                batch.push(p);
            }
            if batch.is_empty() {
                continue;
            }
            q.busy = true;
            let (mut keys, mut args) = (Vec::with_capacity(2 * batch.len()), Vec::with_capacity(3 * batch.len()));
            for p in &batch {
                script::push_message(&mut keys, &mut args, prefix, &p.channel, p.kind, p.payload.clone());
            }
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(keys.len()).arg(&keys).arg(&stream_len).arg(&stream_ttl).arg(&meta_ttl).arg("spublish");
            for a in &args {
                cmd.arg(&a[..]);
            }
            let link = link.clone();
            calls.push(Box::pin(async move {
                let started = Instant::now();
                let result = link.route(&cmd, slot).await;
                (slot, batch, result, started)
            }));
        }
    };
    // Nothing more will be called in this session: every waiting publish is refused (those
    // in flight are answered when their calls end, or refused when dropped).
    for (_, q) in slots {
        for p in q.waiting {
            let _ = p.reply.send(None);
        }
    }
    drop(calls);
    why
}

/// Hands a call's answer to each publisher of its batch.
fn finish(link: &Link, batch: Vec<Pending>, result: Result<Value, RedisError>, started: Instant) {
    let seqs = match &result {
        Ok(v) => script::parse_reply(v, batch.len()),
        Err(e) => {
            link.failed(e);
            None
        }
    };
    if result.is_ok() && seqs.is_none() {
        tracing::warn!("redis cluster: unexpected reply from the publish script: {result:?}");
    }
    link.metrics.redis.record_publish(started.elapsed(), batch.len() as u64);
    for (i, p) in batch.into_iter().enumerate() {
        let _ = p.reply.send(seqs.as_ref().map(|s| s[i].1));
    }
}

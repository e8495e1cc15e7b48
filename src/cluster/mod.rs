//! Cluster mode (`--redis`): many crier nodes kept in step by Redis.
//!
//! One dedicated thread, `crier-cluster`, runs a current-thread tokio runtime with the
//! `redis` client (no Redis client runs on monoio). It is bridged to the rest by flume
//! channels, like the shards:
//!
//! - publishers' `PUB`s go to it as [`Command::Publish`]; it runs them through the publish
//!   script (pipelined, batched) and answers each with the seq Redis gave it, or with
//!   "unavailable", which the publisher socket turns into `+OK <seq>` / `-ERR redis
//!   unavailable`, in command order;
//! - everything Redis publishes comes back as [`Delivery`]s, already repaired and in seq
//!   order per channel, and the control thread hands them to the hub, which encodes and
//!   fans out as on a single box, with Redis's seq and epoch;
//! - a shard whose resume history cannot satisfy asks it for the stream ([`Command::Fetch`]).
//!
//! What this module must never do: number a message itself, or deliver a channel's
//! messages out of seq order.

pub mod interest;
mod link;
pub mod publish_client;
mod receive;
pub mod redis_thread;
pub mod resume;
pub mod script;
pub mod sequencer;
pub mod sharded;
pub mod slot_publish;
pub mod slots;

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::ops::metrics::{Metrics, PublishError};
use crate::ws::frame::MessageKind;

/// Timings both session kinds (`--redis`, `--redis-cluster`) share (README "Cluster mode").
/// A Redis that does not answer within this is treated as gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A subscription silent this long is probed; a probe not back within the timeout ends
/// the session.
const PROBE_IDLE: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a delivery waits for room in the control thread's queue before the node counts
/// as behind (see `receive.rs` and `sharded.rs`): it bounds what redis-rs buffers meanwhile.
const BEHIND_AFTER: Duration = Duration::from_millis(250);

/// Reconnect back-off: from 100 ms, doubling to 5 s, each wait drawn uniformly from
/// [0, cap] (full jitter, so that many nodes do not return to a restarted Redis at once).
struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::MIN)
    }

    /// A session came up: the next wait starts small again.
    fn reset(&mut self) {
        self.0 = Self::MIN;
    }

    /// The wait before the next attempt; the cap doubles for the one after.
    fn next_wait(&mut self) -> Duration {
        let wait = self.0.mul_f64(jitter_fraction());
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }
}

/// A number unlikely to be shared by two nodes (for probe channels).
fn node_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 40)
}

/// A cheap random number in [0, 1) for reconnect jitter (xorshift on the clock; nothing
/// secret).
fn jitter_fraction() -> f64 {
    let mut x = node_id() | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % 1_000_000) as f64 / 1_000_000.0
}

/// The validated cluster settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The URL as given (shown in logs with the password masked).
    pub url: String,
    pub prefix: String,
    /// MAXLEN of each channel's stream (`--history-messages`).
    pub stream_len: usize,
    /// TTL of each channel's stream (`--history-ttl`).
    pub stream_ttl: Duration,
    /// TTL of each channel's meta hash (`--redis-meta-ttl`).
    pub meta_ttl: Duration,
    /// `--redis-cluster`: the seed URLs of a Redis Cluster (sharded pub/sub); `None` for
    /// `--redis` (one standalone Redis at `url`).
    pub cluster: Option<Vec<String>>,
    /// `--redis-unsubscribe-linger` (Redis Cluster only).
    pub linger: Duration,
}

impl RedisConfig {
    /// Checks the settings; the error names the setting and the fix.
    pub fn new(
        url: &str,
        prefix: &str,
        history_messages: usize,
        history_ttl: Duration,
        meta_ttl: Duration,
    ) -> Result<Self, String> {
        if let Err(e) = redis::Client::open(url) {
            return Err(format!(
                "--redis '{}': not a Redis URL ({e}); expected redis://[user:pass@]host:port[/db]",
                masked(url)
            ));
        }
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err(format!("--redis-prefix '{prefix}': expected 1 to 64 characters from A-Z a-z 0-9 _ - . :"));
        }
        if history_messages == 0 {
            return Err("--history-messages must be at least 1 with --redis: nodes repair missed messages from each channel's stream, which holds that many".into());
        }
        if history_ttl < Duration::from_millis(1) || meta_ttl < history_ttl {
            return Err(format!(
                "--redis-meta-ttl ({}) must be at least --history-ttl ({}): a channel's stream must not outlive its epoch",
                humantime::format_duration(meta_ttl),
                humantime::format_duration(history_ttl)
            ));
        }
        Ok(Self {
            url: url.to_string(),
            prefix: prefix.to_string(),
            stream_len: history_messages,
            stream_ttl: history_ttl,
            meta_ttl,
            cluster: None,
            linger: DEFAULT_LINGER,
        })
    }

    /// The settings from `--redis` or `--redis-cluster` (at most one of them), `None` for a
    /// single box.
    pub fn from_settings(
        redis: Option<&str>,
        redis_cluster: Option<&str>,
        prefix: &str,
        history_messages: usize,
        history_ttl: Duration,
        meta_ttl: Duration,
    ) -> Result<Option<Self>, String> {
        match (redis, redis_cluster) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                Err("--redis and --redis-cluster (CRIER_REDIS, CRIER_REDIS_CLUSTER) exclude each other: \
                 give --redis for one standalone Redis, --redis-cluster for the seed nodes of a Redis Cluster"
                    .into())
            }
            (Some(url), None) => Self::new(url, prefix, history_messages, history_ttl, meta_ttl).map(Some),
            (None, Some(seeds)) => {
                let seeds: Vec<String> =
                    seeds.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
                if seeds.is_empty() {
                    return Err("--redis-cluster: expected one or more seed URLs, comma-separated \
                         (redis://host:port,redis://host2:port)"
                        .into());
                }
                let mut cfg = Self::new(&seeds[0], prefix, history_messages, history_ttl, meta_ttl)
                    .map_err(|e| e.replacen("--redis ", "--redis-cluster ", 1))?;
                for seed in &seeds[1..] {
                    Self::new(seed, prefix, history_messages, history_ttl, meta_ttl)
                        .map_err(|e| e.replacen("--redis ", "--redis-cluster ", 1))?;
                }
                cfg.url = seeds.join(",");
                cfg.cluster = Some(seeds);
                Ok(Some(cfg))
            }
        }
    }

    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Which flag these settings came from, for messages.
    pub fn flag(&self) -> &'static str {
        if self.cluster.is_some() { "--redis-cluster" } else { "--redis" }
    }

    /// The URL for logs: the password replaced by `***` (each seed's, with --redis-cluster).
    pub fn shown_url(&self) -> String {
        self.url.split(',').map(masked).collect::<Vec<_>>().join(",")
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((auth, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

/// `--redis-unsubscribe-linger`'s default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);

/// Why a publish got no seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFailure {
    /// The script did not run: no session, or Redis refused the call before running it
    /// (`NOSCRIPT`, a connection already gone). The message was not published.
    Unavailable,
    /// The call was sent but its answer never came (the connection broke or timed out while
    /// it was in flight), or the script failed part-way through a batch: Redis may have
    /// published the message. The publisher must not assume either way (README "Cluster
    /// mode": a retry may deliver it twice, under two seqs).
    Unknown,
}

/// What a publish came to: the seq Redis assigned, or why there is none.
pub type PublishOutcome = Result<u64, PublishFailure>;

/// The answer to a publish, once Redis has answered (or could not).
pub type PublishReply = tokio::sync::oneshot::Receiver<PublishOutcome>;

/// What a channel's stream held, read back for a resume or a repair.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The channel's epoch, `None` when Redis holds no state for it.
    pub epoch: Option<u64>,
    /// The channel's last seq in Redis.
    pub head: u64,
    /// Entries after the requested seq, in seq order: (seq, kind, payload).
    pub entries: Vec<(u64, MessageKind, Bytes)>,
}

/// Requests to the cluster thread.
#[derive(Debug)]
pub enum Command {
    Publish {
        channel: ChannelName,
        kind: MessageKind,
        payload: Bytes,
        reply: tokio::sync::oneshot::Sender<PublishOutcome>,
    },
    /// Read the stream of `channel` after `after` (a resume on a shard).
    Fetch { channel: ChannelName, after: u64, reply: tokio::sync::oneshot::Sender<Option<Fetched>> },
}

/// A message from Redis, for the hub: in seq order per channel, each once.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    pub seq: u64,
    pub epoch: u64,
    pub kind: MessageKind,
    pub payload: Bytes,
    /// When this node received it (the start of its delivery-latency sample).
    pub received_at: Instant,
}

/// The way to the cluster thread: given to the control thread (for publishers) and to
/// every shard (for resumes) by `server`, explicitly (issue 10: no global carries it).
/// Cheap to clone and `Send`; all clones feed one queue.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    commands: flume::Sender<Command>,
    /// Redis Cluster only: where shards report which channels they have subscribers for
    /// (sharded pub/sub has no patterns, so the node SSUBSCRIBEs each such channel). A
    /// queue of its own, so that the standalone thread never sees these.
    interest: Option<flume::Sender<interest::Report>>,
}

impl ClusterHandle {
    /// Sends a publish; the reply comes once Redis has answered.
    pub fn publish(&self, channel: ChannelName, kind: MessageKind, payload: &[u8]) -> PublishReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // If the cluster thread is gone the sender is dropped and the reply reads as
        // "unavailable".
        let _ =
            self.commands.send(Command::Publish { channel, kind, payload: Bytes::copy_from_slice(payload), reply: tx });
        rx
    }

    /// Redis Cluster (`--redis-cluster`): shards must report their channels' interest.
    pub fn sharded(&self) -> bool {
        self.interest.is_some()
    }

    /// A shard's first local subscriber of `channel` is coming: the answer is true once
    /// this node's SSUBSCRIBE to it is in effect (at once if it already was), false when
    /// Redis cannot be reached. Only with [`Self::sharded`].
    pub fn want(&self, shard: usize, channel: ChannelName) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(q) = &self.interest {
            let _ = q.send(interest::Report::Want { shard, channel, ack: tx });
        }
        rx
    }

    /// A shard's last local subscriber of `channel` left.
    pub fn unwant(&self, shard: usize, channel: ChannelName) {
        if let Some(q) = &self.interest {
            let _ = q.send(interest::Report::Unwant { shard, channel });
        }
    }

    /// Reads a channel's stream after `after`; `None` when Redis cannot be reached.
    pub async fn fetch(&self, channel: ChannelName, after: u64) -> Option<Fetched> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Fetch { channel, after, reply: tx }).ok()?;
        rx.await.ok().flatten()
    }
}

/// Messages from Redis waiting for the control thread, at most.
pub const DELIVERY_QUEUE: usize = 4096;

impl Command {
    /// Answers the request at once, without Redis: there is no session (nothing is sent).
    fn refuse(self) {
        match self {
            Command::Publish { reply, .. } => {
                let _ = reply.send(Err(PublishFailure::Unavailable));
            }
            Command::Fetch { reply, .. } => {
                let _ = reply.send(None);
            }
        }
    }
}

/// Messages from Redis for the control thread's hub (see [`crate::publish::spawn_cluster_deliveries`]).
pub type Deliveries = flume::Receiver<Delivery>;

/// Starts the cluster thread. Returns the handle for the control thread and the shards, and
/// the deliveries for the control thread (before it starts, see [`crate::publish::spawn_cluster_deliveries`]).
///
/// The command queue has no bound of its own, and needs none: a publisher awaits Redis's
/// answers to one turn's commands (at most `TURN_COMMANDS`, `TURN_BYTES`) before it reads
/// more, at most `MAX_PUBLISHERS` are connected, and a shard's fetch is one per resuming
/// connection, awaited before it is registered.
///
/// The delivery queue is bounded ([`DELIVERY_QUEUE`]): when the control thread falls behind
/// (it waits while a shard's queue is over its high-water mark, as publishers do), the
/// cluster thread stops reading pub/sub, Redis buffers for this node up to its
/// `client-output-buffer-limit pubsub` and then drops the subscription; the next session
/// resynchronises every channel from the streams. Memory stays bounded on both sides and
/// nothing the streams still hold is lost.
pub fn start(cfg: RedisConfig, metrics: std::sync::Arc<Metrics>) -> Result<(ClusterHandle, Deliveries), String> {
    let (commands, command_rx) = flume::unbounded();
    let (deliveries, delivery_rx) = flume::bounded(DELIVERY_QUEUE);
    metrics.redis.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
    let builder = std::thread::Builder::new().name("crier-cluster".into());
    let interest = if cfg.cluster.is_some() {
        // Bounded by channels with subscribers: a shard reports a channel only on its
        // first local subscriber and its last (see interest.rs).
        let (tx, rx) = flume::unbounded();
        builder
            .spawn(move || sharded::run(cfg, metrics, command_rx, rx, deliveries))
            .map_err(|e| format!("cannot start the cluster thread: {e}"))?;
        Some(tx)
    } else {
        builder
            .spawn(move || redis_thread::run(cfg, metrics, command_rx, deliveries))
            .map_err(|e| format!("cannot start the cluster thread: {e}"))?;
        None
    };
    Ok((ClusterHandle { commands, interest }, delivery_rx))
}

/// Writes the publisher's replies in command order: `replies` holds the immediate ones
/// (refusals, PONG), `pending` the offsets at which each Redis answer goes.
pub async fn splice_replies(replies: &mut Vec<u8>, pending: &mut Vec<(usize, PublishReply)>, metrics: &Metrics) {
    let immediate = std::mem::take(replies);
    let mut at = 0;
    for (pos, reply) in pending.drain(..) {
        replies.extend_from_slice(&immediate[at..pos]);
        at = pos;
        match reply.await {
            Ok(Ok(seq)) => {
                metrics.messages_published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                replies.extend_from_slice(format!("+OK {seq}\r\n").as_bytes());
            }
            Ok(Err(PublishFailure::Unknown)) => {
                metrics.publish_error(PublishError::RedisOutcomeUnknown);
                replies.extend_from_slice(b"-ERR redis outcome unknown\r\n");
            }
            // The answer was dropped: a call the Redis Cluster session abandoned in flight
            // (it was sent and may have run), or the cluster thread is gone (process exit).
            Err(_) => {
                metrics.publish_error(PublishError::RedisOutcomeUnknown);
                replies.extend_from_slice(b"-ERR redis outcome unknown\r\n");
            }
            Ok(Err(PublishFailure::Unavailable)) => {
                metrics.publish_error(PublishError::RedisUnavailable);
                replies.extend_from_slice(b"-ERR redis unavailable\r\n");
            }
        }
    }
    replies.extend_from_slice(&immediate[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ttl = Duration::from_secs(300);
        let day = Duration::from_secs(86400);
        assert!(RedisConfig::new("redis://127.0.0.1:6379/0", "crier", 64, ttl, day).is_ok());
        let e = RedisConfig::new("http://x", "crier", 64, ttl, day).unwrap_err();
        assert!(e.contains("--redis"), "{e}");
        let e = RedisConfig::new("redis://h", "a{b}", 64, ttl, day).unwrap_err();
        assert!(e.contains("--redis-prefix"), "{e}");
        let e = RedisConfig::new("redis://h", "crier", 0, ttl, day).unwrap_err();
        assert!(e.contains("--history-messages"), "{e}");
        let e = RedisConfig::new("redis://h", "crier", 64, ttl, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("--redis-meta-ttl"), "{e}");
        let both = RedisConfig::from_settings(Some("redis://a"), Some("redis://b"), "crier", 64, ttl, day);
        let e = both.unwrap_err();
        assert!(e.contains("--redis ") && e.contains("--redis-cluster"), "{e}");
        let c = RedisConfig::from_settings(None, Some("redis://a:1, redis://b:2"), "crier", 64, ttl, day);
        let c = c.unwrap().unwrap();
        assert_eq!(c.cluster.as_deref(), Some(&["redis://a:1".to_string(), "redis://b:2".to_string()][..]));
        assert_eq!(c.flag(), "--redis-cluster");
        let e = RedisConfig::from_settings(None, Some("redis://a:1,http://x"), "crier", 64, ttl, day).unwrap_err();
        assert!(e.starts_with("--redis-cluster 'http://x'"), "{e}");
        assert!(RedisConfig::from_settings(None, Some(" , "), "crier", 64, ttl, day).is_err());
        assert!(RedisConfig::from_settings(None, None, "crier", 64, ttl, day).unwrap().is_none());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(masked("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(masked("redis://:secret@h"), "redis://:***@h");
        assert_eq!(masked("redis://h:1"), "redis://h:1");
    }
}

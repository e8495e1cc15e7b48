//! A shard: one thread pinned to one CPU, running one monoio runtime, owning one
//! SO_REUSEPORT listener, its connections and its subscriber tables.
//!
//! The only thing that crosses into a shard is an `Arc<Broadcast>` from the hub (and the
//! drain order). For each broadcast the shard wraps the encoded frame in one `Rc`, queues
//! that `Rc` on every subscriber, then flushes each touched connection with one vectored
//! write. A batch of broadcasts queued before a flush is bounded by count and by bytes, and
//! a connection is judged slow only right after a write attempt, on what it did not take
//! (see ARCHITECTURE.md, "Architecture invariants"). One sweep task per shard sends pings,
//! enforces the idle timeout and closes stragglers; there is no timer per connection.
//! Nothing here takes a lock on the write path.

pub mod conn;
pub mod fanout;
pub mod flush;
pub mod history;
pub mod interest;
pub mod outbound;
pub mod runtime;
pub(crate) mod session;
pub mod sockio;
pub(crate) mod sweep;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::access::Access;
use crate::channel::ChannelName;
use crate::cluster::{ClusterHandle, Fetched};
use crate::config::Config;
use crate::hub::{self, Broadcast, ShardMsg};
use crate::ops::metrics::{CloseReason, Metrics, RefuseReason, ShardMetrics, new_latency_histogram};
use crate::peer::limits::PeerTable;
use crate::ws::deflate::Inflater;
use crate::ws::frame;
use crate::ws::frame::MessageKind;
use crate::ws::handshake::{HandshakeConfig, Upgrade};
use conn::Conn;
use fanout::{ShardEncoder, ShardFrames, Subscribers};
use history::{History, Notice, Request};
use outbound::OutFrame;

/// Size of the per-shard read buffer every connection reads into.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Broadcasts handled before flushing, when the hub's queue has a backlog.
const MAX_BATCH: usize = 256;
/// A batch also ends once its broadcasts reach `--max-queue-bytes` / this many bytes. Every
/// queue then gets a write attempt before it can grow by more, so a connection that takes
/// what it is offered is never over the bound for frames the shard has not yet tried to
/// write. Half the bound leaves the other half for what a socket has not drained yet.
const BATCH_SHARE_OF_QUEUE: usize = 2;
/// A connection that has not finished its close handshake this long after our close frame
/// is cut off.
const CLOSE_GRACE_MS: u64 = 2_000;

/// A resume needed Redis and Redis could not be read (see [`Shard::fetch_for_resume`]).
#[derive(Debug, Clone, Copy)]
pub struct RedisUnreachable;

/// A shard's state, shared (`Rc`) by its tasks.
pub struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Builds envelopes the hub did not (see `ShardEncoder`); this shard's own.
    encoder: Rc<ShardEncoder>,
    pub handshake: HandshakeConfig,
    /// The per-address table, shared by every shard.
    pub peers: Arc<PeerTable>,
    /// Access control, shared with every shard and the admin endpoint.
    pub access: Arc<Access>,
    subscribers: RefCell<Subscribers<Conn>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    /// Broadcasts, and their bytes, that some connection may not have been offered yet: the
    /// batch being built, plus those taken during the last pass (connections it had already
    /// written get them in the next one).
    unflushed: Cell<(usize, usize)>,
    /// When the batch loop writes (`--flush-delay`).
    coalesce: RefCell<flush::Coalescer>,
    /// Bytes after which a batch ends (see [`BATCH_SHARE_OF_QUEUE`]).
    batch_bytes: usize,
    pub scratch: RefCell<Box<[u8]>>,
    pub inflater: RefCell<Inflater>,
    latency: RefCell<Histogram<u64>>,
    ping: Rc<OutFrame>,
    history: RefCell<History>,
    epoch: Instant,
    pub draining: Cell<bool>,
    /// Drained: the sweep task ends.
    stopped: Cell<bool>,
    /// This shard, for the tasks it spawns (a writer needs an `Rc<Shard>`); built with
    /// `Rc::new_cyclic`, so no thread-local has to carry it.
    me: Weak<Shard>,
    /// The hub's queue to this shard (and a sender to put a drain order back on it).
    inbox: flume::Receiver<ShardMsg>,
    requeue: flume::Sender<ShardMsg>,
    /// Cluster mode (`--redis`): the cluster thread, for resumes local history cannot
    /// satisfy. Given by `server`, like everything else a shard uses.
    cluster: Option<ClusterHandle>,
    /// Redis Cluster: the channels this shard has subscribers for (see interest.rs).
    interest: interest::LocalInterest,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        peers: Arc<PeerTable>,
        cluster: Option<ClusterHandle>,
        access: Arc<Access>,
        inbox: flume::Receiver<ShardMsg>,
        requeue: flume::Sender<ShardMsg>,
    ) -> Rc<Self> {
        let trusted = (!cfg.peer.trusted.is_empty()).then(|| cfg.peer.trusted.clone());
        let limits = history::Limits { messages: cfg.history_messages, bytes: cfg.history_bytes, ttl: cfg.history_ttl };
        let handshake =
            HandshakeConfig { path: cfg.path.clone(), max_channels: cfg.max_channels, deflate: cfg.deflate, trusted };
        let batch_bytes = cfg.max_queue_bytes / BATCH_SHARE_OF_QUEUE;
        let coalesce = flush::Coalescer::new(cfg.flush_delay);
        Rc::new_cyclic(|me| Self {
            id,
            cfg,
            encoder: ShardEncoder::new(metrics.clone()),
            metrics,
            peers,
            handshake,
            access,
            subscribers: RefCell::new(Subscribers::default()),
            dirty: RefCell::new(Vec::new()),
            unflushed: Cell::new((0, 0)),
            coalesce: RefCell::new(coalesce),
            batch_bytes,
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            inflater: RefCell::new(Inflater::new()),
            latency: RefCell::new(new_latency_histogram()),
            ping: OutFrame::control(frame::encode_ping().bytes().clone()),
            history: RefCell::new(History::new(limits)),
            epoch: Instant::now(),
            draining: Cell::new(false),
            inbox,
            requeue,
            cluster,
            interest: interest::LocalInterest::default(),
            stopped: Cell::new(false),
            me: me.clone(),
        })
    }

    /// Applies broadcasts the hub has already sent (and acknowledged to publishers) but this
    /// shard has not handled yet, so that a new subscriber's `last=`/`since=` sees them in
    /// history rather than as live traffic. A drain order met here goes back on the queue
    /// for the main loop. Flushes whenever a batch is full, as the main loop does, so a
    /// backlog met here cannot make subscribers look slow either.
    fn apply_pending(&self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                ShardMsg::Broadcasts(batch) => {
                    for b in batch.iter() {
                        self.enqueue_broadcast(b);
                        if !self.batch_has_room() {
                            self.flush_dirty();
                        }
                    }
                }
                ShardMsg::Drain => {
                    let _ = self.requeue.send(ShardMsg::Drain);
                    break;
                }
            }
        }
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardMetrics {
        &self.metrics.shards[self.id]
    }

    /// Milliseconds since the shard started: the clock of `last_seen` and friends.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn refused(&self, reason: RefuseReason) {
        self.stats().refused[reason as usize].fetch_add(1, Relaxed);
    }

    /// Adds an upgraded connection to the tables, after queueing what it asked to have
    /// replayed. Both happen here, on the shard's thread between two broadcasts, so the
    /// replay and the live stream meet without a hole or a duplicate.
    ///
    /// Cluster mode: `remote` is what [`Shard::fetch_for_resume`] read from Redis before
    /// the 101 (what arrived since is in this shard's history, which the replay merges).
    pub fn register(&self, conn: &Rc<Conn>, mut upgrade: Upgrade, remote: Vec<Option<Fetched>>) {
        let channels = std::mem::take(&mut upgrade.channels);
        self.replay(conn, &channels, &upgrade, remote);
        let membership = self.subscribers.borrow_mut().insert(conn.clone(), channels);
        conn.set_membership(membership);
        let stats = self.stats();
        stats.connections.fetch_add(1, Relaxed);
        stats.accepted.fetch_add(1, Relaxed);
        if conn.deflate() {
            self.metrics.deflate_connections.fetch_add(1, Relaxed);
        }
        if conn.envelope() {
            self.metrics.envelope_connections.fetch_add(1, Relaxed);
        }
    }

    /// Cluster mode only, before the 101: for each channel of a `since=` resume that local
    /// history cannot satisfy, what the Redis stream holds (`None` where not needed).
    /// `Err` when one was needed and Redis could not be read: the upgrade is then refused
    /// with 503 (the client retries and resumes later), rather than answered with a
    /// `reset` or `gap` that would be false.
    pub async fn fetch_for_resume(&self, upgrade: &Upgrade) -> Result<Vec<Option<Fetched>>, RedisUnreachable> {
        let channels = &upgrade.channels;
        let Some(cluster) = &self.cluster else { return Ok(Vec::new()) };
        if upgrade.since.is_none() && upgrade.last > 0 && cluster.sharded() {
            return self.fetch_for_last(cluster, channels, upgrade.last).await;
        }
        let Some(since) = &upgrade.since else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(channels.len());
        for (i, ch) in channels.iter().enumerate() {
            self.apply_pending();
            let (local_epoch, has_notice) = {
                let h = self.history.borrow();
                let local = h.epoch_of(ch);
                let request = Request::Since { seq: since.seqs[i], same_epoch: local == Some(since.epochs[i]) };
                (local, h.plan(ch, request, Instant::now()).notice.is_some())
            };
            if !crate::cluster::resume::needs_fetch(local_epoch, has_notice, since.epochs[i]) {
                out.push(None);
                continue;
            }
            let mut fetched = cluster.fetch(ch.clone(), since.seqs[i]).await.ok_or(RedisUnreachable)?;
            if fetched.epoch.is_some_and(|e| e != since.epochs[i]) {
                // Another epoch: the client gets a reset and everything held, from seq 1.
                fetched = cluster.fetch(ch.clone(), 0).await.ok_or(RedisUnreachable)?;
            }
            out.push(Some(fetched));
        }
        Ok(out)
    }

    /// Redis Cluster: a shard holds history only since its first subscriber of a channel
    /// (see interest.rs), so `last=N` reads the stream where the shard holds fewer than N.
    async fn fetch_for_last(
        &self,
        cluster: &ClusterHandle,
        channels: &[ChannelName],
        last: usize,
    ) -> Result<Vec<Option<Fetched>>, RedisUnreachable> {
        let mut out = Vec::with_capacity(channels.len());
        for ch in channels {
            self.apply_pending();
            let held = self.history.borrow().held_after(ch, 0, Instant::now()).len();
            out.push(if held < last {
                Some(cluster.fetch(ch.clone(), 0).await.ok_or(RedisUnreachable)?)
            } else {
                None
            });
        }
        Ok(out)
    }

    /// Queues notices and history for `since=` / `last=`.
    fn replay(&self, conn: &Rc<Conn>, channels: &[ChannelName], upgrade: &Upgrade, mut remote: Vec<Option<Fetched>>) {
        if upgrade.since.is_none() && upgrade.last == 0 {
            return;
        }
        self.apply_pending();
        let now = Instant::now();
        let history = self.history.borrow();
        let mut out = conn.out().borrow_mut();
        let mut replayed = 0u64;
        let cluster = self.cluster.is_some();
        for (i, ch) in channels.iter().enumerate() {
            // The epoch a client's seqs are compared with: the process's on a single box,
            // the channel's (from Redis, as last seen here) in cluster mode.
            let epoch = if cluster { history.epoch_of(ch).unwrap_or(0) } else { hub::epoch() };
            let request = match &upgrade.since {
                Some(s) => Request::Since { seq: s.seqs[i], same_epoch: s.epochs[i] == epoch },
                None => Request::Last(upgrade.last),
            };
            let fetched = remote.get_mut(i).and_then(Option::take);
            let from_redis = match (fetched, &upgrade.since) {
                // `last=N` from the stream (Redis Cluster): the N before its head, no notice
                // (as `last=` on a single box: what is held, up to N).
                (Some(f), None) => {
                    let (after, epoch) = (f.head.saturating_sub(upgrade.last as u64), f.epoch.unwrap_or(0));
                    let held = history.held_after(ch, 0, now);
                    crate::cluster::resume::plan(ch, after, epoch, f, held, &self.encoder, &self.metrics)
                        .map(|r| crate::cluster::resume::RemotePlan { notice: None, ..r })
                }
                (Some(f), Some(s)) => crate::cluster::resume::plan(
                    ch,
                    s.seqs[i],
                    s.epochs[i],
                    f,
                    history.held_after(ch, 0, now),
                    &self.encoder,
                    &self.metrics,
                ),
                _ => None,
            };
            let (plan, epoch) = match from_redis {
                Some(r) => (history::Plan { notice: r.notice, replay: r.replay, skip_until: r.skip_until }, r.epoch),
                None => (history.plan(ch, request, now), epoch),
            };
            if let Some(notice) = plan.notice {
                let (text, slot) = match notice {
                    Notice::Gap { from, to } => (format!("gap {ch} {from} {to} {epoch}\n"), 0),
                    Notice::Reset => (format!("reset {ch} {epoch}\n"), 1),
                };
                self.metrics.resumes_unsatisfied[slot].fetch_add(1, Relaxed);
                if conn.envelope() {
                    let f = frame::encode_data(MessageKind::Text, text.as_bytes(), false);
                    out.push(OutFrame::control(f.bytes().clone()));
                }
            }
            if let Some(seq) = plan.skip_until {
                conn.skip_until(ch.clone(), epoch, seq);
            }
            for b in &plan.replay {
                let frames = ShardFrames::new(b, &self.encoder);
                let f = frames.pick(conn.envelope(), conn.deflate());
                // Not a delivery of a fresh publish: no latency sample.
                out.push(Rc::new(OutFrame { bytes: f.bytes.clone(), published_at: None, deflated: f.deflated }));
                replayed += 1;
            }
        }
        drop(out);
        if replayed > 0 {
            self.metrics.replays.fetch_add(1, Relaxed);
            self.metrics.messages_replayed.fetch_add(replayed, Relaxed);
        }
        if !conn.out().borrow().is_empty() {
            self.mark_dirty(conn);
        }
    }

    /// Redis Cluster: counts a connection in on its channels, waiting (at most `timeout`)
    /// until the node is subscribed to each. False: Redis cannot be reached, the connection
    /// is refused (and counted out again). True at once without `--redis-cluster`.
    pub async fn join_channels(&self, channels: &[ChannelName], timeout: Duration) -> bool {
        let Some(cluster) = self.cluster.as_ref().filter(|c| c.sharded()) else { return true };
        let joined = monoio::time::timeout(timeout, self.interest.join(self.id, cluster, channels)).await;
        if joined != Ok(true) {
            self.leave_channels(channels.iter());
            return false;
        }
        true
    }

    /// Redis Cluster: counts a connection out of its channels; a channel left with no
    /// subscriber here loses its history on this shard (it may stop being subscribed).
    pub fn leave_channels<'a>(&self, channels: impl Iterator<Item = &'a ChannelName>) {
        let Some(cluster) = self.cluster.as_ref().filter(|c| c.sharded()) else { return };
        let mut history = self.history.borrow_mut();
        for ch in self.interest.leave(self.id, cluster, channels) {
            history.forget(&ch);
        }
    }

    /// Takes a finished connection out of the tables.
    pub fn remove(&self, conn: &Rc<Conn>, reason: CloseReason) {
        conn.abort();
        let membership = conn.take_membership();
        let channels: Vec<ChannelName> = if self.cluster.as_ref().is_some_and(ClusterHandle::sharded) {
            membership.channels.iter().map(|(c, _)| c.clone()).collect()
        } else {
            Vec::new()
        };
        if !self.subscribers.borrow_mut().remove(membership) {
            return;
        }
        self.leave_channels(channels.iter());
        let stats = self.stats();
        stats.connections.fetch_sub(1, Relaxed);
        stats.closed[reason as usize].fetch_add(1, Relaxed);
        self.metrics.open_connections.fetch_sub(1, Relaxed);
        if conn.deflate() {
            self.metrics.deflate_connections.fetch_sub(1, Relaxed);
        }
        if conn.envelope() {
            self.metrics.envelope_connections.fetch_sub(1, Relaxed);
        }
        // Free queued frames now rather than when a writer task notices.
        conn.out().borrow_mut().discard_unsent();
    }

    fn mark_dirty(&self, conn: &Rc<Conn>) {
        if conn.mark_dirty() {
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// Queues the pong answering a connection's latest ping, in place of a pending pong not
    /// yet started (RFC 6455 §5.5.3), so a connection holds at most one. `asked`, the bytes
    /// of all the pongs this one answers for, counts against --max-queue-bytes until the
    /// client has taken as many bytes. Flushed (and the connection judged) with the next
    /// flush.
    pub fn enqueue_pong(&self, conn: &Rc<Conn>, payload: &[u8], asked: usize) {
        let pong = OutFrame::control(frame::encode_pong(payload).bytes().clone());
        conn.out().borrow_mut().push_pong(pong, asked);
        self.mark_dirty(conn);
    }

    /// `--echo`: sends a client's message back to it, compressed on its own whenever the
    /// connection negotiated permessage-deflate (`server_no_context_takeover`, so no state is
    /// kept per connection). Unlike broadcasts, which go uncompressed when that is smaller
    /// (RFC 7692 allows either), an echo is always compressed: kosoku 0.1.0, which runs
    /// Autobahn in CI, errors on uncompressed messages of a deflate connection (README
    /// "Conformance testing"). It counts against `--max-queue-bytes` like any frame.
    pub fn echo(&self, conn: &Rc<Conn>, kind: MessageKind, data: &[u8]) {
        let compressed = if conn.deflate() { self.encoder.deflate(data) } else { None };
        let f = match &compressed {
            Some(c) => frame::encode_data(kind, c, true),
            None => frame::encode_data(kind, data, false),
        };
        let out = Rc::new(OutFrame { bytes: f.bytes().clone(), published_at: None, deflated: compressed.is_some() });
        conn.out().borrow_mut().push(out);
        self.mark_dirty(conn);
    }

    /// Starts closing: queue a close frame, and for `hard` closes (protocol errors, slow
    /// consumers) drop what was queued and cut the connection once the frame is out.
    pub fn close(&self, conn: &Rc<Conn>, code: u16, reason: &str, why: CloseReason, hard: bool) {
        if !conn.start_closing(self.now_ms(), why, hard) {
            return;
        }
        let mut out = conn.out().borrow_mut();
        if hard {
            out.discard_unsent();
        }
        out.push(OutFrame::control(frame::encode_close(code, reason).bytes().clone()));
        drop(out);
        self.mark_dirty(conn);
    }

    /// Takes a message of the hub's queue: queues a batch of broadcasts and returns how many
    /// it held, `None` for the drain order.
    fn take(&self, msg: &ShardMsg) -> Option<usize> {
        match msg {
            ShardMsg::Broadcasts(batch) => {
                batch.iter().for_each(|b| self.enqueue_broadcast(b));
                Some(batch.len())
            }
            ShardMsg::Drain => None,
        }
    }

    /// Queues one broadcast on every subscriber (no socket IO; see [`Shard::flush_dirty`]).
    /// Nobody is judged here: these frames have not been offered to any socket yet.
    pub fn enqueue_broadcast(&self, b: &Arc<Broadcast>) {
        self.stats().queued_bytes.fetch_sub(b.size(), Relaxed);
        // Redis Cluster: history only of channels this node has stayed subscribed to since
        // the shard's first subscriber of it (see interest.rs).
        let sharded = self.cluster.as_ref().is_some_and(ClusterHandle::sharded);
        let before = {
            let mut history = self.history.borrow_mut();
            let before = history.epoch_of(&b.channel);
            if !sharded || b.channel.is_broadcast() || self.interest.contains(&b.channel) {
                history.record(b);
            }
            before
        };
        if before.is_some_and(|e| e != b.epoch) {
            self.announce_reset(&b.channel, b.epoch);
        }
        let frames = ShardFrames::new(b, &self.encoder);
        self.subscribers.borrow().deliver(&frames, &mut self.dirty.borrow_mut());
        let (count, bytes) = self.unflushed.get();
        self.unflushed.set((count + 1, bytes + b.plain.len()));
    }

    /// Cluster mode: a channel's epoch changed under live subscribers (Redis lost its state
    /// and started it afresh). Before its first message of the new epoch, each `crier.v1`
    /// subscriber gets `reset <channel> <epoch>`, as a resume into another epoch does: the
    /// seqs it holds mean nothing now. Bare subscribers just get the messages.
    fn announce_reset(&self, channel: &ChannelName, epoch: u64) {
        let text = format!("reset {channel} {epoch}\n");
        let f = OutFrame::control(frame::encode_data(MessageKind::Text, text.as_bytes(), false).bytes().clone());
        let told = self.subscribers.borrow().notify(
            channel,
            &f,
            |c: &Conn| !c.resumed_into(channel, epoch),
            &mut self.dirty.borrow_mut(),
        );
        self.metrics.live_resets.fetch_add(told as u64, Relaxed);
    }

    /// Whether the batch being built may take another broadcast before a flush: fewer than
    /// [`MAX_BATCH`] broadcasts and fewer than `batch_bytes` bytes queued since the last one.
    /// (The largest frame a connection gets, the envelope, is the plain one plus a header
    /// line; a deflated one is smaller.)
    fn batch_has_room(&self) -> bool {
        let (count, bytes) = self.unflushed.get();
        count < MAX_BATCH && bytes < self.batch_bytes
    }

    /// Closes every connection with 1001 and waits for them to go, up to the drain timeout.
    async fn drain(&self) {
        self.draining.set(true);
        let all: Vec<Rc<Conn>> = self.subscribers.borrow().iter().cloned().collect();
        for conn in &all {
            self.close(conn, frame::close_code::GOING_AWAY, "server shutting down", CloseReason::Shutdown, false);
        }
        drop(all);
        self.flush_dirty();
        let deadline = Instant::now() + self.cfg.drain_timeout;
        while !self.subscribers.borrow().is_empty() && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
            self.flush_dirty();
        }
        let left = self.subscribers.borrow().len();
        if left > 0 {
            tracing::warn!(shard = self.id, "drain timeout: cutting {left} connections");
        }
    }
}

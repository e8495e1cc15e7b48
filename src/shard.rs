//! A shard: one thread pinned to one CPU, running one monoio runtime, owning one
//! SO_REUSEPORT listener, its connections and its subscriber tables.
//!
//! The only thing that crosses into a shard is an `Arc<Broadcast>` from the hub (and the
//! drain order). For each broadcast the shard wraps the encoded frame in one `Rc`, queues
//! that `Rc` on every subscriber, then flushes each touched connection with one vectored
//! write. One sweep task per shard sends pings, enforces the idle timeout and closes
//! stragglers; there is no timer per connection. Nothing here takes a lock on the write path.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::channel::ChannelName;
use crate::config::{Config, DriverChoice};
use crate::conn::{self, Conn, State};
use crate::deflate::Inflater;
use crate::fanout::{ShardFrames, Subscribers};
use crate::frame;
use crate::frame::MessageKind;
use crate::handshake::{HandshakeConfig, Upgrade};
use crate::history::{self, History, Notice, Request};
use crate::hub::{self, Broadcast, ShardMsg};
use crate::metrics::{CloseReason, Metrics, RefuseReason, ShardMetrics, new_latency_histogram};
use crate::outbound::{Flush, OutFrame, Written};

/// Size of the per-shard read buffer every connection reads into.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Broadcasts handled before flushing, when the hub's queue has a backlog.
const MAX_BATCH: usize = 256;
/// A connection that has not finished its close handshake this long after our close frame
/// is cut off.
const CLOSE_GRACE_MS: u64 = 2_000;

/// The runtime type every shard runs: io_uring or epoll, both with timers.
pub type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Whether the kernel lets this process set up an io_uring (Docker's default seccomp
/// profile and `kernel.io_uring_disabled` do not).
pub fn probe_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes params, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned to us.
    unsafe { libc::close(fd as i32) };
    if monoio::utils::detect_uring() {
        Ok(())
    } else {
        Err(io::Error::other("the kernel lacks io_uring operations monoio needs"))
    }
}

/// Builds the runtime for `choice`; returns it with the driver's name.
pub fn build_runtime(choice: DriverChoice) -> Result<(Runtime, &'static str), String> {
    let uring =
        || RuntimeBuilder::<IoUringDriver>::new().enable_timer().build().map(|rt| (Runtime::from(rt), "io_uring"));
    let epoll = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|rt| (Runtime::from(rt), "epoll"))
            .map_err(|e| format!("cannot start the epoll driver: {e}"))
    };
    match choice {
        DriverChoice::Epoll => epoll(),
        DriverChoice::IoUring => match probe_io_uring() {
            Ok(()) => uring().map_err(|e| format!("cannot start the io_uring driver: {e}")),
            Err(e) => Err(format!(
                "--driver io-uring: io_uring is not available here ({e}); it is blocked by seccomp (e.g. Docker's default profile) or kernel.io_uring_disabled. Use --driver epoll or --driver auto"
            )),
        },
        DriverChoice::Auto => match probe_io_uring() {
            Ok(()) => uring().or_else(|e| {
                tracing::warn!("io_uring set-up failed ({e}); falling back to epoll");
                epoll()
            }),
            Err(_) => epoll(),
        },
    }
}

/// A shard's state, shared (`Rc`) by its tasks.
pub struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub handshake: HandshakeConfig,
    subscribers: RefCell<Subscribers<Conn>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    pub scratch: RefCell<Box<[u8]>>,
    pub inflater: RefCell<Inflater>,
    latency: RefCell<Histogram<u64>>,
    ping: Rc<OutFrame>,
    history: RefCell<History>,
    epoch: Instant,
    pub draining: Cell<bool>,
    /// The hub's queue to this shard (and a sender to put a drain order back on it).
    inbox: flume::Receiver<ShardMsg>,
    requeue: flume::Sender<ShardMsg>,
}

impl Shard {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        inbox: flume::Receiver<ShardMsg>,
        requeue: flume::Sender<ShardMsg>,
    ) -> Self {
        let limits = history::Limits { messages: cfg.history_messages, bytes: cfg.history_bytes, ttl: cfg.history_ttl };
        let handshake =
            HandshakeConfig { path: cfg.path.clone(), max_channels: cfg.max_channels, deflate: cfg.deflate };
        Self {
            id,
            cfg,
            metrics,
            handshake,
            subscribers: RefCell::new(Subscribers::default()),
            dirty: RefCell::new(Vec::new()),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            inflater: RefCell::new(Inflater::new()),
            latency: RefCell::new(new_latency_histogram()),
            ping: OutFrame::control(frame::encode_ping().bytes().clone()),
            history: RefCell::new(History::new(limits)),
            epoch: Instant::now(),
            draining: Cell::new(false),
            inbox,
            requeue,
        }
    }

    /// Applies broadcasts the hub has already sent (and acknowledged to publishers) but this
    /// shard has not handled yet, so that a new subscriber's `last=`/`since=` sees them in
    /// history rather than as live traffic. A drain order met here goes back on the queue
    /// for the main loop.
    fn apply_pending(&self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                ShardMsg::Broadcast(b) => self.enqueue_broadcast(&b),
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
    /// Cluster mode: a resume that this shard's history cannot satisfy first reads the
    /// channel's Redis stream (the only await here; the connection is not in the tables
    /// yet, so nothing is delivered to it meanwhile).
    pub async fn register(&self, conn: &Rc<Conn>, mut upgrade: Upgrade) {
        let channels = std::mem::take(&mut upgrade.channels);
        let remote = self.fetch_for_resume(&channels, &upgrade).await;
        self.replay(conn, &channels, &upgrade, remote);
        let membership = self.subscribers.borrow_mut().insert(conn.clone(), channels);
        *conn.membership.borrow_mut() = membership;
        let stats = self.stats();
        stats.connections.fetch_add(1, Relaxed);
        stats.accepted.fetch_add(1, Relaxed);
        if conn.deflate {
            self.metrics.deflate_connections.fetch_add(1, Relaxed);
        }
        if conn.envelope {
            self.metrics.envelope_connections.fetch_add(1, Relaxed);
        }
    }

    /// Cluster mode only: for each channel of a `since=` resume that local history cannot
    /// satisfy, what the Redis stream holds (`None` where not needed or not reachable).
    async fn fetch_for_resume(
        &self,
        channels: &[ChannelName],
        upgrade: &Upgrade,
    ) -> Vec<Option<crate::cluster::Fetched>> {
        let (Some(cluster), Some(since)) = (crate::cluster::get(), &upgrade.since) else {
            return Vec::new();
        };
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
            let mut fetched = cluster.fetch(ch.clone(), since.seqs[i]).await;
            if let Some(f) = &fetched
                && f.epoch.is_some_and(|e| e != since.epochs[i])
            {
                // Another epoch: the client gets a reset and everything held, from seq 1.
                fetched = cluster.fetch(ch.clone(), 0).await;
            }
            out.push(fetched);
        }
        out
    }

    /// Queues notices and history for `since=` / `last=`.
    fn replay(
        &self,
        conn: &Rc<Conn>,
        channels: &[ChannelName],
        upgrade: &Upgrade,
        mut remote: Vec<Option<crate::cluster::Fetched>>,
    ) {
        if upgrade.since.is_none() && upgrade.last == 0 {
            return;
        }
        self.apply_pending();
        let now = Instant::now();
        let history = self.history.borrow();
        let mut out = conn.out.borrow_mut();
        let mut replayed = 0u64;
        let cluster = crate::cluster::get().is_some();
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
                (Some(f), Some(s)) => crate::cluster::resume::plan(
                    ch,
                    s.seqs[i],
                    s.epochs[i],
                    f,
                    history.held_after(ch, 0, now),
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
                if conn.envelope {
                    let f = frame::encode_data(MessageKind::Text, text.as_bytes(), false);
                    out.push(OutFrame::control(f.bytes().clone()));
                }
            }
            if let Some(seq) = plan.skip_until {
                conn.skip.borrow_mut().push((ch.clone(), seq));
            }
            for b in &plan.replay {
                let frames = ShardFrames::new(b, &self.metrics);
                let f = frames.pick(conn.envelope, conn.deflate);
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
        if !conn.out.borrow().is_empty() {
            self.mark_dirty(conn);
        }
    }

    /// Takes a finished connection out of the tables.
    pub fn remove(&self, conn: &Rc<Conn>, reason: CloseReason) {
        conn.abort();
        let membership = std::mem::take(&mut *conn.membership.borrow_mut());
        if !self.subscribers.borrow_mut().remove(membership) {
            return;
        }
        let stats = self.stats();
        stats.connections.fetch_sub(1, Relaxed);
        stats.closed[reason as usize].fetch_add(1, Relaxed);
        self.metrics.open_connections.fetch_sub(1, Relaxed);
        if conn.deflate {
            self.metrics.deflate_connections.fetch_sub(1, Relaxed);
        }
        if conn.envelope {
            self.metrics.envelope_connections.fetch_sub(1, Relaxed);
        }
        // Free queued frames now rather than when a writer task notices.
        conn.out.borrow_mut().discard_unsent();
    }

    fn mark_dirty(&self, conn: &Rc<Conn>) {
        if !conn.dirty.replace(true) {
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// Queues a control frame (pong) for one connection; it is flushed with the next batch.
    pub fn enqueue_control(&self, conn: &Rc<Conn>, bytes: Bytes) {
        conn.out.borrow_mut().push(OutFrame::control(bytes));
        self.mark_dirty(conn);
    }

    /// Starts closing: queue a close frame, and for `hard` closes (protocol errors, slow
    /// consumers) drop what was queued and cut the connection once the frame is out.
    pub fn close(&self, conn: &Rc<Conn>, code: u16, reason: &str, why: CloseReason, hard: bool) {
        if !conn.is_open() {
            return;
        }
        conn.state.set(State::Closing { since: self.now_ms(), reason: why, hard });
        let mut out = conn.out.borrow_mut();
        if hard {
            out.discard_unsent();
        }
        out.push(OutFrame::control(frame::encode_close(code, reason).bytes().clone()));
        drop(out);
        self.mark_dirty(conn);
    }

    /// Queues one broadcast on every subscriber (no socket IO; see [`Shard::flush_dirty`]).
    pub fn enqueue_broadcast(&self, b: &Arc<Broadcast>) {
        self.history.borrow_mut().record(b);
        let frames = ShardFrames::new(b, &self.metrics);
        let mut slow = Vec::new();
        self.subscribers.borrow().deliver(&frames, self.cfg.max_queue_bytes, &mut self.dirty.borrow_mut(), &mut slow);
        for conn in slow {
            self.close_slow_consumer(&conn);
        }
    }

    /// A connection whose backlog passed --max-queue-bytes: close 1008 and cut it off now,
    /// since a client that does not read will not read our close frame either.
    fn close_slow_consumer(&self, conn: &Rc<Conn>) {
        self.close(
            conn,
            frame::close_code::POLICY_VIOLATION,
            "slow consumer: outbound queue over max-queue-bytes",
            CloseReason::SlowConsumer,
            true,
        );
        let _ = self.flush_conn(conn);
        conn.abort();
    }

    /// Flushes every connection that got frames since the last flush.
    pub fn flush_dirty(&self) {
        let mut list = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in list.drain(..) {
            conn.dirty.set(false);
            self.flush_conn(&conn);
        }
        let mut dirty = self.dirty.borrow_mut();
        if dirty.is_empty() {
            *dirty = list; // keep the allocation
        }
    }

    /// Writes what the socket takes. Returns true while the connection stays blocked (a
    /// writer task is, or now is, waiting for writability).
    pub fn flush_conn(&self, conn: &Rc<Conn>) -> bool {
        let mut written = Written::default();
        let result = conn.out.borrow_mut().flush(conn.fd, &mut written, &mut self.latency.borrow_mut());
        if written.frames > 0 {
            let stats = self.stats();
            stats.frames_written.fetch_add(written.frames, Relaxed);
            if written.plain_bytes > 0 {
                stats.bytes_plain.fetch_add(written.plain_bytes, Relaxed);
            }
            if written.deflate_bytes > 0 {
                stats.bytes_deflate.fetch_add(written.deflate_bytes, Relaxed);
            }
        }
        match result {
            Ok(Flush::Done) => {
                if !conn.is_open() {
                    conn.close_frame_sent();
                }
                false
            }
            Ok(Flush::Blocked) => {
                if !conn.writer_active.replace(true) {
                    monoio::spawn(conn::writer(self.rc(), conn.clone()));
                }
                true
            }
            Err(_) => {
                conn.abort();
                false
            }
        }
    }

    fn rc(&self) -> Rc<Shard> {
        SELF.with(|s| s.borrow().clone().expect("shard registered on its thread"))
    }

    /// Pings quiet connections, closes idle ones and stragglers, publishes the latency
    /// histogram. Runs once per tick for the whole shard.
    fn sweep(&self) {
        let now = self.now_ms();
        let ping_ms = self.cfg.ping_interval.as_millis() as u64;
        let idle_ms = self.cfg.idle_timeout.as_millis() as u64;
        let mut idle = Vec::new();
        {
            let subscribers = self.subscribers.borrow();
            for conn in subscribers.iter() {
                match conn.state.get() {
                    State::Open => {
                        let seen = conn.last_seen.get();
                        if now.saturating_sub(seen) >= idle_ms {
                            idle.push(conn.clone());
                        } else if now.saturating_sub(seen.max(conn.last_ping.get())) >= ping_ms {
                            conn.last_ping.set(now);
                            conn.out.borrow_mut().push(self.ping.clone());
                            self.mark_dirty(conn);
                        } else if !conn.writer_active.get() {
                            conn.out.borrow_mut().shrink_idle();
                        }
                    }
                    State::Closing { since, .. } => {
                        if now.saturating_sub(since) >= CLOSE_GRACE_MS {
                            conn.abort();
                        }
                    }
                }
            }
        }
        for conn in idle {
            self.close(&conn, frame::close_code::GOING_AWAY, "idle timeout", CloseReason::IdleTimeout, false);
        }
        self.flush_dirty();
        self.inflater.borrow_mut().shrink();
        self.history.borrow_mut().expire(Instant::now());
        let mut local = self.latency.borrow_mut();
        if !local.is_empty()
            && let Ok(mut shared) = self.stats().latency.lock()
        {
            let _ = shared.get_or_insert_with(new_latency_histogram).add(&*local);
            local.reset();
        }
        crate::memory::release();
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

thread_local! {
    /// The shard of this thread, so a `&Shard` can spawn tasks that need an `Rc<Shard>`.
    static SELF: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// What a shard thread reports once its runtime is up: the driver, or why it failed.
pub type ReadyReport = Result<&'static str, String>;

/// Runs a shard on the current thread until it has drained.
pub fn run(
    id: usize,
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    listener: std::net::TcpListener,
    (requeue, rx): (flume::Sender<ShardMsg>, flume::Receiver<ShardMsg>),
    ready: std::sync::mpsc::Sender<ReadyReport>,
) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if !cores.is_empty() {
        let core = cores[id % cores.len()];
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = id, "could not pin to CPU {}", core.id);
        }
    }
    let (mut rt, driver) = match build_runtime(cfg.driver) {
        Ok(built) => built,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot use listener: {e}")));
                return;
            }
        };
        let shard = Rc::new(Shard::new(id, cfg, metrics, rx.clone(), requeue));
        SELF.with(|s| *s.borrow_mut() = Some(shard.clone()));
        let _ = ready.send(Ok(driver));
        monoio::spawn(accept_loop(shard.clone(), listener));
        monoio::spawn(sweep_loop(shard.clone()));
        while let Ok(msg) = rx.recv_async().await {
            let mut next = Some(msg);
            let mut batch = 0;
            let mut waited = false;
            while let Some(msg) = next.take() {
                match msg {
                    ShardMsg::Broadcast(b) => shard.enqueue_broadcast(&b),
                    ShardMsg::Drain => {
                        shard.flush_dirty();
                        shard.drain().await;
                        SELF.with(|s| s.borrow_mut().take());
                        return;
                    }
                }
                batch += 1;
                if batch < MAX_BATCH {
                    next = rx.try_recv().ok();
                    if next.is_none() && !waited && !shard.cfg.flush_delay.is_zero() {
                        // --flush-delay: let more broadcasts join this batch, so that each
                        // connection gets them in one write. Connections keep being served.
                        waited = true;
                        monoio::time::sleep(shard.cfg.flush_delay).await;
                        next = rx.try_recv().ok();
                    }
                }
            }
            shard.flush_dirty();
        }
    });
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut last_warn: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                monoio::spawn(conn::accept(shard.clone(), stream));
            }
            Err(e) => {
                let raw = e.raw_os_error().unwrap_or(0);
                if shard.draining.get() || raw == libc::EINVAL {
                    break; // the listener was shut down for draining
                }
                if matches!(raw, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
                    // Out of descriptors or memory: back off instead of spinning.
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(shard = shard.id, "accept: {e}; raise RLIMIT_NOFILE or lower --max-connections");
                        last_warn = Some(Instant::now());
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::debug!(shard = shard.id, "accept: {e}");
                }
            }
        }
    }
}

async fn sweep_loop(shard: Rc<Shard>) {
    let base = shard.cfg.ping_interval.min(shard.cfg.idle_timeout) / 4;
    let tick = base.clamp(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        monoio::time::sleep(tick).await;
        if SELF.with(|s| s.borrow().is_none()) {
            return;
        }
        shard.sweep();
    }
}

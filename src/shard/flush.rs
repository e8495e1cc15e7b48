//! A shard's passes: writing every connection that has frames queued and judging it
//! against `--max-queue-bytes`, and when the batch loop runs one (`--flush-delay`).
//!
//! A *pass* is one [`Shard::flush_dirty`]: one non-blocking `sendmsg` to every connection
//! with frames queued, in turn, on the shard's thread. (A socket that does not take
//! everything gets a writer task that finishes later; that is not part of the pass.) Its
//! time is what a batch costs, nearly independent of how many frames each write carries: on
//! loopback the kernel's per-write path is most of it.
//!
//! `auto` ([`Coalescer`]): while broadcasts arrive faster than a pass completes (some came
//! during the last one) and that pass took at least [`MIN_PASS`], the next one waits until
//! [`HOLD_SHARE`] of the last pass's time (all of it) has gone by since it ended, at most
//! [`MAX_HOLD`]. So a shard under load writes at most half the time (with passes up to
//! `MAX_HOLD`), and each write carries the frames of twice as long. Light fan-out (a pass
//! under [`MIN_PASS`]) or broadcasts slower than a pass never wait. A batch that fills (`Shard::batch_has_room`) ends its hold
//! at once, so a hold never brings a queue nearer `--max-queue-bytes` than a batch may.
//!
//! During the batch loop's passes the shard takes new broadcasts from its inbox every
//! [`POLL_EVERY`] connections ([`Shard::take_arrivals`]), so a connection late in the pass
//! gets what was published while the pass ran in the same write, instead of one pass later:
//! a frame waits at most one pass plus one hold for its connection's next write, not two
//! passes.
//!
//! Never: a timer or an allocation per connection; a lock per connection (the inbox is
//! polled once per [`POLL_EVERY`] connections, as the batch loop polls it per broadcast).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::outbound::{Flush, Written};
use super::{Shard, sockio};
use crate::config::FlushDelay;
use crate::ops::metrics::CloseReason;
use crate::ws::frame;

/// A pass shorter than this never makes the next one wait (a few hundred sockets).
pub const MIN_PASS: Duration = Duration::from_millis(1);
/// The hold after a busy pass, as a share of that pass's time.
pub const HOLD_SHARE: f64 = 1.0;
/// The longest `auto` hold.
pub const MAX_HOLD: Duration = Duration::from_millis(100);
/// Connections written between two looks at the inbox during a pass.
pub const POLL_EVERY: usize = 64;

/// The last pass of the batch loop, as the hold of the next one needs it.
#[derive(Debug, Clone, Copy)]
struct Pass {
    took: Duration,
    ended: Instant,
    /// Broadcasts arrived while it ran.
    busy: bool,
}

/// The hold policy of one shard.
#[derive(Debug)]
pub struct Coalescer {
    policy: FlushDelay,
    last: Option<Pass>,
    /// The batch loop is holding a batch: the sweep leaves the dirty list to its pass.
    holding: bool,
}

impl Coalescer {
    pub fn new(policy: FlushDelay) -> Self {
        Self { policy, last: None, holding: false }
    }

    /// Until when a batch opened `now` waits before its pass; `None`: write at once.
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        match self.policy {
            FlushDelay::Fixed(d) if d.is_zero() => None,
            FlushDelay::Fixed(d) => Some(now + d),
            FlushDelay::Auto => {
                let p = self.last.filter(|p| p.busy && p.took >= MIN_PASS)?;
                let until = p.ended + p.took.mul_f64(HOLD_SHARE).min(MAX_HOLD);
                (until > now).then_some(until)
            }
        }
    }

    /// Records a pass of the batch loop.
    pub fn pass_done(&mut self, started: Instant, ended: Instant, busy: bool) {
        self.last = Some(Pass { took: ended.saturating_duration_since(started), ended, busy });
    }
}

impl Shard {
    /// A connection whose backlog, right after a write attempt, is over --max-queue-bytes:
    /// close 1008 and cut it off now, since a client that does not read will not read our
    /// close frame either.
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

    /// Whether some broadcast may still wait for a pass.
    pub fn has_unflushed(&self) -> bool {
        self.unflushed.get().0 > 0
    }

    /// Flushes every connection that got frames since the last flush, then judges it: the
    /// bound is on what the client has not taken after this attempt (plus pongs it owes),
    /// never on frames not yet offered to its socket.
    pub fn flush_dirty(&self) {
        self.flush_dirty_polling(false);
    }

    /// [`Shard::flush_dirty`]; with `poll` (the batch loop's passes only, which then come
    /// back for what is left) also taking broadcasts from the inbox every
    /// [`POLL_EVERY`] connections. Returns how many it took.
    fn flush_dirty_polling(&self, mut poll: bool) -> usize {
        // What arrives during this pass is all that connections already written may lack
        // after it; the batch bound counts it until the next pass has offered it.
        let (mut taken, mut taken_bytes) = (0, 0);
        let mut list = std::mem::take(&mut *self.dirty.borrow_mut());
        for (i, conn) in list.drain(..).enumerate() {
            if poll && i % POLL_EVERY == POLL_EVERY - 1 {
                let before = self.unflushed.get().1;
                let (n, more) = self.take_arrivals();
                (taken, taken_bytes, poll) = (taken + n, taken_bytes + self.unflushed.get().1 - before, more);
            }
            conn.clear_dirty();
            let blocked = self.flush_conn(&conn);
            self.judge(&conn, blocked);
        }
        self.unflushed.set((taken, taken_bytes));
        let mut dirty = self.dirty.borrow_mut();
        if dirty.is_empty() {
            *dirty = list; // keep the allocation
        }
        taken
    }

    /// After a read: writes what the connection has queued (its pongs, echoes or close, and
    /// any broadcasts) and judges it, leaving every other connection to the batch loop's
    /// pass, so that a client's ping never cuts short another batch's hold. If it is on the
    /// dirty list it stays there; the pass then finds its queue empty and makes no call.
    pub fn flush_after_read(&self, conn: &Rc<Conn>) {
        if !conn.out().borrow().is_empty() {
            let blocked = self.flush_conn(conn);
            self.judge(conn, blocked);
        }
    }

    /// Right after a write attempt: closes the connection if what it has not taken (plus
    /// the pongs it owes) is over --max-queue-bytes.
    fn judge(&self, conn: &Rc<Conn>, blocked: bool) {
        if !conn.is_open() {
            return;
        }
        let mut out = conn.out().borrow_mut();
        if out.owes() {
            // The kernel may take our pongs long after the client stopped reading; only
            // its acknowledgements tell. Asked only of connections that sent pings.
            out.peer_acked(sockio::bytes_acked(conn.fd()));
        }
        let slow = (blocked || out.owes()) && out.over(self.cfg.max_queue_bytes);
        drop(out);
        if slow {
            self.close_slow_consumer(conn);
        }
    }

    /// Writes what the socket takes. Returns true while the connection stays blocked (a
    /// writer task is, or now is, waiting for writability).
    pub fn flush_conn(&self, conn: &Rc<Conn>) -> bool {
        let mut written = Written::default();
        let result = conn.out().borrow_mut().flush(conn.fd(), &mut written, &mut self.latency.borrow_mut());
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
                if let Some(shard) = self.me.upgrade()
                    && conn.start_writer()
                {
                    monoio::spawn(writer(shard, conn.clone()));
                }
                true
            }
            Err(_) => {
                conn.abort();
                false
            }
        }
    }

    /// During a pass: takes the broadcasts that have arrived since the last look and queues
    /// them, while the batch has room. Returns how many it took, and false once the inbox
    /// should not be looked at again in this pass (batch full, or a drain order, which goes
    /// back on the queue for the batch loop, as in `apply_pending`).
    pub(super) fn take_arrivals(&self) -> (usize, bool) {
        let mut took = 0;
        while self.batch_has_room() {
            let Ok(msg) = self.inbox.try_recv() else { return (took, true) };
            match self.take(&msg) {
                Some(n) => took += n,
                None => {
                    let _ = self.requeue.send(msg);
                    return (took, false);
                }
            }
        }
        (took, false)
    }

    /// The batch loop's pass: [`Shard::flush_dirty`], taking broadcasts as they arrive, then
    /// recorded for the next hold and in the shard's metrics.
    pub fn flush_pass(&self) {
        let started = Instant::now();
        let arrived = self.flush_dirty_polling(true);
        let ended = Instant::now();
        let busy = arrived > 0 || !self.inbox.is_empty();
        self.coalesce.borrow_mut().pass_done(started, ended, busy);
        let stats = self.stats();
        stats.flush_passes.fetch_add(1, Relaxed);
        stats.flush_pass_us.fetch_add(ended.saturating_duration_since(started).as_micros() as u64, Relaxed);
    }

    /// Until when the batch being built waits before its pass (see [`Coalescer`]); the
    /// hold starts now if there is one.
    pub fn hold_until(&self) -> Option<Instant> {
        let mut c = self.coalesce.borrow_mut();
        let until = c.hold_until(Instant::now());
        c.holding = until.is_some();
        until
    }

    /// Whether the batch loop is holding a batch. The sweep then leaves the dirty list to
    /// the pass that ends the hold (its pings and closes go out with it, at most a hold
    /// later), so that a sweep tick does not write a held batch early.
    pub fn holding(&self) -> bool {
        self.coalesce.borrow().holding
    }

    /// Counts a hold that ran from `since` until now, and ends it.
    pub fn held(&self, since: Instant) {
        self.coalesce.borrow_mut().holding = false;
        let stats = self.stats();
        stats.flush_holds.fetch_add(1, Relaxed);
        stats.flush_hold_us.fetch_add(since.elapsed().as_micros() as u64, Relaxed);
    }
}

/// The writer task, alive only while the connection's queue waits on a full socket.
async fn writer(shard: Rc<Shard>, conn: Rc<Conn>) {
    loop {
        if conn.stream().writable(false).await.is_err() {
            conn.abort();
            break;
        }
        if !shard.flush_conn(&conn) {
            break;
        }
    }
    conn.writer_done();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn auto_holds_only_after_a_busy_pass_of_at_least_min_pass() {
        let mut c = Coalescer::new(FlushDelay::Auto);
        let t0 = Instant::now();
        assert_eq!(c.hold_until(t0), None, "no pass yet");
        // A long pass, but nothing came during it: broadcasts are slower than a pass.
        c.pass_done(t0, t0 + 80 * MS, false);
        assert_eq!(c.hold_until(t0 + 81 * MS), None);
        // Busy, but short: light fan-out never waits.
        c.pass_done(t0, t0 + MIN_PASS / 2, true);
        assert_eq!(c.hold_until(t0 + MIN_PASS), None);
        // Busy and long: hold for a share of it, counted from its end.
        c.pass_done(t0, t0 + 80 * MS, true);
        assert_eq!(c.hold_until(t0 + 81 * MS), Some(t0 + 80 * MS + (80 * MS).mul_f64(HOLD_SHARE)));
        // A batch that opens after that needs no wait.
        assert_eq!(c.hold_until(t0 + 200 * MS), None);
        // Never more than MAX_HOLD.
        c.pass_done(t0, t0 + 2000 * MS, true);
        assert_eq!(c.hold_until(t0 + 2000 * MS), Some(t0 + 2000 * MS + MAX_HOLD));
    }

    #[test]
    fn fixed_delays_hold_every_batch_and_zero_never() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(FlushDelay::Fixed(50 * MS));
        assert_eq!(c.hold_until(t0), Some(t0 + 50 * MS));
        c.pass_done(t0, t0 + MS, false);
        assert_eq!(c.hold_until(t0 + 2 * MS), Some(t0 + 52 * MS), "whatever the last pass was");
        let mut c = Coalescer::new(FlushDelay::Fixed(Duration::ZERO));
        c.pass_done(t0, t0 + 500 * MS, true);
        assert_eq!(c.hold_until(t0 + 500 * MS), None, "0 never waits");
    }
}

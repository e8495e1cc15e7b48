//! The shard's one periodic task: pings quiet connections, closes idle ones, those whose
//! token expired (4001) and stragglers of a close, trims idle buffers, expires history,
//! publishes the latency histogram, reports subscribers per channel while `/stats` is
//! read (`ops::stats::watch`) and returns freed memory. One sweep per shard replaces a
//! timer per connection.

use std::rc::Rc;
#[cfg(debug_assertions)]
use std::time::Duration;
use std::time::Instant;

use super::conn::State;
use super::{CLOSE_GRACE_MS, Shard};
use crate::ops::metrics::{CloseReason, new_latency_histogram};
use crate::ops::stats::watch;
use crate::ws::frame;

impl Shard {
    /// Pings quiet connections, closes idle ones and stragglers, publishes the latency
    /// histogram. Runs once per tick for the whole shard.
    pub(super) fn sweep(&self) {
        self.metrics.swept(self.id); // read by the watchdog thread (`ops::notify::watchdog`)
        let now = self.now_ms();
        let ping_ms = self.cfg.ping_interval.as_millis() as u64;
        let idle_ms = self.cfg.idle_timeout.as_millis() as u64;
        // Token expiry is wall-clock time (a token's exp), read once per sweep.
        let unix_now = crate::access::unix_now().min(u64::from(u32::MAX)) as u32;
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        {
            let subscribers = self.subscribers.borrow();
            for conn in subscribers.iter() {
                match conn.state() {
                    State::Open => {
                        if conn.expired(unix_now) {
                            expired.push(conn.clone());
                        } else if now.saturating_sub(conn.last_seen()) >= idle_ms {
                            // Nothing heard, but data still on its way to the client (in our
                            // queue or the kernel's): when this shard is behind, the ping
                            // waits behind data and its pong comes late. A client whose
                            // kernel keeps taking our bytes is not idle.
                            let pending =
                                !conn.out().borrow().is_empty() || super::sockio::unacked_bytes(conn.fd()) > 0;
                            let taking =
                                pending && conn.out().borrow_mut().peer_took(super::sockio::bytes_acked(conn.fd()));
                            if taking {
                                conn.seen(now);
                            } else {
                                idle.push(conn.clone());
                            }
                        } else if conn.ping_due(now, ping_ms) {
                            conn.out().borrow_mut().push(self.ping.clone());
                            self.mark_dirty(conn);
                        } else if !conn.writer_active() {
                            conn.out().borrow_mut().shrink_idle();
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
        for conn in expired {
            self.close(&conn, frame::close_code::TOKEN_EXPIRED, "token expired", CloseReason::TokenExpired, false);
        }
        if !self.holding() {
            self.flush_dirty();
        }
        self.inflater.borrow_mut().shrink();
        self.history.borrow_mut().expire(Instant::now());
        self.peers.purge_some(); // one stripe of the shared per-address table per tick
        let mut local = self.latency.borrow_mut();
        if !local.is_empty()
            && let Ok(mut shared) = self.stats().latency.lock()
        {
            let _ = shared.get_or_insert_with(new_latency_histogram).add(&*local);
            local.reset();
        }
        if let Some(wanted) = self.metrics.channel_watch.due(&self.metrics, self.id) {
            let report = self.subscribers.borrow().channel_report(&wanted, watch::TOP);
            watch::report(&self.metrics, self.id, report);
        }
        crate::ops::memory::release();
    }
}

pub(super) async fn sweep_loop(shard: Rc<Shard>) {
    let tick = shard.cfg.sweep_tick();
    #[cfg(debug_assertions)]
    wedge_for_tests(&shard);
    loop {
        monoio::time::sleep(tick).await;
        if shard.stopped.get() {
            return;
        }
        shard.sweep();
    }
}

/// Test only (debug builds): `--debug-wedge-shard N@DURATION` blocks shard N's thread for
/// good DURATION after start, with a task that sleeps the thread rather than awaiting, as a
/// wedged shard would. tests/watchdog.rs checks that WATCHDOG=1 then stops.
#[cfg(debug_assertions)]
fn wedge_for_tests(shard: &Shard) {
    let Some(w) = shard.cfg.debug_wedge_shard.filter(|w| w.shard == shard.id) else { return };
    monoio::spawn(async move {
        monoio::time::sleep(w.after).await;
        tracing::warn!(shard = w.shard, "--debug-wedge-shard: blocking this shard's thread for good");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    });
}

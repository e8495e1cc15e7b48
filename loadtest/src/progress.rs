//! The live progress line on a terminal: connected/target, published, delivered, lost so
//! far, the p99 latency of the last interval, elapsed and remaining time, redrawn in place
//! on stderr (`\r`, erase line) a few times a second.
//!
//! Shown only when stderr is a terminal and neither `--json` nor `--quiet` is given. Workers
//! then send a [`ProgressTick`] every [`TICK_MS`]; the parent keeps the latest of each and a
//! drawing thread merges them. Notes printed meanwhile ([`note`]) erase the line first, so
//! they never end up glued to it; the next redraw puts it back under them.

use crate::report::{add_pairs, new_hist};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often workers report and the line is redrawn.
pub const TICK_MS: u64 = 500;

/// One worker's state, sent every [`TICK_MS`] while the parent shows progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgressTick {
    /// Connections open now.
    pub open: u64,
    /// Messages received so far (all connections).
    pub deliveries: u64,
    /// Holes so far: sequence numbers below the highest one a connection (channels mode: a
    /// connection's channel) has seen that it has not received.
    pub gaps: u64,
    /// Latencies (µs histogram pairs) since the previous tick.
    pub latency_us: Vec<(u64, u64)>,
}

/// Where the run is, for the "remaining" estimate.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Connecting,
    Storm,
    /// Publishing `count` messages at `rate` from `start`.
    Publishing {
        start: Instant,
        count: u64,
        rate: f64,
    },
    /// Holding idle connections until then.
    Holding {
        until: Instant,
    },
    /// Waiting for outstanding deliveries, at most until then.
    Draining {
        until: Instant,
    },
}

/// What the line is drawn from.
pub struct Live {
    started: Instant,
    target: u64,
    connect_rate: f64,
    /// Messages to publish (0 in idle mode) and the time the rest of the run takes after
    /// connecting, for the estimate while connecting.
    planned: u64,
    after_connect: Duration,
    ticks: Mutex<Vec<Option<ProgressTick>>>,
    published: AtomicU64,
    phase: Mutex<Phase>,
    last_p99_ms: Mutex<Option<f64>>,
}

static DRAWN: AtomicBool = AtomicBool::new(false);
static QUIET: AtomicBool = AtomicBool::new(false);
static STDERR: Mutex<()> = Mutex::new(());

/// `--quiet`: [`note`] prints nothing from now on ([`warn`] still does).
pub fn set_quiet() {
    QUIET.store(true, Ordering::SeqCst);
}

/// A progress note on stderr (none with `--quiet`).
pub fn note(msg: &str) {
    if !QUIET.load(Ordering::SeqCst) {
        warn(msg);
    }
}

/// A warning or error on stderr, erasing the progress line first if one is drawn.
pub fn warn(msg: &str) {
    let _g = STDERR.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if DRAWN.swap(false, Ordering::SeqCst) {
        let _ = err.write_all(b"\r\x1b[2K");
    }
    let _ = writeln!(err, "crier-load: {msg}");
}

/// Whether stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize; on failure we keep the default.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 { ws.ws_col as usize } else { 120 }
}

impl Live {
    pub fn new(workers: usize, target: u64, connect_rate: f64, planned: u64, after_connect: Duration) -> Arc<Live> {
        Arc::new(Live {
            started: Instant::now(),
            target,
            connect_rate,
            planned,
            after_connect,
            ticks: Mutex::new(vec![None; workers]),
            published: AtomicU64::new(0),
            phase: Mutex::new(Phase::Connecting),
            last_p99_ms: Mutex::new(None),
        })
    }

    pub fn tick(&self, worker: usize, t: ProgressTick) {
        if let Some(slot) = self.ticks.lock().unwrap_or_else(|e| e.into_inner()).get_mut(worker) {
            *slot = Some(t);
        }
    }

    pub fn set_published(&self, n: u64) {
        self.published.store(n, Ordering::Relaxed);
    }

    pub fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// The line as it is now (without terminal control characters).
    pub fn line(&self) -> String {
        let (mut open, mut delivered, mut gaps) = (0, 0, 0);
        let mut h = new_hist();
        for t in self.ticks.lock().unwrap_or_else(|e| e.into_inner()).iter().flatten() {
            open += t.open;
            delivered += t.deliveries;
            gaps += t.gaps;
            add_pairs(&mut h, &t.latency_us);
        }
        let p99 = {
            let mut last = self.last_p99_ms.lock().unwrap_or_else(|e| e.into_inner());
            if !h.is_empty() {
                *last = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
            }
            *last
        };
        let now = Instant::now();
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let (what, left) = match phase {
            Phase::Connecting => {
                let rest = self.target.saturating_sub(open) as f64 / self.connect_rate;
                ("connecting", Some(rest + self.after_connect.as_secs_f64()))
            }
            Phase::Storm => ("storm", None),
            Phase::Publishing { start, count, rate } => {
                let end = start + Duration::from_secs_f64(count.saturating_sub(1) as f64 / rate);
                ("publishing", Some(end.saturating_duration_since(now).as_secs_f64()))
            }
            Phase::Holding { until } => ("holding", Some(until.saturating_duration_since(now).as_secs_f64())),
            Phase::Draining { until } => ("draining", Some(until.saturating_duration_since(now).as_secs_f64())),
        };
        let mut s = format!("{what}  connected {open}/{}", self.target);
        if self.planned > 0 {
            s += &format!(
                "  published {}/{}  delivered {delivered}  lost {gaps}  p99 {}",
                self.published.load(Ordering::Relaxed),
                self.planned,
                p99.map_or("-".into(), |v| format!("{v:.1} ms"))
            );
        }
        s += &format!("  {:.0} s elapsed", now.duration_since(self.started).as_secs_f64());
        s += &match (phase, left) {
            (Phase::Draining { .. }, Some(l)) => format!(", ≤{l:.0} s left"),
            (_, Some(l)) => format!(", ~{l:.0} s left"),
            (_, None) => String::new(),
        };
        s
    }
}

/// The drawing thread; [`Drawer::stop`] erases the line and ends it.
pub struct Drawer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drawer {
    pub fn start(live: Arc<Live>) -> Drawer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    draw(&live.line());
                    let until = Instant::now() + Duration::from_millis(TICK_MS / 2);
                    while !s.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
            .expect("spawn progress thread");
        Drawer { stop, thread: Some(thread) }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _g = STDERR.lock().unwrap_or_else(|e| e.into_inner());
        if DRAWN.swap(false, Ordering::SeqCst) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Drawer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn draw(line: &str) {
    let width = terminal_width().saturating_sub(1).max(20);
    let text: String = line.chars().take(width).collect();
    let _g = STDERR.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{text}");
    let _ = err.flush();
    DRAWN.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::hist_to_pairs;

    #[test]
    fn line_sums_workers_and_keeps_the_last_p99() {
        let live = Live::new(2, 100, 1000.0, 50, Duration::from_secs(5));
        assert!(live.line().starts_with("connecting  connected 0/100  published 0/50  delivered 0  lost 0  p99 -"));
        let mut h = new_hist();
        for v in 1..=100u64 {
            h.record(v * 100).unwrap();
        }
        live.tick(0, ProgressTick { open: 60, deliveries: 10, gaps: 1, latency_us: hist_to_pairs(&h) });
        live.tick(1, ProgressTick { open: 40, deliveries: 5, gaps: 2, latency_us: vec![] });
        live.set_published(7);
        live.set_phase(Phase::Publishing { start: Instant::now(), count: 50, rate: 10.0 });
        let l = live.line();
        assert!(
            l.starts_with("publishing  connected 100/100  published 7/50  delivered 15  lost 3  p99 9.9 ms"),
            "{l}"
        );
        assert!(l.ends_with(", ~5 s left"), "{l}");
        // An interval without deliveries keeps showing the last p99.
        live.tick(0, ProgressTick { open: 60, deliveries: 10, gaps: 1, latency_us: vec![] });
        assert!(live.line().contains("p99 9.9 ms"));
        live.set_phase(Phase::Draining { until: Instant::now() + Duration::from_secs(3) });
        assert!(live.line().contains("s left"));
        let idle = Live::new(1, 10, 10.0, 0, Duration::from_secs(1));
        assert!(!idle.line().contains("published"));
    }
}

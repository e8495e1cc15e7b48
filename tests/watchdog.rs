//! The systemd watchdog pings only for a process whose shards all work: WATCHDOG=1 goes out
//! only while every shard's sweep has run within the last WATCHDOG_USEC, so a wedged shard
//! gets crier restarted instead of being kept alive by the healthy watchdog thread.
//!
//! The test plays systemd's side: it binds a datagram socket, starts the real binary with
//! NOTIFY_SOCKET pointing at it and WATCHDOG_USEC set, and reads what arrives (as
//! tests/systemd_notify.rs does). A shard is wedged with `--debug-wedge-shard N@DURATION`,
//! which exists only in debug builds: that shard's thread then sleeps for good, as a shard
//! stuck in a blocking call would.
//!
//! Every wait has a deadline; the only fixed wait is the window in which no WATCHDOG=1 may
//! arrive, which is what is asserted.

mod common;
use common::*;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

/// WATCHDOG_USEC given to crier: pings every 200 ms, each shard sweeps every 100 ms.
const WATCHDOG_USEC: u64 = 400_000;
const INTERVAL: Duration = Duration::from_micros(WATCHDOG_USEC);
const STEP: Duration = Duration::from_secs(10);

/// systemd's side of NOTIFY_SOCKET.
struct NotifySocket {
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        NotifySocket { sock: UnixDatagram::bind(path).expect("bind notify socket") }
    }

    /// The next datagram's assignments (sd_notify(3): newline-separated), or None if none
    /// arrives by `deadline`.
    fn next(&self, deadline: Instant) -> Option<Vec<String>> {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).expect("set_read_timeout");
            match self.sock.recv(&mut buf) {
                Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string).collect()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("recv on notify socket: {e}"),
            }
        }
    }

    /// Waits for a datagram carrying `want`, at most `timeout`; what arrived before it is
    /// returned for the failure message.
    fn expect(&self, want: &str, timeout: Duration, server: &Server) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let Some(lines) = self.next(deadline) else {
                panic!(
                    "no {want} on NOTIFY_SOCKET within {timeout:?}; received {seen:?}; crier stderr:\n{}",
                    server.log_text()
                );
            };
            if lines.iter().any(|l| l == want) {
                return;
            }
            seen.extend(lines);
        }
    }

    /// Every assignment already queued on the socket, without waiting.
    fn drain(&self) -> Vec<String> {
        self.sock.set_nonblocking(true).expect("set_nonblocking");
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
        }
        self.sock.set_nonblocking(false).expect("set_nonblocking");
        out
    }
}

fn start(extra: &[&str]) -> (Server, NotifySocket) {
    let b = ServerBuilder::new(Driver::Epoll);
    let notify = NotifySocket::bind(&b.dir().join("notify.sock"));
    let path = b.dir().join("notify.sock");
    let server = b
        .args(extra)
        .env("NOTIFY_SOCKET", path.to_str().expect("temp path is UTF-8"))
        .env("WATCHDOG_USEC", &WATCHDOG_USEC.to_string())
        .start();
    (server, notify)
}

fn sweep_age(server: &Server, shard: &str) -> f64 {
    server
        .metric("crier_shard_sweep_age_seconds", &[("shard", shard)])
        .unwrap_or_else(|| panic!("no crier_shard_sweep_age_seconds{{shard=\"{shard}\"}}:\n{}", server.metrics_text()))
}

#[test]
fn healthy_shards_keep_watchdog_pings_coming() {
    let (mut server, notify) = start(&[]);
    notify.expect("READY=1", STEP, &server);
    // Ten pings in a row, each within a deadline: periodic, not a one-off at start.
    for _ in 0..10 {
        notify.expect("WATCHDOG=1", STEP, &server);
    }
    for shard in ["0", "1"] {
        let age = sweep_age(&server, shard);
        assert!(age < INTERVAL.as_secs_f64(), "shard {shard}'s sweep is {age} s old, over the interval");
    }
    server.assert_running();
}

#[cfg(debug_assertions)]
#[test]
fn a_wedged_shard_stops_watchdog_pings_and_is_named() {
    let (mut server, notify) = start(&["--debug-wedge-shard", "1@1500ms"]);
    notify.expect("READY=1", STEP, &server);
    // Before the wedge, pings come: what stops them below is the wedge, not the set-up.
    notify.expect("WATCHDOG=1", STEP, &server);
    let warning = server
        .wait_log(STEP, |l| l.contains("WARN") && l.contains("is late"))
        .unwrap_or_else(|| panic!("no warning about a late shard; stderr:\n{}", server.log_text()));
    assert!(warning.contains("shard 1 is late"), "the warning names shard 1: {warning}");
    // Pings sent before the warning are queued on the socket already; none may follow it.
    let _ = notify.drain();
    let window = INTERVAL * 5;
    let deadline = Instant::now() + window;
    let mut after = Vec::new();
    while let Some(lines) = notify.next(deadline) {
        after.extend(lines);
    }
    assert!(
        !after.iter().any(|l| l == "WATCHDOG=1"),
        "WATCHDOG=1 arrived within {window:?} after shard 1 wedged: {after:?}; stderr:\n{}",
        server.log_text()
    );
    let late: Vec<String> = server.log_lines().into_iter().filter(|l| l.contains("is late")).collect();
    assert_eq!(late.len(), 1, "the late shard is logged once, not at every skipped ping: {late:?}");
    // /metrics (served by the control thread) shows which shard stopped.
    assert!(sweep_age(&server, "1") > INTERVAL.as_secs_f64(), "shard 1's sweep age is over the interval");
    assert!(sweep_age(&server, "0") < INTERVAL.as_secs_f64(), "shard 0 still sweeps");
    server.assert_running();
}

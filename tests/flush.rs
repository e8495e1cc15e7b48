//! `--flush-delay`: the default, `auto`, never holds a light load (each message is written
//! as soon as it comes), holds batches under heavy fan-out (seen in the shard's
//! `crier_flush_holds_total`), and every message still arrives, once and in order; `0`
//! never holds, whatever the load.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Messages published one at a time, each read by every subscriber before the next.
const LIGHT_MESSAGES: usize = 20;
/// Well under any fixed delay worth setting, and well over a pass of 100 sockets (about a
/// millisecond) even on a loaded machine running a debug build.
const LIGHT_BOUND: Duration = Duration::from_millis(250);

fn holds(s: &Server) -> f64 {
    s.metric0("crier_flush_holds_total", &[])
}

/// Publishes one message at a time to 100 subscribers and returns, per message, the time
/// from the publish until the last subscriber had it.
fn one_at_a_time(s: &Server) -> Vec<Duration> {
    let mut subs: Vec<WsClient> = (0..100).map(|_| s.ws("/ws?channels=light")).collect();
    s.wait_connections(100);
    let mut p = s.publisher();
    let mut took = Vec::new();
    for i in 0..LIGHT_MESSAGES {
        let text = format!("light {i}");
        let start = Instant::now();
        assert_eq!(p.publish("light", text.as_bytes(), false), i as u64 + 1);
        for (k, c) in subs.iter_mut().enumerate() {
            let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("subscriber {k}, message {i}: {e:?}"));
            assert!(m.text() == text, "subscriber {k}: got {:?}, want {text:?}", m.text());
        }
        took.push(start.elapsed());
    }
    took
}

#[test]
fn default_is_auto_and_never_holds_a_light_load() {
    let s = Server::builder(Driver::Epoll).start();
    let took = one_at_a_time(&s);
    let worst = took.iter().max().unwrap();
    assert!(*worst < LIGHT_BOUND, "a message took {worst:?} to reach 100 subscribers: {took:?}");
    // The server's own clock: every delivery written within 100 ms of its publish. (Each
    // shard adds its samples to the served histogram once per sweep tick.)
    let count = (LIGHT_MESSAGES * 100) as f64;
    s.wait_metric("crier_delivery_latency_seconds_count", &[], Duration::from_secs(20), "a sample per delivery", |v| {
        v == count
    });
    let fast = s.metric0("crier_delivery_latency_seconds_bucket", &[("le", "0.1")]);
    assert_eq!(fast, count, "deliveries written more than 100 ms after their publish");
    assert_eq!(holds(&s), 0.0, "auto held a batch at light load");
    assert!(s.metric0("crier_flush_passes_total", &[]) >= LIGHT_MESSAGES as f64, "a pass per message at least");
}

#[test]
fn a_fixed_delay_fails_the_light_bound() {
    // What the bound above guards against: with a fixed wait every message takes longer.
    let s = Server::builder(Driver::Epoll).args(["--flush-delay", "300ms"]).start();
    let took = one_at_a_time(&s);
    assert!(took.iter().all(|t| *t >= Duration::from_millis(300)), "{took:?}");
    assert!(holds(&s) >= LIGHT_MESSAGES as f64, "every batch held: {}", holds(&s));
}

/// Subscribers on one shard, enough that a pass over them takes milliseconds.
const HEAVY_SUBSCRIBERS: usize = 1500;
const HEAVY_MESSAGES: usize = 300;

/// Publishes HEAVY_MESSAGES as fast as the socket takes them to HEAVY_SUBSCRIBERS on one
/// shard, then checks that each subscriber got every one, in order. Returns the server.
fn heavy_fan_out(flush_delay: Option<&str>) -> Server {
    let mut b = Server::builder(Driver::Epoll).args([
        "--shards",
        "1",
        "--max-connections-per-ip",
        "0",
        "--max-handshakes-per-ip-per-second",
        "0",
    ]);
    if let Some(d) = flush_delay {
        b = b.args(["--flush-delay", d]);
    }
    let s = b.omit("--shards").start();
    let mut subs: Vec<WsClient> = (0..HEAVY_SUBSCRIBERS).map(|_| s.ws("/ws?channels=heavy")).collect();
    s.wait_connections(HEAVY_SUBSCRIBERS);
    let mut p = s.publisher();
    for i in 0..HEAVY_MESSAGES {
        assert_eq!(p.publish("heavy", format!("heavy {i:04} {}", "x".repeat(64)).as_bytes(), false), i as u64 + 1);
    }
    for (k, c) in subs.iter_mut().enumerate() {
        for i in 0..HEAVY_MESSAGES {
            let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("subscriber {k}, message {i}: {e:?}"));
            let want = format!("heavy {i:04} ");
            assert!(m.text().starts_with(&want), "subscriber {k}: got {:?} where {want:?} was due", m.text());
        }
    }
    s
}

#[test]
fn heavy_fan_out_engages_the_hold_and_keeps_order() {
    let s = heavy_fan_out(None);
    let (held, seconds) = (holds(&s), s.metric0("crier_flush_hold_seconds_total", &[]));
    assert!(held >= 1.0, "auto never held under heavy fan-out");
    assert!(seconds > 0.0, "{held} holds took no time");
    let passes = s.metric0("crier_flush_passes_total", &[("shard", "0")]);
    assert!(passes >= 1.0 && s.metric0("crier_flush_pass_seconds_total", &[("shard", "0")]) > 0.0);
    assert_eq!(s.metric0("crier_slow_consumer_closes_total", &[]), 0.0);
}

#[test]
fn zero_never_holds_even_under_heavy_fan_out() {
    let s = heavy_fan_out(Some("0"));
    assert_eq!(holds(&s), 0.0, "--flush-delay 0 held a batch");
    assert_eq!(s.metric0("crier_flush_hold_seconds_total", &[]), 0.0);
    assert!(s.metric0("crier_flush_passes_total", &[]) >= 1.0);
}

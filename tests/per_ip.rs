//! Per-address limits, played by the attacker against the real binary: one address past
//! `--max-connections-per-ip` (counted over every shard) or flooding handshakes past
//! `--max-handshakes-per-ip-per-second` gets 429 at once, counted with its own reason,
//! while clients from other addresses keep connecting and receiving every message, and
//! crier's memory and its per-address table stay bounded. Clients bind to 127.0.0.2,
//! 127.0.0.3, … (all of 127.0.0.0/8 is loopback) to be different addresses.
//!
//! Each test holds at most a few hundred sockets and finishes within seconds.

#[macro_use]
mod common;

use common::*;
use std::time::{Duration, Instant};

/// An upgrade from `from` that must be refused for its address: 429 with Retry-After.
fn assert_429(s: &Server, from: &str, why: &str) -> HttpResponse {
    match ws_from(from, s.ws, "/ws?channels=news", &[]) {
        Ok(_) => panic!("{why}: an upgrade from {from} was accepted"),
        Err(r) => {
            assert_eq!(r.status, 429, "{why}: {r:?}");
            assert!(r.header("retry-after").is_some(), "a 429 says when to retry: {r:?}");
            r
        }
    }
}

fn open(s: &Server, from: &str, n: usize) -> Vec<WsClient> {
    (0..n)
        .map(|i| {
            ws_from(from, s.ws, "/ws?channels=news", &[])
                .unwrap_or_else(|r| panic!("connection {i} from {from}: {r:?}"))
        })
        .collect()
}

/// Every client gets exactly the messages `first..first+count` of `news`, in order.
fn assert_all_received(clients: &mut [WsClient], first: u64, count: u64, who: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        for k in first..first + count {
            assert_eq!(c.expect_text(), format!("m{k}"), "{who} client {i}");
        }
    }
}

both_drivers! {
    fn one_address_past_its_cap_is_refused_over_all_shards_and_others_keep_receiving(d) {
        const CAP: usize = 20;
        let s = ServerBuilder::new(d)
            .args(["--max-connections-per-ip", &CAP.to_string(), "--max-handshakes-per-ip-per-second", "0"])
            .start();
        assert_eq!(s.shards, 2);
        let mut attacker = open(&s, "127.0.0.2", CAP);
        s.wait_connections(CAP);
        // SO_REUSEPORT spread them over both shards (all 20 on one: 2 in a million), so the
        // refusal below is the shared count, not a per-shard one.
        for shard in ["0", "1"] {
            assert!(s.metric0("crier_connections", &[("shard", shard)]) > 0.0, "shard {shard} got none:\n{}", s.metrics_text());
        }
        let r = assert_429(&s, "127.0.0.2", "connection 21 from one address");
        assert!(r.body_text().contains("too many connections from your address"), "{r:?}");
        // Another address is not affected, and gets its own full share.
        let mut others = open(&s, "127.0.0.3", CAP);
        // The attacker keeps trying meanwhile; every attempt is refused and counted.
        for _ in 0..30 {
            assert_429(&s, "127.0.0.2", "the attacker retrying");
        }
        assert_eq!(s.metric0("crier_connections_refused_total", &[("reason", "ip_connections")]), 31.0);
        assert_eq!(s.metric0("crier_peer_addresses", &[]), 2.0, "one entry per address, whatever its count");
        for k in 0..20 {
            s.publish("news", &format!("m{k}"));
        }
        assert_all_received(&mut others, 0, 20, "127.0.0.3");
        assert_all_received(&mut attacker, 0, 20, "127.0.0.2 (within its cap)");
        // A closed connection gives its place back.
        attacker.pop().unwrap().send_close(1000, "").unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        let again = loop {
            match ws_from("127.0.0.2", s.ws, "/ws?channels=news", &[]) {
                Ok(c) => break c,
                Err(r) => assert!(r.status == 429 && Instant::now() < deadline, "after a close: {r:?}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(again);
        drop(attacker);
        drop(others);
        // No rate limit, so nothing keeps an address without connections: the table empties.
        s.wait_metric("crier_peer_addresses", &[], IO_TIMEOUT, "0", |v| v == 0.0);
        s.wait_connections(0);
    }
}

#[test]
fn handshake_flood_from_one_address_is_rate_limited_and_others_keep_receiving() {
    const RATE: f64 = 20.0;
    const BURST: u64 = 10;
    let s = ServerBuilder::new(Driver::Epoll)
        .args([
            "--max-handshakes-per-ip-per-second",
            &RATE.to_string(),
            "--handshake-burst-per-ip",
            &BURST.to_string(),
            "--max-connections-per-ip",
            "0",
        ])
        .start();
    let mut bystander = open(&s, "127.0.0.5", 3);
    let rss_before = s.rss_bytes();
    // The flood: connect, upgrade, drop, as fast as one client goes, for 2 s (bounded).
    let start = Instant::now();
    let (mut ok, mut refused, mut published) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(2) && ok + refused < 5000 {
        match ws_from("127.0.0.4", s.ws, "/ws", &[]) {
            Ok(_) => ok += 1,
            Err(r) => {
                assert_eq!(r.status, 429, "{r:?}");
                assert!(r.body_text().contains("too many connection attempts"), "{r:?}");
                refused += 1;
            }
        }
        if (ok + refused) % 50 == 0 {
            s.publish("news", &format!("m{published}"));
            published += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The bucket: BURST at once, then RATE per second (one more for rounding at each end).
    let allowed = BURST + (RATE * elapsed) as u64 + 2;
    assert!(ok <= allowed, "{ok} handshakes in {elapsed:.2}s, the bucket allows {allowed}");
    assert!(ok >= BURST, "the burst is allowed: {ok}");
    assert!(refused > 100, "the flood was refused: {refused} refusals, {ok} upgrades");
    assert_eq!(s.metric0("crier_connections_refused_total", &[("reason", "ip_handshake_rate")]), refused as f64);
    // Another address connects at once, during the flood's aftermath, and the bystanders
    // got every message published during it.
    let mut late = open(&s, "127.0.0.6", 3);
    assert_all_received(&mut bystander, 0, published, "127.0.0.5");
    s.publish("news", "after");
    for c in late.iter_mut().chain(bystander.iter_mut()) {
        assert_eq!(c.expect_text(), "after");
    }
    // The flooder's refusals held nothing: memory did not grow with them.
    let grown = s.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 16 << 20, "RSS grew by {} KiB over {} handshakes", grown >> 10, ok + refused);
    // And it may connect again once its bucket refilled.
    std::thread::sleep(Duration::from_secs_f64(1.0 / RATE) * 2);
    let deadline = Instant::now() + IO_TIMEOUT;
    while ws_from("127.0.0.4", s.ws, "/ws", &[]).is_err() {
        assert!(Instant::now() < deadline, "the flooder was never let in again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_table_is_bounded_by_connections_and_empties_when_buckets_refill() {
    // Many addresses, one connection each: the table holds one entry per address (and no
    // more memory than a few dozen bytes each), and once they close and their buckets have
    // refilled, the sweeps empty it. A sweep tick of 250 ms purges the 64 stripes in 8 s.
    const ADDRS: usize = 600;
    let s = ServerBuilder::new(Driver::Epoll)
        .args(["--max-handshakes-per-ip-per-second", "1", "--handshake-burst-per-ip", "2"])
        .args(["--ping-interval", "1s", "--idle-timeout", "3s"])
        .start();
    let rss_before = s.rss_bytes();
    let mut clients = Vec::new();
    for i in 0..ADDRS {
        let from = format!("127.1.{}.{}", i / 250, i % 250 + 1);
        clients.push(ws_from(&from, s.ws, "/ws", &[]).unwrap_or_else(|r| panic!("from {from}: {r:?}")));
    }
    s.wait_connections(ADDRS);
    assert_eq!(s.metric0("crier_peer_addresses", &[]), ADDRS as f64);
    let per_conn = s.rss_bytes().saturating_sub(rss_before) / ADDRS as u64;
    drop(clients);
    s.wait_connections(0);
    // Each bucket was left one handshake short of full: idle entries, for up to 1 s.
    assert!(s.metric0("crier_peer_addresses", &[]) > 0.0, "idle entries keep the handshake rate");
    s.wait_metric("crier_peer_addresses", &[], Duration::from_secs(30), "0 (purged)", |v| v == 0.0);
    assert!(per_conn < 64 << 10, "{per_conn} bytes of RSS per connection");
}

#[test]
fn ipv6_clients_are_counted_by_their_prefix() {
    // The test plays a trusted proxy (127.0.0.1) naming IPv6 clients in X-Forwarded-For and
    // X-Real-IP, since loopback has a single IPv6 address.
    for (prefix, other_net_refused) in [("64", false), ("48", true)] {
        let s = ServerBuilder::new(Driver::Epoll)
            .args(["--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "2"])
            .args(["--max-handshakes-per-ip-per-second", "0", "--ipv6-prefix-len", prefix])
            .start();
        let xff = |a: &str| ws_from("127.0.0.1", s.ws, "/ws", &[("X-Forwarded-For", a)]);
        let _a = xff("2001:db8:1:2::1").unwrap();
        let _b = ws_from("127.0.0.1", s.ws, "/ws", &[("X-Real-IP", "2001:db8:1:2:ffff::2")]).unwrap();
        let r = xff("2001:db8:1:2:abcd::3").err().expect("a third client of the same /64");
        assert_eq!(r.status, 429, "/{prefix}: {r:?}");
        let other = xff("[2001:db8:1:3::1]:443");
        assert_eq!(other.is_err(), other_net_refused, "/{prefix}: another /64 of the same /48");
        // IPv4 clients named the same way have their own counts.
        let _c = xff("192.0.2.1").unwrap();
    }
}

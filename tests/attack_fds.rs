//! Descriptor exhaustion and port sharing, played by the attacker against the real binary.
//!
//! - The WebSocket side filled to its limit (the one derived from a low RLIMIT_NOFILE, and
//!   an explicit `--max-connections` filled with sockets that never send a request head):
//!   `/healthz`, `/metrics` and a new publisher still answer, an upgrade past the limit gets
//!   a 503 at once, a flood of further connects is answered without crier running out of
//!   descriptors or memory, and every subscriber keeps receiving every message.
//! - The reserve holds against its own users: publisher 129 gets `-ERR too many
//!   publishers`, admin request 17 a 503, and the others keep working.
//! - A second process on the same `--listen` address stops crier from starting, with a
//!   message naming the address and the process; with `--listen-shared` on every crier,
//!   several share the address on purpose.
//!
//! Each test holds at most a few hundred sockets and finishes within seconds.

#[macro_use]
mod common;

use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// RLIMIT_NOFILE of the server under attack: small, so that filling it is cheap.
const NOFILE: u64 = 480;
/// A refusal this slow is not "at once".
const FAST: Duration = Duration::from_secs(2);

/// The limit crier logs at start: `max connections: N …`.
fn logged_limit(s: &Server) -> usize {
    let line = s
        .wait_log(IO_TIMEOUT, |l| l.contains("max connections: "))
        .unwrap_or_else(|| panic!("no log line naming the effective connection limit:\n{}", s.log_text()));
    let rest = &line[line.find("max connections: ").unwrap() + "max connections: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number in {line:?}"))
}

/// An upgrade past the limit: a 503 within [`FAST`].
fn assert_refused_fast(s: &Server) {
    let t = Instant::now();
    match WsClient::connect_with(s.ws, "/ws?channels=news", &[]) {
        Ok(_) => panic!("an upgrade past the limit was accepted"),
        Err(r) => {
            assert_eq!(r.status, 503, "{r:?}");
            assert!(r.header("retry-after").is_some(), "a 503 for a full server says when to retry: {r:?}");
        }
    }
    assert!(t.elapsed() < FAST, "the refusal took {:?}", t.elapsed());
}

/// The admin port and the publisher socket answer.
fn assert_operable(s: &Server, p: &mut Publisher) {
    let h = http_get(s.admin_addr(), "/healthz").expect("/healthz answers while the WebSocket side is full");
    assert_eq!(h.status, 200, "{h:?}");
    let m = http_get(s.admin_addr(), "/metrics").expect("/metrics answers while the WebSocket side is full");
    assert_eq!(m.status, 200, "{m:?}");
    p.send(b"PING\r\n").unwrap();
    assert_eq!(p.expect_line(), "+PONG");
}

/// Every subscriber gets `msgs`, in order.
fn assert_all_received(subs: &mut [WsClient], msgs: &[String]) {
    for (i, c) in subs.iter_mut().enumerate() {
        for want in msgs {
            match c.recv(IO_TIMEOUT) {
                Ok(m) => assert_eq!(m.text(), want, "subscriber {i}"),
                Err(e) => panic!("subscriber {i} lost {want:?}: {e:?}"),
            }
        }
    }
}

both_drivers! {
    /// No --max-connections: the default (100,000) cannot be held with RLIMIT_NOFILE 480, so
    /// the limit is derived, logged and exported, and the reserve keeps the rest working.
    fn derived_limit_holds_and_keeps_the_reserve(d) {
        let s = Server::builder(d).start_with_nofile(NOFILE);
        let limit = logged_limit(&s);
        assert!(
            (100..NOFILE as usize - 100).contains(&limit),
            "limit {limit} for RLIMIT_NOFILE {NOFILE}: it must leave a reserve and still hold connections"
        );
        assert_eq!(s.metric("crier_max_connections", &[]), Some(limit as f64), "the limit in force is exported");
        assert!(
            s.log_lines().iter().any(|l| l.contains("WARN") && l.contains("max connections: ")),
            "lowering --max-connections to fit RLIMIT_NOFILE is a warning:\n{}",
            s.log_text()
        );

        let mut subs: Vec<WsClient> = (0..limit).map(|_| s.ws("/ws?channels=news")).collect();
        s.wait_connections(limit);
        let mut p = s.publisher();
        let mut msgs = Vec::new();
        for i in 0..10 {
            let m = format!("before-{i}");
            p.publish("news", m.as_bytes(), false);
            msgs.push(m);
        }
        assert_refused_fast(&s);
        assert_operable(&s, &mut s.publisher());
        let rss0 = s.rss_bytes();

        // The flood: connects past the limit that never send a byte. Each gets its 503 and is
        // closed; crier never runs out of descriptors, and the reserved paths keep answering.
        let mut flood = Vec::new();
        let mut peak = 0;
        for i in 0..300 {
            flood.push(TcpStream::connect_timeout(&s.ws, IO_TIMEOUT).expect("connect during the flood"));
            if i % 50 == 49 {
                peak = peak.max(s.open_fds());
                let held = s.ws_sockets_held();
                // The limit, plus what the refusals may hold: 16 lingering per shard and the one
                // being closed, plus a few closes io_uring has queued but not yet made.
                let bound = limit + 2 * (16 + 1) + 4;
                assert!(held <= bound, "{held} sockets on the WebSocket port, limit {limit} (bound {bound})");
                assert_operable(&s, &mut p);
            }
        }
        for (i, mut c) in flood.into_iter().enumerate() {
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 503"), "flood connection {i} got {got:?}");
        }
        assert!(peak < NOFILE as usize, "crier held {peak} descriptors of {NOFILE}");
        assert!(
            !s.log_text().contains("Too many open files"),
            "crier ran out of descriptors:\n{}",
            s.log_text()
        );
        let refused = s.metric0("crier_connections_refused_total", &[("reason", "over_capacity")]);
        assert!(refused >= 301.0, "every refusal is counted as over_capacity: {refused}");

        for i in 0..10 {
            let m = format!("after-{i}");
            p.publish("news", m.as_bytes(), false);
            msgs.push(m);
        }
        assert_all_received(&mut subs, &msgs);
        let grown = s.rss_bytes().saturating_sub(rss0);
        assert!(grown < 16 << 20, "RSS grew {grown} bytes during the flood");

        // Room again once a subscriber leaves.
        let mut gone = subs.pop().unwrap();
        gone.send_close(1000, "").unwrap();
        gone.expect_tcp_closed(IO_TIMEOUT);
        let deadline = Instant::now() + IO_TIMEOUT;
        while WsClient::connect_with(s.ws, "/ws", &[]).is_err() {
            assert!(Instant::now() < deadline, "no room after a subscriber left");
        }
    }

    /// An explicit --max-connections 20 with 5 subscribers and 15 sockets that never send a
    /// request head: the box is full, because those 15 hold descriptors too.
    fn pending_handshakes_count_against_the_limit(d) {
        let s = Server::builder(d).args(["--max-connections", "20"]).start();
        assert_eq!(logged_limit(&s), 20);
        let mut subs: Vec<WsClient> = (0..5).map(|_| s.ws("/ws?channels=news")).collect();
        s.wait_connections(5);
        assert_eq!(s.ws_sockets_held(), 5);
        let mut silent: Vec<TcpStream> =
            (0..15).map(|_| TcpStream::connect_timeout(&s.ws, IO_TIMEOUT).expect("connect")).collect();
        wait_until(IO_TIMEOUT, "crier to accept the 15 silent sockets", || s.ws_sockets_held() == 20);

        assert_refused_fast(&s);
        assert_eq!(s.metric("crier_handshakes_pending", &[]), Some(15.0));
        assert!(s.metric0("crier_connections_refused_total", &[("reason", "over_capacity")]) >= 1.0);
        let mut p = s.publisher();
        assert_operable(&s, &mut p);
        let msgs: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        for m in &msgs {
            p.publish("news", m.as_bytes(), false);
        }
        assert_all_received(&mut subs, &msgs);

        // A silent socket that goes gives its slot back.
        drop(silent.pop());
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut c = loop {
            match WsClient::connect_with(s.ws, "/ws?channels=news", &[]) {
                Ok(c) => break c,
                Err(r) => {
                    assert_eq!(r.status, 503, "{r:?}");
                    assert!(Instant::now() < deadline, "no room after a silent socket left");
                }
            }
        };
        s.wait_connections(6);
        p.publish("news", b"again", false);
        assert_eq!(c.expect_text(), "again");
    }
}

// ---------------------------------------------------------------------------------------
// One server per address.
// ---------------------------------------------------------------------------------------

const EXIT_WAIT: Duration = Duration::from_secs(15);

fn on(addr: SocketAddr) -> ServerBuilder {
    Server::builder(Driver::Epoll).omit("--listen").args(["--listen", &addr.to_string()])
}

/// crier did not start, and said why: the address, the other process, the way to share.
fn assert_refused_start(e: &Exited, addr: SocketAddr, pid: u32) {
    assert!(!e.became_ready, "a second server started on {addr}:\n{}", e.stderr);
    let st = e.status.unwrap_or_else(|| panic!("crier neither started nor exited:\n{}", e.stderr));
    assert!(!st.success(), "{st:?}");
    assert!(e.stderr.contains(&addr.to_string()), "the error names the address {addr}:\n{}", e.stderr);
    assert!(e.stderr.contains(&format!("pid {pid}")), "the error names the other process (pid {pid}):\n{}", e.stderr);
    assert!(e.stderr.contains("--listen-shared"), "the error says how to share on purpose:\n{}", e.stderr);
}

#[test]
fn second_crier_on_the_same_address_does_not_start() {
    let a = Server::start(Driver::Epoll);
    let e = on(a.ws).run_expect_exit(EXIT_WAIT);
    assert_refused_start(&e, a.ws, a.pid);
    assert!(e.stderr.contains("crier"), "the error names the other process's command:\n{}", e.stderr);
    a.assert_serving();
}

#[test]
fn another_program_on_the_address_is_named() {
    // The test process listens with SO_REUSEPORT, as any other server could.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_port(true).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.listen(8).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let e = on(addr).run_expect_exit(EXIT_WAIT);
    assert_refused_start(&e, addr, std::process::id());
    // A plain listener (no SO_REUSEPORT) makes the bind itself fail: named the same way.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    let e = on(addr).run_expect_exit(EXIT_WAIT);
    assert_refused_start(&e, addr, std::process::id());
}

#[test]
fn listen_shared_lets_several_criers_share_on_purpose() {
    let a = Server::builder(Driver::Epoll).arg("--listen-shared").start();
    // The environment variable works as the flag does.
    let b = on(a.ws).env("CRIER_LISTEN_SHARED", "true").start();
    assert_eq!(b.ws, a.ws);
    assert!(
        b.wait_log(IO_TIMEOUT, |l| l.contains("sharing") && l.contains(&format!("pid {}", a.pid))).is_some(),
        "the second says whom it shares the address with:\n{}",
        b.log_text()
    );
    // Both serve: connections spread over the two; each gets what its own server publishes.
    let mut seen = [false, false];
    for _ in 0..40 {
        if seen == [true, true] {
            break;
        }
        let mut c = WsClient::connect(a.ws, "/ws?channels=who");
        let count = |s: &Server| s.metric0("crier_connections", &[]);
        wait_until(IO_TIMEOUT, "the connection to register", || count(&a) + count(&b) >= 1.0);
        let owner = usize::from(count(&a) < 1.0);
        [&a, &b][owner].publish("who", "me");
        assert_eq!(c.expect_text(), "me");
        seen[owner] = true;
        drop(c);
        a.wait_connections(0);
        b.wait_connections(0);
    }
    assert_eq!(seen, [true, true], "40 connections never reached both servers");
    // One started without the flag is still refused.
    let e = on(a.ws).run_expect_exit(EXIT_WAIT);
    assert!(!e.became_ready && e.status.is_some_and(|s| !s.success()), "{}", e.stderr);
    assert!(e.stderr.contains(&a.ws.to_string()) && e.stderr.contains("--listen-shared"), "{}", e.stderr);
}

#[test]
fn listen_shared_does_not_join_an_exclusive_crier() {
    let x = Server::start(Driver::Epoll);
    let e = on(x.ws).arg("--listen-shared").run_expect_exit(EXIT_WAIT);
    assert_refused_start(&e, x.ws, x.pid);
    x.assert_serving();
}

// ---------------------------------------------------------------------------------------
// The reserve's own bounds: publishers and admin requests.
// ---------------------------------------------------------------------------------------

#[test]
fn publishers_past_the_reserve_are_refused_and_the_rest_keep_publishing() {
    let s = Server::start(Driver::Epoll);
    let mut subscriber = s.ws("/ws?channels=news");
    s.wait_connections(1);
    let mut held: Vec<Publisher> = (0..128).map(|_| s.publisher()).collect();
    s.wait_metric("crier_publishers", &[], IO_TIMEOUT, "128", |v| v == 128.0);
    let mut extra = s.publisher();
    assert_eq!(extra.expect_line(), "-ERR too many publishers: 128 connected");
    extra.expect_closed();
    assert_eq!(s.metric0("crier_publish_errors_total", &[("reason", "too_many_publishers")]), 1.0);
    // The 128 keep working, and a place comes back when one leaves.
    assert_eq!(held[0].publish("news", b"from-0", false), 1);
    assert_eq!(subscriber.expect_text(), "from-0");
    drop(held.pop());
    s.wait_metric("crier_publishers", &[], IO_TIMEOUT, "127", |v| v == 127.0);
    assert_eq!(s.publisher().publish("news", b"new", false), 2);
    assert_eq!(subscriber.expect_text(), "new");
}

#[test]
fn admin_requests_past_the_reserve_get_503_and_monitoring_comes_back() {
    let s = Server::start(Driver::Epoll);
    // 16 connections that never send a request hold every admin place.
    let idle: Vec<TcpStream> =
        (0..16).map(|_| TcpStream::connect_timeout(&s.admin_addr(), IO_TIMEOUT).expect("connect admin")).collect();
    let deadline = Instant::now() + IO_TIMEOUT;
    let busy = loop {
        let r = http_get(s.admin_addr(), "/healthz").expect("an answer, not silence");
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "16 idle admin connections never filled the admin port");
    };
    assert_eq!(busy.body_text(), "too many admin connections\n");
    drop(idle);
    wait_until(IO_TIMEOUT, "/healthz to answer 200 again", || {
        http_get(s.admin_addr(), "/healthz").is_ok_and(|r| r.status == 200)
    });
    s.assert_serving();
}

//! Operations: /metrics and /healthz, `--max-connections`, graceful shutdown on SIGTERM and
//! SIGINT, and the start-up logs about RLIMIT_NOFILE.

#[macro_use]
mod common;

use common::*;
use std::time::{Duration, Instant};

fn declared(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with(&format!("# TYPE {name} "))
            || l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("{name} "))
    })
}

both_drivers! {
    fn metrics_lists_everything(d) {
        let s = Server::start(d);
        // Make most counters move first.
        let mut c = s.ws("/ws?channels=m");
        let mut z = s.ws_deflate("/ws?channels=m");
        let _p = s.publisher();
        s.wait_connections(2);
        s.publish("m", &compressible_text(2000));
        c.expect_msg();
        z.expect_msg();
        c.send_text("hi").unwrap();
        let _ = http_raw(s.ws, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        s.wait_metric("crier_client_messages_total", &[], IO_TIMEOUT, ">= 1", |v| v >= 1.0);

        let r = s.admin_get("/metrics");
        assert_eq!(r.status, 200);
        let ct = r.header("content-type").unwrap_or("");
        assert!(ct.starts_with("text/plain"), "Prometheus text format content type: {ct:?}");
        let text = r.body_text();
        // Every metric of the README table (read from README.md, so it follows the contract).
        let metrics = readme_metrics();
        assert!(metrics.len() >= 15, "README metrics table: {metrics:?}");
        // crier_redis_* exist only in cluster mode (--redis); tests/cluster.rs checks them.
        let missing: Vec<&String> =
            metrics.iter().filter(|m| !m.starts_with("crier_redis_") && !declared(&text, m)).collect();
        assert!(missing.is_empty(), "missing metrics {missing:?} in:\n{text}");
        // And the other way: every family served is in the README table.
        let undocumented: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| !metrics.iter().any(|m| m == name))
            .collect();
        assert!(undocumented.is_empty(), "served but not in the README metrics table: {undocumented:?}");

        // Values that must hold now.
        let v = |n: &str, l: &[(&str, &str)]| metric_value(&text, n, l).unwrap_or_else(|| panic!("no sample {n}{l:?}:\n{text}"));
        assert_eq!(v("crier_driver", &[("driver", d.reported())]), 1.0, "{text}");
        assert_eq!(v("crier_connections", &[]), 2.0);
        for shard in 0..s.shards {
            assert!(metric_value(&text, "crier_connections", &[("shard", &shard.to_string())]).is_some(), "no crier_connections for shard {shard}:\n{text}");
        }
        assert!(v("crier_connections_accepted_total", &[]) >= 2.0);
        assert!(v("crier_connections_refused_total", &[("reason", "not_found")]) >= 1.0);
        assert_eq!(v("crier_messages_published_total", &[]), 1.0);
        assert_eq!(v("crier_publishers", &[]), 1.0, "one publisher connected");
        assert_eq!(v("crier_frames_encoded_total", &[]), 1.0);
        assert_eq!(v("crier_compressions_total", &[]), 1.0);
        assert!(v("crier_frames_written_total", &[]) >= 2.0);
        assert!(v("crier_bytes_written_total", &[("encoding", "plain")]) > 0.0);
        assert!(v("crier_bytes_written_total", &[("encoding", "deflate")]) > 0.0);
        assert!(v("crier_client_messages_total", &[]) >= 1.0);
        // A Prometheus histogram.
        assert!(text.lines().any(|l| l.starts_with("# TYPE crier_delivery_latency_seconds histogram")), "{text}");
        // The shards merge their latency histograms into the exported one now and then.
        s.wait_metric("crier_delivery_latency_seconds_count", &[], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        let text = s.metrics_text();
        let v = |n: &str, l: &[(&str, &str)]| metric_value(&text, n, l).unwrap_or_else(|| panic!("no sample {n}{l:?}:\n{text}"));
        assert!(metric_value(&text, "crier_delivery_latency_seconds_sum", &[]).is_some());
        assert_eq!(
            v("crier_delivery_latency_seconds_bucket", &[("le", "+Inf")]),
            v("crier_delivery_latency_seconds_count", &[]),
            "+Inf bucket must equal _count"
        );
        // Only one driver is reported as 1.
        let drivers: f64 = parse_metrics(&text).iter().filter(|s| s.name == "crier_driver").map(|s| s.value).sum();
        assert_eq!(drivers, 1.0);
    }

    fn healthz_ok(d) {
        let s = Server::start(d);
        let r = s.admin_get("/healthz");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body_text().trim(), "ok");
        let r = s.admin_get("/nothing-here");
        assert_eq!(r.status, 404, "{r:?}");
        // The admin endpoints are not on the public port.
        let r = http_get(s.ws, "/metrics").unwrap();
        assert_ne!(r.status, 200, "metrics must not be served on the WebSocket port");
    }

    fn max_connections_503(d) {
        let s = Server::builder(d).args(["--max-connections", "2"]).start();
        let mut a = s.ws("/ws");
        let _b = s.ws("/ws");
        s.wait_connections(2);
        match WsClient::connect_with(s.ws, "/ws", &[]) {
            Ok(_) => panic!("third upgrade accepted past --max-connections 2"),
            Err(r) => assert_eq!(r.status, 503, "{r:?}"),
        }
        s.wait_metric("crier_connections_refused_total", &[("reason", "over_capacity")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        // Room again once one leaves.
        a.send_close(1000, "").unwrap();
        a.expect_tcp_closed(IO_TIMEOUT);
        s.wait_connections(1);
        let _c = s.ws("/ws");
    }

    fn sigterm_drains(d) {
        shutdown(d, libc::SIGTERM);
    }

    fn sigint_drains(d) {
        shutdown(d, libc::SIGINT);
    }
}

fn shutdown(d: Driver, sig: i32) {
    let mut s = Server::builder(d).args(["--drain-timeout", "2s"]).start();
    let mut a = s.ws("/ws?channels=x");
    let mut b = s.ws_deflate("/ws");
    let mut t = s.tung("/ws");
    s.wait_connections(3);
    let start = Instant::now();
    s.signal(sig);
    // The raw clients answer the close like browsers do; tungstenite answers by itself.
    for (name, c) in [("a", &mut a), ("b", &mut b)] {
        assert_eq!(c.expect_close(Duration::from_secs(5)), Some(1001), "client {name}");
        let _ = c.send_close(1001, "");
    }
    match t.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("tungstenite expected close 1001, got {other:?}"),
    }
    let status = s.wait_exit(Duration::from_secs(2) + Duration::from_secs(3));
    let took = start.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after signal {sig} with --drain-timeout 2s"));
    assert!(status.success(), "exit status after signal {sig}: {status:?}");
}

#[test]
fn drain_waits_at_most_drain_timeout() {
    // A client that never reads and never answers must not hold shutdown beyond the timeout.
    let mut s = Server::builder(Driver::Epoll).args(["--drain-timeout", "1s"]).start();
    let _silent = s.ws("/ws");
    let _silent2 = s.ws("/ws");
    s.wait_connections(2);
    let start = Instant::now();
    s.sigterm();
    let st = s.wait_exit(Duration::from_secs(6)).expect("not exited 6 s after SIGTERM with --drain-timeout 1s");
    assert!(st.success(), "{st:?}");
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
}

#[test]
fn startup_logs_rlimit_nofile() {
    let s = Server::builder(Driver::Epoll).args(["--max-connections", "1000"]).start();
    let lines = s.log_lines();
    let nofile: Vec<&String> = lines.iter().filter(|l| l.contains("RLIMIT_NOFILE")).collect();
    assert!(!nofile.is_empty(), "start-up log must mention RLIMIT_NOFILE:\n{}", lines.join("\n"));
    // 1000 connections fit in this machine's limit (hard 20000): no warning about it.
    let warned =
        lines.iter().any(|l| l.contains("WARN") && (l.contains("RLIMIT_NOFILE") || l.contains("max-connections")));
    assert!(!warned, "unexpected limit warning for --max-connections 1000:\n{}", lines.join("\n"));
    // The soft limit was raised to the hard limit.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid)).unwrap();
    let row = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(f[3], f[4], "soft RLIMIT_NOFILE not raised to the hard limit: {row}");
}

/// The allocator setting behind the README's per-connection density holds for a plain
/// `crier serve`, with nothing in the environment; an operator's `MIMALLOC_*` still wins.
#[test]
fn allocator_defaults_need_no_environment() {
    let eager = |b: ServerBuilder| {
        let s = b.start();
        let line = s.log_lines().into_iter().find(|l| l.contains("allocator: mimalloc"));
        line.unwrap_or_else(|| panic!("no allocator line in the start-up log:\n{}", s.log_text()))
    };
    let line = eager(Server::builder(Driver::Epoll));
    assert!(line.ends_with("arena_eager_commit=0"), "{line}");
    let line = eager(Server::builder(Driver::Epoll).env("MIMALLOC_ARENA_EAGER_COMMIT", "1"));
    assert!(line.ends_with("arena_eager_commit=1"), "{line}");
}

#[test]
fn startup_warns_when_limit_too_low() {
    let mut hard: libc::rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: reads this process's limit into a local struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) }, 0);
    assert!(hard.rlim_max < 1_000_000, "test needs a hard RLIMIT_NOFILE below 1,000,000");
    let s = Server::builder(Driver::Epoll).args(["--max-connections", "1000000"]).start();
    let lines = s.log_lines();
    let warn = lines.iter().find(|l| {
        let low = l.to_lowercase();
        l.contains("WARN")
            && (low.contains("rlimit_nofile") || low.contains("max-connections") || low.contains("max_connections"))
    });
    assert!(
        warn.is_some(),
        "no warning that RLIMIT_NOFILE cannot hold --max-connections 1000000:\n{}",
        lines.join("\n")
    );
}

/// Run crier with a log filter that hides INFO (so no ready line): wait until its publisher
/// socket answers, use it once, stop it with SIGTERM, and return everything it logged.
fn log_of_quiet_run(b: ServerBuilder) -> Vec<String> {
    let (mut child, rx, _dir, sock) = b.spawn();
    let pid = child.id();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut p = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            break s;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("crier exited: {st:?}: {:?}", rx.try_iter().collect::<Vec<_>>());
        }
        if Instant::now() >= deadline {
            // SAFETY: signal to the PID of the child this test spawned (still running).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            panic!("publisher socket never came up");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::io::{Read, Write};
    p.write_all(b"PING\r\n").unwrap();
    let mut b = [0u8; 7];
    p.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"+PONG\r\n");
    // SAFETY: signal to the PID of the child this test spawned (still running).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let mut exited = None;
    for _ in 0..500 {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if exited.is_none() {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
        panic!("crier did not exit after SIGTERM");
    }
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
    }
    lines
}

#[test]
fn log_level_flag_and_rust_log() {
    // At the default level, INFO lines (the ready line) show.
    let info = Server::start(Driver::Epoll);
    assert!(info.log_lines().iter().any(|l| l.contains(" INFO ")));
    // --log-level warn keeps WARN (the RLIMIT_NOFILE warning: 100000 > 20000) and hides INFO.
    let warn = log_of_quiet_run(Server::builder(Driver::Epoll).args(["--log-level", "warn"]));
    assert!(warn.iter().any(|l| l.contains(" WARN ")), "no WARN line at --log-level warn:\n{}", warn.join("\n"));
    assert!(!warn.iter().any(|l| l.contains(" INFO ")), "INFO lines at --log-level warn:\n{}", warn.join("\n"));
    // RUST_LOG overrides --log-level.
    let over = log_of_quiet_run(Server::builder(Driver::Epoll).args(["--log-level", "info"]).env("RUST_LOG", "warn"));
    assert!(over.iter().any(|l| l.contains(" WARN ")), "{}", over.join("\n"));
    assert!(
        !over.iter().any(|l| l.contains(" INFO ")),
        "RUST_LOG=warn must override --log-level info:\n{}",
        over.join("\n")
    );
    // --log-level error hides the warning too.
    let err = log_of_quiet_run(Server::builder(Driver::Epoll).args(["--log-level", "error"]));
    assert!(!err.iter().any(|l| l.contains(" WARN ") || l.contains(" INFO ")), "{}", err.join("\n"));
}

#[test]
fn sigterm_right_after_ready_exits_0() {
    // systemd (or a test) may stop crier the moment it says it is ready: the signal must
    // already be handled then, not kill the process with the default action.
    for round in 0..5 {
        let mut s = Server::start(Driver::Epoll);
        s.sigterm();
        let st = s.wait_exit(Duration::from_secs(10));
        assert!(
            st.is_some_and(|st| st.success()),
            "round {round}: SIGTERM right after the ready line: {st:?} (want exit 0)"
        );
    }
}

#[test]
fn draining_answers_503() {
    // A client that stops reading with data still queued keeps the drain busy (its close
    // frame cannot be flushed) for up to --drain-timeout; meanwhile crier reports draining.
    let (mut s, _stuck) = server_with_a_stuck_drain();
    assert_eq!(s.admin_get("/healthz").status, 200);
    let start = Instant::now();
    s.sigterm();
    let mut health = None;
    while start.elapsed() < Duration::from_secs(2) {
        match http_get(s.admin_addr(), "/healthz") {
            Ok(r) if r.status == 200 => std::thread::sleep(Duration::from_millis(10)),
            Ok(r) => {
                health = Some(r);
                break;
            }
            Err(e) => panic!("admin endpoint gone while draining: {e}"),
        }
    }
    let r = health.expect("/healthz still 200 two seconds after SIGTERM");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body_text().trim(), "draining", "{r:?}");
    // New upgrades are refused while draining (503, or no listener at all).
    if let Ok(mut tcp) = std::net::TcpStream::connect(s.ws) {
        use std::io::Write;
        let req = upgrade_request(s.ws, "/ws", &[]);
        if tcp.write_all(req.as_bytes()).is_ok() {
            let mut buf = Vec::new();
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = std::io::Read::read_to_end(&mut tcp, &mut buf);
            let head = String::from_utf8_lossy(&buf);
            assert!(buf.is_empty() || head.starts_with("HTTP/1.1 503"), "upgrade during drain: {head:?}");
        }
    }
    let st = s.wait_exit(Duration::from_secs(3 + 3)).expect("still running well after --drain-timeout 3s");
    assert!(st.success(), "{st:?}");
}

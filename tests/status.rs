//! `GET /stats`, the status page (`GET /`) and `crier status`, against the real binary:
//! the document agrees with `/metrics` under load, the admin token guards both, `crier
//! status` prints the table and exits with the documented codes (healthy, unreachable,
//! draining, unhealthy, Redis down, unauthorized), `--watch` redraws in place, and headless
//! Chromium draws the page's charts with the numbers `/metrics` has.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn stats(s: &Server) -> Value {
    let r = s.admin_get("/stats");
    assert_eq!(r.status, 200, "GET /stats: {r:?}");
    assert!(r.header("content-type").unwrap_or("").starts_with("application/json"), "{r:?}");
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("/stats is not JSON ({e}): {}", r.body_text()))
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("/stats has no integer at {path}: {v}"))
}

/// Publishes on `flights` (fast) and `gates` (slow) until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(s: &Server, per_tick: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut p = s.publisher();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..per_tick {
                    p.publish("flights", b"{\"gate\":\"B32\",\"status\":\"boarding\"}", false);
                    n += 1;
                }
                p.publish("gates", b"B32 open", false);
                n += 1;
                // The load's pace, not a wait for a condition.
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        });
        Load { stop, thread: Some(thread) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Subscribers that keep reading (so nobody is a slow consumer), until the server closes.
fn readers(s: &Server, targets: &[&str]) -> Vec<std::thread::JoinHandle<()>> {
    targets
        .iter()
        .map(|t| {
            let mut c = s.ws(t);
            std::thread::spawn(move || while c.recv(Duration::from_secs(30)).is_ok() {})
        })
        .collect()
}

/// The bucket bounds (seconds) around quantile `q` of a Prometheus histogram in `text`.
fn bucket_around(text: &str, name: &str, q: f64) -> (f64, f64) {
    let count = metric_value(text, &format!("{name}_count"), &[]).expect("histogram count");
    let mut buckets: Vec<(f64, f64)> = parse_metrics(text)
        .into_iter()
        .filter(|m| m.name == format!("{name}_bucket"))
        .filter_map(|m| m.labels.get("le").and_then(|le| le.parse::<f64>().ok()).map(|le| (le, m.value)))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut lower = 0.0;
    for (le, cum) in buckets {
        if cum >= q * count {
            return (lower, le);
        }
        lower = le;
    }
    panic!("no bucket holds quantile {q}");
}

#[test]
fn stats_agree_with_metrics_under_load() {
    let s = Server::builder(Driver::Epoll).args(["--max-connections", "5000"]).start();
    let _readers = readers(
        &s,
        &["/ws?channels=flights", "/ws?channels=flights", "/ws?channels=flights,gates", "/ws?channels=gates", "/ws"],
    );
    s.wait_connections(5);
    let load = Load::start(&s, 5);
    // Under load: every counter /stats reports lies between two /metrics read around it.
    wait_until(Duration::from_secs(10), "deliveries under way", || s.metric0("crier_frames_written_total", &[]) > 50.0);
    for _ in 0..3 {
        let before = s.metrics_text();
        let st = stats(&s);
        let after = s.metrics_text();
        for (field, metric, labels) in [
            ("/publishes_total", "crier_messages_published_total", &[][..]),
            ("/deliveries_total", "crier_frames_written_total", &[]),
            ("/connects_total", "crier_connections_accepted_total", &[]),
            ("/bytes_written_total/plain", "crier_bytes_written_total", &[("encoding", "plain")]),
            ("/latency/total/count", "crier_delivery_latency_seconds_count", &[]),
            ("/slow_consumer_closes_total", "crier_slow_consumer_closes_total", &[]),
        ] {
            let (lo, hi) =
                (metric_value(&before, metric, labels).unwrap(), metric_value(&after, metric, labels).unwrap());
            let v = u(&st, field) as f64;
            assert!(lo <= v && v <= hi, "{field} = {v}, but {metric} went {lo} → {hi}");
        }
        assert_eq!(u(&st, "/connections/total") as f64, metric_value(&after, "crier_connections", &[]).unwrap());
        let per_shard: Vec<u64> =
            st["connections"]["per_shard"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(per_shard.len(), 2, "one entry per shard");
        for (i, n) in per_shard.iter().enumerate() {
            let m = metric_value(&after, "crier_connections", &[("shard", &i.to_string())]).unwrap();
            assert_eq!(*n as f64, m, "shard {i}");
        }
        assert_eq!(u(&st, "/connections/max") as f64, metric_value(&after, "crier_max_connections", &[]).unwrap());
        assert_eq!(
            u(&st, "/refusals_total/not_found") as f64,
            metric_value(&after, "crier_connections_refused_total", &[("reason", "not_found")]).unwrap()
        );
    }
    let st = stats(&s);
    assert_eq!(st["schema"], "crier.stats/1");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["driver"], "epoll");
    assert_eq!(st["health"]["ok"], true);
    assert_eq!(st["redis"], Value::Null, "no Redis section on a single box");
    assert_eq!(u(&st, "/settings/shards"), 2);
    assert_eq!(u(&st, "/settings/max_connections"), 5000);
    assert!(st["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(st["settings"]["flush_delay"], "auto", "the default flush policy");
    for key in ["max_queue_bytes", "max_message_bytes", "max_channels", "history_messages"] {
        assert!(st["settings"][key].is_u64(), "settings.{key}: {st}");
    }
    assert!(st["settings"]["deflate"].is_boolean() && st["settings"]["cluster"] == "off");

    // The busiest channels: flights first (most messages/s), with its 3 subscribers from
    // the shards' reports, then gates with 2.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let st = stats(&s);
        let rows = st["channels"]["busiest"].as_array().unwrap().clone();
        let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
        let ok = rows.first().is_some_and(|r| r["name"] == "flights")
            && row("flights")
                .is_some_and(|r| r["subscribers"] == 3 && r["messages_per_second"].as_f64().unwrap() > 20.0)
            && row("gates").is_some_and(|r| r["subscribers"] == 2 && r["messages_per_second"].as_f64().unwrap() > 1.0)
            && st["channels"]["window_seconds"].as_f64().unwrap() >= 0.9;
        if ok {
            break st;
        }
        assert!(Instant::now() < deadline, "busiest channels never showed flights (3) then gates (2): {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(last["latency"]["recent"]["count"].as_u64().unwrap() > 0, "latency over the last window: {last}");

    // Quiet: the totals equal, and the percentiles fall in the /metrics bucket that holds them.
    let published = load.stop();
    wait_until(Duration::from_secs(10), "every publish counted", || {
        s.metric0("crier_messages_published_total", &[]) as u64 == published
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, st) = loop {
        let text = s.metrics_text();
        let st = stats(&s);
        let again = s.metrics_text();
        let count = |t: &str| metric_value(t, "crier_delivery_latency_seconds_count", &[]).unwrap() as u64;
        // Nothing moved between the two reads around /stats: the same histogram.
        if count(&text) == u(&st, "/latency/total/count") && count(&again) == count(&text) {
            break (text, st);
        }
        assert!(Instant::now() < deadline, "latency count never settled");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(u(&st, "/publishes_total"), published);
    let flights =
        st["channels"]["busiest"].as_array().unwrap().iter().find(|r| r["name"] == "flights").unwrap().clone();
    assert!(flights["messages_total"].as_u64().unwrap() > 0 && flights["messages_total"].as_u64().unwrap() < published);
    for (q, field) in [(0.5, "/latency/total/p50_us"), (0.99, "/latency/total/p99_us")] {
        let (lo, hi) = bucket_around(&text, "crier_delivery_latency_seconds", q);
        let v = u(&st, field) as f64 / 1e6;
        // hdrhistogram's 3 significant digits: 0.1% either side of a bucket edge.
        assert!(lo * 0.999 <= v && v <= hi * 1.001, "{field} = {v} s, but /metrics puts q{q} in ({lo}, {hi}]");
    }
}

fn admin(s: &Server, path: &str, auth: Option<&str>) -> HttpResponse {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    http_raw(s.admin_addr(), format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes()).unwrap()
}

fn status(args: &[&str]) -> CmdOutput {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    run_crier(&all, None, &[])
}

fn url(s: &Server) -> String {
    format!("http://{}", s.admin_addr())
}

#[test]
fn the_admin_token_guards_stats_and_the_page() {
    let dir = TempDir::new();
    let token = dir.join("admin.token");
    std::fs::write(&token, "s3cret+t/k%n\n").unwrap();
    let s = Server::builder(Driver::Epoll).args(["--admin-token-file", token.to_str().unwrap()]).start();
    for path in ["/stats", "/"] {
        for auth in [None, Some("Bearer wrong")] {
            let r = admin(&s, path, auth);
            assert_eq!(r.status, 401, "{path} {auth:?}: {r:?}");
            assert!(!r.body_text().contains("publishes_total") && !r.body_text().contains("<canvas"), "{r:?}");
        }
    }
    let login = admin(&s, "/", None);
    assert!(login.header("content-type").unwrap().starts_with("text/html"), "{login:?}");
    assert!(login.body_text().contains("name=token"), "the 401 page asks for the token: {login:?}");
    assert_eq!(admin(&s, "/?token=wrong", None).status, 401);
    assert_eq!(admin(&s, "/stats?token=s3cret%2Bt%2Fk%25n", None).status, 401, "only / takes ?token=");
    let page = admin(&s, "/?token=s3cret%2Bt%2Fk%25n", None);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body_text().contains("<canvas"), "the status page");
    assert_eq!(admin(&s, "/", Some("Bearer s3cret+t/k%n")).status, 200);
    let r = admin(&s, "/stats", Some("Bearer s3cret+t/k%n"));
    assert_eq!(r.status, 200, "{r:?}");
    let st: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(st["schema"], "crier.stats/1");
    assert_eq!(admin(&s, "/healthz", None).status, 200, "/healthz stays open");
    let m = admin(&s, "/metrics", Some("Bearer s3cret+t/k%n")).body_text();
    assert_eq!(metric_value(&m, "crier_admin_unauthorized_total", &[]), Some(7.0), "{m}");

    let out = status(&["--admin", &url(&s)]);
    assert_eq!(out.status.code(), Some(7), "no token: exit 7 (unauthorized)\n{out:?}");
    assert!(out.stdout.contains("--token-file"), "{out:?}");
    let out = status(&["--admin", &url(&s), "--token-file", token.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = status(&["--admin", &url(&s), "--token-file", dir.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "unreadable token file: exit 2\n{out:?}");
    assert!(out.stderr.contains("--token-file"), "{out:?}");
}

#[test]
fn status_prints_the_table_and_exits_by_health() {
    let s = Server::start(Driver::Epoll);
    let _readers = readers(&s, &["/ws?channels=flights", "/ws?channels=flights"]);
    s.wait_connections(2);
    for _ in 0..3 {
        s.publish("flights", "B32 boarding");
    }
    let out = status(&["--admin", &url(&s)]);
    assert_eq!(out.status.code(), Some(0), "healthy: exit 0\n{out:?}");
    for want in
        ["crier ", "driver epoll", "health ok", "conns      2 / ", "publishes  3", "latency", "CHANNEL", "flights"]
    {
        assert!(out.stdout.contains(want), "{want:?} missing from the table:\n{}", out.stdout);
    }
    let json = status(&["--admin", &s.admin_addr().to_string(), "--json"]);
    assert_eq!(json.status.code(), Some(0), "{json:?}");
    let st: Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("--json: {e}\n{json:?}"));
    assert_eq!(st["publishes_total"], 3);

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let out = status(&["--admin", &nobody]);
    assert_eq!(out.status.code(), Some(3), "unreachable: exit 3\n{out:?}");
    assert!(out.stdout.contains("cannot connect"), "{out:?}");
    let out = status(&["--admin", &format!("http://{}", s.ws)]);
    assert_eq!(out.status.code(), Some(3), "the WebSocket port is not an admin port: exit 3\n{out:?}");
    let out = status(&["--admin", "https://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn status_exits_4_while_the_publisher_socket_is_replaced() {
    let s = Server::start(Driver::Epoll);
    assert_eq!(status(&["--admin", &url(&s)]).status.code(), Some(0));
    // Someone else's socket at --publish-socket: publishers cannot reach crier.
    std::fs::remove_file(&s.publish).unwrap();
    let _theirs = std::os::unix::net::UnixListener::bind(&s.publish).unwrap();
    let mut out = status(&["--admin", &url(&s)]);
    let deadline = Instant::now() + IO_TIMEOUT;
    while out.status.code() == Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        out = status(&["--admin", &url(&s)]);
    }
    assert_eq!(out.status.code(), Some(4), "unhealthy: exit 4\n{out:?}");
    assert!(out.stdout.contains("replaced"), "the table says why: {out:?}");
}

#[test]
fn status_exits_5_while_draining() {
    // As in tests/ops.rs: a client that stops reading keeps the drain busy.
    let (mut s, _stuck) = server_with_a_stuck_drain();
    let u = url(&s);
    assert_eq!(status(&["--admin", &u]).status.code(), Some(0));
    s.sigterm();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut out = status(&["--admin", &u]);
    while out.status.code() == Some(0) && Instant::now() < deadline {
        out = status(&["--admin", &u]);
    }
    assert_eq!(out.status.code(), Some(5), "draining: exit 5\n{out:?}");
    assert!(out.stdout.contains("health draining"), "{out:?}");
    s.wait_exit(Duration::from_secs(8)).expect("exits after the drain");
    assert_eq!(status(&["--admin", &u]).status.code(), Some(3), "gone: exit 3");
}

#[test]
fn status_shows_redis_and_exits_6_when_it_is_down() {
    let mut redis = Redis::start();
    let s = Server::builder(Driver::Epoll).args(["--redis", &redis.url()]).start();
    let u = url(&s);
    // The Redis session may come up just after the ready line.
    wait_until(IO_TIMEOUT, "the Redis session up (/healthz 200)", || s.admin_get("/healthz").status == 200);
    let out = status(&["--admin", &u]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("redis      redis up"), "{out:?}");
    let st = stats(&s);
    assert_eq!(st["redis"]["up"], true);
    assert_eq!(st["settings"]["cluster"], "redis");
    assert_eq!(
        u64::from(st["redis"]["up"] == true) as f64,
        s.metric("crier_redis_up", &[]).expect("crier_redis_up with --redis")
    );
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out = status(&["--admin", &u]);
    while out.status.code() != Some(6) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        out = status(&["--admin", &u]);
    }
    assert_eq!(out.status.code(), Some(6), "Redis down: exit 6\n{out:?}");
    assert!(out.stdout.contains("redis      redis DOWN"), "{out:?}");
}

#[test]
fn watch_redraws_in_place_with_rates() {
    let s = Server::start(Driver::Epoll);
    let _readers = readers(&s, &["/ws?channels=flights,gates"]);
    s.wait_connections(1);
    let load = Load::start(&s, 2);
    let started = Instant::now();
    let out = status(&["--admin", &url(&s), "--watch", "--watch-count", "3"]);
    let took = started.elapsed();
    drop(load);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let frames: Vec<&str> = out.stdout.split("\x1b[H\x1b[2J").skip(1).collect();
    assert_eq!(frames.len(), 3, "three redraws, each after home+clear:\n{:?}", out.stdout);
    assert!(took >= Duration::from_secs(2), "one refresh a second: 3 took {took:?}");
    assert!(!frames[0].contains("/s)"), "no rates before a second sample:\n{}", frames[0]);
    for f in &frames[1..] {
        assert!(f.contains("publishes") && f.contains("/s)"), "later refreshes show rates:\n{f}");
    }
    let out = status(&["--admin", &url(&s), "--watch-count", "2"]);
    assert_eq!(out.status.code(), Some(2), "--watch-count needs --watch: {out:?}");
}

// ---- the page in headless Chromium -------------------------------------------------

fn run_status_page(admin_url: &str, shot: &Path) -> Value {
    let dir = browser_dir();
    let child = Command::new("node")
        .arg(dir.join("status_page.mjs"))
        .args([admin_url, shot.to_str().unwrap(), "5"])
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node (is Node.js installed?): {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for node: {e}"),
        Err(_) => {
            kill_pid(pid, libc::SIGKILL);
            panic!("status_page.mjs did not finish within 90 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status_page.mjs failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no report:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn the_status_page_draws_what_metrics_says() {
    let dir = TempDir::new();
    let token = dir.join("admin.token");
    std::fs::write(&token, "page-t0ken\n").unwrap();
    let s = Server::builder(Driver::Epoll).args(["--admin-token-file", token.to_str().unwrap()]).start();
    let _readers = readers(
        &s,
        &["/ws?channels=flights", "/ws?channels=flights", "/ws?channels=flights,gates", "/ws?channels=gates"],
    );
    let metrics = |s: &Server| {
        let r = admin(s, "/metrics", Some("Bearer page-t0ken"));
        assert_eq!(r.status, 200);
        r.body_text()
    };
    wait_until(IO_TIMEOUT, "4 connections", || metric_value(&metrics(&s), "crier_connections", &[]) == Some(4.0));
    let load = Load::start(&s, 4);
    let before = metrics(&s);
    let t0 = Instant::now();
    let shot: PathBuf = std::env::temp_dir().join("crier-status-page.png");
    let _ = std::fs::remove_file(&shot);
    let report = run_status_page(&format!("http://{}/?token=page-t0ken", s.admin_addr()), &shot);
    let after = metrics(&s);
    let secs = t0.elapsed().as_secs_f64();
    drop(load);

    // The charts draw: every canvas has ink, and the series have more than one point.
    let canvases = report["canvases"].as_object().unwrap();
    assert_eq!(canvases.len(), 7, "{report}");
    for (id, c) in canvases {
        assert!(c["points"].as_u64().unwrap() >= 2, "canvas {id} has fewer than 2 data points: {c}\n{report}");
        assert!(c["line"].as_u64().unwrap() > 8, "canvas {id} has no line drawn: {c}\n{report}");
    }
    assert!(report["points"].as_u64().unwrap() >= 5, "{report}");
    // The numbers shown agree with /metrics.
    let shown = |k: &str| report["shown"][k].as_str().unwrap_or_else(|| panic!("{k} not shown: {report}")).to_string();
    assert_eq!(shown("conn-total"), "4");
    assert_eq!(shown("conn-total"), metric_value(&after, "crier_connections", &[]).unwrap().to_string());
    assert_eq!(shown("driver"), "epoll");
    assert_eq!(shown("health"), "ok");
    let published = |t: &str| metric_value(t, "crier_messages_published_total", &[]).unwrap();
    let rate = (published(&after) - published(&before)) / secs;
    let page_rate: f64 = shown("pub/publishes").parse().unwrap_or_else(|e| panic!("publishes/s {e}: {report}"));
    assert!(
        (page_rate - rate).abs() <= rate * 0.5,
        "the page shows {page_rate} publishes/s, /metrics says {rate:.1}/s over the same run"
    );
    let doc = &report["stats"];
    assert!(published(&before) <= u(doc, "/publishes_total") as f64);
    assert!(u(doc, "/publishes_total") as f64 <= published(&after));
    let rows = report["channels"].as_array().unwrap();
    assert_eq!(rows[0][0], "flights", "busiest channel first: {report}");
    assert_eq!(rows[0][1], "3", "its subscribers: {report}");
    assert!(shot.exists(), "screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn thousands_of_channels_keep_stats_small() {
    // A publisher spreading messages over 3,000 channels: /stats still lists only the 10
    // busiest, tallies every channel, and stays a few KiB.
    let s = Server::start(Driver::Epoll);
    let _readers = readers(&s, &["/ws?channels=c7", "/ws?channels=c7,c8"]);
    s.wait_connections(2);
    let mut p = s.publisher();
    let mut batch = Vec::new();
    for i in 0..3000 {
        batch.extend_from_slice(&pub_command(&format!("c{i}"), b"x", None));
    }
    for _ in 0..5 {
        batch.extend_from_slice(&pub_command("c7", b"more", None));
    }
    p.send(&batch).unwrap();
    for _ in 0..3005 {
        assert!(p.expect_line().starts_with("+OK "));
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    let (st, len) = loop {
        let r = s.admin_get("/stats");
        let st: Value = serde_json::from_slice(&r.body).unwrap();
        let top = &st["channels"]["busiest"][0];
        if top["name"] == "c7" && top["subscribers"] == 2 {
            break (st, r.body.len());
        }
        assert!(Instant::now() < deadline, "c7 (6 messages, 2 subscribers) never came first: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(u(&st, "/channels/tallied"), 3000);
    assert_eq!(st["channels"]["busiest"].as_array().unwrap().len(), 10, "{st}");
    assert_eq!(u(&st, "/channels/busiest/0/messages_total"), 6);
    assert!(len < 8 * 1024, "/stats is {len} bytes with 3,000 channels");
}

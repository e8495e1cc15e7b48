//! Runs crier-load against the real crier server binary.
//!
//! crier is built with `cargo build -p crier` (same profile as this test) unless
//! `CRIER_BIN` names a binary. The server is started on ephemeral ports and is ready when
//! it logs its `ready ws=… admin=… publish=…` line on stderr.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

const LOAD: &str = env!("CARGO_BIN_EXE_crier-load");

fn crier_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_crier).clone()
}

fn build_crier() -> PathBuf {
    if let Some(p) = std::env::var_os("CRIER_BIN") {
        return PathBuf::from(p);
    }
    // crier lands next to crier-load (same target dir and profile).
    let dir = Path::new(LOAD).parent().expect("bin dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "crier", "--bin", "crier"]).current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p crier");
    assert!(status.success(), "cargo build -p crier failed");
    dir.join("crier")
}

struct Server {
    child: Child,
    ws: String,
    publish: PathBuf,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server(name: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("crier-load-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let publish = dir.join("p.sock");
    let mut child = Command::new(crier_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--publish-socket")
        .arg(&publish)
        .args(["--shards", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crier");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(i) = line.find("ready ws=") {
                let ws = line[i + "ready ws=".len()..].split_whitespace().next().unwrap().to_string();
                let _ = tx.send(ws);
                sent = true;
            }
            // keep draining so the server never blocks on a full pipe
        }
    });
    let ws = rx.recv_timeout(Duration::from_secs(30)).expect("crier printed its ready line");
    Server { child, ws, publish, dir }
}

fn run_load(s: &Server, args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(LOAD)
        .arg("--url")
        .arg(format!("ws://{}/ws", s.ws))
        .arg("--publish-socket")
        .arg(&s.publish)
        .args(["--json", "--timeout", "60s"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run crier-load");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn broadcast_200_connections_over_2_procs_and_2_source_addresses() {
    let s = start_server("broadcast");
    let pid = s.child.id().to_string();
    let (code, r) = run_load(
        &s,
        &["-n", "200", "--procs", "2", "--src-ips", "2", "--count", "50", "--rate", "100", "--server-pid", &pid],
    );
    assert_eq!(r["connections"]["ok"], 200, "{r:#}");
    assert_eq!(r["connections"]["failed"], 0, "{r:#}");
    let d = &r["delivery"];
    assert_eq!(d["deliveries"], 10_000, "{r:#}");
    assert_eq!(d["expected"], 10_000, "{r:#}");
    assert_eq!(d["lost"], 0, "{r:#}");
    assert_eq!(d["duplicated"], 0, "{r:#}");
    assert_eq!(d["out_of_order"], 0, "{r:#}");
    assert_eq!(d["messages_complete"], 50, "{r:#}");
    assert_eq!(r["publish"]["sockets"][0]["acked"], 50, "{r:#}");
    assert_eq!(r["latency_ms"]["count"], 10_000, "{r:#}");
    assert!(r["servers"][0]["after"]["rss_bytes"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["deliveries_per_server_cpu_second"].as_f64().is_some(), "{r:#}");
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn deflate_and_channels() {
    let s = start_server("deflate");
    let (code, r) = run_load(
        &s,
        &["-n", "50", "--deflate", "--channels", "flights,gates", "--count", "20", "--rate", "200", "--size", "2000"],
    );
    assert_eq!(r["connections"]["ok"], 50, "{r:#}");
    assert_eq!(r["connections"]["deflate_negotiated"], 50, "{r:#}");
    assert_eq!(r["publish"]["channel"], "flights", "{r:#}");
    let d = &r["delivery"];
    assert_eq!(d["deliveries"], 1000, "{r:#}");
    // 2000 bytes of mostly `x` compress well: every delivery arrived deflated.
    assert_eq!(d["compressed_deliveries"], 1000, "{r:#}");
    assert_eq!(d["lost"], 0, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn storm_then_idle() {
    let s = start_server("storm");
    let pid = s.child.id().to_string();
    let (code, r) = run_load(&s, &["--mode", "storm", "-n", "200", "--procs", "2", "--count", "5"]);
    let st = &r["storm"];
    assert_eq!(st["dropped"], 200, "{r:#}");
    assert_eq!(st["back"], 200, "{r:#}");
    assert_eq!(st["never_back"], 0, "{r:#}");
    assert!(st["seconds_until_all_back"].as_f64().is_some(), "{r:#}");
    assert_eq!(r["delivery"]["deliveries"], 1000, "{r:#}");
    assert_eq!(code, 0);

    let (code, r) = run_load(&s, &["--mode", "idle", "-n", "300", "--duration", "300ms", "--server-pid", &pid]);
    assert_eq!(r["connections"]["ok"], 300, "{r:#}");
    assert!(r["idle"]["rss_bytes_per_connection"].as_f64().is_some(), "{r:#}");
    assert!(r["delivery"].is_null(), "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn refuses_more_than_a_worker_can_hold() {
    let out = Command::new(LOAD).args(["-n", "20000", "--procs", "1", "--src-ips", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--procs 2"), "{err}");
    let out = Command::new(LOAD).args(["--url", "ws://10.1.2.3:8080/ws"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn channels_round_robin_and_zipf_accounted_per_channel() {
    let s = start_server("channels");
    let pid = s.child.id().to_string();
    for dist in ["round-robin", "zipf"] {
        let (code, r) = run_load(
            &s,
            &[
                "--mode",
                "channels",
                "-n",
                "200",
                "--procs",
                "2",
                "--channel-count",
                "20",
                "--channels-per-conn",
                "3",
                "--distribution",
                dist,
                "--seed",
                "9",
                "--count",
                "400",
                "--rate",
                "800",
                "--server-pid",
                &pid,
            ],
        );
        assert_eq!(r["connections"]["ok"], 200, "{r:#}");
        let c = &r["channel_accounting"];
        assert_eq!(c["channels"], 20, "{r:#}");
        assert_eq!(c["distribution"], dist, "{r:#}");
        // 200 connections × 3 channels over 20 channels.
        assert_eq!(c["subscribers_mean"], 30.0, "{r:#}");
        assert_eq!(c["channels_with_loss"], 0, "{r:#}");
        assert_eq!(c["channels_with_duplicates"], 0, "{r:#}");
        assert_eq!(c["channels_out_of_order"], 0, "{r:#}");
        if dist == "round-robin" {
            assert_eq!((c["messages_min"].as_u64(), c["messages_max"].as_u64()), (Some(20), Some(20)), "{r:#}");
        } else {
            assert!(c["messages_max"].as_u64().unwrap() > 3 * c["messages_min"].as_u64().unwrap(), "{r:#}");
        }
        let d = &r["delivery"];
        // Each message reaches only its channel's subscribers: far fewer than everyone.
        let expected = d["expected"].as_u64().unwrap();
        assert!(expected > 0 && expected < 200 * 400 / 2, "{r:#}");
        if dist == "round-robin" {
            assert_eq!(expected, 20 * 200 * 3, "each channel: 20 messages × its subscribers");
        }
        assert_eq!(d["deliveries"].as_u64(), Some(expected), "{r:#}");
        assert_eq!(d["lost"], 0, "{r:#}");
        assert_eq!(d["unexpected_seq"], 0, "no message of a channel the connection did not ask for: {r:#}");
        assert_eq!(d["messages_complete"], 400, "{r:#}");
        assert_eq!(r["latency_ms"]["count"].as_u64(), Some(expected), "{r:#}");
        assert!(r["deliveries_per_server_cpu_second"].as_f64().is_some(), "{r:#}");
        assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r:#}");
        assert_eq!(code, 0);
    }
}

/// Runs crier-load under a pseudo-terminal (util-linux `script`) and returns what the
/// terminal showed (stdout and stderr together).
fn run_in_pty(s: &Server, extra: &[&str]) -> String {
    let mut cmd = format!(
        "'{LOAD}' --url ws://{}/ws --publish-socket '{}' -n 50 --rate 20 --duration 3s --timeout 60s",
        s.ws,
        s.publish.display()
    );
    for a in extra {
        cmd += &format!(" '{a}'");
    }
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `script` ({e}): install it with `apt-get install -y bsdutils`"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

#[test]
fn progress_line_on_a_terminal_only() {
    let s = start_server("progress");
    let tty = run_in_pty(&s, &[]);
    // Every redraw erases the line first; collect what was drawn.
    let drawn: Vec<&str> = tty
        .split("\r\x1b[2K")
        .skip(1)
        .filter(|l| l.starts_with("connecting") || l.starts_with("publishing") || l.starts_with("draining"))
        .map(|l| l.split(['\r', '\n']).next().unwrap())
        .collect();
    assert!(drawn.iter().any(|l| l.contains("connected 50/50")), "{drawn:#?}");
    let published: std::collections::BTreeSet<&str> =
        drawn.iter().filter_map(|l| l.split("published ").nth(1)?.split(' ').next()).collect();
    assert!(published.len() >= 3, "the line updates as messages go out: {published:?} in {drawn:#?}");
    let most = published.iter().filter_map(|p| p.split('/').next()?.parse::<u64>().ok()).max().unwrap_or(0);
    assert!(most >= 40, "{published:?}");
    assert!(drawn.iter().any(|l| l.contains("delivered ") && !l.contains("delivered 0 ")), "{drawn:#?}");
    assert!(drawn.iter().all(|l| l.contains(" lost ") && l.contains("p99 ") && l.contains("s elapsed")), "{drawn:#?}");
    assert!(drawn.iter().any(|l| l.contains("s left")), "{drawn:#?}");
    assert!(drawn.iter().any(|l| l.contains("p99 ") && !l.contains("p99 -")), "{drawn:#?}");
    // The line is erased before notes and the report, never glued to them.
    assert!(tty.contains("\x1b[2Kcrier-load  mode=broadcast"), "{tty}");
    assert!(tty.contains("deliveries              3000 of 3000"), "{tty}");

    // Not with --json, not with --quiet (which also drops the notes).
    let json = run_in_pty(&s, &["--json"]);
    assert!(!json.contains("\x1b[2K") && !json.contains("connected 50/50"), "{json}");
    assert!(json.contains("\"deliveries\": 3000"), "{json}");
    let quiet = run_in_pty(&s, &["--quiet"]);
    assert!(!quiet.contains("\x1b[2K") && !quiet.contains("crier-load: opening"), "{quiet}");
    assert!(quiet.contains("deliveries              3000 of 3000"), "{quiet}");

    // Not when stderr is a pipe: the notes stay, the line does not appear.
    let out = Command::new(LOAD)
        .arg("--url")
        .arg(format!("ws://{}/ws", s.ws))
        .arg("--publish-socket")
        .arg(&s.publish)
        .args(["-n", "50", "--rate", "20", "--duration", "3s", "--timeout", "60s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("crier-load: opening 50 connections"), "{err}");
    assert!(!err.contains("\x1b[2K") && !err.contains("connected 50/50"), "{err}");
}

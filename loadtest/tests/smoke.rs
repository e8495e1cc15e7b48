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

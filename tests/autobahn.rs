//! Conformance: the Autobahn TestSuite's cases against `crier serve --echo`, run by kosoku
//! (PyPI; a Rust runner of Autobahn's own case files, since the original `wstest` is
//! Python 2 only). Cases 1–10, then 12–13 (permessage-deflate). Fails on any FAILED or ERROR
//! case and on any close behaviour that is not OK or INFORMATIONAL. The HTML reports stay in
//! `target/autobahn/` (CI keeps them as an artifact). README "Conformance testing" explains
//! every case that is not OK.
//!
//! Also: echo mode echoes text as text and binary as binary, compressed under
//! permessage-deflate, and broadcasts still reach the same connection.
//!
//! Needs `kosoku` (`pip install kosoku`; scripts/test.sh installs it).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn kosoku() -> PathBuf {
    let found = Command::new("kosoku").arg("--help").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "kosoku is not installed: python3 -m pip install kosoku (scripts/test.sh installs it)");
    PathBuf::from("kosoku")
}

fn report_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("autobahn").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs kosoku on `cases` and returns each case's (behavior, behaviorClose).
fn run(s: &Server, name: &str, cases: &[&str], parallelism: usize) -> BTreeMap<String, (String, String)> {
    let dir = report_dir(name);
    let started = Instant::now();
    let out = Command::new(kosoku())
        .args(cases)
        .args(["-p", &parallelism.to_string(), "-o"])
        .arg(&dir)
        .arg(format!("ws://{}/ws", s.ws))
        .output()
        .expect("run kosoku");
    eprintln!("autobahn {name}: {:?}, kosoku exit {:?}", started.elapsed(), out.status.code());
    let index = std::fs::read_to_string(dir.join("index.json")).unwrap_or_else(|e| {
        panic!(
            "kosoku wrote no index.json ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let index: serde_json::Value = serde_json::from_str(&index).expect("index.json is JSON");
    let agent = index.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_object()).expect("one agent");
    agent
        .iter()
        .map(|(case, r)| {
            let field = |k: &str| r[k].as_str().unwrap_or("?").to_string();
            (case.clone(), (field("behavior"), field("behaviorClose")))
        })
        .collect()
}

fn tally(results: &BTreeMap<String, (String, String)>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for (b, _) in results.values() {
        *t.entry(b.clone()).or_insert(0) += 1;
    }
    t
}

/// The case ids (as in "6.4.3") whose behaviour is `b`.
fn cases_with(results: &BTreeMap<String, (String, String)>, b: &str) -> Vec<String> {
    let mut v: Vec<String> = results.iter().filter(|(_, (x, _))| x == b).map(|(c, _)| c.clone()).collect();
    v.sort_by_key(|c| c.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
    v
}

fn assert_conformant(results: &BTreeMap<String, (String, String)>) {
    let bad: Vec<String> = results
        .iter()
        .filter(|(_, (b, c))| {
            !matches!(b.as_str(), "OK" | "NON-STRICT" | "INFORMATIONAL" | "UNIMPLEMENTED")
                || !matches!(c.as_str(), "OK" | "INFORMATIONAL")
        })
        .map(|(case, (b, c))| format!("{case}: behavior {b}, close {c}"))
        .collect();
    assert!(bad.is_empty(), "Autobahn cases failed (reports in target/autobahn/):\n{}", bad.join("\n"));
}

#[test]
fn autobahn_testsuite_cases_1_to_10_and_12_13() {
    let s = ServerBuilder::new(Driver::Epoll)
        .args(["--echo", "--max-client-message-bytes", "16MiB", "--max-queue-bytes", "64MiB"])
        .start();
    // 1–10 on their own first: 6.4.x and 7.x time the server's reaction, which the heavy
    // compression cases would slow down on a small machine.
    let core = run(&s, "1-10", &["-x", "11.*", "-x", "12.*", "-x", "13.*"], 4);
    assert_eq!(core.len(), 301, "cases 1–10");
    assert_conformant(&core);
    let t = tally(&core);
    eprintln!("autobahn 1-10: {t:?}");
    // What README "Conformance testing" explains, case by case.
    assert_eq!(cases_with(&core, "NON-STRICT"), ["6.4.3", "6.4.4"], "README explains exactly these");
    assert_eq!(cases_with(&core, "INFORMATIONAL"), ["7.1.6", "7.13.1", "7.13.2"]);
    assert_eq!(cases_with(&core, "UNIMPLEMENTED"), Vec::<String>::new());

    let deflate = run(&s, "12-13", &["-i", "12.*", "-i", "13.*"], 8);
    assert_eq!(deflate.len(), 216, "cases 12–13");
    assert_conformant(&deflate);
    let t = tally(&deflate);
    eprintln!("autobahn 12-13: {t:?}");
    let unimplemented = cases_with(&deflate, "UNIMPLEMENTED");
    assert!(
        unimplemented.iter().all(|c| c.starts_with("13.3.") || c.starts_with("13.5.")),
        "only the offers that ask for server_max_window_bits < 15 are declined: {unimplemented:?}"
    );
    assert_eq!(unimplemented.len(), 36);
    s.assert_serving();
}

#[test]
fn echo_mode_echoes_and_still_broadcasts() {
    let s = ServerBuilder::new(Driver::Epoll).args(["--echo"]).start();
    let mut c = WsClient::connect(s.ws, "/ws?channels=a");
    s.wait_connections(1);
    c.send_text("héllo").unwrap();
    assert_eq!(c.expect_msg().text(), "héllo", "text comes back as text");
    c.send_binary(&[0, 159, 255]).unwrap();
    let m = c.expect_msg();
    assert!(m.is_binary());
    assert_eq!(m.data, [0, 159, 255], "binary as binary");
    let mut p = s.publisher();
    p.publish("a", b"broadcast", false);
    assert_eq!(c.expect_msg().text(), "broadcast", "the broadcast path still works");
    // permessage-deflate: the echo comes back compressed (RSV1), inflating to what was sent.
    let mut z = WsClient::connect_with(s.ws, "/ws?channels=b", &[("Sec-WebSocket-Extensions", "permessage-deflate")])
        .unwrap_or_else(|r| panic!("{r:?}"));
    let text = "flight BA117 gate B32 ".repeat(20);
    z.send_text(&text).unwrap();
    let m = z.expect_msg();
    assert!(m.compressed, "echoes are compressed under permessage-deflate");
    assert_eq!(m.text(), text);
    // A violation is still one: invalid UTF-8 in a text message closes with 1007.
    c.send_frame(true, 0, 0x1, &[0xC0, 0xAF], true).unwrap();
    match c.wait_end(IO_TIMEOUT) {
        WsEnd::Close(Some(1007), _) => {}
        other => panic!("expected 1007, got {other:?}"),
    }
}

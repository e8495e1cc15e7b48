//! The browser client, `clients/js/crier.js`, in a real headless Chromium (Debian's
//! `/usr/bin/chromium`, driven by playwright-core from `tests/browser/node_modules`; both
//! installed by `.ci/run`). The page imports crier.js from the crier server itself
//! (`GET /crier.js`), subscribes, and reports every event; `tests/browser/run.mjs` relays
//! those reports as lines. The page cuts its connection, the test publishes while it is
//! away, and the page must show every missed message once and in order; after crier
//! restarts on the same port, the page must report a reset.

#[macro_use]
mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the page should show for a text message published as `<channel>#<seq> …`.
fn text_payload(channel: &str, seq: u64) -> String {
    format!("{channel}#{seq} é→✓")
}

fn publish_board(p: &mut Publisher, seq: u64) {
    assert_eq!(p.publish("board", text_payload("board", seq).as_bytes(), false), seq);
}

/// The client's logic (envelope parsing, positions, since=, gap and reset handling,
/// backoff) against a scripted WebSocket: `node --test tests/browser/crier.test.mjs`.
#[test]
fn crier_js_unit_tests() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/crier.test.mjs");
    let child = Command::new("node")
        .args(["--test", "--test-reporter=spec", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node (is Node.js installed? .ci/run installs it): {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(out)) => assert!(
            out.status.success(),
            "node --test crier.test.mjs failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(Err(e)) => panic!("waiting for node: {e}"),
        Err(_) => {
            // SAFETY: signal to the PID of the child this test spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("node --test crier.test.mjs did not finish within 60 s");
        }
    }
}

#[test]
fn crier_js_is_served() {
    let s = Server::start(Driver::Epoll);
    let r = http_get(s.ws, "/crier.js").expect("GET /crier.js");
    assert_eq!(r.status, 200, "{r:?}");
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/javascript"), "Content-Type: {ct:?}");
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/crier.js")).unwrap();
    assert!(r.body == file, "GET /crier.js must serve clients/js/crier.js as it is in the tree (rebuild crier?)");
}

#[test]
fn browser_resumes_after_a_cut_and_reports_a_reset_after_a_restart() {
    let sock_dir = TempDir::new();
    let sock = sock_dir.join("p.sock");
    let mut s1 = Server::builder(Driver::Epoll).publish_socket(&sock).start();
    let port = s1.ws.port();
    let base = format!("http://127.0.0.1:{port}");
    let mut p = s1.publisher();
    for seq in 1..=3 {
        publish_board(&mut p, seq);
    }

    // The page subscribes with last=2: the two latest of board, then live.
    let mut b = Browser::start(&base, "board,gates", 2);
    b.until("ready");
    let (open, _) = b.until("open");
    assert!(open.contains("resumed=false"), "first connection: {open}");
    let got = collect_until(&mut b, &[("board", 3)]);
    let first: Vec<u64> = got["board"].iter().map(|m| m.seq).collect();
    assert_eq!(first, vec![2, 3], "last=2 must give board 2 and 3\n{}", b.context());
    let epoch1 = got["board"][0].epoch.clone();
    assert_eq!(got["board"][1].data, text_payload("board", 3));

    // Live: a binary message with a 0x0A inside (the header ends at the first one).
    let bin = [0xde, 0xad, 0x0a, 0x00, 0xff, 0x0a];
    assert_eq!(p.publish("gates", &bin, true), 1);
    publish_board(&mut p, 4);
    let got = collect_until(&mut b, &[("gates", 1), ("board", 4)]);
    let g = &got["gates"][0];
    assert!(g.binary && g.data == hex(&bin) && g.epoch == epoch1, "binary message: {g:?}");
    assert_eq!(got["board"].iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4]);

    // Cut the connection; the client stays away for 1.5 s while 25 messages go out.
    b.command("drop 1500");
    let (close, _) = b.until("close");
    assert!(!close.contains("reconnect=null"), "the client must plan to reconnect: {close}");
    let replayed0 = s1.metric0("crier_messages_replayed_total", &[]);
    let mut gates_bins = Vec::new();
    for i in 0..25u64 {
        if i % 5 == 4 {
            let data = random_bytes(i, 40);
            let seq = p.publish("gates", &data, true);
            gates_bins.push((seq, hex(&data)));
        } else {
            publish_board(&mut p, 5 + i - i / 5);
        }
    }
    let (board_last, gates_last) = (24, 6);
    let (open, before) = b.until("open");
    assert!(open.contains("resumed=true"), "the reconnection must resume: {open}");
    assert!(before.iter().all(|l| page_msg(l).is_none()), "messages before the reconnection: {before:?}");
    let got = collect_until(&mut b, &[("board", board_last), ("gates", gates_last)]);
    let board: Vec<u64> = got["board"].iter().map(|m| m.seq).collect();
    assert_eq!(board, (5..=board_last).collect::<Vec<_>>(), "every missed board message once, in order");
    for m in &got["board"] {
        assert_eq!(
            (m.data.as_str(), m.epoch.as_str(), m.binary),
            (text_payload("board", m.seq).as_str(), &*epoch1, false)
        );
    }
    let gates: Vec<(u64, String)> = got["gates"].iter().map(|m| (m.seq, m.data.clone())).collect();
    assert_eq!(gates, gates_bins, "every missed gates message once, in order");
    let extra = b.drain_for(Duration::from_millis(500));
    assert!(extra.is_empty(), "nothing more may arrive (no duplicate): {extra:?}");
    let replayed = s1.metric0("crier_messages_replayed_total", &[]) - replayed0;
    assert_eq!(replayed, 25.0, "the 25 missed messages came from the server's replay");
    // Live again.
    publish_board(&mut p, 25);
    let got = collect_until(&mut b, &[("board", 25)]);
    assert_eq!(got["board"].iter().map(|m| m.seq).collect::<Vec<_>>(), vec![25]);

    // Restart crier on the same port and publisher socket: the page reports a reset.
    drop(p);
    s1.sigterm();
    let (close, _) = b.until("close");
    assert!(close.contains("code=1001"), "SIGTERM closes the page's connection with 1001: {close}");
    assert!(s1.wait_exit(Duration::from_secs(10)).is_some_and(|st| st.success()), "crier did not exit 0");
    let s2 = Server::builder(Driver::Epoll)
        .omit("--listen")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .publish_socket(&sock)
        .start();
    assert_eq!(s2.ws.port(), port);
    let (open, _) = b.until("open");
    assert!(open.contains("resumed=true"), "after the restart the client resumes (and learns of the reset): {open}");
    let mut resets = BTreeMap::new();
    let deadline = Instant::now() + PAGE_TIMEOUT;
    while resets.len() < 2 {
        let line = b.next(deadline, "a reset of board and of gates");
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["reset", ch, epoch] => {
                resets.insert(ch.to_string(), epoch.to_string());
            }
            _ => panic!("expected reset notices first, got {line:?}\n{}", b.context()),
        }
    }
    let epoch2 = resets["board"].clone();
    assert_ne!(epoch2, epoch1, "a restarted crier has another epoch");
    assert_eq!(resets["gates"], epoch2);
    // The new crier's first message on board is seq 1 of the new epoch.
    assert_eq!(s2.publish("board", &text_payload("board", 1)), 1);
    let got = collect_until(&mut b, &[("board", 1)]);
    let m = &got["board"][0];
    assert_eq!((m.seq, m.epoch.as_str(), m.data.as_str()), (1, epoch2.as_str(), text_payload("board", 1).as_str()));
    let extra = b.drain_for(Duration::from_millis(300));
    assert!(extra.iter().all(|l| page_msg(l).is_none()), "no other message: {extra:?}");
    // Shown with --nocapture.
    eprintln!("{}", b.context());
}

/// Signs a token with PyJWT (tests/python/mint.py, as tests/access.rs does).
fn mint_hs256(key: &Path, claims: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/mint.py");
    let mut child = Command::new("python3")
        .args([script, "sign"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3 (.ci/run installs it): {e}"));
    let req = format!("{{\"alg\": \"HS256\", \"key\": {:?}, \"claims\": {claims}}}\n", key.to_str().unwrap());
    child.stdin.take().unwrap().write_all(req.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mint.py failed (PyJWT missing? .ci/run installs it: python3 -m pip install PyJWT cryptography): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// With `--jwt-key-file`, the page's token expires while messages keep coming: crier
/// closes it with 4001 from its sweep, crier.js asks the page's backend for a new token
/// (which takes 400 ms, while publishing goes on), reconnects with it and `since=`, and
/// the page shows every message once, in order.
#[test]
fn browser_renews_an_expired_token_and_resumes_without_loss() {
    let dir = TempDir::new();
    let key = dir.join("secret");
    std::fs::write(&key, "browser-test-secret-0123456789abcdef\n").unwrap();
    let s = Server::builder(Driver::Epoll).args(["--jwt-key-file", key.to_str().unwrap()]).start();
    let base = format!("http://127.0.0.1:{}", s.ws.port());
    let token = |secs: u64| mint_hs256(&key, &format!("{{\"exp\": {}, \"channels\": [\"board\"]}}", unix_now() + secs));
    let mut p = s.publisher();
    // However long Chromium takes to start, the first connection's token is still good.
    let mut b = Browser::start_with_token(&base, "board", &token(600));
    b.until("ready");
    b.until("token-fetched");
    let (open, _) = b.until("open");
    assert!(open.contains("resumed=false"), "{open}");
    for seq in 1..=3 {
        publish_board(&mut p, seq);
    }
    let got = collect_until(&mut b, &[("board", 3)]);
    assert_eq!(got["board"].iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);

    // Then a token that expires in 6 s: the backend hands it out, the page reconnects.
    b.command(&format!("token {} 0", token(6)));
    b.until("ack token");
    b.command("drop 0");
    b.until("close");
    b.until("token-fetched");
    let (open, _) = b.until("open");
    assert!(open.contains("resumed=true"), "{open}");

    // The backend's next token, handed out slowly.
    b.command(&format!("token {} 400", token(600)));
    b.until("ack token");

    // Publish every 50 ms across the expiry until the page is back and has had 10 more.
    let mut lines = Vec::new();
    let mut seq = 3;
    let mut reopened_at = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reopened_at.is_none_or(|at| seq < at + 10) {
        assert!(Instant::now() < deadline, "the page did not come back\n{}", b.context());
        seq += 1;
        publish_board(&mut p, seq);
        lines.extend(b.drain_for(Duration::from_millis(50)));
        if reopened_at.is_none() && lines.iter().any(|l| l.starts_with("open")) {
            reopened_at = Some(seq);
        }
    }
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    let close = at("close").map(|i| lines[i].clone()).expect("a close line");
    assert!(
        close.starts_with("close code=4001 reconnect=0"),
        "expiry closes 4001 and crier.js comes back at once: {close}"
    );
    let (closed, fetched, opened) = (at("close").unwrap(), at("token-fetched"), at("open").unwrap());
    assert!(
        fetched.is_some_and(|f| closed < f && f < opened),
        "a new token is fetched between the close and the open: {lines:?}"
    );
    assert!(lines[opened].contains("resumed=true"), "the reconnection resumes: {}", lines[opened]);
    assert_eq!(lines.iter().filter(|l| l.starts_with("close")).count(), 1, "one close only: {lines:?}");

    let mut msgs: Vec<PageMsg> = lines.iter().filter_map(|l| page_msg(l)).collect();
    if msgs.last().is_none_or(|m| m.seq < seq) {
        let rest = collect_until(&mut b, &[("board", seq)]);
        msgs.extend(rest.get("board").cloned().unwrap_or_default());
    }
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (4..=seq).collect::<Vec<_>>(), "every message once, in order, across the renewal");
    assert!(msgs.iter().all(|m| m.data == text_payload("board", m.seq)));
    assert!(
        s.metric0("crier_messages_replayed_total", &[]) >= 1.0,
        "what went out while the page was away was replayed"
    );
    assert_eq!(s.metric0("crier_connections_closed_total", &[("reason", "token_expired")]), 1.0);
    let extra = b.drain_for(Duration::from_millis(300));
    assert!(extra.iter().all(|l| page_msg(l).is_none()), "no duplicate: {extra:?}");
}

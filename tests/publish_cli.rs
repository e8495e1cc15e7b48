//! `crier publish`: payload from the argument or stdin, `--binary`, `--lines`, seq on
//! stdout, refusals as a non-zero exit with the server's reason on stderr.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sock(s: &Server) -> String {
    s.publish.display().to_string()
}

#[test]
fn payload_from_argument_prints_seq() {
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws?channels=flights");
    s.wait_connections(1);
    let p = sock(&s);
    let out = run_crier(&["publish", "--channel", "flights", "--publish-socket", &p, r#"{"gate":"B32"}"#], None, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1", "{out:?}");
    let m = sub.expect_msg();
    assert!(m.is_text(), "{m:?}");
    assert_eq!(m.text(), r#"{"gate":"B32"}"#);
    let out = run_crier(&["publish", "--channel", "flights", "--publish-socket", &p, "second"], None, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "2", "{out:?}");
    assert_eq!(sub.expect_text(), "second");
}

#[test]
fn payload_from_stdin() {
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws?channels=flights");
    s.wait_connections(1);
    let p = sock(&s);
    let payload = "{\"flight\":\"BA117\",\n \"gate\":\"B32\"}";
    let out =
        run_crier(&["publish", "--channel", "flights", "--publish-socket", &p, "-"], Some(payload.as_bytes()), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1");
    assert_eq!(sub.expect_text(), payload, "stdin must be published exactly, as one message");
}

#[test]
fn socket_from_env() {
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws");
    s.wait_connections(1);
    let p = sock(&s);
    let out = run_crier(&["publish", "--channel", "*", "via env"], None, &[("CRIER_PUBLISH_SOCKET", &p)]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1");
    assert_eq!(sub.expect_text(), "via env");
}

#[test]
fn binary_flag_sends_binary_frame() {
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws?channels=board");
    s.wait_connections(1);
    let p = sock(&s);
    let bytes: Vec<u8> = (0..=255u8).collect();
    let out = run_crier(&["publish", "--channel", "board", "--binary", "--publish-socket", &p, "-"], Some(&bytes), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1");
    let m = sub.expect_msg();
    assert!(m.is_binary(), "--binary must arrive as a binary frame: {m:?}");
    assert_eq!(m.data, bytes);
}

#[test]
fn lines_publishes_each_line() {
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws?channels=log");
    s.wait_connections(1);
    let p = sock(&s);
    let out =
        run_crier(&["publish", "--channel", "log", "--lines", "--publish-socket", &p], Some(b"one\ntwo\nthree\n"), &[]);
    assert!(out.status.success(), "{out:?}");
    let seqs: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(seqs, ["1", "2", "3"], "{out:?}");
    assert_eq!(sub.expect_text(), "one");
    assert_eq!(sub.expect_text(), "two");
    assert_eq!(sub.expect_text(), "three");
}

#[test]
fn lines_streams_like_tail_f() {
    // `tail -f log | crier publish --lines`: each line goes out as it arrives, not at EOF.
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws?channels=log");
    s.wait_connections(1);
    let mut child = Command::new(BIN)
        .args(["publish", "--channel", "log", "--lines", "--publish-socket", &sock(&s)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first line\n").unwrap();
    stdin.flush().unwrap();
    let first = sub.recv(IO_TIMEOUT);
    if !matches!(&first, Ok(m) if m.data == b"first line") {
        // SAFETY: signal to the PID of the child this test spawned (still running).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
        panic!("--lines must publish a line while stdin stays open; got {first:?}");
    }
    stdin.write_all(b"second line\n").unwrap();
    drop(stdin);
    assert_eq!(sub.expect_text(), "second line");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(10)).expect("crier publish --lines did not exit at EOF").unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), ["1", "2"]);
}

#[test]
fn refusal_exits_nonzero_with_server_reason() {
    let s = Server::builder(Driver::Epoll).args(["--max-message-bytes", "16"]).start();
    let mut sub = s.ws("/ws?channels=ok");
    s.wait_connections(1);
    let p = sock(&s);
    let out = run_crier(&["publish", "--channel", "bad!name", "--publish-socket", &p, "x"], None, &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("bad channel name 'bad!name'"), "stderr must carry the server's reason: {out:?}");
    assert!(out.stdout.trim().is_empty(), "{out:?}");
    // A space would split the command line: named as a bad channel, not a malformed length.
    let out = run_crier(&["publish", "--channel", "a b", "--publish-socket", &p, "x"], None, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("bad channel name 'a b'"), "{out:?}");
    assert!(!out.stderr.contains("malformed length"), "{out:?}");

    let out = run_crier(&["publish", "--channel", "ok", "--publish-socket", &p, "-"], Some(&[0xff, 0xfe]), &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("text payload is not valid UTF-8"), "{out:?}");

    let out = run_crier(&["publish", "--channel", "ok", "--publish-socket", &p, "this payload is too long"], None, &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("payload too large: 24 bytes > max-message-bytes 16"), "{out:?}");

    // --lines stops at the first refusal with a non-zero exit.
    let out = run_crier(
        &["publish", "--channel", "ok", "--lines", "--publish-socket", &p],
        Some(b"fine\nthis line is much too long\nnever\n"),
        &[],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.lines().next() == Some("1"), "{out:?}");
    assert!(out.stderr.contains("payload too large"), "{out:?}");
    assert_eq!(sub.expect_text(), "fine");
    sub.expect_silence(Duration::from_millis(300));
}

#[test]
fn no_server_is_an_error() {
    let dir = TempDir::new();
    let p = dir.join("nobody.sock").display().to_string();
    let out = run_crier(&["publish", "--channel", "a", "--publish-socket", &p, "x"], None, &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains(&p), "the error should name the socket: {out:?}");
}

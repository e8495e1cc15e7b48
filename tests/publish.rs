//! The publisher protocol on the Unix socket: seq numbers, pipelining, every refusal of the
//! README table with what happens to the connection, isolation from other publishers and
//! subscribers, and the socket file itself (stale file, live socket, mode).

#[macro_use]
mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

const QUIET: Duration = Duration::from_millis(300);

both_drivers! {
    fn seq_per_channel_starts_at_1(d) {
        let s = Server::start(d);
        let mut p = s.publisher();
        assert_eq!(p.publish("a", b"1", false), 1);
        assert_eq!(p.publish("a", b"2", false), 2);
        assert_eq!(p.publish("b", b"1", false), 1);
        assert_eq!(p.publish("a", b"3", true), 3);
        // Per channel, not per connection.
        let mut q = s.publisher();
        assert_eq!(q.publish("a", b"4", false), 4);
        assert_eq!(q.publish("b", b"2", false), 2);
        assert_eq!(q.publish("*", b"x", false), 1);
        assert_eq!(p.publish("*", b"y", false), 2);
        s.wait_metric("crier_messages_published_total", &[], IO_TIMEOUT, "8", |v| v == 8.0);
    }

    fn ping_and_line_endings(d) {
        let s = Server::start(d);
        let mut sub = s.ws("/ws?channels=a");
        s.wait_connections(1);
        let mut p = s.publisher();
        p.send(b"PING\r\n").unwrap();
        assert_eq!(p.expect_line(), "+PONG");
        p.send(b"PING\n").unwrap();
        assert_eq!(p.expect_line(), "+PONG");
        // Bare LF after the command line and after the payload.
        p.send(b"PUB a 3\nabc\n").unwrap();
        assert_eq!(p.expect_line(), "+OK 1");
        p.send(b"PUB a 3 binary\n\x00\x01\x02\r\n").unwrap();
        assert_eq!(p.expect_line(), "+OK 2");
        // A payload may itself contain CR LF; only the length counts.
        p.send(b"PUB a 6 text\r\nx\r\ny\r\n\r\n").unwrap();
        assert_eq!(p.expect_line(), "+OK 3");
        // A command split across writes.
        p.send(b"PUB a 5\r\nhel").unwrap();
        std::thread::sleep(Duration::from_millis(50)); // force two reads on the server
        p.send(b"lo\r\n").unwrap();
        assert_eq!(p.expect_line(), "+OK 4");
        assert_eq!(sub.expect_text(), "abc");
        let m = sub.expect_msg();
        assert!(m.is_binary() && m.data == [0, 1, 2], "{m:?}");
        assert_eq!(sub.expect_text(), "x\r\ny\r\n");
        assert_eq!(sub.expect_text(), "hello");
    }

    fn pipelined_publishes(d) {
        let s = Server::start(d);
        let mut sub = s.ws("/ws?channels=p");
        s.wait_connections(1);
        let mut p = s.publisher();
        let mut all = Vec::new();
        for i in 0..500 {
            all.extend(pub_command("p", format!("m{i}").as_bytes(), None));
            if i % 100 == 0 {
                all.extend_from_slice(b"PING\r\n");
            }
        }
        p.send(&all).unwrap();
        let mut seq = 0;
        for i in 0..500 {
            seq += 1;
            assert_eq!(p.expect_line(), format!("+OK {seq}"));
            if i % 100 == 0 {
                assert_eq!(p.expect_line(), "+PONG", "replies must come back in order");
            }
        }
        for i in 0..500 {
            assert_eq!(sub.expect_text(), format!("m{i}"));
        }
    }

    fn soft_refusals_keep_the_connection(d) {
        let s = Server::start(d);
        let mut sub = s.ws("/ws?channels=a");
        s.wait_connections(1);
        let mut p = s.publisher();
        let errors0 = s.metric0("crier_publish_errors_total", &[]);

        // Every mismatch is collected so one wrong reply does not hide the others.
        let mut wrong = Vec::new();
        let mut check = |got: String, ok: bool, want: &str| {
            if !ok {
                wrong.push(format!("got {got:?}, want {want}"));
            }
        };
        p.send(b"FOO bar\r\n").unwrap();
        let l = p.expect_line();
        check(l.clone(), l == "-ERR unknown command 'FOO'", "-ERR unknown command 'FOO'");

        // The refused payload is skipped, not read as a command (it would answer +PONG).
        p.send(b"PUB bad!name 6\r\nPING\r\n\r\n").unwrap();
        let l = p.expect_line();
        let prefix = "-ERR bad channel name 'bad!name': ";
        check(l.clone(), l.starts_with(prefix) && l.len() > prefix.len(), "-ERR bad channel name 'bad!name': <why>");
        let long = "c".repeat(65);
        p.send(format!("PUB {long} 6\r\nPING\r\n\r\n").as_bytes()).unwrap();
        let l = p.expect_line();
        check(l.clone(), l.starts_with(&format!("-ERR bad channel name '{long}': ")), "-ERR bad channel name '<the 65-character name>': <why>");

        p.send(b"PUB a 6 json\r\nPING\r\n\r\n").unwrap();
        let l = p.expect_line();
        check(l.clone(), l == "-ERR bad type 'json': expected text or binary", "-ERR bad type 'json': expected text or binary");

        p.send(b"PUB a 2 text\r\n\xff\xfe\r\n").unwrap();
        let l = p.expect_line();
        check(l.clone(), l == "-ERR text payload is not valid UTF-8", "-ERR text payload is not valid UTF-8");
        p.send(b"PUB a 2\r\n\xc3\x28\r\n").unwrap();
        let l = p.expect_line();
        check(l.clone(), l == "-ERR text payload is not valid UTF-8", "-ERR text payload is not valid UTF-8 (default type)");

        // Still usable, and none of the refused payloads reached anyone.
        p.send(b"PING\r\n").unwrap();
        assert_eq!(p.expect_line(), "+PONG");
        assert_eq!(p.publish("a", b"\xff\xfe", true), 1, "seq must not count refusals");
        assert_eq!(p.publish("a", b"valid", false), 2);
        let m = sub.expect_msg();
        assert!(m.is_binary() && m.data == [0xff, 0xfe], "{m:?}");
        assert_eq!(sub.expect_text(), "valid");
        sub.expect_silence(QUIET);
        s.wait_metric("crier_publish_errors_total", &[], IO_TIMEOUT, "+6", |v| v >= errors0 + 6.0);
        assert!(wrong.is_empty(), "replies differ from the README table:\n{}", wrong.join("\n"));
    }

    fn fatal_refusals_close_the_connection(d) {
        let s = Server::builder(d).args(["--max-message-bytes", "1KiB"]).start();
        let mut sub = s.ws("/ws?channels=a");
        let mut t = s.tung("/ws?channels=a");
        s.wait_connections(2);
        let mut other = s.publisher();
        let cases: Vec<(&str, Vec<u8>, String)> = vec![
            ("malformed length", b"PUB a xyz\r\nabc\r\n".to_vec(), "-ERR malformed length 'xyz'".into()),
            ("negative length", b"PUB a -1\r\n".to_vec(), "-ERR malformed length '-1'".into()),
            ("too large", b"PUB a 2000\r\n".to_vec(), "-ERR payload too large: 2000 bytes > max-message-bytes 1024".into()),
            ("line too long", {
                let mut v = b"PUB a ".to_vec();
                v.extend(std::iter::repeat_n(b'9', 1100));
                v.extend_from_slice(b"\r\n");
                v
            }, "-ERR line too long".into()),
            ("line without end", {
                let mut v = b"PUB ".to_vec();
                v.extend(std::iter::repeat_n(b'x', 2000));
                v
            }, "-ERR line too long".into()),
            ("no CRLF after payload", b"PUB a 3\r\nabcXY\r\n".to_vec(), "-ERR payload not followed by CRLF".into()),
        ];
        let mut expected = Vec::new();
        // Every mismatch is collected so one wrong reply does not hide the others.
        let mut wrong = Vec::new();
        for (i, (what, bytes, reply)) in cases.iter().enumerate() {
            let mut bad = s.publisher();
            // A good publish first on the same connection: accepted and delivered.
            let good = format!("before {what}");
            bad.publish("a", good.as_bytes(), false);
            expected.push(good);
            bad.send(bytes).unwrap();
            let got = bad.expect_line();
            if &got != reply {
                wrong.push(format!("{what}: got {got:?}, want {reply:?}"));
            }
            bad.expect_closed();
            // Another publisher is unaffected.
            let ok = format!("other {i}");
            other.publish("a", ok.as_bytes(), false);
            expected.push(ok);
        }
        // Exactly max-message-bytes is fine.
        let max = vec![b'z'; 1024];
        other.publish("a", &max, false);
        for want in &expected {
            assert_eq!(&sub.expect_text(), want);
            assert_eq!(&tung_recv_text(&mut t), want);
        }
        assert_eq!(sub.expect_msg().data, max);
        sub.expect_silence(QUIET);
        s.wait_metric("crier_publishers", &[], IO_TIMEOUT, "1", |v| v == 1.0);
        assert!(wrong.is_empty(), "replies differ from the README table:\n{}", wrong.join("\n"));
    }

    fn shutting_down_refusal(d) {
        let mut s = Server::builder(d).args(["--drain-timeout", "3s"]).start();
        // A subscriber that never answers the close keeps the drain going for a while.
        let _sub = s.ws("/ws");
        s.wait_connections(1);
        let mut p = s.publisher();
        p.publish("a", b"before", false);
        s.sigterm();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut lines = Vec::new();
        loop {
            if p.send(&pub_command("a", b"during drain", None)).is_err() {
                break;
            }
            match p.line() {
                Some(l) if l.starts_with("+OK") && Instant::now() < deadline => {
                    // SIGTERM not handled yet; try again.
                    lines.push(l);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Some(l) => {
                    lines.push(l);
                    break;
                }
                None => break,
            }
        }
        assert_eq!(lines.last().map(String::as_str), Some("-ERR server shutting down"), "replies: {lines:?}");
        p.expect_closed();
        assert!(s.wait_exit(Duration::from_secs(8)).is_some_and(|st| st.success()), "exit after drain");
    }
}

#[test]
fn stale_socket_file_is_replaced() {
    let b = ServerBuilder::new(Driver::Epoll);
    let path = b.publish_path();
    {
        // What a crashed crier leaves behind: a socket file nobody listens on.
        let l = UnixListener::bind(&path).unwrap();
        drop(l);
    }
    assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
    let s = b.start();
    let mut sub = s.ws("/ws");
    s.wait_connections(1);
    assert_eq!(s.publish("*", "after stale"), 1);
    assert_eq!(sub.expect_text(), "after stale");
}

#[test]
fn live_socket_of_another_crier_is_an_error() {
    let first = Server::start(Driver::Epoll);
    let second = ServerBuilder::new(Driver::Epoll)
        .publish_socket(first.publish.clone())
        .run_expect_exit(Duration::from_secs(15));
    assert!(!second.became_ready, "second crier started on a live socket:\n{}", second.stderr);
    let st = second.status.expect("second crier neither failed nor became ready");
    assert!(!st.success(), "second crier must exit non-zero: {st:?}\n{}", second.stderr);
    let err = second.stderr.to_lowercase();
    let path = first.publish.display().to_string();
    assert!(
        err.contains(&path.to_lowercase())
            && (err.contains("in use")
                || err.contains("another")
                || err.contains("already")
                || err.contains("listening")),
        "message should name the socket and say it is in use:\n{}",
        second.stderr
    );
    // The first one still has its socket.
    let mut sub = first.ws("/ws");
    first.wait_connections(1);
    assert_eq!(first.publish("*", "first still works"), 1);
    assert_eq!(sub.expect_text(), "first still works");
}

#[test]
fn socket_mode_default_0660() {
    let s = Server::start(Driver::Epoll);
    let meta = std::fs::metadata(&s.publish).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "default --publish-socket-mode");
}

#[test]
fn socket_mode_0600() {
    let s = Server::builder(Driver::Epoll).args(["--publish-socket-mode", "0600"]).start();
    let meta = std::fs::metadata(&s.publish).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(s.publish("*", "x"), 1);
}

#[test]
fn socket_mode_from_env_and_bad_mode() {
    let s = Server::builder(Driver::Epoll).env("CRIER_PUBLISH_SOCKET_MODE", "0640").start();
    let meta = std::fs::metadata(&s.publish).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    let e = ServerBuilder::new(Driver::Epoll)
        .args(["--publish-socket-mode", "0999"])
        .run_expect_exit(Duration::from_secs(15));
    assert!(e.status.is_some_and(|s| !s.success()), "invalid mode accepted:\n{}", e.stderr);
    assert!(e.stderr.contains("publish-socket-mode"), "{}", e.stderr);
}

#[test]
fn socket_removed_on_clean_exit() {
    let mut s = Server::start(Driver::Epoll);
    let path = s.publish.clone();
    s.sigterm();
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|st| st.success()), "SIGTERM with no clients: {st:?}");
    // Either removed, or left behind and replaced next time: both work; a new start on the
    // same path must succeed.
    let s2 = ServerBuilder::new(Driver::Epoll).publish_socket(path).start();
    assert_eq!(s2.publish("*", "again"), 1);
}

//! Heartbeat: server pings every `--ping-interval`; connections silent for
//! `--idle-timeout` are closed (1001) and counted; connections that answer stay open.

#[macro_use]
mod common;

use common::*;
use std::time::{Duration, Instant};

both_drivers! {
    fn server_pings_every_interval(d) {
        let s = Server::builder(d).args(["--ping-interval", "200ms"]).start();
        let mut c = s.ws("/ws");
        let start = Instant::now();
        let mut pings = 0;
        while pings < 3 {
            let f = c.read_frame(Duration::from_secs(3)).unwrap_or_else(|e| panic!("no ping after {pings} pings: {e:?}"));
            assert_eq!(f.opcode, OP_PING, "unexpected frame {f:?}");
            assert!(f.fin && f.payload.len() <= 125, "{f:?}");
            pings += 1;
            let _ = c.send_frame(true, 0, OP_PONG, &f.payload, true);
        }
        // Three pings at a 200 ms interval take well under 3 s (a per-shard sweep may add
        // up to one interval of jitter each).
        assert!(start.elapsed() < Duration::from_secs(3), "3 pings took {:?}", start.elapsed());
        // tungstenite sees the pings too (it answers them itself) and stays connected.
        let mut t = s.tung("/ws");
        s.wait_connections(2);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut saw_ping = false;
        while Instant::now() < deadline && !saw_ping {
            match t.read() {
                Ok(tungstenite::Message::Ping(_)) => saw_ping = true,
                Ok(_) => {}
                Err(e) => panic!("tungstenite: {e}"),
            }
        }
        assert!(saw_ping, "tungstenite saw no ping within 3 s");
    }

    fn silent_client_is_closed_after_idle_timeout(d) {
        let s = Server::builder(d).args(["--ping-interval", "200ms", "--idle-timeout", "1s"]).start();
        let mut silent = s.ws("/ws");
        let start = Instant::now();
        // Never answer the pings; read until the server gives up on us.
        let end = silent.wait_end(Duration::from_secs(6));
        let took = start.elapsed();
        match end {
            WsEnd::Close(code, _) => assert_eq!(code, Some(1001), "idle close code"),
            WsEnd::Eof | WsEnd::Reset => {}
            other => panic!("silent client not closed within 6 s: {other:?}"),
        }
        assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
        s.wait_metric("crier_connections_closed_total", &[("reason", "idle_timeout")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        s.wait_connections(0);
    }

    fn answering_client_stays_open(d) {
        let s = Server::builder(d).args(["--ping-interval", "200ms", "--idle-timeout", "1s"]).start();
        let mut alive = s.ws("/ws?channels=hb");
        alive.auto_pong = true;
        let mut silent = s.ws("/ws?channels=hb");
        s.wait_connections(2);
        // Stay 3 idle timeouts, answering every ping.
        // (recv answers pings itself and returns only on data, close, or the timeout).
        match alive.recv(Duration::from_secs(3)) {
            Err(WsEnd::Timeout) => {}
            other => panic!("answering client got {other:?}"),
        }
        assert!(alive.pings_seen >= 5, "only {} pings in 3 s", alive.pings_seen);
        s.publish("hb", "still here");
        assert_eq!(alive.recv(IO_TIMEOUT).expect("alive client closed"), Message { opcode: OP_TEXT, data: b"still here".to_vec(), compressed: false });
        // Meanwhile the one that never answered was closed.
        match silent.wait_end(Duration::from_secs(1)) {
            WsEnd::Close(Some(1001), _) | WsEnd::Eof | WsEnd::Reset => {}
            other => panic!("silent client should be closed by now: {other:?}"),
        }
        s.wait_connections(1);
    }

    fn any_client_frame_counts_as_activity(d) {
        // A client that sends its own data (but never answers a ping) is not silent either.
        let s = Server::builder(d).args(["--ping-interval", "900ms", "--idle-timeout", "1s"]).start();
        let mut c = s.ws("/ws");
        for _ in 0..8 {
            c.send_text("tick").unwrap();
            // Pings may arrive (recv skips them without answering); nothing else may.
            c.expect_silence(Duration::from_millis(300));
        }
        s.wait_connections(1);
        s.publish("*", "alive");
        assert_eq!(c.expect_text(), "alive");
    }
}

/// A client that keeps taking what it is sent is not idle, however late its pong: while
/// a backlog is being written to it, our ping waits behind the data (as when a shard is
/// behind on a busy box). Here the client reads a 10 MiB backlog at about 1.3 MiB/s, so
/// the ping reaches it long after --idle-timeout; it is still served everything. Once the
/// backlog is out and it answers nothing, the idle timeout applies as before.
#[test]
fn a_client_still_taking_a_backlog_is_not_idle() {
    const MESSAGES: usize = 40;
    let s = Server::builder(Driver::Epoll)
        .args(["--ping-interval", "500ms", "--idle-timeout", "2s", "--max-queue-bytes", "64MiB"])
        .start();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect_timeout(&s.ws.into(), IO_TIMEOUT).unwrap();
    let mut c = WsClient::handshake(sock.into(), s.ws, "/ws?channels=big", &[]).unwrap_or_else(|r| panic!("{r:?}"));
    s.wait_connections(1);
    let mut p = s.publisher();
    let body = vec![7u8; 256 * 1024];
    for _ in 0..MESSAGES {
        p.publish("big", &body, true);
    }
    let start = Instant::now();
    for i in 0..MESSAGES {
        let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("message {i} after {:?}: {e:?}", start.elapsed()));
        assert_eq!(m.data.len(), body.len());
        // Pacing, not waiting for readiness: a reader that takes ~1.3 MiB/s.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        start.elapsed() > Duration::from_secs(4),
        "the backlog took {:?}: not past the idle timeout",
        start.elapsed()
    );
    assert_eq!(s.metric0("crier_connections_closed_total", &[("reason", "idle_timeout")]), 0.0);
    // Backlog gone, pings unanswered: now it is idle.
    match c.wait_end(Duration::from_secs(6)) {
        WsEnd::Close(Some(1001), _) | WsEnd::Eof | WsEnd::Reset => {}
        other => panic!("the silent client should be closed once its backlog is out: {other:?}"),
    }
}

//! The HTTP upgrade on the WebSocket port: the 101 answer and every error of the README's
//! "HTTP errors on the WebSocket port" table, with the matching refusal counters.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn refused(s: &Server, reason: &str) -> f64 {
    s.metric0("crier_connections_refused_total", &[("reason", reason)])
}

both_drivers! {
    fn upgrade_101_with_accept_key(d) {
        let s = Server::start(d);
        let req = upgrade_request(s.ws, "/ws?channels=flights", &[]);
        // Raw check of the response head, independent of the harness's client.
        let mut tcp = TcpStream::connect(s.ws).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tcp.read(&mut b).expect("read 101 response");
            assert_eq!(n, 1, "EOF in response head: {:?}", String::from_utf8_lossy(&head));
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap();
        assert!(status.starts_with("HTTP/1.1 101"), "status line {status:?}");
        let hdr = |name: &str| {
            head.split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        assert_eq!(hdr("Sec-WebSocket-Accept").as_deref(), Some(WS_ACCEPT), "{head}");
        assert!(hdr("Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")), "{head}");
        assert!(hdr("Connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")), "{head}");
        assert!(hdr("Sec-WebSocket-Extensions").is_none(), "no extension offered, none expected: {head}");

        // A second, independent client library completes the handshake too.
        let mut t = s.tung("/ws?channels=flights");
        let mut raw = s.ws("/ws?channels=flights");
        s.wait_connections(3);
        s.publish("flights", "BA117 B32");
        assert_eq!(tung_recv_text(&mut t), "BA117 B32");
        assert_eq!(raw.expect_text(), "BA117 B32");
        s.wait_metric("crier_connections_accepted_total", &[], IO_TIMEOUT, ">= 3", |v| v >= 3.0);
        drop(tcp);
    }

    fn not_found_on_other_path(d) {
        let s = Server::start(d);
        let r = http_raw(s.ws, upgrade_request(s.ws, "/other", &[]).as_bytes()).unwrap();
        assert_eq!(r.status, 404, "{r:?}");
        let r = http_raw(s.ws, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.status, 404, "{r:?}");
        s.wait_metric("crier_connections_refused_total", &[("reason", "not_found")], IO_TIMEOUT, ">= 2", |v| v >= 2.0);
    }

    fn custom_path(d) {
        let s = Server::builder(d).args(["--path", "/live"]).start();
        let r = http_raw(s.ws, upgrade_request(s.ws, "/ws", &[]).as_bytes()).unwrap();
        assert_eq!(r.status, 404, "{r:?}");
        let mut c = s.ws("/live?channels=a");
        s.wait_connections(1);
        s.publish("a", "on /live");
        assert_eq!(c.expect_text(), "on /live");
    }

    fn method_not_allowed(d) {
        let s = Server::start(d);
        let req = upgrade_request(s.ws, "/ws", &[]).replacen("GET", "POST", 1);
        let r = http_raw(s.ws, req.as_bytes()).unwrap();
        assert_eq!(r.status, 405, "{r:?}");
        let r = http_raw(s.ws, b"PUT /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(r.status, 405, "{r:?}");
        s.wait_metric("crier_connections_refused_total", &[("reason", "method_not_allowed")], IO_TIMEOUT, ">= 2", |v| v >= 2.0);
    }

    fn plain_get_needs_upgrade(d) {
        let s = Server::start(d);
        let r = http_raw(s.ws, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.status, 426, "{r:?}");
        s.wait_metric("crier_connections_refused_total", &[("reason", "upgrade_required")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
    }

    fn wrong_version_gets_426_with_version_13(d) {
        let s = Server::start(d);
        let req = upgrade_request(s.ws, "/ws", &[("Sec-WebSocket-Version", "8")]);
        let r = http_raw(s.ws, req.as_bytes()).unwrap();
        assert_eq!(r.status, 426, "{r:?}");
        assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"), "{r:?}");
    }

    fn missing_key_is_400(d) {
        let s = Server::start(d);
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.ws
        );
        let r = http_raw(s.ws, req.as_bytes()).unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(!r.body.is_empty(), "400 must say why: {r:?}");
        assert!(r.body_text().to_ascii_lowercase().contains("key"), "body should name the missing key: {r:?}");
        s.wait_metric("crier_connections_refused_total", &[("reason", "bad_request")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
    }

    fn bad_channel_names_are_400_with_reason(d) {
        let s = Server::start(d);
        let long = "x".repeat(65);
        let cases = [
            "bad!name".to_string(),
            "has%20space".to_string(),
            "ok,bad/slash".to_string(),
            long.clone(),
            "caf%C3%A9".to_string(),
        ];
        for ch in &cases {
            let target = format!("/ws?channels={ch}");
            let r = http_raw(s.ws, upgrade_request(s.ws, &target, &[]).as_bytes()).unwrap();
            assert_eq!(r.status, 400, "{target}: {r:?}");
            let body = r.body_text().to_ascii_lowercase();
            assert!(body.contains("channel"), "400 body must say the channel name is bad ({target}): {r:?}");
        }
        // The longest legal name (64 characters from the whole charset) is fine.
        let ok = format!("{}AZaz09_-.:", "m".repeat(54));
        assert_eq!(ok.len(), 64);
        let mut c = s.ws(&format!("/ws?channels={ok}"));
        s.wait_connections(1);
        s.publish(&ok, "legal");
        assert_eq!(c.expect_text(), "legal");
        assert!(refused(&s, "bad_request") >= cases.len() as f64);
    }

    fn too_many_channels_is_400(d) {
        let s = Server::builder(d).args(["--max-channels", "3"]).start();
        let r = http_raw(s.ws, upgrade_request(s.ws, "/ws?channels=a,b,c,d", &[]).as_bytes()).unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body_text().to_ascii_lowercase().contains("channel"), "{r:?}");
        // Exactly the limit is fine, and duplicates do not count twice.
        let _c = s.ws("/ws?channels=a,b,c");
        let _c2 = s.ws("/ws?channels=a,b,c,a,b");
    }

    fn default_max_channels_is_64(d) {
        let s = Server::start(d);
        let names: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
        let r = http_raw(s.ws, upgrade_request(s.ws, &format!("/ws?channels={}", names.join(",")), &[]).as_bytes()).unwrap();
        assert_eq!(r.status, 400, "65 channels: {r:?}");
        let _ok = s.ws(&format!("/ws?channels={}", names[..64].join(",")));
    }

    fn head_over_8k_is_431(d) {
        let s = Server::start(d);
        let big = "a".repeat(9000);
        let req = upgrade_request(s.ws, "/ws", &[("X-Padding", &big)]);
        let r = http_raw(s.ws, req.as_bytes()).unwrap();
        assert_eq!(r.status, 431, "{r:?}");
        s.wait_metric("crier_connections_refused_total", &[("reason", "header_too_large")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        // A head just under the limit is accepted.
        let pad = "b".repeat(7000);
        let c = WsClient::connect_with(s.ws, "/ws", &[("X-Padding", &pad)]);
        assert!(c.is_ok(), "7 KB head must upgrade: {:?}", c.err());
    }

    fn malformed_head_is_400(d) {
        let s = Server::start(d);
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nHost x no colon\r\n\r\n",
            b"GET /ws HTTP/9\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            let r = http_raw(s.ws, raw).unwrap_or_else(|e| panic!("{:?}: no HTTP answer: {e}", String::from_utf8_lossy(raw)));
            assert_eq!(r.status, 400, "{:?} -> {r:?}", String::from_utf8_lossy(raw));
            assert!(!r.body.is_empty(), "400 must say why: {r:?}");
        }
        s.assert_serving();
    }

    fn channel_separator_may_be_percent_encoded(d) {
        let s = Server::start(d);
        let mut c = s.ws("/ws?channels=a%2Cb");
        let mut lower = s.ws("/ws?channels=a%2cb");
        s.wait_connections(2);
        s.publish("a", "to a");
        s.publish("b", "to b");
        for cl in [&mut c, &mut lower] {
            let mut got = vec![cl.expect_text(), cl.expect_text()];
            got.sort();
            assert_eq!(got, ["to a", "to b"]);
        }
    }

    fn handshake_timeout_drops_half_a_head(d) {
        let s = Server::builder(d).args(["--handshake-timeout", "500ms"]).start();
        let mut tcp = TcpStream::connect(s.ws).unwrap();
        let start = Instant::now();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web").unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1024];
        let ended = loop {
            match tcp.read(&mut b) {
                Ok(0) => break "eof",
                Ok(_) => continue, // an error response before closing is acceptable
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
                Err(e) => panic!("half a head was not dropped within 5 s: {e}"),
            }
        };
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "dropped too early ({took:?}, {ended})");
        assert!(took < Duration::from_secs(3), "dropped too late ({took:?})");
        s.wait_metric("crier_connections_refused_total", &[("reason", "handshake_timeout")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        // A connection that says nothing at all is dropped too.
        let mut idle = TcpStream::connect(s.ws).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = idle.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err() && r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
            "silent connection not dropped: {r:?}");
        s.wait_metric("crier_connections_refused_total", &[("reason", "handshake_timeout")], IO_TIMEOUT, ">= 2", |v| v >= 2.0);
        s.assert_serving();
    }
}

//! Frames from clients: pings, pongs, the close handshake, data messages (read, checked,
//! counted, discarded), every protocol violation with its RFC 6455 close code, and garbage
//! that must never take a shard down.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Connect, let `send` misbehave, expect a close frame with `code`, answer it like a
/// polite client, expect TCP to be closed, and check a new connection still gets broadcasts.
fn violation(s: &Server, what: &str, code: u16, send: impl FnOnce(&mut WsClient)) {
    let mut c = s.ws("/ws?channels=v");
    send(&mut c);
    let got = match c.wait_end(CLOSE_WAIT) {
        WsEnd::Close(got, _) => got,
        other => panic!("{what}: expected close {code}, got {other:?}"),
    };
    assert_eq!(got, Some(code), "{what}: wrong close code");
    let _ = c.send_close(code, "");
    c.expect_tcp_closed(CLOSE_WAIT);
    s.assert_serving();
}

both_drivers! {
    fn ping_gets_pong_with_same_payload(d) {
        let s = Server::start(d);
        let mut c = s.ws("/ws");
        for payload in [&b"hello"[..], b"", &[0xAB; 125][..]] {
            c.send_ping(payload).unwrap();
            let f = c.read_frame(IO_TIMEOUT).unwrap();
            assert_eq!(f.opcode, OP_PONG, "{f:?}");
            assert!(f.fin && f.rsv == 0, "{f:?}");
            assert_eq!(f.payload, payload);
        }
        // Unsolicited pongs are accepted silently.
        c.send_frame(true, 0, OP_PONG, b"unsolicited", true).unwrap();
        s.wait_connections(1);
        s.publish("*", "still open");
        assert_eq!(c.expect_text(), "still open");
    }

    fn client_close_completes_handshake(d) {
        let s = Server::start(d);
        let mut c = s.ws("/ws");
        s.wait_connections(1);
        c.send_close(1000, "bye").unwrap();
        let f = c.read_frame(CLOSE_WAIT).unwrap();
        assert_eq!(f.opcode, OP_CLOSE, "{f:?}");
        assert_eq!(f.close_code(), Some(1000), "{f:?}");
        c.expect_tcp_closed(CLOSE_WAIT);
        s.wait_metric("crier_connections_closed_total", &[("reason", "client")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        s.wait_connections(0);

        // An empty close is answered too (with 1000 or an empty close).
        let mut c = s.ws("/ws");
        c.send_frame(true, 0, OP_CLOSE, b"", true).unwrap();
        let f = c.read_frame(CLOSE_WAIT).unwrap();
        assert_eq!(f.opcode, OP_CLOSE, "{f:?}");
        assert!(matches!(f.close_code(), None | Some(1000)), "{f:?}");
        c.expect_tcp_closed(CLOSE_WAIT);

        // tungstenite's close handshake.
        let mut t = s.tung("/ws");
        t.close(None).unwrap();
        loop {
            match t.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("tungstenite close handshake: {e}"),
            }
        }
    }

    fn client_messages_are_counted_and_discarded(d) {
        let s = Server::builder(d).args(["--max-client-message-bytes", "1KiB"]).start();
        let mut c = s.ws("/ws?channels=a");
        s.wait_connections(1);
        let before = s.metric0("crier_client_messages_total", &[]);
        c.send_text("hello server").unwrap();
        c.send_binary(&[1, 2, 3]).unwrap();
        // Exactly at the limit is allowed.
        c.send_binary(&[7; 1024]).unwrap();
        // A fragmented text message with a multi-byte character split across frames and a
        // ping in between (control frames may be interleaved).
        let euro = "€".as_bytes(); // 3 bytes
        c.send_frame(false, 0, OP_TEXT, &[b'a', euro[0]], true).unwrap();
        c.send_ping(b"mid").unwrap();
        c.send_frame(false, 0, OP_CONT, &euro[1..2], true).unwrap();
        c.send_frame(true, 0, OP_CONT, &[euro[2], b'b'], true).unwrap();
        let f = c.read_frame(IO_TIMEOUT).unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (OP_PONG, &b"mid"[..]), "{f:?}");
        s.wait_metric("crier_client_messages_total", &[], IO_TIMEOUT, "before + 4", |v| v >= before + 4.0);
        // Discarded: nothing is echoed, and the connection keeps working.
        s.publish("a", "after client messages");
        assert_eq!(c.expect_text(), "after client messages");
        assert_eq!(s.metric0("crier_client_messages_total", &[]), before + 4.0);
    }

    fn unmasked_frame_is_1002(d) {
        let s = Server::start(d);
        violation(&s, "unmasked text", 1002, |c| c.send_frame(true, 0, OP_TEXT, b"hi", false).unwrap());
        violation(&s, "unmasked ping", 1002, |c| c.send_frame(true, 0, OP_PING, b"hi", false).unwrap());
        s.wait_metric("crier_connections_closed_total", &[("reason", "protocol_error")], IO_TIMEOUT, ">= 2", |v| v >= 2.0);
    }

    fn reserved_opcodes_are_1002(d) {
        let s = Server::start(d);
        for op in [0x3, 0x7, 0xB, 0xF] {
            violation(&s, &format!("opcode {op:#x}"), 1002, |c| c.send_frame(true, 0, op, b"x", true).unwrap());
        }
    }

    fn reserved_bits_are_1002(d) {
        let s = Server::start(d);
        violation(&s, "RSV2", 1002, |c| c.send_frame(true, RSV2, OP_TEXT, b"x", true).unwrap());
        violation(&s, "RSV3", 1002, |c| c.send_frame(true, RSV3, OP_BINARY, b"x", true).unwrap());
        violation(&s, "RSV1 without permessage-deflate", 1002, |c| c.send_frame(true, RSV1, OP_TEXT, b"x", true).unwrap());
        violation(&s, "RSV1 on a ping", 1002, |c| c.send_frame(true, RSV1, OP_PING, b"x", true).unwrap());
    }

    fn invalid_utf8_text_is_1007(d) {
        let s = Server::start(d);
        violation(&s, "invalid UTF-8", 1007, |c| c.send_frame(true, 0, OP_TEXT, b"ok \xff\xfe", true).unwrap());
        violation(&s, "truncated UTF-8 across fragments", 1007, |c| {
            c.send_frame(false, 0, OP_TEXT, b"ab\xe2\x82", true).unwrap();
            c.send_frame(true, 0, OP_CONT, b"cd", true).unwrap();
        });
        violation(&s, "invalid UTF-8 close reason", 1007, |c| {
            c.send_frame(true, 0, OP_CLOSE, b"\x03\xe8\xff", true).unwrap();
        });
        s.wait_metric("crier_connections_closed_total", &[("reason", "invalid_utf8")], IO_TIMEOUT, ">= 2", |v| v >= 2.0);
    }

    fn oversized_message_is_1009(d) {
        let s = Server::builder(d).args(["--max-client-message-bytes", "1KiB"]).start();
        violation(&s, "one 2000-byte frame", 1009, |c| c.send_binary(&[0; 2000]).unwrap());
        violation(&s, "three 600-byte fragments", 1009, |c| {
            c.send_frame(false, 0, OP_BINARY, &[0; 600], true).unwrap();
            c.send_frame(false, 0, OP_CONT, &[0; 600], true).unwrap();
            let _ = c.send_frame(true, 0, OP_CONT, &[0; 600], true);
        });
        violation(&s, "a header announcing 2^40 bytes", 1009, |c| {
            let mut h = vec![0x82, 0x80 | 127];
            h.extend_from_slice(&(1u64 << 40).to_be_bytes());
            h.extend_from_slice(&[1, 2, 3, 4]);
            c.send_raw(&h).unwrap();
        });
        s.wait_metric("crier_connections_closed_total", &[("reason", "message_too_big")], IO_TIMEOUT, ">= 3", |v| v >= 3.0);
    }

    fn bad_control_frames_are_1002(d) {
        let s = Server::start(d);
        violation(&s, "fragmented ping", 1002, |c| c.send_frame(false, 0, OP_PING, b"frag", true).unwrap());
        violation(&s, "126-byte ping", 1002, |c| c.send_frame(true, 0, OP_PING, &[0; 126], true).unwrap());
        violation(&s, "1-byte close payload", 1002, |c| c.send_frame(true, 0, OP_CLOSE, &[3], true).unwrap());
        violation(&s, "close code 1005 on the wire", 1002, |c| c.send_close(1005, "").unwrap());
        violation(&s, "close code 999", 1002, |c| c.send_close(999, "").unwrap());
    }

    fn bad_continuations_are_1002(d) {
        let s = Server::start(d);
        violation(&s, "continuation without start", 1002, |c| c.send_frame(true, 0, OP_CONT, b"x", true).unwrap());
        violation(&s, "new message inside a fragmented one", 1002, |c| {
            c.send_frame(false, 0, OP_TEXT, b"a", true).unwrap();
            c.send_frame(true, 0, OP_TEXT, b"b", true).unwrap();
        });
    }

    fn garbage_never_crashes(d) {
        let mut s = Server::builder(d).args(["--max-client-message-bytes", "4KiB"]).start();
        // Garbage after a valid upgrade.
        for seed in 0..25u64 {
            let mut c = s.ws("/ws");
            let len = 1 + (random_bytes(seed + 1000, 2)[0] as usize) * 16;
            let junk = random_bytes(seed, len);
            let _ = c.send_raw(&junk);
            // Whatever the server makes of it (close, more waiting), it must stay up.
            let _ = c.wait_end(Duration::from_millis(100));
            s.assert_running();
        }
        s.assert_serving();
        // Hostile length fields.
        for header in [
            vec![0x82u8, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], // 64-bit length, MSB set
            vec![0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4],
            vec![0x88, 0xFE, 0xFF, 0xFF, 1, 2, 3, 4], // 65535-byte close
            vec![0x81, 0xFE, 0x00, 0x05, 1, 2, 3, 4], // non-minimal 16-bit length
        ] {
            let mut c = s.ws("/ws");
            let _ = c.send_raw(&header);
            let _ = c.wait_end(Duration::from_millis(300));
            s.assert_running();
            s.assert_serving();
        }
        // Garbage instead of an HTTP request, and connections dropped mid-frame.
        for seed in 0..10u64 {
            let mut tcp = TcpStream::connect(s.ws).unwrap();
            let _ = tcp.write_all(&random_bytes(seed + 77, 300));
            tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut b = [0u8; 512];
            let _ = tcp.read(&mut b);
            let mut c = s.ws("/ws");
            let _ = c.send_raw(&[0x82, 0xFE, 0x10]);
        }
        s.assert_running();
        s.assert_serving();
    }
}

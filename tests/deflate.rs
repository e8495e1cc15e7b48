//! permessage-deflate (RFC 7692): negotiation, compressed broadcasts (compressed once,
//! shared, skipped when they do not shrink), compressed client messages and their cap.

#[macro_use]
mod common;

use common::*;

const OFFER: &str = "permessage-deflate; client_max_window_bits";

fn offer(s: &Server, ext: &str) -> HttpResponse {
    match WsClient::connect_with(s.ws, "/ws", &[("Sec-WebSocket-Extensions", ext)]) {
        Ok(c) => c.response,
        Err(r) => panic!("offer {ext:?} refused the upgrade: {r:?}"),
    }
}

both_drivers! {
    fn negotiation_answer_is_exact(d) {
        let s = Server::start(d);
        for ext in [
            "permessage-deflate",
            OFFER,
            "permessage-deflate; client_max_window_bits; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
            "x-unknown-extension, permessage-deflate",
        ] {
            let r = offer(&s, ext);
            assert_eq!(r.header("Sec-WebSocket-Extensions"), Some(DEFLATE_ANSWER), "offer {ext:?}: {r:?}");
        }
    }

    fn small_window_offer_is_declined(d) {
        let s = Server::start(d);
        let r = offer(&s, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(r.header("Sec-WebSocket-Extensions"), None, "server_max_window_bits=10 must be declined: {r:?}");
        // The next offer is tried.
        let r = offer(&s, "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits");
        assert_eq!(r.header("Sec-WebSocket-Extensions"), Some(DEFLATE_ANSWER), "{r:?}");
        // A declined connection still works, uncompressed.
        let mut c = WsClient::connect_with(s.ws, "/ws", &[("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=9")]).unwrap();
        assert!(!c.deflate);
        // The two probe connections above are gone; only `c` remains.
        s.wait_connections(1);
        let text = compressible_text(2000);
        s.publish("*", &text);
        let m = c.expect_msg();
        assert!(!m.compressed, "RSV1 on a connection without the extension");
        assert_eq!(m.text(), text);
    }

    fn deflate_false_disables_it(d) {
        let s = Server::builder(d).args(["--deflate", "false"]).start();
        let r = offer(&s, OFFER);
        assert_eq!(r.header("Sec-WebSocket-Extensions"), None, "{r:?}");
    }

    fn compressible_broadcast_has_rsv1_and_inflates(d) {
        let s = Server::start(d);
        let mut z = s.ws_deflate("/ws?channels=board");
        let mut plain = s.ws("/ws?channels=board");
        s.wait_connections(2);
        let enc0 = s.metric0("crier_compressions_total", &[]);
        let text = compressible_text(4000);
        s.publish("board", &text);
        s.publish("board", &text);
        for _ in 0..2 {
            // Each message inflates on its own (server_no_context_takeover).
            let f = z.read_frame(IO_TIMEOUT).unwrap();
            assert_eq!(f.opcode, OP_TEXT, "{f:?}");
            assert!(f.rsv1(), "compressible payload must arrive with RSV1: {f:?}");
            assert!(f.fin);
            assert!(f.payload.len() < text.len() / 2, "not really compressed: {} bytes", f.payload.len());
            assert_eq!(inflate_raw(&f.payload), text.as_bytes());
            let m = plain.expect_msg();
            assert!(!m.compressed, "plain subscriber got RSV1");
            assert_eq!(m.text(), text);
        }
        let enc = s.metric0("crier_compressions_total", &[]) - enc0;
        assert!((1.0..=2.0).contains(&enc), "2 messages, compressions rose by {enc}");
        s.wait_metric("crier_bytes_written_total", &[("encoding", "deflate")], IO_TIMEOUT, "> 0", |v| v > 0.0);
        s.wait_metric("crier_bytes_written_total", &[("encoding", "plain")], IO_TIMEOUT, "> 0", |v| v > 0.0);

        // Binary payloads are compressed too, and keep their frame type.
        let bin = vec![0x42u8; 3000];
        s.publish_binary("board", &bin);
        let m = z.expect_msg();
        assert!(m.compressed && m.is_binary(), "{m:?}");
        assert_eq!(m.data, bin);
    }

    fn incompressible_broadcast_is_sent_plain(d) {
        let s = Server::start(d);
        let mut z = s.ws_deflate("/ws?channels=noise");
        s.wait_connections(1);
        let noise = random_bytes(42, 1500);
        s.publish_binary("noise", &noise);
        let f = z.read_frame(IO_TIMEOUT).unwrap();
        assert_eq!(f.opcode, OP_BINARY);
        assert!(!f.rsv1(), "a payload that does not shrink must go out uncompressed: {f:?}");
        assert_eq!(f.payload, noise);
        // Tiny payloads do not shrink either.
        s.publish("noise", "x");
        let f = z.read_frame(IO_TIMEOUT).unwrap();
        assert!(!f.rsv1() && f.payload == b"x", "{f:?}");
    }

    fn compressed_client_message_is_accepted_and_counted(d) {
        let s = Server::start(d);
        let mut z = s.ws_deflate("/ws?channels=c");
        s.wait_connections(1);
        let before = s.metric0("crier_client_messages_total", &[]);
        z.send_compressed(OP_TEXT, compressible_text(5000).as_bytes()).unwrap();
        z.send_compressed(OP_BINARY, &[9u8; 5000]).unwrap();
        // Fragmented compressed message: RSV1 only on the first frame.
        let zz = deflate_raw(compressible_text(3000).as_bytes());
        let (a, b) = zz.split_at(zz.len() / 2);
        z.send_frame(false, RSV1, OP_TEXT, a, true).unwrap();
        z.send_frame(true, 0, OP_CONT, b, true).unwrap();
        s.wait_metric("crier_client_messages_total", &[], IO_TIMEOUT, "before + 3", |v| v >= before + 3.0);
        s.publish("c", "after compressed client messages");
        assert_eq!(z.expect_text(), "after compressed client messages");
    }

    fn compressed_invalid_utf8_is_1007(d) {
        let s = Server::start(d);
        let mut z = s.ws_deflate("/ws");
        let mut bad = compressible_text(1000).into_bytes();
        bad[500] = 0xFF;
        z.send_compressed(OP_TEXT, &bad).unwrap();
        assert_eq!(z.expect_close(IO_TIMEOUT), Some(1007));
        s.assert_serving();
    }

    fn inflating_past_the_cap_is_1009(d) {
        let s = Server::builder(d).args(["--max-client-message-bytes", "1KiB"]).start();
        let mut z = s.ws_deflate("/ws");
        // 100 KB of zeros deflate to a few hundred bytes: small on the wire, big inflated.
        let bomb = deflate_raw(&[0u8; 100_000]);
        assert!(bomb.len() < 1024, "test precondition: {} bytes on the wire", bomb.len());
        z.send_frame(true, RSV1, OP_BINARY, &bomb, true).unwrap();
        assert_eq!(z.expect_close(IO_TIMEOUT), Some(1009));
        s.wait_metric("crier_connections_closed_total", &[("reason", "message_too_big")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        s.assert_serving();
        // Just under the cap inflated is fine.
        let mut ok = s.ws_deflate("/ws?channels=k");
        ok.send_compressed(OP_BINARY, &[0u8; 1000]).unwrap();
        s.wait_metric("crier_client_messages_total", &[], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
        s.wait_connections(1);
        s.publish("k", "fine");
        assert_eq!(ok.expect_text(), "fine");
    }

    fn corrupt_deflate_data_closes_without_crash(d) {
        let s = Server::start(d);
        let mut z = s.ws_deflate("/ws");
        // 0xFF starts a reserved block type (BTYPE=11): not a valid DEFLATE stream.
        z.send_frame(true, RSV1, OP_BINARY, &[0xFF, 0xFF, 0xFF, 0xFF], true).unwrap();
        match z.wait_end(IO_TIMEOUT) {
            // The README names no code for this; any close is fine, a crash is not.
            WsEnd::Close(..) | WsEnd::Eof | WsEnd::Reset => {}
            other => panic!("corrupt deflate data: {other:?}"),
        }
        s.assert_serving();
    }
}

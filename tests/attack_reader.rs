//! The frame reader's memory between reads, played by the attacker against the real binary:
//! clients that hold one byte of a frame, then send 60 KiB bursts of small, valid frames
//! (the rest of that frame first), each burst ending in the first byte of one more frame. crier reads each burst in reads of up to 64 KiB; between reads a
//! connection may keep only that one pending byte (and room for its frame), not the read's
//! size. Before the fix found by `fuzz/frame_reader`, every such connection kept ~64 KiB,
//! whatever `--max-client-message-bytes` said. Everyone else keeps receiving everything.

#[macro_use]
mod common;

use common::*;

/// Attacking connections.
const ATTACKERS: usize = 300;
/// Frames per burst: 100-byte binary messages, 106 bytes each on the wire.
const FRAMES: usize = 580;

both_drivers! {
    fn bursts_ending_in_one_byte_of_a_header_leave_no_read_sized_buffers(d) {
        let s = Server::builder(d).args(["--max-client-message-bytes", "1KiB"]).start();
        let mut sub = s.ws("/ws?channels=news");
        s.wait_connections(1);
        let mut attackers: Vec<WsClient> = (0..ATTACKERS).map(|_| s.ws("/ws")).collect();
        s.wait_connections(ATTACKERS + 1);
        s.publish("news", "before");
        assert_eq!(sub.expect_text(), "before");
        let rss0 = s.rss_bytes();

        let frame = encode_frame(true, 0, OP_BINARY, &[0x5A; 100], Some([1, 2, 3, 4]));
        let mut burst = Vec::with_capacity(FRAMES * frame.len() + 1);
        for _ in 0..FRAMES {
            burst.extend_from_slice(&frame);
        }
        burst.push(frame[0]); // one byte of the next frame's header
        // First a ping and one byte of a frame in one write: the pong shows crier has read
        // both, so the reader holds that byte when the burst (the rest of that frame, then
        // the frames) arrives.
        let mut opening = encode_frame(true, 0, OP_PING, b"p", Some([5, 6, 7, 8]));
        opening.push(frame[0]);
        for (i, a) in attackers.iter_mut().enumerate() {
            a.send_raw(&opening).unwrap_or_else(|e| panic!("attacker {i}: {e}"));
            let f = a.read_frame(IO_TIMEOUT).unwrap_or_else(|e| panic!("attacker {i}: {e:?}"));
            assert_eq!(f.opcode, OP_PONG, "attacker {i}: {f:?}");
            a.send_raw(&burst[1..]).unwrap_or_else(|e| panic!("attacker {i}: {e}"));
        }
        // Every burst has been read and parsed: all its messages are counted.
        let want = (ATTACKERS * FRAMES) as f64;
        s.wait_metric("crier_client_messages_total", &[], IO_TIMEOUT, &format!(">= {want}"), |v| v >= want);
        s.publish("news", "after");
        assert_eq!(sub.expect_text(), "after");

        let grown = s.rss_bytes().saturating_sub(rss0);
        // 64 KiB held per attacker would be 18.75 MiB; one pending byte each is nothing.
        assert!(grown < 6 << 20, "RSS grew {grown} bytes for {ATTACKERS} connections with one pending byte each");
        s.wait_connections(ATTACKERS + 1);
    }
}

//! Channel routing: who hears what, the broadcast channel `*`, frame types, exact payloads,
//! and publish order per channel.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

both_drivers! {
    fn only_subscribers_hear_a_channel(d) {
        let s = Server::start(d);
        let mut a = s.ws("/ws?channels=a");
        let mut b = s.ws("/ws?channels=b");
        let mut ab = s.ws("/ws?channels=a,b");
        let mut none = s.ws("/ws");
        let mut t = s.tung("/ws?channels=b");
        s.wait_connections(5);

        assert_eq!(s.publish("a", "for a"), 1);
        assert_eq!(s.publish("b", "for b"), 1);

        assert_eq!(a.expect_text(), "for a");
        assert_eq!(b.expect_text(), "for b", "b must not hear a");
        assert_eq!(tung_recv_text(&mut t), "for b", "b must not hear a (tungstenite)");
        let mut got = vec![ab.expect_text(), ab.expect_text()];
        got.sort();
        assert_eq!(got, ["for a", "for b"]);

        // The broadcast channel reaches everyone, including connections without channels.
        s.publish("*", "for all");
        assert_eq!(a.expect_text(), "for all", "a must not hear b");
        assert_eq!(b.expect_text(), "for all");
        assert_eq!(ab.expect_text(), "for all");
        assert_eq!(none.expect_text(), "for all", "no channels: hears only *");
        assert_eq!(tung_recv_text(&mut t), "for all");
        for c in [&mut a, &mut b, &mut ab, &mut none] {
            c.expect_silence(QUIET);
        }
    }

    fn duplicate_channels_deliver_once(d) {
        let s = Server::start(d);
        let mut c = s.ws("/ws?channels=a,a,a");
        s.wait_connections(1);
        s.publish("a", "once");
        s.publish("*", "end");
        assert_eq!(c.expect_text(), "once");
        assert_eq!(c.expect_text(), "end", "duplicate subscription delivered twice");
        c.expect_silence(QUIET);
    }

    fn text_and_binary_frames_preserved(d) {
        let s = Server::start(d);
        let mut c = s.ws("/ws?channels=board");
        let mut t = s.tung("/ws?channels=board");
        s.wait_connections(2);
        let bin: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut p = s.publisher();
        p.publish("board", "héllo wörld ✈".as_bytes(), false);
        p.publish("board", &bin, true);
        // Type defaults to text.
        p.send(&pub_command("board", b"default type", None)).unwrap();
        parse_ok(&p.expect_line());
        // Empty payloads are messages too.
        p.publish("board", b"", false);
        p.publish("board", b"", true);

        let m = c.expect_msg();
        assert!(m.is_text() && !m.compressed, "{m:?}");
        assert_eq!(m.text(), "héllo wörld ✈");
        let m = c.expect_msg();
        assert!(m.is_binary(), "binary publish must arrive as a binary frame: {m:?}");
        assert_eq!(m.data, bin);
        let m = c.expect_msg();
        assert!(m.is_text(), "{m:?}");
        assert_eq!(m.text(), "default type");
        let m = c.expect_msg();
        assert!(m.is_text() && m.data.is_empty(), "{m:?}");
        let m = c.expect_msg();
        assert!(m.is_binary() && m.data.is_empty(), "{m:?}");

        use tungstenite::Message as M;
        assert_eq!(tung_recv(&mut t), M::Text("héllo wörld ✈".into()));
        assert_eq!(tung_recv(&mut t), M::Binary(bin.clone().into()));
        assert_eq!(tung_recv(&mut t), M::Text("default type".into()));
        assert_eq!(tung_recv(&mut t), M::Text("".into()));
        assert_eq!(tung_recv(&mut t), M::Binary(Vec::new().into()));
    }

    fn large_message_arrives_intact(d) {
        let s = Server::start(d);
        let mut c = s.ws("/ws?channels=big");
        let mut t = s.tung("/ws?channels=big");
        s.wait_connections(2);
        // Just under the default --max-message-bytes (1 MiB): needs a 64-bit length.
        let payload = random_bytes(7, 1024 * 1024);
        s.publish_binary("big", &payload);
        let m = c.expect_msg();
        assert!(m.is_binary());
        assert_eq!(m.data.len(), payload.len());
        assert!(m.data == payload, "1 MiB payload corrupted");
        match tung_recv(&mut t) {
            tungstenite::Message::Binary(b) => assert!(b[..] == payload[..]),
            other => panic!("{other:?}"),
        }
        // 126..65535 bytes uses the 16-bit length.
        let mid = random_bytes(8, 40_000);
        s.publish_binary("big", &mid);
        assert_eq!(c.expect_msg().data, mid);
    }

    fn publish_order_per_channel(d) {
        let s = Server::start(d);
        let mut raw = s.ws("/ws?channels=ticks,other");
        let mut t = s.tung("/ws?channels=ticks");
        s.wait_connections(2);
        // 200 pipelined publishes in one write, interleaved with another channel.
        let mut p = s.publisher();
        let mut batch = Vec::new();
        for i in 0..200 {
            batch.extend(pub_command("ticks", format!("tick {i}").as_bytes(), None));
            if i % 10 == 0 {
                batch.extend(pub_command("other", format!("other {i}").as_bytes(), None));
            }
        }
        p.send(&batch).unwrap();
        let (mut ticks, mut others) = (0u64, 0u64);
        for i in 0..200 {
            ticks += 1;
            assert_eq!(parse_ok(&p.expect_line()), ticks, "seq of tick {i}");
            if i % 10 == 0 {
                others += 1;
                assert_eq!(parse_ok(&p.expect_line()), others, "seq of other {i}");
            }
        }
        let (mut next_tick, mut next_other) = (0, 0);
        while next_tick < 200 || next_other < 200 {
            let m = raw.expect_text();
            if let Some(n) = m.strip_prefix("tick ") {
                assert_eq!(n.parse::<i32>().unwrap(), next_tick, "ticks out of order");
                next_tick += 1;
            } else if let Some(n) = m.strip_prefix("other ") {
                assert_eq!(n.parse::<i32>().unwrap(), next_other, "other out of order");
                next_other += 10;
            } else {
                panic!("unexpected {m:?}");
            }
        }
        for i in 0..200 {
            assert_eq!(tung_recv_text(&mut t), format!("tick {i}"));
        }
    }

    fn subscribers_on_both_shards(d) {
        // Many connections spread over both shards (SO_REUSEPORT); each gets the message.
        let s = Server::start(d);
        let mut cs: Vec<WsClient> = (0..40).map(|_| s.ws("/ws?channels=x")).collect();
        s.wait_connections(40);
        let text = s.metrics_text();
        let per_shard: Vec<f64> = (0..s.shards)
            .map(|i| metric_value(&text, "crier_connections", &[("shard", &i.to_string())]).unwrap_or(0.0))
            .collect();
        assert_eq!(per_shard.iter().sum::<f64>(), 40.0, "{text}");
        s.publish("x", "everyone");
        for c in &mut cs {
            assert_eq!(c.expect_text(), "everyone");
        }
    }
}

//! Unit tests of `worker.rs` (kept apart to keep that file short).

use super::*;

fn cfg(max_seq: u64) -> WorkerConfig {
    WorkerConfig {
        index: 0,
        target: "127.0.0.1:1".parse().unwrap(),
        host_header: "127.0.0.1:1".into(),
        path: "/ws".into(),
        first: 0,
        connections: 2,
        src_ips: vec![],
        connect_rate: 1.0,
        connect_timeout_ms: 1000,
        deflate: false,
        max_seq,
        deadline_ns: 0,
        pin_cpu: None,
        channels: None,
        progress_ms: None,
    }
}

fn text(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x81];
    if payload.len() < 126 {
        v.push(payload.len() as u8);
    } else {
        v.push(126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

#[test]
fn accounting_from_bytes_on_the_wire() {
    let mut s = Shared::new(cfg(3));
    for c in &mut s.conns {
        c.state = State::Open;
    }
    let t0 = 1_700_000_000_000_000_000u64;
    let mut out = Vec::new();
    let mut wire = Vec::new();
    for seq in [1u64, 2, 2, 3] {
        wire.extend(text(&payload::encode(seq, t0 + seq * 1_000_000, 200)));
    }
    // Conn 0 receives 1,2,2,3 in pieces; conn 1 receives only message 1 and a ping.
    for piece in wire.chunks(37) {
        assert_eq!(s.on_data(0, piece, t0 + 10_000_000, &mut out), None);
    }
    let mut w1 = text(&payload::encode(1, t0 + 1_000_000, 200));
    w1.extend([0x89, 0x02, b'h', b'i']);
    assert_eq!(s.on_data(1, &w1, t0 + 20_000_000, &mut out), None);
    // the pong went out, masked
    assert_eq!(out[0], 0x8a);
    assert_eq!(out[1], 0x82);
    let r = s.report(3);
    assert_eq!(r.subscribed, 2);
    assert_eq!(r.deliveries, 5);
    assert_eq!(r.duplicated, 1);
    assert_eq!(r.lost, 2);
    assert_eq!(r.connections_with_loss, 1);
    assert_eq!(r.max_lost_per_connection, 2);
    assert_eq!(r.recv_count, vec![2, 1, 1]);
    assert_eq!(r.last_recv_ns[0], t0 + 20_000_000);
    assert!(!s.all_complete(3));
    assert!(s.all_complete(1));
    // garbage and out-of-range sequence numbers are counted, not trusted
    assert_eq!(s.on_data(0, &text(b"hello"), t0, &mut out), None);
    assert_eq!(s.on_data(0, &text(&payload::encode(99, t0, 64)), t0, &mut out), None);
    assert_eq!(s.malformed, 1);
    assert_eq!(s.unexpected, 1);
    // a close frame ends the connection and is answered
    out.clear();
    let end = s.on_data(1, &[0x88, 0x02, 0x03, 0xf0], t0, &mut out);
    assert_eq!(end.as_deref(), Some("1008"));
    assert_eq!(out[0], 0x88);
}

#[test]
fn commands_are_json_lines() {
    let c = Command::Finish { published: 5, grace_ms: 100, channel_published: vec![] };
    let s = serde_json::to_string(&c).unwrap();
    assert_eq!(s, r#"{"cmd":"finish","published":5,"grace_ms":100}"#);
    assert_eq!(serde_json::from_str::<Command>(&s).unwrap(), c);
    assert_eq!(
        serde_json::from_str::<Command>(r#"{"cmd":"storm","timeout_ms":1}"#).unwrap(),
        Command::Storm { timeout_ms: 1 }
    );
}

//! Unit tests of `report.rs` (kept apart to keep that file short).

use super::*;

fn worker(subscribed: u64, lat: &[u64], last: Vec<u64>, count: Vec<u32>) -> WorkerReport {
    let mut h = new_hist();
    for &v in lat {
        h.record(v).unwrap();
    }
    WorkerReport {
        subscribed,
        deliveries: lat.len() as u64,
        latency_us: hist_to_pairs(&h),
        last_recv_ns: last,
        recv_count: count,
        ..Default::default()
    }
}

#[test]
fn histogram_pairs_roundtrip() {
    let mut h = new_hist();
    for v in [1u64, 5, 5, 999, 1000, 1001, 123_456, 3_000_000] {
        h.record(v).unwrap();
    }
    let mut back = new_hist();
    add_pairs(&mut back, &hist_to_pairs(&h));
    assert_eq!(back.len(), h.len());
    for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
        assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
    }
    // survives JSON
    let json = serde_json::to_string(&hist_to_pairs(&h)).unwrap();
    let pairs: Vec<(u64, u64)> = serde_json::from_str(&json).unwrap();
    assert_eq!(pairs, hist_to_pairs(&h));
}

#[test]
fn merge_sums_and_completion_takes_latest_receipt() {
    // 3 messages sent at t = 1000, 2000, 3000 µs (in ns: ×1000).
    let send = |seq: u64| seq * 1_000_000;
    let a = WorkerReport {
        lost: 1,
        connections_with_loss: 1,
        max_lost_per_connection: 1,
        closed: [("1008".to_string(), 1)].into(),
        cpu_seconds: 0.5,
        open_at_end: 1,
        ..worker(2, &[100, 200, 300, 400, 500], vec![1_500_000, 2_100_000, 3_050_000], vec![2, 2, 1])
    };
    let b = WorkerReport {
        duplicated: 2,
        connections_with_duplicates: 1,
        max_duplicated_per_connection: 2,
        closed: [("1008".to_string(), 2)].into(),
        cpu_seconds: 0.25,
        open_at_end: 1,
        ..worker(1, &[1000, 2000, 3000], vec![1_200_000, 2_900_000, 3_100_000], vec![1, 1, 1])
    };
    let m = merge(&[a, b], 3, send, None);
    let d = &m.delivery;
    assert_eq!(d.subscribed, 3);
    assert_eq!(d.expected, 9);
    assert_eq!(d.deliveries, 8);
    assert_eq!(d.lost, 1);
    assert_eq!(d.duplicated, 2);
    assert_eq!(d.connections_with_loss, 1);
    assert_eq!(d.max_duplicated_per_connection, 2);
    assert_eq!(m.latency.len(), 8);
    assert_eq!(m.latency.max(), m.latency.highest_equivalent(3000));
    assert_eq!(m.closed["1008"], 3);
    assert_eq!(m.open_at_end, 2);
    assert!((m.cpu_seconds - 0.75).abs() < 1e-9);
    // message 1: last receipt 1.5 ms − 1 ms = 500 µs; message 2: 2.9 − 2 = 900 µs;
    // message 3 reached only 2 of 3 subscribers.
    assert_eq!(d.messages_complete, 2);
    assert_eq!(d.messages_incomplete, 1);
    assert_eq!(m.completion.len(), 2);
    assert_eq!(m.completion.min(), 500);
    assert_eq!(m.completion.max(), m.completion.highest_equivalent(900));
}

#[test]
fn merge_of_nothing() {
    let m = merge(&[], 0, |_| 0, None);
    assert_eq!(m.delivery.expected, 0);
    assert!(m.latency.is_empty());
    let p = Percentiles::from_us(&m.latency);
    assert_eq!(p.count, 0);
}

#[test]
fn events_roundtrip_as_json_lines() {
    let e = WorkerEvent::Connected(ConnectPhase {
        ok: 5,
        failed: 1,
        failures: [("refused".to_string(), 1)].into(),
        ..Default::default()
    });
    let line = serde_json::to_string(&e).unwrap();
    assert!(line.starts_with("{\"event\":\"connected\""));
    assert!(!line.contains('\n'));
    assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), e);
    let r = WorkerEvent::Report(Box::new(worker(1, &[5], vec![1], vec![1])));
    let line = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), r);
}

#[test]
fn problems_and_rendering() {
    let mut r = Report {
        mode: "broadcast".into(),
        url: "ws://127.0.0.1:1/ws".into(),
        connections: ConnSummary {
            requested: 10,
            ok: 9,
            failed: 1,
            failures: [("http_503".to_string(), 1)].into(),
            ..Default::default()
        },
        delivery: Some(DeliverySummary { lost: 3, connections_with_loss: 1, ..Default::default() }),
        latency_ms: Some(Percentiles { count: 1, p50: 1.0, ..Default::default() }),
        ..Default::default()
    };
    r.find_problems();
    assert_eq!(r.problems.len(), 2);
    let t = r.render();
    assert!(t.contains("9 ok, 1 failed of 10"));
    assert!(t.contains("http_503: 1"));
    assert!(t.contains("lost 3"));
    assert!(t.contains("PROBLEM"));
    let mut clean = Report::default();
    clean.find_problems();
    assert!(clean.problems.is_empty());
    assert!(clean.render().contains("problems"));
}

#[test]
fn bytes_format() {
    assert_eq!(fmt_bytes(512.0), "512 B");
    assert_eq!(fmt_bytes(2048.0), "2.0 KiB");
    assert_eq!(fmt_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    assert_eq!(fmt_signed_bytes(-2048), "-2.0 KiB");
}

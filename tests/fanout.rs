//! Fan-out: one message is framed once (and compressed at most once) for any number of
//! subscribers; a subscriber that stops reading is closed once its queue passes
//! `--max-queue-bytes`, without slowing the others or growing the server's memory.

#[macro_use]
mod common;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

both_drivers! {
    fn thousand_subscribers_ten_encodings(d) {
        let s = Server::start(d);
        // Half offer permessage-deflate, half do not.
        let mut subs: Vec<WsClient> = (0..1000)
            .map(|i| if i % 2 == 0 { s.ws_deflate("/ws?channels=flights") } else { s.ws("/ws?channels=flights") })
            .collect();
        s.wait_connections(1000);
        let enc0 = s.metric0("crier_frames_encoded_total", &[]);
        let z0 = s.metric0("crier_compressions_total", &[]);
        let w0 = s.metric0("crier_frames_written_total", &[]);

        let msgs: Vec<String> = (0..10)
            .map(|i| format!("{{\"n\":{i}}} {}", compressible_text(600)))
            .collect();
        let mut p = s.publisher();
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(p.publish("flights", m.as_bytes(), false), i as u64 + 1);
        }
        for (k, c) in subs.iter_mut().enumerate() {
            for (i, want) in msgs.iter().enumerate() {
                let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("subscriber {k}, message {i}: {e:?}"));
                assert_eq!(m.compressed, k % 2 == 0, "subscriber {k}, message {i}: RSV1");
                assert!(m.text() == want, "subscriber {k}: message {i} out of order or corrupted");
            }
        }
        let enc = s.metric0("crier_frames_encoded_total", &[]) - enc0;
        let z = s.metric0("crier_compressions_total", &[]) - z0;
        assert_eq!(enc, 10.0, "10 messages to 1000 subscribers must be framed exactly 10 times");
        assert!((1.0..=10.0).contains(&z), "compressions rose by {z}, want 1..=10");
        s.wait_metric("crier_frames_written_total", &[], IO_TIMEOUT, "+10000", |v| v - w0 >= 10_000.0);
        s.wait_metric("crier_delivery_latency_seconds_count", &[], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
    }

    fn slow_consumer_is_closed_others_get_everything(d) {
        slow_consumer(d);
    }

    fn flush_delay_holds_the_batch_and_keeps_order(d) {
        const DELAY: Duration = Duration::from_millis(300);
        let s = Server::builder(d).args(["--flush-delay", "300ms"]).start();
        let mut c = s.ws("/ws?channels=board");
        s.wait_connections(1);
        let mut p = s.publisher();
        let start = Instant::now();
        for i in 0..20u64 {
            assert_eq!(p.publish("board", format!("update {i}").as_bytes(), false), i + 1);
        }
        for i in 0..20 {
            let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("message {i}: {e:?}"));
            if i == 0 {
                // The shard got the first message after `start` and held it for the delay.
                assert!(start.elapsed() >= DELAY, "first message written after {:?}", start.elapsed());
            }
            assert!(m.text() == format!("update {i}"), "message {i} out of order or corrupted: {:?}", m.text());
        }
    }
}

const MSG: usize = 16 * 1024;
const COUNT: usize = 1280; // 20 MiB in all

fn payload(i: usize) -> Vec<u8> {
    let mut v = vec![0u8; MSG];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    for (j, b) in v.iter_mut().enumerate().skip(8) {
        *b = (i.wrapping_mul(31).wrapping_add(j)) as u8;
    }
    v
}

/// A client socket with a tiny receive buffer, so the kernel does not absorb the backlog.
fn small_rcvbuf_stream(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    sock.into()
}

fn slow_consumer(d: Driver) {
    let s = Server::builder(d).args(["--max-queue-bytes", "64KiB", "--socket-send-buffer", "16KiB"]).start();
    let mut slow = WsClient::handshake(small_rcvbuf_stream(s.ws), s.ws, "/ws?channels=feed", &[])
        .unwrap_or_else(|r| panic!("{r:?}"));
    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
    let failed = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    // Two raw readers and one tungstenite reader, each in its own thread, reading all the time.
    for r in 0..3 {
        let counts = counts.clone();
        let failed = failed.clone();
        let addr = s.ws;
        let (tx, rx) = std::sync::mpsc::channel();
        readers.push(std::thread::spawn(move || {
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if r < 2 {
                    let mut c = WsClient::connect(addr, "/ws?channels=feed");
                    tx.send(()).unwrap();
                    for i in 0..COUNT {
                        let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("reader {r}, message {i}: {e:?}"));
                        assert!(m.is_binary() && m.data == payload(i), "reader {r}: message {i} wrong");
                        counts[r].fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    let mut t = tung_connect(addr, "/ws?channels=feed");
                    tx.send(()).unwrap();
                    for i in 0..COUNT {
                        match tung_recv(&mut t) {
                            tungstenite::Message::Binary(b) => {
                                assert!(b[..] == payload(i)[..], "reader {r}: message {i} wrong")
                            }
                            other => panic!("reader {r}: {other:?}"),
                        }
                        counts[r].fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
            if res.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            res
        }));
        rx.recv_timeout(IO_TIMEOUT).expect("reader connected");
    }
    s.wait_connections(4);
    let baseline = s.rss_bytes();
    let mut peak = baseline;
    let mut p = s.publisher();
    // Publish in pairs (32 KiB, half the queue bound) and let the readers catch up before
    // the next pair: the readers are never slow, only the client that does not read is.
    let mut published = 0;
    while published < COUNT {
        let mut batch = Vec::new();
        let n = 2.min(COUNT - published);
        for i in published..published + n {
            batch.extend(pub_command("feed", &payload(i), Some("binary")));
        }
        p.send(&batch).unwrap();
        for i in published..published + n {
            assert_eq!(parse_ok(&p.expect_line()), i as u64 + 1);
        }
        published += n;
        let deadline = Instant::now() + IO_TIMEOUT;
        while counts.iter().any(|c| c.load(Ordering::SeqCst) < published) {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "readers stuck at {:?} of {published}",
                counts.iter().map(|c| c.load(Ordering::SeqCst)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        if failed.load(Ordering::SeqCst) {
            break;
        }
        if published % 64 == 0 {
            peak = peak.max(s.rss_bytes());
        }
    }
    peak = peak.max(s.rss_bytes());
    for (r, h) in readers.into_iter().enumerate() {
        if let Err(e) = h.join().unwrap() {
            std::panic::resume_unwind(e);
        }
        assert_eq!(counts[r].load(Ordering::SeqCst), COUNT, "reader {r}");
    }

    // The client that never read was closed as a slow consumer.
    s.wait_metric("crier_slow_consumer_closes_total", &[], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
    s.wait_metric("crier_connections_closed_total", &[("reason", "slow_consumer")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
    let mut got = 0;
    let end = loop {
        match slow.recv(IO_TIMEOUT) {
            Ok(_) => got += 1,
            Err(e) => break e,
        }
    };
    eprintln!("slow consumer: {got} messages, then {end:?}");
    match end {
        WsEnd::Close(Some(1008), _) | WsEnd::Close(Some(1013), _) | WsEnd::Eof | WsEnd::Reset => {}
        other => panic!("slow consumer ended with {other:?} after {got} messages"),
    }
    assert!(got < COUNT, "slow consumer received everything ({got}); it was never cut off");

    // Memory: the queues are bounded at 64 KiB for each of 4 connections and messages are
    // 16 KiB, so live data is well under 1 MiB. 16 MiB above the idle baseline leaves room
    // for allocator caches and runtime buffers, yet is below the 20 MiB published: a server
    // that buffered the slow consumer's backlog instead of cutting it off would exceed it.
    let grown = peak.saturating_sub(baseline);
    eprintln!("server RSS: baseline {} KiB, peak {} KiB", baseline / 1024, peak / 1024);
    assert!(
        grown < 16 * 1024 * 1024 && peak < 200 * 1024 * 1024,
        "server RSS grew by {} KiB (baseline {} KiB, peak {} KiB) while publishing 20 MiB",
        grown / 1024,
        baseline / 1024,
        peak / 1024
    );
    s.assert_serving();
}

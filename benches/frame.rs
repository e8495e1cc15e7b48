//! Server frame encoding (once per broadcast) and client frame parsing, by payload size.

use crier::ws::frame::{MessageKind, encode_data};
use crier::ws::reader::{FrameReader, ReaderLimits, apply_mask};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for size in [64usize, 256, 1024, 16 * 1024, 256 * 1024] {
        let payload = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, p| {
            b.iter(|| encode_data(MessageKind::Text, black_box(p), false))
        });
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_frame_parse");
    for size in [16usize, 1024] {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | if size < 126 { size as u8 } else { 126 }];
        if size >= 126 {
            frame.extend_from_slice(&(size as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        let mut body = vec![b'a'; size];
        apply_mask(&mut body, mask);
        frame.extend_from_slice(&body);
        let limits = ReaderLimits { max_message: 1 << 20, deflate: false };
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, f| {
            let mut reader = FrameReader::default();
            let mut buf = f.clone();
            b.iter(|| {
                buf.copy_from_slice(f);
                let mut n = 0;
                reader
                    .feed(&mut buf, limits, &mut |_| {
                        n += 1;
                        true
                    })
                    .unwrap();
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, parse);
criterion_main!(benches);

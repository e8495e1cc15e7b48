//! The compress-once cost by payload size: what the hub pays per broadcast when any
//! subscriber negotiated permessage-deflate (paid once, whatever the subscriber count).

use crier::ws::deflate::{Compressor, Inflater};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// JSON-like flight-board updates: compressible the way real payloads are.
fn payload(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    let mut i = 0u32;
    while out.len() < size {
        out.extend_from_slice(
            format!(
                r#"{{"flight":"BA{}","gate":"B{}","status":"boarding","eta":"{:02}:{:02}"}},"#,
                100 + i % 900,
                i % 60,
                i % 24,
                i % 60
            )
            .as_bytes(),
        );
        i = i.wrapping_mul(2654435761).wrapping_add(7);
    }
    out.truncate(size);
    out
}

fn compress(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress_once");
    for size in [256usize, 1024, 4096, 16 * 1024, 64 * 1024] {
        let p = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &p, |b, p| {
            let mut z = Compressor::new();
            b.iter(|| z.compress(black_box(p)))
        });
    }
    g.finish();
}

fn inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("inflate_client_message");
    for size in [256usize, 4096] {
        let z = Compressor::new().compress(&payload(size)).expect("compressible");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &z, |b, z| {
            let mut i = Inflater::new();
            b.iter(|| i.inflate(black_box(z), 1 << 20).map(|d| d.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);

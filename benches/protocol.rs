//! Publisher protocol parsing: one pipelined buffer of PUB commands, as a publisher script
//! sends them.

use crier::publish::protocol::{Parsed, encode_pub, parse};
use crier::ws::frame::MessageKind;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn pipelined(c: &mut Criterion) {
    let mut g = c.benchmark_group("publisher_parse");
    for size in [64usize, 1024] {
        let mut buf = Vec::new();
        let payload = vec![b'a'; size];
        for _ in 0..100 {
            encode_pub("flights", MessageKind::Text, &payload, &mut buf);
        }
        g.throughput(Throughput::Elements(100));
        g.bench_with_input(BenchmarkId::new("100_commands", size), &buf, |b, buf| {
            b.iter(|| {
                let mut pos = 0;
                let mut n = 0;
                while let Some((cmd, used)) = parse(&buf[pos..], 1 << 20) {
                    if matches!(cmd, Parsed::Publish { .. }) {
                        n += 1;
                    }
                    pos += used;
                }
                assert_eq!(n, 100);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipelined);
criterion_main!(benches);

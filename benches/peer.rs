//! The per-address table's cost per handshake (`peer::limits`): one admission and its
//! release (what a connection pays at its upgrade and its close), alone, and while another
//! thread (a second shard) does the same on other addresses, as SO_REUSEPORT makes shards do.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crier::ops::metrics::Metrics;
use crier::peer::PeerConfig;
use crier::peer::limits::PeerTable;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ADDRS: u32 = 4096;

fn addr(base: u32, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base + i % ADDRS))
}

fn table() -> Arc<PeerTable> {
    // The defaults (1000 connections, 100/s after a burst of 1000), with a rate that never
    // refuses here, so that every iteration is a full admission.
    let cfg = PeerConfig { handshakes_per_second: 1e6, handshake_burst: 1_000_000, ..Default::default() };
    PeerTable::new(&cfg, Arc::new(Metrics::new(2)))
}

fn admit_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_table");
    g.throughput(Throughput::Elements(1));
    let t = table();
    let mut i = 0u32;
    g.bench_function("admit_release_one_thread", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            drop(black_box(t.admit(addr(0x0a00_0000, i)).unwrap()));
        })
    });
    g.bench_function("admit_release_two_threads", |b| {
        b.iter_custom(|iters| {
            let other = table();
            let stop = Arc::new(AtomicBool::new(false));
            let (t2, s2) = (other.clone(), stop.clone());
            let rival = std::thread::spawn(move || {
                let mut j = 0u32;
                while !s2.load(Ordering::Relaxed) {
                    j = j.wrapping_add(1);
                    drop(black_box(t2.admit(addr(0x0b00_0000, j)).unwrap()));
                }
            });
            std::thread::sleep(Duration::from_millis(1));
            let start = Instant::now();
            for k in 0..iters {
                drop(black_box(other.admit(addr(0x0a00_0000, k as u32)).unwrap()));
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            rival.join().unwrap();
            took
        })
    });
    g.finish();
}

criterion_group!(benches, admit_release);
criterion_main!(benches);

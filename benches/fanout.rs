//! Fan-out of one broadcast into 10,000 connection queues inside a shard, without sockets:
//! the shard's real `Subscribers::deliver` over connections that only lack a socket. And
//! the hub's side of one publish (`Hub::publish`: sequence, encode, hand to two shard
//! queues), on one channel and spread over 10,000 channels: what per-channel bookkeeping in
//! the hub costs shows there.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crier::channel::ChannelName;
use crier::hub::Broadcast;
use crier::shard::fanout::{ShardEncoder, ShardFrames, Subscriber, Subscribers};
use crier::shard::outbound::OutboundQueue;
use crier::ws::frame::{MessageKind, encode_data};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[derive(Default)]
struct Conn {
    out: RefCell<OutboundQueue>,
    dirty: Cell<bool>,
}

impl Subscriber for Conn {
    fn outbound(&self) -> &RefCell<OutboundQueue> {
        &self.out
    }
    fn wants_deflate(&self) -> bool {
        false
    }
    fn is_open(&self) -> bool {
        true
    }
    fn dirty_flag(&self) -> &Cell<bool> {
        &self.dirty
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_one_message");
    let encoder = ShardEncoder::new(std::sync::Arc::new(crier::ops::metrics::Metrics::new(1)));
    for (n, channel) in [(10_000usize, "*"), (10_000, "flights")] {
        let mut subs = Subscribers::default();
        let conns: Vec<Rc<Conn>> = (0..n).map(|_| Rc::new(Conn::default())).collect();
        for (i, conn) in conns.iter().enumerate() {
            // Half the connections follow "flights"; everyone hears "*".
            let chans = if i % 2 == 0 { vec![ChannelName::parse("flights").unwrap()] } else { vec![] };
            subs.insert(conn.clone(), chans);
        }
        let b = std::sync::Arc::new(Broadcast {
            channel: ChannelName::parse(channel).unwrap(),
            seq: 1,
            epoch: 1,
            kind: MessageKind::Text,
            plain: encode_data(MessageKind::Text, &[b'x'; 256], false),
            deflated: None,
            enveloped: None,
            published_at: Instant::now(),
        });
        let receivers = subs.subscribers_of(&b.channel) as u64;
        g.throughput(Throughput::Elements(receivers));
        g.bench_function(BenchmarkId::new(format!("{n}_conns"), channel), |bench| {
            let mut dirty = Vec::with_capacity(n);
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let frames = ShardFrames::new(&b, &encoder);
                    subs.deliver(&frames, &mut dirty);
                    total += start.elapsed();
                    // Untimed: what the flush would do, so queues don't grow between rounds.
                    for conn in dirty.drain(..) {
                        conn.dirty.set(false);
                        conn.out.borrow_mut().discard_unsent();
                    }
                }
                total
            })
        });
    }
    g.finish();
}

fn hub_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_publish");
    g.throughput(Throughput::Elements(1));
    for channels in [1usize, 10_000] {
        let metrics = std::sync::Arc::new(crier::ops::metrics::Metrics::new(2));
        let (tx0, rx0) = flume::unbounded();
        let (tx1, rx1) = flume::unbounded();
        let mut hub = crier::hub::Hub::new(vec![tx0, tx1], metrics);
        let names: Vec<ChannelName> = (0..channels).map(|i| ChannelName::parse(&format!("ch{i}")).unwrap()).collect();
        let payload = [b'x'; 256];
        g.bench_function(BenchmarkId::new("channels", channels), |bench| {
            let mut i = 0usize;
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ch = names[i % channels].clone();
                    i += 1;
                    let start = Instant::now();
                    hub.publish(ch, MessageKind::Text, &payload);
                    hub.send_pending();
                    total += start.elapsed();
                    // Untimed: the shards' side, so the queues don't grow between rounds.
                    rx0.drain().for_each(drop);
                    rx1.drain().for_each(drop);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout, hub_publish);
criterion_main!(benches);

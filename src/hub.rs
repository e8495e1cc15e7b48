//! The hub: where a published message becomes a broadcast.
//!
//! The hub runs on the control thread. For each accepted publish it assigns the channel's
//! next sequence number, encodes the frame once, compresses it at most once (only when some
//! connection negotiated permessage-deflate and only if it shrinks), wraps the result in an
//! `Arc<Broadcast>` and hands that one value to every shard's queue. It never touches a
//! socket and never copies a payload per shard or per connection.
//!
//! In cluster mode (`--redis`) the hub numbers nothing: Redis does, and the cluster thread
//! hands the hub each message with its seq and epoch ([`Hub::deliver`]); from there the
//! path is the same.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::deflate::Compressor;
use crate::frame::{self, Frame, MessageKind};
use crate::metrics::Metrics;

/// This run's epoch: sequence numbers are only comparable within one epoch. It is the
/// start time in milliseconds since 1970, so it changes whenever history starts afresh.
/// Single box only: in cluster mode each channel's epoch comes from Redis
/// ([`Broadcast::epoch`]).
pub fn epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64))
}

/// One published message, encoded for every subscriber.
#[derive(Debug)]
pub struct Broadcast {
    pub channel: ChannelName,
    pub seq: u64,
    /// The epoch `seq` belongs to: [`epoch()`] on a single box, the channel's Redis epoch
    /// in cluster mode.
    pub epoch: u64,
    pub kind: MessageKind,
    /// The complete frame for connections without compression.
    pub plain: Frame,
    /// The complete RSV1 frame for permessage-deflate connections, when it is smaller.
    pub deflated: Option<Frame>,
    /// The `crier.v1` envelope frames, built once, the first time a subscriber needs them.
    pub enveloped: OnceLock<Enveloped>,
    /// When the publish was accepted (for the delivery-latency histogram).
    pub published_at: Instant,
}

/// A broadcast in the `crier.v1` envelope: `m <channel> <seq> <epoch>\n<payload>`.
#[derive(Debug)]
pub struct Enveloped {
    pub plain: Frame,
    pub deflated: Option<Frame>,
}

thread_local! {
    /// Envelopes are built by the hub, or (rarely, for a subscriber that just arrived) by a
    /// shard: each thread keeps its own compressor.
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new());
}

impl Broadcast {
    /// The payload as published (a view into the plain frame, not a copy).
    pub fn payload(&self) -> Bytes {
        payload_of(&self.plain)
    }

    /// The envelope frames, built on first use (encoded once, compressed at most once).
    pub fn envelope(&self, metrics: &Metrics) -> &Enveloped {
        self.enveloped.get_or_init(|| {
            let payload = self.payload();
            let mut body = format!("m {} {} {}\n", self.channel, self.seq, self.epoch).into_bytes();
            body.extend_from_slice(&payload);
            metrics.frames_encoded.fetch_add(1, Relaxed);
            let deflated = (metrics.deflate_connections.load(Relaxed) > 0).then(|| {
                metrics.compressions.fetch_add(1, Relaxed);
                COMPRESSOR.with(|c| c.borrow_mut().compress(&body)).map(|z| frame::encode_data(self.kind, &z, true))
            });
            Enveloped { plain: frame::encode_data(self.kind, &body, false), deflated: deflated.flatten() }
        })
    }
}

/// What the hub sends a shard.
#[derive(Debug)]
pub enum ShardMsg {
    Broadcast(Arc<Broadcast>),
    /// Stop accepting, close every connection with 1001, exit within the drain timeout.
    Drain,
}

/// A shard's queue is allowed to hold this many broadcasts before publishers are slowed.
pub const SHARD_QUEUE_HIGH_WATER: usize = 16 * 1024;

/// Sequence numbers, the shared compressor, and the shard queues.
pub struct Hub {
    seqs: HashMap<ChannelName, u64>,
    compressor: Compressor,
    shards: Vec<flume::Sender<ShardMsg>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(shards: Vec<flume::Sender<ShardMsg>>, metrics: Arc<Metrics>) -> Self {
        Self { seqs: HashMap::new(), compressor: Compressor::new(), shards, metrics }
    }

    /// Publishes `payload` to `channel` and returns its sequence number.
    pub fn publish(&mut self, channel: ChannelName, kind: MessageKind, payload: &[u8]) -> u64 {
        let published_at = Instant::now();
        let seq = match self.seqs.get_mut(&channel) {
            Some(s) => {
                *s += 1;
                *s
            }
            None => {
                self.seqs.insert(channel.clone(), 1);
                1
            }
        };
        // Counted here, not in deliver: in cluster mode a node counts the publishes it
        // answered +OK (in cluster::splice_replies), not every message Redis sends it.
        self.metrics.messages_published.fetch_add(1, Relaxed);
        self.deliver(channel, seq, epoch(), kind, payload, published_at);
        seq
    }

    /// Encodes and fans out a message that already has its seq and epoch: every publish on
    /// a single box, and in cluster mode every message the cluster thread received from
    /// Redis (already in seq order per channel).
    pub fn deliver(
        &mut self,
        channel: ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: &[u8],
        published_at: Instant,
    ) {
        let broadcast = Arc::new(self.encode(channel, seq, epoch, kind, payload, published_at));
        if self.metrics.envelope_connections.load(Relaxed) > 0 {
            broadcast.envelope(&self.metrics);
        }
        for shard in &self.shards {
            // A shard that has exited (only during shutdown) just misses the message.
            let _ = shard.send(ShardMsg::Broadcast(broadcast.clone()));
        }
    }

    /// Encodes once and compresses at most once.
    fn encode(
        &mut self,
        channel: ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: &[u8],
        at: Instant,
    ) -> Broadcast {
        build(&mut self.compressor, &self.metrics, channel, seq, epoch, kind, payload, at)
    }

    /// The longest shard queue; publishers wait while it is above [`SHARD_QUEUE_HIGH_WATER`].
    pub fn backlog(&self) -> usize {
        self.shards.iter().map(|s| s.len()).max().unwrap_or(0)
    }

    /// Tells every shard to drain.
    pub fn drain(&self) {
        for shard in &self.shards {
            let _ = shard.send(ShardMsg::Drain);
        }
    }
}

/// Builds a broadcast: the frame encoded once, compressed at most once (only if some
/// connection negotiated permessage-deflate). The hub uses it for every live message; in
/// cluster mode a shard also uses it (with its own compressor) for messages a resume had
/// to read back from Redis, which this node never saw live.
#[allow(clippy::too_many_arguments)]
pub fn build(
    compressor: &mut Compressor,
    metrics: &Metrics,
    channel: ChannelName,
    seq: u64,
    epoch: u64,
    kind: MessageKind,
    payload: &[u8],
    at: Instant,
) -> Broadcast {
    let plain = frame::encode_data(kind, payload, false);
    metrics.frames_encoded.fetch_add(1, Relaxed);
    let deflated = if metrics.deflate_connections.load(Relaxed) > 0 {
        metrics.compressions.fetch_add(1, Relaxed);
        compressor.compress(payload).map(|z| frame::encode_data(kind, &z, true))
    } else {
        None
    };
    Broadcast { channel, seq, epoch, kind, plain, deflated, enveloped: OnceLock::new(), published_at: at }
}

/// [`build`] with this thread's compressor (for a shard's replay from Redis).
#[allow(clippy::too_many_arguments)]
pub fn build_here(
    metrics: &Metrics,
    channel: ChannelName,
    seq: u64,
    epoch: u64,
    kind: MessageKind,
    payload: &[u8],
    at: Instant,
) -> Broadcast {
    COMPRESSOR.with(|c| build(&mut c.borrow_mut(), metrics, channel, seq, epoch, kind, payload, at))
}

/// The payload bytes of a frame (for tests and benches).
pub fn payload_of(frame: &Frame) -> Bytes {
    let b = frame.bytes();
    let len_byte = b[1] & 0x7f;
    let start = match len_byte {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    b.slice(start..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_once_and_compresses_only_for_deflate_subscribers() {
        let metrics = Arc::new(Metrics::new(2));
        let (tx0, rx0) = flume::unbounded();
        let (tx1, rx1) = flume::unbounded();
        let mut hub = Hub::new(vec![tx0, tx1], metrics.clone());
        let ch = ChannelName::parse("flights").unwrap();
        let text = b"{\"gate\":\"B32\",\"gate2\":\"B32\",\"gate3\":\"B32\"}";
        assert_eq!(hub.publish(ch.clone(), MessageKind::Text, text), 1);
        metrics.deflate_connections.store(1, Relaxed);
        assert_eq!(hub.publish(ch.clone(), MessageKind::Text, text), 2);
        assert_eq!(hub.publish(ChannelName::parse("gates").unwrap(), MessageKind::Text, b"x"), 1);
        assert_eq!(metrics.frames_encoded.load(Relaxed), 3);
        assert_eq!(metrics.compressions.load(Relaxed), 2);
        let got: Vec<_> = rx0.drain().collect();
        let got1: Vec<_> = rx1.drain().collect();
        assert_eq!(got.len(), 3);
        let (ShardMsg::Broadcast(a), ShardMsg::Broadcast(b)) = (&got[1], &got1[1]) else { panic!() };
        assert!(Arc::ptr_eq(a, b), "both shards get the same broadcast");
        assert!(a.deflated.is_some());
        assert_eq!(payload_of(&a.plain).as_ref(), text);
        let ShardMsg::Broadcast(tiny) = &got[2] else { panic!() };
        assert!(tiny.deflated.is_none(), "a payload that does not shrink is not compressed");
    }
}

//! A broadcast: one published message, encoded once for every subscriber on every shard.
//!
//! A `Broadcast` is immutable once the hub shares it (`Arc`): nothing in it is built lazily,
//! so no shard ever waits on another shard or on the control thread to read it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::frame::{self, Frame, MessageKind};

/// One published message, encoded for every subscriber.
#[derive(Debug)]
pub struct Broadcast {
    pub channel: ChannelName,
    pub seq: u64,
    /// The epoch `seq` belongs to: [`super::epoch()`] on a single box, the channel's Redis epoch
    /// in cluster mode.
    pub epoch: u64,
    pub kind: MessageKind,
    /// The complete frame for connections without compression.
    pub plain: Frame,
    /// The complete RSV1 frame for permessage-deflate connections, when it is smaller.
    pub deflated: Option<Frame>,
    /// The `crier.v1` envelope frames, built by the hub when some connection uses envelopes.
    pub enveloped: Option<Enveloped>,
    /// When the publish was accepted (for the delivery-latency histogram).
    pub published_at: Instant,
}

/// A broadcast in the `crier.v1` envelope: `m <channel> <seq> <epoch>\n<payload>`.
#[derive(Debug)]
pub struct Enveloped {
    pub plain: Frame,
    pub deflated: Option<Frame>,
}

impl Broadcast {
    /// The bytes of every frame it holds: what it costs while it waits in a shard's queue.
    pub fn size(&self) -> usize {
        let env = self.enveloped.as_ref().map_or(0, |e| e.plain.len() + e.deflated.as_ref().map_or(0, |f| f.len()));
        self.plain.len() + self.deflated.as_ref().map_or(0, |f| f.len()) + env
    }

    /// Encodes a message once, compressed with `compress` (at most once) only when some
    /// connection negotiated permessage-deflate. The hub builds every live message so; in
    /// cluster mode a shard also builds, with its own compressor (`ShardEncoder`), the
    /// messages a resume had to read back from Redis, which this node never saw live.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        metrics: &Metrics,
        compress: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
        channel: ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: &[u8],
        published_at: Instant,
    ) -> Self {
        let plain = frame::encode_data(kind, payload, false);
        metrics.frames_encoded.fetch_add(1, Relaxed);
        let deflated = if metrics.deflate_connections.load(Relaxed) > 0 {
            metrics.compressions.fetch_add(1, Relaxed);
            compress(payload).map(|z| frame::encode_data(kind, &z, true))
        } else {
            None
        };
        Self { channel, seq, epoch, kind, plain, deflated, enveloped: None, published_at }
    }

    /// The payload as published (a view into the plain frame, not a copy).
    pub fn payload(&self) -> Bytes {
        payload_of(&self.plain)
    }

    /// Builds the envelope frames: encoded once, compressed with `compress` only when some
    /// connection negotiated permessage-deflate. Takes no lock and caches nothing: the hub
    /// calls it before sharing the broadcast, a shard for its own copy (`ShardFrames`).
    pub fn build_envelope(&self, metrics: &Metrics, compress: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Enveloped {
        let payload = self.payload();
        let mut body = format!("m {} {} {}\n", self.channel, self.seq, self.epoch).into_bytes();
        body.extend_from_slice(&payload);
        metrics.frames_encoded.fetch_add(1, Relaxed);
        let deflated = if metrics.deflate_connections.load(Relaxed) > 0 {
            metrics.compressions.fetch_add(1, Relaxed);
            compress(&body).map(|z| frame::encode_data(self.kind, &z, true))
        } else {
            None
        };
        Enveloped { plain: frame::encode_data(self.kind, &body, false), deflated }
    }
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
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    /// Two shards building the same broadcast's envelope at once never wait on each other:
    /// the first is held inside its build until the second has finished its own. With a
    /// lock shared through the broadcast (a `OnceLock`), the second would block on the
    /// first and the first would time out here.
    #[test]
    fn two_shards_build_the_same_envelope_without_waiting_on_each_other() {
        let metrics = Arc::new(Metrics::new(2));
        metrics.deflate_connections.store(1, Relaxed);
        let b = Arc::new(Broadcast {
            channel: ChannelName::parse("flights").unwrap(),
            seq: 7,
            epoch: 1,
            kind: MessageKind::Text,
            plain: frame::encode_data(MessageKind::Text, b"gate B32 gate B32 gate B32", false),
            deflated: None,
            enveloped: None,
            published_at: Instant::now(),
        });
        let (inside_tx, inside_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<Enveloped>();
        let first = {
            let (b, metrics) = (b.clone(), metrics.clone());
            std::thread::spawn(move || {
                b.build_envelope(&metrics, |body| {
                    inside_tx.send(()).unwrap();
                    let other = done_rx.recv_timeout(Duration::from_secs(10)).expect("the other shard waited on us");
                    assert!(other.deflated.is_some());
                    crate::ws::deflate::Compressor::new().compress(body)
                })
            })
        };
        inside_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let second = {
            let (b, metrics) = (b.clone(), metrics.clone());
            std::thread::spawn(move || {
                let env = b.build_envelope(&metrics, |body| crate::ws::deflate::Compressor::new().compress(body));
                let plain = env.plain.clone();
                done_tx.send(env).unwrap();
                plain
            })
        };
        let second_plain = second.join().unwrap();
        let first = first.join().unwrap();
        assert_eq!(first.plain, second_plain, "both shards built the same envelope");
        assert!(payload_of(&first.plain).starts_with(b"m flights 7 "));
    }
}

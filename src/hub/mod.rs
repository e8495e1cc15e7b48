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

mod broadcast;
pub mod tally;

pub use broadcast::{Broadcast, Enveloped, payload_of};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::deflate::Compressor;
use crate::ws::frame::MessageKind;
use tally::ChannelTally;

/// This run's epoch: sequence numbers are only comparable within one epoch. It is the
/// start time in milliseconds since 1970, so it changes whenever history starts afresh.
/// Single box only: in cluster mode each channel's epoch comes from Redis
/// ([`Broadcast::epoch`]).
pub fn epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64))
}

/// What the hub sends a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Broadcasts in order, shared by every shard: see [`Hub::send_pending`].
    Broadcasts(Batch),
    /// Stop accepting, close every connection with 1001, exit within the drain timeout.
    Drain,
}

/// Broadcasts handed to the shards together: one allocation and one queue operation (and
/// at most one wake-up) per shard for the lot, instead of one per broadcast.
pub type Batch = Arc<[Arc<Broadcast>]>;

/// A batch is sent once it holds this many broadcasts or this many bytes of frames, and
/// at the latest when its caller is done with what it read (`send_pending`). So a shard's
/// own batch (`Shard::batch_has_room`) overshoots by at most one of these.
pub const BATCH_BROADCASTS: usize = 64;
pub const BATCH_BYTES: usize = 256 * 1024;

/// A shard's queue is allowed to hold this many batches (up to 64 broadcasts each), or
/// this many bytes of their frames, before publishers (and, in cluster mode, deliveries
/// from Redis) wait.
pub const SHARD_QUEUE_HIGH_WATER: usize = 1024;
pub const SHARD_QUEUE_HIGH_WATER_BYTES: usize = 64 << 20;

/// Sequence numbers and per-channel counts, the shared compressor, and the shard queues.
pub struct Hub {
    /// Shared only with the admin endpoint, which runs on the same (control) thread.
    tally: Rc<RefCell<ChannelTally>>,
    compressor: Compressor,
    shards: Vec<flume::Sender<ShardMsg>>,
    metrics: Arc<Metrics>,
    /// Encoded, not yet handed to the shards, and their bytes.
    pending: Vec<Arc<Broadcast>>,
    pending_bytes: usize,
}

impl Hub {
    pub fn new(shards: Vec<flume::Sender<ShardMsg>>, metrics: Arc<Metrics>) -> Self {
        Self {
            tally: Rc::default(),
            compressor: Compressor::new(),
            shards,
            metrics,
            pending: Vec::with_capacity(BATCH_BROADCASTS),
            pending_bytes: 0,
        }
    }

    /// The per-channel counts, for `/stats` (same thread only: it is an `Rc`).
    pub fn tally(&self) -> Rc<RefCell<ChannelTally>> {
        self.tally.clone()
    }

    /// Publishes `payload` to `channel` and returns its sequence number. The broadcast
    /// reaches the shards with its batch: the caller calls [`Hub::send_pending`] before it
    /// tells anyone the message was accepted.
    pub fn publish(&mut self, channel: ChannelName, kind: MessageKind, payload: &[u8]) -> u64 {
        let published_at = Instant::now();
        let seq = self.tally.borrow_mut().next_seq(&channel);
        // Counted here, not in deliver: in cluster mode a node counts the publishes it
        // answered +OK (in cluster::splice_replies), not every message Redis sends it.
        self.metrics.messages_published.fetch_add(1, Relaxed);
        self.fan_out(channel, seq, epoch(), kind, payload, published_at);
        seq
    }

    /// Cluster mode: encodes and fans out a message the cluster thread received from Redis
    /// (already numbered there, and in seq order per channel). As with `publish`, the
    /// caller ends with [`Hub::send_pending`].
    pub fn deliver(
        &mut self,
        channel: ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: &[u8],
        published_at: Instant,
    ) {
        self.tally.borrow_mut().delivered(&channel);
        self.fan_out(channel, seq, epoch, kind, payload, published_at);
    }

    /// Encodes a message that has its seq and epoch, and hands it to every shard.
    fn fan_out(
        &mut self,
        channel: ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: &[u8],
        published_at: Instant,
    ) {
        let compressor = &mut self.compressor;
        let mut broadcast = Broadcast::encode(
            &self.metrics,
            |p| compressor.compress(p),
            channel,
            seq,
            epoch,
            kind,
            payload,
            published_at,
        );
        if self.metrics.envelope_connections.load(Relaxed) > 0 {
            // Built here, before the broadcast is shared, so no shard ever waits on another
            // for it; a shard builds its own only for broadcasts from before its first
            // envelope subscriber (see `ShardFrames`).
            broadcast.enveloped = Some(broadcast.build_envelope(&self.metrics, |body| compressor.compress(body)));
        }
        let broadcast = Arc::new(broadcast);
        self.pending_bytes += broadcast.size();
        self.pending.push(broadcast);
        if self.pending.len() >= BATCH_BROADCASTS || self.pending_bytes >= BATCH_BYTES {
            self.send_pending();
        }
    }

    /// Hands every shard the broadcasts encoded since the last call, as one batch they all
    /// share. Publishers call it after each read's commands and before their `+OK`s, the
    /// cluster deliveries whenever their queue is empty, so a batch never waits for more.
    pub fn send_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch: Batch = self.pending.drain(..).collect();
        for (shard, stats) in self.shards.iter().zip(&self.metrics.shards) {
            // Taken off again by the shard as it handles each broadcast
            // (`Shard::enqueue_broadcast`).
            stats.queued_bytes.fetch_add(self.pending_bytes, Relaxed);
            // A shard that has exited (only during shutdown) just misses the messages.
            let _ = shard.send(ShardMsg::Broadcasts(batch.clone()));
        }
        self.pending_bytes = 0;
    }

    /// Whether some shard's queue is over [`SHARD_QUEUE_HIGH_WATER`] batches or
    /// [`SHARD_QUEUE_HIGH_WATER_BYTES`]: publishers wait while it is.
    pub fn backlogged(&self) -> bool {
        self.shards.iter().zip(&self.metrics.shards).any(|(q, stats)| {
            q.len() > SHARD_QUEUE_HIGH_WATER || stats.queued_bytes.load(Relaxed) > SHARD_QUEUE_HIGH_WATER_BYTES
        })
    }

    /// Tells every shard to drain, after what it has not been sent yet.
    pub fn drain(&mut self) {
        self.send_pending();
        for shard in &self.shards {
            let _ = shard.send(ShardMsg::Drain);
        }
    }
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
        assert!(rx0.is_empty(), "nothing is sent before send_pending");
        hub.send_pending();
        let (Ok(ShardMsg::Broadcasts(got)), Ok(ShardMsg::Broadcasts(got1))) = (rx0.try_recv(), rx1.try_recv()) else {
            panic!("one batch per shard")
        };
        assert!(rx0.is_empty() && rx1.is_empty(), "one batch per shard");
        assert!(Arc::ptr_eq(&got, &got1), "both shards get the same batch");
        assert_eq!(got.len(), 3);
        let a = &got[1];
        assert!(a.deflated.is_some());
        assert_eq!(payload_of(&a.plain).as_ref(), text);
        assert!(got[2].deflated.is_none(), "a payload that does not shrink is not compressed");
        assert_eq!(metrics.shards[0].queued_bytes.load(Relaxed), got.iter().map(|b| b.size()).sum::<usize>());
    }

    #[test]
    fn a_full_batch_goes_at_once_and_order_is_kept() {
        let metrics = Arc::new(Metrics::new(1));
        let (tx, rx) = flume::unbounded();
        let mut hub = Hub::new(vec![tx], metrics);
        let ch = ChannelName::parse("c").unwrap();
        for _ in 0..BATCH_BROADCASTS + 1 {
            hub.publish(ch.clone(), MessageKind::Text, b"x");
        }
        let Ok(ShardMsg::Broadcasts(full)) = rx.try_recv() else { panic!("a full batch is sent at once") };
        assert_eq!(full.len(), BATCH_BROADCASTS);
        assert!(rx.is_empty(), "the rest waits for send_pending");
        hub.drain();
        let Ok(ShardMsg::Broadcasts(rest)) = rx.try_recv() else { panic!("drain sends what is pending first") };
        assert!(matches!(rx.try_recv(), Ok(ShardMsg::Drain)));
        let seqs: Vec<u64> = full.iter().chain(rest.iter()).map(|b| b.seq).collect();
        assert_eq!(seqs, (1..=BATCH_BROADCASTS as u64 + 1).collect::<Vec<_>>());
    }
}

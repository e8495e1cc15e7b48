//! A shard's subscriber tables and the fan-out of one broadcast into subscribers' queues.
//!
//! Kept apart from the shard's IO so that the hot loop — an `Rc` clone pushed onto every
//! subscriber's bounded queue — can be benchmarked without sockets (benches/fanout.rs).
//! Generic over the connection type through [`Subscriber`]; the shard uses `conn::Conn`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::channel::ChannelName;
use crate::hub::{Broadcast, Enveloped};
use crate::ops::metrics::Metrics;
use crate::shard::outbound::{OutFrame, OutboundQueue};
use crate::ws::deflate::Compressor;
use crate::ws::frame::MessageKind;

/// What fan-out needs from a connection.
pub trait Subscriber {
    fn outbound(&self) -> &RefCell<OutboundQueue>;
    fn wants_deflate(&self) -> bool;
    /// The connection negotiated `crier.v1` and gets envelopes.
    fn wants_envelope(&self) -> bool {
        false
    }
    /// False for a message the connection already has (it resumed past it).
    fn accepts(&self, _channel: &ChannelName, _seq: u64, _epoch: u64) -> bool {
        true
    }
    fn is_open(&self) -> bool;
    /// Set while the connection is on the shard's list of connections to flush.
    fn dirty_flag(&self) -> &Cell<bool>;
}

/// Every connection of a shard, and who listens to which channel.
pub struct Subscribers<C> {
    conns: Slab<Rc<C>>,
    /// Channel → keys in `conns`. The broadcast channel has no entry: it reaches everyone.
    channels: HashMap<ChannelName, Slab<usize>>,
}

impl<C> Default for Subscribers<C> {
    fn default() -> Self {
        Self { conns: Slab::new(), channels: HashMap::new() }
    }
}

/// Where a connection sits in the tables, to take it out again in O(1).
#[derive(Debug, Default)]
pub struct Membership {
    pub key: usize,
    pub channels: Vec<(ChannelName, usize)>,
}

impl<C: Subscriber> Subscribers<C> {
    pub fn insert(&mut self, conn: Rc<C>, channels: Vec<ChannelName>) -> Membership {
        let key = self.conns.insert(conn);
        let channels = channels
            .into_iter()
            .filter(|c| !c.is_broadcast())
            .map(|ch| {
                let member = self.channels.entry(ch.clone()).or_default().insert(key);
                (ch, member)
            })
            .collect();
        Membership { key, channels }
    }

    /// Removes a connection; false if it was already gone.
    pub fn remove(&mut self, membership: Membership) -> bool {
        if self.conns.try_remove(membership.key).is_none() {
            return false;
        }
        for (ch, member) in membership.channels {
            if let Some(members) = self.channels.get_mut(&ch) {
                members.try_remove(member);
                if members.is_empty() {
                    self.channels.remove(&ch);
                }
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rc<C>> {
        self.conns.iter().map(|(_, c)| c)
    }

    /// Subscribers of a channel (everyone for the broadcast channel).
    pub fn subscribers_of(&self, channel: &ChannelName) -> usize {
        if channel.is_broadcast() { self.conns.len() } else { self.channels.get(channel).map_or(0, |m| m.len()) }
    }

    /// For `/stats` (`ops::stats::watch`): the subscribers of each `wanted` channel, then
    /// this shard's `top` channels by subscribers not among them. Walks every channel: the
    /// sweep calls it only while someone reads `/stats`, at most once a second.
    pub fn channel_report(&self, wanted: &[ChannelName], top: usize) -> Vec<(ChannelName, usize)> {
        let mut out: Vec<(ChannelName, usize)> = wanted.iter().map(|c| (c.clone(), self.subscribers_of(c))).collect();
        let mut rest: Vec<(&ChannelName, usize)> =
            self.channels.iter().filter(|(c, _)| !wanted.contains(c)).map(|(c, m)| (c, m.len())).collect();
        let order = |a: &(&ChannelName, usize), b: &(&ChannelName, usize)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
        if rest.len() > top && top > 0 {
            rest.select_nth_unstable_by(top - 1, order);
        }
        rest.truncate(top);
        out.extend(rest.into_iter().map(|(c, n)| (c.clone(), n)));
        out
    }

    /// Queues a broadcast on each open subscriber of its channel. Connections that got a
    /// frame are added to `dirty` (once). Nobody is judged here: `--max-queue-bytes` bounds
    /// what a client has not taken after a write attempt, which the shard checks when it
    /// flushes `dirty`; the shard bounds by bytes how much is queued between two flushes.
    pub fn deliver(&self, frames: &ShardFrames, dirty: &mut Vec<Rc<C>>) {
        let mut deliver = |conn: &Rc<C>| {
            if !conn.is_open() || !conn.accepts(&frames.channel, frames.seq, frames.epoch) {
                return;
            }
            let f = frames.pick(conn.wants_envelope(), conn.wants_deflate());
            conn.outbound().borrow_mut().push(f.clone());
            if !conn.dirty_flag().replace(true) {
                dirty.push(conn.clone());
            }
        };
        if frames.channel.is_broadcast() {
            self.conns.iter().for_each(|(_, c)| deliver(c));
        } else if let Some(members) = self.channels.get(&frames.channel) {
            for (_, key) in members.iter() {
                if let Some(conn) = self.conns.get(*key) {
                    deliver(conn);
                }
            }
        }
    }
}

impl<C: Subscriber> Subscribers<C> {
    /// Queues `frame` (a `crier.v1` notice, not a broadcast) on each open envelope
    /// subscriber of `channel` that `wants` it. Returns how many got it.
    pub fn notify(
        &self,
        channel: &ChannelName,
        frame: &Rc<OutFrame>,
        wants: impl Fn(&C) -> bool,
        dirty: &mut Vec<Rc<C>>,
    ) -> usize {
        let mut told = 0;
        let mut tell = |conn: &Rc<C>| {
            if !conn.is_open() || !conn.wants_envelope() || !wants(conn) {
                return;
            }
            conn.outbound().borrow_mut().push(frame.clone());
            told += 1;
            if !conn.dirty_flag().replace(true) {
                dirty.push(conn.clone());
            }
        };
        if channel.is_broadcast() {
            self.conns.iter().for_each(|(_, c)| tell(c));
        } else if let Some(members) = self.channels.get(channel) {
            for (_, key) in members.iter() {
                if let Some(conn) = self.conns.get(*key) {
                    tell(conn);
                }
            }
        }
        told
    }
}

/// A broadcast as one shard holds it: its frames behind shard-local `Rc`s, so that each
/// delivery is a non-atomic refcount bump.
pub struct ShardFrames {
    pub channel: ChannelName,
    pub seq: u64,
    pub epoch: u64,
    pub plain: Rc<OutFrame>,
    pub deflated: Option<Rc<OutFrame>>,
    broadcast: Arc<Broadcast>,
    encoder: Rc<ShardEncoder>,
    envelope: OnceCell<(Rc<OutFrame>, Option<Rc<OutFrame>>)>,
}

/// What a shard needs to build the frames the hub did not: the envelope of a broadcast
/// published before any connection used envelopes (a replay to a new `crier.v1` subscriber,
/// mostly). One per shard, never shared, so building one never waits on another shard.
pub struct ShardEncoder {
    metrics: Arc<Metrics>,
    /// Made on first use: most shards never need one.
    compressor: RefCell<Option<Compressor>>,
}

impl ShardEncoder {
    pub fn new(metrics: Arc<Metrics>) -> Rc<Self> {
        Rc::new(Self { metrics, compressor: RefCell::new(None) })
    }

    /// Cluster mode: encodes a message a resume read back from Redis (this node never saw
    /// it live, so no hub built it), with this shard's compressor.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        channel: ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: &[u8],
        at: Instant,
    ) -> Broadcast {
        let mut compressor = self.compressor.borrow_mut();
        let compress = |p: &[u8]| compressor.get_or_insert_with(Compressor::new).compress(p);
        Broadcast::encode(&self.metrics, compress, channel, seq, epoch, kind, payload, at)
    }

    /// Compresses one message on its own (`--echo` with permessage-deflate), with this
    /// shard's compressor, even when that does not make it smaller; `None` if zlib fails.
    pub fn deflate(&self, data: &[u8]) -> Option<Vec<u8>> {
        self.compressor.borrow_mut().get_or_insert_with(Compressor::new).deflate(data)
    }

    fn envelope(&self, b: &Broadcast) -> Enveloped {
        b.build_envelope(&self.metrics, |body| {
            self.compressor.borrow_mut().get_or_insert_with(Compressor::new).compress(body)
        })
    }
}

impl ShardFrames {
    pub fn new(b: &Arc<Broadcast>, encoder: &Rc<ShardEncoder>) -> Self {
        Self {
            channel: b.channel.clone(),
            seq: b.seq,
            epoch: b.epoch,
            plain: out_frame(b, b.plain.bytes(), false),
            deflated: b.deflated.as_ref().map(|f| out_frame(b, f.bytes(), true)),
            broadcast: b.clone(),
            encoder: encoder.clone(),
            envelope: OnceCell::new(),
        }
    }

    /// The frame for a connection: envelope or bare, compressed when negotiated and smaller.
    pub fn pick(&self, envelope: bool, deflate: bool) -> &Rc<OutFrame> {
        let (plain, deflated) = if envelope {
            let (p, d) = self.envelope.get_or_init(|| {
                let b = &self.broadcast;
                let built;
                let env = match &b.enveloped {
                    Some(env) => env,
                    None => {
                        built = self.encoder.envelope(b);
                        &built
                    }
                };
                (out_frame(b, env.plain.bytes(), false), env.deflated.as_ref().map(|f| out_frame(b, f.bytes(), true)))
            });
            (p, d.as_ref())
        } else {
            (&self.plain, self.deflated.as_ref())
        };
        match (deflated, deflate) {
            (Some(d), true) => d,
            _ => plain,
        }
    }
}

fn out_frame(b: &Broadcast, bytes: &bytes::Bytes, deflated: bool) -> Rc<OutFrame> {
    Rc::new(OutFrame { bytes: bytes.clone(), published_at: Some(b.published_at), deflated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::encode_data;

    #[derive(Default)]
    struct Fake {
        out: RefCell<OutboundQueue>,
        deflate: bool,
        closed: bool,
        dirty: Cell<bool>,
    }

    impl Subscriber for Fake {
        fn outbound(&self) -> &RefCell<OutboundQueue> {
            &self.out
        }
        fn wants_deflate(&self) -> bool {
            self.deflate
        }
        fn is_open(&self) -> bool {
            !self.closed
        }
        fn dirty_flag(&self) -> &Cell<bool> {
            &self.dirty
        }
    }

    fn broadcast(channel: &str, deflated: bool) -> Arc<Broadcast> {
        Arc::new(Broadcast {
            channel: ChannelName::parse(channel).unwrap(),
            seq: 1,
            epoch: 1,
            kind: MessageKind::Text,
            plain: encode_data(MessageKind::Text, b"hello", false),
            deflated: deflated.then(|| encode_data(MessageKind::Text, b"hi", true)),
            enveloped: None,
            published_at: Instant::now(),
        })
    }

    fn names(list: &[&str]) -> Vec<ChannelName> {
        list.iter().map(|n| ChannelName::parse(n).unwrap()).collect()
    }

    #[test]
    fn delivers_by_channel_and_broadcast() {
        let mut subs = Subscribers::default();
        let a = Rc::new(Fake::default());
        let b = Rc::new(Fake { deflate: true, ..Fake::default() });
        let c = Rc::new(Fake { closed: true, ..Fake::default() });
        subs.insert(a.clone(), names(&["x"]));
        let mb = subs.insert(b.clone(), names(&["x", "y"]));
        subs.insert(c.clone(), names(&["x"]));
        let mut dirty = Vec::new();
        let metrics = Arc::new(Metrics::new(1));
        subs.deliver(&ShardFrames::new(&broadcast("x", true), &ShardEncoder::new(metrics.clone())), &mut dirty);
        subs.deliver(&ShardFrames::new(&broadcast("y", false), &ShardEncoder::new(metrics.clone())), &mut dirty);
        subs.deliver(&ShardFrames::new(&broadcast("*", false), &ShardEncoder::new(metrics.clone())), &mut dirty);
        assert_eq!(a.out.borrow().queued_bytes(), 7 + 7);
        assert_eq!(b.out.borrow().queued_bytes(), 4 + 7 + 7, "deflate frame for x, plain for y and *");
        assert_eq!(c.out.borrow().queued_bytes(), 0, "closing connections get nothing");
        assert_eq!(dirty.len(), 2, "each connection is marked dirty once");
        assert_eq!(subs.subscribers_of(&ChannelName::parse("y").unwrap()), 1);
        assert!(subs.remove(mb));
        assert_eq!(subs.subscribers_of(&ChannelName::parse("y").unwrap()), 0);
        assert_eq!(subs.len(), 2);
    }

    #[test]
    fn delivery_never_judges_what_was_not_offered() {
        // Frames queued before any write attempt are not a backlog yet: deliver queues them
        // all, and it is the shard's flush that judges what the socket did not take.
        let mut subs = Subscribers::default();
        let a = Rc::new(Fake::default());
        subs.insert(a.clone(), vec![]);
        let mut dirty = Vec::new();
        let frames = ShardFrames::new(&broadcast("*", false), &ShardEncoder::new(Arc::new(Metrics::new(1))));
        for _ in 0..3 {
            subs.deliver(&frames, &mut dirty);
        }
        assert_eq!(a.out.borrow().queued_bytes(), 21);
        assert_eq!(dirty.len(), 1);
    }
}

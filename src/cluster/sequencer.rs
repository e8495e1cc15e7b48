//! Pure: where this node stands on each channel, and what a message from Redis means.
//!
//! Redis pub/sub is at-most-once: a node that was disconnected, or whose subscription
//! silently stopped, misses messages. The sequencer notices (a seq that is not last + 1)
//! and says which range to read back from the channel's stream before the message may be
//! delivered, so that the node hands the hub every message once, in seq order.

use std::collections::HashMap;

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::ws::frame::MessageKind;

/// What to do with a message `(seq, epoch)` received on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next one: deliver it.
    Deliver,
    /// Already delivered (a repair fetched it first): drop it.
    Duplicate,
    /// Messages `from..=to` of this message's epoch are missing: fetch them, deliver
    /// them, then this one.
    Missing { from: u64, to: u64 },
}

/// Last delivered position on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// What a repair delivers: the fetched entries the node still lacks, in seq order, and
/// how many messages the stream no longer held (holes between entries, and before `to`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    pub deliver: Vec<(u64, MessageKind, Bytes)>,
    pub lost: u64,
}

/// Every channel this node has delivered a message of since it started.
#[derive(Debug, Default)]
pub struct Sequencer {
    channels: HashMap<ChannelName, Position>,
}

impl Sequencer {
    pub fn position(&self, channel: &ChannelName) -> Option<Position> {
        self.channels.get(channel).copied()
    }

    /// Channels to resynchronise after a reconnect, with where we stand.
    pub fn positions(&self) -> Vec<(ChannelName, Position)> {
        self.channels.iter().map(|(c, p)| (c.clone(), *p)).collect()
    }

    pub fn check(&self, channel: &ChannelName, seq: u64, epoch: u64) -> Verdict {
        match self.channels.get(channel) {
            // First message seen since start: what came before is for resumes to fetch.
            None => Verdict::Deliver,
            // Redis started the channel afresh (it had lost its state): its beginning may
            // have been published while we were not listening.
            Some(p) if p.epoch != epoch => {
                if seq <= 1 {
                    Verdict::Deliver
                } else {
                    Verdict::Missing { from: 1, to: seq - 1 }
                }
            }
            Some(p) if seq <= p.seq => Verdict::Duplicate,
            Some(p) if seq == p.seq + 1 => Verdict::Deliver,
            Some(p) => Verdict::Missing { from: p.seq + 1, to: seq - 1 },
        }
    }

    /// `(seq, epoch)` was received but could not be delivered (the node fell behind): make
    /// sure the next resynchronisation reads it back. A channel seen for the first time is
    /// placed just before it; a known one already is at or before it.
    pub fn missed(&mut self, channel: &ChannelName, seq: u64, epoch: u64) {
        if !self.channels.contains_key(channel) {
            self.channels.insert(channel.clone(), Position { epoch, seq: seq.saturating_sub(1) });
        }
    }

    /// Redis Cluster: a channel just subscribed starts at the head Redis holds (epoch 0
    /// when Redis has no state for it: its first message, seq 1, then delivers, and a later
    /// one reveals what was missed).
    pub fn start(&mut self, channel: &ChannelName, position: Position) {
        self.channels.insert(channel.clone(), position);
    }

    /// Redis Cluster: the node unsubscribed from `channel`; what it knew is stale.
    pub fn forget(&mut self, channel: &ChannelName) {
        self.channels.remove(channel);
    }

    /// Which of `entries` (fetched from the channel's stream, in seq order, of `epoch`) to
    /// deliver, from where this node stands, and how many are gone for good: those missing
    /// between them and, when the repair was for a hole ending at `to`, before it.
    pub fn repair(
        &self,
        channel: &ChannelName,
        epoch: u64,
        entries: Vec<(u64, MessageKind, Bytes)>,
        to: Option<u64>,
    ) -> Repair {
        let start = match self.position(channel) {
            Some(p) if p.epoch == epoch => p.seq,
            _ => 0,
        };
        let mut r = Repair::default();
        let mut expected = start + 1;
        for (seq, kind, payload) in entries {
            if seq < expected {
                continue;
            }
            r.lost += seq - expected;
            r.deliver.push((seq, kind, payload));
            expected = seq + 1;
        }
        if let Some(to) = to {
            r.lost += (to + 1).saturating_sub(expected);
        }
        r
    }

    /// Records that `(seq, epoch)` was delivered.
    pub fn delivered(&mut self, channel: &ChannelName, seq: u64, epoch: u64) {
        match self.channels.get_mut(channel) {
            Some(p) => *p = Position { epoch, seq },
            None => {
                self.channels.insert(channel.clone(), Position { epoch, seq });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gaps_duplicates_and_new_epochs() {
        let a = ChannelName::parse("a").unwrap();
        let mut s = Sequencer::default();
        assert_eq!(s.check(&a, 40, 7), Verdict::Deliver, "first sight");
        s.delivered(&a, 40, 7);
        assert_eq!(s.check(&a, 41, 7), Verdict::Deliver);
        assert_eq!(s.check(&a, 40, 7), Verdict::Duplicate);
        assert_eq!(s.check(&a, 44, 7), Verdict::Missing { from: 41, to: 43 });
        assert_eq!(s.check(&a, 1, 9), Verdict::Deliver, "a new epoch starts at 1");
        assert_eq!(s.check(&a, 3, 9), Verdict::Missing { from: 1, to: 2 });
        s.delivered(&a, 3, 9);
        assert_eq!(s.position(&a), Some(Position { epoch: 9, seq: 3 }));
        assert_eq!(s.positions().len(), 1);
        // A repair from seq 3 of epoch 9: 4 and 6 come, 5 and 7..=8 are gone.
        let e = |n: u64| (n, MessageKind::Text, Bytes::from(n.to_string()));
        let r = s.repair(&a, 9, vec![e(2), e(3), e(4), e(6)], Some(8));
        assert_eq!(r.deliver.iter().map(|x| x.0).collect::<Vec<_>>(), [4, 6]);
        assert_eq!(r.lost, 3);
        assert_eq!(s.repair(&a, 10, vec![e(1)], None).deliver.len(), 1, "another epoch: from its start");
        let b = ChannelName::parse("b").unwrap();
        s.missed(&b, 12, 9);
        assert_eq!(s.position(&b), Some(Position { epoch: 9, seq: 11 }), "read back from 12");
        s.missed(&b, 14, 9);
        assert_eq!(s.position(&b), Some(Position { epoch: 9, seq: 11 }), "the earliest miss counts");
        // Subscribed while Redis held nothing for the channel: seq 1 delivers, 3 repairs.
        let b = ChannelName::parse("b").unwrap();
        s.start(&b, Position { epoch: 0, seq: 0 });
        assert_eq!(s.check(&b, 1, 5), Verdict::Deliver);
        assert_eq!(s.check(&b, 3, 5), Verdict::Missing { from: 1, to: 2 });
        s.forget(&b);
        assert_eq!(s.position(&b), None);
    }
}

//! Per-channel history for resume (`since=`) and `last=`, kept by each shard.
//!
//! Every shard receives every broadcast, so each shard keeps its own history of
//! `Arc<Broadcast>` (pointers to the frames the hub already encoded; no copy, no
//! re-encoding on replay). Because a subscriber is registered and its replay queued on the
//! shard's own thread, between two broadcasts, there is no seam where a message could be
//! missed or sent twice. Bounded per channel by count, bytes and age.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::{ChannelMap, ChannelName};
use crate::hub::Broadcast;

/// Limits from `--history-messages`, `--history-bytes`, `--history-ttl`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages: usize,
    pub bytes: usize,
    pub ttl: Duration,
}

#[derive(Debug, Default)]
struct ChannelHistory {
    items: VecDeque<Arc<Broadcast>>,
    bytes: usize,
    /// Highest sequence number seen, even when its message has left history.
    last_seq: u64,
    /// The epoch of what is held (0 before the first message). In cluster mode it changes
    /// when Redis starts the channel afresh; what was held then means nothing.
    epoch: u64,
}

/// What a subscriber asked to have replayed on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Everything after `seq`; `same_epoch` is false when the client's epoch is not ours.
    Since { seq: u64, same_epoch: bool },
    /// The `n` latest messages.
    Last(usize),
}

/// Something the client must be told before the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Messages `from..=to` are gone from history.
    Gap { from: u64, to: u64 },
    /// The client's epoch is not ours: its sequence numbers mean nothing here.
    Reset,
}

/// The answer to a [`Request`].
#[derive(Debug, Default)]
pub struct Plan {
    pub notice: Option<Notice>,
    pub replay: Vec<Arc<Broadcast>>,
    /// The client is ahead of this shard (it saw messages still queued to us): skip live
    /// messages up to this sequence number.
    pub skip_until: Option<u64>,
}

/// All channels' history on one shard.
#[derive(Debug)]
pub struct History {
    channels: ChannelMap<ChannelHistory>,
    limits: Limits,
}

fn size(b: &Broadcast) -> usize {
    b.plain.len() + b.deflated.as_ref().map_or(0, |f| f.len())
}

impl History {
    pub fn new(limits: Limits) -> Self {
        Self { channels: ChannelMap::default(), limits }
    }

    /// Records a broadcast and trims its channel to the limits.
    pub fn record(&mut self, b: &Arc<Broadcast>) {
        // Cloned (an atomic increment on a name every shard shares) only for a new channel.
        let h = match self.channels.get_mut(&b.channel) {
            Some(h) => h,
            None => self.channels.entry(b.channel.clone()).or_default(),
        };
        if h.epoch != b.epoch {
            // A new epoch (cluster mode: Redis lost the channel's state): start afresh.
            *h = ChannelHistory { epoch: b.epoch, ..ChannelHistory::default() };
        }
        h.last_seq = h.last_seq.max(b.seq);
        if self.limits.messages == 0 {
            return;
        }
        h.bytes += size(b);
        h.items.push_back(b.clone());
        while h.items.len() > self.limits.messages || (h.bytes > self.limits.bytes && h.items.len() > 1) {
            if let Some(old) = h.items.pop_front() {
                h.bytes -= size(&old);
            }
        }
    }

    /// Drops everything held of `channel` (Redis Cluster: the shard's last subscriber of it
    /// left, and the node may stop receiving it, so what is held would get a hole).
    pub fn forget(&mut self, channel: &ChannelName) {
        self.channels.remove(channel);
    }

    /// Drops messages older than the TTL (called from the shard's sweep).
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.limits.ttl;
        for h in self.channels.values_mut() {
            while h.items.front().is_some_and(|b| now.saturating_duration_since(b.published_at) >= ttl) {
                if let Some(old) = h.items.pop_front() {
                    h.bytes -= size(&old);
                }
            }
        }
    }

    /// The epoch of `channel`'s history, if this shard has seen a message of it.
    pub fn epoch_of(&self, channel: &ChannelName) -> Option<u64> {
        self.channels.get(channel).map(|h| h.epoch)
    }

    /// Held, unexpired messages of `channel` with a seq above `after`, oldest first.
    pub fn held_after(&self, channel: &ChannelName, after: u64, now: Instant) -> Vec<Arc<Broadcast>> {
        let Some(h) = self.channels.get(channel) else { return Vec::new() };
        h.items
            .iter()
            .filter(|b| b.seq > after && now.saturating_duration_since(b.published_at) < self.limits.ttl)
            .cloned()
            .collect()
    }

    /// Decides what a new subscriber of `channel` gets before live messages.
    pub fn plan(&self, channel: &ChannelName, request: Request, now: Instant) -> Plan {
        let empty = ChannelHistory::default();
        let h = self.channels.get(channel).unwrap_or(&empty);
        let fresh = |b: &&Arc<Broadcast>| now.saturating_duration_since(b.published_at) < self.limits.ttl;
        let held: Vec<&Arc<Broadcast>> = h.items.iter().filter(fresh).collect();
        let mut plan = Plan::default();
        match request {
            Request::Last(n) => {
                plan.replay = held[held.len().saturating_sub(n)..].iter().map(|b| (*b).clone()).collect();
            }
            Request::Since { same_epoch: false, .. } => {
                plan.notice = Some(Notice::Reset);
                plan.replay = held.iter().map(|b| (*b).clone()).collect();
            }
            Request::Since { seq, same_epoch: true } => {
                if seq > h.last_seq {
                    plan.skip_until = Some(seq);
                    return plan;
                }
                let oldest = held.first().map_or(h.last_seq + 1, |b| b.seq);
                if seq + 1 < oldest {
                    plan.notice = Some(Notice::Gap { from: seq + 1, to: oldest - 1 });
                }
                plan.replay = held.iter().filter(|b| b.seq > seq).map(|b| (*b).clone()).collect();
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{MessageKind, encode_data};

    fn msg(ch: &str, seq: u64, at: Instant) -> Arc<Broadcast> {
        Arc::new(Broadcast {
            channel: ChannelName::parse(ch).unwrap(),
            seq,
            epoch: 1,
            kind: MessageKind::Text,
            plain: encode_data(MessageKind::Text, format!("{seq}").as_bytes(), false),
            deflated: None,
            enveloped: None,
            published_at: at,
        })
    }

    fn seqs(plan: &Plan) -> Vec<u64> {
        plan.replay.iter().map(|b| b.seq).collect()
    }

    const LIMITS: Limits = Limits { messages: 5, bytes: 1 << 20, ttl: Duration::from_secs(60) };

    #[test]
    fn resume_replays_what_was_missed() {
        let now = Instant::now();
        let mut h = History::new(LIMITS);
        for s in 1..=8 {
            h.record(&msg("a", s, now));
        }
        let a = ChannelName::parse("a").unwrap();
        let p = h.plan(&a, Request::Since { seq: 6, same_epoch: true }, now);
        assert_eq!((p.notice, seqs(&p)), (None, vec![7, 8]));
        let p = h.plan(&a, Request::Since { seq: 8, same_epoch: true }, now);
        assert_eq!((p.notice, seqs(&p)), (None, vec![]));
        // Only 4..=8 are held: asking from 1 reports 2..=3 missing, then replays the rest.
        let p = h.plan(&a, Request::Since { seq: 1, same_epoch: true }, now);
        assert_eq!((p.notice, seqs(&p)), (Some(Notice::Gap { from: 2, to: 3 }), vec![4, 5, 6, 7, 8]));
        let p = h.plan(&a, Request::Since { seq: 0, same_epoch: false }, now);
        assert_eq!((p.notice, seqs(&p)), (Some(Notice::Reset), vec![4, 5, 6, 7, 8]));
        let p = h.plan(&a, Request::Since { seq: 10, same_epoch: true }, now);
        assert_eq!(p.skip_until, Some(10));
        let p = h.plan(&a, Request::Last(2), now);
        assert_eq!(seqs(&p), vec![7, 8]);
        let p = h.plan(&ChannelName::parse("b").unwrap(), Request::Since { seq: 0, same_epoch: true }, now);
        assert_eq!((p.notice, seqs(&p)), (None, vec![]));
    }

    #[test]
    fn ttl_and_bytes_bound_history() {
        let now = Instant::now();
        let mut h = History::new(Limits { ttl: Duration::from_millis(100), ..LIMITS });
        h.record(&msg("a", 1, now - Duration::from_secs(1)));
        h.record(&msg("a", 2, now));
        let a = ChannelName::parse("a").unwrap();
        // Expired messages are never replayed, even before the sweep drops them.
        let p = h.plan(&a, Request::Since { seq: 0, same_epoch: true }, now);
        assert_eq!((p.notice, seqs(&p)), (Some(Notice::Gap { from: 1, to: 1 }), vec![2]));
        h.expire(now + Duration::from_secs(1));
        let p = h.plan(&a, Request::Since { seq: 0, same_epoch: true }, now + Duration::from_secs(1));
        assert_eq!((p.notice, seqs(&p)), (Some(Notice::Gap { from: 1, to: 2 }), vec![]));
        assert!(h.plan(&a, Request::Last(5), now + Duration::from_secs(1)).replay.is_empty());

        let mut h = History::new(Limits { bytes: 10, ..LIMITS });
        for s in 1..=4 {
            h.record(&msg("a", s, now)); // 3 bytes each
        }
        assert_eq!(seqs(&h.plan(&a, Request::Last(10), now)), vec![2, 3, 4]);
    }
}

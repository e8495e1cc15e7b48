//! Resume on any node: a `since=` that this shard's history cannot satisfy is answered from
//! the channel's Redis stream, merged with what the shard holds.
//!
//! The shard asks the cluster thread for the stream after the client's seq (before the
//! connection joins the subscriber tables), then, on its own thread and between two
//! broadcasts, merges: Redis entries and held broadcasts after the client's seq, each seq
//! once, in order; `reset` when the client's epoch is not the channel's; `gap` only for
//! what neither holds. Live messages up to the last replayed seq are then skipped, so the
//! seam has no hole and no duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::channel::ChannelName;
use crate::hub::Broadcast;
use crate::ops::metrics::Metrics;
use crate::shard::fanout::ShardEncoder;
use crate::shard::history::Notice;

use super::Fetched;

/// What a resuming subscriber gets on one channel.
#[derive(Debug, Default)]
pub struct RemotePlan {
    pub notice: Option<Notice>,
    /// The epoch to name in the notice (the channel's).
    pub epoch: u64,
    pub replay: Vec<Arc<Broadcast>>,
    pub skip_until: Option<u64>,
}

/// Whether a resume of `channel` after `seq` in `client_epoch` needs Redis: this shard
/// does not know the channel, knows it under another epoch, or no longer holds seq + 1.
pub fn needs_fetch(local_epoch: Option<u64>, local_plan_has_notice: bool, client_epoch: u64) -> bool {
    match local_epoch {
        None => true,
        Some(e) => e != client_epoch || local_plan_has_notice,
    }
}

/// Merges the stream (`fetched`, entries after `seq` — or after 0 when the epochs
/// differ) with the shard's held broadcasts of the same epoch (`held`, oldest first).
pub fn plan(
    channel: &ChannelName,
    seq: u64,
    client_epoch: u64,
    fetched: Fetched,
    held: Vec<Arc<Broadcast>>,
    encoder: &ShardEncoder,
    metrics: &Metrics,
) -> Option<RemotePlan> {
    // No state in Redis: the shard's own history is all there is.
    let epoch = fetched.epoch?;
    let same = epoch == client_epoch;
    let after = if same { seq } else { 0 };
    let now = Instant::now();
    let mut by_seq: BTreeMap<u64, Arc<Broadcast>> = BTreeMap::new();
    for b in held.into_iter().filter(|b| b.epoch == epoch && b.seq > after) {
        by_seq.insert(b.seq, b);
    }
    let mut fetched_n = 0;
    for (s, kind, payload) in fetched.entries {
        if s > after && !by_seq.contains_key(&s) {
            // Never seen live here: encoded (once, for this resume) on the shard.
            let b = encoder.encode(channel.clone(), s, epoch, kind, &payload, now);
            by_seq.insert(s, Arc::new(b));
            fetched_n += 1;
        }
    }
    metrics.redis.resume_fetched.fetch_add(fetched_n, std::sync::atomic::Ordering::Relaxed);
    let mut out = RemotePlan { epoch, ..RemotePlan::default() };
    if !same {
        out.notice = Some(Notice::Reset);
    } else if seq > fetched.head && by_seq.is_empty() {
        // The client is ahead of what Redis has answered so far: skip up to its seq.
        out.skip_until = Some(seq);
        return Some(out);
    } else {
        let oldest = by_seq.keys().next().copied().unwrap_or(fetched.head + 1);
        if seq + 1 < oldest {
            out.notice = Some(Notice::Gap { from: seq + 1, to: oldest - 1 });
        }
    }
    out.skip_until = by_seq.keys().next_back().copied();
    out.replay = by_seq.into_values().collect();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{MessageKind, encode_data};
    use bytes::Bytes;

    fn held(seq: u64, epoch: u64) -> Arc<Broadcast> {
        Arc::new(Broadcast {
            channel: ChannelName::parse("a").unwrap(),
            seq,
            epoch,
            kind: MessageKind::Text,
            plain: encode_data(MessageKind::Text, b"h", false),
            deflated: None,
            enveloped: None,
            published_at: Instant::now(),
        })
    }

    fn entries(r: std::ops::RangeInclusive<u64>) -> Vec<(u64, MessageKind, Bytes)> {
        r.map(|s| (s, MessageKind::Text, Bytes::from(format!("{s}")))).collect()
    }

    fn seqs(p: &RemotePlan) -> Vec<u64> {
        p.replay.iter().map(|b| b.seq).collect()
    }

    #[test]
    fn merges_stream_and_history_once_in_order() {
        let m = Metrics::new(1);
        let enc = ShardEncoder::new(Arc::new(Metrics::new(1)));
        let a = ChannelName::parse("a").unwrap();
        let f = Fetched { epoch: Some(7), head: 9, entries: entries(6..=9) };
        let p = plan(&a, 5, 7, f, vec![held(8, 7), held(9, 7), held(10, 7), held(3, 7)], &enc, &m).unwrap();
        assert_eq!((p.notice, seqs(&p), p.skip_until), (None, vec![6, 7, 8, 9, 10], Some(10)));
        assert_eq!(m.redis.resume_fetched.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Redis trimmed 6..=7: a gap for exactly those.
        let f = Fetched { epoch: Some(7), head: 9, entries: entries(8..=9) };
        let p = plan(&a, 5, 7, f, vec![], &enc, &m).unwrap();
        assert_eq!((p.notice, seqs(&p)), (Some(Notice::Gap { from: 6, to: 7 }), vec![8, 9]));
        // Another epoch: reset, then everything held.
        let f = Fetched { epoch: Some(8), head: 2, entries: entries(1..=2) };
        let p = plan(&a, 5, 7, f, vec![held(9, 7)], &enc, &m).unwrap();
        assert_eq!((p.notice, p.epoch, seqs(&p)), (Some(Notice::Reset), 8, vec![1, 2]));
        // Nothing missed.
        let p = plan(&a, 9, 7, Fetched { epoch: Some(7), head: 9, entries: vec![] }, vec![], &enc, &m).unwrap();
        assert_eq!((p.notice, seqs(&p), p.skip_until), (None, vec![], None));
        // Redis holds no state: fall back to local history.
        assert!(plan(&a, 1, 7, Fetched::default(), vec![], &enc, &m).is_none());
        assert!(needs_fetch(None, false, 7));
        assert!(needs_fetch(Some(6), false, 7));
        assert!(needs_fetch(Some(7), true, 7));
        assert!(!needs_fetch(Some(7), false, 7));
    }
}

//! Per-connection accounting of sequence numbers: deliveries, duplicates, out-of-order
//! arrivals and (given how many were published) losses, in O(1) memory per connection.
//!
//! A sliding bitmap remembers which of the last [`WINDOW`] sequence numbers below the
//! highest one seen have arrived. In-order delivery (the expected case) shifts it by one
//! bit per message. A message older than the window is counted as out of order; whether it
//! was also a duplicate can no longer be told.
//!
//! In the `channels` workload a connection has one such tracker per subscribed channel
//! ([`ChannelTrackers`]), fed with the per-channel sequence number each payload carries, so
//! loss, duplicates and disorder are told apart per channel.

const WORDS: usize = 8;
/// How far back (in messages) duplicates are recognised.
pub const WINDOW: u64 = (WORDS * 64) as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Higher than anything before (possibly after a gap).
    New,
    /// Lower than the highest seen and not seen before.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    max_seen: u64,
    received: u64,
    dups: u64,
    ooo: u64,
    /// Bit i of the window (word i/64, bit i%64) is sequence number `max_seen - i`.
    window: [u64; WORDS],
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the arrival of `seq` (1-based).
    pub fn observe(&mut self, seq: u64) -> Seen {
        self.received += 1;
        if seq > self.max_seen {
            self.shift(seq - self.max_seen);
            self.window[0] |= 1;
            self.max_seen = seq;
            return Seen::New;
        }
        let d = self.max_seen - seq;
        if d >= WINDOW {
            self.ooo += 1;
            return Seen::OutOfOrder;
        }
        let (w, b) = ((d / 64) as usize, d % 64);
        if self.window[w] & (1 << b) != 0 {
            self.dups += 1;
            Seen::Duplicate
        } else {
            self.window[w] |= 1 << b;
            self.ooo += 1;
            Seen::OutOfOrder
        }
    }

    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.window = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WORDS).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.window[s]);
            let lo = src.and_then(|s| s.checked_sub(1)).map_or(0, |s| self.window[s]);
            self.window[i] = if bits == 0 { hi } else { (hi << bits) | (lo >> (64 - bits)) };
        }
    }

    pub fn duplicates(&self) -> u64 {
        self.dups
    }
    pub fn out_of_order(&self) -> u64 {
        self.ooo
    }
    #[cfg(test)]
    pub fn max_seen(&self) -> u64 {
        self.max_seen
    }
    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.received - self.dups
    }
    /// Messages of `1..=published` that never arrived (sequence numbers above `published`
    /// are rejected before they reach the tracker).
    pub fn lost(&self, published: u64) -> u64 {
        published.saturating_sub(self.unique())
    }
    /// True once every one of `1..=published` has arrived.
    pub fn complete(&self, published: u64) -> bool {
        self.unique() >= published
    }
    /// Holes so far: numbers below the highest seen that have not arrived (lost unless
    /// they still come, out of order). For the live progress line.
    pub fn gaps(&self) -> u64 {
        self.max_seen.saturating_sub(self.unique())
    }
}

/// One connection's trackers in the `channels` workload: one per subscribed channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelTrackers {
    /// (channel index, its tracker), ascending by channel; k is small (crier allows 64).
    subs: Box<[(u32, SeqTracker)]>,
}

/// What one channel of one connection saw, given how many were published to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelCount {
    pub channel: u32,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl ChannelTrackers {
    pub fn new(channels: &[u32]) -> Self {
        Self { subs: channels.iter().map(|&c| (c, SeqTracker::new())).collect() }
    }

    /// Records `chseq` on `channel`; `None` if the connection is not subscribed to it (a
    /// server that delivered another channel's message here).
    pub fn observe(&mut self, channel: u32, chseq: u64) -> Option<Seen> {
        let (_, t) = self.subs.iter_mut().find(|(c, _)| *c == channel)?;
        Some(t.observe(chseq))
    }

    #[cfg(test)]
    pub fn channels(&self) -> impl Iterator<Item = u32> + '_ {
        self.subs.iter().map(|(c, _)| *c)
    }

    /// Per subscribed channel, with `published[c]` messages published to channel c.
    pub fn counts<'a>(&'a self, published: &'a [u64]) -> impl Iterator<Item = ChannelCount> + 'a {
        self.subs.iter().map(move |(c, t)| {
            let p = published.get(*c as usize).copied().unwrap_or(0);
            ChannelCount { channel: *c, lost: t.lost(p), duplicated: t.duplicates(), out_of_order: t.out_of_order() }
        })
    }

    pub fn complete(&self, published: &[u64]) -> bool {
        self.subs.iter().all(|(c, t)| t.complete(published.get(*c as usize).copied().unwrap_or(0)))
    }

    pub fn gaps(&self) -> u64 {
        self.subs.iter().map(|(_, t)| t.gaps()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_clean() {
        let mut t = SeqTracker::new();
        for s in 1..=10_000 {
            assert_eq!(t.observe(s), Seen::New);
        }
        assert_eq!(t.unique(), 10_000);
        assert_eq!(t.lost(10_000), 0);
        assert_eq!(t.duplicates(), 0);
        assert_eq!(t.out_of_order(), 0);
        assert!(t.complete(10_000));
        assert_eq!(t.lost(10_002), 2);
    }

    #[test]
    fn gaps_are_losses_not_disorder() {
        let mut t = SeqTracker::new();
        for s in [1, 2, 5, 6, 10] {
            t.observe(s);
        }
        assert_eq!(t.lost(10), 5);
        assert_eq!(t.out_of_order(), 0);
        assert!(!t.complete(10));
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(1), Seen::New);
        assert_eq!(t.observe(3), Seen::New);
        assert_eq!(t.observe(2), Seen::OutOfOrder);
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(1), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::New);
        assert_eq!(t.duplicates(), 3);
        assert_eq!(t.out_of_order(), 1);
        assert_eq!(t.unique(), 4);
        assert_eq!(t.lost(4), 0);
    }

    #[test]
    fn window_spans_word_boundaries() {
        let mut t = SeqTracker::new();
        // Receive odd numbers up to 301, then the even ones late.
        for s in (1..=301).step_by(2) {
            t.observe(s);
        }
        for s in (2..=300).step_by(2) {
            assert_eq!(t.observe(s), Seen::OutOfOrder, "seq {s}");
        }
        for s in 1..=301 {
            assert_eq!(t.observe(s), Seen::Duplicate, "seq {s}");
        }
        assert_eq!(t.lost(301), 0);
        // Jumps of various sizes, including a whole word and beyond the window.
        for jump in [63u64, 64, 65, 128, 200, WINDOW - 1, WINDOW, WINDOW + 5] {
            let mut t = SeqTracker::new();
            t.observe(1);
            t.observe(1 + jump);
            let old = t.observe(1);
            if jump < WINDOW {
                assert_eq!(old, Seen::Duplicate, "jump {jump}");
            } else {
                assert_eq!(old, Seen::OutOfOrder, "jump {jump}");
            }
            assert_eq!(t.observe(1 + jump), Seen::Duplicate);
        }
    }

    #[test]
    fn per_channel_accounting() {
        let mut t = ChannelTrackers::new(&[3, 9]);
        for s in [1, 2, 3] {
            assert_eq!(t.observe(3, s), Some(Seen::New));
        }
        assert_eq!(t.observe(9, 2), Some(Seen::New));
        assert_eq!(t.observe(9, 1), Some(Seen::OutOfOrder));
        assert_eq!(t.observe(9, 1), Some(Seen::Duplicate));
        assert_eq!(t.observe(9, 4), Some(Seen::New));
        assert_eq!(t.observe(4, 1), None, "not subscribed to channel 4");
        assert_eq!(t.gaps(), 1, "channel 9 misses 3 so far");
        let mut published = vec![0u64; 10];
        published[3] = 4;
        published[9] = 4;
        let c: Vec<ChannelCount> = t.counts(&published).collect();
        assert_eq!(c[0], ChannelCount { channel: 3, lost: 1, duplicated: 0, out_of_order: 0 });
        assert_eq!(c[1], ChannelCount { channel: 9, lost: 1, duplicated: 1, out_of_order: 1 });
        assert!(!t.complete(&published));
        published[3] = 3;
        published[9] = 2;
        assert!(t.complete(&published));
        assert_eq!(t.channels().collect::<Vec<_>>(), vec![3, 9]);
    }

    #[test]
    fn matches_a_naive_model() {
        // Pseudo-random arrivals with duplicates and reordering, checked against a set.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = SeqTracker::new();
        let mut seen = std::collections::BTreeSet::new();
        let (mut max, mut dups, mut ooo) = (0u64, 0u64, 0u64);
        let mut next = 1u64;
        for _ in 0..20_000 {
            let r = rnd() % 10;
            let seq = if r < 7 {
                next += 1;
                next - 1
            } else if r < 8 {
                next += 3; // skip two
                next - 1
            } else {
                // something recent (within the window)
                next.saturating_sub(1 + rnd() % 100).max(1)
            };
            t.observe(seq);
            if !seen.insert(seq) {
                dups += 1;
            } else if seq < max {
                ooo += 1;
            }
            max = max.max(seq);
        }
        assert_eq!(t.duplicates(), dups);
        assert_eq!(t.out_of_order(), ooo);
        assert_eq!(t.unique(), seen.len() as u64);
        assert_eq!(t.max_seen(), max);
        assert_eq!(t.lost(max), max - seen.len() as u64);
    }
}

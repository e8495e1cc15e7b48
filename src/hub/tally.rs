//! Per-channel message counts, kept by the hub for the busiest-channels view of `/stats`.
//!
//! One entry per channel the hub has handled: on a single box it is also where the
//! channel's sequence numbers come from (so a publish costs one map lookup, as before the
//! tally existed); in cluster mode the hub only counts what it fans out. Counted once per
//! broadcast on the control thread, never per delivery and never on a shard, and read on
//! the same thread by the admin endpoint (`ops::stats`), so it needs no atomics or locks.
//! Rates come from [`ChannelTally::sample`], which runs only when someone asks for
//! `/stats`, at most once per [`MIN_SAMPLE_INTERVAL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::channel::ChannelName;

/// Channels the cluster path counts at most. A single box keeps a sequence number per
/// channel anyway, so the tally adds no entries there; a cluster node's deliveries come
/// from Redis, and past this many channels new ones are not tallied (still delivered).
pub const MAX_CLUSTER_CHANNELS: usize = 100_000;

/// Samples closer together than this reuse the last one (its rates stay meaningful).
pub const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(900);

/// What the hub keeps for one channel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Count {
    /// Single box: the last sequence number given out. Unused in cluster mode.
    pub seq: u64,
    /// Broadcasts the hub built and handed to the shards for this channel.
    pub messages: u64,
    /// `messages` at the last sample.
    sampled: u64,
}

/// One channel in a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRate {
    pub channel: ChannelName,
    pub messages: u64,
    pub per_second: f64,
}

/// The busiest channels at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Channels with the highest messages/s over the window (ties: most messages).
    pub by_rate: Vec<ChannelRate>,
    /// Channels with the most messages since start.
    pub by_total: Vec<ChannelRate>,
    /// How many channels the tally holds.
    pub channels: usize,
    /// The span the rates are over (zero for the first sample: no rates yet).
    pub window: Duration,
    /// Channels the cluster path could not tally (see [`MAX_CLUSTER_CHANNELS`]).
    pub untallied: u64,
}

/// Channel → [`Count`], and the last sample.
#[derive(Debug, Default)]
pub struct ChannelTally {
    counts: HashMap<ChannelName, Count>,
    last: Option<(Instant, Sample)>,
    untallied: u64,
}

impl ChannelTally {
    /// Single box: counts one publish to `channel` and returns its sequence number.
    pub fn next_seq(&mut self, channel: &ChannelName) -> u64 {
        if let Some(c) = self.counts.get_mut(channel) {
            c.seq += 1;
            c.messages += 1;
            return c.seq;
        }
        self.counts.insert(channel.clone(), Count { seq: 1, messages: 1, sampled: 0 });
        1
    }

    /// Cluster mode: counts one delivery from Redis to `channel` (sequenced there).
    pub fn delivered(&mut self, channel: &ChannelName) {
        if let Some(c) = self.counts.get_mut(channel) {
            c.messages += 1;
        } else if self.counts.len() < MAX_CLUSTER_CHANNELS {
            self.counts.insert(channel.clone(), Count { messages: 1, ..Count::default() });
        } else {
            self.untallied += 1;
        }
    }

    /// Messages counted for `channel`.
    pub fn messages(&self, channel: &ChannelName) -> u64 {
        self.counts.get(channel).map_or(0, |c| c.messages)
    }

    /// The `top` busiest channels by rate and by total. Walks every channel, so it is only
    /// done on request, and at most once per [`MIN_SAMPLE_INTERVAL`]: a request sooner gets
    /// the last sample again.
    pub fn sample(&mut self, now: Instant, top: usize) -> Sample {
        if let Some((at, s)) = &self.last
            && now.saturating_duration_since(*at) < MIN_SAMPLE_INTERVAL
        {
            return s.clone();
        }
        let window = self.last.as_ref().map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at));
        let secs = window.as_secs_f64();
        let mut all: Vec<ChannelRate> = Vec::with_capacity(self.counts.len());
        for (ch, c) in self.counts.iter_mut() {
            let per_second = if secs > 0.0 { (c.messages - c.sampled) as f64 / secs } else { 0.0 };
            c.sampled = c.messages;
            all.push(ChannelRate { channel: ch.clone(), messages: c.messages, per_second });
        }
        let by_rate =
            top_by(&mut all, top, |a, b| b.per_second.total_cmp(&a.per_second).then(b.messages.cmp(&a.messages)));
        let by_total = top_by(&mut all, top, |a, b| b.messages.cmp(&a.messages));
        let s = Sample { by_rate, by_total, channels: self.counts.len(), window, untallied: self.untallied };
        self.last = Some((now, s.clone()));
        s
    }
}

/// The first `top` of `all` in `order` (ties by name, so a sample is deterministic).
fn top_by(
    all: &mut [ChannelRate],
    top: usize,
    order: impl Fn(&ChannelRate, &ChannelRate) -> std::cmp::Ordering,
) -> Vec<ChannelRate> {
    let order = |a: &ChannelRate, b: &ChannelRate| order(a, b).then_with(|| a.channel.cmp(&b.channel));
    if all.len() > top && top > 0 {
        all.select_nth_unstable_by(top - 1, order);
    }
    let mut out: Vec<ChannelRate> = all.iter().take(top).cloned().collect();
    out.sort_by(order);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn sequences_and_counts_per_channel() {
        let mut t = ChannelTally::default();
        assert_eq!(t.next_seq(&ch("a")), 1);
        assert_eq!(t.next_seq(&ch("a")), 2);
        assert_eq!(t.next_seq(&ch("b")), 1);
        t.delivered(&ch("c"));
        assert_eq!((t.messages(&ch("a")), t.messages(&ch("b")), t.messages(&ch("c"))), (2, 1, 1));
    }

    #[test]
    fn rates_are_over_the_window_since_the_last_sample() {
        let mut t = ChannelTally::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            t.next_seq(&ch("quiet"));
        }
        let first = t.sample(t0, 10);
        assert_eq!(first.window, Duration::ZERO, "no rates before a second sample");
        assert_eq!(first.by_total[0].channel, ch("quiet"));
        for _ in 0..30 {
            t.next_seq(&ch("busy"));
        }
        t.next_seq(&ch("quiet"));
        // Sooner than MIN_SAMPLE_INTERVAL: the same sample.
        assert_eq!(t.sample(t0 + Duration::from_millis(100), 10).window, Duration::ZERO);
        let s = t.sample(t0 + Duration::from_secs(2), 10);
        assert_eq!(s.window, Duration::from_secs(2));
        assert_eq!(s.by_rate[0], ChannelRate { channel: ch("busy"), messages: 30, per_second: 15.0 });
        assert_eq!(s.by_rate[1], ChannelRate { channel: ch("quiet"), messages: 6, per_second: 0.5 });
        assert_eq!(s.channels, 2);
    }

    #[test]
    fn top_keeps_only_the_busiest() {
        let mut t = ChannelTally::default();
        for i in 0..50u64 {
            for _ in 0..i {
                t.next_seq(&ch(&format!("c{i}")));
            }
        }
        let s = t.sample(Instant::now(), 3);
        let names: Vec<String> = s.by_total.iter().map(|r| r.channel.to_string()).collect();
        assert_eq!(names, ["c49", "c48", "c47"]);
    }

    #[test]
    fn the_cluster_path_is_bounded() {
        let mut t = ChannelTally::default();
        for i in 0..MAX_CLUSTER_CHANNELS + 3 {
            t.delivered(&ch(&format!("c{i}")));
        }
        t.delivered(&ch("c0"));
        let s = t.sample(Instant::now(), 1);
        assert_eq!((s.channels, s.untallied), (MAX_CLUSTER_CHANNELS, 3));
        assert_eq!(t.messages(&ch("c0")), 2);
    }
}

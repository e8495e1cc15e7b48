//! Subscribers per channel for `/stats`, from the shards, without touching their write path.
//!
//! A shard knows its subscribers per channel (its `Subscribers` table) and nobody else
//! does. While someone reads `/stats` (within [`WATCH_FOR`] of the last request), each
//! shard's sweep, at most once per [`REPORT_EVERY`], counts the subscribers of the channels
//! `/stats` asked about (the hub's busiest by messages) and finds its own [`TOP`] channels
//! by subscribers, and leaves that in its `ShardMetrics::channels`. Nobody watching: the
//! sweep does nothing more than one relaxed load. The admin side sums what the shards left.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;

/// Shards report only while `/stats` was asked for within this many ms.
pub const WATCH_FOR_MS: u64 = 10_000;
/// A shard reports at most once per this many ms.
pub const REPORT_EVERY_MS: u64 = 900;
/// Channels a shard reports by its own subscriber counts.
pub const TOP: usize = 32;

/// What `/stats` asks the shards.
#[derive(Default)]
pub struct ChannelWatch {
    /// When `/stats` was last asked for (`Metrics::clock_ms`, plus one so 0 means never).
    asked_at_ms: AtomicU64,
    /// Channels whose subscriber counts `/stats` wants from every shard.
    wanted: Mutex<Arc<[ChannelName]>>,
}

/// One shard's report.
#[derive(Debug, Default, Clone)]
pub struct ShardChannels {
    /// When it was made (`Metrics::clock_ms` plus one; 0: never).
    pub at_ms: u64,
    /// Channel → this shard's subscribers: every wanted channel (0s included) and the
    /// shard's [`TOP`] channels by subscribers.
    pub subscribers: Vec<(ChannelName, usize)>,
}

impl ChannelWatch {
    /// `/stats` was asked for, and wants `channels` counted.
    pub fn ask(&self, metrics: &Metrics, channels: Vec<ChannelName>) {
        self.asked_at_ms.store(metrics.clock_ms() + 1, Relaxed);
        if let Ok(mut w) = self.wanted.lock() {
            *w = channels.into();
        }
    }

    /// The channels a shard should count now, or `None` when nobody is watching or it
    /// reported less than [`REPORT_EVERY_MS`] ago.
    pub fn due(&self, metrics: &Metrics, shard: usize) -> Option<Arc<[ChannelName]>> {
        let asked = self.asked_at_ms.load(Relaxed);
        let now = metrics.clock_ms() + 1;
        if asked == 0 || now.saturating_sub(asked) > WATCH_FOR_MS {
            return None;
        }
        let last = metrics.shards[shard].channels.lock().ok()?.at_ms;
        if last != 0 && now.saturating_sub(last) < REPORT_EVERY_MS {
            return None;
        }
        self.wanted.lock().ok().map(|w| w.clone())
    }
}

/// Stores `shard`'s report.
pub fn report(metrics: &Metrics, shard: usize, subscribers: Vec<(ChannelName, usize)>) {
    if let Ok(mut slot) = metrics.shards[shard].channels.lock() {
        *slot = ShardChannels { at_ms: metrics.clock_ms() + 1, subscribers };
    }
}

/// Subscribers of `channel` summed over every shard's last report (a shard that did not
/// report it counts 0: it either has none, or has it outside its [`TOP`] and was not asked).
pub fn subscribers(metrics: &Metrics) -> std::collections::HashMap<ChannelName, usize> {
    let mut sum = std::collections::HashMap::new();
    for s in &metrics.shards {
        let Ok(r) = s.channels.lock() else { continue };
        for (ch, n) in &r.subscribers {
            *sum.entry(ch.clone()).or_insert(0) += n;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_report_only_while_watched_and_at_most_once_a_period() {
        let m = Metrics::new(2);
        assert!(m.channel_watch.due(&m, 0).is_none(), "nobody asked");
        let ch = ChannelName::parse("flights").unwrap();
        m.channel_watch.ask(&m, vec![ch.clone()]);
        let wanted = m.channel_watch.due(&m, 0).expect("asked just now");
        assert_eq!(&wanted[..], std::slice::from_ref(&ch));
        report(&m, 0, vec![(ch.clone(), 3)]);
        report(&m, 1, vec![(ch.clone(), 4)]);
        assert!(m.channel_watch.due(&m, 0).is_none(), "reported just now");
        assert_eq!(subscribers(&m).get(&ch), Some(&7));
    }
}

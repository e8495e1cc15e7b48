//! Pure: which channels this node must be SSUBSCRIBEd to (Redis Cluster only).
//!
//! Sharded pub/sub has no patterns, so a node subscribes to each channel it has local
//! subscribers for. Shards report a channel when they get their first local subscriber of
//! it ([`Report::Want`]) and when they lose their last ([`Report::Unwant`]); the table
//! here adds the reports of all shards up. A channel nobody wants any more lingers
//! (`--redis-unsubscribe-linger`) before it is unsubscribed, so a client that reconnects at
//! once finds it still subscribed and in sequence.
//!
//! Bound: one entry per channel that has a subscriber on this node, plus at most
//! [`MAX_LINGERING`] lingering ones (past that, the longest-idle one goes at once). Each
//! shard reports a channel at most once per first/last subscriber, so the reports too are
//! bounded by subscriptions.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::channel::ChannelName;

/// Channels kept subscribed after their last subscriber left, at most.
pub const MAX_LINGERING: usize = 4096;

/// What a shard tells the cluster thread.
#[derive(Debug)]
pub enum Report {
    /// First local subscriber of `channel` on `shard`; `ack` gets true once this node's
    /// SSUBSCRIBE is in effect, false when Redis cannot be reached.
    Want { shard: usize, channel: ChannelName, ack: tokio::sync::oneshot::Sender<bool> },
    /// The last local subscriber of `channel` on `shard` left.
    Unwant { shard: usize, channel: ChannelName },
}

#[derive(Debug)]
struct Entry {
    /// Shards with a local subscriber.
    shards: usize,
    /// Since when no shard wants it.
    idle_since: Option<Instant>,
    /// The SSUBSCRIBE is in effect in the current session.
    subscribed: bool,
}

/// What the caller has to do for a [`Interest::want`].
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Already subscribed: acknowledge at once.
    Nothing,
    /// SSUBSCRIBE it (then call [`Interest::subscribed`]).
    Subscribe,
}

#[derive(Debug)]
pub struct Interest {
    channels: HashMap<ChannelName, Entry>,
    /// Channels that became idle, oldest first (entries may have been wanted again since).
    idle: VecDeque<(ChannelName, Instant)>,
    idle_count: usize,
    linger: Duration,
}

impl Interest {
    pub fn new(linger: Duration) -> Self {
        Self { channels: HashMap::new(), idle: VecDeque::new(), idle_count: 0, linger }
    }

    pub fn want(&mut self, channel: &ChannelName) -> Need {
        let e =
            self.channels.entry(channel.clone()).or_insert(Entry { shards: 0, idle_since: None, subscribed: false });
        e.shards += 1;
        if e.idle_since.take().is_some() {
            self.idle_count -= 1;
        }
        if e.subscribed { Need::Nothing } else { Need::Subscribe }
    }

    pub fn unwant(&mut self, channel: &ChannelName, now: Instant) {
        let Some(e) = self.channels.get_mut(channel) else { return };
        e.shards = e.shards.saturating_sub(1);
        if e.shards == 0 && e.idle_since.is_none() {
            e.idle_since = Some(now);
            self.idle_count += 1;
            self.idle.push_back((channel.clone(), now));
        }
    }

    /// The SSUBSCRIBE of `channel` is in effect.
    pub fn subscribed(&mut self, channel: &ChannelName) {
        if let Some(e) = self.channels.get_mut(channel) {
            e.subscribed = true;
        }
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.channels.get(channel).is_some_and(|e| e.subscribed)
    }

    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// The session ended: nothing is subscribed any more; every entry is to be subscribed
    /// again by the next one.
    pub fn unsubscribe_all(&mut self) {
        self.channels.values_mut().for_each(|e| e.subscribed = false);
    }

    /// Every channel to subscribe to in a new session.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.channels.keys().cloned().collect()
    }

    /// Takes out the channels that lingered long enough (or the longest-idle ones past
    /// [`MAX_LINGERING`]); the caller SUNSUBSCRIBEs those it was subscribed to (the bool).
    pub fn expire(&mut self, now: Instant) -> Vec<(ChannelName, bool)> {
        let mut out = Vec::new();
        while let Some((channel, since)) = self.idle.front().cloned() {
            let current = self.channels.get(&channel).is_some_and(|e| e.idle_since == Some(since));
            if current && now.saturating_duration_since(since) < self.linger && self.idle_count <= MAX_LINGERING {
                break;
            }
            self.idle.pop_front();
            if current && let Some(e) = self.channels.remove(&channel) {
                self.idle_count -= 1;
                out.push((channel, e.subscribed));
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn shards_add_up_and_idle_channels_linger() {
        let t0 = Instant::now();
        let mut i = Interest::new(Duration::from_secs(30));
        assert_eq!(i.want(&ch("a")), Need::Subscribe);
        i.subscribed(&ch("a"));
        assert_eq!(i.want(&ch("a")), Need::Nothing, "a second shard");
        i.unwant(&ch("a"), t0);
        assert!(i.expire(t0 + Duration::from_secs(60)).is_empty(), "one shard still wants it");
        i.unwant(&ch("a"), t0);
        assert!(i.expire(t0 + Duration::from_secs(29)).is_empty(), "lingering");
        assert_eq!(i.want(&ch("a")), Need::Nothing, "wanted again while lingering: still subscribed");
        assert!(i.expire(t0 + Duration::from_secs(60)).is_empty(), "no longer idle");
        i.unwant(&ch("a"), t0 + Duration::from_secs(40));
        assert_eq!(i.expire(t0 + Duration::from_secs(70)), vec![(ch("a"), true)]);
        assert!(i.is_empty());
        // A new session subscribes everything again.
        i.want(&ch("b"));
        i.subscribed(&ch("b"));
        i.unsubscribe_all();
        assert!(!i.is_subscribed(&ch("b")));
        assert_eq!(i.channels(), vec![ch("b")]);
    }

    #[test]
    fn lingering_channels_are_bounded() {
        let t0 = Instant::now();
        let mut i = Interest::new(Duration::from_secs(3600));
        for n in 0..MAX_LINGERING + 10 {
            let c = ch(&format!("c{n}"));
            i.want(&c);
            i.unwant(&c, t0 + Duration::from_millis(n as u64));
        }
        let gone = i.expire(t0 + Duration::from_secs(1));
        assert_eq!(gone.len(), 10);
        assert_eq!(gone[0].0, ch("c0"), "the longest idle first");
        assert_eq!(i.len(), MAX_LINGERING);
    }
}

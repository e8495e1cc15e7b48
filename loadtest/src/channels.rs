//! The `channels` workload: C channels, each connection subscribed to k of them chosen at
//! random from `--seed`, messages published round-robin or Zipf-distributed over them.
//!
//! Everything here is a pure function of the [`ChannelSpec`] (and a connection's global
//! index, or a message's sequence number), so the parent and every worker compute the same
//! subscriptions and the same timetable without exchanging them.

use crate::ws::Rng;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How messages are spread over the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Message n goes to channel (n − 1) mod C.
    RoundRobin,
    /// Channel of rank r (0-based) gets a share proportional to 1 / (r + 1)^s.
    Zipf,
}

impl Distribution {
    pub fn name(self) -> &'static str {
        match self {
            Distribution::RoundRobin => "round-robin",
            Distribution::Zipf => "zipf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSpec {
    /// C: channels `ch0` … `ch{C-1}`.
    pub count: u32,
    /// k: channels per connection (distinct).
    pub per_conn: u32,
    pub seed: u64,
    pub distribution: Distribution,
    /// Zipf exponent s.
    pub zipf_s: f64,
}

/// splitmix64: decorrelates seeds that differ in a few bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `0..n` (n > 0); the bias of a 64-bit modulo is far below what matters here.
fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

pub fn name(channel: u32) -> String {
    format!("ch{channel}")
}

impl ChannelSpec {
    /// The k distinct channels of connection `conn` (its global index), ascending
    /// (Floyd's sampling: exactly k draws).
    pub fn subscriptions(&self, conn: u64) -> Vec<u32> {
        let mut rng = Rng::new(mix(self.seed ^ mix(conn.wrapping_add(1))));
        let (c, k) = (u64::from(self.count), u64::from(self.per_conn.min(self.count)));
        let mut picked: Vec<u32> = Vec::with_capacity(k as usize);
        for j in c - k..c {
            let t = below(&mut rng, j + 1) as u32;
            if picked.contains(&t) {
                picked.push(j as u32);
            } else {
                picked.push(t);
            }
        }
        picked.sort_unstable();
        picked
    }

    /// `channels=ch3,ch17,…` for connection `conn`.
    pub fn query(&self, conn: u64) -> String {
        let names: Vec<String> = self.subscriptions(conn).into_iter().map(name).collect();
        format!("channels={}", names.join(","))
    }

    /// The channel of each of the `count` messages (index seq − 1).
    pub fn schedule(&self, count: u64) -> Vec<u32> {
        match self.distribution {
            Distribution::RoundRobin => (0..count).map(|i| (i % u64::from(self.count)) as u32).collect(),
            Distribution::Zipf => {
                let mut cdf = Vec::with_capacity(self.count as usize);
                let mut total = 0.0;
                for r in 0..self.count {
                    total += 1.0 / f64::from(r + 1).powf(self.zipf_s);
                    cdf.push(total);
                }
                let mut rng = Rng::new(mix(self.seed ^ 0x5a17_f00d));
                (0..count)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                        cdf.partition_point(|&x| x <= u).min(self.count as usize - 1) as u32
                    })
                    .collect()
            }
        }
    }
}

/// Messages per channel among the first `published` of `schedule`.
pub fn per_channel(schedule: &[u32], channels: u32, published: u64) -> Vec<u64> {
    let mut n = vec![0u64; channels as usize];
    for &c in schedule.iter().take(published as usize) {
        n[c as usize] += 1;
    }
    n
}

/// One channel that lost, duplicated or reordered something.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChannelProblem {
    pub channel: String,
    pub subscribers: u64,
    pub published: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

/// The channels workload in the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChannelsSummary {
    pub channels: u32,
    pub per_connection: u32,
    pub seed: u64,
    pub distribution: String,
    pub zipf_s: f64,
    pub subscribers_min: u64,
    pub subscribers_max: u64,
    pub subscribers_mean: f64,
    pub channels_without_subscribers: u64,
    pub messages_min: u64,
    pub messages_max: u64,
    /// Share of all messages that went to the busiest channel.
    pub busiest_share: f64,
    pub channels_with_loss: u64,
    pub channels_with_duplicates: u64,
    pub channels_out_of_order: u64,
    /// The (at most 10) channels with the most problems, worst first.
    pub worst: Vec<ChannelProblem>,
}

/// Sums the workers' per-channel counts (index = channel) into the summary.
pub fn summarize(spec: &ChannelSpec, reports: &[crate::report::WorkerReport], published: &[u64]) -> ChannelsSummary {
    let n = spec.count as usize;
    let (mut subs, mut lost, mut dup, mut ooo) = (vec![0u64; n], vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    for r in reports {
        for (into, from) in [
            (&mut subs, &r.channel_subscribers),
            (&mut lost, &r.channel_lost),
            (&mut dup, &r.channel_duplicated),
            (&mut ooo, &r.channel_out_of_order),
        ] {
            for (a, b) in into.iter_mut().zip(from) {
                *a += b;
            }
        }
    }
    let total: u64 = published.iter().sum();
    let mut worst: Vec<ChannelProblem> = (0..n)
        .filter(|&c| lost[c] + dup[c] + ooo[c] > 0)
        .map(|c| ChannelProblem {
            channel: name(c as u32),
            subscribers: subs[c],
            published: published.get(c).copied().unwrap_or(0),
            lost: lost[c],
            duplicated: dup[c],
            out_of_order: ooo[c],
        })
        .collect();
    worst.sort_by_key(|p| std::cmp::Reverse(p.lost + p.duplicated + p.out_of_order));
    worst.truncate(10);
    ChannelsSummary {
        channels: spec.count,
        per_connection: spec.per_conn,
        seed: spec.seed,
        distribution: spec.distribution.name().into(),
        zipf_s: spec.zipf_s,
        subscribers_min: subs.iter().copied().min().unwrap_or(0),
        subscribers_max: subs.iter().copied().max().unwrap_or(0),
        subscribers_mean: subs.iter().sum::<u64>() as f64 / n.max(1) as f64,
        channels_without_subscribers: subs.iter().filter(|&&s| s == 0).count() as u64,
        messages_min: published.iter().copied().min().unwrap_or(0),
        messages_max: published.iter().copied().max().unwrap_or(0),
        busiest_share: if total > 0 { published.iter().copied().max().unwrap_or(0) as f64 / total as f64 } else { 0.0 },
        channels_with_loss: lost.iter().filter(|&&v| v > 0).count() as u64,
        channels_with_duplicates: dup.iter().filter(|&&v| v > 0).count() as u64,
        channels_out_of_order: ooo.iter().filter(|&&v| v > 0).count() as u64,
        worst,
    }
}

impl ChannelsSummary {
    pub fn render(&self, w: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            w,
            "{:<24}{} channels, {} per connection (seed {}), {}{}; subscribers per channel {}..{} (mean {:.1}, {} without)",
            "channels",
            self.channels,
            self.per_connection,
            self.seed,
            self.distribution,
            if self.distribution == "zipf" { format!(" s={}", self.zipf_s) } else { String::new() },
            self.subscribers_min,
            self.subscribers_max,
            self.subscribers_mean,
            self.channels_without_subscribers
        );
        let _ = writeln!(
            w,
            "{:<24}messages per channel {}..{} (busiest {:.1} % of all)",
            "",
            self.messages_min,
            self.messages_max,
            self.busiest_share * 100.0
        );
        let _ = writeln!(
            w,
            "{:<24}channels with loss {} / duplicates {} / disorder {}",
            "per-channel accounting",
            self.channels_with_loss,
            self.channels_with_duplicates,
            self.channels_out_of_order
        );
        for p in &self.worst {
            let _ = writeln!(
                w,
                "{:<24}{}: {} subscribers, {} published, lost {} / duplicated {} / out of order {}",
                "", p.channel, p.subscribers, p.published, p.lost, p.duplicated, p.out_of_order
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(distribution: Distribution) -> ChannelSpec {
        ChannelSpec { count: 1000, per_conn: 5, seed: 7, distribution, zipf_s: 1.0 }
    }

    #[test]
    fn subscriptions_are_distinct_seeded_and_spread() {
        let s = spec(Distribution::RoundRobin);
        let mut subscribers = vec![0u32; 1000];
        for conn in 0..10_000 {
            let subs = s.subscriptions(conn);
            assert_eq!(subs.len(), 5);
            assert!(subs.windows(2).all(|w| w[0] < w[1]), "{subs:?}");
            assert!(subs.iter().all(|&c| c < 1000));
            for c in subs {
                subscribers[c as usize] += 1;
            }
        }
        assert_eq!(s.subscriptions(42), s.subscriptions(42));
        assert_ne!(s.subscriptions(42), s.subscriptions(43));
        let other = ChannelSpec { seed: 8, ..s.clone() };
        assert_ne!(s.subscriptions(42), other.subscriptions(42));
        // 50,000 subscriptions over 1000 channels: about 50 each (binomial, sd ≈ 7).
        let (min, max) = (*subscribers.iter().min().unwrap(), *subscribers.iter().max().unwrap());
        assert!(min >= 20 && max <= 90, "{min}..{max}");
        assert!(s.query(1).starts_with("channels=ch"));
        // k = C: every channel.
        let all = ChannelSpec { count: 4, per_conn: 4, ..s };
        assert_eq!(all.subscriptions(3), vec![0, 1, 2, 3]);
    }

    #[test]
    fn round_robin_and_zipf_schedules() {
        let rr = spec(Distribution::RoundRobin).schedule(2500);
        assert_eq!(&rr[..3], &[0, 1, 2]);
        assert_eq!(rr[1000], 0);
        let n = per_channel(&rr, 1000, 2500);
        assert_eq!((n[0], n[499], n[500], n[999]), (3, 3, 2, 2));
        let z = spec(Distribution::Zipf).schedule(100_000);
        assert_eq!(z, spec(Distribution::Zipf).schedule(100_000), "seeded");
        let n = per_channel(&z, 1000, 100_000);
        // s = 1 over 1000 channels: rank 1 gets 1/H(1000) ≈ 13.4 %, rank 2 half of that.
        let share = n[0] as f64 / 100_000.0;
        assert!((0.125..0.145).contains(&share), "{share}");
        let ratio = n[0] as f64 / n[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
        assert!(n[999] < n[0] / 100);
        assert_eq!(n.iter().sum::<u64>(), 100_000);
        assert_eq!(per_channel(&z, 1000, 10).iter().sum::<u64>(), 10);
    }

    #[test]
    fn summary_sums_workers_per_channel() {
        let s = ChannelSpec { count: 3, per_conn: 1, seed: 1, distribution: Distribution::RoundRobin, zipf_s: 1.0 };
        let a = crate::report::WorkerReport {
            channel_subscribers: vec![2, 1, 0],
            channel_lost: vec![0, 4, 0],
            channel_duplicated: vec![1, 0, 0],
            channel_out_of_order: vec![0, 0, 0],
            ..Default::default()
        };
        let b = crate::report::WorkerReport {
            channel_subscribers: vec![1, 1, 0],
            channel_lost: vec![0, 1, 0],
            channel_duplicated: vec![0, 0, 0],
            channel_out_of_order: vec![2, 0, 0],
            ..Default::default()
        };
        let sum = summarize(&s, &[a, b], &[4, 3, 3]);
        assert_eq!((sum.subscribers_min, sum.subscribers_max, sum.channels_without_subscribers), (0, 3, 1));
        assert_eq!((sum.channels_with_loss, sum.channels_with_duplicates, sum.channels_out_of_order), (1, 1, 1));
        assert_eq!(
            sum.worst[0],
            ChannelProblem {
                channel: "ch1".into(),
                subscribers: 2,
                published: 3,
                lost: 5,
                duplicated: 0,
                out_of_order: 0
            }
        );
        assert_eq!(sum.worst[1].channel, "ch0");
        assert!((sum.busiest_share - 0.4).abs() < 1e-9);
        let mut out = String::new();
        sum.render(&mut out);
        assert!(out.contains("ch1: 2 subscribers, 3 published, lost 5"), "{out}");
    }
}

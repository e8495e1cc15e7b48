//! `GET /stats`: one JSON document for the status page, `crier status` and scripts.
//!
//! Its fields are the figures `/metrics` has (read from the same counters), plus the
//! busiest channels (from the hub's [`ChannelTally`] and the shards' reports, see
//! [`watch`]), the settings that matter and the latency over the last sample window. The
//! schema is versioned ([`SCHEMA`]) and documented in README ("/stats schema"): a field is
//! only ever added under the same version. Counters are cumulative; rates are the
//! reader's to derive, except each channel's messages/s (the hub samples those, since no
//! reader could). Built on the control thread, on request; nothing here runs per message.

pub mod watch;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::hub::tally::{ChannelTally, MIN_SAMPLE_INTERVAL};
use crate::ops::metrics::{CloseReason, Metrics, PublishError, RefuseReason};

/// The `schema` field: bumped only when a field changes meaning or goes away.
pub const SCHEMA: &str = "crier.stats/1";
/// Rows of `channels.busiest`.
pub const BUSIEST: usize = 10;

/// The document. Field docs are the README's schema table.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    pub schema: String,
    pub version: String,
    pub driver: String,
    pub uptime_seconds: f64,
    pub health: Health,
    pub settings: Settings,
    pub connections: Connections,
    pub connects_total: u64,
    pub refusals_total: BTreeMap<String, u64>,
    pub closes_total: BTreeMap<String, u64>,
    pub slow_consumer_closes_total: u64,
    pub publishers: u64,
    pub publishes_total: u64,
    pub publish_errors_total: BTreeMap<String, u64>,
    pub deliveries_total: u64,
    pub bytes_written_total: Bytes,
    pub latency: Latency,
    pub channels: Channels,
    pub redis: Option<Redis>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub draining: bool,
    /// Why `/healthz` answers 503 (`null` while it answers 200).
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Settings {
    pub shards: usize,
    pub max_connections: u64,
    pub max_queue_bytes: u64,
    pub max_message_bytes: u64,
    pub max_channels: u64,
    pub flush_delay: String,
    pub deflate: bool,
    pub ping_interval_seconds: f64,
    pub idle_timeout_seconds: f64,
    pub history_messages: u64,
    pub cluster: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Connections {
    pub total: u64,
    pub per_shard: Vec<u64>,
    pub max: u64,
    pub handshakes_pending: u64,
    pub deflate: u64,
    pub envelope: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Bytes {
    pub plain: u64,
    pub deflate: u64,
}

/// Percentiles in microseconds; `null` while there is no sample.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Latency {
    /// Since start: the same histogram as `crier_delivery_latency_seconds`.
    pub total: Percentiles,
    /// Over the last `window_seconds` only.
    pub recent: Percentiles,
    pub window_seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Channels {
    /// Channels the hub has counted messages for.
    pub tallied: u64,
    /// Span of `messages_per_second` (0 on the first request: no rates yet).
    pub window_seconds: f64,
    pub busiest: Vec<ChannelRow>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelRow {
    pub name: String,
    pub subscribers: u64,
    pub messages_total: u64,
    pub messages_per_second: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Redis {
    pub mode: String,
    pub up: bool,
    pub reconnects_total: u64,
    pub repaired_messages_total: u64,
    pub unrepairable_messages_total: u64,
    pub fell_behind_total: u64,
    pub subscribed_channels: u64,
    pub publish_latency: Percentiles,
}

/// What `/stats` reads besides the metrics: the settings, the hub's tally, and the last
/// latency sample (for `latency.recent`). Control thread only.
pub struct StatsSource {
    pub cfg: Arc<Config>,
    pub tally: Rc<RefCell<ChannelTally>>,
    latency: RefCell<LatencyWindow>,
}

#[derive(Default)]
struct LatencyWindow {
    /// The histogram at the last sample, and when.
    base: Option<(Instant, Histogram<u64>)>,
    /// The last window's own histogram and span.
    recent: Option<(Duration, Histogram<u64>)>,
}

impl StatsSource {
    pub fn new(cfg: Arc<Config>, tally: Rc<RefCell<ChannelTally>>) -> Self {
        Self { cfg, tally, latency: RefCell::default() }
    }

    /// Builds the document (and asks the shards for the subscribers of its channels).
    pub fn snapshot(&self, metrics: &Metrics, health: Health) -> Stats {
        let now = Instant::now();
        let sum = |f: &dyn Fn(&crate::ops::metrics::ShardMetrics) -> u64| -> u64 { metrics.shards.iter().map(f).sum() };
        let per_shard: Vec<u64> = metrics.shards.iter().map(|s| s.connections.load(Relaxed) as u64).collect();
        let open = metrics.open_connections.load(Relaxed) as u64;
        let refusals = RefuseReason::ALL
            .iter()
            .map(|r| (r.label().to_string(), sum(&|s| s.refused[*r as usize].load(Relaxed))))
            .collect();
        let closes = CloseReason::ALL
            .iter()
            .map(|r| (r.label().to_string(), sum(&|s| s.closed[*r as usize].load(Relaxed))))
            .collect();
        let publish_errors = PublishError::ALL
            .iter()
            .map(|e| (e.label().to_string(), metrics.publish_errors[*e as usize].load(Relaxed)))
            .collect();
        let total_latency = metrics.delivery_latency();
        let (window, recent) = self.recent_latency(now, &total_latency);
        let cfg = &self.cfg;
        Stats {
            schema: SCHEMA.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            driver: metrics.driver.get().copied().unwrap_or("none").into(),
            uptime_seconds: metrics.clock_ms() as f64 / 1000.0,
            health,
            settings: Settings {
                shards: cfg.shards,
                max_connections: cfg.max_connections as u64,
                max_queue_bytes: cfg.max_queue_bytes as u64,
                max_message_bytes: cfg.max_message_bytes as u64,
                max_channels: cfg.max_channels as u64,
                flush_delay: cfg.flush_delay.to_string(),
                deflate: cfg.deflate,
                ping_interval_seconds: cfg.ping_interval.as_secs_f64(),
                idle_timeout_seconds: cfg.idle_timeout.as_secs_f64(),
                history_messages: cfg.history_messages as u64,
                cluster: cluster_mode(cfg).into(),
            },
            connections: Connections {
                total: per_shard.iter().sum(),
                per_shard,
                max: metrics.max_connections.load(Relaxed) as u64,
                handshakes_pending: (metrics.ws_sockets.load(Relaxed) as u64).saturating_sub(open),
                deflate: metrics.deflate_connections.load(Relaxed) as u64,
                envelope: metrics.envelope_connections.load(Relaxed) as u64,
            },
            connects_total: sum(&|s| s.accepted.load(Relaxed)),
            refusals_total: refusals,
            closes_total: closes,
            slow_consumer_closes_total: sum(&|s| s.closed[CloseReason::SlowConsumer as usize].load(Relaxed)),
            publishers: metrics.publishers.load(Relaxed) as u64,
            publishes_total: metrics.messages_published.load(Relaxed),
            publish_errors_total: publish_errors,
            deliveries_total: sum(&|s| s.frames_written.load(Relaxed)),
            bytes_written_total: Bytes {
                plain: sum(&|s| s.bytes_plain.load(Relaxed)),
                deflate: sum(&|s| s.bytes_deflate.load(Relaxed)),
            },
            latency: Latency { total: percentiles(&total_latency), recent, window_seconds: window.as_secs_f64() },
            channels: self.channels(metrics, now),
            redis: metrics.redis.enabled.load(Relaxed).then(|| redis(metrics, cfg)),
        }
    }

    /// Latency over the span since the last sample (at least [`MIN_SAMPLE_INTERVAL`]; a
    /// request sooner gets the last window again).
    fn recent_latency(&self, now: Instant, total: &Histogram<u64>) -> (Duration, Percentiles) {
        let mut w = self.latency.borrow_mut();
        let due = w.base.as_ref().is_none_or(|(at, _)| now.saturating_duration_since(*at) >= MIN_SAMPLE_INTERVAL);
        if due {
            if let Some((at, base)) = w.base.take() {
                let mut diff = total.clone();
                // `total` only grows, so `base` is part of it.
                let _ = diff.subtract(&base);
                w.recent = Some((now.saturating_duration_since(at), diff));
            }
            w.base = Some((now, total.clone()));
        }
        match &w.recent {
            Some((span, h)) => (*span, percentiles(h)),
            None => (Duration::ZERO, Percentiles::default()),
        }
    }

    /// The busiest channels: the hub's top by rate and by total, with the shards'
    /// subscriber counts, and the shards' own top channels by subscribers.
    fn channels(&self, metrics: &Metrics, now: Instant) -> Channels {
        let mut tally = self.tally.borrow_mut();
        let sample = tally.sample(now, BUSIEST);
        let mut wanted: Vec<_> = sample.by_rate.iter().chain(&sample.by_total).map(|r| r.channel.clone()).collect();
        wanted.sort();
        wanted.dedup();
        let subscribers = watch::subscribers(metrics);
        let mut rows: BTreeMap<crate::channel::ChannelName, ChannelRow> = BTreeMap::new();
        for r in sample.by_rate.iter().chain(&sample.by_total) {
            rows.entry(r.channel.clone()).or_insert_with(|| ChannelRow {
                name: r.channel.to_string(),
                subscribers: 0,
                messages_total: r.messages,
                messages_per_second: r.per_second,
            });
        }
        for (ch, n) in &subscribers {
            let row = rows.entry(ch.clone()).or_insert_with(|| ChannelRow {
                name: ch.to_string(),
                subscribers: 0,
                messages_total: tally.messages(ch),
                messages_per_second: 0.0,
            });
            row.subscribers = *n as u64;
        }
        metrics.channel_watch.ask(metrics, wanted);
        let mut busiest: Vec<ChannelRow> = rows.into_values().collect();
        busiest.sort_by(|a, b| {
            b.messages_per_second
                .total_cmp(&a.messages_per_second)
                .then(b.subscribers.cmp(&a.subscribers))
                .then(b.messages_total.cmp(&a.messages_total))
                .then_with(|| a.name.cmp(&b.name))
        });
        busiest.truncate(BUSIEST);
        Channels { tallied: sample.channels as u64, window_seconds: sample.window.as_secs_f64(), busiest }
    }
}

fn cluster_mode(cfg: &Config) -> &'static str {
    match &cfg.redis {
        None => "off",
        Some(r) if r.cluster.is_some() => "redis-cluster",
        Some(_) => "redis",
    }
}

fn redis(metrics: &Metrics, cfg: &Config) -> Redis {
    let r = &metrics.redis;
    let publish = r.publish_latency.lock().ok().and_then(|g| g.as_ref().map(percentiles)).unwrap_or_default();
    Redis {
        mode: cluster_mode(cfg).into(),
        up: r.up.load(Relaxed),
        reconnects_total: r.reconnects.load(Relaxed),
        repaired_messages_total: r.repaired.load(Relaxed),
        unrepairable_messages_total: r.unrepairable.load(Relaxed),
        fell_behind_total: r.fell_behind.load(Relaxed),
        subscribed_channels: r.subscribed_channels.load(Relaxed),
        publish_latency: publish,
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        max_us: Some(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::new_latency_histogram;

    #[test]
    fn percentiles_of_an_empty_histogram_are_null() {
        let p = percentiles(&new_latency_histogram());
        assert_eq!((p.count, p.p50_us, p.p99_us), (0, None, None));
        let mut h = new_latency_histogram();
        for v in 1..=100 {
            h.record(v * 10).unwrap();
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 100);
        assert!((495..=505).contains(&p.p50_us.unwrap()), "{p:?}");
        assert!((985..=995).contains(&p.p99_us.unwrap()), "{p:?}");
    }
}

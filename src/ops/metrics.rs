//! Counters and gauges, and their Prometheus text rendering.
//!
//! Each shard writes only its own [`ShardMetrics`] (cache-line aligned, so shards never
//! share a line); the hub and the publishers write the global counters. Everything is a
//! relaxed atomic: /metrics reads a consistent-enough snapshot without stopping anyone.
//! The delivery-latency histogram is kept per shard in an hdrhistogram that the shard
//! merges into its shared copy once per sweep, so the write path takes no lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

macro_rules! labelled {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many variants there are: the length of every array indexed by this enum.
            pub const COUNT: usize = Self::ALL.len();
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

labelled!(
    /// Why an upgrade was refused.
    RefuseReason {
        NotFound => "not_found",
        MethodNotAllowed => "method_not_allowed",
        UpgradeRequired => "upgrade_required",
        BadRequest => "bad_request",
        HeaderTooLarge => "header_too_large",
        OverCapacity => "over_capacity",
        Draining => "draining",
        HandshakeTimeout => "handshake_timeout",
        // Per-address limits and proxies (src/peer/).
        IpConnections => "ip_connections",
        IpHandshakeRate => "ip_handshake_rate",
        ProxyHeaderInvalid => "proxy_header_invalid",
        ProxyHeaderUntrusted => "proxy_header_untrusted",
        // Access control (`crate::access`).
        TokenMissing => "token_missing",
        TokenInvalid => "token_invalid",
        TokenExpired => "token_expired",
        ChannelForbidden => "channel_forbidden",
        OriginForbidden => "origin_forbidden",
        RedisUnavailable => "redis_unavailable",
    }
);

labelled!(
    /// Why a WebSocket connection ended.
    CloseReason {
        Client => "client",
        ProtocolError => "protocol_error",
        InvalidUtf8 => "invalid_utf8",
        BadCompression => "bad_compression",
        MessageTooBig => "message_too_big",
        SlowConsumer => "slow_consumer",
        IdleTimeout => "idle_timeout",
        Shutdown => "shutdown",
        IoError => "io_error",
        TokenExpired => "token_expired",
    }
);

labelled!(
    /// Why a publish was refused.
    PublishError {
        UnknownCommand => "unknown_command",
        BadChannel => "bad_channel",
        BadType => "bad_type",
        InvalidUtf8 => "invalid_utf8",
        MalformedLength => "malformed_length",
        TooLarge => "too_large",
        LineTooLong => "line_too_long",
        MissingCrlf => "missing_crlf",
        ShuttingDown => "shutting_down",
        Timeout => "timeout",
        TooManyPublishers => "too_many_publishers",
        RedisUnavailable => "redis_unavailable",
        RedisOutcomeUnknown => "redis_outcome_unknown",
    }
);

/// Latency buckets in seconds for `crier_delivery_latency_seconds`.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters written only by one shard.
#[repr(align(128))]
#[derive(Default)]
pub struct ShardMetrics {
    pub connections: AtomicUsize,
    pub accepted: AtomicU64,
    pub frames_written: AtomicU64,
    pub bytes_plain: AtomicU64,
    pub bytes_deflate: AtomicU64,
    pub client_messages: AtomicU64,
    pub refused: [AtomicU64; RefuseReason::COUNT],
    pub closed: [AtomicU64; CloseReason::COUNT],
    /// Cumulative delivery latency in microseconds, merged from the shard's local copy.
    pub latency: Mutex<Option<Histogram<u64>>>,
    /// When the shard's sweep last ran, in milliseconds since [`Metrics::epoch`]: written
    /// once per sweep tick, read by the watchdog thread before each WATCHDOG=1 (see
    /// `ops::notify::watchdog`).
    pub swept_at_ms: AtomicU64,
    /// Bytes of the broadcasts in the shard's queue: added by the hub when it sends one,
    /// taken off by the shard when it handles it.
    pub queued_bytes: AtomicUsize,
    /// The shard's busiest channels by subscribers, for `/stats` (see `ops::stats::watch`).
    pub channels: Mutex<crate::ops::stats::watch::ShardChannels>,
    /// The batch loop's passes and their time in µs; its holds (`--flush-delay`) and theirs.
    pub flush_passes: AtomicU64,
    pub flush_pass_us: AtomicU64,
    pub flush_holds: AtomicU64,
    pub flush_hold_us: AtomicU64,
}

/// Everything /metrics reports.
pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub messages_published: AtomicU64,
    pub publish_errors: [AtomicU64; PublishError::COUNT],
    pub publishers: AtomicUsize,
    pub frames_encoded: AtomicU64,
    pub compressions: AtomicU64,
    pub driver: OnceLock<&'static str>,
    pub draining: AtomicBool,
    /// Upgraded connections over all shards.
    pub open_connections: AtomicUsize,
    /// Sockets the WebSocket port holds, in the handshake or upgraded: one `capacity::Slot`
    /// each, checked against `max_connections`.
    pub ws_sockets: AtomicUsize,
    /// The effective connection limit (`capacity::budget`), set once at start.
    pub max_connections: AtomicUsize,
    /// Open connections that negotiated permessage-deflate (the hub compresses only if > 0).
    pub deflate_connections: AtomicUsize,
    /// Open connections that use the crier.v1 envelope (the hub builds envelopes only if > 0).
    pub envelope_connections: AtomicUsize,
    /// Connections that got a replay (since= or last=), and the messages replayed.
    pub replays: AtomicU64,
    pub messages_replayed: AtomicU64,
    /// Resumes that history could not satisfy: [gap, reset].
    pub resumes_unsatisfied: [AtomicU64; 2],
    /// `reset` notices sent to live `crier.v1` subscribers when a channel's epoch changed
    /// under them (cluster mode: Redis lost the channel's state).
    pub live_resets: AtomicU64,
    /// Why publishers cannot reach crier through `--publish-socket` (replaced, or deleted
    /// and not recreated); `None` while the file there is crier's socket. Read by /healthz.
    pub publish_socket_trouble: Mutex<Option<String>>,
    /// Times the socket file was found deleted and bound again.
    pub publish_socket_recreated: AtomicU64,
    /// Client addresses in the per-address table (`peer::limits`), with connections or idle.
    pub peer_addresses: AtomicUsize,
    /// Admin requests refused for a missing or wrong bearer token (`--admin-token-file`).
    pub admin_unauthorized: AtomicU64,
    /// The origin of the one clock every thread reads sweep times on (`swept_at_ms`).
    epoch: Instant,
    /// Cluster mode (written by the cluster thread; rendered only with --redis).
    pub redis: RedisMetrics,
    /// What `/stats` last asked the shards about channels (see `ops::stats::watch`).
    pub channel_watch: crate::ops::stats::watch::ChannelWatch,
}

/// Counters of cluster mode (`--redis`).
pub struct RedisMetrics {
    pub enabled: AtomicBool,
    /// A session (command and pub/sub connection) is up.
    pub up: AtomicBool,
    pub reconnects: AtomicU64,
    /// Messages read back from streams to fill gaps (after a seq jump or a reconnect).
    pub repaired: AtomicU64,
    /// Messages a repair needed that Redis no longer held.
    pub unrepairable: AtomicU64,
    /// Messages a resume read from Redis because this node's history did not hold them.
    pub resume_fetched: AtomicU64,
    pub probes_failed: AtomicU64,
    /// Times this node fell behind what Redis sent it and re-subscribed (see README).
    pub fell_behind: AtomicU64,
    /// Redis Cluster: channels this node is SSUBSCRIBEd to, or subscribing to (the
    /// broadcast channel included; probes not).
    pub subscribed_channels: AtomicU64,
    /// Round trip of publish script calls, in µs, one sample per message.
    pub publish_latency: Mutex<Option<Histogram<u64>>>,
}

impl RedisMetrics {
    fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            up: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            unrepairable: AtomicU64::new(0),
            resume_fetched: AtomicU64::new(0),
            probes_failed: AtomicU64::new(0),
            fell_behind: AtomicU64::new(0),
            subscribed_channels: AtomicU64::new(0),
            publish_latency: Mutex::new(None),
        }
    }

    /// One script call of `messages` messages took `rtt`.
    pub fn record_publish(&self, rtt: std::time::Duration, messages: u64) {
        if let Ok(mut h) = self.publish_latency.lock() {
            let _ = h.get_or_insert_with(new_latency_histogram).record_n((rtt.as_micros() as u64).max(1), messages);
        }
    }
}

/// A fresh latency histogram: 1 µs to 1 hour, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Metrics {
    pub fn new(shards: usize) -> Self {
        Self {
            // `swept_at_ms` 0 is the epoch: a shard that never sweeps is late one watchdog
            // interval after start.
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            messages_published: AtomicU64::new(0),
            publish_errors: Default::default(),
            publishers: AtomicUsize::new(0),
            frames_encoded: AtomicU64::new(0),
            compressions: AtomicU64::new(0),
            driver: OnceLock::new(),
            draining: AtomicBool::new(false),
            open_connections: AtomicUsize::new(0),
            ws_sockets: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(0),
            deflate_connections: AtomicUsize::new(0),
            envelope_connections: AtomicUsize::new(0),
            replays: AtomicU64::new(0),
            messages_replayed: AtomicU64::new(0),
            resumes_unsatisfied: Default::default(),
            live_resets: AtomicU64::new(0),
            publish_socket_trouble: Mutex::new(None),
            publish_socket_recreated: AtomicU64::new(0),
            peer_addresses: AtomicUsize::new(0),
            admin_unauthorized: AtomicU64::new(0),
            epoch: Instant::now(),
            redis: RedisMetrics::new(),
            channel_watch: Default::default(),
        }
    }

    /// Milliseconds since the metrics were made (the process started): one monotonic clock
    /// for every thread.
    pub fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records that `shard`'s sweep is running now: one relaxed store per sweep tick, by the
    /// shard's own thread.
    pub fn swept(&self, shard: usize) {
        self.shards[shard].swept_at_ms.store(self.clock_ms(), Relaxed);
    }

    /// How long ago `s`'s sweep last ran (before the first one: since the metrics were made).
    fn sweep_age(&self, s: &ShardMetrics) -> Duration {
        Duration::from_millis(self.clock_ms().saturating_sub(s.swept_at_ms.load(Relaxed)))
    }

    /// The shard whose sweep has not run for the longest, with how long, if that is over
    /// `limit`: a shard that is wedged (its thread blocked, or one task never yielding).
    pub fn late_shard(&self, limit: Duration) -> Option<(usize, Duration)> {
        let (id, age) = self.shards.iter().map(|s| self.sweep_age(s)).enumerate().max_by_key(|(_, age)| *age)?;
        (age > limit).then_some((id, age))
    }

    /// Every shard's delivery latency (µs, since start) merged into one histogram.
    pub fn delivery_latency(&self) -> Histogram<u64> {
        let mut total = new_latency_histogram();
        for s in &self.shards {
            if let Ok(guard) = s.latency.lock()
                && let Some(h) = guard.as_ref()
            {
                let _ = total.add(h);
            }
        }
        total
    }

    pub fn publish_error(&self, e: PublishError) {
        self.publish_errors[e as usize].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8 * 1024);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let per_shard = |o: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&ShardMetrics) -> u64| {
            head(o, name, kind, help);
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", f(s));
            }
        };
        per_shard(&mut o, "crier_connections", "gauge", "Open WebSocket connections.", &|s| {
            s.connections.load(Relaxed) as u64
        });
        head(
            &mut o,
            "crier_max_connections",
            "gauge",
            "Effective connection limit: --max-connections, or less where RLIMIT_NOFILE cannot hold it.",
        );
        let _ = writeln!(o, "crier_max_connections {}", self.max_connections.load(Relaxed));
        head(
            &mut o,
            "crier_handshakes_pending",
            "gauge",
            "Sockets accepted on the WebSocket port and not yet upgraded; they count against the limit.",
        );
        let pending = self.ws_sockets.load(Relaxed).saturating_sub(self.open_connections.load(Relaxed));
        let _ = writeln!(o, "crier_handshakes_pending {pending}");
        head(
            &mut o,
            "crier_peer_addresses",
            "gauge",
            "Client addresses tracked for the per-address limits (with connections, or refilling their handshake rate).",
        );
        let _ = writeln!(o, "crier_peer_addresses {}", self.peer_addresses.load(Relaxed));
        head(
            &mut o,
            "crier_shard_sweep_age_seconds",
            "gauge",
            "Time since the shard's sweep last ran; past the systemd watchdog interval, WATCHDOG=1 stops.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            let _ =
                writeln!(o, "crier_shard_sweep_age_seconds{{shard=\"{i}\"}} {:.3}", self.sweep_age(s).as_secs_f64());
        }
        per_shard(
            &mut o,
            "crier_shard_queue_bytes",
            "gauge",
            "Bytes of broadcasts waiting in the shard's queue; publishers wait above 64 MiB.",
            &|s| s.queued_bytes.load(Relaxed) as u64,
        );
        // The batch loop's passes and holds (`shard::flush`); their times are kept in µs.
        type Counter = fn(&ShardMetrics) -> &AtomicU64;
        let flush: [(&str, &str, Counter, f64); 4] = [
            ("crier_flush_passes_total", "Write passes of the batch loop.", |s| &s.flush_passes, 1.0),
            ("crier_flush_pass_seconds_total", "Time in those passes.", |s| &s.flush_pass_us, 1e6),
            ("crier_flush_holds_total", "Batches held before their pass.", |s| &s.flush_holds, 1.0),
            ("crier_flush_hold_seconds_total", "Time batches were held.", |s| &s.flush_hold_us, 1e6),
        ];
        for (name, help, counter, per_unit) in flush {
            head(&mut o, name, "counter", help);
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", counter(s).load(Relaxed) as f64 / per_unit);
            }
        }
        per_shard(&mut o, "crier_connections_accepted_total", "counter", "WebSocket upgrades completed.", &|s| {
            s.accepted.load(Relaxed)
        });
        head(&mut o, "crier_connections_refused_total", "counter", "Upgrades refused, by reason.");
        for r in RefuseReason::ALL {
            let v: u64 = self.shards.iter().map(|s| s.refused[*r as usize].load(Relaxed)).sum();
            let _ = writeln!(o, "crier_connections_refused_total{{reason=\"{}\"}} {v}", r.label());
        }
        head(&mut o, "crier_connections_closed_total", "counter", "Connections closed, by reason.");
        for r in CloseReason::ALL {
            let v: u64 = self.shards.iter().map(|s| s.closed[*r as usize].load(Relaxed)).sum();
            let _ = writeln!(o, "crier_connections_closed_total{{reason=\"{}\"}} {v}", r.label());
        }
        let slow: u64 = self.shards.iter().map(|s| s.closed[CloseReason::SlowConsumer as usize].load(Relaxed)).sum();
        head(
            &mut o,
            "crier_slow_consumer_closes_total",
            "counter",
            "Connections closed for passing --max-queue-bytes.",
        );
        let _ = writeln!(o, "crier_slow_consumer_closes_total {slow}");
        let client: u64 = self.shards.iter().map(|s| s.client_messages.load(Relaxed)).sum();
        head(&mut o, "crier_client_messages_total", "counter", "Data messages received from clients (discarded).");
        let _ = writeln!(o, "crier_client_messages_total {client}");

        head(&mut o, "crier_messages_published_total", "counter", "Publishes accepted.");
        let _ = writeln!(o, "crier_messages_published_total {}", self.messages_published.load(Relaxed));
        head(&mut o, "crier_publish_errors_total", "counter", "Publishes refused, by reason.");
        for e in PublishError::ALL {
            let _ = writeln!(
                o,
                "crier_publish_errors_total{{reason=\"{}\"}} {}",
                e.label(),
                self.publish_errors[*e as usize].load(Relaxed)
            );
        }
        head(&mut o, "crier_publishers", "gauge", "Connected publishers.");
        let _ = writeln!(o, "crier_publishers {}", self.publishers.load(Relaxed));
        let socket_up = self.publish_socket_trouble.lock().map_or(true, |t| t.is_none());
        head(
            &mut o,
            "crier_publish_socket_up",
            "gauge",
            "1 while the file at --publish-socket is crier's own socket, 0 while it is replaced or missing.",
        );
        let _ = writeln!(o, "crier_publish_socket_up {}", u8::from(socket_up));
        head(
            &mut o,
            "crier_publish_socket_recreated_total",
            "counter",
            "Times the publisher socket file was found deleted and recreated.",
        );
        let _ = writeln!(o, "crier_publish_socket_recreated_total {}", self.publish_socket_recreated.load(Relaxed));
        head(&mut o, "crier_frames_encoded_total", "counter", "Broadcast frames built (once per message).");
        let _ = writeln!(o, "crier_frames_encoded_total {}", self.frames_encoded.load(Relaxed));
        head(&mut o, "crier_compressions_total", "counter", "Broadcast payloads deflated (at most once per message).");
        let _ = writeln!(o, "crier_compressions_total {}", self.compressions.load(Relaxed));
        per_shard(&mut o, "crier_frames_written_total", "counter", "Frames fully written to sockets.", &|s| {
            s.frames_written.load(Relaxed)
        });
        head(&mut o, "crier_bytes_written_total", "counter", "Bytes written to WebSocket clients, by encoding.");
        let plain: u64 = self.shards.iter().map(|s| s.bytes_plain.load(Relaxed)).sum();
        let deflate: u64 = self.shards.iter().map(|s| s.bytes_deflate.load(Relaxed)).sum();
        let _ = writeln!(o, "crier_bytes_written_total{{encoding=\"plain\"}} {plain}");
        let _ = writeln!(o, "crier_bytes_written_total{{encoding=\"deflate\"}} {deflate}");

        head(
            &mut o,
            "crier_delivery_latency_seconds",
            "histogram",
            "Time from a publish being accepted to its frame being written to a socket.",
        );
        render_histogram(&mut o, "crier_delivery_latency_seconds", &self.delivery_latency());

        head(&mut o, "crier_replays_total", "counter", "Connections that got history replayed (since= or last=).");
        let _ = writeln!(o, "crier_replays_total {}", self.replays.load(Relaxed));
        head(&mut o, "crier_messages_replayed_total", "counter", "Messages sent from history.");
        let _ = writeln!(o, "crier_messages_replayed_total {}", self.messages_replayed.load(Relaxed));
        head(&mut o, "crier_resumes_unsatisfied_total", "counter", "Resumes history could not satisfy, by reason.");
        for (i, r) in ["gap", "reset"].iter().enumerate() {
            let _ = writeln!(
                o,
                "crier_resumes_unsatisfied_total{{reason=\"{r}\"}} {}",
                self.resumes_unsatisfied[i].load(Relaxed)
            );
        }
        head(
            &mut o,
            "crier_live_resets_total",
            "counter",
            "Reset notices sent to live crier.v1 subscribers when a channel's epoch changed (cluster mode).",
        );
        let _ = writeln!(o, "crier_live_resets_total {}", self.live_resets.load(Relaxed));
        head(
            &mut o,
            "crier_admin_unauthorized_total",
            "counter",
            "Admin requests refused 401 for a missing or wrong bearer token (--admin-token-file).",
        );
        let _ = writeln!(o, "crier_admin_unauthorized_total {}", self.admin_unauthorized.load(Relaxed));
        head(&mut o, "crier_driver", "gauge", "1 for the io driver in use.");
        let driver = self.driver.get().copied().unwrap_or("none");
        for d in ["io_uring", "epoll"] {
            let _ = writeln!(o, "crier_driver{{driver=\"{d}\"}} {}", u8::from(d == driver));
        }
        head(&mut o, "crier_draining", "gauge", "1 while shutting down.");
        let _ = writeln!(o, "crier_draining {}", u8::from(self.draining.load(Relaxed)));
        if self.redis.enabled.load(Relaxed) {
            self.render_redis(&mut o);
        }
        o
    }

    /// Cluster mode's families (only with --redis, so a single box's /metrics is unchanged).
    fn render_redis(&self, o: &mut String) {
        let r = &self.redis;
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "crier_redis_up",
            "gauge",
            "1 while connected to Redis (publishes accepted).",
            u64::from(r.up.load(Relaxed)),
        );
        one("crier_redis_reconnects_total", "counter", "Reconnect attempts to Redis.", r.reconnects.load(Relaxed));
        one(
            "crier_redis_repaired_messages_total",
            "counter",
            "Messages read back from Redis streams to fill gaps.",
            r.repaired.load(Relaxed),
        );
        one(
            "crier_redis_unrepairable_messages_total",
            "counter",
            "Missed messages Redis no longer held.",
            r.unrepairable.load(Relaxed),
        );
        one(
            "crier_redis_resume_fetched_messages_total",
            "counter",
            "Messages a resume read from Redis because local history lacked them.",
            r.resume_fetched.load(Relaxed),
        );
        one(
            "crier_redis_probes_failed_total",
            "counter",
            "Idle-subscription probes that did not come back (the subscription was restarted).",
            r.probes_failed.load(Relaxed),
        );
        one(
            "crier_redis_fell_behind_total",
            "counter",
            "Times the node could not keep up with Redis and re-subscribed, reading the streams.",
            r.fell_behind.load(Relaxed),
        );
        one(
            "crier_redis_subscribed_channels",
            "gauge",
            "Redis Cluster: channels this node is SSUBSCRIBEd to (those with local subscribers, the lingering ones, the broadcast channel).",
            r.subscribed_channels.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP crier_redis_publish_seconds Round trip of publish script calls, per message.\n# TYPE crier_redis_publish_seconds histogram"
        );
        let h = r.publish_latency.lock().ok().and_then(|g| g.clone()).unwrap_or_else(new_latency_histogram);
        render_histogram(o, "crier_redis_publish_seconds", &h);
    }
}

/// Writes the buckets, sum and count of a µs histogram as a Prometheus histogram in seconds.
fn render_histogram(o: &mut String, name: &str, h: &Histogram<u64>) {
    for b in LATENCY_BUCKETS {
        let us = (b * 1e6) as u64;
        let count = if h.is_empty() { 0 } else { h.count_between(0, us) };
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {count}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let sum = h.mean() * h.len() as f64 / 1e6;
    let _ = writeln!(o, "{name}_sum {sum}");
    let _ = writeln!(o, "{name}_count {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new(2);
        m.shards[1].accepted.fetch_add(3, Relaxed);
        m.shards[0].refused[RefuseReason::HandshakeTimeout as usize].fetch_add(1, Relaxed);
        let _ = m.driver.set("epoll");
        let mut h = new_latency_histogram();
        h.record(800).unwrap(); // 0.8 ms
        *m.shards[0].latency.lock().unwrap() = Some(h);
        let text = m.render();
        assert!(text.contains("crier_connections_accepted_total{shard=\"1\"} 3"));
        assert!(text.contains("crier_connections_refused_total{reason=\"handshake_timeout\"} 1"));
        assert!(text.contains("crier_driver{driver=\"epoll\"} 1"));
        assert!(text.contains("crier_driver{driver=\"io_uring\"} 0"));
        assert!(text.contains("crier_delivery_latency_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("crier_delivery_latency_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("crier_delivery_latency_seconds_count 1"));
        assert!(text.contains("crier_shard_sweep_age_seconds{shard=\"1\"} "));
    }

    #[test]
    fn late_shard_is_the_one_whose_sweep_is_oldest() {
        let m = Metrics::new(3);
        for i in 0..3 {
            m.swept(i);
        }
        assert_eq!(m.late_shard(Duration::from_secs(60)), None, "shards that just swept are not late");
        // Let the clock pass 10 ms, so that an age can exceed 1 ms.
        while m.clock_ms() < 10 {
            std::thread::yield_now();
        }
        // Shard 2 last swept at the epoch; shard 1 later, shard 0 now.
        m.shards[2].swept_at_ms.store(0, Relaxed);
        m.shards[1].swept_at_ms.store(5, Relaxed);
        let (id, age) = m.late_shard(Duration::from_millis(1)).expect("a late shard");
        assert_eq!(id, 2, "the oldest sweep is reported");
        assert!(age >= Duration::from_millis(10), "{age:?}");
        m.swept(2);
        m.swept(1);
        assert_eq!(m.late_shard(Duration::from_secs(60)), None, "all swept again");
    }

    #[test]
    fn every_reason_has_a_counter_and_a_label() {
        let m = Metrics::new(1);
        for r in RefuseReason::ALL {
            m.shards[0].refused[*r as usize].fetch_add(1, Relaxed);
        }
        for r in CloseReason::ALL {
            m.shards[0].closed[*r as usize].fetch_add(1, Relaxed);
        }
        for e in PublishError::ALL {
            m.publish_error(*e);
        }
        let text = m.render();
        for r in RefuseReason::ALL {
            assert!(text.contains(&format!("crier_connections_refused_total{{reason=\"{}\"}} 1", r.label())), "{r:?}");
        }
        for r in CloseReason::ALL {
            assert!(text.contains(&format!("reason=\"{}\"}} 1", r.label())), "{r:?}");
        }
        for e in PublishError::ALL {
            assert!(text.contains(&format!("crier_publish_errors_total{{reason=\"{}\"}} 1", e.label())), "{e:?}");
        }
    }
}

//! What workers send back, how their results merge, and the final report (table or JSON).

use crate::channels::ChannelsSummary;
use crate::progress::ProgressTick;
use crate::sys::{ProcSample, Sockstat};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Latencies are recorded in microseconds, up to an hour, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as `(value, count)` pairs: small, and exact to the histogram's precision.
pub fn hist_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a microsecond histogram, in milliseconds.
    pub fn from_us(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

// ---------------------------------------------------------------- worker → parent

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Connected(ConnectPhase),
    StormDone(StormPhase),
    Report(Box<WorkerReport>),
    /// Only when the parent shows a progress line.
    Progress(ProgressTick),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectPhase {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub first_attempt_ns: u64,
    pub last_ok_ns: u64,
    pub deflate_negotiated: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StormPhase {
    pub dropped: u64,
    pub back: u64,
    pub never_back: u64,
    pub failed_attempts: u64,
    pub failures: BTreeMap<String, u64>,
    pub drop_ns: u64,
    pub last_back_ns: u64,
    /// Per connection: drop → upgraded again, microseconds.
    pub reconnect_us: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerReport {
    pub index: u32,
    pub connections: u64,
    /// Connections subscribed when publishing started (after a storm: the ones back).
    pub subscribed: u64,
    pub open_at_end: u64,
    pub deliveries: u64,
    pub compressed_deliveries: u64,
    pub malformed: u64,
    pub unexpected_seq: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub connections_with_loss: u64,
    pub connections_with_duplicates: u64,
    pub connections_out_of_order: u64,
    pub max_lost_per_connection: u64,
    pub max_duplicated_per_connection: u64,
    pub max_out_of_order_per_connection: u64,
    /// Why connections ended before the run did: close code, `eof`, `io_error`, `protocol_error`.
    pub closed: BTreeMap<String, u64>,
    pub latency_us: Vec<(u64, u64)>,
    /// Per message (index seq-1): latest receipt in unix ns, and distinct receipts.
    pub last_recv_ns: Vec<u64>,
    pub recv_count: Vec<u32>,
    pub cpu_seconds: f64,
    /// Channels mode, per channel (index = channel): subscribed connections, and what they
    /// lost, got twice and got out of order on it.
    #[serde(default)]
    pub channel_subscribers: Vec<u64>,
    #[serde(default)]
    pub channel_lost: Vec<u64>,
    #[serde(default)]
    pub channel_duplicated: Vec<u64>,
    #[serde(default)]
    pub channel_out_of_order: Vec<u64>,
}

/// Sum of the workers' delivery accounting.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeliverySummary {
    pub published: u64,
    pub subscribed: u64,
    pub expected: u64,
    pub deliveries: u64,
    pub compressed_deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub connections_with_loss: u64,
    pub connections_with_duplicates: u64,
    pub connections_out_of_order: u64,
    pub max_lost_per_connection: u64,
    pub max_duplicated_per_connection: u64,
    pub max_out_of_order_per_connection: u64,
    pub malformed: u64,
    pub unexpected_seq: u64,
    pub messages_complete: u64,
    pub messages_incomplete: u64,
    /// Channels mode: messages to a channel nobody subscribed to (neither complete nor not).
    #[serde(default)]
    pub messages_unsubscribed: u64,
}

pub struct Merged {
    pub delivery: DeliverySummary,
    pub latency: Histogram<u64>,
    pub completion: Histogram<u64>,
    pub closed: BTreeMap<String, u64>,
    pub open_at_end: u64,
    pub cpu_seconds: f64,
}

/// Merges worker reports. `send_ns(seq)` is the publish timestamp of message `seq`;
/// channels mode: `schedule[seq - 1]` is its channel, which only that channel's
/// subscribers expect.
pub fn merge(
    reports: &[WorkerReport],
    published: u64,
    send_ns: impl Fn(u64) -> u64,
    schedule: Option<&[u32]>,
) -> Merged {
    let mut d = DeliverySummary { published, ..Default::default() };
    let mut latency = new_hist();
    let mut closed = BTreeMap::new();
    let mut open_at_end = 0;
    let mut cpu_seconds = 0.0;
    let n = published as usize;
    let mut last = vec![0u64; n];
    let mut count = vec![0u64; n];
    for r in reports {
        d.subscribed += r.subscribed;
        d.deliveries += r.deliveries;
        d.compressed_deliveries += r.compressed_deliveries;
        d.lost += r.lost;
        d.duplicated += r.duplicated;
        d.out_of_order += r.out_of_order;
        d.connections_with_loss += r.connections_with_loss;
        d.connections_with_duplicates += r.connections_with_duplicates;
        d.connections_out_of_order += r.connections_out_of_order;
        d.max_lost_per_connection = d.max_lost_per_connection.max(r.max_lost_per_connection);
        d.max_duplicated_per_connection = d.max_duplicated_per_connection.max(r.max_duplicated_per_connection);
        d.max_out_of_order_per_connection = d.max_out_of_order_per_connection.max(r.max_out_of_order_per_connection);
        d.malformed += r.malformed;
        d.unexpected_seq += r.unexpected_seq;
        add_pairs(&mut latency, &r.latency_us);
        for (k, v) in &r.closed {
            *closed.entry(k.clone()).or_insert(0) += v;
        }
        open_at_end += r.open_at_end;
        cpu_seconds += r.cpu_seconds;
        for (i, (&t, &c)) in r.last_recv_ns.iter().zip(&r.recv_count).take(n).enumerate() {
            last[i] = last[i].max(t);
            count[i] += u64::from(c);
        }
    }
    // Subscribers per channel, summed over the workers (channels mode).
    let mut subs: Vec<u64> = Vec::new();
    for r in reports {
        if subs.len() < r.channel_subscribers.len() {
            subs.resize(r.channel_subscribers.len(), 0);
        }
        for (s, v) in subs.iter_mut().zip(&r.channel_subscribers) {
            *s += v;
        }
    }
    let wanted = |i: usize| -> u64 {
        match schedule {
            Some(s) => s.get(i).and_then(|&c| subs.get(c as usize)).copied().unwrap_or(0),
            None => d.subscribed,
        }
    };
    d.expected = (0..n).map(wanted).sum();
    let mut completion = new_hist();
    if d.subscribed > 0 {
        for i in 0..n {
            let want = wanted(i);
            if want == 0 {
                d.messages_unsubscribed += 1;
            } else if count[i] >= want {
                d.messages_complete += 1;
                let us = last[i].saturating_sub(send_ns(i as u64 + 1)) / 1000;
                completion.saturating_record(us.max(1));
            } else {
                d.messages_incomplete += 1;
            }
        }
    }
    Merged { delivery: d, latency, completion, closed, open_at_end, cpu_seconds }
}

pub fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

// ---------------------------------------------------------------- final report

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnSummary {
    pub requested: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub connect_seconds: f64,
    pub connect_rate: f64,
    pub deflate_negotiated: u64,
    pub open_at_end: u64,
    pub closed_early: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SocketSummary {
    pub path: String,
    pub written: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub max_lag_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishSummary {
    pub channel: String,
    pub binary: bool,
    pub size: usize,
    pub planned: u64,
    pub published: u64,
    pub rate_target: f64,
    pub rate_achieved: f64,
    pub seconds: f64,
    pub sockets: Vec<SocketSummary>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSummary {
    pub pid: u32,
    pub before: Option<ProcSample>,
    pub publish_start: Option<ProcSample>,
    pub after: Option<ProcSample>,
    pub rss_delta_bytes: Option<i64>,
    pub cpu_delta_seconds: Option<f64>,
    /// CPU from the start of publishing (all connected; after a storm: all back) to the end.
    pub cpu_publish_phase_seconds: Option<f64>,
    /// The same for the shard threads alone (`crier-shard-*`), when the server has them.
    pub shard_cpu_publish_phase_seconds: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SockstatSummary {
    pub page_size: u64,
    pub before: Option<Sockstat>,
    pub after: Option<Sockstat>,
    pub tcp_mem_bytes_before: Option<u64>,
    pub tcp_mem_bytes_after: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakSample {
    pub t_seconds: f64,
    /// One per `--server-pid`, in order; 0 if it could not be read.
    pub rss_bytes: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakSummary {
    pub interval_seconds: f64,
    pub samples: Vec<SoakSample>,
    /// Least-squares RSS slope per `--server-pid`, bytes per hour.
    pub rss_slope_bytes_per_hour: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormSummary {
    pub dropped: u64,
    pub back: u64,
    pub never_back: u64,
    pub failed_attempts: u64,
    pub failures: BTreeMap<String, u64>,
    pub seconds_until_all_back: Option<f64>,
    pub reconnect_ms: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleSummary {
    pub connections: u64,
    pub hold_seconds: f64,
    pub rss_growth_bytes: Option<i64>,
    pub rss_bytes_per_connection: Option<f64>,
    pub kernel_tcp_mem_bytes_per_connection: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub url: String,
    pub procs: u32,
    pub src_ips: u32,
    pub deflate: bool,
    pub channels: Vec<String>,
    pub connections: ConnSummary,
    pub publish: Option<PublishSummary>,
    pub delivery: Option<DeliverySummary>,
    pub latency_ms: Option<Percentiles>,
    pub completion_ms: Option<Percentiles>,
    pub servers: Vec<ServerSummary>,
    pub deliveries_per_server_cpu_second: Option<f64>,
    /// Deliveries per CPU-second of the servers' shard threads alone (crier's `crier-shard-*`).
    pub deliveries_per_shard_cpu_second: Option<f64>,
    /// With several `--server-pid`s: their RSS summed, at the end (connections still open).
    pub servers_rss_total_after_bytes: Option<u64>,
    pub sockstat: SockstatSummary,
    pub soak: Option<SoakSummary>,
    pub storm: Option<StormSummary>,
    pub idle: Option<IdleSummary>,
    /// Channels mode: subscriptions, spread, and loss/duplicates/disorder per channel.
    pub channel_accounting: Option<ChannelsSummary>,
    pub tool_cpu_seconds: f64,
    pub elapsed_seconds: f64,
    pub timed_out: bool,
    /// Everything that deviates from a clean run; empty means clean.
    pub problems: Vec<String>,
}

impl Report {
    /// Fills `problems` from the numbers.
    pub fn find_problems(&mut self) {
        let mut p = Vec::new();
        let c = &self.connections;
        if c.failed > 0 {
            p.push(format!("{} connections failed: {:?}", c.failed, c.failures));
        }
        if !c.closed_early.is_empty() {
            p.push(format!("connections ended early: {:?}", c.closed_early));
        }
        if let Some(d) = &self.delivery {
            if d.lost > 0 {
                p.push(format!("{} messages lost on {} connections", d.lost, d.connections_with_loss));
            }
            if d.duplicated > 0 {
                p.push(format!("{} duplicated messages", d.duplicated));
            }
            if d.out_of_order > 0 {
                p.push(format!("{} messages out of order", d.out_of_order));
            }
            if d.malformed + d.unexpected_seq > 0 {
                p.push(format!("{} malformed and {} unexpected messages", d.malformed, d.unexpected_seq));
            }
        }
        if let Some(pb) = &self.publish {
            for s in &pb.sockets {
                if s.errors > 0 || s.error.is_some() || s.acked < s.written {
                    p.push(format!(
                        "publisher {}: {} written, {} acked, {} refused {:?} {}",
                        s.path,
                        s.written,
                        s.acked,
                        s.errors,
                        s.first_errors,
                        s.error.as_deref().unwrap_or("")
                    ));
                }
            }
            if pb.published < pb.planned {
                p.push(format!("published {} of {} planned messages", pb.published, pb.planned));
            }
        }
        if let Some(s) = &self.storm
            && s.never_back > 0
        {
            p.push(format!("{} connections never came back after the storm", s.never_back));
        }
        if self.timed_out {
            p.push("run hit --timeout".into());
        }
        self.problems = p;
    }
}

#[path = "report_render.rs"]
mod render;
#[cfg(test)]
use render::{fmt_bytes, fmt_signed_bytes};

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;

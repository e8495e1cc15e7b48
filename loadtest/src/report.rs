//! What workers send back, how their results merge, and the final report (table or JSON).

use crate::channels::ChannelsSummary;
use crate::progress::ProgressTick;
use crate::sys::{ProcSample, Sockstat};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

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

    pub fn render(&self) -> String {
        let mut o = String::new();
        let w = &mut o;
        let _ = writeln!(
            w,
            "crier-load  mode={}  url={}  procs={}  src-ips={}{}",
            self.mode,
            self.url,
            self.procs,
            self.src_ips,
            if self.deflate { "  deflate" } else { "" }
        );
        let c = &self.connections;
        let _ = writeln!(
            w,
            "{:<24}{} ok, {} failed of {} ({:.0}/s over {:.2} s){}",
            "connections",
            c.ok,
            c.failed,
            c.requested,
            c.connect_rate,
            c.connect_seconds,
            if self.deflate { format!(", {} with permessage-deflate", c.deflate_negotiated) } else { String::new() }
        );
        if !c.failures.is_empty() {
            let _ = writeln!(w, "{:<24}{}", "  failures", fmt_counts(&c.failures));
        }
        if !c.closed_early.is_empty() {
            let _ = writeln!(w, "{:<24}{}", "  ended early", fmt_counts(&c.closed_early));
        }
        if let Some(s) = &self.storm {
            let _ = writeln!(
                w,
                "{:<24}{} dropped, {} back, {} never back, {} failed attempts, all back after {}",
                "storm",
                s.dropped,
                s.back,
                s.never_back,
                s.failed_attempts,
                s.seconds_until_all_back.map_or("-".into(), |t| format!("{t:.3} s"))
            );
            if !s.failures.is_empty() {
                let _ = writeln!(w, "{:<24}{}", "  failures", fmt_counts(&s.failures));
            }
            let _ = writeln!(w, "{:<24}{}", "  reconnect ms", fmt_pct(&s.reconnect_ms));
        }
        if let Some(p) = &self.publish {
            let _ = writeln!(
                w,
                "{:<24}{} of {} msgs, {} B {} to '{}', {:.1}/s (target {}/s) over {:.2} s, {} socket(s)",
                "published",
                p.published,
                p.planned,
                p.size,
                if p.binary { "binary" } else { "text" },
                p.channel,
                p.rate_achieved,
                p.rate_target,
                p.seconds,
                p.sockets.len()
            );
            for s in &p.sockets {
                let _ = writeln!(
                    w,
                    "{:<24}{}: written {}, acked {}, refused {}, max lag behind schedule {:.2} ms{}",
                    "",
                    s.path,
                    s.written,
                    s.acked,
                    s.errors,
                    s.max_lag_ms,
                    s.error.as_ref().map_or(String::new(), |e| format!(", error: {e}"))
                );
            }
        }
        if let Some(d) = &self.delivery {
            let how = if self.channel_accounting.is_some() {
                format!("{} connections; each of {} messages to its channel's subscribers", d.subscribed, d.published)
            } else {
                format!("{} subscribers × {} messages", d.subscribed, d.published)
            };
            let _ = writeln!(
                w,
                "{:<24}{} of {} expected ({how}){}",
                "deliveries",
                d.deliveries,
                d.expected,
                if d.compressed_deliveries > 0 {
                    format!(", {} compressed", d.compressed_deliveries)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                w,
                "{:<24}lost {} / duplicated {} / out of order {}  (connections affected {} / {} / {}; worst {} / {} / {})",
                "accounting",
                d.lost,
                d.duplicated,
                d.out_of_order,
                d.connections_with_loss,
                d.connections_with_duplicates,
                d.connections_out_of_order,
                d.max_lost_per_connection,
                d.max_duplicated_per_connection,
                d.max_out_of_order_per_connection
            );
            if d.malformed + d.unexpected_seq > 0 {
                let _ = writeln!(
                    w,
                    "{:<24}{} malformed, {} unexpected sequence numbers",
                    "", d.malformed, d.unexpected_seq
                );
            }
        }
        if let Some(c) = &self.channel_accounting {
            c.render(w);
        }
        if let Some(l) = &self.latency_ms {
            let _ = writeln!(w, "{:<24}{}", "latency ms", fmt_pct(l));
        }
        if let Some(l) = &self.completion_ms {
            let d = self.delivery.as_ref();
            let _ = writeln!(
                w,
                "{:<24}{}  ({} complete, {} incomplete)",
                "completion ms",
                fmt_pct(l),
                d.map_or(0, |d| d.messages_complete),
                d.map_or(0, |d| d.messages_incomplete)
            );
        }
        for s in &self.servers {
            if let Some(e) = &s.error {
                let _ = writeln!(w, "{:<24}{e}", format!("server {}", s.pid));
                continue;
            }
            let (Some(b), Some(a)) = (s.before, s.after) else {
                continue;
            };
            let _ = writeln!(
                w,
                "{:<24}rss {} → {} ({}), cpu {:.2} → {:.2} s (+{:.2} s{})",
                format!("server {}", s.pid),
                fmt_bytes(b.rss_bytes as f64),
                fmt_bytes(a.rss_bytes as f64),
                fmt_signed_bytes(s.rss_delta_bytes.unwrap_or(0)),
                b.cpu_seconds,
                a.cpu_seconds,
                s.cpu_delta_seconds.unwrap_or(0.0),
                s.cpu_publish_phase_seconds.map_or(String::new(), |c| format!(", {c:.2} s while publishing"))
                    + &s.shard_cpu_publish_phase_seconds.map_or(String::new(), |c| format!(", shards {c:.2} s"))
            );
        }
        if let Some(t) = self.servers_rss_total_after_bytes {
            let _ = writeln!(
                w,
                "{:<24}rss {} at the end, {} servers",
                "servers total",
                fmt_bytes(t as f64),
                self.servers.len()
            );
        }
        if let Some(r) = self.deliveries_per_server_cpu_second {
            let _ = writeln!(w, "{:<24}{:.0}", "deliveries/server-cpu-s", r);
        }
        if let Some(r) = self.deliveries_per_shard_cpu_second {
            let _ = writeln!(w, "{:<24}{:.0}", "deliveries/shard-cpu-s", r);
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(
                w,
                "{:<24}{} connections held {:.0} s: server rss growth {}, {} per connection; kernel TCP memory {} per connection",
                "idle",
                i.connections,
                i.hold_seconds,
                i.rss_growth_bytes.map_or("-".into(), fmt_signed_bytes),
                i.rss_bytes_per_connection.map_or("-".into(), |b| format!("{b:.0} B")),
                i.kernel_tcp_mem_bytes_per_connection.map_or("-".into(), |b| format!("{b:.0} B"))
            );
        }
        if let Some(s) = &self.soak {
            let _ = writeln!(
                w,
                "{:<24}{} samples every {:.0} s; rss slope {}",
                "soak",
                s.samples.len(),
                s.interval_seconds,
                s.rss_slope_bytes_per_hour
                    .iter()
                    .map(|v| v.map_or("-".into(), |b| format!("{}/h", fmt_signed_bytes(b as i64))))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for smp in &s.samples {
                let _ = writeln!(
                    w,
                    "{:<24}t={:>8.1} s  rss {}",
                    "",
                    smp.t_seconds,
                    smp.rss_bytes.iter().map(|b| fmt_bytes(*b as f64)).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let ss = &self.sockstat;
        if let (Some(b), Some(a)) = (ss.before, ss.after) {
            let _ = writeln!(
                w,
                "{:<24}TCP mem {} → {} pages ({} → {}), inuse {} → {}",
                "sockstat",
                b.tcp_mem_pages,
                a.tcp_mem_pages,
                fmt_bytes((b.tcp_mem_pages * ss.page_size) as f64),
                fmt_bytes((a.tcp_mem_pages * ss.page_size) as f64),
                b.tcp_inuse,
                a.tcp_inuse
            );
        }
        let _ =
            writeln!(w, "{:<24}{:.2} s elapsed, tool cpu {:.2} s", "run", self.elapsed_seconds, self.tool_cpu_seconds);
        if self.problems.is_empty() {
            let _ = writeln!(w, "{:<24}none", "problems");
        } else {
            for p in &self.problems {
                let _ = writeln!(w, "{:<24}{p}", "PROBLEM");
            }
        }
        o
    }
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

fn fmt_pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
        p.p50, p.p90, p.p99, p.p99_9, p.max, p.count
    )
}

pub fn fmt_bytes(b: f64) -> String {
    let a = b.abs();
    if a >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if a >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if a >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_signed_bytes(b: i64) -> String {
    if b >= 0 { format!("+{}", fmt_bytes(b as f64)) } else { format!("-{}", fmt_bytes(-b as f64)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(subscribed: u64, lat: &[u64], last: Vec<u64>, count: Vec<u32>) -> WorkerReport {
        let mut h = new_hist();
        for &v in lat {
            h.record(v).unwrap();
        }
        WorkerReport {
            subscribed,
            deliveries: lat.len() as u64,
            latency_us: hist_to_pairs(&h),
            last_recv_ns: last,
            recv_count: count,
            ..Default::default()
        }
    }

    #[test]
    fn histogram_pairs_roundtrip() {
        let mut h = new_hist();
        for v in [1u64, 5, 5, 999, 1000, 1001, 123_456, 3_000_000] {
            h.record(v).unwrap();
        }
        let mut back = new_hist();
        add_pairs(&mut back, &hist_to_pairs(&h));
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
        // survives JSON
        let json = serde_json::to_string(&hist_to_pairs(&h)).unwrap();
        let pairs: Vec<(u64, u64)> = serde_json::from_str(&json).unwrap();
        assert_eq!(pairs, hist_to_pairs(&h));
    }

    #[test]
    fn merge_sums_and_completion_takes_latest_receipt() {
        // 3 messages sent at t = 1000, 2000, 3000 µs (in ns: ×1000).
        let send = |seq: u64| seq * 1_000_000;
        let a = WorkerReport {
            lost: 1,
            connections_with_loss: 1,
            max_lost_per_connection: 1,
            closed: [("1008".to_string(), 1)].into(),
            cpu_seconds: 0.5,
            open_at_end: 1,
            ..worker(2, &[100, 200, 300, 400, 500], vec![1_500_000, 2_100_000, 3_050_000], vec![2, 2, 1])
        };
        let b = WorkerReport {
            duplicated: 2,
            connections_with_duplicates: 1,
            max_duplicated_per_connection: 2,
            closed: [("1008".to_string(), 2)].into(),
            cpu_seconds: 0.25,
            open_at_end: 1,
            ..worker(1, &[1000, 2000, 3000], vec![1_200_000, 2_900_000, 3_100_000], vec![1, 1, 1])
        };
        let m = merge(&[a, b], 3, send, None);
        let d = &m.delivery;
        assert_eq!(d.subscribed, 3);
        assert_eq!(d.expected, 9);
        assert_eq!(d.deliveries, 8);
        assert_eq!(d.lost, 1);
        assert_eq!(d.duplicated, 2);
        assert_eq!(d.connections_with_loss, 1);
        assert_eq!(d.max_duplicated_per_connection, 2);
        assert_eq!(m.latency.len(), 8);
        assert_eq!(m.latency.max(), m.latency.highest_equivalent(3000));
        assert_eq!(m.closed["1008"], 3);
        assert_eq!(m.open_at_end, 2);
        assert!((m.cpu_seconds - 0.75).abs() < 1e-9);
        // message 1: last receipt 1.5 ms − 1 ms = 500 µs; message 2: 2.9 − 2 = 900 µs;
        // message 3 reached only 2 of 3 subscribers.
        assert_eq!(d.messages_complete, 2);
        assert_eq!(d.messages_incomplete, 1);
        assert_eq!(m.completion.len(), 2);
        assert_eq!(m.completion.min(), 500);
        assert_eq!(m.completion.max(), m.completion.highest_equivalent(900));
    }

    #[test]
    fn merge_of_nothing() {
        let m = merge(&[], 0, |_| 0, None);
        assert_eq!(m.delivery.expected, 0);
        assert!(m.latency.is_empty());
        let p = Percentiles::from_us(&m.latency);
        assert_eq!(p.count, 0);
    }

    #[test]
    fn events_roundtrip_as_json_lines() {
        let e = WorkerEvent::Connected(ConnectPhase {
            ok: 5,
            failed: 1,
            failures: [("refused".to_string(), 1)].into(),
            ..Default::default()
        });
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.starts_with("{\"event\":\"connected\""));
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), e);
        let r = WorkerEvent::Report(Box::new(worker(1, &[5], vec![1], vec![1])));
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), r);
    }

    #[test]
    fn problems_and_rendering() {
        let mut r = Report {
            mode: "broadcast".into(),
            url: "ws://127.0.0.1:1/ws".into(),
            connections: ConnSummary {
                requested: 10,
                ok: 9,
                failed: 1,
                failures: [("http_503".to_string(), 1)].into(),
                ..Default::default()
            },
            delivery: Some(DeliverySummary { lost: 3, connections_with_loss: 1, ..Default::default() }),
            latency_ms: Some(Percentiles { count: 1, p50: 1.0, ..Default::default() }),
            ..Default::default()
        };
        r.find_problems();
        assert_eq!(r.problems.len(), 2);
        let t = r.render();
        assert!(t.contains("9 ok, 1 failed of 10"));
        assert!(t.contains("http_503: 1"));
        assert!(t.contains("lost 3"));
        assert!(t.contains("PROBLEM"));
        let mut clean = Report::default();
        clean.find_problems();
        assert!(clean.problems.is_empty());
        assert!(clean.render().contains("problems"));
    }

    #[test]
    fn bytes_format() {
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(2048.0), "2.0 KiB");
        assert_eq!(fmt_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(fmt_signed_bytes(-2048), "-2.0 KiB");
    }
}

//! The report as a table (`Report::render`) and its number formats.

use super::{Percentiles, Report};
use std::collections::BTreeMap;
use std::fmt::Write as _;

impl Report {
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

pub(super) fn fmt_bytes(b: f64) -> String {
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

pub(super) fn fmt_signed_bytes(b: i64) -> String {
    if b >= 0 { format!("+{}", fmt_bytes(b as f64)) } else { format!("-{}", fmt_bytes(-b as f64)) }
}

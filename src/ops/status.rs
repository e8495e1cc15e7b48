//! `crier status`: asks a running crier's admin port (`/healthz`, then `/stats`) and prints
//! the status page's summary as a table; `--watch` redraws it in place every second.
//!
//! A plain blocking HTTP/1.1 client over `std::net::TcpStream` (the admin port answers one
//! request per connection and closes): no runtime, no new dependency. The exit code says
//! how crier is, so scripts and health checks can use it ([`Exit`], README "Status page
//! and `crier status`").

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::StatusArgs;
use crate::ops::stats::{Percentiles, Stats};

/// How long one request may take, connect included.
const TIMEOUT: Duration = Duration::from_secs(3);
/// `--watch` refresh period.
const REFRESH: Duration = Duration::from_secs(1);
/// Largest response read (a /stats document is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// The exit codes (README lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Healthy = 0,
    /// Bad arguments or an unreadable --token-file.
    Usage = 2,
    /// Nothing answers at --admin, or not an admin port.
    Unreachable = 3,
    /// `/healthz` is not 200 (publisher socket gone, …), and not for a reason below.
    Unhealthy = 4,
    Draining = 5,
    /// Cluster mode and Redis is down.
    RedisDown = 6,
    /// `/stats` answered 401: --token-file missing or wrong.
    Unauthorized = 7,
}

pub fn run(args: &StatusArgs) -> ExitCode {
    let token = match &args.token_file {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(String::from_utf8_lossy(b.trim_ascii()).into_owned()),
            Err(e) => {
                eprintln!("crier status: --token-file {}: cannot read: {e}", p.display());
                return ExitCode::from(Exit::Usage as u8);
            }
        },
        None => None,
    };
    let addr = match admin_addr(&args.admin) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crier status: --admin {}: {e}", args.admin);
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    if !args.watch {
        let (exit, out) = once(&addr, token.as_deref(), args.json, None);
        print!("{out}");
        return ExitCode::from(exit as u8);
    }
    let mut prev: Option<(Instant, Stats)> = None;
    let mut n = 0u64;
    loop {
        let started = Instant::now();
        let (exit, out, stats) = refresh(&addr, token.as_deref(), prev.as_ref());
        // Home, clear, then the table: redrawn in place.
        print!("\x1b[H\x1b[2J{out}");
        let _ = std::io::stdout().flush();
        prev = stats.map(|s| (started, s));
        n += 1;
        if args.watch_count.is_some_and(|c| n >= c) {
            return ExitCode::from(exit as u8);
        }
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

/// One look: the exit code and what to print.
fn once(addr: &str, token: Option<&str>, json: bool, prev: Option<&(Instant, Stats)>) -> (Exit, String) {
    if json {
        return match get(addr, "/stats", token) {
            Ok((200, body)) => (judge(body_stats(&body).as_ref(), None), format!("{body}\n")),
            Ok((401, _)) => (Exit::Unauthorized, unauthorized(addr)),
            Ok((code, body)) => (Exit::Unreachable, format!("crier status: {addr}/stats answered {code}: {body}\n")),
            Err(e) => (Exit::Unreachable, format!("crier status: {e}\n")),
        };
    }
    let (exit, out, _) = refresh(addr, token, prev);
    (exit, out)
}

fn body_stats(body: &str) -> Option<Stats> {
    serde_json::from_str(body).ok()
}

/// Asks `/healthz` and `/stats`; returns the exit code, the table and the document.
fn refresh(addr: &str, token: Option<&str>, prev: Option<&(Instant, Stats)>) -> (Exit, String, Option<Stats>) {
    let healthz = match get(addr, "/healthz", None) {
        Ok(r) => r,
        Err(e) => return (Exit::Unreachable, format!("crier status: {e}\n"), None),
    };
    let stats = match get(addr, "/stats", token) {
        Ok((200, body)) => match serde_json::from_str::<Stats>(&body) {
            Ok(s) => s,
            Err(e) => return (Exit::Unreachable, format!("crier status: {addr}/stats is not crier's: {e}\n"), None),
        },
        Ok((401, _)) => return (Exit::Unauthorized, unauthorized(addr), None),
        Ok((code, body)) => {
            let why = body.trim();
            return (Exit::Unreachable, format!("crier status: {addr}/stats answered {code}: {why}\n"), None);
        }
        Err(e) => return (Exit::Unreachable, format!("crier status: {e}\n"), None),
    };
    let exit = judge(Some(&stats), Some(healthz.0));
    let mut out = table(&stats, prev);
    let _ = writeln!(out, "healthz    {} {}", healthz.0, healthz.1.trim());
    (exit, out, Some(stats))
}

/// The exit code for a document (and the /healthz status, when asked).
fn judge(stats: Option<&Stats>, healthz: Option<u16>) -> Exit {
    let Some(s) = stats else { return Exit::Unreachable };
    if s.health.draining {
        Exit::Draining
    } else if s.redis.as_ref().is_some_and(|r| !r.up) {
        Exit::RedisDown
    } else if !s.health.ok || healthz.is_some_and(|c| c != 200) {
        Exit::Unhealthy
    } else {
        Exit::Healthy
    }
}

fn unauthorized(addr: &str) -> String {
    format!("crier status: {addr} needs its admin token: --token-file <the server's --admin-token-file>\n")
}

/// `http://HOST:PORT[/]` or `HOST:PORT` → `HOST:PORT`.
fn admin_addr(url: &str) -> Result<String, String> {
    if url.starts_with("https://") {
        return Err("https is not supported: the admin port speaks plain HTTP (put TLS in front of it)".into());
    }
    let rest = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err("expected http://HOST:PORT (the server's --admin-listen)".into());
    }
    Ok(rest.to_string())
}

/// `GET path` on `addr`: the status code and body.
fn get(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(|e| format!("{addr}: cannot connect: {e}"))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if buf.len() + n <= MAX_RESPONSE => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err(format!("{addr}{path}: response over {MAX_RESPONSE} bytes")),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{addr}{path}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}{path}: not an HTTP response"))?;
    let code = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: not an HTTP response"))?;
    Ok((code, body.to_string()))
}

/// The summary, as the status page shows it. Rates need a previous document (`--watch`).
pub fn table(s: &Stats, prev: Option<&(Instant, Stats)>) -> String {
    let dt = prev.map_or(0.0, |(_, p)| s.uptime_seconds - p.uptime_seconds);
    let rate = |now: u64, then: &dyn Fn(&Stats) -> u64| -> String {
        match prev {
            Some((_, p)) if dt > 0.0 => format!("  ({:.1}/s)", now.saturating_sub(then(p)) as f64 / dt),
            _ => String::new(),
        }
    };
    let mut o = String::new();
    let health =
        if s.health.ok { "ok".to_string() } else { s.health.reason.clone().unwrap_or_else(|| "not ok".into()) };
    let _ = writeln!(
        o,
        "crier {}  driver {}  uptime {}  health {health}",
        s.version,
        s.driver,
        humantime::format_duration(Duration::from_secs(s.uptime_seconds as u64))
    );
    let c = &s.settings;
    let _ = writeln!(
        o,
        "settings   shards {}  max-connections {}  max-queue-bytes {}  flush-delay {}  deflate {}  cluster {}",
        c.shards,
        c.max_connections,
        c.max_queue_bytes,
        c.flush_delay,
        if c.deflate { "on" } else { "off" },
        c.cluster
    );
    let shards: Vec<String> = s.connections.per_shard.iter().enumerate().map(|(i, n)| format!("{i}:{n}")).collect();
    let _ = writeln!(
        o,
        "conns      {} / {}  per shard {}  pending {}",
        s.connections.total,
        s.connections.max,
        shards.join(" "),
        s.connections.handshakes_pending
    );
    let _ = writeln!(o, "connects   {}{}", s.connects_total, rate(s.connects_total, &|p| p.connects_total));
    let refused: Vec<String> =
        s.refusals_total.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(o, "refused    {}", if refused.is_empty() { "none".into() } else { refused.join("  ") });
    let errors: u64 = s.publish_errors_total.values().sum();
    let _ = writeln!(
        o,
        "publishes  {}{}  errors {errors}  publishers {}",
        s.publishes_total,
        rate(s.publishes_total, &|p| p.publishes_total),
        s.publishers
    );
    let _ = writeln!(o, "deliveries {}{}", s.deliveries_total, rate(s.deliveries_total, &|p| p.deliveries_total));
    let _ = writeln!(
        o,
        "latency    last {:.0}s: {}  since start: {}",
        s.latency.window_seconds,
        pcts(&s.latency.recent),
        pcts(&s.latency.total)
    );
    let _ = writeln!(
        o,
        "slow       {}{}",
        s.slow_consumer_closes_total,
        rate(s.slow_consumer_closes_total, &|p| p.slow_consumer_closes_total)
    );
    let b = &s.bytes_written_total;
    let _ = writeln!(
        o,
        "bytes      plain {}{}  deflate {}{}",
        b.plain,
        rate(b.plain, &|p| p.bytes_written_total.plain),
        b.deflate,
        rate(b.deflate, &|p| p.bytes_written_total.deflate)
    );
    if let Some(r) = &s.redis {
        let _ = writeln!(
            o,
            "redis      {} {}  reconnects {}  repaired {}  unrepairable {}  fell-behind {}  publish {}",
            r.mode,
            if r.up { "up" } else { "DOWN" },
            r.reconnects_total,
            r.repaired_messages_total,
            r.unrepairable_messages_total,
            r.fell_behind_total,
            pcts(&r.publish_latency)
        );
    }
    let _ = writeln!(o, "channels   {} tallied", s.channels.tallied);
    let _ = writeln!(o, "  {:<32} {:>11} {:>12} {:>9}", "CHANNEL", "SUBSCRIBERS", "MESSAGES", "MSG/S");
    for ch in &s.channels.busiest {
        let _ = writeln!(
            o,
            "  {:<32} {:>11} {:>12} {:>9.1}",
            ch.name, ch.subscribers, ch.messages_total, ch.messages_per_second
        );
    }
    o
}

fn pcts(p: &Percentiles) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |us| format!("{:.3}ms", us as f64 / 1000.0));
    format!("p50 {} p99 {}", ms(p.p50_us), ms(p.p99_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        assert_eq!(admin_addr("http://127.0.0.1:9100/").unwrap(), "127.0.0.1:9100");
        assert_eq!(admin_addr("localhost:9100").unwrap(), "localhost:9100");
        assert!(admin_addr("https://x:1").unwrap_err().contains("https"));
        assert!(admin_addr("http://x:1/stats").is_err());
        assert!(admin_addr("x").is_err());
    }
}

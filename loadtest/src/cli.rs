//! Command line, validation, and the plan handed to workers.

use crate::channels::{ChannelSpec, Distribution};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A worker process holds at most this many sockets (the machine's hard limit is 20,000
/// open files per process; the rest is headroom for the runtime and pipes).
pub const MAX_SOCKETS_PER_WORKER: u64 = 19_000;
pub const MAX_PROCS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Connect, publish at --rate for --duration/--count, account every delivery.
    Broadcast,
    /// Long, low-rate broadcast; samples server RSS every --sample-interval.
    Soak,
    /// Connect, then every client drops and reconnects at once; then a short broadcast.
    Storm,
    /// Connect and hold for --duration; server RSS growth per connection.
    Idle,
    /// Many channels: each connection on --channels-per-conn of --channel-count channels,
    /// messages spread over them; every delivery accounted per channel.
    Channels,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Soak => "soak",
            Mode::Storm => "storm",
            Mode::Idle => "idle",
            Mode::Channels => "channels",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "crier-load",
    version,
    about = "Load-test tool for crier: many WebSocket subscribers over several processes and \
             source addresses, a publisher on a fixed timetable, one merged report.",
    after_help = "Modes: broadcast (default), soak, storm, idle, channels. See loadtest/README.md.\n\
                  Exit status: 0 clean run, 2 run completed with problems (failures, loss, \
                  duplicates, disorder, refusals), 1 could not run or hit --timeout."
)]
pub struct Cli {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Broadcast)]
    pub mode: Mode,

    /// crier's WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// WebSocket connections to open (0: publish only) [default: 1000; channels: 10000].
    #[arg(short = 'n', long)]
    pub connections: Option<u64>,

    /// New connections per second, over all workers.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,

    /// Source addresses 127.0.0.1 … 127.0.0.K to spread connections over (~28k ports each).
    #[arg(long, default_value_t = 1)]
    pub src_ips: u32,

    /// Worker processes holding the connections (each at most 19,000).
    #[arg(long, default_value_t = 1)]
    pub procs: u32,

    /// Offer permessage-deflate and inflate compressed messages.
    #[arg(long)]
    pub deflate: bool,

    /// Channels to subscribe to (comma-separated); default only the broadcast channel `*`.
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,

    /// Channel to publish to [default: the first of --channels, else `*`].
    #[arg(long)]
    pub publish_channel: Option<String>,

    /// crier's publisher Unix socket; repeat to publish every message to several crier
    /// processes [default: crier's, $XDG_RUNTIME_DIR/crier/publish.sock, else
    /// $TMPDIR/crier-<uid>/publish.sock].
    #[arg(long = "publish-socket", value_name = "PATH")]
    pub publish_sockets: Vec<PathBuf>,

    /// Messages per second, in total [default: 100; soak: 10; channels: 2000].
    #[arg(long)]
    pub rate: Option<f64>,

    /// Payload size in bytes (header `seq,unix_nanos,` padded with `x`).
    #[arg(long, default_value_t = 256)]
    pub size: usize,

    /// Publish binary frames instead of text.
    #[arg(long)]
    pub binary: bool,

    /// How long to publish (idle: how long to hold) [default: 10s; soak: 5m].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Publish exactly this many messages instead of --duration [storm default: 10].
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Server process to measure (RSS, CPU); repeat for several crier processes.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,

    /// Soak mode: how often to sample server RSS.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub sample_interval: Duration,

    /// Pin the tool and its workers to this CPU.
    #[arg(long, value_name = "CPU")]
    pub pin_cpu: Option<usize>,

    /// Hard deadline for the whole run [default: connect time + duration + grace + 60s].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// After the last publish, how long to wait for outstanding deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,

    /// Time allowed for one TCP connect plus WebSocket upgrade.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,

    /// Print the report as JSON instead of a table (and no progress line).
    #[arg(long)]
    pub json: bool,

    /// No progress line and no progress notes on stderr (warnings and errors still go there).
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Channels mode: how many channels (`ch0` … `ch{C-1}`).
    #[arg(long, value_name = "C", default_value_t = 1000)]
    pub channel_count: u32,

    /// Channels mode: channels each connection subscribes to (distinct, chosen with --seed).
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub channels_per_conn: u32,

    /// Channels mode: how messages are spread over the channels.
    #[arg(long, value_enum, default_value_t = Distribution::RoundRobin)]
    pub distribution: Distribution,

    /// Channels mode: the Zipf exponent s (channel of rank r gets a share ∝ 1/r^s).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,

    /// Channels mode: seed of the subscriptions and of the Zipf timetable.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `500ms`, `30s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("invalid duration '{s}' (e.g. 500ms, 30s, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" => v,
        "ms" => v / 1000.0,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("invalid duration unit '{u}' in '{s}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// crier's default publisher socket (`config::default_publish_socket` in crier, which this
/// crate does not link): `publish.sock` in crier's private directory. crier itself checks
/// that directory's owner and mode.
pub fn default_publish_socket() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() && std::path::Path::new(&d).is_dir() => PathBuf::from(d).join("crier"),
        _ => std::env::temp_dir().join(format!("crier-{uid}")),
    };
    dir.join("publish.sock")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
}

/// Parses `ws://host[:port][/path][?query]` and refuses anything but loopback.
pub fn parse_url(url: &str, channels: &[String]) -> Result<Target, String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| format!("--url {url}: only ws:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(|| format!("--url {url}: bad IPv6 literal"))?;
        (h, p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| format!("--url {url}: bad port"))?,
        None => 80,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| format!("--url {url}: host must be a loopback IP address or localhost"))?
    };
    if !ip.is_loopback() {
        return Err(format!("--url {url}: crier-load only connects to loopback addresses (127.0.0.0/8, ::1)"));
    }
    let mut path = path;
    if !channels.is_empty() {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str("channels=");
        path.push_str(&channels.join(","));
    }
    Ok(Target { addr: SocketAddr::new(ip, port), host_header: authority.to_string(), path })
}

pub fn check_channel(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok || name == "*" {
        Ok(())
    } else {
        Err(format!("bad channel name '{name}': 1 to 64 characters from A-Z a-z 0-9 _ - . :"))
    }
}

#[derive(Debug, Clone)]
pub struct PublishSpec {
    pub sockets: Vec<PathBuf>,
    pub channel: String,
    pub binary: bool,
    pub size: usize,
    pub rate: f64,
    pub count: u64,
    /// Channels mode: the channel of each message (index seq − 1).
    pub schedule: Option<Arc<Vec<u32>>>,
}

impl PublishSpec {
    /// Offset of message `seq` (1-based) from the start of publishing, in ns.
    pub fn offset_ns(&self, seq: u64) -> u64 {
        offset_ns(self.rate, seq)
    }
}

pub fn offset_ns(rate: f64, seq: u64) -> u64 {
    ((seq.saturating_sub(1)) as f64 * 1e9 / rate) as u64
}

/// Limits of the machine that validation depends on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub nofile_hard: u64,
    pub ephemeral_ports: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub url: String,
    pub target: Target,
    pub connections: u64,
    pub connect_rate: f64,
    pub src_ips: Vec<Ipv4Addr>,
    pub procs: u32,
    pub deflate: bool,
    pub channels: Vec<String>,
    /// Connections of each worker: (first global index, count).
    pub workers: Vec<(u64, u64)>,
    pub publish: Option<PublishSpec>,
    /// Idle mode: how long to hold the connections.
    pub hold: Duration,
    pub timeout: Duration,
    pub grace: Duration,
    pub connect_timeout: Duration,
    pub sample_interval: Duration,
    pub server_pids: Vec<u32>,
    pub pin_cpu: Option<usize>,
    pub json: bool,
    pub quiet: bool,
    pub channel_spec: Option<ChannelSpec>,
    /// Things that will not stop the run but will skew it, printed before it starts.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn new(cli: &Cli, limits: Limits) -> Result<Plan, String> {
        let mode = cli.mode;
        for c in &cli.channels {
            check_channel(c)?;
        }
        let channel_spec = if mode == Mode::Channels {
            if !cli.channels.is_empty() || cli.publish_channel.is_some() {
                return Err("--mode channels picks the channels itself: use --channel-count and \
                            --channels-per-conn instead of --channels and --publish-channel"
                    .into());
            }
            if !(1..=100_000).contains(&cli.channel_count) {
                return Err("--channel-count must be between 1 and 100000".into());
            }
            if cli.channels_per_conn == 0 || cli.channels_per_conn > cli.channel_count.min(1000) {
                return Err(format!(
                    "--channels-per-conn must be between 1 and --channel-count ({}) and at most 1000",
                    cli.channel_count
                ));
            }
            if !(cli.zipf_s >= 0.0 && cli.zipf_s <= 10.0) {
                return Err("--zipf-s must be between 0 and 10".into());
            }
            Some(ChannelSpec {
                count: cli.channel_count,
                per_conn: cli.channels_per_conn,
                seed: cli.seed,
                distribution: cli.distribution,
                zipf_s: cli.zipf_s,
            })
        } else {
            None
        };
        let target = parse_url(&cli.url, &cli.channels)?;
        if !(cli.connect_rate > 0.0 && cli.connect_rate.is_finite()) {
            return Err("--connect-rate must be a positive number of connections per second".into());
        }
        if cli.procs == 0 || cli.procs > MAX_PROCS {
            return Err(format!("--procs must be between 1 and {MAX_PROCS}"));
        }
        if cli.src_ips == 0 || cli.src_ips > 254 {
            return Err("--src-ips must be between 1 and 254 (127.0.0.1 … 127.0.0.254)".into());
        }
        let n = cli.connections.unwrap_or(if mode == Mode::Channels { 10_000 } else { 1000 });
        if n == 0 && matches!(mode, Mode::Storm | Mode::Idle) {
            return Err(format!("--mode {} needs --connections > 0", mode.name()));
        }
        let per_worker_max = n.div_ceil(u64::from(cli.procs));
        let cap = MAX_SOCKETS_PER_WORKER.min(limits.nofile_hard.saturating_sub(200));
        if per_worker_max > cap {
            return Err(format!(
                "{n} connections over {} worker process(es) puts {per_worker_max} sockets in one \
                 worker, but a worker holds at most {cap} (open-files limit {}); use --procs {} \
                 or more",
                cli.procs,
                limits.nofile_hard,
                n.div_ceil(cap.max(1))
            ));
        }
        let src_ips: Vec<Ipv4Addr> = if cli.src_ips == 1 && !matches!(target.addr.ip(), IpAddr::V4(_)) {
            Vec::new()
        } else {
            if !matches!(target.addr.ip(), IpAddr::V4(_)) {
                return Err("--src-ips > 1 needs an IPv4 loopback --url (127.x.x.x)".into());
            }
            (1..=cli.src_ips).map(|k| Ipv4Addr::new(127, 0, 0, k as u8)).collect()
        };
        let per_ip = n.div_ceil(u64::from(cli.src_ips));
        let ports = limits.ephemeral_ports.saturating_sub(500);
        if per_ip > ports {
            return Err(format!(
                "{n} connections over {} source address(es) needs {per_ip} local ports on one \
                 address, but only about {ports} are available (ip_local_port_range); use \
                 --src-ips {} or more",
                cli.src_ips,
                n.div_ceil(ports.max(1))
            ));
        }
        let mut warnings = Vec::new();
        // connect() picks ports of one parity first; once they are used up on an address,
        // every further connect scans all of them (__inet_check_established) before trying
        // the others, and the connect rate collapses. A storm needs twice the ports: the
        // dropped connections wait in TIME_WAIT while their replacements connect.
        let factor = if mode == Mode::Storm { 2 } else { 1 };
        if per_ip * factor > ports / 2 {
            warnings.push(format!(
                "{} local ports per source address is past half of its ~{ports}: the kernel's \
                 port search slows every further connect() sharply; use --src-ips {} or more",
                per_ip * factor,
                (n * factor).div_ceil((ports / 2).max(1))
            ));
        }
        let workers: Vec<(u64, u64)> = {
            let p = u64::from(cli.procs);
            let mut first = 0;
            (0..p)
                .map(|w| {
                    let c = n / p + u64::from(w < n % p);
                    let r = (first, c);
                    first += c;
                    r
                })
                .collect()
        };

        let rate = cli.rate.unwrap_or(match mode {
            Mode::Soak => 10.0,
            Mode::Channels => 2000.0,
            _ => 100.0,
        });
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("--rate must be a positive number of messages per second".into());
        }
        let duration = cli.duration.unwrap_or(match mode {
            Mode::Soak => Duration::from_secs(300),
            _ => Duration::from_secs(10),
        });
        let publish = if mode == Mode::Idle {
            None
        } else {
            let count = match (cli.count, cli.duration, mode) {
                (Some(c), _, _) => c,
                (None, None, Mode::Storm) => 10,
                _ => (duration.as_secs_f64() * rate).round() as u64,
            };
            if count == 0 {
                return Err("nothing to publish: --count or --duration × --rate is 0".into());
            }
            if count > 10_000_000 {
                return Err(format!("{count} messages is more than this tool keeps track of (10,000,000)"));
            }
            let hl = match &channel_spec {
                Some(cs) => crate::payload::channel_header_len(count, cs.count),
                None => crate::payload::header_len(count),
            };
            if cli.size < hl {
                return Err(format!(
                    "--size {} is too small: the header (`seq,unix_nanos,`, channels mode \
                     `seq,unix_nanos,channel,channel_seq,`) needs {hl} bytes for {count} messages",
                    cli.size
                ));
            }
            let channel = match (&cli.publish_channel, &channel_spec) {
                (_, Some(cs)) => format!("{} channels ({})", cs.count, cs.distribution.name()),
                (Some(c), None) => c.clone(),
                (None, None) => cli.channels.first().cloned().unwrap_or_else(|| "*".into()),
            };
            if channel_spec.is_none() {
                check_channel(&channel)?;
            }
            let schedule = channel_spec.as_ref().map(|cs| Arc::new(cs.schedule(count)));
            let sockets = if cli.publish_sockets.is_empty() {
                vec![default_publish_socket()]
            } else {
                cli.publish_sockets.clone()
            };
            Some(PublishSpec { sockets, channel, binary: cli.binary, size: cli.size, rate, count, schedule })
        };
        let connect_time = n as f64 / cli.connect_rate;
        let run_time = match &publish {
            Some(p) => p.count as f64 / p.rate,
            None => duration.as_secs_f64(),
        };
        let timeout = cli
            .timeout
            .unwrap_or_else(|| Duration::from_secs_f64(connect_time + run_time + cli.grace.as_secs_f64() + 60.0));
        Ok(Plan {
            mode,
            url: cli.url.clone(),
            target,
            connections: n,
            connect_rate: cli.connect_rate,
            src_ips,
            procs: cli.procs,
            deflate: cli.deflate,
            channels: cli.channels.clone(),
            workers,
            publish,
            hold: duration,
            timeout,
            grace: cli.grace,
            connect_timeout: cli.connect_timeout,
            sample_interval: cli.sample_interval,
            server_pids: cli.server_pids.clone(),
            pin_cpu: cli.pin_cpu,
            json: cli.json,
            quiet: cli.quiet,
            channel_spec,
            warnings,
        })
    }
}

/// What one worker process is told, as one JSON line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerConfig {
    pub index: u32,
    pub target: SocketAddr,
    pub host_header: String,
    pub path: String,
    /// Global index of this worker's first connection (picks source addresses).
    pub first: u64,
    pub connections: u64,
    pub src_ips: Vec<Ipv4Addr>,
    /// This worker's share of --connect-rate.
    pub connect_rate: f64,
    pub connect_timeout_ms: u64,
    pub deflate: bool,
    /// Highest sequence number that will be published.
    pub max_seq: u64,
    /// The worker exits by itself at this time (unix ns).
    pub deadline_ns: u64,
    pub pin_cpu: Option<usize>,
    /// Channels mode: each connection subscribes to its own channels (`?channels=` after
    /// `path`) and every delivery is accounted per channel.
    #[serde(default)]
    pub channels: Option<ChannelSpec>,
    /// Send a progress event this often (for the parent's live line); never if `None`.
    #[serde(default)]
    pub progress_ms: Option<u64>,
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;

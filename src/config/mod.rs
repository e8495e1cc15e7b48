//! Settings: command-line flags, `CRIER_*` environment variables and an optional TOML file,
//! resolved into one validated [`Config`].
//!
//! Each setting is defined once, on [`ServeArgs`], with its doc text, default and variable;
//! `crier serve --help` is the manual. Precedence is flag, then environment, then file, then
//! default. This is the only module that reads the environment.

mod access;
mod file;
mod peer;
mod status;

pub use peer::PeerArgs;
pub use status::StatusArgs;

pub use access::{AccessArgs, AccessSettings, JwtAlgorithm, JwtSettings};

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// The `crier` command line.
#[derive(Parser, Debug)]
#[command(name = "crier", version, about = "Thread-per-core WebSocket broadcast server", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Publish a message to a channel through the server's Unix socket.
    Publish(PublishArgs),
    /// Preflight: can this machine hold N connections, and what to tune.
    Check(CheckArgs),
    /// Ask a running crier (its admin port) how it is: a table, or JSON; exits non-zero
    /// when it is unreachable or not healthy.
    ///
    /// Exit codes: 0 healthy, 2 bad arguments or unreadable --token-file, 3 unreachable,
    /// 4 not healthy (/healthz 503), 5 draining, 6 Redis down, 7 token missing or wrong.
    Status(StatusArgs),
}

/// Which io driver each shard's monoio runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll.
    Epoll,
}

/// A byte count: plain bytes or with a KiB/MiB/GiB (or K/M/G) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("'{s}' is too large"))
    }
}

/// Longest `--flush-delay`: past it, queues grow towards `--max-queue-bytes` at any real rate.
const MAX_FLUSH_DELAY: Duration = Duration::from_secs(1);

/// `--flush-delay`: how long a shard holds a batch of broadcasts before it writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDelay {
    /// Hold only while broadcasts come faster than a pass over the connections takes, for
    /// a part of the last pass's time (see `shard::coalesce`).
    Auto,
    /// Hold every batch this long (zero: never hold).
    Fixed(Duration),
}

/// `auto`, or the fixed hold as humantime writes it (`0s`, `50ms`): how `/stats` and
/// `crier status` show the setting.
impl std::fmt::Display for FlushDelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushDelay::Auto => f.write_str("auto"),
            FlushDelay::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

fn parse_flush_delay(s: &str) -> Result<FlushDelay, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(FlushDelay::Auto);
    }
    humantime::parse_duration(s.trim())
        .map(FlushDelay::Fixed)
        .map_err(|e| format!("'{s}' is not 'auto', 0 (never wait) or a duration (e.g. 50ms): {e}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}' is not a duration (e.g. 500ms, 30s, 2m): {e}"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal file mode (e.g. 0660)"))
}

/// The admin address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

fn parse_admin(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|_| format!("'{s}' is not an address (e.g. {DEFAULT_ADMIN_LISTEN}) or 'off'"))
}

fn parse_level(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        l @ ("error" | "warn" | "info" | "debug" | "trace" | "off") => Ok(l.to_string()),
        _ => Err(format!("'{s}' is not a log level (error, warn, info, debug, trace)")),
    }
}

// Defaults that more than their own flag uses, defined once: `crier check` asks about the
// same address, backlog and connection count as `crier serve` by default.
/// Default of `--listen` (and of `crier check --listen`).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default of `--max-connections` (and of `crier check --connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default of `--admin-listen` (and the example in its error message).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// Default of `--backlog` (and of `crier check --backlog`).
pub const DEFAULT_BACKLOG: i32 = 4096;

/// Settings of `crier serve`. Each one is also `CRIER_<NAME>` and a key of the `--config` file.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML file with settings (keys are the flag names, e.g. `ping-interval = "30s"`).
    #[arg(long, env = "CRIER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address for WebSocket clients; every shard binds it with SO_REUSEPORT. crier refuses
    /// to start when another process already listens on it.
    #[arg(long, env = "CRIER_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Share --listen on purpose with other processes that also set this (e.g. several crier
    /// processes, each under its own descriptor limit): the kernel splits clients between
    /// them, so each must be sent every message.
    #[arg(long, env = "CRIER_LISTEN_SHARED", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub listen_shared: bool,

    /// HTTP path that upgrades to WebSocket.
    #[arg(long, env = "CRIER_PATH", default_value = "/ws")]
    pub path: String,

    /// Number of shards (threads, each pinned to a CPU). [default: online CPUs]
    #[arg(long, env = "CRIER_SHARDS", value_name = "N")]
    pub shards: Option<usize>,

    /// io driver: auto falls back to epoll where io_uring is blocked.
    #[arg(long, env = "CRIER_DRIVER", value_enum, default_value = "auto")]
    pub driver: DriverChoice,

    /// Sockets on the WebSocket port (upgraded or still in the handshake) past this get 503.
    /// Lowered at start to what RLIMIT_NOFILE holds after the reserve.
    #[arg(long, env = "CRIER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    /// Time a client has to send its complete upgrade request.
    #[arg(long, env = "CRIER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// The server pings each connection this often.
    #[arg(long, env = "CRIER_PING_INTERVAL", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub ping_interval: Duration,

    /// Connections that send nothing (not even a pong) for this long are closed with 1001.
    #[arg(long, env = "CRIER_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// How long a batch of broadcasts waits before it is written, so that several go out in
    /// one write per connection. `auto` waits only while broadcasts come faster than a pass
    /// over the shard's connections takes, at most as long as the last pass took (never at
    /// light load); 0 never waits; a duration holds every batch that long (up to that much
    /// more latency, less CPU per delivery at high rates).
    #[arg(long, env = "CRIER_FLUSH_DELAY", default_value = "auto", value_parser = parse_flush_delay, value_name = "auto|DURATION")]
    pub flush_delay: FlushDelay,

    /// Per-connection outbound backlog: a connection that, right after a write attempt, has
    /// more than this left to take (pongs it asked for included) is closed with 1008.
    #[arg(long, env = "CRIER_MAX_QUEUE_BYTES", default_value = "1MiB", value_name = "SIZE")]
    pub max_queue_bytes: ByteSize,

    /// Largest payload a publisher may send.
    #[arg(long, env = "CRIER_MAX_MESSAGE_BYTES", default_value = "1MiB", value_name = "SIZE")]
    pub max_message_bytes: ByteSize,

    /// Largest message a client may send (after inflating); larger closes with 1009.
    #[arg(long, env = "CRIER_MAX_CLIENT_MESSAGE_BYTES", default_value = "64KiB", value_name = "SIZE")]
    pub max_client_message_bytes: ByteSize,

    /// Channels one connection may subscribe to.
    #[arg(long, env = "CRIER_MAX_CHANNELS", default_value = "64", value_name = "N")]
    pub max_channels: usize,

    /// Accept permessage-deflate offers.
    #[arg(long, env = "CRIER_DEFLATE", default_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub deflate: bool,

    /// Messages each channel keeps for resume (`since=`) and `last=`.
    #[arg(long, env = "CRIER_HISTORY_MESSAGES", default_value = "64", value_name = "N")]
    pub history_messages: usize,

    /// Bytes of encoded frames each channel's history may hold.
    #[arg(long, env = "CRIER_HISTORY_BYTES", default_value = "1MiB", value_name = "SIZE")]
    pub history_bytes: ByteSize,

    /// How long a message stays in its channel's history.
    #[arg(long, env = "CRIER_HISTORY_TTL", default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub history_ttl: Duration,

    /// Publisher Unix socket. [default: publish.sock in a private directory (mode 0700, owned
    /// by this user, checked): $XDG_RUNTIME_DIR/crier/, else $TMPDIR/crier-<uid>/ (TMPDIR
    /// defaults to /tmp)]
    #[arg(long, env = "CRIER_PUBLISH_SOCKET", value_name = "PATH")]
    pub publish_socket: Option<PathBuf>,

    /// Time a publisher has to finish a command it has started (the line and its payload);
    /// past it the publisher gets -ERR and is disconnected. Idle publishers (between
    /// commands) are never timed out.
    #[arg(long, env = "CRIER_PUBLISH_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub publish_timeout: Duration,

    /// File mode of the publisher socket (octal); whoever may write it may publish.
    #[arg(long, env = "CRIER_PUBLISH_SOCKET_MODE", default_value = "0660", value_parser = parse_mode, value_name = "MODE")]
    pub publish_socket_mode: u32,

    /// Admin HTTP address for /metrics and /healthz, or `off`.
    #[arg(long, env = "CRIER_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN, value_parser = parse_admin, value_name = "ADDR")]
    pub admin_listen: AdminListen,

    /// On SIGTERM/SIGINT, time to flush close frames before exiting.
    #[arg(long, env = "CRIER_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// Listen backlog of each shard's listener.
    #[arg(long, env = "CRIER_BACKLOG", default_value_t = DEFAULT_BACKLOG, value_name = "N")]
    pub backlog: i32,

    /// SO_SNDBUF of accepted sockets (e.g. 16KiB for density). [default: kernel's]
    #[arg(long, env = "CRIER_SOCKET_SEND_BUFFER", value_name = "SIZE")]
    pub socket_send_buffer: Option<ByteSize>,

    /// Conformance testing: every data message a client sends comes back to that client
    /// (text as text, binary as binary, compressed when permessage-deflate was negotiated),
    /// with the same handshake, frame checks, limits and close handling as production.
    /// Broadcasts still work. Not with --redis. [default: off]
    #[arg(long, env = "CRIER_ECHO", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub echo: bool,

    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides it).
    #[arg(long, env = "CRIER_LOG_LEVEL", default_value = "info", value_parser = parse_level, value_name = "LEVEL")]
    pub log_level: String,

    /// Access control: tokens, public channels, origins, the admin token (`access.rs`).
    #[command(flatten)]
    pub access: AccessArgs,

    // ---- cluster mode (src/cluster/); without --redis none of these is used ----
    /// Cluster mode: join the other crier nodes through this Redis
    /// (`redis://[user:pass@]host:port[/db]`). Publishes are numbered by Redis and reach
    /// every node. [default: off, a single box]
    #[arg(long, env = "CRIER_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// Cluster mode over a Redis Cluster (Redis >= 7, sharded pub/sub): seed URLs,
    /// comma-separated (`redis://host:port,redis://host2:port`); the rest of the cluster is
    /// found from them. Not with --redis. [default: off]
    #[arg(long, env = "CRIER_REDIS_CLUSTER", value_name = "URL[,URL...]")]
    pub redis_cluster: Option<String>,

    /// With --redis-cluster: how long this node stays SSUBSCRIBEd to a channel after its
    /// last local subscriber left, so that a client reconnecting at once finds it subscribed.
    #[arg(long, env = "CRIER_REDIS_UNSUBSCRIBE_LINGER", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub redis_unsubscribe_linger: Duration,

    /// Namespace of crier's keys and pub/sub channels in Redis, so several crier clusters
    /// can share one Redis.
    #[arg(long, env = "CRIER_REDIS_PREFIX", default_value = "crier", value_name = "PREFIX")]
    pub redis_prefix: String,

    /// How long Redis keeps a quiet channel's epoch and sequence number (refreshed by every
    /// publish). Past it the channel starts a new epoch and resuming clients get `reset`.
    #[arg(long, env = "CRIER_REDIS_META_TTL", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub redis_meta_ttl: Duration,

    // ---- per-address limits and proxies (src/peer/, config/peer.rs) ----
    #[command(flatten)]
    pub peer: PeerArgs,

    /// TEST ONLY, and only in debug builds (a release build has no such flag): `N@DURATION`
    /// makes shard N block its thread for good DURATION after it starts, as a wedged shard
    /// would, so tests/watchdog.rs can check that WATCHDOG=1 then stops. Hidden from --help
    /// and from the README on purpose: it is not a setting.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true, value_parser = parse_wedge, value_name = "N@DURATION")]
    pub debug_wedge_shard: Option<Wedge>,
}

/// Test only: which shard `--debug-wedge-shard` blocks, and when (see `ServeArgs`).
#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wedge {
    pub shard: usize,
    pub after: Duration,
}

#[cfg(debug_assertions)]
fn parse_wedge(s: &str) -> Result<Wedge, String> {
    let (shard, after) = s.split_once('@').unwrap_or((s, "0s"));
    let shard = shard.trim().parse().map_err(|_| format!("'{s}' is not N@DURATION (e.g. 1@2s)"))?;
    Ok(Wedge { shard, after: parse_duration(after)? })
}

/// Arguments of `crier publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Channel to publish to (`*` reaches every connection).
    #[arg(long, short = 'c')]
    pub channel: String,
    /// Publisher socket. [default: the server's default]
    #[arg(long, env = "CRIER_PUBLISH_SOCKET", value_name = "PATH")]
    pub publish_socket: Option<PathBuf>,
    /// Send as a binary frame instead of text.
    #[arg(long)]
    pub binary: bool,
    /// Publish each line of stdin as one message.
    #[arg(long, conflicts_with = "message")]
    pub lines: bool,
    /// The message; `-` or nothing reads it from stdin.
    pub message: Option<String>,
    /// Publish straight through this Redis (cluster mode) instead of a local crier's
    /// socket; the nodes of that cluster deliver it.
    #[arg(long, env = "CRIER_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// Publish straight through this Redis Cluster (seed URLs, comma-separated), as
    /// `crier serve --redis-cluster` nodes do. Not with --redis.
    #[arg(long, env = "CRIER_REDIS_CLUSTER", value_name = "URL[,URL...]")]
    pub redis_cluster: Option<String>,
    /// With --redis: the cluster's --redis-prefix.
    #[arg(long, env = "CRIER_REDIS_PREFIX", default_value = "crier", value_name = "PREFIX")]
    pub redis_prefix: String,
    /// With --redis: the nodes' --history-messages (length of each channel's stream).
    #[arg(long, env = "CRIER_HISTORY_MESSAGES", default_value = "64", value_name = "N")]
    pub history_messages: usize,
    /// With --redis: the nodes' --history-ttl.
    #[arg(long, env = "CRIER_HISTORY_TTL", default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub history_ttl: Duration,
    /// With --redis: the nodes' --redis-meta-ttl.
    #[arg(long, env = "CRIER_REDIS_META_TTL", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub redis_meta_ttl: Duration,
}

/// Arguments of `crier check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Connections this machine should hold (compare `crier serve --max-connections`).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS as u64, value_name = "N")]
    pub connections: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The address `crier serve --listen` will bind (checked against privileged ports and
    /// the local port range).
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The listen backlog `crier serve --backlog` will ask for (capped by somaxconn).
    #[arg(long, default_value_t = DEFAULT_BACKLOG as u64, value_name = "N")]
    pub backlog: u64,
    /// The shards `crier serve --shards` will run: the descriptor reserve grows with them.
    /// [default: online CPUs, as serve]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// `crier serve` will run in cluster mode (`--redis`): its Redis connections are part
    /// of the descriptor reserve.
    #[arg(long)]
    pub cluster: bool,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub listen_shared: bool,
    pub path: String,
    pub shards: usize,
    pub driver: DriverChoice,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub flush_delay: FlushDelay,
    pub max_queue_bytes: usize,
    pub max_message_bytes: usize,
    pub max_client_message_bytes: usize,
    pub max_channels: usize,
    pub deflate: bool,
    pub history_messages: usize,
    pub history_bytes: usize,
    pub history_ttl: Duration,
    pub publish_socket: PathBuf,
    /// The socket is the default one, so its directory must be private (created and checked
    /// by `publish::bind`).
    pub publish_socket_is_default: bool,
    pub publish_socket_mode: u32,
    pub publish_timeout: Duration,
    pub admin_listen: Option<SocketAddr>,
    pub drain_timeout: Duration,
    pub backlog: i32,
    pub socket_send_buffer: Option<usize>,
    /// `--echo`: client data messages come back to their sender (conformance testing).
    pub echo: bool,
    /// tracing filter: RUST_LOG if set, else the log level.
    pub log_filter: String,
    /// systemd's notification socket (NOTIFY_SOCKET), if started by systemd.
    pub notify_socket: Option<OsString>,
    /// systemd watchdog interval (WATCHDOG_USEC), if set.
    pub watchdog: Option<Duration>,
    /// Cluster mode (`--redis`); `None` is the single box.
    pub redis: Option<crate::cluster::RedisConfig>,
    /// Per-address limits and trusted proxies.
    pub peer: crate::peer::PeerConfig,
    /// Access control (`crate::access`).
    pub access: AccessSettings,
    /// Test only (debug builds): the shard to wedge (see `ServeArgs::debug_wedge_shard`).
    #[cfg(debug_assertions)]
    pub debug_wedge_shard: Option<Wedge>,
}

/// Bounds of the sweep tick (see [`Config::sweep_tick`]).
const MIN_SWEEP_TICK: Duration = Duration::from_millis(20);
const MAX_SWEEP_TICK: Duration = Duration::from_secs(1);

impl Config {
    /// How often each shard sweeps. A quarter of the shorter of --ping-interval and
    /// --idle-timeout (so a ping or an idle close is at most a quarter late), between 20 ms
    /// and 1 s. Under a systemd watchdog also at most a quarter of WATCHDOG_USEC: the
    /// watchdog pings only while every shard's sweep is younger than the interval
    /// (`ops::notify::watchdog`), so a healthy shard's sweep must come well inside it; the
    /// other three quarters are margin for a sweep that waits behind a batch.
    pub fn sweep_tick(&self) -> Duration {
        let tick = (self.ping_interval.min(self.idle_timeout) / 4).clamp(MIN_SWEEP_TICK, MAX_SWEEP_TICK);
        match self.watchdog {
            // 1 ms at least: a WATCHDOG_USEC under 4 ms would otherwise spin the sweep.
            Some(interval) => tick.min(interval / 4).max(Duration::from_millis(1)),
            None => tick,
        }
    }
}

/// A setting that could not be used; the message names the setting and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The default publisher socket, shared by `crier serve` and `crier publish`: `publish.sock`
/// in [`default_publish_dir`].
pub fn default_publish_socket() -> PathBuf {
    default_publish_dir().join("publish.sock")
}

/// The directory of the default publisher socket: `$XDG_RUNTIME_DIR/crier`, else
/// `$TMPDIR/crier-<uid>` (`/tmp/crier-<uid>` without TMPDIR). Its name can be guessed, so
/// it is only used when it is private to this user: `publish::private_dir` creates it with
/// mode 0700 and refuses one that someone else owns or may enter. A guessable socket name
/// in /tmp itself would let any local user create it first, to block the server or to
/// receive what `crier publish` sends.
pub fn default_publish_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail; the directory belongs to the user files are created as.
    let uid = unsafe { libc::geteuid() };
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() && Path::new(&dir).is_dir() => Path::new(&dir).join("crier"),
        _ => std::env::temp_dir().join(format!("crier-{uid}")),
    }
}

/// Parses the whole command line, folding the `--config` file into `serve`'s settings.
pub fn parse_cli() -> Result<Cli, clap::Error> {
    parse_cli_from(std::env::args_os().collect())
}

fn parse_cli_from(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let Command::Serve(serve) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = serve.config.clone() else {
        return Ok(cli);
    };
    let sub = matches.subcommand_matches("serve").expect("serve was parsed");
    let extra = match file::file_args(&path, sub, ServeArgs::augment_args) {
        Ok(extra) => extra,
        Err(e) => return Err(Cli::command().error(clap::error::ErrorKind::ValueValidation, e)),
    };
    let mut argv = argv;
    argv.extend(extra);
    Cli::try_parse_from(argv)
}

/// Hooks for `fuzz/` (the `config` target), built only there (`cargo fuzz` sets
/// `cfg(fuzzing)`) and in unit tests: the parsers of settings text, without a file on disk.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The parser of every duration setting (`--ping-interval`, …).
    pub fn duration(s: &str) -> Result<Duration, String> {
        parse_duration(s)
    }

    /// `crier serve --config F` where F holds `text`, up to the settings' values: `Err` from
    /// the file's own checks (each error names the file, here `fuzz.toml`, and the key).
    pub fn file_args(text: &str) -> Result<Vec<OsString>, String> {
        let matches = Cli::command().try_get_matches_from(["crier", "serve"]).expect("no arguments parse");
        let sub = matches.subcommand_matches("serve").expect("serve was parsed");
        file::text_args(text, Path::new("fuzz.toml"), sub, ServeArgs::augment_args)
    }

    /// `crier serve` with `args` (from [`file_args`]), resolved: what start-up does next.
    pub fn serve(args: Vec<OsString>) -> Result<Result<Config, ConfigError>, clap::Error> {
        let mut argv = vec![OsString::from("crier"), OsString::from("serve")];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(s) => Ok(s.resolve()),
            _ => unreachable!("serve was given"),
        }
    }
}

impl ServeArgs {
    /// Checks relations between settings and fills computed defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        let shards = self.shards.unwrap_or_else(online_cpus);
        if shards == 0 {
            return err("--shards must be at least 1".into());
        }
        if !self.path.starts_with('/') {
            return err(format!("--path must start with '/', got '{}'", self.path));
        }
        if self.max_connections == 0 {
            return err("--max-connections must be at least 1".into());
        }
        if self.ping_interval.is_zero() || self.idle_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return err("--ping-interval, --idle-timeout and --handshake-timeout must be above zero".into());
        }
        if self.publish_timeout.is_zero() {
            return err("--publish-timeout must be above zero".into());
        }
        if self.idle_timeout <= self.ping_interval {
            return err(format!(
                "--idle-timeout ({}) must be longer than --ping-interval ({}), or healthy clients get closed between pings",
                humantime::format_duration(self.idle_timeout),
                humantime::format_duration(self.ping_interval)
            ));
        }
        if let FlushDelay::Fixed(d) = self.flush_delay
            && d > MAX_FLUSH_DELAY
        {
            return err(format!(
                "--flush-delay must be 'auto' or at most {}, got {}",
                humantime::format_duration(MAX_FLUSH_DELAY),
                humantime::format_duration(d)
            ));
        }
        let max_queue_bytes = self.max_queue_bytes.0 as usize;
        if max_queue_bytes < 1024 {
            return err(format!("--max-queue-bytes must be at least 1KiB, got {max_queue_bytes}"));
        }
        let max_message_bytes = self.max_message_bytes.0 as usize;
        if max_message_bytes == 0 || max_message_bytes > 1 << 30 {
            return err(format!("--max-message-bytes must be between 1 and 1GiB, got {max_message_bytes}"));
        }
        let max_client_message_bytes = self.max_client_message_bytes.0 as usize;
        if !(125..=1 << 30).contains(&max_client_message_bytes) {
            return err(format!(
                "--max-client-message-bytes must be between 125 and 1GiB, got {max_client_message_bytes}"
            ));
        }
        if self.max_channels == 0 {
            return err("--max-channels must be at least 1".into());
        }
        if self.backlog <= 0 {
            return err(format!("--backlog must be positive, got {}", self.backlog));
        }
        let socket_send_buffer = self.socket_send_buffer.map(|b| b.0 as usize);
        if socket_send_buffer.is_some_and(|b| b < 1024) {
            return err("--socket-send-buffer must be at least 1KiB".into());
        }
        if self.echo && (self.redis.is_some() || self.redis_cluster.is_some()) {
            return err("--echo and --redis (or --redis-cluster) cannot be used together: echo mode is for conformance testing of one server (tests/autobahn.rs), cluster mode for production".into());
        }
        // Cluster mode: the URL and prefix are checked here so a typo stops start-up.
        let redis = crate::cluster::RedisConfig::from_settings(
            self.redis.as_deref(),
            self.redis_cluster.as_deref(),
            &self.redis_prefix,
            self.history_messages,
            self.history_ttl,
            self.redis_meta_ttl,
        )
        .map_err(ConfigError)?
        .map(|c| c.with_linger(self.redis_unsubscribe_linger));
        let peer = self.peer.resolve().map_err(ConfigError)?;
        let access = self.access.clone().resolve()?;
        let log_filter =
            std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| self.log_level.clone());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0)
            .map(Duration::from_micros);
        #[cfg(debug_assertions)]
        if let Some(w) = self.debug_wedge_shard.filter(|w| w.shard >= shards) {
            return err(format!("--debug-wedge-shard: there is no shard {} (--shards {shards})", w.shard));
        }
        Ok(Config {
            listen: self.listen,
            listen_shared: self.listen_shared,
            echo: self.echo,
            path: self.path,
            shards,
            driver: self.driver,
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            flush_delay: self.flush_delay,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            max_queue_bytes,
            max_message_bytes,
            max_client_message_bytes,
            max_channels: self.max_channels,
            deflate: self.deflate,
            history_messages: self.history_messages,
            history_bytes: self.history_bytes.0 as usize,
            history_ttl: self.history_ttl,
            publish_socket_is_default: self.publish_socket.is_none(),
            publish_socket: self.publish_socket.unwrap_or_else(default_publish_socket),
            publish_socket_mode: self.publish_socket_mode,
            publish_timeout: self.publish_timeout,
            admin_listen: self.admin_listen.0,
            drain_timeout: self.drain_timeout,
            backlog: self.backlog,
            socket_send_buffer,
            log_filter,
            notify_socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog,
            redis,
            peer,
            access,
            #[cfg(debug_assertions)]
            debug_wedge_shard: self.debug_wedge_shard,
        })
    }
}

/// CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests;

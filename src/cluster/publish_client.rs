//! `crier publish --redis URL` (or `--redis-cluster URLS`): publish through Redis with the
//! publish script, from a box with no crier on it. Prints each seq as `crier publish` does; exits 1 when Redis refuses
//! or a message is invalid, 2 when Redis cannot be reached or the input cannot be read.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;

use super::RedisConfig;
use super::script;
use crate::channel::ChannelName;
use crate::config::PublishArgs;
use crate::ws::frame::MessageKind;

/// Messages per script call with `--lines` (calls go one after the other, in order).
const BATCH: usize = 128;

pub fn run(args: &PublishArgs) -> ExitCode {
    let cfg = match RedisConfig::from_settings(
        args.redis.as_deref(),
        args.redis_cluster.as_deref(),
        &args.redis_prefix,
        args.history_messages,
        args.history_ttl,
        args.redis_meta_ttl,
    ) {
        Ok(Some(c)) => c,
        Ok(None) => unreachable!("called with --redis or --redis-cluster"),
        Err(e) => {
            eprintln!("crier publish: {e}");
            return ExitCode::from(2);
        }
    };
    let channel = match ChannelName::parse(&args.channel) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crier publish: bad channel name '{}': {e}", args.channel);
            return ExitCode::from(1);
        }
    };
    let kind = if args.binary { MessageKind::Binary } else { MessageKind::Text };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crier publish: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(publish(args, &cfg, channel, kind))
}

fn check(kind: MessageKind, payload: &[u8]) -> Result<(), String> {
    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
        return Err("text payload is not valid UTF-8 (use --binary)".into());
    }
    Ok(())
}

/// The connection: one standalone Redis, or a Redis Cluster (every call of one channel
/// goes to the master of its slot).
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection, u16),
}

impl Conn {
    async fn open(cfg: &RedisConfig, channel: &ChannelName) -> Result<Self, String> {
        let shown = cfg.shown_url();
        let timeout = Duration::from_secs(5);
        if let Some(seeds) = &cfg.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                .retries(0)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(|e| format!("--redis-cluster {shown}: {e}"))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| format!("cannot reach the Redis Cluster at {shown}: {e}"))?;
            let slot = super::slots::slot_of(script::Names::new(&cfg.prefix, channel).pubsub.as_bytes());
            return Ok(Self::Cluster(conn, slot));
        }
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| format!("--redis {shown}: {e}"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot reach Redis at {shown}: {e}"))?;
        Ok(Self::Single(conn))
    }

    async fn query(&mut self, cmd: redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c, slot) => c.route_command(cmd, super::slot_publish::master_of(*slot)).await,
        }
    }
}

async fn publish(args: &PublishArgs, cfg: &RedisConfig, channel: ChannelName, kind: MessageKind) -> ExitCode {
    let shown = cfg.shown_url();
    let mut conn = match Conn::open(cfg, &channel).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crier publish: {e}");
            return ExitCode::from(2);
        }
    };
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(script::PUBLISH_LUA);
    let sha: String =
        match conn.query(load).await.and_then(|v| redis::from_redis_value(v).map_err(redis::RedisError::from)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("crier publish: SCRIPT LOAD on {shown}: {e}");
                return ExitCode::from(2);
            }
        };
    let pubcmd = if cfg.cluster.is_some() { "spublish" } else { "publish" };
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    if args.lines {
        for line in std::io::stdin().lock().split(b'\n') {
            match line {
                Ok(mut l) => {
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    payloads.push(l);
                }
                Err(e) => {
                    eprintln!("crier publish: reading stdin: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    } else {
        match args.message.as_deref() {
            Some(m) if m != "-" => payloads.push(m.as_bytes().to_vec()),
            _ => {
                let mut v = Vec::new();
                if let Err(e) = std::io::stdin().read_to_end(&mut v) {
                    eprintln!("crier publish: reading stdin: {e}");
                    return ExitCode::from(2);
                }
                payloads.push(v);
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    for chunk in payloads.chunks(BATCH) {
        for p in chunk {
            if let Err(e) = check(kind, p) {
                eprintln!("crier publish: refused: {e}");
                return ExitCode::from(1);
            }
        }
        let (mut keys, mut argv) = (Vec::new(), Vec::new());
        for p in chunk {
            script::push_message(&mut keys, &mut argv, &cfg.prefix, &channel, kind, Bytes::copy_from_slice(p));
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&sha)
            .arg(keys.len())
            .arg(&keys)
            .arg(cfg.stream_len)
            .arg(cfg.stream_ttl.as_millis() as u64)
            .arg(cfg.meta_ttl.as_millis() as u64)
            .arg(pubcmd);
        for a in &argv {
            cmd.arg(&a[..]);
        }
        let reply: redis::Value = match conn.query(cmd).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("crier publish: refused: redis unavailable ({e})");
                return ExitCode::from(1);
            }
        };
        let Some(seqs) = script::parse_reply(&reply, chunk.len()) else {
            eprintln!("crier publish: unexpected reply from the publish script: {reply:?}");
            return ExitCode::from(1);
        };
        for (_, seq) in seqs {
            let _ = writeln!(stdout, "{seq}");
        }
    }
    let _ = stdout.flush();
    ExitCode::SUCCESS
}

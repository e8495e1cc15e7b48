//! `crier publish --redis URL`: publish through Redis with the publish script, from a box
//! with no crier on it. Prints each seq as `crier publish` does; exits 1 when Redis refuses
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
    let url = args.redis.clone().unwrap_or_default();
    let cfg = match RedisConfig::new(
        &url,
        &args.redis_prefix,
        args.history_messages,
        args.history_ttl,
        args.redis_meta_ttl,
    ) {
        Ok(c) => c,
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

async fn publish(args: &PublishArgs, cfg: &RedisConfig, channel: ChannelName, kind: MessageKind) -> ExitCode {
    let shown = cfg.shown_url();
    let client = match redis::Client::open(cfg.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crier publish: --redis {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut conn = match client.get_multiplexed_async_connection_with_config(&config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crier publish: cannot reach Redis at {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let sha: String = match redis::cmd("SCRIPT").arg("LOAD").arg(script::PUBLISH_LUA).query_async(&mut conn).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crier publish: SCRIPT LOAD on {shown}: {e}");
            return ExitCode::from(2);
        }
    };
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
            .arg("publish");
        for a in &argv {
            cmd.arg(&a[..]);
        }
        let reply: redis::Value = match cmd.query_async(&mut conn).await {
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

//! `crier-pubrate`: the publish-rate ceiling. P publisher connections each send COUNT
//! pipelined `PUB`s as fast as crier takes them (no timetable: a publisher writes whenever its
//! socket has room), to channel `p<i>`; S WebSocket subscribers take every channel and check
//! that every message arrives once and in order. It reports the acknowledged publishes per
//! second (first write to last `+OK`) and when the last delivery arrived.
//!
//! crier-load's publisher follows a timetable and carries a timestamp per message for
//! latency; this one measures only how fast crier accepts and delivers, so each side does
//! as little as it can: one thread per connection, large reads and writes. The upgrade and
//! the frame parser are crier-load's (`crier_load::ws`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crier_load::sys;
use crier_load::ws::{self, Event, FrameReader, Response, Rng};

#[derive(Parser, Debug)]
#[command(
    name = "crier-pubrate",
    version,
    about = "The publish-rate ceiling of one crier: pipelined publishers, checked subscribers"
)]
struct Cli {
    /// crier's WebSocket address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: String,
    /// crier's publisher socket.
    #[arg(long = "publish-socket")]
    publish_socket: PathBuf,
    /// Publisher connections; publisher i publishes to channel `p<i>`.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// WebSocket subscribers, each subscribed to every publisher's channel.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Payload bytes (`<seq>,` padded with `x`).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// crier's PID: report its CPU time (user and system) over the run.
    #[arg(long = "server-pid")]
    server_pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What one subscriber saw.
#[derive(Default, Debug)]
struct Seen {
    received: u64,
    lost: u64,
    duplicated: u64,
    disordered: u64,
    done_at: Option<Instant>,
    error: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(ok) => std::process::exit(if ok { 0 } else { 2 }),
        Err(e) => {
            eprintln!("crier-pubrate: {e}");
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> Result<bool, String> {
    let channels: Vec<String> = (0..cli.publishers).map(|i| format!("p{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    let mut rng = Rng::new(std::process::id().into());
    for _ in 0..cli.subscribers {
        let (stream, early) = subscribe(&cli.ws, &channels, &mut rng)?;
        let (stop, publishers, count) = (stop.clone(), cli.publishers, cli.count);
        subs.push(std::thread::spawn(move || receive(stream, &early, publishers, count, deadline, &stop)));
    }
    let cpu_before = cli.server_pid.map(cpu_ticks).transpose()?;
    let start = Instant::now();
    let mut pubs = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let stream = UnixStream::connect(&cli.publish_socket)
            .map_err(|e| format!("cannot connect to {}: {e}", cli.publish_socket.display()))?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let (channel, count, size) = (channel.clone(), cli.count, cli.size);
        let w = std::thread::spawn(move || publish(writer, &channel, i, count, size));
        let r = std::thread::spawn(move || acks(stream, count));
        pubs.push((w, r));
    }
    let mut acked = 0;
    let mut refused = 0;
    let mut last_ack = start;
    for (w, r) in pubs {
        w.join().map_err(|_| "publisher thread panicked")??;
        let (ok, err, at) = r.join().map_err(|_| "ack thread panicked")??;
        acked += ok;
        refused += err;
        last_ack = last_ack.max(at);
    }
    let publish_secs = last_ack.duration_since(start).as_secs_f64();
    let mut seen = Vec::new();
    for s in subs {
        seen.push(s.join().map_err(|_| "subscriber thread panicked")?);
    }
    stop.store(true, Ordering::Relaxed);
    let cpu = match (cli.server_pid, cpu_before) {
        (Some(pid), Some((u0, s0))) => {
            let (u1, s1) = cpu_ticks(pid)?;
            Some((ticks_secs(u1 - u0), ticks_secs(s1 - s0)))
        }
        _ => None,
    };
    let expected = cli.count * cli.publishers as u64;
    let delivered: u64 = seen.iter().map(|s| s.received).sum();
    let lost: u64 = seen.iter().map(|s| s.lost + expected.saturating_sub(s.received + s.lost)).sum();
    let dup: u64 = seen.iter().map(|s| s.duplicated).sum();
    let disorder: u64 = seen.iter().map(|s| s.disordered).sum();
    let last_delivery = seen.iter().filter_map(|s| s.done_at).max();
    let delivery_secs = last_delivery.map(|t| t.duration_since(start).as_secs_f64());
    let errors: Vec<String> = seen.iter().filter_map(|s| s.error.clone()).collect();
    let rate = acked as f64 / publish_secs;
    let ok = acked == expected && refused == 0 && lost == 0 && dup == 0 && disorder == 0 && errors.is_empty();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "publishers": cli.publishers, "subscribers": cli.subscribers, "size": cli.size,
                "acked": acked, "refused": refused, "publish_seconds": publish_secs,
                "publishes_per_second": rate, "delivered": delivered,
                "expected_deliveries": expected * cli.subscribers as u64,
                "last_delivery_seconds": delivery_secs, "lost": lost, "duplicated": dup,
                "out_of_order": disorder, "server_user_seconds": cpu.map(|c| c.0),
                "server_system_seconds": cpu.map(|c| c.1), "errors": errors, "ok": ok,
            })
        );
    } else {
        println!(
            "publishers {}  subscribers {}  payload {} B  messages {}",
            cli.publishers, cli.subscribers, cli.size, expected
        );
        println!("acked      {acked} of {expected} ({refused} refused) in {publish_secs:.3} s: {rate:.0} publishes/s");
        match delivery_secs {
            Some(d) => println!(
                "delivered  {delivered} of {} by {d:.3} s: {:.0} deliveries/s",
                expected * cli.subscribers as u64,
                delivered as f64 / d
            ),
            None => println!("delivered  {delivered} of {}", expected * cli.subscribers as u64),
        }
        println!("accounting lost {lost} / duplicated {dup} / out of order {disorder}");
        if let Some((u, s)) = cpu {
            println!("server cpu {:.2} s (user {u:.2} s, system {s:.2} s)", u + s);
        }
        for e in &errors {
            println!("PROBLEM    {e}");
        }
    }
    Ok(ok)
}

/// Connects and upgrades; returns the stream once the 101 has been read (crier has
/// registered the subscription by then), and any frames that came in the same read.
fn subscribe(addr: &str, channels: &[String], rng: &mut Rng) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let key = ws::new_key(rng);
    let path = format!("/ws?channels={}", channels.join(","));
    s.write_all(&ws::request(addr, &path, &key, false)).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed during the upgrade".into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("upgrade: {e}")),
        }
        match ws::parse_response(&head, &key) {
            Ok(Response::Partial) => continue,
            Ok(Response::Upgraded { head_len, .. }) => return Ok((s, head.split_off(head_len))),
            Err(e) => return Err(format!("upgrade refused: {}", e.reason())),
        }
    }
}

/// Reads frames (`early` first) until every publisher's `count` messages are in (or the
/// deadline).
fn receive(
    mut s: TcpStream,
    early: &[u8],
    publishers: usize,
    count: u64,
    deadline: Instant,
    stop: &AtomicBool,
) -> Seen {
    let mut seen = Seen::default();
    let mut next = vec![1u64; publishers];
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 1 << 20];
    let total = count * publishers as u64;
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut account = |ev: Event<'_>, seen: &mut Seen| match ev {
        Event::Message { payload, .. } => match message(payload) {
            Some((p, seq)) if p < publishers => {
                let want = next[p];
                if seq == want {
                    next[p] = seq + 1;
                } else if seq > want {
                    seen.lost += seq - want;
                    seen.disordered += 1;
                    next[p] = seq + 1;
                } else {
                    seen.duplicated += 1;
                }
                seen.received += 1;
                true
            }
            _ => {
                seen.error = Some(format!("unexpected payload {:?}", String::from_utf8_lossy(payload)));
                false
            }
        },
        Event::Close(code) => {
            seen.error = Some(format!("close frame from crier: {code:?}"));
            false
        }
        Event::Ping(_) | Event::Pong => true,
    };
    let mut data = early.len();
    buf[..data].copy_from_slice(early);
    loop {
        if let Err(e) = reader.feed(&buf[..data], &mut |ev| account(ev, &mut seen)) {
            seen.error = Some(format!("bad frame from crier: {e:?}"));
        }
        if seen.error.is_some() {
            return seen;
        }
        if seen.received >= total {
            seen.done_at = Some(Instant::now());
            return seen;
        }
        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            seen.error = Some(format!("timed out with {} of {total} messages", seen.received));
            return seen;
        }
        data = match s.read(&mut buf) {
            Ok(0) => {
                seen.error = Some(format!("closed by crier after {} of {total} messages", seen.received));
                return seen;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => 0,
            Err(e) => {
                seen.error = Some(format!("read: {e}"));
                return seen;
            }
        };
    }
}

/// `p<i>:<seq>,xxx…` → (i, seq).
fn message(p: &[u8]) -> Option<(usize, u64)> {
    let p = p.strip_prefix(b"p")?;
    let colon = p.iter().position(|&c| c == b':')?;
    let comma = p.iter().position(|&c| c == b',')?;
    let num = |s: &[u8]| -> Option<u64> { std::str::from_utf8(s).ok()?.parse().ok() };
    Some((num(&p[..colon])? as usize, num(&p[colon + 1..comma])?))
}

/// Writes `count` PUBs as fast as the socket takes them, in writes of about 256 KiB.
fn publish(mut s: UnixStream, channel: &str, index: usize, count: u64, size: usize) -> Result<(), String> {
    let mut out = Vec::with_capacity(300 * 1024);
    for seq in 1..=count {
        let head = format!("p{index}:{seq},");
        let pad = size.saturating_sub(head.len());
        let len = head.len() + pad;
        out.extend_from_slice(format!("PUB {channel} {len}\r\n").as_bytes());
        out.extend_from_slice(head.as_bytes());
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\r\n");
        if out.len() >= 256 * 1024 || seq == count {
            s.write_all(&out).map_err(|e| format!("publish: {e}"))?;
            out.clear();
        }
    }
    Ok(())
}

/// Counts the replies: (`+OK`, `-ERR`, when the last came).
fn acks(s: UnixStream, count: u64) -> Result<(u64, u64, Instant), String> {
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let (mut ok, mut err) = (0, 0);
    let mut line = Vec::new();
    while ok + err < count {
        line.clear();
        if r.read_until(b'\n', &mut line).map_err(|e| format!("replies: {e}"))? == 0 {
            return Err(format!("crier closed the publisher after {ok} +OK, {err} -ERR"));
        }
        if line.starts_with(b"+OK") {
            ok += 1;
        } else {
            if err == 0 {
                eprintln!("crier-pubrate: {}", String::from_utf8_lossy(&line).trim_end());
            }
            err += 1;
        }
    }
    Ok((ok, err, Instant::now()))
}

/// utime and stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("server pid {pid}: {e}"))?;
    sys::parse_stat_ticks(&stat).ok_or_else(|| format!("bad /proc/{pid}/stat"))
}

fn ticks_secs(t: u64) -> f64 {
    t as f64 / sys::clock_ticks()
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn payloads_name_their_publisher_and_seq() {
        assert_eq!(message(b"p3:42,xxxx"), Some((3, 42)));
        assert_eq!(message(b"q3:42,"), None);
        assert_eq!(message(b"p3-42,"), None);
        assert_eq!(message(b"p3:x,"), None);
    }
}

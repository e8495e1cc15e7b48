//! A worker process: holds its share of the connections on one current-thread tokio
//! runtime, accounts every delivery, and talks to the parent in JSON lines (commands on
//! stdin, events on stdout). It exits when stdin closes or its deadline passes.
//!
//! Density: a connection owns a small state slot and a task; bytes are read into one
//! scratch buffer per worker, and only an incomplete frame is kept per connection.

use crate::cli::WorkerConfig;
use crate::payload;
use crate::progress::ProgressTick;
use crate::report::{ConnectPhase, StormPhase, WorkerEvent, WorkerReport, hist_to_pairs, new_hist};
use crate::sys;
use crate::tracker::{ChannelTrackers, Seen, SeqTracker};
use crate::ws::{self, Event, FrameReader, Rng};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Drop every open connection at once and reconnect them all, giving up after
    /// `timeout_ms`.
    Storm { timeout_ms: u64 },
    /// `published` messages went out: wait up to `grace_ms` for them, then report.
    /// Channels mode: `channel_published[c]` of them went to channel c.
    Finish {
        published: u64,
        grace_ms: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        channel_published: Vec<u64>,
    },
}

const SCRATCH: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Open,
    /// Dropped by a storm, coming back.
    Reconnecting,
    /// Ended by the server or an error after having been open.
    Closed,
    /// Never (re)connected.
    Failed,
}

struct Conn {
    state: State,
    /// The socket while open (for the storm's shutdown), else -1.
    fd: i32,
    deflate: bool,
    reader: FrameReader,
    tracker: SeqTracker,
    /// Channels mode: one tracker per subscribed channel (empty otherwise).
    chans: ChannelTrackers,
}

#[derive(Default)]
struct Storm {
    give_up: bool,
    drop_ns: u64,
    dropped: u64,
    back: u64,
    failed_attempts: u64,
    failures: BTreeMap<String, u64>,
    last_back_ns: u64,
    reconnect: Option<Histogram<u64>>,
}

struct Shared {
    cfg: WorkerConfig,
    request_host: String,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    inflated: Vec<u8>,
    dec: flate2::Decompress,
    rng: Rng,
    latency: Histogram<u64>,
    /// Latencies since the last progress event (only when the parent shows progress).
    recent: Option<Histogram<u64>>,
    /// Channels mode: messages published per channel (known at `Finish`).
    channel_published: Vec<u64>,
    last_recv: Vec<u64>,
    recv_count: Vec<u32>,
    deliveries: u64,
    compressed: u64,
    malformed: u64,
    unexpected: u64,
    first_done: u64,
    connect: ConnectPhase,
    closed: BTreeMap<String, u64>,
    storm: Storm,
}

impl Shared {
    fn new(cfg: WorkerConfig) -> Shared {
        let n = cfg.connections as usize;
        let m = cfg.max_seq as usize;
        Shared {
            request_host: cfg.host_header.clone(),
            conns: (0..n)
                .map(|_| Conn {
                    state: State::Pending,
                    fd: -1,
                    deflate: false,
                    reader: FrameReader::new(),
                    tracker: SeqTracker::new(),
                    chans: ChannelTrackers::default(),
                })
                .collect(),
            scratch: vec![0; SCRATCH],
            inflated: Vec::new(),
            dec: flate2::Decompress::new(false),
            rng: Rng::new(sys::unix_ns() ^ (u64::from(cfg.index) << 48) ^ u64::from(std::process::id())),
            latency: new_hist(),
            recent: cfg.progress_ms.map(|_| new_hist()),
            channel_published: Vec::new(),
            last_recv: vec![0; m],
            recv_count: vec![0; m],
            deliveries: 0,
            compressed: 0,
            malformed: 0,
            unexpected: 0,
            first_done: 0,
            connect: ConnectPhase::default(),
            closed: BTreeMap::new(),
            storm: Storm::default(),
            cfg,
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.rng.next_u64() as u32).to_ne_bytes()
    }

    /// Handles `data` received on connection `idx` at `now` (unix ns). Frames to send back
    /// (pongs, the close reply) are appended to `out`. Returns the reason when the
    /// connection is over.
    fn on_data(&mut self, idx: usize, data: &[u8], now: u64, out: &mut Vec<u8>) -> Option<String> {
        let mask = self.mask();
        let channels_mode = self.cfg.channels.is_some();
        let Shared {
            conns,
            inflated,
            dec,
            latency,
            recent,
            last_recv,
            recv_count,
            deliveries,
            compressed,
            malformed,
            unexpected,
            ..
        } = self;
        let conn = &mut conns[idx];
        let mut end: Option<String> = None;
        let res = conn.reader.feed(data, &mut |ev| match ev {
            Event::Message { compressed: z, payload: p, .. } => {
                let body: &[u8] = if z {
                    if !conn.deflate || ws::inflate_message(dec, p, inflated).is_err() {
                        *malformed += 1;
                        return true;
                    }
                    inflated
                } else {
                    p
                };
                let decoded = if channels_mode {
                    payload::decode_channel(body).map(|(seq, ts, ch, chseq)| (seq, ts, Some((ch, chseq))))
                } else {
                    payload::decode(body).map(|(seq, ts)| (seq, ts, None))
                };
                let Some((seq, ts, chan)) = decoded else {
                    *malformed += 1;
                    return true;
                };
                if seq == 0 || seq as usize > last_recv.len() {
                    *unexpected += 1;
                    return true;
                }
                let seen = match chan {
                    None => conn.tracker.observe(seq),
                    Some((ch, chseq)) => match conn.chans.observe(ch, chseq) {
                        Some(seen) => seen,
                        None => {
                            // Another channel's message: the server misrouted it.
                            *unexpected += 1;
                            return true;
                        }
                    },
                };
                *deliveries += 1;
                if z {
                    *compressed += 1;
                }
                let us = (now.saturating_sub(ts) / 1000).max(1);
                latency.saturating_record(us);
                if let Some(h) = recent {
                    h.saturating_record(us);
                }
                if seen != Seen::Duplicate {
                    let i = seq as usize - 1;
                    recv_count[i] += 1;
                    last_recv[i] = last_recv[i].max(now);
                }
                true
            }
            Event::Ping(p) => {
                ws::client_frame(out, ws::OP_PONG, p, mask);
                true
            }
            Event::Pong => true,
            Event::Close(code) => {
                let body = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                ws::client_frame(out, ws::OP_CLOSE, &body, mask);
                end = Some(code.map_or("close_without_code".into(), |c| c.to_string()));
                false
            }
        });
        if let Err(e) = res {
            return Some(format!("protocol_error:{e:?}"));
        }
        end
    }

    fn report(&self, published: u64) -> WorkerReport {
        let mut r = WorkerReport {
            index: self.cfg.index,
            connections: self.cfg.connections,
            deliveries: self.deliveries,
            compressed_deliveries: self.compressed,
            malformed: self.malformed,
            unexpected_seq: self.unexpected,
            closed: self.closed.clone(),
            latency_us: hist_to_pairs(&self.latency),
            last_recv_ns: self.last_recv[..published as usize].to_vec(),
            recv_count: self.recv_count[..published as usize].to_vec(),
            cpu_seconds: sys::self_cpu_seconds(),
            ..Default::default()
        };
        if let Some(cs) = &self.cfg.channels {
            let n = cs.count as usize;
            r.channel_subscribers = vec![0; n];
            r.channel_lost = vec![0; n];
            r.channel_duplicated = vec![0; n];
            r.channel_out_of_order = vec![0; n];
        }
        for c in &self.conns {
            if !matches!(c.state, State::Open | State::Closed) {
                continue;
            }
            r.subscribed += 1;
            r.open_at_end += u64::from(c.state == State::Open);
            let (l, d, o) = if self.cfg.channels.is_some() {
                let (mut l, mut d, mut o) = (0, 0, 0);
                for cc in c.chans.counts(&self.channel_published) {
                    let i = cc.channel as usize;
                    r.channel_subscribers[i] += 1;
                    r.channel_lost[i] += cc.lost;
                    r.channel_duplicated[i] += cc.duplicated;
                    r.channel_out_of_order[i] += cc.out_of_order;
                    (l, d, o) = (l + cc.lost, d + cc.duplicated, o + cc.out_of_order);
                }
                (l, d, o)
            } else {
                (c.tracker.lost(published), c.tracker.duplicates(), c.tracker.out_of_order())
            };
            r.lost += l;
            r.duplicated += d;
            r.out_of_order += o;
            r.connections_with_loss += u64::from(l > 0);
            r.connections_with_duplicates += u64::from(d > 0);
            r.connections_out_of_order += u64::from(o > 0);
            r.max_lost_per_connection = r.max_lost_per_connection.max(l);
            r.max_duplicated_per_connection = r.max_duplicated_per_connection.max(d);
            r.max_out_of_order_per_connection = r.max_out_of_order_per_connection.max(o);
        }
        r
    }

    fn all_complete(&self, published: u64) -> bool {
        let open = self.conns.iter().filter(|c| c.state == State::Open);
        if self.cfg.channels.is_some() {
            open.clone().all(|c| c.chans.complete(&self.channel_published))
        } else {
            open.clone().all(|c| c.tracker.complete(published))
        }
    }

    /// What the parent's progress line shows, and a fresh interval for the latency.
    fn progress(&mut self) -> ProgressTick {
        let channels = self.cfg.channels.is_some();
        let mut t = ProgressTick { deliveries: self.deliveries, ..Default::default() };
        for c in self.conns.iter().filter(|c| c.state == State::Open) {
            t.open += 1;
            t.gaps += if channels { c.chans.gaps() } else { c.tracker.gaps() };
        }
        if let Some(h) = self.recent.as_mut() {
            t.latency_us = hist_to_pairs(h);
            h.reset();
        }
        t
    }
}

type Sh = Rc<RefCell<Shared>>;

/// How a connection's read loop ended.
enum End {
    Storm,
    Closed(String),
}

#[path = "worker_io.rs"]
mod io;
use io::conn_task;

fn emit(ev: &WorkerEvent) {
    let line = serde_json::to_string(ev).expect("serialize event");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn main() -> ! {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
        eprintln!("crier-load worker: no configuration on stdin (this subcommand is internal)");
        std::process::exit(1);
    }
    let cfg: WorkerConfig = match serde_json::from_str(&line) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crier-load worker: bad configuration: {e}");
            std::process::exit(1);
        }
    };
    sys::raise_nofile();
    if let Some(cpu) = cfg.pin_cpu
        && let Err(e) = sys::pin(cpu)
    {
        eprintln!("crier-load worker {}: {e}", cfg.index);
    }
    let deadline = cfg.deadline_ns;
    let index = cfg.index;
    std::thread::spawn(move || {
        loop {
            let now = sys::unix_ns();
            if now >= deadline {
                eprintln!("crier-load worker {index}: deadline reached, exiting");
                std::process::exit(3);
            }
            std::thread::sleep(Duration::from_nanos((deadline - now).min(1_000_000_000)));
        }
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(cmd) => {
                    if tx.send(cmd).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("crier-load worker {index}: bad command {line:?}: {e}"),
            }
        }
        // The parent is done with us (or gone): stop, whatever we are doing.
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(cfg, rx));
    std::process::exit(0);
}

async fn run(cfg: WorkerConfig, mut rx: tokio::sync::mpsc::UnboundedReceiver<Command>) {
    let n = cfg.connections;
    let rate = cfg.connect_rate;
    let progress_ms = cfg.progress_ms;
    let sh: Sh = Rc::new(RefCell::new(Shared::new(cfg)));
    if let Some(ms) = progress_ms {
        let sh = sh.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ms.max(50)));
            loop {
                tick.tick().await;
                let t = sh.borrow_mut().progress();
                emit(&WorkerEvent::Progress(t));
            }
        });
    }

    // Connect phase: connection j starts at j / rate.
    let start = Instant::now();
    sh.borrow_mut().connect.first_attempt_ns = sys::unix_ns();
    for j in 0..n {
        let due = start + Duration::from_secs_f64(j as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        tokio::task::spawn_local(conn_task(sh.clone(), j as usize));
    }
    while sh.borrow().first_done < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    emit(&WorkerEvent::Connected(sh.borrow().connect.clone()));

    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Storm { timeout_ms } => {
                let until = Instant::now() + Duration::from_millis(timeout_ms);
                {
                    // Every open connection at once: shutdown() sends the FIN and wakes
                    // its task, which closes the socket and connects again.
                    let mut s = sh.borrow_mut();
                    let mut dropped = 0;
                    for c in s.conns.iter_mut().filter(|c| c.state == State::Open) {
                        c.state = State::Reconnecting;
                        // SAFETY: fd is the connection's open socket, owned by its task
                        // on this thread; shutdown does not close it.
                        unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
                        dropped += 1;
                    }
                    s.storm =
                        Storm { drop_ns: sys::unix_ns(), dropped, reconnect: Some(new_hist()), ..Default::default() };
                }
                loop {
                    let done = {
                        let s = sh.borrow();
                        s.storm.back >= s.storm.dropped
                    };
                    if done || Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let mut s = sh.borrow_mut();
                s.storm.give_up = true;
                let st = &s.storm;
                let phase = StormPhase {
                    dropped: st.dropped,
                    back: st.back,
                    never_back: st.dropped - st.back.min(st.dropped),
                    failed_attempts: st.failed_attempts,
                    failures: st.failures.clone(),
                    drop_ns: st.drop_ns,
                    last_back_ns: st.last_back_ns,
                    reconnect_us: st.reconnect.as_ref().map(hist_to_pairs).unwrap_or_default(),
                };
                drop(s);
                emit(&WorkerEvent::StormDone(phase));
            }
            Command::Finish { published, grace_ms, channel_published } => {
                let published = published.min(sh.borrow().last_recv.len() as u64);
                sh.borrow_mut().channel_published = channel_published;
                let until = Instant::now() + Duration::from_millis(grace_ms);
                while !sh.borrow().all_complete(published) && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let report = sh.borrow().report(published);
                emit(&WorkerEvent::Report(Box::new(report)));
            }
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;

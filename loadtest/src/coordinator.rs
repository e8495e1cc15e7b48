//! The parent process: validates the plan, starts the workers, drives the phases of the
//! chosen mode, samples the server and the kernel, and merges everything into one report.

use crate::channels;
use crate::cli::{Cli, Limits, Mode, Plan, WorkerConfig, offset_ns};
use crate::progress::{self, Drawer, Live, Phase};
use crate::publisher;
use crate::report::{
    ConnSummary, ConnectPhase, IdleSummary, Percentiles, PublishSummary, Report, ServerSummary, SoakSample,
    SoakSummary, SockstatSummary, StormPhase, StormSummary, WorkerEvent, WorkerReport, add_pairs, merge, merge_counts,
    new_hist,
};
use crate::sys::{self, ProcSample};
use crate::worker::Command;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

enum Stop {
    Timeout(String),
    Error(String),
}

struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    events: mpsc::Receiver<(usize, Result<WorkerEvent, String>)>,
}

impl Workers {
    /// Starts the workers; their progress events go to `live` (if any), the rest to
    /// [`Workers::collect`].
    fn spawn(configs: Vec<WorkerConfig>, live: Option<Arc<Live>>) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (i, cfg) in configs.into_iter().enumerate() {
            let mut child = std::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker {i}: {e}"))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let line = serde_json::to_string(&cfg).expect("serialize config");
            writeln!(stdin, "{line}").map_err(|e| format!("worker {i}: {e}"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            let live = live.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let ev = serde_json::from_str::<WorkerEvent>(&line)
                        .map_err(|e| format!("worker {i} sent {line:?}: {e}"));
                    if let Ok(WorkerEvent::Progress(t)) = ev {
                        if let Some(l) = &live {
                            l.tick(i, t);
                        }
                        continue;
                    }
                    if tx.send((i, ev)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, Err(format!("worker {i} exited"))));
            });
            children.push(child);
            stdins.push(Some(stdin));
        }
        Ok(Workers { children, stdins, events: rx })
    }

    fn len(&self) -> usize {
        self.children.len()
    }

    fn send(&mut self, cmd: &Command) -> Result<(), Stop> {
        let line = serde_json::to_string(cmd).expect("serialize command");
        for (i, s) in self.stdins.iter_mut().enumerate() {
            if let Some(s) = s {
                writeln!(s, "{line}").and_then(|_| s.flush()).map_err(|e| Stop::Error(format!("worker {i}: {e}")))?;
            }
        }
        Ok(())
    }

    /// One event of the kind `pick` accepts from every worker, in worker order.
    fn collect<T>(
        &self,
        what: &str,
        deadline: Instant,
        pick: impl Fn(WorkerEvent) -> Option<T>,
    ) -> Result<Vec<T>, Stop> {
        let mut got: Vec<Option<T>> = (0..self.len()).map(|_| None).collect();
        let mut missing = self.len();
        while missing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((i, Ok(ev))) => {
                    if let Some(t) = pick(ev)
                        && got[i].is_none()
                    {
                        got[i] = Some(t);
                        missing -= 1;
                    }
                }
                Ok((_, Err(e))) => return Err(Stop::Error(format!("{e} while waiting for {what}"))),
                Err(_) => {
                    return Err(Stop::Timeout(format!(
                        "--timeout while waiting for {what} ({missing} of {} workers missing)",
                        self.len()
                    )));
                }
            }
        }
        Ok(got.into_iter().map(|t| t.expect("collected")).collect())
    }

    /// Closes stdin (workers exit at once) and reaps them; kills stragglers.
    fn shutdown(&mut self) {
        for s in &mut self.stdins {
            s.take();
        }
        let until = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

struct Ctx {
    plan: Plan,
    deadline: Instant,
    started: Instant,
    workers: Option<Workers>,
    before: Vec<Result<ProcSample, String>>,
    publish_start: Vec<Option<ProcSample>>,
    after: Vec<Option<ProcSample>>,
    /// (first due instant in unix ns, rate, messages published)
    published: Option<(u64, f64, u64)>,
    reports: Vec<WorkerReport>,
    /// The progress line's state, when one is shown.
    live: Option<Arc<Live>>,
}

pub fn run(cli: Cli) -> i32 {
    let limits = Limits { nofile_hard: sys::nofile().1, ephemeral_ports: sys::ephemeral_ports() };
    let plan = match Plan::new(&cli, limits) {
        Ok(p) => p,
        Err(e) => {
            progress::warn(&e);
            return 1;
        }
    };
    if plan.quiet {
        progress::set_quiet();
    }
    if let Some(cpu) = plan.pin_cpu
        && let Err(e) = sys::pin(cpu)
    {
        progress::warn(&e);
        return 1;
    }
    for w in &plan.warnings {
        progress::warn(&format!("warning: {w}"));
    }
    // The live line: on a terminal, unless the report is JSON or --quiet asks for silence.
    let live = (!plan.json && !plan.quiet && progress::stderr_is_tty()).then(|| {
        let after = match &plan.publish {
            Some(p) => Duration::from_secs_f64(p.count as f64 / p.rate) + plan.grace,
            None => plan.hold,
        };
        let active = plan.workers.iter().filter(|(_, n)| *n > 0).count();
        Live::new(active, plan.connections, plan.connect_rate, plan.publish.as_ref().map_or(0, |p| p.count), after)
    });
    let mut drawer = live.clone().map(Drawer::start);
    sys::raise_nofile();
    let started = Instant::now();
    let mut rep = Report {
        mode: plan.mode.name().into(),
        url: plan.url.clone(),
        procs: plan.procs,
        src_ips: plan.src_ips.len().max(1) as u32,
        deflate: plan.deflate,
        channels: plan.channels.clone(),
        connections: ConnSummary { requested: plan.connections, ..Default::default() },
        sockstat: SockstatSummary { page_size: sys::page_size(), before: sys::sockstat(), ..Default::default() },
        ..Default::default()
    };
    let mut ctx = Ctx {
        deadline: started + plan.timeout,
        started,
        workers: None,
        before: plan.server_pids.iter().map(|&p| sys::sample_pid(p)).collect(),
        publish_start: vec![None; plan.server_pids.len()],
        after: vec![None; plan.server_pids.len()],
        published: None,
        reports: Vec::new(),
        live,
        plan,
    };
    let outcome = phases(&mut ctx, &mut rep);
    if let Some(d) = drawer.as_mut() {
        d.stop();
    }
    let mut fatal = false;
    match outcome {
        Ok(()) => {}
        Err(Stop::Timeout(msg)) => {
            rep.timed_out = true;
            progress::warn(&msg);
        }
        Err(Stop::Error(msg)) => {
            fatal = true;
            progress::warn(&msg);
            rep.problems.push(msg);
        }
    }
    if ctx.after.iter().all(Option::is_none) {
        sample_into(&ctx.plan.server_pids, &mut ctx.after);
    }
    if rep.sockstat.after.is_none() {
        rep.sockstat.after = sys::sockstat();
    }
    if let Some(w) = ctx.workers.as_mut() {
        w.shutdown();
    }
    finish_report(&ctx, &mut rep);
    let errors = std::mem::take(&mut rep.problems);
    rep.find_problems();
    rep.problems.splice(0..0, errors);
    if ctx.plan.json {
        println!("{}", serde_json::to_string_pretty(&rep).expect("serialize report"));
    } else {
        print!("{}", rep.render());
    }
    if fatal || rep.timed_out {
        1
    } else if rep.problems.is_empty() {
        0
    } else {
        2
    }
}

fn note(msg: &str) {
    progress::note(msg);
}

fn sample_into(pids: &[u32], into: &mut [Option<ProcSample>]) {
    for (slot, &pid) in into.iter_mut().zip(pids) {
        *slot = sys::sample_pid(pid).ok();
    }
}

fn phases(ctx: &mut Ctx, rep: &mut Report) -> Result<(), Stop> {
    let plan = ctx.plan.clone();
    // Publisher sockets first: fail before opening thousands of connections.
    let mut conn_pub = match &plan.publish {
        Some(p) => {
            let c = publisher::connect(&p.sockets).map_err(Stop::Error)?;
            publisher::ping(&c, Duration::from_secs(5)).map_err(Stop::Error)?;
            Some(c)
        }
        None => None,
    };

    let deadline_ns = sys::unix_ns() + plan.timeout.as_nanos() as u64 + 5_000_000_000;
    let active: Vec<(u32, u64, u64)> = plan
        .workers
        .iter()
        .enumerate()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(i, &(first, n))| (i as u32, first, n))
        .collect();
    let configs: Vec<WorkerConfig> = active
        .iter()
        .map(|&(index, first, n)| WorkerConfig {
            index,
            target: plan.target.addr,
            host_header: plan.target.host_header.clone(),
            path: plan.target.path.clone(),
            first,
            connections: n,
            src_ips: plan.src_ips.clone(),
            connect_rate: plan.connect_rate / active.len() as f64,
            connect_timeout_ms: plan.connect_timeout.as_millis() as u64,
            deflate: plan.deflate,
            max_seq: plan.publish.as_ref().map_or(0, |p| p.count),
            deadline_ns,
            pin_cpu: plan.pin_cpu,
            channels: plan.channel_spec.clone(),
            progress_ms: ctx.live.is_some().then_some(progress::TICK_MS),
        })
        .collect();
    if plan.connections > 0 {
        note(&format!(
            "opening {} connections to {} at {}/s over {} worker(s), {} source address(es)",
            plan.connections,
            plan.url,
            plan.connect_rate,
            configs.len(),
            plan.src_ips.len().max(1)
        ));
    }
    ctx.workers = Some(Workers::spawn(configs, ctx.live.clone()).map_err(Stop::Error)?);
    let live = ctx.live.clone();
    let phase = |p: Phase| {
        if let Some(l) = &live {
            l.set_phase(p);
        }
    };
    let workers = ctx.workers.as_mut().expect("workers");

    // ---- connect
    let phases = workers.collect("connections", ctx.deadline, |ev| match ev {
        WorkerEvent::Connected(c) => Some(c),
        _ => None,
    })?;
    summarize_connect(&phases, &mut rep.connections);
    sample_into(&plan.server_pids, &mut ctx.publish_start);
    if plan.connections > 0 {
        note(&format!(
            "{} connected, {} failed in {:.2} s",
            rep.connections.ok, rep.connections.failed, rep.connections.connect_seconds
        ));
    }

    // ---- storm
    if plan.mode == Mode::Storm {
        let pb = plan.publish.as_ref().expect("storm publishes");
        let reserve = Duration::from_secs_f64(pb.count as f64 / pb.rate) + plan.grace + Duration::from_secs(5);
        let left =
            ctx.deadline.saturating_duration_since(Instant::now()).saturating_sub(reserve).max(Duration::from_secs(1));
        note("storm: every connection drops and reconnects now");
        phase(Phase::Storm);
        workers.send(&Command::Storm { timeout_ms: left.as_millis() as u64 })?;
        let storms = workers.collect("the storm", ctx.deadline + Duration::from_secs(1), |ev| match ev {
            WorkerEvent::StormDone(s) => Some(s),
            _ => None,
        })?;
        rep.storm = Some(summarize_storm(&storms));
        // The publishing phase starts now: CPU per delivery excludes the reconnects.
        sample_into(&plan.server_pids, &mut ctx.publish_start);
    }

    // ---- publish or hold
    let mut published = 0;
    if let Some(pb) = &plan.publish {
        let lead = Duration::from_millis(100);
        let start = Instant::now() + lead;
        let start_ns = sys::unix_ns() + lead.as_nanos() as u64;
        note(&format!(
            "publishing {} messages of {} B at {}/s to {} socket(s)",
            pb.count,
            pb.size,
            pb.rate,
            pb.sockets.len()
        ));
        let running =
            publisher::start(conn_pub.take().expect("connected publisher"), pb, start, start_ns, ctx.deadline);
        phase(Phase::Publishing { start, count: pb.count, rate: pb.rate });
        let mut soak = (plan.mode == Mode::Soak)
            .then(|| SoakSummary { interval_seconds: plan.sample_interval.as_secs_f64(), ..Default::default() });
        let mut next_sample = Instant::now();
        let mut timed_out = false;
        while !running.writers_done() {
            if let Some(s) = soak.as_mut()
                && Instant::now() >= next_sample
            {
                s.samples.push(soak_sample(&plan.server_pids, start));
                next_sample += plan.sample_interval;
            }
            if Instant::now() >= ctx.deadline {
                running.stop();
                timed_out = true;
                break;
            }
            if let Some(l) = &live {
                l.set_published(running.written());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (sockets, secs, n) = running.join();
        published = n;
        if let Some(l) = &live {
            l.set_published(n);
        }
        if let Some(mut s) = soak {
            s.samples.push(soak_sample(&plan.server_pids, start));
            s.rss_slope_bytes_per_hour = (0..plan.server_pids.len())
                .map(|i| {
                    let pts: Vec<(f64, f64)> = s
                        .samples
                        .iter()
                        .filter(|x| x.rss_bytes[i] > 0)
                        .map(|x| (x.t_seconds, x.rss_bytes[i] as f64))
                        .collect();
                    sys::slope(&pts).map(|b| b * 3600.0)
                })
                .collect();
            rep.soak = Some(s);
        }
        rep.publish = Some(PublishSummary {
            channel: pb.channel.clone(),
            binary: pb.binary,
            size: pb.size,
            planned: pb.count,
            published,
            rate_target: pb.rate,
            // n messages on schedule: the last goes out (n-1)/rate after the first.
            rate_achieved: if published > 0 { published as f64 / (secs + 1.0 / pb.rate) } else { 0.0 },
            seconds: secs,
            sockets,
        });
        ctx.published = Some((start_ns, pb.rate, published));
        if timed_out {
            return Err(Stop::Timeout("--timeout while publishing".into()));
        }
    } else {
        note(&format!("holding the connections for {:.1} s", plan.hold.as_secs_f64()));
        let until = Instant::now() + plan.hold;
        phase(Phase::Holding { until });
        while Instant::now() < until {
            if Instant::now() >= ctx.deadline {
                return Err(Stop::Timeout("--timeout while holding".into()));
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }

    // ---- collect
    let channel_published = match (&plan.channel_spec, plan.publish.as_ref().and_then(|p| p.schedule.as_ref())) {
        (Some(cs), Some(s)) => channels::per_channel(s, cs.count, published),
        _ => Vec::new(),
    };
    if plan.publish.is_some() {
        phase(Phase::Draining { until: Instant::now() + plan.grace });
    }
    workers.send(&Command::Finish { published, grace_ms: plan.grace.as_millis() as u64, channel_published })?;
    ctx.reports = workers.collect("reports", ctx.deadline + plan.grace, |ev| match ev {
        WorkerEvent::Report(r) => Some(*r),
        _ => None,
    })?;
    // Still connected: the server's and the kernel's memory with every connection open.
    sample_into(&plan.server_pids, &mut ctx.after);
    rep.sockstat.after = sys::sockstat();
    Ok(())
}

fn soak_sample(pids: &[u32], start: Instant) -> SoakSample {
    SoakSample {
        t_seconds: Instant::now().saturating_duration_since(start).as_secs_f64(),
        rss_bytes: pids.iter().map(|&p| sys::sample_pid(p).map_or(0, |s| s.rss_bytes)).collect(),
    }
}

fn summarize_connect(phases: &[ConnectPhase], c: &mut ConnSummary) {
    let mut first = u64::MAX;
    let mut last = 0;
    for p in phases {
        c.ok += p.ok;
        c.failed += p.failed;
        merge_counts(&mut c.failures, &p.failures);
        c.deflate_negotiated += p.deflate_negotiated;
        first = first.min(p.first_attempt_ns);
        last = last.max(p.last_ok_ns);
    }
    if c.ok > 0 && last > first {
        c.connect_seconds = (last - first) as f64 / 1e9;
        c.connect_rate = c.ok as f64 / c.connect_seconds;
    }
}

fn summarize_storm(storms: &[StormPhase]) -> StormSummary {
    let mut s = StormSummary::default();
    let mut h = new_hist();
    let mut drop = u64::MAX;
    let mut back = 0;
    for p in storms {
        s.dropped += p.dropped;
        s.back += p.back;
        s.never_back += p.never_back;
        s.failed_attempts += p.failed_attempts;
        merge_counts(&mut s.failures, &p.failures);
        add_pairs(&mut h, &p.reconnect_us);
        drop = drop.min(p.drop_ns);
        back = back.max(p.last_back_ns);
    }
    if s.never_back == 0 && s.back > 0 && back >= drop {
        s.seconds_until_all_back = Some((back - drop) as f64 / 1e9);
    }
    s.reconnect_ms = Percentiles::from_us(&h);
    s
}

fn finish_report(ctx: &Ctx, rep: &mut Report) {
    let plan = &ctx.plan;
    rep.elapsed_seconds = ctx.started.elapsed().as_secs_f64();
    let (start_ns, rate, published) = ctx.published.unwrap_or((0, 1.0, 0));
    let schedule = plan.publish.as_ref().and_then(|p| p.schedule.as_deref()).map(Vec::as_slice);
    let merged = merge(&ctx.reports, published, |seq| start_ns + offset_ns(rate, seq), schedule);
    if let (Some(cs), Some(s)) = (&plan.channel_spec, schedule)
        && !ctx.reports.is_empty()
    {
        rep.channel_accounting =
            Some(channels::summarize(cs, &ctx.reports, &channels::per_channel(s, cs.count, published)));
    }
    rep.tool_cpu_seconds = merged.cpu_seconds + sys::self_cpu_seconds();
    if !ctx.reports.is_empty() {
        rep.connections.open_at_end = merged.open_at_end;
        rep.connections.closed_early = merged.closed.clone();
        if plan.publish.is_some() {
            rep.latency_ms = Some(Percentiles::from_us(&merged.latency));
            rep.completion_ms = Some(Percentiles::from_us(&merged.completion));
            rep.delivery = Some(merged.delivery.clone());
        }
    }
    let page = rep.sockstat.page_size;
    rep.sockstat.tcp_mem_bytes_before = rep.sockstat.before.map(|s| s.tcp_mem_pages * page);
    rep.sockstat.tcp_mem_bytes_after = rep.sockstat.after.map(|s| s.tcp_mem_pages * page);

    let mut cpu_publish = 0.0;
    let mut any_cpu = false;
    // The shard threads' share, when every server has them (crier; not the peers).
    let mut shard_cpu_publish = Some(0.0);
    let mut rss_total_after = Some(0u64);
    let mut rss_growth: i64 = 0;
    let mut rss_known = !plan.server_pids.is_empty();
    for (i, &pid) in plan.server_pids.iter().enumerate() {
        let mut s = ServerSummary { pid, ..Default::default() };
        match &ctx.before[i] {
            Ok(b) => s.before = Some(*b),
            Err(e) => s.error = Some(e.clone()),
        }
        s.publish_start = ctx.publish_start[i];
        s.after = ctx.after[i];
        rss_total_after = rss_total_after.zip(s.after).map(|(t, a)| t + a.rss_bytes);
        if let (Some(b), Some(a)) = (s.before, s.after) {
            s.rss_delta_bytes = Some(a.rss_bytes as i64 - b.rss_bytes as i64);
            s.cpu_delta_seconds = Some(a.cpu_seconds - b.cpu_seconds);
            rss_growth += a.rss_bytes as i64 - b.rss_bytes as i64;
        } else {
            rss_known = false;
            if s.error.is_none() {
                s.error = Some(format!("pid {pid} could not be sampled at the end"));
            }
        }
        if let (Some(c), Some(a), Some(_)) = (s.publish_start, s.after, &plan.publish) {
            s.cpu_publish_phase_seconds = Some(a.cpu_seconds - c.cpu_seconds);
            cpu_publish += a.cpu_seconds - c.cpu_seconds;
            any_cpu = true;
            s.shard_cpu_publish_phase_seconds = c.shard_cpu_seconds.zip(a.shard_cpu_seconds).map(|(c, a)| a - c);
            shard_cpu_publish = shard_cpu_publish.zip(s.shard_cpu_publish_phase_seconds).map(|(t, d)| t + d);
        } else {
            shard_cpu_publish = None;
        }
        rep.servers.push(s);
    }
    if let Some(d) = &rep.delivery
        && any_cpu
        && cpu_publish > 0.0
    {
        rep.deliveries_per_server_cpu_second = Some(d.deliveries as f64 / cpu_publish);
        rep.deliveries_per_shard_cpu_second = shard_cpu_publish.filter(|&c| c > 0.0).map(|c| d.deliveries as f64 / c);
    }
    if plan.server_pids.len() > 1 {
        rep.servers_rss_total_after_bytes = rss_total_after;
    }
    if plan.mode == Mode::Idle {
        let n = rep.connections.ok;
        let kernel = match (rep.sockstat.before, rep.sockstat.after) {
            (Some(b), Some(a)) if n > 0 => {
                Some((a.tcp_mem_pages as f64 - b.tcp_mem_pages as f64) * page as f64 / n as f64)
            }
            _ => None,
        };
        rep.idle = Some(IdleSummary {
            connections: n,
            hold_seconds: plan.hold.as_secs_f64(),
            rss_growth_bytes: rss_known.then_some(rss_growth),
            rss_bytes_per_connection: (rss_known && n > 0).then(|| rss_growth as f64 / n as f64),
            kernel_tcp_mem_bytes_per_connection: kernel,
        });
    }
}

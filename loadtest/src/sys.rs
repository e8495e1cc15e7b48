//! What the tool reads from the system: a server's RSS and CPU time from /proc, the
//! kernel's TCP memory from /proc/net/sockstat, limits, pinning.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    /// VmRSS in bytes.
    pub rss_bytes: u64,
    /// utime + stime in seconds.
    pub cpu_seconds: f64,
    /// utime + stime of the threads named `crier-shard-*` (crier's shards), in seconds;
    /// `None` for a process without such threads (a peer server).
    #[serde(default)]
    pub shard_cpu_seconds: Option<f64>,
}

/// Name prefix of crier's shard threads (`crier-shard-<id>`, see crier's src/server).
pub const SHARD_THREAD_PREFIX: &str = "crier-shard";

/// Parses the `VmRSS:` line of /proc/PID/status into bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = it.next().unwrap_or("kB");
    Some(match unit {
        "kB" => n * 1024,
        "mB" | "MB" => n * 1024 * 1024,
        _ => n,
    })
}

/// Parses utime and stime (clock ticks) from /proc/PID/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name may contain spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

pub fn sample_pid(pid: u32) -> Result<ProcSample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let rss_bytes = parse_vmrss(&status).ok_or_else(|| format!("no VmRSS for pid {pid}"))?;
    let (u, s) = parse_stat_ticks(&stat).ok_or_else(|| format!("bad /proc/{pid}/stat"))?;
    Ok(ProcSample { rss_bytes, cpu_seconds: (u + s) as f64 / clock_ticks(), shard_cpu_seconds: shard_cpu(pid) })
}

/// CPU seconds of `pid`'s threads whose name starts with [`SHARD_THREAD_PREFIX`], from
/// /proc/PID/task/TID/stat (per thread, unlike /proc/PID/stat); `None` if there are none.
fn shard_cpu(pid: u32) -> Option<f64> {
    let mut ticks = 0;
    let mut found = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let name = stat.find('(').zip(stat.rfind(')')).map(|(a, b)| &stat[a + 1..b]);
        if !name.is_some_and(|n| n.starts_with(SHARD_THREAD_PREFIX)) {
            continue;
        }
        if let Some((u, s)) = parse_stat_ticks(&stat) {
            ticks += u + s;
            found = true;
        }
    }
    found.then(|| ticks as f64 / clock_ticks())
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sockstat {
    pub tcp_inuse: u64,
    pub tcp_alloc: u64,
    /// Pages of memory the kernel has allocated to TCP sockets.
    pub tcp_mem_pages: u64,
}

pub fn parse_sockstat(text: &str) -> Option<Sockstat> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = f.iter().position(|w| *w == name)?;
        f.get(i + 1)?.parse().ok()
    };
    Some(Sockstat { tcp_inuse: get("inuse")?, tcp_alloc: get("alloc").unwrap_or(0), tcp_mem_pages: get("mem")? })
}

pub fn sockstat() -> Option<Sockstat> {
    parse_sockstat(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
}

/// Least-squares slope of `(t_seconds, value)` points, per second.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    (den > 0.0).then(|| num / den)
}

/// (soft, hard) RLIMIT_NOFILE.
pub fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    (r.rlim_cur as u64, r.rlim_max as u64)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = nofile();
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: r is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return hard;
        }
    }
    soft
}

/// Number of local ports the kernel hands out (/proc/sys/net/ipv4/ip_local_port_range).
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u64>());
            let lo = it.next()?.ok()?;
            let hi = it.next()?.ok()?;
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Pins the calling thread (and threads and processes it starts later) to `cpu`.
pub fn pin(cpu: usize) -> Result<(), String> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == cpu)
        .ok_or_else(|| format!("--pin-cpu {cpu}: no such CPU available to this process"))?;
    if core_affinity::set_for_current(id) { Ok(()) } else { Err(format!("--pin-cpu {cpu}: sched_setaffinity failed")) }
}

/// CPU seconds (user + system) used by this process so far.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is valid for writes.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss() {
        let s = "Name:\tcrier\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(s), Some(12345 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn stat_ticks_with_odd_names() {
        let s = "1234 (cri er) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_ticks(s), Some((250, 75)));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn sockstat_line() {
        let s = "sockets: used 12\nTCP: inuse 3 orphan 0 tw 4 alloc 5 mem 17\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat(s), Some(Sockstat { tcp_inuse: 3, tcp_alloc: 5, tcp_mem_pages: 17 }));
    }

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 100.0 + 3.0 * i as f64)).collect();
        assert!((slope(&pts).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), None);
        let flat = [(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)];
        assert_eq!(slope(&flat), Some(0.0));
    }

    /// Only threads named `crier-shard-*` count, and their CPU time is their own.
    #[test]
    fn shard_threads_cpu() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let t = std::thread::Builder::new()
            .name("crier-shard-0".into())
            .spawn(move || {
                // Burn at least 0.2 s of CPU, then wait to be sampled.
                let start = self_thread_cpu();
                let mut x = 0u64;
                while self_thread_cpu() - start < 0.2 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                ready_tx.send(x).unwrap();
                let _ = rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let s = sample_pid(std::process::id()).unwrap();
        drop(tx);
        t.join().unwrap();
        let shard = s.shard_cpu_seconds.expect("the crier-shard-0 thread is found");
        assert!(shard >= 0.15, "the shard thread's own CPU: {shard}");
        assert!(shard <= s.cpu_seconds, "a part of the process's: {shard} > {}", s.cpu_seconds);
    }

    fn self_thread_cpu() -> f64 {
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: ru is valid for writes.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    #[test]
    fn reads_own_process() {
        let s = sample_pid(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert_eq!(s.shard_cpu_seconds, None, "the test process has no crier-shard thread");
        assert!(s.cpu_seconds >= 0.0);
        assert!(sockstat().is_some());
    }
}

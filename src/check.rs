//! `crier check`: a preflight that reads this machine's limits and says whether it can hold
//! N WebSocket connections, and for every setting that stands in the way, exactly what to
//! change and in which file of `tuning/` (or `systemd/crier.service`).
//!
//! Reading the machine ([`Readings::from_system`]) is kept apart from judging it
//! ([`assess`], a pure function), so every rule is unit-tested on made-up machines. A value
//! that cannot be read (a hidden `/proc`, a missing sysctl) is reported as `unknown`, never a
//! panic and never a verdict.
//!
//! Statuses: `blocking` means N connections cannot be held until it is fixed (the exit code
//! is then 1); `advice` means N fits but the box will behave worse than it could (reconnect
//! storms, memory pressure, io_uring unavailable); `ok`; `info`; `unknown`.
//!
//! The memory estimate per connection is two documented constants,
//! [`KERNEL_BYTES_PER_CONN`] and [`USER_BYTES_PER_CONN`], measured on an idle connection.
//! This module never changes the system: it only reads, and probes io_uring with a ring that
//! it closes at once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

/// Kernel memory per idle connection: socket, inode, dentry, TCP state and the epoll or
/// io_uring poll entry (~3.6 KiB, measured; see DESIGN.md). Not counted in `tcp_mem`.
pub const KERNEL_BYTES_PER_CONN: u64 = 3686;
/// crier's own memory per idle connection: connection state, subscriptions and allocator
/// overhead (~2 KiB budget; the measured idle cost is 0.5–1.4 KiB).
pub const USER_BYTES_PER_CONN: u64 = 2048;
/// Socket-buffer memory per connection while one small broadcast is in flight: one skb of
/// ~4 KiB truesize until the client ACKs it. Counted in `tcp_mem`.
pub const INFLIGHT_BYTES_PER_CONN: u64 = 4096;
/// File descriptors besides connections: listeners, io_uring/epoll and eventfds per shard,
/// publisher connections, admin HTTP, logs.
pub const FD_RESERVE: u64 = 1024;
/// `LimitNOFILE=` of `systemd/crier.service`.
pub const UNIT_NOFILE: u64 = 1_048_576;

const SYSCTL_FILE: &str = "tuning/sysctl.d/90-crier.conf";
const CONNTRACK_FILE: &str = "tuning/sysctl.d/91-crier-conntrack.conf";
const LIMITS_FILE: &str = "tuning/limits.d/90-crier.conf";
const UNIT_FILE: &str = "systemd/crier.service";
const LOW_PORT_DROPIN: &str = "systemd/low-port.conf";

/// Values of `tuning/sysctl.d/90-crier.conf`, which is sized for 100,000 connections.
const TUNED_SOMAXCONN: u64 = 65535;
const TUNED_NETDEV_BACKLOG: u64 = 16384;
const TUNED_FIN_TIMEOUT: u64 = 15;
/// Below this many connections, reconnect storms are small enough for kernel defaults.
const STORM_CONNECTIONS: u64 = 10_000;

/// Arguments of `crier check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Connections this machine should hold (compare `crier serve --max-connections`).
    #[arg(long, default_value = "100000", value_name = "N")]
    pub connections: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The address `crier serve --listen` will bind (checked against privileged ports and
    /// the local port range).
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The listen backlog `crier serve --backlog` will ask for (capped by somaxconn).
    #[arg(long, default_value = "4096", value_name = "N")]
    pub backlog: u64,
}

/// How one setting stands against N connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine for N.
    Ok,
    /// Facts with no judgement.
    Info,
    /// N fits, but changing this makes the box behave better.
    Advice,
    /// N connections cannot be held until this changes.
    Blocking,
    /// Could not be read.
    Unknown,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Advice => "advice",
            Status::Blocking => "BLOCKING",
            Status::Unknown => "unknown",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The setting, as the operator knows it: `RLIMIT_NOFILE`, `fs.nr_open`, `memory`, …
    pub item: &'static str,
    pub status: Status,
    /// The live value.
    pub current: String,
    /// What N connections need (empty when nothing specific).
    pub needed: String,
    /// Why it matters.
    pub why: String,
    /// What to change and where; set whenever `status` is `advice` or `blocking`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The memory estimate behind the `memory` finding.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub kernel_bytes_per_connection: u64,
    pub user_bytes_per_connection: u64,
    pub idle_bytes: u64,
    pub broadcast_bytes: u64,
}

/// The whole answer of `crier check`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: u64,
    /// `ok` or `blocked`.
    pub verdict: &'static str,
    pub blocking: usize,
    pub advice: usize,
    pub memory: MemoryEstimate,
    pub findings: Vec<Finding>,
}

/// Whether this process could set up an io_uring instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoUring {
    Available,
    /// `io_uring_setup` failed with this errno.
    Refused(i32),
}

/// Connection tracking, which exists only while the nf_conntrack module is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conntrack {
    NotLoaded,
    Loaded { max: Option<u64>, count: Option<u64> },
}

/// Everything `crier check` reads from the machine. `None` means it could not be read.
#[derive(Debug, Clone)]
pub struct Readings {
    /// RLIMIT_NOFILE of this process; `u64::MAX` for unlimited.
    pub nofile_soft: Option<u64>,
    pub nofile_hard: Option<u64>,
    pub file_max: Option<u64>,
    /// First field of fs/file-nr: file handles allocated now.
    pub files_allocated: Option<u64>,
    pub nr_open: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub tcp_syncookies: Option<u64>,
    pub netdev_max_backlog: Option<u64>,
    pub ip_local_port_range: Option<(u64, u64)>,
    /// net.ipv4.ip_local_reserved_ports as inclusive ranges.
    pub ip_local_reserved_ports: Option<Vec<(u64, u64)>>,
    pub ip_unprivileged_port_start: Option<u64>,
    /// Pages.
    pub tcp_mem: Option<[u64; 3]>,
    /// Bytes.
    pub tcp_rmem: Option<[u64; 3]>,
    pub tcp_wmem: Option<[u64; 3]>,
    pub tcp_fin_timeout: Option<u64>,
    pub conntrack: Conntrack,
    /// Bytes.
    pub mem_available: Option<u64>,
    pub cpus: Option<usize>,
    pub io_uring: IoUring,
    /// kernel.io_uring_disabled (0, 1 or 2), on kernels that have it.
    pub io_uring_disabled: Option<u64>,
    pub page_size: u64,
}

impl Readings {
    /// Reads the live values of this machine and this process.
    pub fn from_system() -> Readings {
        let (nofile_soft, nofile_hard) = nofile_limits();
        let conntrack = if Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
            Conntrack::Loaded {
                max: sysctl_u64("net/netfilter/nf_conntrack_max"),
                count: sysctl_u64("net/netfilter/nf_conntrack_count"),
            }
        } else {
            Conntrack::NotLoaded
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Readings {
            nofile_soft,
            nofile_hard,
            file_max: sysctl_u64("fs/file-max"),
            files_allocated: sysctl_numbers("fs/file-nr").and_then(|v| v.first().copied()),
            nr_open: sysctl_u64("fs/nr_open"),
            somaxconn: sysctl_u64("net/core/somaxconn"),
            tcp_max_syn_backlog: sysctl_u64("net/ipv4/tcp_max_syn_backlog"),
            tcp_syncookies: sysctl_u64("net/ipv4/tcp_syncookies"),
            netdev_max_backlog: sysctl_u64("net/core/netdev_max_backlog"),
            ip_local_port_range: sysctl_numbers("net/ipv4/ip_local_port_range").and_then(|v| match v[..] {
                [lo, hi] => Some((lo, hi)),
                _ => None,
            }),
            ip_local_reserved_ports: sysctl_text("net/ipv4/ip_local_reserved_ports").and_then(|s| parse_port_list(&s)),
            ip_unprivileged_port_start: sysctl_u64("net/ipv4/ip_unprivileged_port_start"),
            tcp_mem: sysctl_numbers("net/ipv4/tcp_mem").and_then(triple),
            tcp_rmem: sysctl_numbers("net/ipv4/tcp_rmem").and_then(triple),
            tcp_wmem: sysctl_numbers("net/ipv4/tcp_wmem").and_then(triple),
            tcp_fin_timeout: sysctl_u64("net/ipv4/tcp_fin_timeout"),
            conntrack,
            mem_available: std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| parse_meminfo_available(&s)),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            io_uring: probe_io_uring(),
            io_uring_disabled: sysctl_u64("kernel/io_uring_disabled"),
            page_size: u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096),
        }
    }
}

fn nofile_limits() -> (Option<u64>, Option<u64>) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (None, None);
    }
    let conv = |v: libc::rlim_t| if v == libc::RLIM_INFINITY { u64::MAX } else { v };
    (Some(conv(lim.rlim_cur)), Some(conv(lim.rlim_max)))
}

fn sysctl_text(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok()
}

fn sysctl_numbers(key: &str) -> Option<Vec<u64>> {
    sysctl_text(key).and_then(|s| parse_numbers(&s))
}

fn sysctl_u64(key: &str) -> Option<u64> {
    sysctl_numbers(key).and_then(|v| match v[..] {
        [x] => Some(x),
        _ => None,
    })
}

fn parse_numbers(s: &str) -> Option<Vec<u64>> {
    let v: Option<Vec<u64>> = s.split_whitespace().map(|w| w.parse().ok()).collect();
    v.filter(|v| !v.is_empty())
}

fn triple(v: Vec<u64>) -> Option<[u64; 3]> {
    v.try_into().ok()
}

/// `8080,9100-9200` → [(8080, 8080), (9100, 9200)]; an empty list is valid.
fn parse_port_list(s: &str) -> Option<Vec<(u64, u64)>> {
    s.trim()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => p.trim().parse().ok().map(|x| (x, x)),
        })
        .collect()
}

fn parse_meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// Sets up (and closes at once) a 4-entry io_uring, the way monoio starts a shard.
fn probe_io_uring() -> IoUring {
    // struct io_uring_params is 120 bytes and must be zeroed; u64s keep it aligned.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) reads and writes the 120-byte params struct,
    // which we own; on success it returns a file descriptor that we close.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4 as libc::c_uint, params.as_mut_ptr()) };
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return IoUring::Refused(errno);
    }
    // SAFETY: fd is the descriptor io_uring_setup just returned, owned by nobody else.
    unsafe { libc::close(fd as libc::c_int) };
    IoUring::Available
}

/// Judges the readings for N connections. Pure: everything it knows is in its arguments.
pub fn assess(r: &Readings, args: &CheckArgs) -> Report {
    let n = args.connections;
    let fds = n.saturating_add(FD_RESERVE);
    let mut out = Vec::new();

    out.push(nofile(r, fds));
    out.push(nr_open(r, fds));
    out.push(file_max(r, fds));
    let memory = MemoryEstimate {
        kernel_bytes_per_connection: KERNEL_BYTES_PER_CONN,
        user_bytes_per_connection: USER_BYTES_PER_CONN,
        idle_bytes: n.saturating_mul(KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN),
        broadcast_bytes: n.saturating_mul(INFLIGHT_BYTES_PER_CONN),
    };
    out.push(memory_finding(r, &memory));
    out.push(cpus(r, n));
    out.push(io_uring(r));
    out.push(somaxconn(r, args.backlog));
    out.push(syn_backlog(r, args.backlog));
    out.push(netdev_backlog(r, n));
    out.extend(listen_port(r, args.listen));
    out.push(port_range(r, n, args.listen.port()));
    out.push(tcp_mem(r, n));
    out.push(socket_buffer(r, n, "net.ipv4.tcp_rmem", r.tcp_rmem));
    out.push(socket_buffer(r, n, "net.ipv4.tcp_wmem", r.tcp_wmem));
    out.push(fin_timeout(r, n));
    out.push(conntrack(r, n));

    let blocking = out.iter().filter(|f| f.status == Status::Blocking).count();
    let advice = out.iter().filter(|f| f.status == Status::Advice).count();
    Report {
        connections: n,
        verdict: if blocking == 0 { "ok" } else { "blocked" },
        blocking,
        advice,
        memory,
        findings: out,
    }
}

fn finding(item: &'static str, status: Status, current: String, needed: String, why: &str) -> Finding {
    Finding { item, status, current, needed, why: why.to_string(), fix: None }
}

fn unknown(item: &'static str, what: &str) -> Finding {
    finding(item, Status::Unknown, "unreadable".into(), String::new(), &format!("could not read {what}"))
}

impl Finding {
    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

fn count(v: u64) -> String {
    if v == u64::MAX { "unlimited".into() } else { v.to_string() }
}

/// 1536 → "1.5 KiB", 3 GiB → "3.0 GiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

fn nofile(r: &Readings, fds: u64) -> Finding {
    const ITEM: &str = "RLIMIT_NOFILE";
    let (Some(soft), Some(hard)) = (r.nofile_soft, r.nofile_hard) else {
        return unknown(ITEM, "getrlimit(RLIMIT_NOFILE)");
    };
    let current = format!("soft {}, hard {}", count(soft), count(hard));
    let needed = format!("hard ≥ {fds}");
    let why = format!(
        "one file descriptor per connection, plus {FD_RESERVE} for listeners, publishers and admin; \
         crier raises its soft limit to the hard limit at start"
    );
    if hard >= fds {
        return finding(ITEM, Status::Ok, current, needed, &why);
    }
    let limit = fds.max(UNIT_NOFILE);
    let unit = if limit == UNIT_NOFILE {
        format!("LimitNOFILE={limit} in {UNIT_FILE} (the shipped unit sets it)")
    } else {
        format!("LimitNOFILE={limit} in a drop-in for {UNIT_FILE}, and fs.nr_open ≥ {limit} in {SYSCTL_FILE}")
    };
    let held = hard.saturating_sub(FD_RESERVE);
    finding(ITEM, Status::Blocking, current, needed, &format!("{why}; this hard limit holds {held} connections")).fix(
        format!(
            "under systemd: {unit}; started by hand: install {LIMITS_FILE} in /etc/security/limits.d/ \
             (tuning/apply.sh does) and log in again, or run ulimit -Hn {limit} as root before starting crier"
        ),
    )
}

fn nr_open(r: &Readings, fds: u64) -> Finding {
    const ITEM: &str = "fs.nr_open";
    let Some(v) = r.nr_open else { return unknown(ITEM, "/proc/sys/fs/nr_open") };
    let why = "the ceiling for any process's open-file hard limit";
    if v < fds {
        return finding(ITEM, Status::Blocking, v.to_string(), format!("≥ {fds}"), why)
            .fix(format!("fs.nr_open = {} in {SYSCTL_FILE}", fds.max(UNIT_NOFILE)));
    }
    if v < UNIT_NOFILE {
        return finding(
            ITEM,
            Status::Advice,
            v.to_string(),
            format!("≥ {UNIT_NOFILE}"),
            &format!("{why}; below LimitNOFILE={UNIT_NOFILE} of {UNIT_FILE}, systemd fails to start the unit"),
        )
        .fix(format!(
            "fs.nr_open = {UNIT_NOFILE} in {SYSCTL_FILE}, or a drop-in with LimitNOFILE={} for {UNIT_FILE}",
            v
        ));
    }
    finding(ITEM, Status::Ok, v.to_string(), format!("≥ {fds}"), why)
}

fn file_max(r: &Readings, fds: u64) -> Finding {
    const ITEM: &str = "fs.file-max";
    let Some(v) = r.file_max else { return unknown(ITEM, "/proc/sys/fs/file-max") };
    let why = "open files of the whole system";
    let current = match r.files_allocated {
        Some(a) => format!("{v} ({a} in use)"),
        None => v.to_string(),
    };
    let needed = format!("≥ {fds}");
    let fix = || format!("fs.file-max = {} in {SYSCTL_FILE}", (fds.saturating_mul(2)).max(2_097_152));
    if v < fds {
        return finding(ITEM, Status::Blocking, current, needed, why).fix(fix());
    }
    if let Some(a) = r.files_allocated
        && v.saturating_sub(a) < fds
    {
        return finding(ITEM, Status::Advice, current, needed, &format!("{why}; other processes already hold {a}"))
            .fix(fix());
    }
    finding(ITEM, Status::Ok, current, needed, why)
}

fn memory_finding(r: &Readings, m: &MemoryEstimate) -> Finding {
    const ITEM: &str = "memory";
    let Some(avail) = r.mem_available else { return unknown(ITEM, "MemAvailable in /proc/meminfo") };
    let per = KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN;
    let current = format!("{} available", human_bytes(avail));
    let needed = format!(
        "≥ {} idle, {} while broadcasting",
        human_bytes(m.idle_bytes),
        human_bytes(m.idle_bytes.saturating_add(m.broadcast_bytes))
    );
    let why = format!(
        "{} kernel + {} crier per idle connection, and ~{} of socket buffer each while a broadcast is in flight; \
         slow clients add up to --max-queue-bytes each until closed, and each channel's history up to \
         --history-bytes",
        human_bytes(KERNEL_BYTES_PER_CONN),
        human_bytes(USER_BYTES_PER_CONN),
        human_bytes(INFLIGHT_BYTES_PER_CONN)
    );
    if avail < m.idle_bytes {
        return finding(ITEM, Status::Blocking, current, needed, &why).fix(format!(
            "add memory, or lower crier serve --max-connections to {} (what {} holds)",
            avail / per,
            human_bytes(avail)
        ));
    }
    if avail < m.idle_bytes.saturating_add(m.broadcast_bytes) {
        return finding(ITEM, Status::Advice, current, needed, &why).fix(format!(
            "add memory, or keep --max-connections at or below {}",
            avail / (per + INFLIGHT_BYTES_PER_CONN)
        ));
    }
    finding(ITEM, Status::Ok, current, needed, &why)
}

fn cpus(r: &Readings, n: u64) -> Finding {
    const ITEM: &str = "CPUs";
    let Some(c) = r.cpus else { return unknown(ITEM, "the CPUs this process may use") };
    finding(
        ITEM,
        Status::Info,
        c.to_string(),
        String::new(),
        &format!("crier serve runs {c} shard(s), one per CPU, ~{} connections each", n / c.max(1) as u64),
    )
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        other => format!("errno {other}"),
    }
}

fn io_uring(r: &Readings) -> Finding {
    const ITEM: &str = "io_uring";
    let sysctl = match r.io_uring_disabled {
        Some(v) => format!(" (kernel.io_uring_disabled = {v})"),
        None => String::new(),
    };
    match r.io_uring {
        IoUring::Available => finding(
            ITEM,
            Status::Ok,
            format!("available{sysctl}"),
            String::new(),
            "--driver auto uses io_uring; under systemd/crier.service too (its SystemCallFilter allows io_uring)",
        ),
        IoUring::Refused(e) => {
            let current = format!("blocked: {} → crier will use epoll{sysctl}", errno_name(e));
            let (why, fix) = match (e, r.io_uring_disabled) {
                (_, Some(2)) => (
                    "the kernel has io_uring switched off".to_string(),
                    "nothing required (--driver auto uses epoll); to use io_uring: kernel.io_uring_disabled = 0"
                        .to_string(),
                ),
                (libc::EPERM, Some(1)) => (
                    "kernel.io_uring_disabled = 1 allows io_uring only to root and members of kernel.io_uring_group"
                        .to_string(),
                    "nothing required (--driver auto uses epoll); to use io_uring: set kernel.io_uring_group to the \
                     crier group's gid, or kernel.io_uring_disabled = 0"
                        .to_string(),
                ),
                (libc::EPERM | libc::ENOSYS, _) => (
                    "a seccomp filter (containers, e.g. Docker's default profile) or the kernel refuses io_uring_setup"
                        .to_string(),
                    "nothing required (--driver auto uses epoll); to use io_uring in a container, allow \
                     io_uring_setup, io_uring_enter and io_uring_register in its seccomp profile"
                        .to_string(),
                ),
                (libc::ENOMEM, _) => (
                    "kernels before 5.12 charge io_uring rings to RLIMIT_MEMLOCK".to_string(),
                    format!(
                        "nothing required (--driver auto uses epoll); to use io_uring: LimitMEMLOCK=64M in a drop-in \
                         for {UNIT_FILE}, or `memlock` in {LIMITS_FILE}"
                    ),
                ),
                _ => ("io_uring_setup failed".to_string(), "nothing required (--driver auto uses epoll)".to_string()),
            };
            finding(ITEM, Status::Advice, current, String::new(), &why).fix(fix)
        }
    }
}

fn somaxconn(r: &Readings, backlog: u64) -> Finding {
    const ITEM: &str = "net.core.somaxconn";
    let Some(v) = r.somaxconn else { return unknown(ITEM, "/proc/sys/net/core/somaxconn") };
    let why = "caps every listen backlog; a full accept queue during a reconnect storm drops SYNs \
               (each costs a client a 1 s+ retransmit)";
    if v < backlog {
        return finding(
            ITEM,
            Status::Advice,
            v.to_string(),
            format!("≥ {backlog} (--backlog)"),
            &format!("{why}; crier's --backlog {backlog} is cut to {v}"),
        )
        .fix(format!("net.core.somaxconn = {} in {SYSCTL_FILE}", backlog.max(TUNED_SOMAXCONN)));
    }
    finding(ITEM, Status::Ok, v.to_string(), format!("≥ {backlog} (--backlog)"), why)
}

fn syn_backlog(r: &Readings, backlog: u64) -> Finding {
    const ITEM: &str = "net.ipv4.tcp_max_syn_backlog";
    let Some(v) = r.tcp_max_syn_backlog else { return unknown(ITEM, "/proc/sys/net/ipv4/tcp_max_syn_backlog") };
    if r.tcp_syncookies != Some(0) {
        return finding(
            ITEM,
            Status::Ok,
            v.to_string(),
            String::new(),
            "SYN cookies are on (net.ipv4.tcp_syncookies), so a full SYN queue still completes handshakes",
        );
    }
    let why = "with SYN cookies off, half-open connections past this are dropped during a reconnect storm";
    if v < backlog {
        return finding(ITEM, Status::Advice, v.to_string(), format!("≥ {backlog}"), why)
            .fix(format!("net.ipv4.tcp_max_syn_backlog = 65535 in {SYSCTL_FILE} (or net.ipv4.tcp_syncookies = 1)"));
    }
    finding(ITEM, Status::Ok, v.to_string(), format!("≥ {backlog}"), why)
}

fn netdev_backlog(r: &Readings, n: u64) -> Finding {
    const ITEM: &str = "net.core.netdev_max_backlog";
    let Some(v) = r.netdev_max_backlog else { return unknown(ITEM, "/proc/sys/net/core/netdev_max_backlog") };
    let why = "packets queued per CPU before the TCP stack; a reconnect storm or the ACKs of a broadcast to every \
               client overflow a small queue and packets are dropped";
    if n >= STORM_CONNECTIONS && v < TUNED_NETDEV_BACKLOG {
        return finding(ITEM, Status::Advice, v.to_string(), format!("≥ {TUNED_NETDEV_BACKLOG}"), why)
            .fix(format!("net.core.netdev_max_backlog = {TUNED_NETDEV_BACKLOG} in {SYSCTL_FILE}"));
    }
    finding(ITEM, Status::Ok, v.to_string(), String::new(), why)
}

fn listen_port(r: &Readings, listen: SocketAddr) -> Option<Finding> {
    const ITEM: &str = "listen port";
    let port = u64::from(listen.port());
    let start = r.ip_unprivileged_port_start.unwrap_or(1024);
    if port == 0 || port >= start {
        return None;
    }
    Some(
        finding(
            ITEM,
            Status::Advice,
            format!("{listen}"),
            format!("port ≥ {start}, or CAP_NET_BIND_SERVICE"),
            &format!("ports below net.ipv4.ip_unprivileged_port_start ({start}) need CAP_NET_BIND_SERVICE, which the unit drops"),
        )
        .fix(format!(
            "install {LOW_PORT_DROPIN} as /etc/systemd/system/crier.service.d/low-port.conf, or put NGINX on the low port \
             and crier on 8080"
        )),
    )
}

fn port_range(r: &Readings, n: u64, listen_port: u16) -> Finding {
    const ITEM: &str = "net.ipv4.ip_local_port_range";
    let Some((lo, hi)) = r.ip_local_port_range else { return unknown(ITEM, "/proc/sys/net/ipv4/ip_local_port_range") };
    let size = hi.saturating_sub(lo) + 1;
    let current = format!("{lo} {hi} ({size} ports)");
    let port = u64::from(listen_port);
    let reserved =
        r.ip_local_reserved_ports.as_deref().is_some_and(|list| list.iter().any(|(a, b)| (*a..=*b).contains(&port)));
    if port != 0 && (lo..=hi).contains(&port) && !reserved {
        return finding(
            ITEM,
            Status::Advice,
            current,
            format!("excluding {port}"),
            &format!("crier's port {port} is inside the range: an outgoing connection may take it before crier binds"),
        )
        .fix(format!(
            "net.ipv4.ip_local_port_range = 10000 65535 in {SYSCTL_FILE} (if {port} < 10000), or \
             net.ipv4.ip_local_reserved_ports = {port}"
        ));
    }
    let why = "ports for outgoing connections: crier's clients use none, but NGINX on this box uses one per proxied \
               client per upstream address, and so does a load generator";
    if size < n {
        return finding(ITEM, Status::Info, current, format!("≥ {n} if proxied from this box"), why).fix(format!(
            "net.ipv4.ip_local_port_range = 10000 65535 in {SYSCTL_FILE}; past ~55,000 proxied clients, give NGINX \
                 several upstream addresses (127.0.0.2, 127.0.0.3, …)"
        ));
    }
    finding(ITEM, Status::Ok, current, String::new(), why)
}

fn tcp_mem(r: &Readings, n: u64) -> Finding {
    const ITEM: &str = "net.ipv4.tcp_mem";
    let Some([min, pressure, max]) = r.tcp_mem else { return unknown(ITEM, "/proc/sys/net/ipv4/tcp_mem") };
    let page = r.page_size;
    let current = format!("{min} {pressure} {max} pages");
    let burst = n.saturating_mul(INFLIGHT_BYTES_PER_CONN);
    let needed = format!("pressure ≥ {} pages ({})", burst.div_ceil(page), human_bytes(burst));
    let why = format!(
        "socket-buffer memory of all TCP sockets (pressure at {}, max {}); one small broadcast in flight to every \
         client holds ~{} each",
        human_bytes(pressure.saturating_mul(page)),
        human_bytes(max.saturating_mul(page)),
        human_bytes(INFLIGHT_BYTES_PER_CONN)
    );
    if pressure.saturating_mul(page) < burst {
        // Sized like the tuning file: ~10, ~20 and ~31 KiB per connection.
        let pages = |per: u64| n.saturating_mul(per).div_ceil(page);
        return finding(
            ITEM,
            Status::Advice,
            current,
            needed,
            &format!("{why}; past the pressure threshold the kernel shrinks buffers and stalls sends"),
        )
        .fix(format!(
            "net.ipv4.tcp_mem = {} {} {} in {SYSCTL_FILE} (the file's values are sized for 100,000)",
            pages(10 * 1024).max(min),
            pages(20 * 1024).max(pressure),
            pages(31 * 1024).max(max)
        ));
    }
    finding(ITEM, Status::Ok, current, needed, &why)
}

fn socket_buffer(r: &Readings, n: u64, item: &'static str, value: Option<[u64; 3]>) -> Finding {
    let Some([min, default, max]) = value else {
        return unknown(item, &format!("/proc/sys/{}", item.replace('.', "/")));
    };
    let current = format!("{min} {default} {max}");
    let worst = n.saturating_mul(default);
    let why = format!(
        "initial buffer per socket; if every client filled it: {n} × {} = {}",
        human_bytes(default),
        human_bytes(worst)
    );
    let Some([_, _, mem_max]) = r.tcp_mem else { return finding(item, Status::Ok, current, String::new(), &why) };
    let cap = mem_max.saturating_mul(r.page_size);
    if worst > cap {
        let extra = if item.ends_with("wmem") { ", or crier serve --socket-send-buffer 16KiB" } else { "" };
        return finding(
            item,
            Status::Advice,
            current,
            format!("default × {n} ≤ tcp_mem max ({})", human_bytes(cap)),
            &format!("{why}, more than tcp_mem's max ({})", human_bytes(cap)),
        )
        .fix(format!("{item} = 4096 16384 4194304 in {SYSCTL_FILE}{extra}"));
    }
    finding(item, Status::Ok, current, String::new(), &why)
}

fn fin_timeout(r: &Readings, n: u64) -> Finding {
    const ITEM: &str = "net.ipv4.tcp_fin_timeout";
    let Some(v) = r.tcp_fin_timeout else { return unknown(ITEM, "/proc/sys/net/ipv4/tcp_fin_timeout") };
    let why =
        "seconds a closed socket waits for a vanished client's FIN; on shutdown crier closes every connection at once";
    if n >= STORM_CONNECTIONS && v > TUNED_FIN_TIMEOUT {
        return finding(ITEM, Status::Advice, format!("{v} s"), format!("≤ {TUNED_FIN_TIMEOUT} s"), why)
            .fix(format!("net.ipv4.tcp_fin_timeout = {TUNED_FIN_TIMEOUT} in {SYSCTL_FILE}"));
    }
    finding(ITEM, Status::Ok, format!("{v} s"), String::new(), why)
}

fn conntrack(r: &Readings, n: u64) -> Finding {
    const ITEM: &str = "net.netfilter.nf_conntrack_max";
    let (max, used) = match r.conntrack {
        Conntrack::NotLoaded => {
            return finding(
                ITEM,
                Status::Ok,
                "conntrack not loaded".into(),
                String::new(),
                "no connection tracking, no limit",
            );
        }
        Conntrack::Loaded { max: None, .. } => return unknown(ITEM, "/proc/sys/net/netfilter/nf_conntrack_max"),
        Conntrack::Loaded { max: Some(m), count } => (m, count.unwrap_or(0)),
    };
    let current = format!("{max} ({used} in use)");
    let storm = n.saturating_mul(5) / 2;
    let why = "one entry per connection; when the table is full the kernel drops new connections";
    let fix = || format!("net.netfilter.nf_conntrack_max = {} in {CONNTRACK_FILE}", storm.max(262_144));
    if max < n {
        return finding(ITEM, Status::Blocking, current, format!("≥ {n}, better {storm}"), why).fix(fix());
    }
    if max < storm || max.saturating_sub(used) < n {
        return finding(
            ITEM,
            Status::Advice,
            current,
            format!("≥ {storm}"),
            &format!("{why}; a reconnect storm needs room for closing entries too"),
        )
        .fix(fix());
    }
    finding(ITEM, Status::Ok, current, format!("≥ {storm}"), why)
}

/// The report as the table `crier check` prints.
pub fn render_table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "crier check: can this machine hold {} connections?\n", report.connections);
    let _ = writeln!(s, "{:<9} {:<30} {:<44} NEEDED", "STATUS", "SETTING", "CURRENT");
    for f in &report.findings {
        let _ = writeln!(s, "{:<9} {:<30} {:<44} {}", f.status.label(), f.item, f.current, f.needed);
        if matches!(f.status, Status::Advice | Status::Blocking | Status::Unknown) || f.fix.is_some() {
            wrap(&mut s, "why: ", &f.why);
            if let Some(fix) = &f.fix {
                wrap(&mut s, "fix: ", fix);
            }
        }
    }
    let m = &report.memory;
    let _ = writeln!(
        s,
        "\nmemory estimate: {} × ({} kernel + {} crier) = {} idle, +{} while a broadcast is in flight",
        report.connections,
        human_bytes(m.kernel_bytes_per_connection),
        human_bytes(m.user_bytes_per_connection),
        human_bytes(m.idle_bytes),
        human_bytes(m.broadcast_bytes)
    );
    if report.blocking == 0 {
        let _ = writeln!(
            s,
            "verdict: ok, this machine can hold {} connections ({} advice)",
            report.connections, report.advice
        );
    } else {
        let _ = writeln!(
            s,
            "verdict: BLOCKED, {} setting(s) stop {} connections; fix the BLOCKING lines above ({} advice)",
            report.blocking, report.connections, report.advice
        );
    }
    s
}

/// Word-wraps `text` under the table, indented, at ~100 columns.
fn wrap(out: &mut String, label: &str, text: &str) {
    const INDENT: usize = 10;
    const WIDTH: usize = 100;
    let mut line = format!("{:INDENT$}{label}", "");
    let mut fresh = true;
    for word in text.split_whitespace() {
        if !fresh && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = format!("{:w$}", "", w = INDENT + label.len());
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out.push('\n');
}

/// `crier check`: reads this machine, prints the report, exits 1 when something blocks N.
pub fn run(args: &CheckArgs) -> ExitCode {
    let report = assess(&Readings::from_system(), args);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("crier check: cannot encode the report as JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render_table(&report));
    }
    if report.blocking == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-tuned 16 GiB, 4-CPU machine.
    fn tuned() -> Readings {
        Readings {
            nofile_soft: Some(1024),
            nofile_hard: Some(1_048_576),
            file_max: Some(9_223_372_036_854_775_807),
            files_allocated: Some(2000),
            nr_open: Some(1_048_576),
            somaxconn: Some(65535),
            tcp_max_syn_backlog: Some(65535),
            tcp_syncookies: Some(1),
            netdev_max_backlog: Some(16384),
            ip_local_port_range: Some((10000, 65535)),
            ip_local_reserved_ports: Some(vec![]),
            ip_unprivileged_port_start: Some(1024),
            tcp_mem: Some([262_144, 524_288, 786_432]),
            tcp_rmem: Some([4096, 16384, 4_194_304]),
            tcp_wmem: Some([4096, 16384, 4_194_304]),
            tcp_fin_timeout: Some(15),
            conntrack: Conntrack::NotLoaded,
            mem_available: Some(16 << 30),
            cpus: Some(4),
            io_uring: IoUring::Available,
            io_uring_disabled: Some(0),
            page_size: 4096,
        }
    }

    fn args(n: u64) -> CheckArgs {
        CheckArgs { connections: n, json: false, listen: "0.0.0.0:8080".parse().unwrap(), backlog: 4096 }
    }

    fn get<'a>(report: &'a Report, item: &str) -> &'a Finding {
        report.findings.iter().find(|f| f.item == item).unwrap_or_else(|| panic!("no finding {item}"))
    }

    #[test]
    fn a_tuned_machine_holds_100k_without_advice() {
        let report = assess(&tuned(), &args(100_000));
        let noisy: Vec<_> = report.findings.iter().filter(|f| !matches!(f.status, Status::Ok | Status::Info)).collect();
        assert!(noisy.is_empty(), "{noisy:#?}");
        assert_eq!(report.verdict, "ok");
        assert_eq!(report.memory.idle_bytes, 100_000 * (KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN));
    }

    #[test]
    fn a_20000_hard_limit_blocks_100k_and_names_the_files() {
        let mut r = tuned();
        r.nofile_soft = Some(20_000);
        r.nofile_hard = Some(20_000);
        let report = assess(&r, &args(100_000));
        let f = get(&report, "RLIMIT_NOFILE");
        assert_eq!(f.status, Status::Blocking);
        let fix = f.fix.as_deref().unwrap();
        assert!(fix.contains("LimitNOFILE=1048576") && fix.contains(UNIT_FILE) && fix.contains(LIMITS_FILE), "{fix}");
        assert_eq!(report.verdict, "blocked");
        assert_eq!(report.blocking, 1);

        let small = assess(&r, &args(1000));
        assert_eq!(get(&small, "RLIMIT_NOFILE").status, Status::Ok);
        // The reserve counts: 19,000 connections need 20,024 descriptors.
        assert_eq!(get(&assess(&r, &args(19_000)), "RLIMIT_NOFILE").status, Status::Blocking);
    }

    #[test]
    fn only_the_hard_limit_matters_because_crier_raises_the_soft_one() {
        let mut r = tuned();
        r.nofile_soft = Some(1024);
        assert_eq!(get(&assess(&r, &args(100_000)), "RLIMIT_NOFILE").status, Status::Ok);
        r.nofile_hard = Some(u64::MAX);
        assert!(get(&assess(&r, &args(100_000)), "RLIMIT_NOFILE").current.contains("unlimited"));
    }

    #[test]
    fn nr_open_blocks_above_it_and_warns_below_the_units_limit() {
        let mut r = tuned();
        r.nr_open = Some(65536);
        let f = assess(&r, &args(100_000)).findings.into_iter().find(|f| f.item == "fs.nr_open").unwrap();
        assert_eq!(f.status, Status::Blocking);
        assert!(f.fix.unwrap().contains(SYSCTL_FILE));
        r.nr_open = Some(524_288);
        assert_eq!(get(&assess(&r, &args(100_000)), "fs.nr_open").status, Status::Advice);
    }

    #[test]
    fn more_than_a_million_connections_need_a_bigger_unit_limit() {
        let mut r = tuned();
        r.nr_open = Some(4_000_000);
        r.nofile_hard = Some(1_048_576);
        r.mem_available = Some(64 << 30);
        let report = assess(&r, &args(2_000_000));
        let fix = get(&report, "RLIMIT_NOFILE").fix.clone().unwrap();
        assert!(fix.contains("LimitNOFILE=2001024 in a drop-in") && fix.contains("fs.nr_open"), "{fix}");
    }

    #[test]
    fn file_max_counts_what_others_hold() {
        let mut r = tuned();
        r.file_max = Some(50_000);
        assert_eq!(get(&assess(&r, &args(100_000)), "fs.file-max").status, Status::Blocking);
        r.file_max = Some(150_000);
        r.files_allocated = Some(60_000);
        assert_eq!(get(&assess(&r, &args(100_000)), "fs.file-max").status, Status::Advice);
    }

    #[test]
    fn memory_blocks_below_the_idle_estimate_and_says_how_many_fit() {
        let mut r = tuned();
        r.mem_available = Some(256 << 20);
        let report = assess(&r, &args(100_000));
        let f = get(&report, "memory");
        assert_eq!(f.status, Status::Blocking);
        let fits = (256u64 << 20) / (KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN);
        assert!(f.fix.as_deref().unwrap().contains(&fits.to_string()));
        r.mem_available = Some(800 << 20); // idle fits (547 MiB), a broadcast (938 MiB) does not
        assert_eq!(get(&assess(&r, &args(100_000)), "memory").status, Status::Advice);
    }

    #[test]
    fn blocked_io_uring_is_advice_not_a_blocker() {
        let mut r = tuned();
        r.io_uring = IoUring::Refused(libc::EPERM);
        let report = assess(&r, &args(100_000));
        let f = get(&report, "io_uring");
        assert_eq!(f.status, Status::Advice);
        assert!(f.current.contains("blocked") && f.current.contains("epoll"), "{}", f.current);
        assert!(f.fix.as_deref().unwrap().contains("seccomp"));
        assert_eq!(report.verdict, "ok");
        r.io_uring = IoUring::Refused(libc::ENOMEM);
        assert!(get(&assess(&r, &args(10)), "io_uring").fix.as_deref().unwrap().contains("LimitMEMLOCK"));
        r.io_uring = IoUring::Refused(libc::EPERM);
        r.io_uring_disabled = Some(2);
        assert!(get(&assess(&r, &args(10)), "io_uring").fix.as_deref().unwrap().contains("io_uring_disabled = 0"));
    }

    #[test]
    fn backlogs_are_judged_against_the_listen_backlog() {
        let mut r = tuned();
        r.somaxconn = Some(128);
        let f = get(&assess(&r, &args(100_000)), "net.core.somaxconn").clone();
        assert_eq!(f.status, Status::Advice);
        assert!(f.why.contains("cut to 128"));
        r.tcp_max_syn_backlog = Some(128);
        assert_eq!(get(&assess(&r, &args(100_000)), "net.ipv4.tcp_max_syn_backlog").status, Status::Ok, "cookies on");
        r.tcp_syncookies = Some(0);
        assert_eq!(get(&assess(&r, &args(100_000)), "net.ipv4.tcp_max_syn_backlog").status, Status::Advice);
    }

    #[test]
    fn storm_settings_matter_only_for_many_connections() {
        let mut r = tuned();
        r.netdev_max_backlog = Some(1000);
        r.tcp_fin_timeout = Some(60);
        let big = assess(&r, &args(100_000));
        assert_eq!(get(&big, "net.core.netdev_max_backlog").status, Status::Advice);
        assert_eq!(get(&big, "net.ipv4.tcp_fin_timeout").status, Status::Advice);
        let small = assess(&r, &args(1000));
        assert_eq!(get(&small, "net.core.netdev_max_backlog").status, Status::Ok);
        assert_eq!(get(&small, "net.ipv4.tcp_fin_timeout").status, Status::Ok);
    }

    #[test]
    fn listen_port_inside_the_local_range_unless_reserved() {
        let mut r = tuned();
        r.ip_local_port_range = Some((1024, 65535));
        assert!(get(&assess(&r, &args(10)), "net.ipv4.ip_local_port_range").fix.as_deref().unwrap().contains("8080"));
        r.ip_local_reserved_ports = parse_port_list("80,8000-8100\n");
        assert_eq!(get(&assess(&r, &args(10)), "net.ipv4.ip_local_port_range").status, Status::Ok);
        r.ip_local_port_range = Some((32768, 60999));
        let f = get(&assess(&r, &args(100_000)), "net.ipv4.ip_local_port_range").clone();
        assert_eq!(f.status, Status::Info, "28k ports < 100k matters only behind a local proxy");
        assert!(f.fix.unwrap().contains("upstream addresses"));
        assert_eq!(get(&assess(&r, &args(10_000)), "net.ipv4.ip_local_port_range").status, Status::Ok);
    }

    #[test]
    fn low_ports_point_at_the_drop_in() {
        let mut a = args(10);
        a.listen = "0.0.0.0:443".parse().unwrap();
        let f = get(&assess(&tuned(), &a), "listen port").clone();
        assert_eq!(f.status, Status::Advice);
        assert!(f.fix.unwrap().contains(LOW_PORT_DROPIN));
        assert!(assess(&tuned(), &args(10)).findings.iter().all(|f| f.item != "listen port"));
    }

    #[test]
    fn tcp_memory_scales_with_n() {
        let mut r = tuned();
        r.tcp_mem = Some([22_000, 29_000, 44_000]); // a 1 GiB box's defaults: pressure 113 MiB
        let f = get(&assess(&r, &args(100_000)), "net.ipv4.tcp_mem").clone();
        assert_eq!(f.status, Status::Advice);
        assert!(f.fix.unwrap().contains("tcp_mem = 250000 500000 775000"));
        assert_eq!(get(&assess(&r, &args(5000)), "net.ipv4.tcp_mem").status, Status::Ok);
        r.tcp_rmem = Some([4096, 131_072, 6_291_456]);
        assert_eq!(get(&assess(&r, &args(100_000)), "net.ipv4.tcp_rmem").status, Status::Advice);
        assert!(
            get(&assess(&r, &args(100_000)), "net.ipv4.tcp_wmem")
                .fix
                .as_deref()
                .unwrap()
                .contains("--socket-send-buffer")
        );
    }

    #[test]
    fn conntrack_blocks_only_when_loaded_and_too_small() {
        let mut r = tuned();
        assert_eq!(get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").status, Status::Ok);
        r.conntrack = Conntrack::Loaded { max: Some(65536), count: Some(10) };
        let f = get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").clone();
        assert_eq!(f.status, Status::Blocking);
        assert!(f.fix.unwrap().contains(CONNTRACK_FILE));
        r.conntrack = Conntrack::Loaded { max: Some(262_144), count: Some(0) };
        assert_eq!(get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").status, Status::Ok);
        r.conntrack = Conntrack::Loaded { max: Some(262_144), count: Some(200_000) };
        assert_eq!(get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").status, Status::Advice);
    }

    #[test]
    fn unreadable_values_are_unknown_not_blocking() {
        let mut r = tuned();
        r.nr_open = None;
        r.mem_available = None;
        r.nofile_hard = None;
        let report = assess(&r, &args(100_000));
        assert_eq!(get(&report, "fs.nr_open").status, Status::Unknown);
        assert_eq!(get(&report, "memory").status, Status::Unknown);
        assert_eq!(get(&report, "RLIMIT_NOFILE").status, Status::Unknown);
        assert_eq!(report.verdict, "ok");
    }

    #[test]
    fn every_advice_and_blocker_says_what_to_change() {
        let r = Readings {
            nofile_hard: Some(100),
            nr_open: Some(100),
            file_max: Some(100),
            mem_available: Some(1 << 20),
            somaxconn: Some(16),
            tcp_syncookies: Some(0),
            tcp_max_syn_backlog: Some(16),
            netdev_max_backlog: Some(10),
            ip_local_port_range: Some((1024, 2000)),
            tcp_mem: Some([1, 2, 3]),
            tcp_fin_timeout: Some(120),
            conntrack: Conntrack::Loaded { max: Some(10), count: Some(0) },
            io_uring: IoUring::Refused(libc::ENOSYS),
            ..tuned()
        };
        let mut a = args(100_000);
        a.listen = "0.0.0.0:80".parse().unwrap();
        let report = assess(&r, &a);
        for f in &report.findings {
            if matches!(f.status, Status::Advice | Status::Blocking) {
                assert!(f.fix.is_some(), "{f:#?}");
            }
        }
        assert!(report.blocking >= 5, "{report:#?}");
        let table = render_table(&report);
        assert!(table.contains("BLOCKED") && table.contains("fix: "), "{table}");
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_meminfo_available("MemTotal: 10 kB\nMemAvailable:   24301720 kB\n"), Some(24_301_720 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 10 kB\n"), None);
        assert_eq!(parse_numbers("4096\t131072\t6291456\n"), Some(vec![4096, 131_072, 6_291_456]));
        assert_eq!(parse_numbers("abc"), None);
        assert_eq!(parse_numbers(""), None);
        assert_eq!(parse_port_list("\n"), Some(vec![]));
        assert_eq!(parse_port_list("8080,9100-9200"), Some(vec![(8080, 8080), (9100, 9200)]));
        assert_eq!(parse_port_list("x"), None);
        assert_eq!(human_bytes(3686), "3.6 KiB");
        assert_eq!(human_bytes(100), "100 B");
    }

    #[test]
    fn json_has_the_fields_machines_read() {
        let mut r = tuned();
        r.nofile_hard = Some(20_000);
        let json = serde_json::to_value(assess(&r, &args(100_000))).unwrap();
        assert_eq!(json["verdict"], "blocked");
        assert_eq!(json["connections"], 100_000);
        let nofile = json["findings"].as_array().unwrap().iter().find(|f| f["item"] == "RLIMIT_NOFILE").unwrap();
        assert_eq!(nofile["status"], "blocking");
        assert!(nofile["fix"].as_str().unwrap().contains("tuning/limits.d/90-crier.conf"));
    }

    #[test]
    fn reading_this_machine_never_panics() {
        let r = Readings::from_system();
        let _ = render_table(&assess(&r, &args(100_000)));
    }
}

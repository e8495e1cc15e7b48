//! What each reading must be for N connections, and the advice when it is not: [`assess`]
//! turns [`Readings`] into one [`Finding`] per setting, naming the file of `tuning/` or
//! `systemd/` to change.
//!
//! Pure: everything a rule knows is in its arguments, so every rule is unit-tested on made-up
//! machines. It must never read the machine (that is `readings.rs`) or print anything (that is
//! `report.rs`). The memory estimate per connection is two documented constants,
//! [`KERNEL_BYTES_PER_CONN`] and [`USER_BYTES_PER_CONN`], measured on an idle connection.

use std::net::SocketAddr;

use super::readings::{Conntrack, IoUring, Readings};
use super::report::{Finding, MemoryEstimate, Report, Status, human_bytes};
use crate::config::CheckArgs;

/// Kernel memory per idle connection: socket, inode, dentry, TCP state and the epoll or
/// io_uring poll entry (~3.6 KiB, measured; see DESIGN.md). Not counted in `tcp_mem`.
pub const KERNEL_BYTES_PER_CONN: u64 = 3686;
/// crier's own memory per idle connection: connection state, subscriptions and allocator
/// overhead (~2 KiB budget; the measured idle cost is 0.5–1.4 KiB).
pub const USER_BYTES_PER_CONN: u64 = 2048;
/// Socket-buffer memory per connection while one small broadcast is in flight: one skb of
/// ~4 KiB truesize until the client ACKs it. Counted in `tcp_mem`.
pub const INFLIGHT_BYTES_PER_CONN: u64 = 4096;
/// File descriptors besides connections: the reserve `crier serve` keeps out of the
/// WebSocket side's reach (its own, per shard, publishers, admin, refusals, and with
/// `--cluster` the Redis connections), the same number serve uses (`capacity::reserve`),
/// so check and serve never disagree.
pub fn fd_reserve(args: &CheckArgs) -> u64 {
    crate::ops::capacity::reserve(args.shards.unwrap_or_else(crate::config::online_cpus), args.cluster) as u64
}
/// `LimitNOFILE=` of `systemd/crier.service`.
pub const UNIT_NOFILE: u64 = 1_048_576;

pub(super) const SYSCTL_FILE: &str = "tuning/sysctl.d/90-crier.conf";
pub(super) const CONNTRACK_FILE: &str = "tuning/sysctl.d/91-crier-conntrack.conf";
pub(super) const LIMITS_FILE: &str = "tuning/limits.d/90-crier.conf";
pub(super) const UNIT_FILE: &str = "systemd/crier.service";
pub(super) const LOW_PORT_DROPIN: &str = "systemd/low-port.conf";

/// Values of `tuning/sysctl.d/90-crier.conf`, which is sized for 100,000 connections.
const TUNED_SOMAXCONN: u64 = 65535;
const TUNED_NETDEV_BACKLOG: u64 = 16384;
const TUNED_FIN_TIMEOUT: u64 = 15;
/// Below this many connections, reconnect storms are small enough for kernel defaults.
const STORM_CONNECTIONS: u64 = 10_000;

/// Judges the readings for N connections. Pure: everything it knows is in its arguments.
pub fn assess(r: &Readings, args: &CheckArgs) -> Report {
    let n = args.connections;
    let reserve = fd_reserve(args);
    let fds = n.saturating_add(reserve);
    let mut out = Vec::new();

    out.push(nofile(r, fds, reserve));
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

fn nofile(r: &Readings, fds: u64, reserve: u64) -> Finding {
    const ITEM: &str = "RLIMIT_NOFILE";
    let (Some(soft), Some(hard)) = (r.nofile_soft, r.nofile_hard) else {
        return unknown(ITEM, "getrlimit(RLIMIT_NOFILE)");
    };
    let current = format!("soft {}, hard {}", count(soft), count(hard));
    let needed = format!("hard ≥ {fds}");
    let why = format!(
        "one file descriptor per connection, plus {reserve} reserved for crier itself, publishers, admin \
         and refusals; crier raises its soft limit to the hard limit at start"
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
    let held = hard.saturating_sub(reserve);
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
        IoUring::Unsupported => finding(
            ITEM,
            Status::Advice,
            format!("blocked: missing operations → crier will use epoll{sysctl}"),
            String::new(),
            "io_uring_setup works, but this kernel's io_uring lacks operations monoio needs (or \
             MONOIO_FORCE_LEGACY_DRIVER is set)",
        )
        .fix(
            "nothing required (--driver auto uses epoll); to use io_uring: a newer kernel, or unset \
             MONOIO_FORCE_LEGACY_DRIVER",
        ),
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

//! What `crier check` reads off the machine: the open-file limits of this process, sysctls
//! under `/proc/sys`, MemAvailable, the CPUs this process may use, and whether io_uring can be
//! set up.
//!
//! It owns the [`Readings`] type and the parsers of the kernel's text formats. It must never
//! judge a value (that is `rules.rs`) or change the system: it only reads, and the io_uring
//! probe (the shards' own, [`crate::shard::runtime::probe_io_uring`]) closes its ring at once. A value
//! that cannot be read is `None`, never a panic. [`nofile_limits`] is `pub` so that the
//! server's start-up reads RLIMIT_NOFILE through it too.

use std::path::Path;

/// Whether a shard started now could run on io_uring, as `crier serve --driver auto` decides
/// it ([`crate::shard::runtime::probe_io_uring`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoUring {
    Available,
    /// `io_uring_setup` failed with this errno.
    Refused(i32),
    /// `io_uring_setup` works, but the kernel lacks io_uring operations monoio needs (or
    /// `MONOIO_FORCE_LEGACY_DRIVER` is set), so shards run on epoll.
    Unsupported,
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
        let (nofile_soft, nofile_hard) = match nofile_limits() {
            Ok(NofileLimits { soft, hard }) => (Some(soft), Some(hard)),
            Err(_) => (None, None),
        };
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
            io_uring: io_uring(),
            io_uring_disabled: sysctl_u64("kernel/io_uring_disabled"),
            page_size: u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096),
        }
    }
}

/// The open-file limits of this process; `u64::MAX` stands for unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft: u64,
    pub hard: u64,
}

/// Reads RLIMIT_NOFILE (getrlimit(2)). `pub` so that the server's start-up, which raises the
/// soft limit to the hard one, reads it the same way as `crier check`.
pub fn nofile_limits() -> std::io::Result<NofileLimits> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let conv = |v: libc::rlim_t| if v == libc::RLIM_INFINITY { u64::MAX } else { v };
    Ok(NofileLimits { soft: conv(lim.rlim_cur), hard: conv(lim.rlim_max) })
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
pub(super) fn parse_port_list(s: &str) -> Option<Vec<(u64, u64)>> {
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

/// The same probe `crier serve` runs before choosing its driver, so the two never disagree.
fn io_uring() -> IoUring {
    match crate::shard::runtime::probe_io_uring() {
        Ok(()) => IoUring::Available,
        Err(e) => match e.raw_os_error() {
            Some(errno) => IoUring::Refused(errno),
            None => IoUring::Unsupported,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    /// getrlimit against the kernel's own account of this process, /proc/self/limits.
    #[test]
    fn nofile_limits_match_proc_self_limits() {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
        let value = |w: &str| if w == "unlimited" { u64::MAX } else { w.parse().expect("a number") };
        let words: Vec<&str> = line.split_whitespace().collect();
        let (soft, hard) = (value(words[3]), value(words[4]));
        assert_eq!(nofile_limits().expect("getrlimit"), NofileLimits { soft, hard });
    }
}

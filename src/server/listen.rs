//! The WebSocket address: one SO_REUSEPORT listener per shard, and one server per address.
//!
//! SO_REUSEPORT is how the shards share `--listen`, but the kernel lets any process of the
//! same user join that group, and then clients are split between servers that publish
//! separately. So after binding, crier looks for other listeners on the address (in
//! `/proc/self/net/tcp{,6}`, whose socket inodes lead to the owning process through
//! `/proc/*/fd`) and refuses to start when it finds one, naming it.
//!
//! Sharing on purpose takes `--listen-shared` on every process. A crier started without it
//! also holds an abstract Unix socket named after the address for its lifetime, so that a
//! `--listen-shared` crier can tell it would be joining one that did not agree, and refuses.
//! The order (listen, then mark, then look) means two criers starting at the same moment can
//! both fail, but never both succeed in sharing silently. This module never runs after
//! start-up.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// The bound listeners, and what keeps the address marked exclusive.
pub struct WsListeners {
    pub listeners: Vec<std::net::TcpListener>,
    /// The address, with port 0 resolved.
    pub addr: SocketAddr,
    /// Held without `--listen-shared` (see the module doc); released when crier exits.
    _exclusive: Option<UnixDatagram>,
}

/// Another listener found on an address that overlaps ours.
struct Other {
    addr: SocketAddr,
    /// "pid 123 (nginx)", or why the owner is not known.
    owner: String,
}

/// Binds one SO_REUSEPORT listener per shard on `--listen`, then enforces the one server
/// per address rule unless `--listen-shared`.
pub fn bind(cfg: &Config) -> Result<WsListeners, String> {
    let mut addr = cfg.listen;
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(cfg.shards);
    for i in 0..cfg.shards {
        let fail = |what: &str, e: io::Error| format!("--listen {addr}: {what}: {e}");
        let sock =
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| fail("socket", e))?;
        sock.set_reuse_port(true).map_err(|e| fail("SO_REUSEPORT", e))?;
        sock.set_reuse_address(true).map_err(|e| fail("SO_REUSEADDR", e))?;
        if let Some(size) = cfg.socket_send_buffer {
            sock.set_send_buffer_size(size).map_err(|e| fail("SO_SNDBUF", e))?;
        }
        sock.set_nonblocking(true).map_err(|e| fail("non-blocking", e))?;
        if let Err(e) = sock.bind(&addr.into()) {
            // A listener without SO_REUSEPORT (or another user's) holds the port: say whose.
            let others = if e.kind() == io::ErrorKind::AddrInUse { others_on(addr, &[]) } else { Vec::new() };
            return Err(match others.first() {
                Some(o) => in_use(addr, o, "cannot bind: the address is in use"),
                None => fail("cannot bind", e),
            });
        }
        sock.listen(cfg.backlog).map_err(|e| fail("cannot listen", e))?;
        if i == 0 {
            // Port 0 resolves here; the other shards bind the same port.
            addr = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| format!("--listen {addr}: no local address"))?;
        }
        out.push(sock.into());
    }
    let ours: Vec<u64> = out.iter().filter_map(|l| inode_of(l.as_raw_fd())).collect();
    let exclusive = if cfg.listen_shared { None } else { Some(mark_exclusive(addr)) };
    let others = others_on(addr, &ours);
    let Some(mark) = exclusive else {
        return shared(out, addr, &others);
    };
    if let Some(o) = others.first() {
        return Err(in_use(addr, o, "another process already listens on it"));
    }
    // Held by a crier we could not see (another user's, say): still not ours to share.
    let mark = mark.map_err(|e| format!("--listen {addr}: {e}"))?;
    Ok(WsListeners { listeners: out, addr, _exclusive: Some(mark) })
}

/// `--listen-shared`: join the others, unless one of them is a crier that did not agree.
fn shared(listeners: Vec<std::net::TcpListener>, addr: SocketAddr, others: &[Other]) -> Result<WsListeners, String> {
    if let Some(o) = others.iter().find(|o| is_marked_exclusive(o.addr)) {
        return Err(format!(
            "--listen {addr}: {} listens on {} without --listen-shared; crier shares an address only with processes that all set it: stop that one, or restart it with --listen-shared",
            o.owner, o.addr
        ));
    }
    if !others.is_empty() {
        let list: Vec<String> = others.iter().map(|o| format!("{} on {}", o.owner, o.addr)).collect();
        tracing::info!(
            "--listen {addr}: sharing with {} (--listen-shared: clients are split between the processes)",
            list.join(", ")
        );
    }
    Ok(WsListeners { listeners, addr, _exclusive: None })
}

fn in_use(addr: SocketAddr, o: &Other, what: &str) -> String {
    format!(
        "--listen {addr}: {what}: {} on {}. crier serves one process per address, or clients would be split between servers that publish separately: stop it, choose another --listen, or start every process on the address with --listen-shared to share it on purpose",
        o.owner, o.addr
    )
}

/// The abstract Unix socket name that marks `addr` as held by a crier without
/// `--listen-shared`. Abstract names live in the network namespace, as ports do, and vanish
/// with the process, so a crash leaves nothing stale behind.
fn marker_name(addr: SocketAddr) -> Result<UnixAddr, io::Error> {
    UnixAddr::from_abstract_name(format!("crier/listen-exclusive/{addr}").as_bytes())
}

fn mark_exclusive(addr: SocketAddr) -> Result<UnixDatagram, String> {
    let name = marker_name(addr).map_err(|e| format!("marker socket name: {e}"))?;
    UnixDatagram::bind_addr(&name).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => "another crier already holds this address".to_string(),
        _ => format!("cannot create the marker socket: {e}"),
    })
}

fn is_marked_exclusive(addr: SocketAddr) -> bool {
    let (Ok(name), Ok(probe)) = (marker_name(addr), UnixDatagram::unbound()) else {
        return false;
    };
    probe.connect_addr(&name).is_ok()
}

/// The inode of the socket behind `fd`, as /proc/net/tcp shows it.
fn inode_of(fd: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/self/fd/{fd}")).ok().map(|m| m.ino())
}

/// Listening sockets other than `ours` whose address overlaps `addr`: the same port, and
/// the same address or a wildcard on either side. Best effort: an unreadable /proc finds
/// nothing (and says so in the log).
fn others_on(addr: SocketAddr, ours: &[u64]) -> Vec<Other> {
    let mut found = Vec::new();
    for (table, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) => {
                if !v6 {
                    tracing::warn!("cannot read {table} to check that no other process listens on {addr}: {e}");
                }
                continue;
            }
        };
        for (other, inode) in text.lines().skip(1).filter_map(|l| parse_listener(l, v6)) {
            if other.port() == addr.port() && overlaps(addr.ip(), other.ip()) && !ours.contains(&inode) {
                found.push(Other { addr: other, owner: owner_of(inode) });
            }
        }
    }
    found
}

/// One line of /proc/net/tcp{,6} → (local address, inode), for sockets in LISTEN (0A).
/// Format: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
/// timeout inode …`, addresses as hex in host byte order per 32-bit word, port in hex.
fn parse_listener(line: &str, v6: bool) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let (ip, port) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let inode = f[9].parse().ok()?;
    // The kernel prints each 32-bit word of the address as the host-order integer of its
    // network-order bytes: reading it back in host order gives the bytes again.
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = if v6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        canonical(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some((SocketAddr::new(ip, port), inode))
}

/// Whether a listener on `b` takes connections meant for `a` (or the other way round): the
/// same address, or either one a wildcard. `[::]` counts as covering IPv4 too, as it does
/// unless IPV6_V6ONLY is set (which /proc does not show).
fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    let a = canonical(a);
    let b = canonical(b);
    a == b || a.is_unspecified() || b.is_unspecified()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// "pid N (command)" of the process holding socket `inode`, found through /proc/*/fd.
fn owner_of(inode: u64) -> String {
    let target = format!("socket:[{inode}]");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "a process this user cannot see".into();
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|c| c.is_ascii_digit())) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue; // another user's process, or gone
        };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())) {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            return format!("pid {pid} ({})", comm.trim());
        }
    }
    "a process this user cannot see (another user's, or outside this PID namespace)".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listener(v4, false), Some(("127.0.0.1:8080".parse().unwrap(), 12345)));
        let any6 = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listener(any6, true), Some(("[::]:8080".parse().unwrap(), 777)));
        let lo6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listener(lo6, true), Some(("[::1]:8080".parse().unwrap(), 778)));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_listener(&established, false), None);
    }

    #[test]
    fn wildcards_overlap_everything() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(overlaps(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(overlaps(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(overlaps(ip("127.0.0.1"), ip("::")));
        assert!(overlaps(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(!overlaps(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(!overlaps(ip("::1"), ip("127.0.0.1")));
    }

    #[test]
    fn finds_a_foreign_listener_and_its_owner() {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_reuse_port(true).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        sock.listen(1).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let found = others_on(addr, &[]);
        assert_eq!(found.len(), 1, "{:?}", found.iter().map(|o| &o.owner).collect::<Vec<_>>());
        assert!(found[0].owner.starts_with(&format!("pid {} (", std::process::id())), "{}", found[0].owner);
        let ino = inode_of(sock.as_raw_fd()).unwrap();
        assert!(others_on(addr, &[ino]).is_empty(), "our own listener is not another");
    }
}

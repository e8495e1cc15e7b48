//! The descriptor budget: how many WebSocket sockets crier may hold at once, and the
//! descriptors it keeps back so that publishers, the admin port and refusals still work
//! when the WebSocket side is full.
//!
//! Every socket accepted on the WebSocket port takes a [`Slot`] before anything else
//! happens to it, and gives it back when its descriptor closes: a client still in its
//! handshake holds a descriptor exactly like an upgraded one, so both count against the
//! limit. The limit is `--max-connections`, or less when RLIMIT_NOFILE cannot hold that many
//! on top of the [reserve](reserve). A client that finds no slot gets a 503 at once (see
//! `session::refuse_at_once`), from a small per-shard budget of refusals that is part of the
//! reserve. This module never blocks and takes no lock: a slot is one atomic counter (the
//! per-address count a slot may hold is given back under one stripe's lock, `peer::limits`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::peer::AddrKey;
use crate::peer::limits::{PeerCount, PeerTable};

/// Cluster mode (`--redis`): the `crier-cluster` thread's descriptors. Its tokio runtime
/// holds an epoll and an eventfd, and a Redis session two sockets (commands, pub/sub);
/// while a broken session's sockets close, the next one may already be connecting, and
/// resolving the host may open one more. A running cluster node holds 5 more than a single
/// box (measured: 23 against 18 with 2 shards); the rest is margin.
pub const CLUSTER: usize = 8;
/// Descriptors crier holds whatever its load: stdin/stdout/stderr, the publisher and admin
/// listeners, the signal pipe, the control thread's epoll and eventfd, systemd's
/// notification socket. A running crier holds 11 plus 3 per shard; the rest is margin.
const FIXED: usize = 32;
/// Per shard: its listener, its io_uring or epoll, its eventfds (3 measured), plus margin.
const PER_SHARD: usize = 8;
/// Publisher connections served at once; past it a publisher gets `-ERR too many publishers`.
pub const MAX_PUBLISHERS: usize = 128;
/// Admin connections (`/metrics`, `/healthz`) served at once; past it a request gets 503.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;
/// Per shard: clients being told 503 at once. Each is held up to [`REFUSAL_LINGER`] so that
/// the 503 is not lost to a TCP reset; past this budget the 503 is written and the socket
/// closed at once.
pub const REFUSALS_PER_SHARD: usize = 16;
/// How long a refused socket waits for the client to read the 503 and close.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// The fewest WebSocket connections worth starting for.
const MIN_CONNECTIONS: usize = 16;

/// Descriptors kept out of the WebSocket side's reach for `shards` shards: crier's own, the
/// publishers', the admin port's, and the refusals' (plus one per accept loop for the
/// socket it is closing at that moment), and in cluster mode the cluster thread's
/// ([`CLUSTER`]). History replays and the drain run on sockets that are already open and
/// need none of their own; a resume read from Redis uses the cluster thread's connection.
pub fn reserve(shards: usize, cluster: bool) -> usize {
    FIXED
        + PER_SHARD * shards
        + (MAX_PUBLISHERS + 1)
        + (MAX_ADMIN_CONNECTIONS + 1)
        + (REFUSALS_PER_SHARD + 1) * shards
        + if cluster { CLUSTER } else { 0 }
}

/// The limit in force and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// WebSocket sockets (in the handshake or upgraded) crier holds at most.
    pub limit: usize,
    /// `--max-connections` as configured.
    pub configured: usize,
    /// The soft RLIMIT_NOFILE in force.
    pub nofile: u64,
    /// Descriptors kept back (see [`reserve`]).
    pub reserve: usize,
}

impl Budget {
    /// The configured limit is above what the descriptors allow, so the limit was derived.
    pub fn derived(&self) -> bool {
        self.limit < self.configured
    }

    /// The WebSocket sockets the descriptor limit holds after the reserve.
    pub fn room(&self) -> usize {
        usize::try_from(self.nofile).unwrap_or(usize::MAX).saturating_sub(self.reserve)
    }
}

/// The effective limit: `--max-connections`, lowered to what RLIMIT_NOFILE holds after the
/// reserve. Fails when the descriptor limit cannot hold even a handful of connections.
pub fn budget(configured: usize, nofile: u64, shards: usize, cluster: bool) -> Result<Budget, String> {
    let reserve = reserve(shards, cluster);
    let mut b = Budget { limit: configured, configured, nofile, reserve };
    let room = b.room();
    if room < MIN_CONNECTIONS {
        return Err(format!(
            "RLIMIT_NOFILE {nofile} is too low: crier keeps {reserve} descriptors for itself, publishers, the admin port, refusals ({shards} shards){} and needs room for at least {MIN_CONNECTIONS} connections; raise LimitNOFILE= in the systemd unit or the nofile limit (tuning/limits.d/90-crier.conf)",
            if cluster { " and the Redis connections of --redis" } else { "" }
        ));
    }
    b.limit = configured.min(room);
    Ok(b)
}

/// One WebSocket socket's share of the limit, held for as long as its descriptor is open,
/// and once its client's address is known, that address's count (`peer::limits`), given
/// back with it.
///
/// 16 bytes per connection: the table (which reaches the metrics) and the address key.
pub struct Slot {
    table: Arc<PeerTable>,
    peer: Option<AddrKey>,
}

impl Slot {
    /// Takes a slot if the limit allows one more socket.
    pub fn try_acquire(table: &Arc<PeerTable>) -> Option<Slot> {
        let metrics = table.metrics();
        let max = metrics.max_connections.load(Relaxed);
        metrics.ws_sockets.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot { table: table.clone(), peer: None })
    }

    /// Counts this socket under its client's address too, until it closes.
    pub fn hold_peer(&mut self, count: PeerCount) {
        self.peer = Some(count.into_key());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.peer {
            self.table.release(key);
        }
        self.table.metrics().ws_sockets.fetch_sub(1, Relaxed);
    }
}

/// What an accept loop does when `accept` fails. Out of descriptors or memory: warn at most
/// once every 5 s and back off 100 ms (retrying at once would spin on the same error while
/// the pending connection waits in the backlog). Anything else (a client that reset before
/// it was taken) is retried at once.
#[derive(Default)]
pub struct AcceptErrors {
    last_warn: Option<Instant>,
}

impl AcceptErrors {
    pub async fn handle(&mut self, what: &str, e: &io::Error) {
        let raw = e.raw_os_error().unwrap_or(0);
        if matches!(raw, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
            if self.last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                tracing::warn!("{what} accept: {e}; raise RLIMIT_NOFILE or lower --max-connections");
                self.last_warn = Some(Instant::now());
            }
            monoio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tracing::debug!("{what} accept: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_limit_when_it_fits() {
        let b = budget(1000, 20_000, 2, false).unwrap();
        assert_eq!(b.limit, 1000);
        assert!(!b.derived());
    }

    #[test]
    fn derived_from_the_descriptor_limit() {
        let b = budget(100_000, 20_000, 2, false).unwrap();
        assert_eq!(b.limit, 20_000 - reserve(2, false));
        // Cluster mode keeps the cluster thread's descriptors back too.
        let c = budget(100_000, 20_000, 2, true).unwrap();
        assert_eq!(c.limit, 20_000 - reserve(2, false) - CLUSTER);
        assert!(b.derived());
        // The reserve leaves the load tests' 19,500 on one shard under this machine's 20,000.
        assert!(budget(19_500, 20_000, 1, false).is_ok_and(|b| !b.derived()));
    }

    #[test]
    fn refuses_a_limit_that_holds_nothing() {
        let e = budget(100_000, reserve(2, false) as u64 + 3, 2, false).unwrap_err();
        assert!(e.contains("RLIMIT_NOFILE"), "{e}");
        let e = budget(100_000, reserve(2, true) as u64 + 3, 2, true).unwrap_err();
        assert!(e.contains("--redis"), "{e}");
    }

    #[test]
    fn slots_stop_at_the_limit_and_come_back() {
        let m = Arc::new(crate::ops::metrics::Metrics::new(1));
        m.max_connections.store(2, Relaxed);
        let unlimited = crate::peer::PeerConfig { max_per_ip: 0, handshakes_per_second: 0.0, ..Default::default() };
        let t = PeerTable::new(&unlimited, m.clone());
        let a = Slot::try_acquire(&t).unwrap();
        let _b = Slot::try_acquire(&t).unwrap();
        assert!(Slot::try_acquire(&t).is_none());
        drop(a);
        assert!(Slot::try_acquire(&t).is_some());
        drop(_b);
        // A slot gives its address's count back with it, and costs 16 bytes.
        let mut c = Slot::try_acquire(&t).unwrap();
        c.hold_peer(t.admit("10.0.0.1".parse().unwrap()).unwrap());
        assert_eq!(m.peer_addresses.load(Relaxed), 1);
        drop(c);
        assert_eq!(m.peer_addresses.load(Relaxed), 0, "the address's entry goes with its last connection");
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }
}

//! The per-address table: how many connections each address holds over all shards, and its
//! handshake rate (GCRA, the token bucket kept as one timestamp).
//!
//! SO_REUSEPORT spreads one address's connections over every shard, so the count must be
//! shared. The table is [`STRIPES`] `Mutex<HashMap>`s picked by a keyed hash of the
//! address: a handshake locks one stripe for a lookup and an update (tens of nanoseconds),
//! so shards rarely meet on the same lock, and never on the write path (fan-out and flush
//! touch no address). A connection holds a [`PeerCount`] (its key and the table, 16 bytes);
//! the table entry (key, count, timestamp: 24 bytes plus hashbrown's control byte) is all
//! the rest an address costs, however many connections it has.
//!
//! **Bound.** An entry exists while its address holds a connection, or while its bucket is
//! not yet full again after a burst ("idle" entries). Entries with connections are at most
//! the connection limit (each holds a `capacity::Slot`). Idle entries are at most
//! [`MAX_IDLE`]: an address whose last connection closes when that many are kept is
//! forgotten at once (its next handshake starts with a full bucket: lenient to that address,
//! never a refusal of anyone). Each shard's sweep purges one stripe of idle entries whose
//! bucket has refilled, and shrinks the stripe's map when it is mostly empty.

use std::collections::HashMap;
use std::collections::hash_map::Entry::{Occupied, Vacant};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

use super::{AddrKey, PeerConfig};
use crate::ops::metrics::Metrics;

/// Locks the table is split over (a power of two).
pub const STRIPES: usize = 64;
/// Addresses kept without a connection, for their handshake rate only.
pub const MAX_IDLE: usize = 65_536;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `--max-connections-per-ip` already.
    Connections,
    /// Its bucket is empty (`--max-handshakes-per-ip-per-second`).
    Rate,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    conns: u32,
    /// GCRA's theoretical arrival time, µs since the table's epoch: the bucket is full when
    /// this is not in the future, and a handshake may start while it is at most
    /// `tolerance_us` ahead.
    tat_us: u64,
}

/// One stripe, on its own cache line so that two shards locking neighbours do not share it.
#[repr(align(128))]
struct Stripe(Mutex<HashMap<AddrKey, Entry>>);

/// The table every shard shares (see the module doc).
pub struct PeerTable {
    stripes: Box<[Stripe]>,
    pick: RandomState,
    max_conns: u32,
    /// µs between two handshakes at the steady rate; 0: no rate limit.
    interval_us: u64,
    /// How far ahead the theoretical arrival time may run: (burst − 1) intervals.
    tolerance_us: u64,
    ipv6_prefix: u8,
    idle: AtomicUsize,
    /// [`MAX_IDLE`], smaller in unit tests.
    max_idle: usize,
    /// Entries over all stripes (`crier_peer_addresses`).
    metrics: Arc<Metrics>,
    purge_at: AtomicU64,
    epoch: Instant,
}

/// A connection's place in the table: given back (count − 1, the entry dropped at zero)
/// when it is dropped, with the connection's `capacity::Slot`.
pub struct PeerCount {
    /// `None` once handed to a `capacity::Slot` (`into_key`), which then gives it back.
    table: Option<Arc<PeerTable>>,
    key: AddrKey,
}

impl PeerCount {
    /// The key alone, for a connection's `capacity::Slot`: the slot already holds the table,
    /// so the connection pays 8 bytes for its address, not 16. The slot releases it
    /// ([`PeerTable::release`]).
    pub fn into_key(mut self) -> AddrKey {
        self.table = None;
        self.key
    }
}

impl Drop for PeerCount {
    fn drop(&mut self) {
        if let Some(t) = &self.table {
            t.release(self.key);
        }
    }
}

impl PeerTable {
    pub fn new(cfg: &PeerConfig, metrics: Arc<Metrics>) -> Arc<PeerTable> {
        let interval_us =
            if cfg.handshakes_per_second > 0.0 { (1e6 / cfg.handshakes_per_second).max(1.0) as u64 } else { 0 };
        Arc::new(PeerTable {
            stripes: (0..STRIPES).map(|_| Stripe(Mutex::new(HashMap::new()))).collect(),
            pick: RandomState::new(),
            max_conns: cfg.max_per_ip,
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(cfg.handshake_burst.saturating_sub(1))),
            ipv6_prefix: cfg.ipv6_prefix,
            idle: AtomicUsize::new(0),
            max_idle: MAX_IDLE,
            metrics,
            purge_at: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Addresses in the table (with connections, or idle).
    pub fn len(&self) -> usize {
        self.metrics.peer_addresses.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The clock, read only with a rate limit (without one, nothing here needs it).
    fn now_us(&self) -> u64 {
        if self.interval_us == 0 { 0 } else { self.epoch.elapsed().as_micros() as u64 }
    }

    fn stripe(&self, key: AddrKey) -> &Mutex<HashMap<AddrKey, Entry>> {
        &self.stripes[self.pick.hash_one(key) as usize % STRIPES].0
    }

    /// A new connection (a handshake) from `ip`: spends one handshake token and counts
    /// one connection, or says which limit it is past (and changes nothing).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PeerCount, Refusal> {
        let key = AddrKey::new(ip, self.ipv6_prefix);
        let now = self.now_us();
        let mut map = self.stripe(key).lock().unwrap_or_else(|p| p.into_inner());
        let (e, new) = match map.entry(key) {
            Occupied(o) => (o.into_mut(), false),
            Vacant(v) => (v.insert(Entry { conns: 0, tat_us: now }), true),
        };
        if new {
            self.metrics.peer_addresses.fetch_add(1, Relaxed);
        }
        if self.max_conns > 0 && e.conns >= self.max_conns {
            return Err(Refusal::Connections);
        }
        if self.interval_us > 0 {
            let tat = e.tat_us.max(now);
            if tat - now > self.tolerance_us {
                return Err(Refusal::Rate);
            }
            e.tat_us = tat + self.interval_us;
        }
        if e.conns == 0 && !new {
            self.idle.fetch_sub(1, Relaxed); // an idle entry has a connection again
        }
        e.conns += 1;
        Ok(PeerCount { table: Some(self.clone()), key })
    }

    /// The metrics the table counts into (and `capacity::Slot` counts sockets in).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A connection counted under `key` closed.
    pub fn release(&self, key: AddrKey) {
        let now = self.now_us();
        let mut map = self.stripe(key).lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = map.get_mut(&key) else { return };
        e.conns = e.conns.saturating_sub(1);
        if e.conns > 0 {
            return;
        }
        // Kept only while its bucket is refilling, and only while there is room.
        if e.tat_us > now && self.idle.load(Relaxed) < self.max_idle {
            self.idle.fetch_add(1, Relaxed);
        } else {
            map.remove(&key);
            self.metrics.peer_addresses.fetch_sub(1, Relaxed);
        }
    }

    /// Drops one stripe's idle entries whose bucket has refilled (the stripes in turn, one
    /// per call), and gives back a map's memory when three quarters of it are empty. Called
    /// by each shard's sweep.
    pub fn purge_some(&self) {
        let now = self.now_us();
        let i = self.purge_at.fetch_add(1, Relaxed) as usize % STRIPES;
        let mut map = self.stripes[i].0.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, e| e.conns > 0 || e.tat_us > now);
        let gone = before - map.len();
        if gone > 0 {
            self.idle.fetch_sub(gone, Relaxed);
            self.metrics.peer_addresses.fetch_sub(gone, Relaxed);
        }
        let len = map.len();
        if map.capacity() > 64 && len < map.capacity() / 4 {
            map.shrink_to(len * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: u32, rate: f64, burst: u32) -> Arc<PeerTable> {
        let cfg =
            PeerConfig { max_per_ip: max, handshakes_per_second: rate, handshake_burst: burst, ..Default::default() };
        PeerTable::new(&cfg, Arc::new(Metrics::new(1)))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_connections_per_address_and_drops_the_entry_at_zero() {
        let t = table(2, 0.0, 1);
        let a1 = t.admit(ip("10.0.0.1")).unwrap();
        let a2 = t.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Refusal::Connections));
        let b = t.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(t.len(), 2);
        drop(a1);
        let a3 = t.admit(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b));
        assert_eq!(t.len(), 0, "no rate limit: entries go at zero connections");
    }

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
        let t = table(1, 0.0, 1);
        let _a = t.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(t.admit(ip("2001:db8:1:2:ffff::9")).err(), Some(Refusal::Connections), "same /64");
        let _b = t.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = t.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(t.admit(ip("::ffff:192.0.2.1")).err(), Some(Refusal::Connections));
    }

    #[test]
    fn handshake_rate_allows_the_burst_then_refuses_and_keeps_the_entry_while_refilling() {
        let t = table(0, 1.0, 3);
        for _ in 0..3 {
            drop(t.admit(ip("10.0.0.1")).unwrap());
        }
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Refusal::Rate));
        assert_eq!(t.len(), 1, "an address without connections is kept while its bucket refills");
        assert!(t.admit(ip("10.0.0.2")).is_ok(), "another address has its own bucket");
        t.purge_some();
        for _ in 0..STRIPES {
            t.purge_some();
        }
        assert_eq!(t.len(), 2, "neither is purged before its bucket refilled");
    }

    #[test]
    fn idle_entries_are_bounded_and_past_the_bound_forgotten() {
        let mut t = table(0, 1.0, 2);
        Arc::get_mut(&mut t).unwrap().max_idle = 3;
        for i in 1..=10 {
            drop(t.admit(ip(&format!("10.0.0.{i}"))).unwrap());
        }
        assert_eq!(t.len(), 3, "only 3 addresses are kept for their rate alone");
        assert_eq!(t.idle.load(Relaxed), 3);
        // A forgotten address starts with a full bucket again: lenient, never a refusal.
        drop(t.admit(ip("10.0.0.10")).unwrap());
        drop(t.admit(ip("10.0.0.10")).unwrap());
        // A kept one still has its bucket half spent.
        drop(t.admit(ip("10.0.0.1")).unwrap());
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Refusal::Rate));
    }

    #[test]
    fn purge_drops_refilled_idle_entries() {
        let t = table(0, 1e6, 1); // 1 µs interval: refilled by the time we purge
        drop(t.admit(ip("10.0.0.1")).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(1));
        for _ in 0..STRIPES {
            t.purge_some();
        }
        assert_eq!(t.len(), 0);
        assert_eq!(t.idle.load(Relaxed), 0);
    }

    #[test]
    fn entry_size() {
        // The figure the README gives: key 8 + count 4 + padding 4 + timestamp 8.
        assert_eq!(std::mem::size_of::<(AddrKey, Entry)>(), 24);
        assert_eq!(std::mem::size_of::<PeerCount>(), 16);
        assert_eq!(std::mem::size_of::<Option<PeerCount>>(), 16);
    }
}

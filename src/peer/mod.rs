//! Who a client is: its real address (behind trusted proxies, from the PROXY protocol or
//! `X-Forwarded-For`), the key its per-address limits are counted under, and the limits.
//!
//! - `mod.rs` (pure): [`PeerConfig`] (the resolved settings), [`AddrKey`] (an address as
//!   its limits see it: IPv4 whole, IPv6 by its prefix), [`Cidrs`] (`--trusted-proxies`),
//!   and [`forwarded_client`], the right-most untrusted address of `X-Forwarded-For`.
//! - `limits.rs`: the table shared by every shard, connection count and handshake rate per
//!   address, and the [`limits::PeerCount`] a connection holds.
//! - `proxy.rs` (pure): the PROXY protocol header (v1 and v2, parsed by the `ppp` crate).

pub mod limits;
pub mod proxy;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU64;

/// Default of `--max-connections-per-ip`.
pub const DEFAULT_MAX_PER_IP: u32 = 1000;
/// Default of `--max-handshakes-per-ip-per-second`.
pub const DEFAULT_HANDSHAKES_PER_SECOND: f64 = 100.0;
/// Default of `--handshake-burst-per-ip`.
pub const DEFAULT_HANDSHAKE_BURST: u32 = 1000;
/// Default of `--ipv6-prefix-len`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The per-address settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Connections one address may hold at once, over all shards; 0: no limit.
    pub max_per_ip: u32,
    /// Handshakes per second one address may start (token bucket refill); 0: no limit.
    pub handshakes_per_second: f64,
    /// Handshakes one address may start at once (the bucket's size).
    pub handshake_burst: u32,
    /// IPv6 addresses are counted by this prefix (at most 64).
    pub ipv6_prefix: u8,
    /// Peers whose PROXY header, `X-Forwarded-For` and `X-Real-IP` are believed.
    pub trusted: Cidrs,
    /// Accept a PROXY protocol header (v1 or v2) from trusted peers.
    pub proxy_protocol: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            max_per_ip: DEFAULT_MAX_PER_IP,
            handshakes_per_second: DEFAULT_HANDSHAKES_PER_SECOND,
            handshake_burst: DEFAULT_HANDSHAKE_BURST,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            trusted: Cidrs::default(),
            proxy_protocol: false,
        }
    }
}

impl PeerConfig {
    /// Checks the settings; each error names its flag.
    pub fn new(
        max_per_ip: u32,
        handshakes_per_second: f64,
        handshake_burst: u32,
        ipv6_prefix: u8,
        trusted: &[String],
        proxy_protocol: bool,
    ) -> Result<Self, String> {
        if !(0.0..=1e6).contains(&handshakes_per_second) {
            return Err(format!(
                "--max-handshakes-per-ip-per-second must be between 0 (no limit) and 1000000, got {handshakes_per_second}"
            ));
        }
        if handshakes_per_second > 0.0 && handshake_burst == 0 {
            return Err("--handshake-burst-per-ip must be at least 1 (0 would refuse every handshake); \
                        turn the rate limit off with --max-handshakes-per-ip-per-second 0"
                .into());
        }
        if !(1..=64).contains(&ipv6_prefix) {
            return Err(format!(
                "--ipv6-prefix-len must be between 1 and 64, got {ipv6_prefix} (one host gets a whole /64, so a longer prefix would let it look like 2^64 clients)"
            ));
        }
        let trusted = Cidrs::parse(trusted).map_err(|e| format!("--trusted-proxies: {e}"))?;
        if proxy_protocol && trusted.is_empty() {
            return Err(
                "--proxy-protocol needs --trusted-proxies: a PROXY header is believed only from those peers".into()
            );
        }
        Ok(Self { max_per_ip, handshakes_per_second, handshake_burst, ipv6_prefix, trusted, proxy_protocol })
    }

    /// Some limit is on, so the table is used.
    pub fn limited(&self) -> bool {
        self.max_per_ip > 0 || self.handshakes_per_second > 0.0
    }
}

/// An address as its per-address limits count it, in 8 bytes: an IPv4 address whole, an
/// IPv6 address by its first `--ipv6-prefix-len` bits. IPv4-mapped IPv6 addresses count as
/// their IPv4 address.
///
/// The encoding never collides: IPv4 goes to `ff00::/16 + addr` and the all-zero IPv6 prefix
/// (`::1` and friends) to `ff01::/16`; both are multicast space, which is never the source
/// of a TCP connection. The value is never zero, so `Option<AddrKey>` is 8 bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(NonZeroU64);

const V4_TAG: u64 = 0xff00 << 48;
const V6_ZERO: u64 = 0xff01 << 48;

impl AddrKey {
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> AddrKey {
        let v = match ip.to_canonical() {
            IpAddr::V4(a) => V4_TAG | u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let high = (u128::from(a) >> 64) as u64;
                let bits = u32::from(ipv6_prefix.clamp(1, 64));
                let masked = high & (u64::MAX << (64 - bits));
                if masked == 0 { V6_ZERO } else { masked }
            }
        };
        AddrKey(NonZeroU64::new(v).expect("an address key is never zero"))
    }
}

/// One network of `--trusted-proxies`, held as IPv6 (IPv4 as `::ffff:a.b.c.d/96+len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: u128,
    mask: u128,
}

/// A set of networks (`--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<Cidr>);

fn as_v6(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Cidrs {
    /// Parses `10.0.0.0/8`, `192.168.1.7` (one address), `fd00::/8`, `::1`.
    pub fn parse(items: &[String]) -> Result<Cidrs, String> {
        let mut out = Vec::new();
        for item in items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, len) = item.split_once('/').unwrap_or((item, ""));
            let ip: IpAddr =
                addr.parse().map_err(|_| format!("'{item}' is not an address or CIDR (e.g. 10.0.0.0/8)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u32 = if len.is_empty() {
                max
            } else {
                len.parse()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("'{item}': prefix length must be 0 to {max}"))?
            };
            let len = if ip.is_ipv4() { len + 96 } else { len };
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            let net = as_v6(ip);
            if net & !mask != 0 {
                return Err(format!("'{item}' has bits set past its prefix length; write the network address"));
            }
            out.push(Cidr { net, mask });
        }
        Ok(Cidrs(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let a = as_v6(ip);
        self.0.iter().any(|c| a & c.mask == c.net)
    }
}

/// One element of `X-Forwarded-For`: an address, possibly with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`) or in quotes, as some proxies write it.
fn forwarded_addr(item: &str) -> Option<IpAddr> {
    let item = item.trim().trim_matches('"');
    item.parse::<IpAddr>().ok().or_else(|| item.parse::<SocketAddr>().ok().map(|s| s.ip())).or_else(|| {
        // `[2001:db8::1]` without a port.
        item.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    })
}

/// The client address that trusted proxies report, as NGINX's realip module does with
/// `real_ip_recursive on`: `xff_rev` yields the elements of every `X-Forwarded-For` header,
/// right to left (the last proxy's entry first). Each trusted address is a hop to step over;
/// the first untrusted one is the client. When every address is trusted, the left-most
/// is. An element that is not an address ends the walk at the address before it (the
/// nearest hop that vouched for it). Without `X-Forwarded-For`, `X-Real-IP` is taken.
/// `None`: the headers name nobody, so the peer itself is the client.
///
/// Only call this for a peer that is itself trusted: anyone else's headers are ignored.
pub fn forwarded_client<'a>(
    xff_rev: impl Iterator<Item = &'a str>,
    real_ip: Option<&str>,
    trusted: &Cidrs,
) -> Option<IpAddr> {
    let mut seen = false;
    let mut last = None;
    for item in xff_rev {
        seen = true;
        if item.trim().is_empty() {
            continue;
        }
        let Some(ip) = forwarded_addr(item) else { break };
        last = Some(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    if seen { last } else { real_ip.and_then(forwarded_addr) }
}

#[cfg(test)]
mod tests;

//! The settings of per-address limits and of clients behind proxies (`src/peer/`),
//! flattened into `crier serve`'s.

use clap::Args;

use crate::peer::{
    DEFAULT_HANDSHAKE_BURST, DEFAULT_HANDSHAKES_PER_SECOND, DEFAULT_IPV6_PREFIX, DEFAULT_MAX_PER_IP, PeerConfig,
};

/// Per-address limits and proxies; part of [`super::ServeArgs`].
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Connections one client address may hold at once, over all shards (IPv6: per
    /// --ipv6-prefix-len network); past it the upgrade gets 429. 0: no limit.
    #[arg(long, env = "CRIER_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_PER_IP, value_name = "N")]
    pub max_connections_per_ip: u32,

    /// Handshakes per second one client address may start, on average (a token bucket of
    /// --handshake-burst-per-ip); past it the upgrade gets 429. 0: no limit.
    #[arg(long, env = "CRIER_MAX_HANDSHAKES_PER_IP_PER_SECOND", default_value_t = DEFAULT_HANDSHAKES_PER_SECOND, value_name = "RATE")]
    pub max_handshakes_per_ip_per_second: f64,

    /// Handshakes one client address may start at once before the per-second rate applies.
    #[arg(long, env = "CRIER_HANDSHAKE_BURST_PER_IP", default_value_t = DEFAULT_HANDSHAKE_BURST, value_name = "N")]
    pub handshake_burst_per_ip: u32,

    /// IPv6 clients are counted by this prefix: one host usually has a whole /64.
    #[arg(long, env = "CRIER_IPV6_PREFIX_LEN", default_value_t = DEFAULT_IPV6_PREFIX, value_name = "BITS")]
    pub ipv6_prefix_len: u8,

    /// Proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For, X-Real-IP and
    /// PROXY header name the real client; from any other peer they are ignored.
    /// [default: none]
    #[arg(long, env = "CRIER_TRUSTED_PROXIES", value_delimiter = ',', value_name = "CIDR,…")]
    pub trusted_proxies: Vec<String>,

    /// Accept a PROXY protocol header (v1 or v2, as HAProxy's send-proxy-v2 or an AWS NLB
    /// send) before the HTTP request, from --trusted-proxies only.
    #[arg(long, env = "CRIER_PROXY_PROTOCOL", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub proxy_protocol: bool,
}

impl PeerArgs {
    pub fn resolve(&self) -> Result<PeerConfig, String> {
        PeerConfig::new(
            self.max_connections_per_ip,
            self.max_handshakes_per_ip_per_second,
            self.handshake_burst_per_ip,
            self.ipv6_prefix_len,
            &self.trusted_proxies,
            self.proxy_protocol,
        )
    }
}

//! The PROXY protocol header (HAProxy's spec, v1 text and v2 binary) that an L4 balancer
//! sends before the client's own bytes. Pure: [`parse`] decides from the bytes buffered so
//! far; the session does the reading. The parsing itself is the `ppp` crate's.

use std::net::IpAddr;

use ppp::{PartialResult, v1, v2};

/// Longest header accepted. v1 is at most 107 bytes; a v2 header carries the addresses (at
/// most 216 bytes, for Unix sockets) and TLVs (HAProxy's unique id, TLS details, …).
pub const MAX_HEADER_BYTES: usize = 2048;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes read so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a PROXY header (an HTTP request): read it as such.
    NotProxy,
    /// The start of one: read more.
    Incomplete,
    /// A complete header of `used` bytes. `source` is the client it names; `None` for
    /// `LOCAL` (the balancer's own health check) or `UNKNOWN`/Unix addresses: the peer is
    /// then taken as it is.
    Header { source: Option<IpAddr>, used: usize },
    /// A header that is not valid: the connection is closed.
    Invalid(String),
}

/// Which signature `buf` starts like (both differ from any HTTP method): `Some(true)` for
/// v2, `Some(false)` for v1.
fn version(buf: &[u8]) -> Option<bool> {
    [V1_SIGNATURE, V2_SIGNATURE]
        .iter()
        .position(|sig| {
            let n = buf.len().min(sig.len());
            buf[..n] == sig[..n]
        })
        .map(|i| i == 1)
}

fn too_long() -> Parsed {
    Parsed::Invalid(format!("PROXY header longer than {MAX_HEADER_BYTES} bytes"))
}

/// Decides what `buf` (everything read so far) holds.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(v2) = version(buf) else { return Parsed::NotProxy };
    if v2 {
        // The declared length is known from byte 16 on: refuse a long one before reading it.
        if buf.len() >= 16 && 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]])) > MAX_HEADER_BYTES {
            return too_long();
        }
        let header = v2::Header::try_from(buf);
        if header.is_incomplete() {
            return Parsed::Incomplete;
        }
        return match header {
            Ok(h) => {
                let source = match (h.command, h.addresses) {
                    (v2::Command::Local, _) => None,
                    (_, v2::Addresses::IPv4(a)) => Some(IpAddr::V4(a.source_address)),
                    (_, v2::Addresses::IPv6(a)) => Some(IpAddr::V6(a.source_address)),
                    (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
                };
                Parsed::Header { source, used: h.len() }
            }
            Err(e) => Parsed::Invalid(format!("bad PROXY v2 header: {e}")),
        };
    }
    let header = v1::Header::try_from(buf);
    if header.is_incomplete() {
        return if buf.len() >= MAX_HEADER_BYTES { too_long() } else { Parsed::Incomplete };
    }
    match header {
        Ok(h) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                v1::Addresses::Unknown => None,
            };
            Parsed::Header { source, used: h.header.len() }
        }
        Err(e) => Parsed::Invalid(format!("bad PROXY v1 header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_not_proxy_even_when_it_starts_with_p() {
        assert_eq!(parse(b"GET /ws HTTP/1.1\r\n"), Parsed::NotProxy);
        assert_eq!(parse(b"POST / HTTP/1.1\r\n"), Parsed::NotProxy);
        assert_eq!(parse(b"P"), Parsed::Incomplete, "could still be PROXY");
        assert_eq!(parse(b"PU"), Parsed::NotProxy);
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 8080\r\nGET /ws";
        assert_eq!(parse(h), Parsed::Header { source: Some("192.0.2.7".parse().unwrap()), used: 41 });
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 8080\r\n";
        assert_eq!(parse(h), Parsed::Header { source: Some("2001:db8::7".parse().unwrap()), used: h.len() });
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Header { source: None, used: 15 });
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Parsed::Incomplete);
    }

    #[test]
    fn v1_malformed_is_invalid() {
        assert!(matches!(parse(b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n"), Parsed::Invalid(_)));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)), "a v1 header is at most 107 bytes");
    }

    #[test]
    fn v2_proxy_and_local() {
        // PROXY, TCP over IPv4: 192.0.2.7:5555 → 10.0.0.1:8080.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0x15, 0xb3, 0x1f, 0x90]);
        let used = h.len();
        h.extend(b"GET /ws");
        assert_eq!(parse(&h), Parsed::Header { source: Some("192.0.2.7".parse().unwrap()), used });
        assert_eq!(parse(&h[..20]), Parsed::Incomplete);
        // LOCAL (a health check): no address.
        let mut l = V2_SIGNATURE.to_vec();
        l.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&l), Parsed::Header { source: None, used: 16 });
        // Version 3 does not exist.
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend([0x31, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0x15, 0xb3, 0x1f, 0x90]);
        assert!(matches!(parse(&bad), Parsed::Invalid(_)));
    }
}

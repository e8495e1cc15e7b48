//! The HTTP/1.1 upgrade (RFC 6455 §4.2) and permessage-deflate negotiation (RFC 7692 §7.1).
//!
//! Pure functions over bytes: [`parse_request`] decides, from a buffered request head,
//! whether it is a valid upgrade to this server's WebSocket path and what it asks for;
//! [`HandshakeError`] carries the HTTP status every refusal gets. The connection module does
//! the IO. Nothing here allocates per byte read and nothing panics on client input.

use std::net::IpAddr;

use super::http;
use crate::channel::{ChannelName, ChannelNameError};
use crate::peer::{self, Cidrs};

/// Largest request head accepted; past it the client gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// What the handshake checks need from the configuration.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    pub path: String,
    pub max_channels: usize,
    pub deflate: bool,
    /// `--trusted-proxies`, when set: `X-Forwarded-For` and `X-Real-IP` are read (and
    /// believed only if the peer is one of them, which the session decides).
    pub trusted: Option<Cidrs>,
}

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value for the response.
    pub accept: String,
    /// Channels asked for (deduplicated, in order; the broadcast channel is implicit).
    pub channels: Vec<ChannelName>,
    /// permessage-deflate was offered acceptably and will be used.
    pub deflate: bool,
    /// The client asked for the `crier.v1` subprotocol: envelopes and notices.
    pub envelope: bool,
    /// `since=<epoch>:<seq>,…`: resume each channel after the given sequence number.
    pub since: Option<Since>,
    /// `last=N`: start with the channel's N latest messages.
    pub last: usize,
    /// The client that `X-Forwarded-For` / `X-Real-IP` name (see `peer::forwarded_client`);
    /// read only with `--trusted-proxies`, used only if the peer is trusted.
    pub forwarded_for: Option<IpAddr>,
    /// The token and origin, for `access` (read here, judged there).
    pub credentials: Credentials,
}

/// What the upgrade request carried for access control (`crate::access` judges it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `?token=` on the URL (browsers cannot set headers on a WebSocket), else the
    /// `Authorization: Bearer` header.
    pub token: Option<String>,
    pub origin: Option<String>,
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1; the scheme is
/// case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// A resume request: the epoch the client's sequence numbers belong to, and one sequence
/// number per requested channel, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: u64,
    pub seqs: Vec<u64>,
    /// The epoch of each channel's seq: `epoch`, unless the item said otherwise
    /// (`since=E1:5,E2:7`; in cluster mode each channel has its own epoch).
    pub epochs: Vec<u64>,
}

/// The subprotocol that carries channel, sequence and epoch with each message.
pub const SUBPROTOCOL: &str = "crier.v1";

/// Why an upgrade was refused; each maps to one HTTP status and one metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not found")]
    NotFound,
    #[error("method not allowed: use GET")]
    MethodNotAllowed,
    #[error("this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade")]
    UpgradeRequired,
    #[error("unsupported Sec-WebSocket-Version: only 13 is supported")]
    BadVersion,
    #[error("{0}")]
    BadRequest(String),
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("server at its connection limit, try again later")]
    OverCapacity,
    #[error("server is shutting down")]
    Draining,
    #[error("too many connections from your address, try again later")]
    AddressConnections,
    #[error("too many connection attempts from your address, slow down")]
    AddressRate,
    /// Redis Cluster: this node could not subscribe to a requested channel.
    #[error("redis unavailable: cannot subscribe to the channel, try again later")]
    RedisUnavailable,
    /// Not an error: `GET /crier.js` is answered with the browser client.
    #[error("the crier.js client")]
    ClientScript,
}

/// The browser client, served at `GET /crier.js`.
pub const CLIENT_SCRIPT: &str = include_str!("../../clients/js/crier.js");

impl HandshakeError {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HandshakeError::NotFound => (404, "Not Found"),
            HandshakeError::MethodNotAllowed => (405, "Method Not Allowed"),
            HandshakeError::UpgradeRequired | HandshakeError::BadVersion => (426, "Upgrade Required"),
            HandshakeError::BadRequest(_) => (400, "Bad Request"),
            HandshakeError::HeadTooLarge => (431, "Request Header Fields Too Large"),
            HandshakeError::OverCapacity | HandshakeError::Draining | HandshakeError::RedisUnavailable => {
                (503, "Service Unavailable")
            }
            HandshakeError::AddressConnections | HandshakeError::AddressRate => (429, "Too Many Requests"),
            HandshakeError::ClientScript => (200, "OK"),
        }
    }

    /// The full HTTP response sent before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        if *self == HandshakeError::ClientScript {
            let extra = [("Access-Control-Allow-Origin", "*"), ("Cache-Control", "max-age=300")];
            return http::response("200 OK", "application/javascript; charset=utf-8", &extra, CLIENT_SCRIPT.as_bytes());
        }
        let (code, text) = self.status();
        let body = format!("{self}\n");
        let extra: &[(&str, &str)] = match self {
            HandshakeError::BadVersion => &[("Sec-WebSocket-Version", "13")],
            HandshakeError::UpgradeRequired => &[("Upgrade", "websocket")],
            HandshakeError::MethodNotAllowed => &[("Allow", "GET")],
            HandshakeError::OverCapacity
            | HandshakeError::Draining
            | HandshakeError::AddressConnections
            | HandshakeError::RedisUnavailable => &[("Retry-After", "5")],
            HandshakeError::AddressRate => &[("Retry-After", "1")],
            _ => &[],
        };
        http::response(&format!("{code} {text}"), "text/plain; charset=utf-8", extra, body.as_bytes())
    }
}

fn bad(msg: impl Into<String>) -> HandshakeError {
    HandshakeError::BadRequest(msg.into())
}

/// Parses a request head from `buf`. `Ok(None)`: incomplete, read more. On success also
/// returns how many bytes the head used (a client may send frames right behind it).
pub fn parse_request(buf: &[u8], cfg: &HandshakeConfig) -> Result<Option<(Upgrade, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_BYTES { Err(HandshakeError::HeadTooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(e) => return Err(bad(format!("malformed request: {e}"))),
    };
    if used > MAX_HEAD_BYTES {
        return Err(HandshakeError::HeadTooLarge);
    }
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/crier.js" && req.method == Some("GET") {
        return Err(HandshakeError::ClientScript);
    }
    if path != cfg.path {
        return Err(HandshakeError::NotFound);
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed); // §4.2.1 item 1
    }
    if req.version != Some(1) {
        return Err(bad("WebSocket needs HTTP/1.1"));
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // HTTP/1.1 request message that lacks a Host header field and to any request message
    // that contains more than one Host header field line". RFC 6455 §4.2.1 item 2 too.
    match header("Host").count() {
        0 => return Err(bad("missing Host header (RFC 9112 §3.2, RFC 6455 §4.2.1)")),
        1 => {}
        _ => return Err(bad("Host header appears more than once (RFC 9112 §3.2)")),
    }
    // An upgrade has no body (RFC 6455 §4.1: a GET); whatever follows the head is
    // WebSocket frames. A request that announces a body (RFC 9112 §6.1, §6.2) would have its
    // body read as frames, so it is refused rather than guessed at.
    if let Some(te) = header("Transfer-Encoding").next() {
        return Err(bad(format!("an upgrade request must not have a body (Transfer-Encoding: {})", shown(te))));
    }
    if let Some(cl) = header("Content-Length").find(|v| v.trim() != "0") {
        return Err(bad(format!("an upgrade request must not have a body (Content-Length: {})", shown(cl))));
    }
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err(HandshakeError::UpgradeRequired); // §4.2.1 items 3, 4
    }
    // §11.3.5: Sec-WebSocket-Version MUST NOT appear more than once in a request; with two,
    // the answer would depend on which one is read.
    let mut versions = header("Sec-WebSocket-Version");
    let version = versions.next().map(str::trim);
    if versions.next().is_some() {
        return Err(bad("Sec-WebSocket-Version appears more than once (RFC 6455 §11.3.5)"));
    }
    if version != Some("13") {
        return Err(HandshakeError::BadVersion); // §4.2.2 item 4
    }
    // §11.3.1: Sec-WebSocket-Key MUST NOT appear more than once in a request.
    let mut keys = header("Sec-WebSocket-Key");
    let key = keys.next().map(str::trim).unwrap_or("");
    if keys.next().is_some() {
        return Err(bad("Sec-WebSocket-Key appears more than once (RFC 6455 §11.3.1)"));
    }
    if !valid_key(key) {
        return Err(bad("missing or invalid Sec-WebSocket-Key")); // §4.2.1 item 5
    }
    let channels = parse_channels(query, cfg.max_channels)?;
    let deflate = cfg.deflate && header("Sec-WebSocket-Extensions").any(accept_deflate_offers);
    let envelope = header("Sec-WebSocket-Protocol").any(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
    let (since, last) = parse_resume(query, channels.len(), envelope)?;
    let forwarded_for = cfg.trusted.as_ref().and_then(|trusted| {
        let xff = headers.iter().rev().filter(|h| h.name.eq_ignore_ascii_case("X-Forwarded-For"));
        let xff_rev = xff.flat_map(|h| std::str::from_utf8(h.value).unwrap_or("").rsplit(','));
        peer::forwarded_client(xff_rev, header("X-Real-IP").next_back(), trusted)
    });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let credentials = Credentials {
        token: match query_param(query, "token")? {
            Some(t) => Some(t),
            None => header("Authorization")
                .find_map(|v| bearer(v.as_bytes()))
                .map(|t| String::from_utf8_lossy(t).into_owned()),
        },
        origin: header("Origin").next().map(|o| o.trim().to_string()),
    };
    Ok(Some((Upgrade { accept, channels, deflate, envelope, since, last, forwarded_for, credentials }, used)))
}

/// Printable, bounded excerpt of a header value for an error body.
fn shown(v: &str) -> String {
    v.trim().chars().take(40).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A key is the base64 of 16 bytes: 24 characters ending in "==".
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Reads `channels=a,b` from the query string; other parameters are ignored.
fn parse_channels(query: &str, max: usize) -> Result<Vec<ChannelName>, HandshakeError> {
    let mut out: Vec<ChannelName> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "channels" {
            continue;
        }
        let v = percent_decode(v).ok_or_else(|| bad("channels: bad percent-encoding"))?;
        for name in v.split(',').filter(|n| !n.is_empty()) {
            let ch = ChannelName::parse(name).map_err(|e: ChannelNameError| {
                let shown: String = name.chars().take(80).collect();
                bad(format!("bad channel name {shown:?}: {e}"))
            })?;
            if !out.contains(&ch) {
                out.push(ch);
            }
            if out.len() > max {
                return Err(bad(format!("too many channels: at most {max} per connection")));
            }
        }
    }
    Ok(out)
}

/// The value of the first `name=` in the query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Result<Option<String>, HandshakeError> {
    let Some(v) = query.split('&').find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('='))) else {
        return Ok(None);
    };
    percent_decode(v).map(Some).ok_or_else(|| bad(format!("{name}: bad percent-encoding")))
}

/// Reads `since=<epoch>:<seq>,…` and `last=N` from the query string.
fn parse_resume(query: &str, channels: usize, envelope: bool) -> Result<(Option<Since>, usize), HandshakeError> {
    let mut since = None;
    let mut last = 0;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| bad(format!("{}: bad percent-encoding", shown(k))))?;
        match k {
            "since" => {
                if !envelope {
                    return Err(bad(format!(
                        "since= needs the {SUBPROTOCOL} subprotocol (Sec-WebSocket-Protocol: {SUBPROTOCOL}), which reports gaps"
                    )));
                }
                let usage = || {
                    bad(
                        "since: expected <epoch>:<seq>,<seq>,… with one sequence number per channel (each may be <epoch>:<seq>)",
                    )
                };
                // Items are `<seq>` or `<epoch>:<seq>`; the first must name an epoch, and an
                // item without one keeps the previous item's.
                let (mut seqs, mut epochs) = (Vec::new(), Vec::new());
                for item in v.split(',') {
                    let (e, s) = match item.split_once(':') {
                        Some((e, s)) => (e.parse().map_err(|_| usage())?, s),
                        None => (*epochs.last().ok_or_else(usage)?, item),
                    };
                    epochs.push(e);
                    seqs.push(s.parse::<u64>().map_err(|_| usage())?);
                }
                let epoch = epochs[0];
                if seqs.len() != channels {
                    return Err(bad(format!(
                        "since: {} sequence numbers for {channels} channels (one per channel, in the same order)",
                        seqs.len()
                    )));
                }
                since = Some(Since { epoch, seqs, epochs });
            }
            "last" => last = v.parse().map_err(|_| bad(format!("last: '{}' is not a number", shown(&v))))?,
            _ => {}
        }
    }
    Ok((since, last))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether one `Sec-WebSocket-Extensions` header holds a permessage-deflate offer we can
/// honour (RFC 7692 §7.1). We always answer with both no-context-takeover parameters, so
/// the only offer we must decline is one that limits our window below 15 bits (our one
/// shared compressed payload uses a 15-bit window) or carries parameters we don't know.
fn accept_deflate_offers(header: &str) -> bool {
    header.split(',').any(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next().is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate")) {
            return false;
        }
        parts.all(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" => value.is_empty(),
                // Any client window works: our inflater accepts every window size.
                "client_max_window_bits" => value.is_empty() || matches!(value.parse::<u8>(), Ok(8..=15)),
                "server_max_window_bits" => value == "15",
                _ => false,
            }
        })
    })
}

/// The `101 Switching Protocols` response for an accepted upgrade.
pub fn response_101(up: &Upgrade) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        up.accept
    );
    if up.envelope {
        r.push_str("Sec-WebSocket-Protocol: crier.v1\r\n");
    }
    if up.deflate {
        r.push_str(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n",
        );
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_parameters() {
        let proto = "Sec-WebSocket-Protocol: chat, crier.v1\r\n";
        let (up, _) = parse(&req("/ws?channels=a,b&since=1700:5,0&last=3", proto)).unwrap().unwrap();
        assert!(up.envelope);
        assert_eq!(up.since, Some(Since { epoch: 1700, seqs: vec![5, 0], epochs: vec![1700, 1700] }));
        let (each, _) = parse(&req("/ws?channels=a,b,c&since=17:5,18:2,3", proto)).unwrap().unwrap();
        let since = each.since.unwrap();
        assert_eq!((since.seqs, since.epochs), (vec![5, 2, 3], vec![17, 18, 18]));
        assert!(parse(&req("/ws?channels=a&since=5", proto)).is_err(), "the first item names the epoch");
        assert_eq!(up.last, 3);
        assert!(String::from_utf8(response_101(&up)).unwrap().contains("Sec-WebSocket-Protocol: crier.v1\r\n"));
        let e = parse(&req("/ws?channels=a&since=1:1", "")).unwrap_err();
        assert!(e.to_string().contains("crier.v1"), "{e}");
        let e = parse(&req("/ws?channels=a,b&since=1:1", proto)).unwrap_err();
        assert!(e.to_string().contains("one per channel"), "{e}");
        assert_eq!(parse(&req("/ws?last=x", "")).unwrap_err().status().0, 400);
        let (up, _) = parse(&req("/ws", "")).unwrap().unwrap();
        assert!(!up.envelope && up.since.is_none() && up.last == 0);
        assert_eq!(parse("GET /crier.js HTTP/1.1\r\n\r\n"), Err(HandshakeError::ClientScript));
    }

    fn cfg() -> HandshakeConfig {
        HandshakeConfig { path: "/ws".into(), max_channels: 3, deflate: true, trusted: None }
    }

    fn req(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse(s: &str) -> Result<Option<(Upgrade, usize)>, HandshakeError> {
        parse_request(s.as_bytes(), &cfg())
    }

    #[test]
    fn accepts_rfc_example() {
        let (up, used) = parse(&req("/ws?channels=flights,gates,flights", "")).unwrap().unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); // RFC 6455 §1.3
        assert_eq!(used, req("/ws", "").len() + "?channels=flights,gates,flights".len());
        let names: Vec<_> = up.channels.iter().map(|c| c.as_str().to_string()).collect();
        assert_eq!(names, ["flights", "gates"]);
        assert!(!up.deflate);
        let resp = String::from_utf8(response_101(&up)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "));
        assert!(!resp.contains("Extensions"));
    }

    #[test]
    fn incomplete_head_waits_then_431() {
        assert_eq!(parse("GET /ws HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let huge = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(&huge), Err(HandshakeError::HeadTooLarge));
    }

    #[test]
    fn refusals_map_to_statuses() {
        assert_eq!(parse(&req("/other", "")).unwrap_err().status().0, 404);
        assert_eq!(parse(&req("/ws", "").replacen("GET", "POST", 1)).unwrap_err().status().0, 405);
        let plain = "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(plain).unwrap_err(), HandshakeError::UpgradeRequired);
        let v8 = req("/ws", "").replace("Version: 13", "Version: 8");
        let e = parse(&v8).unwrap_err();
        assert_eq!(e, HandshakeError::BadVersion);
        assert!(String::from_utf8(e.response()).unwrap().contains("Sec-WebSocket-Version: 13\r\n"));
        let nokey = req("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(parse(&nokey).unwrap_err().status().0, 400);
        assert_eq!(parse("GARBAGE\0\r\n\r\n").unwrap_err().status().0, 400);
    }

    #[test]
    fn duplicates_missing_host_and_bodies_are_400() {
        let base = req("/ws", "");
        let cases = [
            (
                "two keys",
                base.replace("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
                "Sec-WebSocket-Key appears more than once",
            ),
            (
                "two versions 13, 8",
                base.replace("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Version: 8\r\n"),
                "Sec-WebSocket-Version appears more than once",
            ),
            (
                "two versions 8, 13",
                base.replace("Version: 13\r\n", "Version: 8\r\nSec-WebSocket-Version: 13\r\n"),
                "Sec-WebSocket-Version appears more than once",
            ),
            ("no Host", base.replace("Host: x\r\n", ""), "missing Host"),
            ("two Hosts", base.replace("Host: x\r\n", "Host: x\r\nhost: y\r\n"), "Host header appears more than once"),
            ("Content-Length", req("/ws", "Content-Length: 5\r\n"), "must not have a body (Content-Length: 5)"),
            (
                "Content-Length 0 and 1",
                req("/ws", "Content-Length: 0\r\nContent-Length: 1\r\n"),
                "must not have a body",
            ),
            (
                "Transfer-Encoding",
                req("/ws", "Transfer-Encoding: chunked\r\n"),
                "must not have a body (Transfer-Encoding: chunked)",
            ),
        ];
        for (what, r, why) in cases {
            let e = parse(&r).unwrap_err();
            assert_eq!(e.status().0, 400, "{what}");
            assert!(e.to_string().contains(why), "{what}: {e}");
        }
        // No body announced: accepted.
        assert!(parse(&req("/ws", "Content-Length: 0\r\n")).unwrap().is_some());
        assert!(parse(&req("/ws", "Content-Length:  0 \r\n")).unwrap().is_some());
    }

    #[test]
    fn error_bodies_quote_the_query_bounded_and_printable() {
        // Found by fuzz/handshake (corpus/handshake/regression-control-char-in-key): a query
        // key with a C1 control character (U+0091) was copied whole into the 400 body, and
        // so was a `last` value, percent-decoded (`%0A`, 4 KiB of it).
        let e = parse(&req("/ws?chan\u{91}=a%3", "")).unwrap_err();
        assert_eq!(e.status().0, 400);
        assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
        let e = parse(&req(&format!("/ws?last=x%0A{}", "9".repeat(4000)), "")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("last: 'x?999"), "{msg}");
        assert!(msg.len() < 100 && !msg.chars().any(char::is_control), "{msg}");
    }

    #[test]
    fn channel_errors_say_why() {
        let e = parse(&req("/ws?channels=ok,bad%20name", "")).unwrap_err();
        assert_eq!(e.status().0, 400);
        assert!(e.to_string().contains("bad name"), "{e}");
        assert!(e.to_string().contains("outside"), "{e}");
        let e = parse(&req("/ws?channels=a,b,c,d", "")).unwrap_err();
        assert!(e.to_string().contains("too many channels"), "{e}");
        let (up, _) = parse(&req("/ws?channels=a%2Cb&other=1", "")).unwrap().unwrap();
        assert_eq!(up.channels.len(), 2);
    }

    #[test]
    fn credentials_for_access_control() {
        let creds = |target: &str, extra: &str| parse(&req(target, extra)).unwrap().unwrap().0.credentials;
        assert_eq!(creds("/ws?channels=a", ""), Credentials::default());
        let c = creds("/ws?channels=a&token=a.b%2Dc.d", "Origin: https://x.test \r\n");
        assert_eq!((c.token.as_deref(), c.origin.as_deref()), (Some("a.b-c.d"), Some("https://x.test")));
        assert_eq!(creds("/ws", "Authorization: Bearer h.p.s\r\n").token.as_deref(), Some("h.p.s"));
        assert_eq!(creds("/ws", "Authorization: Basic dXNlcg==\r\n").token, None);
        let both = creds("/ws?token=from.the.url", "Authorization: Bearer from.the.header\r\n");
        assert_eq!(both.token.as_deref(), Some("from.the.url"), "the URL's token wins");
        assert_eq!(parse(&req("/ws?token=%zz", "")).unwrap_err().status().0, 400);
    }

    #[test]
    fn deflate_negotiation() {
        let ok =
            |ext: &str| parse(&req("/ws", &format!("Sec-WebSocket-Extensions: {ext}\r\n"))).unwrap().unwrap().0.deflate;
        assert!(ok("permessage-deflate"));
        assert!(ok("permessage-deflate; client_max_window_bits"));
        assert!(ok("permessage-deflate; server_no_context_takeover; client_max_window_bits=10"));
        assert!(!ok("permessage-deflate; server_max_window_bits=10"));
        assert!(ok("permessage-deflate; server_max_window_bits=10, permessage-deflate"));
        assert!(!ok("x-webkit-deflate-frame"));
        assert!(!ok("permessage-deflate; unknown_param"));
        let (up, _) = parse(&req("/ws", "Sec-WebSocket-Extensions: permessage-deflate\r\n")).unwrap().unwrap();
        let resp = String::from_utf8(response_101(&up)).unwrap();
        assert!(resp.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ));
        let off = HandshakeConfig { deflate: false, ..cfg() };
        let r = req("/ws", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(!parse_request(r.as_bytes(), &off).unwrap().unwrap().0.deflate);
    }

    #[test]
    fn forwarded_for_is_read_only_with_trusted_proxies() {
        let xff = "X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.0.0.2\r\nX-Real-IP: 198.51.100.1\r\n";
        let r = req("/ws", xff);
        assert_eq!(parse_request(r.as_bytes(), &cfg()).unwrap().unwrap().0.forwarded_for, None);
        let trusted = HandshakeConfig { trusted: Some(Cidrs::parse(&["10.0.0.0/8".into()]).unwrap()), ..cfg() };
        let up = parse_request(r.as_bytes(), &trusted).unwrap().unwrap().0;
        // Both header lines are one list; the right-most untrusted address is the client.
        assert_eq!(up.forwarded_for, Some("203.0.113.9".parse().unwrap()));
        let r = req("/ws", "X-Real-IP: 198.51.100.1\r\n");
        let up = parse_request(r.as_bytes(), &trusted).unwrap().unwrap().0;
        assert_eq!(up.forwarded_for, Some("198.51.100.1".parse().unwrap()));
    }
}

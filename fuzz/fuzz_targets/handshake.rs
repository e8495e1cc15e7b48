//! The HTTP upgrade parser (`ws::handshake::parse_request`): the request head, the query
//! (`channels`, `since`, `last`), `Sec-WebSocket-Protocol` and the permessage-deflate offers
//! in `Sec-WebSocket-Extensions`.
//!
//! Checks: no panic; an accepted upgrade is consistent (head length within the buffer and
//! the limit, channels valid, deduplicated and within `max_channels`, one resume sequence
//! number per channel, deflate only when enabled) and decided by its head alone; every
//! prefix of an accepted head is "incomplete, read more"; every refusal renders as an HTTP
//! response with its status, and the 101 response parses as HTTP too.
//!
//! Byte 0 picks the configuration and the mode: raw bytes, or a Chromium-like request whose
//! target, `Sec-WebSocket-Extensions`, `Sec-WebSocket-Protocol` and one more header come
//! from the input (so the query and extension parsers are reached on every run).
#![no_main]

use crier::channel::ChannelName;
use crier::ws::handshake::{HandshakeConfig, HandshakeError, MAX_HEAD_BYTES, Upgrade, parse_request, response_101};
use libfuzzer_sys::fuzz_target;

fn check_response(bytes: &[u8], status: u16) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("not an HTTP response: {other:?}: {:?}", String::from_utf8_lossy(bytes)),
    };
    assert_eq!(resp.code, Some(status));
    let length = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
    if let Some(h) = length {
        let len: usize = std::str::from_utf8(h.value).unwrap().parse().unwrap();
        assert_eq!(bytes.len() - n, len, "Content-Length matches the body");
    }
}

fn check_upgrade(up: &Upgrade, used: usize, buf: &[u8], cfg: &HandshakeConfig) {
    assert!(used <= buf.len() && used <= MAX_HEAD_BYTES, "head of {used} bytes");
    assert!(up.channels.len() <= cfg.max_channels);
    for (i, ch) in up.channels.iter().enumerate() {
        assert!(!up.channels[..i].contains(ch), "channels are deduplicated");
        let text = ch.to_string();
        assert_eq!(&ChannelName::parse(&text).expect("a parsed channel re-parses"), ch);
    }
    if let Some(since) = &up.since {
        assert!(up.envelope, "since= only with crier.v1");
        assert_eq!(since.seqs.len(), up.channels.len());
        assert_eq!(since.epochs.len(), since.seqs.len());
        assert_eq!(since.epochs.first(), Some(&since.epoch));
    }
    assert!(!up.deflate || cfg.deflate);
    assert_eq!(up.accept.len(), 28, "base64 of a SHA-1");
    let resp = response_101(up);
    check_response(&resp, 101);
    let text = String::from_utf8(resp).unwrap();
    assert_eq!(text.contains("permessage-deflate"), up.deflate);
}

fn structured(data: &[u8]) -> Vec<u8> {
    // Fields separated by 0xFF: target, extensions, protocols, one extra header line.
    let mut parts = data.split(|&b| b == 0xFF).map(String::from_utf8_lossy);
    let target = parts.next().unwrap_or_default();
    let extensions = parts.next().unwrap_or_default();
    let protocols = parts.next().unwrap_or_default();
    let extra = parts.next().unwrap_or_default();
    let mut r = format!(
        "GET /ws{target} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
         Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
         (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\n\
         Origin: http://127.0.0.1:8080\r\nSec-WebSocket-Version: 13\r\n\
         Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if !extensions.is_empty() {
        r.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
    }
    if !protocols.is_empty() {
        r.push_str(&format!("Sec-WebSocket-Protocol: {protocols}\r\n"));
    }
    if !extra.is_empty() {
        r.push_str(&format!("{extra}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let cfg =
        HandshakeConfig {
            path: "/ws".into(),
            max_channels: 1 + (control as usize >> 4),
            deflate: control & 1 != 0,
            // With trusted proxies, X-Forwarded-For and X-Real-IP are parsed too.
            trusted: (control & 4 != 0).then(|| crier::peer::Cidrs::parse(&["127.0.0.0/8".to_string()]).unwrap()),
        };
    let buf = if control & 2 != 0 { structured(rest) } else { rest.to_vec() };
    match parse_request(&buf, &cfg) {
        Ok(Some((up, used))) => {
            check_upgrade(&up, used, &buf, &cfg);
            // The head decides: the same answer without whatever followed it.
            assert_eq!(parse_request(&buf[..used], &cfg), Ok(Some((up, used))));
            // Any shorter prefix is incomplete: nothing is decided on part of a head.
            for cut in [used / 2, used.saturating_sub(1), used.saturating_sub(3)] {
                if cut < used {
                    assert_eq!(parse_request(&buf[..cut], &cfg), Ok(None), "prefix of {cut} bytes");
                }
            }
        }
        Ok(None) => assert!(buf.len() < MAX_HEAD_BYTES, "a full buffer must be answered"),
        Err(e) => {
            let (status, _) = e.status();
            check_response(&e.response(), status);
            if let HandshakeError::BadRequest(msg) = &e {
                // The body quotes client bytes: bounded excerpts, no control characters.
                assert!(msg.len() <= 1024, "error body of {} bytes", msg.len());
                assert!(!msg.chars().any(char::is_control), "control character in {msg:?}");
            }
        }
    }
});

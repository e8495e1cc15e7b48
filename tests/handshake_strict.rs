//! Strict upgrade parsing and close behaviour, against the real binary: the requests
//! RFC 6455 §4.2.1 and RFC 9112 say to refuse get `400 Bad Request` with a body that says
//! why; a 64-bit frame length with its most significant bit set is a protocol error (1002,
//! RFC 6455 §5.2); the reply to a client's close echoes its code (RFC 6455 §5.5.1); corrupt
//! permessage-deflate data closes with 1007. Each case also checks the README says so.

mod common;

use common::*;

fn refused(s: &Server, reason: &str) -> f64 {
    s.metric0("crier_connections_refused_total", &[("reason", reason)])
}

/// Sends a raw request head and expects `400` with a body containing every one of `words`.
fn expect_400(s: &Server, what: &str, request: &str, words: &[&str]) {
    let r = http_raw(s.ws, request.as_bytes()).unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert_eq!(r.status, 400, "{what}: expected 400, got {r:?}\nrequest:\n{request}");
    let body = r.body_text().to_lowercase();
    for w in words {
        assert!(body.contains(&w.to_lowercase()), "{what}: the body should say {w:?}: {r:?}");
    }
}

/// A complete upgrade request with the given header lines (no defaults added), each line
/// without its CRLF.
fn request(lines: &[&str]) -> String {
    let mut r = String::from("GET /ws HTTP/1.1\r\n");
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const VERSION: &str = "Sec-WebSocket-Version: 13";

fn key_line() -> String {
    format!("Sec-WebSocket-Key: {WS_KEY}")
}

/// The README row of the "HTTP errors on the WebSocket port" table whose situation
/// mentions `needle` (case-insensitive).
fn http_error_row(needle: &str) -> Option<String> {
    let readme = readme();
    let start = readme.find("### HTTP errors on the WebSocket port").expect("README: HTTP errors section");
    let section = &readme[start..];
    let end = section[4..].find("\n#").map_or(section.len(), |e| e + 4);
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .find(|l| l.to_lowercase().contains(&needle.to_lowercase()))
        .map(str::to_string)
}

/// The rows of the README table "Close codes sent by the server", as written.
fn close_table() -> Vec<String> {
    let readme = readme();
    let start = readme.find("### Close codes sent by the server").expect("README: close codes section");
    let section = &readme[start..];
    let end = section[4..].find("\n#").map_or(section.len(), |e| e + 4);
    section[..end].lines().filter(|l| l.starts_with('|')).map(str::to_string).collect()
}

/// The rows of that table whose first cell is a code: (code, row).
fn close_rows() -> Vec<(u16, String)> {
    close_table()
        .into_iter()
        .filter_map(|l| {
            let code = l.trim().trim_matches('|').split('|').next()?.trim().trim_matches('`').parse().ok()?;
            Some((code, l))
        })
        .collect()
}

#[test]
fn duplicate_key_is_400() {
    let s = Server::start(Driver::Epoll);
    let host = format!("Host: {}", s.ws);
    let key = key_line();
    let other = "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==";
    // RFC 6455 §11.3.1: Sec-WebSocket-Key MUST NOT appear more than once in a request.
    let req = request(&[&host, UPGRADE, CONNECTION, &key, other, VERSION]);
    expect_400(&s, "two different keys", &req, &["Sec-WebSocket-Key", "more than once"]);
    let req = request(&[&host, UPGRADE, CONNECTION, &key, &key, VERSION]);
    expect_400(&s, "the same key twice", &req, &["Sec-WebSocket-Key", "more than once"]);
    s.wait_metric("crier_connections_refused_total", &[("reason", "bad_request")], IO_TIMEOUT, "2", |v| v == 2.0);
    assert!(http_error_row("duplicate").is_some_and(|r| r.contains("400")), "README must list duplicate headers");
    s.assert_serving();
}

#[test]
fn duplicate_version_is_400_in_either_order() {
    let s = Server::start(Driver::Epoll);
    let host = format!("Host: {}", s.ws);
    let key = key_line();
    // RFC 6455 §11.3.5: Sec-WebSocket-Version MUST NOT appear more than once in a request;
    // the answer must not depend on which copy comes first.
    for (a, b) in [("13", "8"), ("8", "13"), ("13", "13")] {
        let (va, vb) = (format!("Sec-WebSocket-Version: {a}"), format!("Sec-WebSocket-Version: {b}"));
        let req = request(&[&host, UPGRADE, CONNECTION, &key, &va, &vb]);
        expect_400(&s, &format!("versions {a} then {b}"), &req, &["Sec-WebSocket-Version", "more than once"]);
    }
    assert_eq!(refused(&s, "bad_request"), 3.0);
    assert_eq!(refused(&s, "upgrade_required"), 0.0);
}

#[test]
fn missing_or_duplicate_host_is_400() {
    let s = Server::start(Driver::Epoll);
    let key = key_line();
    // RFC 9112 §3.2: a server MUST respond with 400 to an HTTP/1.1 request that lacks a
    // Host header field or has more than one. RFC 6455 §4.2.1 item 2 requires it too.
    let req = request(&[UPGRADE, CONNECTION, &key, VERSION]);
    expect_400(&s, "no Host", &req, &["Host"]);
    let req = request(&["Host: a.example", "Host: b.example", UPGRADE, CONNECTION, &key, VERSION]);
    expect_400(&s, "two Hosts", &req, &["Host", "more than once"]);
    assert_eq!(refused(&s, "bad_request"), 2.0);
    assert!(http_error_row("host").is_some_and(|r| r.contains("400")), "README must list a missing Host");
    // With one Host the same request is upgraded.
    let host = format!("Host: {}", s.ws);
    let r = http_raw(s.ws, request(&[&host, UPGRADE, CONNECTION, &key, VERSION]).as_bytes()).unwrap();
    assert_eq!(r.status, 101, "a request with one Host must be upgraded: {r:?}");
}

#[test]
fn body_on_the_upgrade_is_400() {
    let s = Server::start(Driver::Epoll);
    let host = format!("Host: {}", s.ws);
    let key = key_line();
    // A body would be parsed as WebSocket frames: refuse Content-Length other than 0 and
    // any Transfer-Encoding (RFC 9112 §6: they announce a body; RFC 6455 §4.1: an
    // upgrade is a GET with none).
    let mut req = request(&[&host, UPGRADE, CONNECTION, &key, VERSION, "Content-Length: 6"]);
    req.push_str("hello!");
    expect_400(&s, "Content-Length: 6", &req, &["body"]);
    let mut req = request(&[&host, UPGRADE, CONNECTION, &key, VERSION, "Transfer-Encoding: chunked"]);
    req.push_str("0\r\n\r\n");
    expect_400(&s, "Transfer-Encoding: chunked", &req, &["body"]);
    let req = request(&[&host, UPGRADE, CONNECTION, &key, VERSION, "Content-Length: 0", "Content-Length: 5"]);
    expect_400(&s, "Content-Length: 0 and 5", &req, &["body"]);
    assert_eq!(refused(&s, "bad_request"), 3.0);
    assert!(
        http_error_row("Content-Length").is_some_and(|r| r.contains("400")),
        "README must list a body on the upgrade"
    );
    // Content-Length: 0 announces no body: accepted.
    let c = WsClient::connect_with(s.ws, "/ws", &[("Content-Length", "0")]);
    assert!(c.is_ok(), "Content-Length: 0 must be upgraded: {:?}", c.err());
}

#[test]
fn length_with_most_significant_bit_set_is_1002() {
    let s = Server::start(Driver::Epoll);
    let mut c = s.ws("/ws");
    s.wait_connections(1);
    // RFC 6455 §5.2: "the most significant bit MUST be 0" in a 64-bit payload length.
    // 2^63: a protocol error, not a message that is merely too big (1009).
    let mut frame = vec![0x82u8, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&[1, 2, 3, 4]);
    c.send_raw(&frame).unwrap();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1002));
    s.wait_metric("crier_connections_closed_total", &[("reason", "protocol_error")], IO_TIMEOUT, "1", |v| v == 1.0);
    assert_eq!(s.metric0("crier_connections_closed_total", &[("reason", "message_too_big")]), 0.0);
    // The largest length with the bit clear is still "too big".
    let mut c = s.ws("/ws");
    c.send_raw(&[0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]).unwrap();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1009));
    let row = close_rows().into_iter().find(|(c, _)| *c == 1002).map(|(_, r)| r).unwrap_or_default();
    assert!(row.contains("length"), "README 1002 row must name the 64-bit length rule: {row}");
}

#[test]
fn close_reply_echoes_the_clients_code_as_the_readme_says() {
    let s = Server::start(Driver::Epoll);
    // RFC 6455 §5.5.1: the endpoint "typically echos the status code it received".
    for code in [1000u16, 1001, 3000, 4001] {
        let mut c = s.ws("/ws");
        c.send_close(code, "bye").unwrap();
        assert_eq!(c.expect_close(IO_TIMEOUT), Some(code), "reply to a close with {code}");
        c.expect_tcp_closed(IO_TIMEOUT);
    }
    // A close without a code (RFC 6455 §7.1.5: 1005, which is never sent) gets 1000.
    let mut c = s.ws("/ws");
    c.send_frame(true, 0, OP_CLOSE, b"", true).unwrap();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1000));
    // The README says the same.
    let rows = close_table();
    let row = rows.iter().find(|r| r.to_lowercase().contains("client's close"));
    let row = row.unwrap_or_else(|| panic!("README close table has no row for the reply to a close: {rows:?}"));
    assert!(row.to_lowercase().contains("echo"), "README must say the reply echoes the client's code: {row}");
}

#[test]
fn corrupt_deflate_is_1007_and_documented() {
    let s = Server::start(Driver::Epoll);
    let mut c = s.ws_deflate("/ws");
    assert!(c.deflate, "permessage-deflate must be negotiated");
    s.wait_connections(1);
    // 0xFF: a DEFLATE block of reserved type 3, which no inflater accepts.
    c.send_frame(true, RSV1, OP_BINARY, &[0xFF, 0xFF, 0xFF, 0xFF], true).unwrap();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1007));
    let row = close_rows().into_iter().find(|(c, _)| *c == 1007).map(|(_, r)| r).unwrap_or_default();
    assert!(row.to_lowercase().contains("deflate"), "README 1007 row must name corrupt permessage-deflate data: {row}");
    s.assert_serving();
}

#[test]
fn corrupt_deflate_is_counted_as_bad_compression_not_invalid_utf8() {
    let s = Server::start(Driver::Epoll);
    let mut c = s.ws_deflate("/ws");
    assert!(c.deflate, "permessage-deflate must be negotiated");
    s.wait_connections(1);
    c.send_frame(true, RSV1, OP_TEXT, &[0xFF, 0xFF, 0xFF, 0xFF], true).unwrap();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1007));
    let closed = |r| s.metric0("crier_connections_closed_total", &[("reason", r)]);
    wait_until(IO_TIMEOUT, "the close to be counted", || closed("bad_compression") == 1.0);
    assert_eq!(closed("invalid_utf8"), 0.0, "corrupt DEFLATE is not a UTF-8 error");
    // Valid DEFLATE of invalid UTF-8 is still invalid_utf8.
    let mut c = s.ws_deflate("/ws");
    c.send_compressed(OP_TEXT, b"ok \xff\xfe").unwrap();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1007));
    wait_until(IO_TIMEOUT, "the UTF-8 close to be counted", || closed("invalid_utf8") == 1.0);
    assert_eq!(closed("bad_compression"), 1.0);
}

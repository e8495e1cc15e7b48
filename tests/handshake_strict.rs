//! Strict upgrade parsing and close behaviour, against the real binary: the requests
//! RFC 6455 §4.2.1 and RFC 9112 say to refuse get `400 Bad Request` with a body that says
//! why; a 64-bit frame length with its most significant bit set is a protocol error (1002,
//! RFC 6455 §5.2); the reply to a client's close echoes its code (RFC 6455 §5.5.1); corrupt
//! permessage-deflate data closes with 1007. Each case also checks the README says so.

mod common;

use common::*;

/// The README "Close codes sent by the server" table: (code, text of the row).
fn close_rows() -> Vec<(u16, String)> {
    let readme = readme();
    let start = readme.find("### Close codes sent by the server").expect("README: close codes section");
    let section = &readme[start..];
    let end = section[4..].find("\n#").map_or(section.len(), |e| e + 4);
    section[..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').map(str::trim).collect();
            let code = cells.first()?.trim_matches('`').parse().ok()?;
            Some((code, l.to_string()))
        })
        .collect()
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

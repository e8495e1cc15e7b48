//! The publisher protocol over the Unix socket: `Publisher`, `pub_command`, `parse_ok`.

use super::*;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Publisher {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

/// Bytes of one `PUB` command; `kind` None leaves the type out (defaults to text).
pub fn pub_command(channel: &str, payload: &[u8], kind: Option<&str>) -> Vec<u8> {
    let mut v = match kind {
        Some(k) => format!("PUB {channel} {} {k}\r\n", payload.len()),
        None => format!("PUB {channel} {}\r\n", payload.len()),
    }
    .into_bytes();
    v.extend_from_slice(payload);
    v.extend_from_slice(b"\r\n");
    v
}

impl Publisher {
    pub fn connect(path: &Path) -> Publisher {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect publisher socket {}: {e}", path.display()));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Publisher { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Next reply line without its line ending; None on EOF (or reset).
    pub fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                assert!(
                    buf.ends_with(b"\r\n"),
                    "publisher reply must end in CRLF: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                Some(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string())
            }
            Err(e) if is_reset(&e) => None,
            Err(e) => panic!("reading a publisher reply: {e}"),
        }
    }

    pub fn expect_line(&mut self) -> String {
        self.line().expect("publisher connection closed, expected a reply")
    }

    /// Publish and return the seq; panics on a refusal.
    pub fn publish(&mut self, channel: &str, payload: &[u8], binary: bool) -> u64 {
        let kind = if binary { "binary" } else { "text" };
        self.send(&pub_command(channel, payload, Some(kind))).expect("send PUB");
        let l = self.expect_line();
        parse_ok(&l)
    }

    /// Expect EOF: the server closed this publisher connection.
    pub fn expect_closed(&mut self) {
        self.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 256];
        match self.reader.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the server to close the publisher connection, got {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if is_reset(&e) => {}
            Err(e) => panic!("expected the publisher connection closed, got {e}"),
        }
    }
}

pub fn parse_ok(line: &str) -> u64 {
    line.strip_prefix("+OK ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected +OK <seq>, got {line:?}"))
}

//! Plain HTTP over TCP: requests, responses, the upgrade request.

use super::*;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} body={:?}", self.status_line, self.headers, String::from_utf8_lossy(&self.body))
    }
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

pub(crate) fn parse_head(head: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::other(format!("not an HTTP response: {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(HttpResponse { status, status_line, headers, body: Vec::new() })
}

pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Read one HTTP response (head and body) from `stream`. `buf` holds bytes already read;
/// on return it holds what followed the response head (for a 101) or is empty.
pub(crate) fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(e) = find_head_end(buf) {
            break e;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete response head within {timeout:?}; got {:?}", String::from_utf8_lossy(buf)),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(buf)
                    ),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("{e} (after {:?})", String::from_utf8_lossy(buf))));
            }
        }
    };
    let mut resp = parse_head(&buf[..head_end])?;
    let rest: Vec<u8> = buf[head_end..].to_vec();
    buf.clear();
    if resp.status == 101 {
        *buf = rest;
        return Ok(resp);
    }
    // Body: Content-Length if given, else until EOF (or a short quiet period).
    let mut body = rest;
    let want = resp.header("content-length").and_then(|v| v.parse::<usize>().ok());
    loop {
        if let Some(n) = want
            && body.len() >= n
        {
            body.truncate(n);
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = if want.is_some() { left } else { left.min(Duration::from_secs(2)) };
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    resp.body = body;
    Ok(resp)
}

/// Send raw bytes to `addr` and read one HTTP response.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    if let Err(e) = s.write_all(request) {
        // The server may answer and close before reading everything; try to read anyway.
        if !is_reset(&e) {
            return Err(e);
        }
    }
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, IO_TIMEOUT)
}

pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    http_raw(addr, format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
}

/// A well-formed WebSocket upgrade request for `target` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    let has = |n: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("Sec-WebSocket-Key") {
        req.push_str(&format!("Sec-WebSocket-Key: {WS_KEY}\r\n"));
    }
    if !has("Sec-WebSocket-Version") {
        req.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    for (k, v) in extra {
        if !v.is_empty() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    req
}

//! The one HTTP/1.1 response writer (RFC 9112 §4, §6): every answer crier gives over plain
//! HTTP — a refused upgrade, `crier.js`, the admin endpoint — is built here, so each carries
//! the same framing (`Content-Length`, then `Connection: close`, since crier closes after
//! answering) and none can get it wrong on its own.

/// A complete response: status line (`"503 Service Unavailable"`), `Content-Type`,
/// `Content-Length`, the `extra` headers in order, `Connection: close`, then `body`.
pub fn response(status: &str, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_the_body_and_closes() {
        let r = response("503 Service Unavailable", "text/plain", &[("Retry-After", "5")], b"busy\n");
        assert_eq!(
            r,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nRetry-After: 5\r\nConnection: close\r\n\r\nbusy\n"
        );
    }
}

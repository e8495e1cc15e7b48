//! A minimal WebSocket client side (RFC 6455 + RFC 7692 permessage-deflate) built for
//! density: no per-connection buffers beyond a partial frame, sans-IO so it can be tested
//! without sockets.

use base64::Engine as _;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::FrameHeader;

pub const DEFLATE_OFFER: &str = "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
/// Largest message we accept from the server.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A small non-cryptographic generator for keys and masks (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

pub fn new_key(rng: &mut Rng) -> String {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    k[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(k)
}

pub fn request(host: &str, path: &str, key: &str, deflate: bool) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if deflate {
        r.push_str("Sec-WebSocket-Extensions: ");
        r.push_str(DEFLATE_OFFER);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered with another status (e.g. 503 over capacity).
    Status(u16),
    BadAccept,
    Malformed,
    TooLong,
}

impl HandshakeError {
    pub fn reason(&self) -> String {
        match self {
            HandshakeError::Status(s) => format!("http_{s}"),
            HandshakeError::BadAccept => "bad_accept".into(),
            HandshakeError::Malformed => "bad_response".into(),
            HandshakeError::TooLong => "response_too_long".into(),
        }
    }
}

/// Result of looking at the bytes received so far in answer to the upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Need more bytes.
    Partial,
    /// Upgraded. `head_len` bytes belong to the HTTP head; the rest are frames.
    Upgraded { head_len: usize, deflate: bool },
}

pub fn parse_response(buf: &[u8], key: &str) -> Result<Response, HandshakeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 8192 { Err(HandshakeError::TooLong) } else { Ok(Response::Partial) };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HandshakeError::Malformed)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().ok_or(HandshakeError::Malformed)?;
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HandshakeError::Malformed);
    }
    let code: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or(HandshakeError::Malformed)?;
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let mut accept_ok = false;
    let mut deflate = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HandshakeError::Malformed);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-accept") {
            // RFC 6455 §4.2.2: base64(SHA-1(key ++ GUID)).
            accept_ok = value == derive_accept_key(key.as_bytes());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            deflate |= value.split(',').any(|ext| ext.split(';').next().unwrap_or("").trim() == "permessage-deflate");
        }
    }
    if !accept_ok {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Response::Upgraded { head_len: end + 4, deflate })
}

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Message {
        binary: bool,
        compressed: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong,
    /// Close frame with its status code, if any.
    Close(Option<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    MaskedServerFrame,
    ReservedBits,
    BadOpcode(u8),
    BadControlFrame,
    BadContinuation,
    TooBig,
}

#[derive(Debug, Default)]
struct Fragment {
    binary: bool,
    compressed: bool,
    data: Vec<u8>,
}

/// Incremental frame parser. Holds only an incomplete frame between reads (usually
/// nothing), so an idle connection costs a few words.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    frag: Option<Box<Fragment>>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses every complete frame in `self.buf ++ data`, calling `f` for each event.
    /// `f` returns false to stop (after a close); the rest is discarded.
    pub fn feed(&mut self, data: &[u8], f: &mut impl FnMut(Event<'_>) -> bool) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            let used = parse_all(&mut self.frag, data, f)?;
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.buf);
            let used = parse_all(&mut self.frag, &buf, f);
            self.buf = buf;
            self.buf.drain(..used?);
        }
        if self.buf.is_empty() && self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Bytes held for an incomplete frame or message.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.frag.as_ref().map_or(0, |f| f.data.len())
    }
}

struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    head_len: usize,
    len: usize,
}

fn parse_header(b: &[u8]) -> Result<Option<Header>, ProtocolError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    let rsv1 = b[0] & 0x40 != 0;
    if b[0] & 0x30 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = b[0] & 0x0f;
    if b[1] & 0x80 != 0 {
        return Err(ProtocolError::MaskedServerFrame);
    }
    let (len, head_len) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(ProtocolError::TooBig);
    }
    Ok(Some(Header { fin, rsv1, opcode, head_len, len: len as usize }))
}

fn parse_all(
    frag: &mut Option<Box<Fragment>>,
    data: &[u8],
    f: &mut impl FnMut(Event<'_>) -> bool,
) -> Result<usize, ProtocolError> {
    let mut pos = 0;
    loop {
        let Some(h) = parse_header(&data[pos..])? else {
            return Ok(pos);
        };
        let total = h.head_len + h.len;
        if data.len() - pos < total {
            return Ok(pos);
        }
        let payload = &data[pos + h.head_len..pos + total];
        pos += total;
        let go_on = match h.opcode {
            OP_TEXT | OP_BINARY => {
                if frag.is_some() {
                    return Err(ProtocolError::BadContinuation);
                }
                if h.fin {
                    f(Event::Message { binary: h.opcode == OP_BINARY, compressed: h.rsv1, payload })
                } else {
                    *frag = Some(Box::new(Fragment {
                        binary: h.opcode == OP_BINARY,
                        compressed: h.rsv1,
                        data: payload.to_vec(),
                    }));
                    true
                }
            }
            OP_CONT => {
                let Some(fr) = frag.as_mut() else {
                    return Err(ProtocolError::BadContinuation);
                };
                if h.rsv1 {
                    return Err(ProtocolError::ReservedBits);
                }
                if fr.data.len() + payload.len() > MAX_MESSAGE {
                    return Err(ProtocolError::TooBig);
                }
                fr.data.extend_from_slice(payload);
                if h.fin {
                    let fr = frag.take().expect("fragment");
                    f(Event::Message { binary: fr.binary, compressed: fr.compressed, payload: &fr.data })
                } else {
                    true
                }
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !h.fin || h.len > 125 || h.rsv1 {
                    return Err(ProtocolError::BadControlFrame);
                }
                match h.opcode {
                    OP_PING => f(Event::Ping(payload)),
                    OP_PONG => f(Event::Pong),
                    _ => {
                        if payload.len() == 1 {
                            return Err(ProtocolError::BadControlFrame);
                        }
                        let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        f(Event::Close(code))
                    }
                }
            }
            op => return Err(ProtocolError::BadOpcode(op)),
        };
        if !go_on {
            return Ok(data.len());
        }
    }
}

/// Appends a masked client frame (FIN set) to `out`. The load tool only sends pongs and
/// close frames and checks nothing with them, so the header is tungstenite's, as in crier;
/// the server frames it reads are parsed by its own `FrameReader`, independently of crier.
pub fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let header = FrameHeader { opcode: opcode.into(), mask: Some(mask), ..FrameHeader::default() };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    // RFC 6455 §5.3: byte i is XORed with mask[i % 4].
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Inflates one permessage-deflate message (no context takeover): raw DEFLATE with the
/// `00 00 ff ff` tail that the sender stripped appended again. `out` is cleared first.
pub fn inflate_message(dec: &mut flate2::Decompress, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    dec.reset(false);
    out.clear();
    const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
    for chunk in [input, &TAIL[..]] {
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(4096));
            }
            let before_in = dec.total_in();
            let before_out = dec.total_out();
            let status = dec
                .decompress_vec(&chunk[consumed..], out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("inflate: {e}"))?;
            consumed += (dec.total_in() - before_in) as usize;
            if out.len() > MAX_MESSAGE {
                return Err("inflated message too big".into());
            }
            let progressed = dec.total_in() != before_in || dec.total_out() != before_out;
            if status == flate2::Status::StreamEnd || (consumed == chunk.len() && out.len() < out.capacity()) {
                break;
            }
            if !progressed && out.len() < out.capacity() {
                return Err("inflate made no progress".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 0xffff {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Msg(bool, bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn collect(r: &mut FrameReader, data: &[u8], out: &mut Vec<Owned>) -> Result<(), ProtocolError> {
        r.feed(data, &mut |e| {
            out.push(match e {
                Event::Message { binary, compressed, payload } => Owned::Msg(binary, compressed, payload.to_vec()),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong => Owned::Pong,
                Event::Close(c) => Owned::Close(c),
            });
            true
        })
    }

    #[test]
    fn request_shape() {
        let r = String::from_utf8(request("127.0.0.1:8080", "/ws?channels=a", "KEY", true)).unwrap();
        assert!(r.starts_with("GET /ws?channels=a HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: KEY\r\n"));
        assert!(r.contains(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")));
        assert!(r.ends_with("\r\n\r\n"));
        let plain = String::from_utf8(request("h", "/", "K", false)).unwrap();
        assert!(!plain.contains("Extensions"));
    }

    #[test]
    fn response_parsing() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
                  Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n\x01\x00";
        assert_eq!(
            parse_response(ok.as_bytes(), key),
            Ok(Response::Upgraded { head_len: ok.len() - 2, deflate: true })
        );
        assert_eq!(parse_response(&ok.as_bytes()[..40], key), Ok(Response::Partial));
        let no_ext = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            parse_response(no_ext.as_bytes(), key),
            Ok(Response::Upgraded { head_len: no_ext.len(), deflate: false })
        );
        let busy = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(busy.as_bytes(), key), Err(HandshakeError::Status(503)));
        assert_eq!(HandshakeError::Status(503).reason(), "http_503");
        let bad = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(parse_response(bad.as_bytes(), key), Err(HandshakeError::BadAccept));
        assert_eq!(parse_response(&[b'a'; 9000], key), Err(HandshakeError::TooLong));
    }

    #[test]
    fn frames_of_every_length_split_anywhere() {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (i, n) in [0usize, 1, 125, 126, 127, 1000, 65535, 65536, 70000].into_iter().enumerate() {
            let p: Vec<u8> = (0..n).map(|j| (i + j) as u8).collect();
            let binary = i % 2 == 1;
            stream.extend(server_frame(true, false, if binary { OP_BINARY } else { OP_TEXT }, &p));
            want.push(Owned::Msg(binary, false, p));
        }
        stream.extend(server_frame(true, false, OP_PING, b"hi"));
        want.push(Owned::Ping(b"hi".to_vec()));
        stream.extend(server_frame(true, false, OP_PONG, b""));
        want.push(Owned::Pong);
        // Fragmented, compressed flag on the first frame only.
        stream.extend(server_frame(false, true, OP_TEXT, b"ab"));
        stream.extend(server_frame(true, false, OP_PING, b""));
        stream.extend(server_frame(false, false, OP_CONT, b"cd"));
        stream.extend(server_frame(true, false, OP_CONT, b"ef"));
        want.push(Owned::Ping(vec![]));
        want.push(Owned::Msg(false, true, b"abcdef".to_vec()));
        stream.extend(server_frame(true, false, OP_CLOSE, &1001u16.to_be_bytes()));
        want.push(Owned::Close(Some(1001)));

        for chunk in [1usize, 2, 3, 7, 100, 4096, stream.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                collect(&mut r, c, &mut got).unwrap();
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn protocol_errors() {
        let mut r = FrameReader::new();
        let mut v = Vec::new();
        assert_eq!(collect(&mut r, &[0x81, 0x81, 0, 0, 0, 0, 0], &mut v), Err(ProtocolError::MaskedServerFrame));
        let mut r = FrameReader::new();
        assert_eq!(collect(&mut r, &[0xa1, 0x00], &mut v), Err(ProtocolError::ReservedBits));
        let mut r = FrameReader::new();
        assert_eq!(
            collect(&mut r, &server_frame(true, false, OP_CONT, b"x"), &mut v),
            Err(ProtocolError::BadContinuation)
        );
        let mut r = FrameReader::new();
        assert_eq!(collect(&mut r, &server_frame(true, false, 3, b""), &mut v), Err(ProtocolError::BadOpcode(3)));
        let mut r = FrameReader::new();
        assert_eq!(
            collect(&mut r, &server_frame(false, false, OP_PING, b""), &mut v),
            Err(ProtocolError::BadControlFrame)
        );
    }

    #[test]
    fn stop_after_close_discards_rest() {
        let mut r = FrameReader::new();
        let mut data = server_frame(true, false, OP_CLOSE, &1000u16.to_be_bytes());
        data.extend(server_frame(true, false, OP_TEXT, b"late"));
        let mut n = 0;
        r.feed(&data, &mut |_| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        client_frame(&mut out, OP_PONG, b"abc", [1, 2, 3, 4]);
        assert_eq!(out, [0x8a, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        let mut out = Vec::new();
        client_frame(&mut out, OP_BINARY, &[0u8; 300], [9, 9, 9, 9]);
        assert_eq!(&out[..4], &[0x82, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
        assert!(out[8..].iter().all(|&b| b == 9));
    }

    #[test]
    fn inflate_like_a_no_context_takeover_server() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut dec = flate2::Decompress::new(false);
        let mut out = Vec::new();
        for msg in [
            crate::payload::encode(1, 1_700_000_000_000_000_000, 256),
            crate::payload::encode(2, 1_700_000_000_000_000_001, 100_000),
            b"".to_vec(),
        ] {
            // What the server does: raw deflate, sync flush, strip 00 00 ff ff.
            let mut c = Compress::new(Compression::default(), false);
            let mut z = Vec::with_capacity(msg.len() + 64);
            c.compress_vec(&msg, &mut z, FlushCompress::Sync).unwrap();
            assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
            z.truncate(z.len() - 4);
            inflate_message(&mut dec, &z, &mut out).unwrap();
            assert_eq!(out, msg);
        }
        assert!(inflate_message(&mut dec, &[0xff, 0xff, 0xff], &mut out).is_err());
    }

    #[test]
    fn rng_keys_differ() {
        let mut r = Rng::new(1);
        let a = new_key(&mut r);
        let b = new_key(&mut r);
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }
}

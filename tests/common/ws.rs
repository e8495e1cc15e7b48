//! The raw WebSocket client (`WsClient`), frame helpers, deflate helpers, and tungstenite as a
//! second, independent client.

use super::*;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: &[u8] = &self.payload[..self.payload.len().min(64)];
        write!(
            f,
            "Frame {{ fin: {}, rsv: {:03b}, opcode: {:#x}, len: {}, payload: {:?}{} }}",
            self.fin,
            self.rsv,
            self.opcode,
            self.payload.len(),
            String::from_utf8_lossy(shown),
            if self.payload.len() > 64 { "…" } else { "" }
        )
    }
}

impl Frame {
    pub fn rsv1(&self) -> bool {
        self.rsv & RSV1 != 0
    }
    /// Close code of a close frame (None for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A complete data message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub opcode: u8,
    pub data: Vec<u8>,
    /// The first frame had RSV1 set (the payload was deflated on the wire).
    pub compressed: bool,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: &[u8] = &self.data[..self.data.len().min(64)];
        write!(
            f,
            "Message {{ {}, len: {}, compressed: {}, data: {:?}{} }}",
            match self.opcode {
                OP_TEXT => "text",
                OP_BINARY => "binary",
                _ => "?",
            },
            self.data.len(),
            self.compressed,
            String::from_utf8_lossy(shown),
            if self.data.len() > 64 { "…" } else { "" }
        )
    }
}

impl Message {
    pub fn is_text(&self) -> bool {
        self.opcode == OP_TEXT
    }
    pub fn is_binary(&self) -> bool {
        self.opcode == OP_BINARY
    }
    pub fn text(&self) -> &str {
        assert!(self.is_text(), "expected a text message, got {self:?}");
        std::str::from_utf8(&self.data).expect("text message is valid UTF-8")
    }
}

/// How reading from a WebSocket ended instead of yielding what was asked for.
#[derive(Debug)]
pub enum WsEnd {
    /// The server sent a close frame (code, reason).
    Close(Option<u16>, String),
    /// TCP EOF without a close frame.
    Eof,
    /// Connection reset.
    Reset,
    /// Nothing within the timeout.
    Timeout,
    Io(io::Error),
    /// The server sent something that is not valid per RFC 6455.
    Protocol(String),
}

pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub response: HttpResponse,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
    /// Answer pings automatically while reading data messages.
    pub auto_pong: bool,
    mask_state: u64,
    /// Pings seen while reading data messages.
    pub pings_seen: usize,
}

impl WsClient {
    pub fn connect(addr: SocketAddr, target: &str) -> WsClient {
        Self::connect_with(addr, target, &[]).unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
    }

    /// Upgrade with extra request headers; Err(response) if the answer is not 101.
    pub fn connect_with(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Result<WsClient, HttpResponse> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::handshake(stream, addr, target, extra)
    }

    /// Upgrade on an already connected stream (e.g. one with a small receive buffer).
    pub fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        extra: &[(&str, &str)],
    ) -> Result<WsClient, HttpResponse> {
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let req = upgrade_request(addr, target, extra);
        stream.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("send upgrade request: {e}"));
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("reading the upgrade response to {target}: {e}"));
        if resp.status != 101 {
            return Err(resp);
        }
        assert_eq!(resp.header("sec-websocket-accept"), Some(WS_ACCEPT), "wrong Sec-WebSocket-Accept: {resp:?}");
        let deflate = resp.header("sec-websocket-extensions").is_some_and(|v| v.contains("permessage-deflate"));
        Ok(WsClient {
            stream,
            buf,
            response: resp,
            deflate,
            auto_pong: false,
            mask_state: 0x9E37_79B9_7F4A_7C15,
            pings_seen: 0,
        })
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), WsEnd> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WsEnd::Timeout);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(WsEnd::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(WsEnd::Timeout),
                Err(e) if is_reset(&e) => return Err(WsEnd::Reset),
                Err(e) => return Err(WsEnd::Io(e)),
            }
        }
    }

    /// Parse one frame from the buffer if complete.
    fn take_frame(&mut self) -> Result<Option<Frame>, WsEnd> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = (b[0] >> 4) & 0x7;
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let mut len = (b[1] & 0x7F) as u64;
        let mut pos = 2;
        if len == 126 {
            if b.len() < 4 {
                return Ok(None);
            }
            len = u16::from_be_bytes([b[2], b[3]]) as u64;
            pos = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return Ok(None);
            }
            len = u64::from_be_bytes(b[2..10].try_into().unwrap());
            pos = 10;
        }
        if masked {
            return Err(WsEnd::Protocol("server sent a masked frame (RFC 6455 5.1 forbids it)".into()));
        }
        if len > 64 * 1024 * 1024 {
            return Err(WsEnd::Protocol(format!("frame length {len} is absurd")));
        }
        let total = pos + len as usize;
        if b.len() < total {
            return Ok(None);
        }
        let payload = b[pos..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Frame { fin, rsv, opcode, payload }))
    }

    /// Read the next frame of any kind.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, WsEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(f);
            }
            self.fill(deadline)?;
        }
    }

    /// Read the next data message (reassembling fragments, inflating RSV1 payloads).
    /// Pings and pongs are skipped (answered when `auto_pong`); a close frame ends it.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message, WsEnd> {
        let deadline = Instant::now() + timeout;
        let mut partial: Option<Message> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.read_frame(left)?;
            match f.opcode {
                OP_PING => {
                    self.pings_seen += 1;
                    if self.auto_pong {
                        let _ = self.send_frame(true, 0, OP_PONG, &f.payload, true);
                    }
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let reason = if f.payload.len() > 2 {
                        String::from_utf8_lossy(&f.payload[2..]).into_owned()
                    } else {
                        String::new()
                    };
                    return Err(WsEnd::Close(f.close_code(), reason));
                }
                OP_TEXT | OP_BINARY => {
                    if partial.is_some() {
                        return Err(WsEnd::Protocol(format!(
                            "new data frame while a fragmented message is open: {f:?}"
                        )));
                    }
                    if f.rsv1() && !self.deflate {
                        return Err(WsEnd::Protocol(format!("RSV1 set without permessage-deflate: {f:?}")));
                    }
                    if f.rsv & (RSV2 | RSV3) != 0 {
                        return Err(WsEnd::Protocol(format!("RSV2/RSV3 set: {f:?}")));
                    }
                    let compressed = f.rsv1();
                    let m = Message { opcode: f.opcode, data: f.payload, compressed };
                    if f.fin {
                        return Ok(finish_message(m));
                    }
                    partial = Some(m);
                }
                OP_CONT => {
                    let Some(mut m) = partial.take() else {
                        return Err(WsEnd::Protocol(format!("continuation frame without a start: {f:?}")));
                    };
                    m.data.extend_from_slice(&f.payload);
                    if f.fin {
                        return Ok(finish_message(m));
                    }
                    partial = Some(m);
                }
                op => {
                    return Err(WsEnd::Protocol(format!("server sent reserved opcode {op:#x}")));
                }
            }
        }
    }

    /// Receive a data message or panic with what happened instead.
    pub fn expect_msg(&mut self) -> Message {
        match self.recv(IO_TIMEOUT) {
            Ok(m) => m,
            Err(e) => panic!("expected a message, got {e:?}"),
        }
    }

    pub fn expect_text(&mut self) -> String {
        let m = self.expect_msg();
        m.text().to_string()
    }

    /// Assert nothing (no data message, no close) arrives for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        match self.recv(quiet) {
            Err(WsEnd::Timeout) => {}
            other => panic!("expected nothing for {quiet:?}, got {other:?}"),
        }
    }

    /// Read (discarding data) until the server's close frame; return its code.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(f) if f.opcode == OP_CLOSE => return f.close_code(),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e:?}"),
            }
        }
    }

    /// Read until the connection ends; return how (close frame, EOF, reset, timeout).
    pub fn wait_end(&mut self, timeout: Duration) -> WsEnd {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(f) if f.opcode == OP_CLOSE => {
                    return WsEnd::Close(f.close_code(), String::new());
                }
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    }

    /// After a close, the server must close TCP: expect EOF (or reset) within `timeout`.
    pub fn expect_tcp_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(()) => continue,
                Err(WsEnd::Eof) | Err(WsEnd::Reset) => return,
                Err(e) => panic!("expected the server to close TCP, got {e:?}"),
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift; any key works, it just must not be all zero every time.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_be_bytes()
    }

    /// Send one frame with any flags. `masked: false` sends a (forbidden) unmasked frame.
    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> io::Result<()> {
        let mask = self.next_mask();
        let bytes = encode_frame(fin, rsv, opcode, payload, masked.then_some(mask));
        self.stream.write_all(&bytes)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_text(&mut self, s: &str) -> io::Result<()> {
        self.send_frame(true, 0, OP_TEXT, s.as_bytes(), true)
    }

    pub fn send_binary(&mut self, b: &[u8]) -> io::Result<()> {
        self.send_frame(true, 0, OP_BINARY, b, true)
    }

    pub fn send_ping(&mut self, b: &[u8]) -> io::Result<()> {
        self.send_frame(true, 0, OP_PING, b, true)
    }

    pub fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.send_frame(true, 0, OP_CLOSE, &p, true)
    }

    /// Send a message deflated per RFC 7692 (RSV1, no context takeover).
    pub fn send_compressed(&mut self, opcode: u8, data: &[u8]) -> io::Result<()> {
        let z = deflate_raw(data);
        self.send_frame(true, RSV1, opcode, &z, true)
    }
}

pub(crate) fn finish_message(mut m: Message) -> Message {
    if m.compressed {
        m.data = inflate_raw(&m.data);
    }
    m
}

// Our own encoder, not tungstenite's (crier parses with its FrameHeader): it checks the wire
// independently.
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

// ---------------------------------------------------------------------------------------
// permessage-deflate helpers (RFC 7692 section 7.2).
// ---------------------------------------------------------------------------------------

/// Inflate one message payload: append 00 00 ff ff and raw-inflate with a fresh context
/// (the server promises server_no_context_takeover, so a fresh context must always work).
pub fn inflate_raw(data: &[u8]) -> Vec<u8> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut input = data.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4 + 1024);
    loop {
        if out.capacity() - out.len() < 32 * 1024 {
            out.reserve(64 * 1024);
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let st = d
            .decompress_vec(&input[in0 as usize..], &mut out, FlushDecompress::Sync)
            .unwrap_or_else(|e| panic!("server's deflated payload does not inflate: {e}"));
        if st == Status::StreamEnd {
            break;
        }
        let consumed_all = d.total_in() as usize == input.len();
        let room_left = out.capacity() > out.len();
        if consumed_all && room_left {
            break;
        }
        if d.total_in() == in0 && d.total_out() == out0 && room_left {
            panic!("inflate made no progress on the server's payload");
        }
    }
    out
}

/// Deflate a message as a client would (sync flush, trailing 00 00 ff ff removed).
pub fn deflate_raw(data: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.flush().unwrap();
    let mut v = e.get_ref().clone();
    assert!(v.ends_with(&[0, 0, 0xff, 0xff]), "sync flush marker missing");
    v.truncate(v.len() - 4);
    v
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A compressible JSON-ish text payload of about `n` bytes.
pub fn compressible_text(n: usize) -> String {
    let mut s = String::with_capacity(n + 64);
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("{{\"flight\":\"BA{:03}\",\"gate\":\"B32\",\"status\":\"boarding\"}},", i % 7));
        i += 1;
    }
    s.truncate(n);
    s
}

// ---------------------------------------------------------------------------------------
// tungstenite as a second, independent client.
// ---------------------------------------------------------------------------------------

pub fn tung_connect(addr: SocketAddr, target: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}{target}");
    let (ws, resp) =
        tungstenite::client(url.as_str(), stream).unwrap_or_else(|e| panic!("tungstenite handshake with {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Next data message from a tungstenite client (pings and pongs are skipped).
pub fn tung_recv(ws: &mut tungstenite::WebSocket<TcpStream>) -> tungstenite::Message {
    loop {
        match ws.read() {
            Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => return m,
            Ok(tungstenite::Message::Close(c)) => panic!("tungstenite: server closed: {c:?}"),
            Ok(_) => continue,
            Err(e) => panic!("tungstenite read: {e}"),
        }
    }
}

pub fn tung_recv_text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    match tung_recv(ws) {
        tungstenite::Message::Text(t) => t.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

impl WsClient {
    /// The socket and the bytes already read past the upgrade response (frames the server
    /// sent right after its 101), for tests that parse frames themselves.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

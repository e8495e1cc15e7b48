//! One WebSocket connection: its handshake, its read loop, its close.
//!
//! A connection costs one task while idle (the read loop, parked on a readiness poll, with
//! no read buffer of its own: bytes land in the shard's scratch buffer) and a second task
//! only while its outbound queue is blocked on a full socket. All state lives in [`Conn`],
//! owned by the shard's table; nothing here takes a lock or blocks.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use monoio::net::TcpStream;

use crate::channel::ChannelName;
use crate::fanout::{Membership, Subscriber};
use crate::frame::{self, Event, FrameReader, MessageKind, ReaderLimits, Violation, close_code};
use crate::handshake::{self, HandshakeError, MAX_HEAD_BYTES};
use crate::metrics::{CloseReason, RefuseReason};
use crate::outbound::OutboundQueue;
use crate::shard::Shard;
use crate::sockio::{recv, recv_some, send_all};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// A close frame is queued or sent; `since` is the shard clock (ms).
    Closing {
        since: u64,
        reason: CloseReason,
        hard: bool,
    },
}

/// A WebSocket connection, shared (`Rc`) by the shard's tables, its read loop and, while
/// blocked, its writer task.
pub struct Conn {
    pub stream: TcpStream,
    pub fd: RawFd,
    pub deflate: bool,
    /// Negotiated `crier.v1`: messages come in envelopes, gaps and resets are announced.
    pub envelope: bool,
    /// (channel, seq): live messages up to seq are skipped; the client already has them.
    pub skip: RefCell<Vec<(ChannelName, u64)>>,
    /// Where the connection sits in the shard's subscriber tables.
    pub membership: RefCell<Membership>,
    pub out: RefCell<OutboundQueue>,
    pub reader: RefCell<FrameReader>,
    /// Shard clock (ms) of the last byte received, and of the last ping sent.
    pub last_seen: Cell<u64>,
    pub last_ping: Cell<u64>,
    pub state: Cell<State>,
    pub writer_active: Cell<bool>,
    /// Queued in the shard's list of connections to flush.
    pub dirty: Cell<bool>,
}

impl Conn {
    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    /// Shuts the socket down both ways: the read loop wakes and ends, a writer task errors
    /// out, and the fd is closed when the last `Rc` goes.
    pub fn abort(&self) {
        // SAFETY: fd is owned by self.stream and still open.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }

    /// Called when the outbound queue has drained while closing: our close frame is out.
    pub fn close_frame_sent(&self) {
        if let State::Closing { hard, .. } = self.state.get() {
            let how = if hard { libc::SHUT_RDWR } else { libc::SHUT_WR };
            // SAFETY: as in abort.
            unsafe { libc::shutdown(self.fd, how) };
        }
    }
}

impl Subscriber for Conn {
    fn outbound(&self) -> &RefCell<OutboundQueue> {
        &self.out
    }
    fn wants_deflate(&self) -> bool {
        self.deflate
    }
    fn wants_envelope(&self) -> bool {
        self.envelope
    }
    fn accepts(&self, channel: &ChannelName, seq: u64) -> bool {
        let mut skip = self.skip.borrow_mut();
        if skip.is_empty() {
            return true;
        }
        if let Some(i) = skip.iter().position(|(c, _)| c == channel) {
            if seq <= skip[i].1 {
                return false;
            }
            skip.swap_remove(i);
        }
        true
    }
    fn is_open(&self) -> bool {
        Conn::is_open(self)
    }
    fn dirty_flag(&self) -> &Cell<bool> {
        &self.dirty
    }
}

enum HeadError {
    /// The peer went away or the socket failed: nothing to answer.
    Gone,
    Refused(HandshakeError),
}

/// Reads a request head; returns the upgrade and any bytes the client sent after it.
async fn read_head(shard: &Shard, stream: &TcpStream) -> Result<(handshake::Upgrade, Vec<u8>), HeadError> {
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_HEAD_BYTES + 1), 0);
        }
        match recv_some(stream, &mut buf[len..]).await {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => len += n,
        }
        match handshake::parse_request(&buf[..len], &shard.handshake) {
            Ok(Some((up, used))) => return Ok((up, buf[used..len].to_vec())),
            Ok(None) => {}
            Err(e) => return Err(HeadError::Refused(e)),
        }
    }
}

fn refuse_reason(e: &HandshakeError) -> Option<RefuseReason> {
    Some(match e {
        HandshakeError::NotFound => RefuseReason::NotFound,
        HandshakeError::MethodNotAllowed => RefuseReason::MethodNotAllowed,
        HandshakeError::UpgradeRequired | HandshakeError::BadVersion => RefuseReason::UpgradeRequired,
        HandshakeError::BadRequest(_) => RefuseReason::BadRequest,
        HandshakeError::HeadTooLarge => RefuseReason::HeaderTooLarge,
        HandshakeError::OverCapacity => RefuseReason::OverCapacity,
        HandshakeError::Draining => RefuseReason::Draining,
        HandshakeError::ClientScript => return None,
    })
}

/// Serves one accepted TCP connection: the upgrade, then (in a new, smaller task) the
/// WebSocket read loop.
pub async fn accept(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let timeout = shard.cfg.handshake_timeout;
    let head = match monoio::time::timeout(timeout, read_head(&shard, &stream)).await {
        Err(_) => return shard.refused(RefuseReason::HandshakeTimeout),
        Ok(Err(HeadError::Gone)) => return,
        Ok(Err(HeadError::Refused(e))) => return refuse(&shard, &stream, e).await,
        Ok(Ok(head)) => head,
    };
    let (upgrade, leftover) = head;
    if shard.draining.get() {
        return refuse(&shard, &stream, HandshakeError::Draining).await;
    }
    let metrics = &shard.metrics;
    if metrics.open_connections.fetch_add(1, Relaxed) >= shard.cfg.max_connections {
        metrics.open_connections.fetch_sub(1, Relaxed);
        return refuse(&shard, &stream, HandshakeError::OverCapacity).await;
    }
    let response = handshake::response_101(&upgrade);
    match monoio::time::timeout(timeout, send_all(&stream, &response)).await {
        Ok(Ok(())) => {}
        _ => {
            metrics.open_connections.fetch_sub(1, Relaxed);
            return;
        }
    }
    let now = shard.now_ms();
    let fd = stream.as_raw_fd();
    let conn = Rc::new(Conn {
        stream,
        fd,
        deflate: upgrade.deflate,
        envelope: upgrade.envelope,
        skip: RefCell::new(Vec::new()),
        membership: RefCell::new(Membership::default()),
        out: RefCell::new(OutboundQueue::default()),
        reader: RefCell::new(FrameReader::default()),
        last_seen: Cell::new(now),
        last_ping: Cell::new(now),
        state: Cell::new(State::Open),
        writer_active: Cell::new(false),
        dirty: Cell::new(false),
    });
    shard.register(&conn, upgrade).await; // awaits only for a cluster-mode resume from Redis
    if !leftover.is_empty() {
        // The client sent frames right behind its request head.
        let mut leftover = leftover;
        process(&shard, &conn, &mut leftover);
    }
    // A replay (since=/last=) goes out now, not with the next broadcast or sweep.
    shard.flush_dirty();
    monoio::spawn(read_loop(shard, conn));
}

async fn refuse(shard: &Shard, stream: &TcpStream, e: HandshakeError) {
    if let Some(reason) = refuse_reason(&e) {
        shard.refused(reason);
    }
    let response = e.response();
    let _ = monoio::time::timeout(shard.cfg.handshake_timeout, send_all(stream, &response)).await;
}

/// The connection's one long-lived task: wait for readability, read into the shard's
/// scratch buffer, act on what arrived. Ends when the socket closes.
async fn read_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    let reason = loop {
        if conn.stream.readable(false).await.is_err() {
            break CloseReason::IoError;
        }
        let result = {
            let mut scratch = shard.scratch.borrow_mut();
            match recv(conn.fd, &mut scratch) {
                Ok(0) => Err(None),
                Ok(n) => {
                    conn.last_seen.set(shard.now_ms());
                    process(&shard, &conn, &mut scratch[..n]);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(_) => Err(Some(CloseReason::IoError)),
            }
        };
        match result {
            Ok(()) => shard.flush_dirty(),
            Err(reason) => {
                break match conn.state.get() {
                    State::Closing { reason, .. } => reason,
                    State::Open => reason.unwrap_or(CloseReason::Client),
                };
            }
        }
    };
    shard.remove(&conn, reason);
}

/// Acts on bytes received: answers pings, checks messages, starts a close when needed.
fn process(shard: &Shard, conn: &Rc<Conn>, data: &mut [u8]) {
    let limits = ReaderLimits { max_message: shard.cfg.max_client_message_bytes, deflate: conn.deflate };
    let mut violation: Option<Violation> = None;
    let mut peer_closed: Option<u16> = None;
    let result = conn.reader.borrow_mut().feed(data, limits, &mut |event| match event {
        Event::Ping(payload) => {
            if conn.is_open() {
                shard.enqueue_control(conn, frame::encode_pong(payload).bytes().clone());
            }
            true
        }
        Event::Pong => true,
        Event::Close(code) => {
            peer_closed = Some(code.map_or(close_code::NORMAL, |(c, _)| c));
            false
        }
        Event::Message { kind, compressed, payload } => {
            shard.stats().client_messages.fetch_add(1, Relaxed);
            match check_message(shard, kind, compressed, payload) {
                Ok(()) => true,
                Err(v) => {
                    violation = Some(v);
                    false
                }
            }
        }
    });
    if let Some(v) = result.err().or(violation) {
        shard.close(conn, v.code, v.reason, reason_for(v.code), true);
        return;
    }
    if let Some(code) = peer_closed {
        match conn.state.get() {
            // §5.5.1: answer a close with a close (echoing the code), then close TCP.
            // `FrameReader` has already refused codes a peer may not send.
            State::Open => shard.close(conn, code, "", CloseReason::Client, false),
            // The reply to our own close: we are done.
            State::Closing { .. } => conn.abort(),
        }
    }
}

/// Inflates (if compressed) and checks a client's data message; the content is discarded.
fn check_message(shard: &Shard, kind: MessageKind, compressed: bool, payload: &[u8]) -> Result<(), Violation> {
    let cap = shard.cfg.max_client_message_bytes;
    let mut inflater = shard.inflater.borrow_mut();
    let data = if compressed {
        inflater.inflate(payload, cap).map_err(|e| match e {
            crate::deflate::InflateError::TooBig => {
                Violation { code: close_code::MESSAGE_TOO_BIG, reason: "message too big after inflating" }
            }
            crate::deflate::InflateError::Corrupt => {
                Violation { code: close_code::INVALID_PAYLOAD, reason: "message is not valid DEFLATE data" }
            }
        })?
    } else {
        payload
    };
    if kind == MessageKind::Text && std::str::from_utf8(data).is_err() {
        return Err(Violation { code: close_code::INVALID_PAYLOAD, reason: "text message is not valid UTF-8" });
    }
    Ok(())
}

fn reason_for(code: u16) -> CloseReason {
    match code {
        close_code::INVALID_PAYLOAD => CloseReason::InvalidUtf8,
        close_code::MESSAGE_TOO_BIG => CloseReason::MessageTooBig,
        _ => CloseReason::ProtocolError,
    }
}

/// The writer task, alive only while the connection's queue waits on a full socket.
pub async fn writer(shard: Rc<Shard>, conn: Rc<Conn>) {
    loop {
        if conn.stream.writable(false).await.is_err() {
            conn.abort();
            break;
        }
        if !shard.flush_conn(&conn) {
            break;
        }
    }
    conn.writer_active.set(false);
}

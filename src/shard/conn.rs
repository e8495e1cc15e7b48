//! One WebSocket connection: its handshake, its read loop, its close; and the fast 503 for
//! a client that finds the server full.
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
use crate::ops::capacity::{REFUSAL_LINGER, REFUSALS_PER_SHARD, Slot};
use crate::ops::metrics::{CloseReason, RefuseReason};
use crate::shard::Shard;
use crate::shard::fanout::{Membership, Subscriber};
use crate::shard::outbound::OutboundQueue;
use crate::shard::sockio::{recv, recv_some, send_all, send_now};
use crate::ws::frame::{MessageKind, close_code};
use crate::ws::handshake::{self, HandshakeError, MAX_HEAD_BYTES};
use crate::ws::reader::{Event, FrameReader, ReaderLimits, Violation};

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
    /// Shut down both ways: the read loop stops at once, even while the peer keeps sending
    /// (on Linux a socket shut down for reading still returns data that keeps arriving).
    pub aborted: Cell<bool>,
    /// This socket's share of the connection limit, given back when the last `Rc` goes and
    /// the descriptor closes (after `stream`, which is dropped first).
    pub slot: Slot,
}

impl Conn {
    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    /// Shuts the socket down both ways: the read loop wakes and ends, a writer task errors
    /// out, and the fd is closed when the last `Rc` goes.
    pub fn abort(&self) {
        self.aborted.set(true);
        // SAFETY: fd is owned by self.stream and still open.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }

    /// Called when the outbound queue has drained while closing: our close frame is out.
    pub fn close_frame_sent(&self) {
        match self.state.get() {
            State::Closing { hard: true, .. } => self.abort(),
            // SAFETY: as in abort.
            State::Closing { hard: false, .. } => unsafe {
                libc::shutdown(self.fd, libc::SHUT_WR);
            },
            State::Open => {}
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
/// WebSocket read loop. `slot` was taken when the socket was accepted: a client still
/// sending its request head holds a descriptor, so it counts against the limit already.
pub async fn accept(shard: Rc<Shard>, stream: TcpStream, slot: Slot) {
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
    metrics.open_connections.fetch_add(1, Relaxed);
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
        aborted: Cell::new(false),
        slot,
    });
    shard.register(&conn, upgrade);
    if !leftover.is_empty() {
        // The client sent frames right behind its request head.
        let mut leftover = leftover;
        process(&shard, &conn, &mut leftover);
    }
    // A replay (since=/last=) goes out now, not with the next broadcast or sweep.
    shard.flush_dirty();
    monoio::spawn(read_loop(shard, conn));
}

/// Answers a client that arrived while every slot is taken (see `capacity`): a 503 with
/// `Retry-After` (RFC 9110 §15.6.4, §10.2.3) written at once, without waiting for its
/// request head, so a full server answers fast instead of leaving clients in the backlog.
/// Then the write side is shut and the socket kept open for up to [`REFUSAL_LINGER`],
/// discarding what the client sends, so that closing it does not send a reset that could
/// destroy the 503 before the client reads it. At most [`REFUSALS_PER_SHARD`] refusals
/// linger at once (`in_flight`); past that the socket is closed straight after the write.
pub fn refuse_full(shard: &Shard, stream: TcpStream, in_flight: &Rc<Cell<usize>>) {
    shard.refused(RefuseReason::OverCapacity);
    // A fresh socket's send buffer takes the ~150 bytes whole.
    let _ = send_now(stream.as_raw_fd(), &HandshakeError::OverCapacity.response());
    // SAFETY: the fd is owned by `stream`, which is still open.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if in_flight.get() >= REFUSALS_PER_SHARD {
        return;
    }
    in_flight.set(in_flight.get() + 1);
    let in_flight = in_flight.clone();
    monoio::spawn(async move {
        let _ = monoio::time::timeout(REFUSAL_LINGER, async {
            let mut sink = [0u8; 512];
            while let Ok(n) = recv_some(&stream, &mut sink).await
                && n > 0
            {}
        })
        .await;
        drop(stream);
        in_flight.set(in_flight.get() - 1);
    });
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
        if conn.aborted.get() {
            // Cut off: what the peer still sends is not read (a client flooding us after a
            // 1008 would otherwise keep this loop, and its socket, alive).
            break match conn.state.get() {
                State::Closing { reason, .. } => reason,
                State::Open => CloseReason::IoError,
            };
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
    // RFC 6455 §5.5.3: only the most recent ping needs its pong. Of the pings in this read,
    // only the last is answered (one pong, one allocation, however many pings came); every
    // pong asked for counts against --max-queue-bytes until the client has taken as much.
    let mut ping = PingPayload::default();
    let mut asked = 0usize;
    let result = conn.reader.borrow_mut().feed(data, limits, &mut |event| match event {
        Event::Ping(payload) => {
            ping.replace(payload);
            asked += pong_len(payload.len());
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
        shard.close(conn, v.code, v.reason, v.close_reason, true);
        return;
    }
    // Before a close reply below: the pong answers a ping that came before the close.
    if let Some(payload) = ping.get()
        && conn.is_open()
    {
        shard.enqueue_pong(conn, payload, asked);
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

/// The payload of the latest ping of one read, kept on the stack (a control frame's payload
/// is at most 125 bytes, RFC 6455 §5.5; `FrameReader` refuses longer ones).
struct PingPayload {
    len: Option<usize>,
    buf: [u8; 125],
}

impl Default for PingPayload {
    fn default() -> Self {
        Self { len: None, buf: [0; 125] }
    }
}

impl PingPayload {
    /// Keeps `payload` in place of the previous one (cut to 125 bytes, which the reader
    /// already guarantees).
    fn replace(&mut self, payload: &[u8]) {
        let n = payload.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&payload[..n]);
        self.len = Some(n);
    }

    fn get(&self) -> Option<&[u8]> {
        self.len.map(|n| &self.buf[..n])
    }
}

/// Bytes of the pong answering a ping with `payload` bytes of payload (≤ 125: a 2-byte
/// header, and a server does not mask).
fn pong_len(payload: usize) -> usize {
    2 + payload
}

/// Inflates (if compressed) and checks a client's data message; the content is discarded.
fn check_message(shard: &Shard, kind: MessageKind, compressed: bool, payload: &[u8]) -> Result<(), Violation> {
    let cap = shard.cfg.max_client_message_bytes;
    let mut inflater = shard.inflater.borrow_mut();
    let data = if compressed {
        inflater.inflate(payload, cap).map_err(|e| match e {
            crate::ws::deflate::InflateError::TooBig => Violation::too_big("message too big after inflating"),
            crate::ws::deflate::InflateError::Corrupt => {
                Violation::bad_compression("message is not valid DEFLATE data")
            }
        })?
    } else {
        payload
    };
    if kind == MessageKind::Text && std::str::from_utf8(data).is_err() {
        return Err(Violation::invalid_utf8("text message is not valid UTF-8"));
    }
    Ok(())
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

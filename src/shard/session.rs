//! A connection's session: the PROXY header (with `--proxy-protocol`), the upgrade (reading
//! the request head, the 101 or a refusal), the read loop that acts on what the client
//! sends, and the fast answers at accept: 503 for a client that finds the server full, 429
//! for one whose address is past a per-address limit.
//!
//! A connection costs one task while idle (the read loop, parked on a readiness poll, with
//! no read buffer of its own: bytes land in the shard's scratch buffer). Nothing here blocks;
//! the one lock is a stripe of the per-address table, held for one lookup when a connection
//! is admitted (and, in `peer::limits`, when it closes).

use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use monoio::net::{TcpListener, TcpStream};

use super::Shard;
use super::conn::{Conn, State};
use super::outbound::MAX_PONGS;
use super::sockio::{recv, recv_some, send_all, send_now};
use crate::ops::capacity::{AcceptErrors, REFUSAL_LINGER, REFUSALS_PER_SHARD, Slot};
use crate::ops::metrics::{CloseReason, RefuseReason};
use crate::peer::limits::Refusal;
use crate::peer::proxy;
use crate::ws::frame::{MessageKind, close_code};
use crate::ws::handshake::{self, HandshakeError, MAX_HEAD_BYTES};
use crate::ws::reader::{Event, ReaderLimits, Violation};

/// Accepts WebSocket clients. Each socket takes a slot of the connection limit first (a
/// client in its handshake holds a descriptor too); one that finds none is answered 503 at
/// once, so a full server never leaves clients hanging in the backlog, and never lets the
/// WebSocket side eat the descriptors reserved for publishers and the admin port. A client
/// that is not behind a trusted proxy is then counted under its address (`peer::limits`),
/// and past a per-address limit answered 429 at once, the same way; a trusted proxy's
/// client is counted once its PROXY header or request names it (in [`accept`]).
pub(super) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut errors = AcceptErrors::default();
    let refusing = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match Slot::try_acquire(&shard.peers) {
                Some(mut slot) => {
                    let peer = peer.ip();
                    let via_proxy = shard.cfg.peer.trusted.contains(peer);
                    match if via_proxy { Ok(()) } else { admit(&shard, peer, &mut slot) } {
                        Ok(()) => {
                            monoio::spawn(accept(shard.clone(), stream, slot, peer, via_proxy));
                        }
                        Err(e) => {
                            drop(slot);
                            refuse_at_once(&shard, stream, &refusing, e);
                        }
                    }
                }
                None => refuse_at_once(&shard, stream, &refusing, HandshakeError::OverCapacity),
            },
            Err(e) => {
                if shard.draining.get() || e.raw_os_error() == Some(libc::EINVAL) {
                    break; // the listener was shut down for draining
                }
                errors.handle(&format!("shard {}", shard.id), &e).await;
            }
        }
    }
}

/// Counts the connection under its client's address `ip` in the table every shard shares,
/// or says which per-address limit it is past. Nothing to do with both limits off.
fn admit(shard: &Shard, ip: IpAddr, slot: &mut Slot) -> Result<(), HandshakeError> {
    if !shard.cfg.peer.limited() {
        return Ok(());
    }
    match shard.peers.admit(ip) {
        Ok(count) => {
            slot.hold_peer(count);
            Ok(())
        }
        Err(r) => {
            tracing::debug!(client = %ip, "upgrade refused: {r:?} over the per-address limit");
            Err(match r {
                Refusal::Connections => HandshakeError::AddressConnections,
                Refusal::Rate => HandshakeError::AddressRate,
            })
        }
    }
}

enum HeadError {
    /// The peer went away or the socket failed: nothing to answer.
    Gone,
    Refused(HandshakeError),
    /// A PROXY header that is malformed or from an untrusted peer: closed without an answer.
    Proxy(RefuseReason, String),
}

/// With `--proxy-protocol`: reads until the first bytes are known to be a PROXY header or
/// not. Returns what they are and every byte read (the header included).
async fn read_proxy(stream: &TcpStream) -> Result<(proxy::Parsed, Vec<u8>), HeadError> {
    let mut buf = vec![0u8; proxy::MAX_HEADER_BYTES];
    let mut len = 0;
    loop {
        match recv_some(stream, &mut buf[len..]).await {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => len += n,
        }
        match proxy::parse(&buf[..len]) {
            proxy::Parsed::Incomplete if len < buf.len() => {}
            proxy::Parsed::Incomplete => {
                return Err(HeadError::Proxy(RefuseReason::ProxyHeaderInvalid, "PROXY header too long".into()));
            }
            parsed => {
                buf.truncate(len);
                return Ok((parsed, buf));
            }
        }
    }
}

/// The address the connection comes from once a PROXY header (if any) is read, and the
/// bytes read after it.
async fn read_source(
    shard: &Shard,
    stream: &TcpStream,
    peer: IpAddr,
    trusted: bool,
) -> Result<(IpAddr, Vec<u8>), HeadError> {
    if !shard.cfg.peer.proxy_protocol {
        return Ok((peer, Vec::new()));
    }
    match read_proxy(stream).await? {
        (proxy::Parsed::Header { .. }, _) if !trusted => Err(HeadError::Proxy(
            RefuseReason::ProxyHeaderUntrusted,
            "PROXY header from a peer not in --trusted-proxies".into(),
        )),
        (proxy::Parsed::Header { source, used }, mut buf) => {
            buf.drain(..used);
            Ok((source.unwrap_or(peer), buf))
        }
        (proxy::Parsed::Invalid(why), _) => Err(HeadError::Proxy(RefuseReason::ProxyHeaderInvalid, why)),
        (_, buf) => Ok((peer, buf)),
    }
}

/// Reads a request head after the bytes `buf` already holds; returns the upgrade and any
/// bytes the client sent after it.
async fn read_head(
    shard: &Shard,
    stream: &TcpStream,
    mut buf: Vec<u8>,
) -> Result<(handshake::Upgrade, Vec<u8>), HeadError> {
    let mut len = buf.len();
    buf.resize(len.max(1024), 0);
    loop {
        if len > 0 {
            match handshake::parse_request(&buf[..len], &shard.handshake) {
                Ok(Some((up, used))) => return Ok((up, buf[used..len].to_vec())),
                Ok(None) => {}
                Err(HandshakeError::BadRequest(_)) if proxy::parse(&buf[..len]) != proxy::Parsed::NotProxy => {
                    let why = "this is a PROXY protocol header, and crier runs without --proxy-protocol";
                    return Err(HeadError::Refused(HandshakeError::BadRequest(why.into())));
                }
                Err(e) => return Err(HeadError::Refused(e)),
            }
        }
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_HEAD_BYTES + 1), 0);
        }
        match recv_some(stream, &mut buf[len..]).await {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => len += n,
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
        HandshakeError::AddressConnections => RefuseReason::IpConnections,
        HandshakeError::AddressRate => RefuseReason::IpHandshakeRate,
        HandshakeError::RedisUnavailable => RefuseReason::RedisUnavailable,
        HandshakeError::ClientScript => return None,
    })
}

/// Serves one accepted TCP connection: the PROXY header (with `--proxy-protocol`), the
/// upgrade, then (in a new, smaller task) the WebSocket read loop. `slot` was taken when
/// the socket was accepted: a client still sending its request head holds a descriptor, so
/// it counts against the limit already. `via_proxy`: the peer is a trusted proxy, so the
/// client's address (and its per-address count) comes from the PROXY header or the request.
pub async fn accept(shard: Rc<Shard>, stream: TcpStream, mut slot: Slot, peer: IpAddr, via_proxy: bool) {
    let _ = stream.set_nodelay(true);
    let timeout = shard.cfg.handshake_timeout;
    let read = async {
        let (source, buf) = read_source(&shard, &stream, peer, via_proxy).await?;
        Ok((source, read_head(&shard, &stream, buf).await?))
    };
    let (source, head) = match monoio::time::timeout(timeout, read).await {
        Err(_) => return shard.refused(RefuseReason::HandshakeTimeout),
        Ok(Err(HeadError::Gone)) => return,
        Ok(Err(HeadError::Refused(e))) => return refuse(&shard, &stream, e).await,
        Ok(Err(HeadError::Proxy(reason, why))) => {
            tracing::debug!(peer = %peer, "connection closed: {why}");
            return shard.refused(reason);
        }
        Ok(Ok(read)) => read,
    };
    let (mut upgrade, leftover) = head;
    if shard.draining.get() {
        return refuse(&shard, &stream, HandshakeError::Draining).await;
    }
    // Behind trusted proxies the client is the one they name; anyone else's headers are
    // not believed.
    let client = if shard.cfg.peer.trusted.contains(source) { upgrade.forwarded_for.unwrap_or(source) } else { source };
    if via_proxy && let Err(e) = admit(&shard, client, &mut slot) {
        return refuse(&shard, &stream, e).await;
    }
    // Access control, the one call: origin, token, channels (`crate::access`).
    let credentials = std::mem::take(&mut upgrade.credentials);
    let grant = match shard.access.admit(&credentials, &upgrade.channels, crate::access::unix_now()) {
        Ok(grant) => grant,
        Err(refusal) => return send_refusal(&shard, &stream, Some(refusal.reason()), &refusal.response()).await,
    };
    drop(credentials);
    // Redis Cluster: the node is SSUBSCRIBEd to every channel before the 101 (see
    // shard/interest.rs), so nothing published after the client's 101 passes it by.
    if !shard.join_channels(&upgrade.channels, timeout).await {
        return refuse(&shard, &stream, HandshakeError::RedisUnavailable).await;
    }
    // Cluster mode: a resume this shard's history cannot satisfy reads the stream now,
    // before the 101, so that a Redis out of reach is a 503 to retry, not a false reset.
    let remote = match monoio::time::timeout(timeout, shard.fetch_for_resume(&upgrade)).await {
        Ok(Ok(remote)) => remote,
        _ => {
            shard.leave_channels(upgrade.channels.iter());
            return refuse(&shard, &stream, HandshakeError::RedisUnavailable).await;
        }
    };
    let metrics = &shard.metrics;
    metrics.open_connections.fetch_add(1, Relaxed);
    let response = handshake::response_101(&upgrade);
    match monoio::time::timeout(timeout, send_all(&stream, &response)).await {
        Ok(Ok(())) => {}
        _ => {
            metrics.open_connections.fetch_sub(1, Relaxed);
            shard.leave_channels(upgrade.channels.iter());
            return;
        }
    }
    tracing::debug!(client = %client, peer = %peer, "upgraded");
    let conn = Rc::new(Conn::new(stream, upgrade.deflate, upgrade.envelope, shard.now_ms(), slot, grant));
    shard.register(&conn, upgrade, remote);
    if !leftover.is_empty() {
        // The client sent frames right behind its request head.
        let mut leftover = leftover;
        process(&shard, &conn, &mut leftover);
    }
    // A replay (since=/last=) goes out now, not with the next broadcast or sweep.
    shard.flush_dirty();
    monoio::spawn(read_loop(shard, conn));
}

/// Answers a client at once, without waiting for its request head: a 503 while every slot
/// is taken (see `capacity`), a 429 past a per-address limit, each with `Retry-After` (RFC
/// 9110 §15.6.4, §10.2.3; RFC 6585 §4), so a full server answers fast instead of leaving
/// clients in the backlog. Then the write side is shut and the socket kept open for up to
/// [`REFUSAL_LINGER`], discarding what the client sends, so that closing it does not send a
/// reset that could destroy the answer before the client reads it. At most
/// [`REFUSALS_PER_SHARD`] refusals linger at once (`in_flight`); past that the socket is
/// closed straight after the write.
pub fn refuse_at_once(shard: &Shard, stream: TcpStream, in_flight: &Rc<Cell<usize>>, e: HandshakeError) {
    if let Some(reason) = refuse_reason(&e) {
        shard.refused(reason);
    }
    // A fresh socket's send buffer takes the ~150 bytes whole.
    let _ = send_now(stream.as_raw_fd(), &e.response());
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
    send_refusal(shard, stream, refuse_reason(&e), &e.response()).await;
}

/// Counts a refusal (if it is one) and writes its response.
async fn send_refusal(shard: &Shard, stream: &TcpStream, reason: Option<RefuseReason>, response: &[u8]) {
    if let Some(reason) = reason {
        shard.refused(reason);
    }
    let _ = monoio::time::timeout(shard.cfg.handshake_timeout, send_all(stream, response)).await;
}

/// The connection's one long-lived task: wait for readability, read into the shard's
/// scratch buffer, act on what arrived. Ends when the socket closes.
async fn read_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    let reason = loop {
        if conn.stream().readable(false).await.is_err() {
            break CloseReason::IoError;
        }
        if conn.aborted() {
            // Cut off: what the peer still sends is not read (a client flooding us after a
            // 1008 would otherwise keep this loop, and its socket, alive).
            break match conn.state() {
                State::Closing { reason, .. } => reason,
                State::Open => CloseReason::IoError,
            };
        }
        let result = {
            let mut scratch = shard.scratch.borrow_mut();
            match recv(conn.fd(), &mut scratch) {
                Ok(0) => Err(None),
                Ok(n) => {
                    conn.seen(shard.now_ms());
                    process(&shard, &conn, &mut scratch[..n]);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(_) => Err(Some(CloseReason::IoError)),
            }
        };
        match result {
            Ok(()) => shard.flush_after_read(&conn),
            Err(reason) => {
                break match conn.state() {
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
    let limits = ReaderLimits { max_message: shard.cfg.max_client_message_bytes, deflate: conn.deflate() };
    let mut violation: Option<Violation> = None;
    let mut peer_closed: Option<u16> = None;
    // RFC 6455 §5.5.3: only the most recent ping needs its pong. The first MAX_PONGS pings
    // of a read are answered as they come (in order with what else is queued, e.g. echoes);
    // of the rest only the last is, at the end (one pong, one allocation, however many came).
    // Every pong asked for counts against --max-queue-bytes until the client has taken as
    // much; the queue itself holds at most MAX_PONGS.
    let mut ping = PingPayload::default();
    let mut asked = 0usize;
    let mut answered = 0u8;
    let result = conn.reader().borrow_mut().feed(data, limits, &mut |event| match event {
        Event::Ping(payload) => {
            if answered < MAX_PONGS && conn.is_open() {
                shard.enqueue_pong(conn, payload, pong_len(payload.len()));
                answered += 1;
            } else {
                ping.replace(payload);
                asked += pong_len(payload.len());
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
            // `--echo`: the checked message goes back to its sender.
            let echo = shard.cfg.echo && conn.is_open();
            match check_message(shard, kind, compressed, payload, |data| {
                if echo {
                    shard.echo(conn, kind, data)
                }
            }) {
                Ok(()) => true,
                Err(v) => {
                    violation = Some(v);
                    false
                }
            }
        }
    });
    if let Some(v) = result.err().or(violation) {
        // What was answered before the violation (pongs, `--echo` replies) goes out first, as
        // far as the socket takes it now; the close then discards only what is left.
        if conn.is_open() && !conn.out().borrow().is_empty() {
            shard.flush_conn(conn);
        }
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
        match conn.state() {
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

/// Inflates (if compressed) and checks a client's data message, then hands the content to
/// `then` (which discards it, except with `--echo`).
fn check_message(
    shard: &Shard,
    kind: MessageKind,
    compressed: bool,
    payload: &[u8],
    then: impl FnOnce(&[u8]),
) -> Result<(), Violation> {
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
    then(data);
    Ok(())
}

//! One WebSocket connection's state, and the transitions it allows.
//!
//! [`Conn`] is owned by the shard's tables and shared (`Rc`) with the connection's read loop
//! and, while its socket is full, its writer task. Its fields are private: the shard and
//! the session change a connection only through the methods here, so a state transition
//! (open → closing, a writer started once, a dirty mark set once) has one definition. This
//! module names no `Shard` and does no IO beyond `shutdown(2)`.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};

use monoio::net::TcpStream;

use crate::access::Grant;
use crate::channel::ChannelName;
use crate::ops::capacity::Slot;
use crate::ops::metrics::CloseReason;
use crate::shard::fanout::{Membership, Subscriber};
use crate::shard::outbound::OutboundQueue;
use crate::ws::reader::FrameReader;

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

/// (channel, epoch, seq): live messages of that epoch up to seq are skipped; the client
/// already has them. The first message past the entry ends it, and so does a message of
/// another epoch (cluster mode: Redis started the channel afresh, so its seqs restart at 1
/// and mean nothing against the old ones). Empty for all but a resuming connection.
#[derive(Debug, Default)]
pub struct SkipList(Vec<(ChannelName, u64, u64)>);

impl SkipList {
    pub fn accepts(&mut self, channel: &ChannelName, seq: u64, epoch: u64) -> bool {
        if self.0.is_empty() {
            return true;
        }
        if let Some(i) = self.0.iter().position(|(c, _, _)| c == channel) {
            let (_, e, until) = self.0[i];
            if epoch == e && seq <= until {
                return false;
            }
            self.0.swap_remove(i);
        }
        true
    }
}

/// A WebSocket connection, shared (`Rc`) by the shard's tables, its read loop and, while
/// blocked, its writer task.
pub struct Conn {
    stream: TcpStream,
    fd: RawFd,
    deflate: bool,
    /// Negotiated `crier.v1`: messages come in envelopes, gaps and resets are announced.
    envelope: bool,
    /// Unix seconds at which the sweep closes the connection (its token's `exp`, see
    /// `access::Grant`); 0: never. Four bytes, in what was padding.
    expires: u32,
    /// Live messages the client already has (it resumed past them).
    skip: RefCell<SkipList>,
    /// Where the connection sits in the shard's subscriber tables.
    membership: RefCell<Membership>,
    out: RefCell<OutboundQueue>,
    reader: RefCell<FrameReader>,
    /// Shard clock (ms) of the last byte received, and of the last ping sent.
    last_seen: Cell<u64>,
    last_ping: Cell<u64>,
    state: Cell<State>,
    writer_active: Cell<bool>,
    /// Queued in the shard's list of connections to flush.
    dirty: Cell<bool>,
    /// Shut down both ways: the read loop stops at once, even while the peer keeps sending
    /// (on Linux a socket shut down for reading still returns data that keeps arriving).
    aborted: Cell<bool>,
    /// This socket's share of the connection limit, given back when the last `Rc` goes and
    /// the descriptor closes (after `stream`, which is dropped first).
    _slot: Slot,
}

impl Conn {
    /// A connection that has just completed its upgrade, at shard clock `now` (ms).
    pub fn new(stream: TcpStream, deflate: bool, envelope: bool, now: u64, slot: Slot, grant: Grant) -> Self {
        let fd = stream.as_raw_fd();
        Self {
            stream,
            fd,
            deflate,
            envelope,
            expires: grant.expires,
            skip: RefCell::new(SkipList::default()),
            membership: RefCell::new(Membership::default()),
            out: RefCell::new(OutboundQueue::default()),
            reader: RefCell::new(FrameReader::default()),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
            state: Cell::new(State::Open),
            writer_active: Cell::new(false),
            dirty: Cell::new(false),
            aborted: Cell::new(false),
            _slot: slot,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Negotiated permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// Negotiated the `crier.v1` envelope.
    pub fn envelope(&self) -> bool {
        self.envelope
    }

    /// Its token has expired at Unix time `now` (seconds).
    pub fn expired(&self, now: u32) -> bool {
        self.expires != 0 && now >= self.expires
    }

    pub fn state(&self) -> State {
        self.state.get()
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    /// Open → closing. False (and nothing changes) if the connection is already closing.
    pub fn start_closing(&self, since: u64, reason: CloseReason, hard: bool) -> bool {
        if !self.is_open() {
            return false;
        }
        self.state.set(State::Closing { since, reason, hard });
        true
    }

    /// The outbound queue (its own methods bound and flush it).
    pub fn out(&self) -> &RefCell<OutboundQueue> {
        &self.out
    }

    /// The parser of what the client sends.
    pub fn reader(&self) -> &RefCell<FrameReader> {
        &self.reader
    }

    pub fn set_membership(&self, membership: Membership) {
        *self.membership.borrow_mut() = membership;
    }

    pub fn take_membership(&self) -> Membership {
        std::mem::take(&mut *self.membership.borrow_mut())
    }

    /// Live messages on `channel` of `epoch` up to `seq` are not delivered: the client has
    /// them.
    pub fn skip_until(&self, channel: ChannelName, epoch: u64, seq: u64) {
        self.skip.borrow_mut().0.push((channel, epoch, seq));
    }

    /// Whether a resume already brought this connection to `epoch` on `channel` (its replay
    /// came from Redis under that epoch): it needs no second `reset` for it.
    pub fn resumed_into(&self, channel: &ChannelName, epoch: u64) -> bool {
        self.skip.borrow().0.iter().any(|(c, e, _)| c == channel && *e == epoch)
    }

    /// Bytes arrived at shard clock `now`.
    pub fn seen(&self, now: u64) {
        self.last_seen.set(now);
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.get()
    }

    /// True (and the ping counts as sent now) when nothing was heard or pinged for
    /// `interval` ms.
    pub fn ping_due(&self, now: u64, interval: u64) -> bool {
        let due = now.saturating_sub(self.last_seen.get().max(self.last_ping.get())) >= interval;
        if due {
            self.last_ping.set(now);
        }
        due
    }

    /// Marks the connection as having a writer task; false if it already has one.
    pub fn start_writer(&self) -> bool {
        !self.writer_active.replace(true)
    }

    pub fn writer_done(&self) {
        self.writer_active.set(false);
    }

    pub fn writer_active(&self) -> bool {
        self.writer_active.get()
    }

    /// Marks the connection for the shard's next flush; false if it already was.
    pub fn mark_dirty(&self) -> bool {
        !self.dirty.replace(true)
    }

    pub fn clear_dirty(&self) {
        self.dirty.set(false);
    }

    /// Cut off by [`Conn::abort`]: the read loop stops at its next wake-up.
    pub fn aborted(&self) -> bool {
        self.aborted.get()
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
    fn accepts(&self, channel: &ChannelName, seq: u64, epoch: u64) -> bool {
        self.skip.borrow_mut().accepts(channel, seq, epoch)
    }
    fn is_open(&self) -> bool {
        Conn::is_open(self)
    }
    fn dirty_flag(&self) -> &Cell<bool> {
        &self.dirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_only_what_the_resume_delivered_in_its_epoch() {
        let (a, b) = (ChannelName::parse("a").unwrap(), ChannelName::parse("b").unwrap());
        let mut s = SkipList::default();
        s.0.push((a.clone(), 7, 10));
        assert!(s.accepts(&b, 3, 7), "another channel");
        assert!(!s.accepts(&a, 9, 7) && !s.accepts(&a, 10, 7), "already delivered by the replay");
        assert!(s.accepts(&a, 11, 7), "past it");
        assert!(s.accepts(&a, 5, 7), "and the entry is gone");
        s.0.push((a.clone(), 7, 10));
        assert!(s.accepts(&a, 1, 8), "a new epoch's seq 1 is not the old epoch's");
        assert!(s.accepts(&a, 2, 8), "and it ended the entry");
    }

    /// What a connection costs the shard's heap besides its queue and reader contents: the
    /// `Rc<Conn>` allocation, which must stay in mimalloc's 384-byte size class (the next is
    /// 448). 360 bytes now, 376 with the `Rc` counts: the token expiry sits in padding, the
    /// per-address key costs 8 (the `Slot` holds the table instead of the metrics), the
    /// pong count and the UTF-8 offset of a fragmented message fit in existing padding.
    #[test]
    fn conn_size() {
        let size = std::mem::size_of::<super::Conn>();
        assert_eq!(size, 360);
        assert!(size + 16 <= 384, "Rc<Conn> is {} bytes: past the 384-byte size class", size + 16);
    }
}

//! A connection's bounded outbound queue and the vectored, non-blocking write that drains it.
//!
//! Queue entries are `Rc<OutFrame>`: every subscriber of a broadcast on this shard holds the
//! same `Rc`, whose `Bytes` points at the one buffer the hub built. Queuing a delivery is a
//! non-atomic refcount bump; writing it is part of one `sendmsg` that drains up to
//! [`MAX_IOVECS`] queued frames. The write never blocks: `MSG_DONTWAIT` (accepted sockets
//! are blocking under io_uring) and `MSG_NOSIGNAL` (a vanished peer is an error, not SIGPIPE).
//!
//! The queue also keeps what the bound (`--max-queue-bytes`) is measured on, see
//! [`OutboundQueue::backlog`]: the bytes still to write, plus the pongs the client asked for
//! and has not paid for by taking as many bytes. A queue holds at most [`MAX_PONGS`] pongs;
//! past that a new pong replaces the latest one not yet started on the wire (RFC 6455
//! §5.5.3 lets a later pong answer every earlier ping).
//! Judging a connection is the shard's business, after a write attempt; the queue counts.

use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;

/// Frames written by one `sendmsg` at most.
pub const MAX_IOVECS: usize = 64;

/// Pongs a queue holds before new ones coalesce: a client that sends a few pings at once
/// gets a pong for each (as Autobahn 2.10 expects; the RFC does not require it), a flood
/// costs at most this many small frames per connection.
pub const MAX_PONGS: u8 = 16;

/// The first byte of a pong frame (FIN, opcode 0xA): how a popped frame is known as one.
const PONG_FIRST_BYTE: u8 = 0x8A;

/// A frame ready to write, shared by every connection on a shard that gets it.
#[derive(Debug)]
pub struct OutFrame {
    pub bytes: Bytes,
    /// Set for broadcasts: when the publish was accepted.
    pub published_at: Option<Instant>,
    /// The permessage-deflate variant (counted apart in bytes written).
    pub deflated: bool,
}

impl OutFrame {
    pub fn control(bytes: Bytes) -> Rc<Self> {
        Rc::new(Self { bytes, published_at: None, deflated: false })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// What a flush wrote, for the shard's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub frames: u64,
    pub plain_bytes: u64,
    pub deflate_bytes: u64,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// The queue is empty.
    Done,
    /// The socket's send buffer is full; wait for writability.
    Blocked,
}

/// The mark of frame number `n` as the pending pong. Number `u32::MAX` (once in four
/// billion frames) gets none: that one pong is then never replaced, only followed.
fn pong_mark(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n.wrapping_add(1))
}

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct OutboundQueue {
    frames: VecDeque<Rc<OutFrame>>,
    /// Bytes of the head frame already written.
    head_written: usize,
    /// Bytes of all queued frames, including the written part of the head.
    total: usize,
    /// Frames popped from the front so far (wrapping): `frames[i]` is frame number
    /// `popped + i`, which is how the pending pong is found again after pops.
    popped: u32,
    /// Number (as above) plus one of the latest queued pong that no byte of has been
    /// written yet (plus one so that `None` costs no space; see [`pong_mark`]).
    pong: Option<NonZeroU32>,
    /// Pongs in `frames`, started or not.
    pongs: u8,
    /// Bytes of the pongs the client asked for (every ping, answered or coalesced), less the
    /// bytes it has taken since: what a client that sends pings but does not read owes.
    owed: u32,
    /// The peer's `tcpi_bytes_acked` when `owed` was last settled.
    acked: u64,
}

impl OutboundQueue {
    pub fn push(&mut self, frame: Rc<OutFrame>) {
        self.total += frame.len();
        self.frames.push_back(frame);
    }

    /// Queues a pong, coalescing: if a pong not yet started on the wire is queued, the new
    /// one takes its place (RFC 6455 §5.5.3: a pong may answer only the most recent ping).
    /// `asked` is the bytes of every pong this one answers for (the caller may have folded
    /// several pings into it); they count as owed until the client has taken as many bytes.
    pub fn push_pong(&mut self, frame: Rc<OutFrame>, asked: usize) {
        let pending = self.pong.map(|n| (n.get() - 1).wrapping_sub(self.popped) as usize);
        match pending {
            // Index 0 with bytes written has started: it must go out whole, untouched.
            Some(i) if self.pongs >= MAX_PONGS && i < self.frames.len() && !(i == 0 && self.head_written > 0) => {
                self.total = self.total - self.frames[i].len() + frame.len();
                self.frames[i] = frame;
            }
            _ => {
                self.pong = pong_mark(self.popped.wrapping_add(self.frames.len() as u32));
                self.pongs = self.pongs.saturating_add(1);
                self.push(frame);
            }
        }
        self.owed = (self.owed as usize).saturating_add(asked).min(u32::MAX as usize) as u32;
    }

    /// Whether pongs are owed (the shard then asks the kernel whether the client reads).
    pub fn owes(&self) -> bool {
        self.owed > 0
    }

    /// Settles what is owed against the peer's current `tcpi_bytes_acked`: every byte the
    /// client took since the last look (pongs, broadcasts, anything) pays for a byte of
    /// pongs. A client that pings and reads its pongs owes nothing for long; one that sends
    /// pings without reading owes every pong it asked for. `None`, a kernel that does not
    /// tell, forgives everything: pongs still coalesce, but a client that floods pings is
    /// then not told from one that reads.
    pub fn peer_acked(&mut self, acked: Option<u64>) {
        match acked {
            Some(a) => {
                let took = a.wrapping_sub(self.acked);
                self.acked = a;
                self.owed = (self.owed as u64).saturating_sub(took) as u32;
            }
            None => self.owed = 0,
        }
    }

    /// Settles as [`OutboundQueue::peer_acked`] does, and says whether the client took any
    /// byte since the last look: alive, even if its pong is late because ours waits behind
    /// data (the idle check asks this of a quiet connection that still has frames queued).
    pub fn peer_took(&mut self, acked: Option<u64>) -> bool {
        let before = self.acked;
        self.peer_acked(acked);
        acked.is_some_and(|a| a != before)
    }

    /// Bytes still to write.
    pub fn queued_bytes(&self) -> usize {
        self.total - self.head_written
    }

    /// What `--max-queue-bytes` bounds: bytes still to write, plus the pongs owed.
    pub fn backlog(&self) -> usize {
        self.queued_bytes() + self.owed as usize
    }

    /// Whether the backlog passes `max`. A single frame never does on its own (a message may
    /// be larger than the bound), unless pongs are owed besides.
    pub fn over(&self, max: usize) -> bool {
        self.backlog() > max && (self.frames.len() > 1 || self.owed > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops every frame not yet started, keeping a partly written head frame so the byte
    /// stream stays a valid sequence of frames. Returns whether such a head remains.
    pub fn discard_unsent(&mut self) -> bool {
        let keep = usize::from(self.head_written > 0).min(self.frames.len());
        self.frames.truncate(keep);
        self.total = self.frames.iter().map(|f| f.len()).sum();
        self.pongs = self.frames.iter().filter(|f| f.bytes.first() == Some(&PONG_FIRST_BYTE)).count() as u8;
        // A kept head has started on the wire, so no pong is pending any more.
        self.pong = None;
        self.owed = 0;
        keep == 1
    }

    /// Returns the queue's memory when it is empty and grew during a burst.
    pub fn shrink_idle(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes, without blocking. Completed frames are counted in
    /// `written` and, for broadcasts, their publish-to-write latency goes into `latency` (µs).
    pub fn flush(&mut self, fd: RawFd, written: &mut Written, latency: &mut Histogram<u64>) -> io::Result<Flush> {
        let mut now: Option<Instant> = None;
        loop {
            if self.frames.is_empty() {
                return Ok(Flush::Done);
            }
            let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOVECS];
            let mut count = 0;
            let mut want = 0;
            for (i, f) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                let skip = if i == 0 { self.head_written } else { 0 };
                iov[i].iov_base = f.bytes[skip..].as_ptr() as *mut libc::c_void;
                iov[i].iov_len = f.len() - skip;
                want += f.len() - skip;
                count += 1;
            }
            // SAFETY: msghdr is plain data; we fill the fields sendmsg reads.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = count as _;
            // SAFETY: iov points into Bytes owned by self.frames, alive for the call.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n < 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock => Ok(Flush::Blocked),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(err),
                };
            }
            let mut left = n as usize;
            while left > 0 {
                let head = &self.frames[0];
                let rest = head.len() - self.head_written;
                if left < rest {
                    self.head_written += left;
                    break;
                }
                left -= rest;
                self.head_written = 0;
                self.total -= head.len();
                written.frames += 1;
                if head.deflated {
                    written.deflate_bytes += head.len() as u64;
                } else {
                    written.plain_bytes += head.len() as u64;
                }
                if let Some(at) = head.published_at {
                    let now = *now.get_or_insert_with(Instant::now);
                    let us = now.saturating_duration_since(at).as_micros() as u64;
                    latency.saturating_record(us.max(1));
                }
                if head.bytes.first() == Some(&PONG_FIRST_BYTE) {
                    self.pongs = self.pongs.saturating_sub(1);
                }
                self.frames.pop_front();
                if self.pong == pong_mark(self.popped) {
                    self.pong = None;
                }
                self.popped = self.popped.wrapping_add(1);
            }
            if (n as usize) < want {
                return Ok(Flush::Blocked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn frame(data: &[u8]) -> Rc<OutFrame> {
        Rc::new(OutFrame { bytes: Bytes::copy_from_slice(data), published_at: Some(Instant::now()), deflated: false })
    }

    #[test]
    fn drains_in_order_and_counts() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = OutboundQueue::default();
        for i in 0..100u8 {
            q.push(frame(&[i; 10]));
        }
        assert_eq!(q.queued_bytes(), 1000);
        let mut w = Written::default();
        let mut h = crate::ops::metrics::new_latency_histogram();
        assert_eq!(q.flush(a.as_raw_fd(), &mut w, &mut h).unwrap(), Flush::Done);
        assert_eq!(w.frames, 100);
        assert_eq!(h.len(), 100);
        let mut got = vec![0; 1000];
        b.read_exact(&mut got).unwrap();
        assert!(got.chunks(10).enumerate().all(|(i, c)| c.iter().all(|x| *x == i as u8)));
    }

    #[test]
    fn over_the_bound_takes_more_than_one_frame() {
        let mut q = OutboundQueue::default();
        q.push(frame(&[1; 100]));
        assert!(!q.over(10), "one frame alone is never over the bound");
        q.push(frame(&[2; 100]));
        assert!(q.over(199));
        assert!(!q.over(200));
    }

    fn pong(payload: &[u8]) -> Rc<OutFrame> {
        OutFrame::control(crate::ws::frame::encode_pong(payload).bytes().clone())
    }

    #[test]
    fn pongs_coalesce_past_max_pongs_into_the_latest_not_yet_started() {
        let mut q = OutboundQueue::default();
        q.push(frame(&[1; 100]));
        q.push_pong(pong(b"a"), 3);
        q.push(frame(&[2; 100]));
        q.push_pong(pong(b"bb"), 4);
        // A few pings, a pong for each, in order.
        assert_eq!(q.frames.len(), 4);
        assert_eq!(&q.frames[3].bytes[..], &[0x8A, 2, b'b', b'b']);
        for _ in 2..MAX_PONGS {
            q.push_pong(pong(b"x"), 3);
        }
        assert_eq!(q.frames.len(), 2 + MAX_PONGS as usize);
        // Past MAX_PONGS, a new pong takes the latest one's place, answering the newest ping.
        q.push_pong(pong(b"ccc"), 5);
        assert_eq!(q.frames.len(), 2 + MAX_PONGS as usize);
        assert_eq!(&q.frames.back().unwrap().bytes[..], &[0x8A, 3, b'c', b'c', b'c']);
        let pongs = 3 + 4 + 3 * (MAX_PONGS as usize - 3) + 5;
        assert_eq!(q.queued_bytes(), 200 + pongs);
        assert_eq!(q.backlog(), 200 + pongs + 3 + 4 + 3 * (MAX_PONGS as usize - 2) + 5, "every pong asked for is owed");

        // A pong of which a byte is on the wire is left alone; the next one is queued anew.
        let mut q = OutboundQueue { pongs: MAX_PONGS - 1, ..Default::default() };
        q.push_pong(pong(b"a"), 3);
        q.head_written = 1;
        q.push_pong(pong(b"b"), 3);
        assert_eq!(q.frames.len(), 2);
        q.push_pong(pong(b"c"), 3);
        assert_eq!(q.frames.len(), 2);
        assert_eq!(&q.frames[1].bytes[..], &[0x8A, 1, b'c']);
        // Pongs written leave room for new ones.
        let (a, mut b) = UnixStream::pair().unwrap();
        let (mut w, mut h) = (Written::default(), crate::ops::metrics::new_latency_histogram());
        q.head_written = 0;
        assert_eq!(q.flush(a.as_raw_fd(), &mut w, &mut h).unwrap(), Flush::Done);
        let mut got = [0u8; 6];
        b.read_exact(&mut got).unwrap();
        assert_eq!(q.pongs, MAX_PONGS - 1);
    }

    #[test]
    fn peer_took_says_whether_the_client_took_bytes_since_the_last_look() {
        let mut q = OutboundQueue::default();
        assert!(q.peer_took(Some(100)), "the first look sees what it took since the start");
        assert!(!q.peer_took(Some(100)), "nothing since");
        assert!(q.peer_took(Some(130)));
        assert!(!q.peer_took(None), "a kernel that does not tell proves nothing");
    }

    #[test]
    fn a_written_pong_is_no_longer_pending() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = OutboundQueue::default();
        let (mut w, mut h) = (Written::default(), crate::ops::metrics::new_latency_histogram());
        for round in 0..3u8 {
            q.push_pong(pong(&[round]), 3);
            assert_eq!(q.frames.len(), 1);
            assert_eq!(q.flush(a.as_raw_fd(), &mut w, &mut h).unwrap(), Flush::Done);
            let mut got = [0u8; 3];
            b.read_exact(&mut got).unwrap();
            assert_eq!(got, [0x8A, 1, round], "each round's pong goes out");
        }
        assert!(q.pong.is_none());
        // Writing does not pay what is owed: only the client taking bytes does.
        assert_eq!(q.backlog(), 9);
    }

    #[test]
    fn owed_pongs_are_paid_by_what_the_client_takes() {
        let mut q = OutboundQueue::default();
        q.peer_acked(Some(500)); // what it took before (the 101, say)
        q.push_pong(pong(b""), 2000);
        assert!(q.owes());
        assert!(q.over(1024), "2000 bytes of pongs owed pass a 1 KiB bound");
        q.peer_acked(Some(500));
        assert_eq!(q.backlog(), 2 + 2000, "nothing taken, nothing paid");
        q.peer_acked(Some(1700));
        assert_eq!(q.backlog(), 2 + 800);
        assert!(!q.over(1024));
        q.peer_acked(Some(10_000));
        assert!(!q.owes());
        assert!(!q.over(0), "one frame alone is never over the bound");
        q.push_pong(pong(b""), 2);
        q.peer_acked(None);
        assert!(!q.owes(), "a kernel that does not tell forgives");
        q.push_pong(pong(b""), 5000);
        assert!(!q.discard_unsent());
        assert_eq!(q.backlog(), 0, "a hard close forgets pongs, owed or queued");
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_discard_keeps_head() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let big = vec![7u8; 4 << 20];
        let mut q = OutboundQueue::default();
        q.push(frame(&big));
        q.push(frame(b"tail"));
        let mut w = Written::default();
        let mut h = crate::ops::metrics::new_latency_histogram();
        assert_eq!(q.flush(a.as_raw_fd(), &mut w, &mut h).unwrap(), Flush::Blocked);
        assert!(q.queued_bytes() < big.len() + 4);
        assert!(q.discard_unsent(), "head frame partly written is kept");
        assert_eq!(q.frames.len(), 1);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        while q.flush(a.as_raw_fd(), &mut w, &mut h).unwrap() == Flush::Blocked {
            std::thread::yield_now();
        }
        drop(a);
        assert_eq!(reader.join().unwrap().len(), big.len());
        assert_eq!(w.frames, 1);
    }
}

//! The kernel's floor under a broadcast: the cost of putting one 1 KiB frame on each of many
//! connected loopback TCP sockets, with a bare `write()`, a bare `sendmsg()` (no WebSocket
//! work at all), then through crier's own `OutboundQueue::flush` (one `sendmsg`).
//!
//! On loopback the sender's system call also runs the receiver's TCP input, so this is what a
//! one-core server pays per subscriber for each message, whatever server it is. It bounds the
//! latency target: a broadcast to N sockets cannot finish sooner than N × this. The clients
//! are drained between passes, outside the timed part; they are not waiting in epoll, so
//! there is no wake-up cost here and a real run costs more.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crier::shard::outbound::{OutFrame, OutboundQueue, Written};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;

const FRAME: usize = 1024;
/// Sockets per pass: both ends live in this process, under this machine's 20,000-file limit.
const SOCKETS: usize = 9_000;

struct Pairs {
    servers: Vec<TcpStream>,
    clients: Vec<TcpStream>,
}

fn pairs(n: usize) -> Pairs {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut servers, mut clients) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).expect("connect"));
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        servers.push(s);
    }
    Pairs { servers, clients }
}

impl Pairs {
    /// Runs `iters` passes of `send(i, server_socket)` over every socket, timing only the
    /// sends; the clients are drained after each pass.
    fn timed_passes(&mut self, iters: u64, mut send: impl FnMut(usize, &mut TcpStream)) -> Duration {
        let mut spent = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            for (i, s) in self.servers.iter_mut().enumerate() {
                send(i, s);
            }
            spent += t.elapsed();
            self.drain();
        }
        spent
    }

    /// Reads the one frame each client was sent (blocking: it is already there).
    fn drain(&mut self) {
        let mut buf = [0u8; FRAME];
        for c in &mut self.clients {
            c.read_exact(&mut buf).expect("read");
        }
    }
}

fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn loopback(c: &mut Criterion) {
    raise_nofile();
    let mut p = pairs(SOCKETS);
    let payload = vec![b'x'; FRAME];
    let mut g = c.benchmark_group("one_1KiB_frame_to_each_loopback_socket");
    g.throughput(Throughput::Elements(SOCKETS as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));

    g.bench_function(BenchmarkId::new("write", SOCKETS), |b| {
        b.iter_custom(|iters| {
            p.timed_passes(iters, |_, s| {
                s.write_all(&payload).expect("write");
            })
        })
    });

    g.bench_function(BenchmarkId::new("sendmsg", SOCKETS), |b| {
        b.iter_custom(|iters| {
            p.timed_passes(iters, |_, s| {
                let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: FRAME };
                // SAFETY: msghdr is plain data; the fields sendmsg reads are set below.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                // SAFETY: iov points into payload, alive for the call.
                let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
                assert_eq!(n, FRAME as isize);
            })
        })
    });

    let frame =
        Rc::new(OutFrame { bytes: Bytes::from(payload.clone()), published_at: Some(Instant::now()), deflated: false });
    let mut queues: Vec<OutboundQueue> = (0..SOCKETS).map(|_| OutboundQueue::default()).collect();
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    g.bench_function(BenchmarkId::new("crier_flush", SOCKETS), |b| {
        b.iter_custom(|iters| {
            let mut written = Written::default();
            let spent = p.timed_passes(iters, |i, s| {
                queues[i].push(frame.clone());
                queues[i].flush(s.as_raw_fd(), &mut written, &mut latency).expect("flush");
            });
            assert_eq!(written.frames, iters * SOCKETS as u64);
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, loopback);
criterion_main!(benches);

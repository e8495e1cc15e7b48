//! Non-blocking socket reads and writes on top of monoio's readiness futures.
//!
//! crier waits for readiness (`readable`/`writable`: a poll on io_uring, epoll otherwise)
//! and then reads or writes with `MSG_DONTWAIT` itself. That keeps idle connections free
//! of per-connection read buffers (the bytes land in a buffer the caller owns only for the
//! moment) and works the same on both drivers: accepted sockets are blocking under io_uring.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// A socket monoio can wait on.
pub trait Waitable: AsRawFd {
    fn wait_writable(&self) -> impl Future<Output = io::Result<()>>;
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>>;
}

impl Waitable for monoio::net::TcpStream {
    fn wait_writable(&self) -> impl Future<Output = io::Result<()>> {
        self.writable(false)
    }
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> {
        self.readable(false)
    }
}

impl Waitable for monoio::net::UnixStream {
    fn wait_writable(&self) -> impl Future<Output = io::Result<()>> {
        self.writable(false)
    }
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> {
        self.readable(false)
    }
}

/// Receives into `buf` without blocking (`WouldBlock` when nothing is there).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits until readable, then receives what is there. `Ok(0)` is end of stream.
pub async fn recv_some(sock: &impl Waitable, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match recv(sock.as_raw_fd(), buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.wait_readable().await?,
            other => return other,
        }
    }
}

/// Writes all of `data`, waiting for writability whenever the socket is full.
pub async fn send_all(sock: &impl Waitable, mut data: &[u8]) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    while !data.is_empty() {
        // SAFETY: data is valid for reads of data.len() bytes.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => sock.wait_writable().await?,
            io::ErrorKind::Interrupted => {}
            _ => return Err(err),
        }
    }
    Ok(())
}

/// Bytes written to the socket that the peer has not acknowledged yet (`SIOCOUTQ`): data
/// still on its way, in the kernel's send queue. 0 if the kernel does not say.
pub fn unacked_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one c_int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc == 0 { n.max(0) as usize } else { 0 }
}

/// Bytes of ours the peer has acknowledged (`tcpi_bytes_acked`, Linux 4.1+): it grows only
/// while the client takes what we send, since a client that stops reading closes its
/// receive window. `None` if the kernel does not say.
pub fn bytes_acked(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info is valid for writes of len bytes; the kernel writes at most len.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
    (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_acked)
}

/// Writes what the socket takes of `data` now, without waiting; returns how much that was.
/// For short answers on sockets about to be closed (refusals), where waiting is not worth
/// a task.
pub fn send_now(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: data is valid for reads of data.len() bytes.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

//! A worker's connections: the TCP connect and WebSocket upgrade (from the connection's
//! source address, with its channels in channels mode), the read loop that feeds the
//! shared accounting, and reconnecting during a storm.

use super::{End, Sh, Shared, State};
use crate::sys;
use crate::tracker::ChannelTrackers;
use crate::ws::{self, FrameReader, Response};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpSocket, TcpStream};

fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EADDRNOTAVAIL) => "no_local_port".into(),
        Some(libc::EADDRINUSE) => "address_in_use".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        _ => format!("io:{:?}", e.kind()),
    }
}

/// TCP connect from the connection's source address, then the WebSocket upgrade.
/// Returns the stream, whether permessage-deflate was negotiated, and any frame bytes that
/// arrived with the response.
async fn connect(sh: &Sh, idx: usize) -> Result<(TcpStream, bool, Vec<u8>), String> {
    let (target, src, req, key, timeout) = {
        let mut s = sh.borrow_mut();
        let key = ws::new_key(&mut s.rng);
        let cfg = &s.cfg;
        let src = (!cfg.src_ips.is_empty())
            .then(|| cfg.src_ips[((cfg.first + idx as u64) % cfg.src_ips.len() as u64) as usize]);
        let req = match &cfg.channels {
            Some(cs) => {
                let sep = if cfg.path.contains('?') { '&' } else { '?' };
                let path = format!("{}{sep}{}", cfg.path, cs.query(cfg.first + idx as u64));
                ws::request(&s.request_host, &path, &key, cfg.deflate)
            }
            None => ws::request(&s.request_host, &cfg.path, &key, cfg.deflate),
        };
        (cfg.target, src, req, key, Duration::from_millis(cfg.connect_timeout_ms))
    };
    let attempt = async {
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| io_reason(&e))?;
        if let Some(ip) = src {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: valid fd and option value. Defers the port choice to connect(), so
            // ports are shared across destinations (best effort: ignore failure).
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(SocketAddr::new(ip.into(), 0)).map_err(|e| io_reason(&e))?;
        }
        let mut stream = socket.connect(target).await.map_err(|e| io_reason(&e))?;
        let _ = stream.set_nodelay(true);
        stream.write_all(&req).await.map_err(|e| io_reason(&e))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        loop {
            stream.readable().await.map_err(|e| io_reason(&e))?;
            match stream.try_read(&mut chunk) {
                Ok(0) => return Err("eof_in_handshake".to_string()),
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_reason(&e)),
            }
            match ws::parse_response(&buf, &key) {
                Ok(Response::Partial) => continue,
                Ok(Response::Upgraded { head_len, deflate }) => {
                    return Ok((stream, deflate, buf[head_len..].to_vec()));
                }
                Err(e) => return Err(e.reason()),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

pub(super) async fn conn_task(sh: Sh, idx: usize) {
    let mut reconnecting = false;
    loop {
        match connect(&sh, idx).await {
            Ok((stream, deflate, rest)) => {
                let end = match stream.into_std().and_then(|std| {
                    // SAFETY: the AsyncFd owns the std stream, whose fd stays open and
                    // unchanged until the AsyncFd is dropped.
                    unsafe { AsyncFd::register(std) }.map_err(std::io::Error::from)
                }) {
                    Ok(afd) => {
                        let mut out = Vec::new();
                        let early_end = {
                            let mut s = sh.borrow_mut();
                            let now = sys::unix_ns();
                            opened(&mut s, idx, afd.get_ref(), deflate, reconnecting, now);
                            if rest.is_empty() { None } else { s.on_data(idx, &rest, now, &mut out) }
                        };
                        let w = write_all(&afd, &out).await;
                        match (early_end, w) {
                            (Some(reason), _) => End::Closed(reason),
                            (None, Err(e)) => End::Closed(io_reason(&e)),
                            (None, Ok(())) => read_loop(&sh, idx, &afd).await,
                        }
                    }
                    Err(e) => End::Closed(io_reason(&e)),
                };
                let mut s = sh.borrow_mut();
                let c = &mut s.conns[idx];
                c.fd = -1;
                c.reader = FrameReader::new();
                match end {
                    End::Storm => {
                        c.state = State::Reconnecting;
                        reconnecting = true;
                    }
                    End::Closed(reason) => {
                        c.state = State::Closed;
                        *s.closed.entry(reason).or_insert(0) += 1;
                        return;
                    }
                }
            }
            Err(reason) => {
                if !failed_attempt(&sh, idx, reason, reconnecting) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if sh.borrow().storm.give_up {
                    sh.borrow_mut().conns[idx].state = State::Failed;
                    return;
                }
            }
        }
    }
}

/// Books a connection that just upgraded.
fn opened(s: &mut Shared, idx: usize, stream: &std::net::TcpStream, deflate: bool, reconnecting: bool, now: u64) {
    use std::os::fd::AsRawFd;
    let global = s.cfg.first + idx as u64;
    let subs = match &s.cfg.channels {
        Some(cs) if !reconnecting => Some(cs.subscriptions(global)),
        _ => None,
    };
    let c = &mut s.conns[idx];
    if let Some(subs) = subs {
        c.chans = ChannelTrackers::new(&subs);
    }
    c.state = State::Open;
    c.fd = stream.as_raw_fd();
    c.deflate = deflate;
    c.reader = FrameReader::new();
    if reconnecting {
        let st = &mut s.storm;
        st.back += 1;
        st.last_back_ns = st.last_back_ns.max(now);
        let us = now.saturating_sub(st.drop_ns) / 1000;
        if let Some(h) = st.reconnect.as_mut() {
            h.saturating_record(us.max(1));
        }
    } else {
        s.first_done += 1;
        s.connect.ok += 1;
        s.connect.last_ok_ns = s.connect.last_ok_ns.max(now);
        s.connect.deflate_negotiated += u64::from(deflate);
    }
}

/// Writes all of `buf` (pongs and close replies: small and rare).
async fn write_all(afd: &AsyncFd<std::net::TcpStream>, buf: &[u8]) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        match afd.get_ref().write(&buf[pos..]) {
            Ok(n) => pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut g = afd.writable().await?;
                g.clear_ready();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Records a failed connect; true if the connection should try again (during a storm).
fn failed_attempt(sh: &Sh, idx: usize, reason: String, reconnecting: bool) -> bool {
    let mut s = sh.borrow_mut();
    if !reconnecting {
        s.first_done += 1;
        s.connect.failed += 1;
        *s.connect.failures.entry(reason).or_insert(0) += 1;
        s.conns[idx].state = State::Failed;
        return false;
    }
    s.storm.failed_attempts += 1;
    *s.storm.failures.entry(reason).or_insert(0) += 1;
    if s.storm.give_up {
        s.conns[idx].state = State::Failed;
        return false;
    }
    true
}

async fn read_loop(sh: &Sh, idx: usize, afd: &AsyncFd<std::net::TcpStream>) -> End {
    let mut out = Vec::new();
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => return End::Closed(io_reason(&e)),
        };
        let mut end = None;
        {
            let mut borrow = sh.borrow_mut();
            let s = &mut *borrow;
            if s.conns[idx].state == State::Reconnecting {
                return End::Storm;
            }
            let mut scratch = std::mem::take(&mut s.scratch);
            loop {
                match afd.get_ref().read(&mut scratch) {
                    Ok(0) => {
                        end = Some("eof".to_string());
                        break;
                    }
                    Ok(k) => {
                        if let Some(r) = s.on_data(idx, &scratch[..k], sys::unix_ns(), &mut out) {
                            end = Some(r);
                            break;
                        }
                        if k < scratch.len() {
                            // Drained (a short read): no second recv just to see EAGAIN.
                            // clear_ready keeps any readiness that arrived since the wake.
                            guard.clear_ready();
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        end = Some(io_reason(&e));
                        break;
                    }
                }
            }
            s.scratch = scratch;
        }
        drop(guard);
        if !out.is_empty() {
            let w = write_all(afd, &out).await;
            out.clear();
            if out.capacity() > 1024 {
                out = Vec::new();
            }
            if let Err(e) = w
                && end.is_none()
            {
                end = Some(io_reason(&e));
            }
        }
        if let Some(reason) = end {
            return End::Closed(reason);
        }
    }
}

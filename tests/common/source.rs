//! Clients from a chosen loopback address (the whole 127.0.0.0/8 is loopback), so that one
//! test plays several client addresses: an attacker on 127.0.0.2, everyone else on others.

use super::*;
use std::net::{IpAddr, SocketAddr, TcpStream};

/// A TCP connection to `to` from `from` (any port).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let domain = if to.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), IO_TIMEOUT)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// A WebSocket upgrade from `from`: the client, or the response if it is not 101.
pub fn ws_from(from: &str, to: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Result<WsClient, HttpResponse> {
    let ip: IpAddr = from.parse().expect("a source address");
    let stream = connect_from(ip, to).unwrap_or_else(|e| panic!("connect {to} from {from}: {e}"));
    WsClient::handshake(stream, to, target, extra)
}

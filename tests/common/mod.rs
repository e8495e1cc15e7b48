//! Shared harness for the integration tests: starts the real `crier` binary, waits for its
//! `ready` log line, and talks to it over real sockets (WebSocket over TCP, the publisher
//! Unix socket, the admin HTTP port).
//!
//! Every blocking read has a timeout and every wait has a deadline, so a broken server makes
//! a test fail, never hang.
//!
//! # Layout
//! - `server`: temporary directories, `ServerBuilder` and the running `Server`.
//! - `prometheus`: parsing `/metrics`.
//! - `http`: plain HTTP requests and responses.
//! - `nginx`: the shipped NGINX sample as a plain-HTTP site on loopback, and NGINX running it.
//! - `redis`: a real redis-server on a free loopback port.
//! - `browser`: headless Chromium driven by `tests/browser/run.mjs`, the page's reports.
//! - `ws`: the raw WebSocket client, frame and deflate helpers, tungstenite as a second client.
//! - `publisher`: the publisher protocol over the Unix socket.
//! - `command`: `crier <subcommand>` as a plain command.
//! - `seccomp`: a Docker-like filter that blocks io_uring.
//! - `readme`: the README's tables, read at test time.
//! - `source`: clients from a chosen loopback address (127.0.0.2, …).
//! - `redis_cluster`: a real three-master Redis Cluster on loopback ports.
//!
//! Test files keep `use common::*`: every part is re-exported here.
#![allow(dead_code, unused_macros)]

use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_crier");
/// How long the server gets to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Default timeout of a single blocking read in the tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The RFC 6455 example key and the accept value the RFC gives for it (section 1.3).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The exact extension answer the README promises.
pub const DEFLATE_ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub const RSV1: u8 = 0b100;
pub const RSV2: u8 = 0b010;
pub const RSV3: u8 = 0b001;

// ---------------------------------------------------------------------------------------
// Drivers and the macro that runs a case on both of them.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    /// The value given to `--driver`.
    pub fn arg(self) -> &'static str {
        match self {
            Driver::IoUring => "io-uring",
            Driver::Epoll => "epoll",
        }
    }
    /// The name the server reports in its `ready` line and in `crier_driver{driver}`.
    pub fn reported(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Each `fn name(d) { … }` becomes a module `name` with two tests, `name::io_uring` and
/// `name::epoll`, that run the body with `--driver io-uring` and `--driver epoll`.
macro_rules! both_drivers {
    ($($(#[$meta:meta])* fn $name:ident($d:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn case($d: crate::common::Driver) $body
                #[test]
                fn io_uring() {
                    case(crate::common::Driver::IoUring)
                }
                #[test]
                fn epoll() {
                    case(crate::common::Driver::Epoll)
                }
            }
        )*
    };
}

/// Poll `cond` until true or panic with `what` at the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

mod server;
#[allow(unused_imports)]
pub use server::*;
mod prometheus;
#[allow(unused_imports)]
pub use prometheus::*;
mod http;
#[allow(unused_imports)]
pub use nginx::*;
mod nginx;
#[allow(unused_imports)]
pub use http::*;
mod ws;
#[allow(unused_imports)]
pub use ws::*;
mod publisher;
#[allow(unused_imports)]
pub use publisher::*;
mod command;
#[allow(unused_imports)]
pub use command::*;
mod seccomp;
#[allow(unused_imports)]
pub use seccomp::*;
mod readme;
#[allow(unused_imports)]
pub use readme::*;
mod source;
#[allow(unused_imports)]
pub use source::*;
mod redis;
#[allow(unused_imports)]
pub use redis::*;
mod browser;
#[allow(unused_imports)]
pub use browser::*;

/// A free loopback port (bound and released; the caller's server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
mod redis_cluster;
#[allow(unused_imports)]
pub use redis_cluster::*;

/// A server whose drain, after SIGTERM, stays busy for up to its `--drain-timeout` (3 s):
/// one subscriber that stopped reading holds ~200 KiB of queued frames (more than the socket
/// buffers hold, far less than `--max-queue-bytes`, 1 MiB), so its close frame cannot be
/// flushed. Keep the returned client alive for as long as the drain should last.
pub fn server_with_a_stuck_drain() -> (Server, WsClient) {
    let s = Server::builder(Driver::Epoll).args(["--drain-timeout", "3s", "--socket-send-buffer", "16KiB"]).start();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&s.ws.into(), IO_TIMEOUT).unwrap();
    let stuck = WsClient::handshake(sock.into(), s.ws, "/ws?channels=bulk", &[]).unwrap_or_else(|r| panic!("{r:?}"));
    s.wait_connections(1);
    let mut p = s.publisher();
    for i in 0..50 {
        p.publish("bulk", &random_bytes(i, 4096), true);
    }
    (s, stuck)
}

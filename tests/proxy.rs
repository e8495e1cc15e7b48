//! Real client addresses behind real proxies: NGINX (the shipped sample, which sets
//! `X-Forwarded-For`) and HAProxy (`send-proxy-v2`, and `send-proxy` for v1) in front of
//! crier, with clients from 127.0.0.2 and 127.0.0.3. The per-address limit applies to each
//! client behind the proxy, not to the proxy; a forged `X-Forwarded-For` is believed
//! neither from an untrusted peer nor behind a proxy; a PROXY header that is malformed or
//! comes from an untrusted peer closes the connection, counted, and harms no one else.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CAP: usize = 3;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free loopback port (bound and released; the proxy binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A proxy process, stopped (by its PID) when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM first: NGINX's master then stops its worker too, which a SIGKILL of the
        // master would leave running; SIGKILL if it is still there after 5 s.
        let pid = libc::pid_t::try_from(self.0.id()).unwrap();
        // SAFETY: our own, unreaped child, by PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls until `addr` accepts connections.
fn wait_listening(addr: SocketAddr, what: &str) {
    wait_until(IO_TIMEOUT, &format!("{what} listening on {addr}"), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    });
}

fn crier(extra: &[&str]) -> Server {
    ServerBuilder::new(Driver::Epoll)
        .args(["--trusted-proxies", "127.0.0.1/32", "--max-connections-per-ip", &CAP.to_string()])
        .args(["--max-handshakes-per-ip-per-second", "0"])
        .args(extra)
        .start()
}

fn open(via: SocketAddr, from: &str, n: usize, extra: &[(&str, &str)]) -> Vec<WsClient> {
    (0..n)
        .map(|i| {
            ws_from(from, via, "/ws?channels=news", extra)
                .unwrap_or_else(|r| panic!("connection {i} from {from} via {via}: {r:?}"))
        })
        .collect()
}

fn refused(via: SocketAddr, from: &str, extra: &[(&str, &str)], why: &str) {
    match ws_from(from, via, "/ws?channels=news", extra) {
        Ok(_) => panic!("{why}: accepted"),
        Err(r) => assert_eq!(r.status, 429, "{why}: {r:?}"),
    }
}

fn assert_receive(s: &Server, groups: &mut [&mut Vec<WsClient>], msg: &str) {
    s.publish("news", msg);
    for g in groups.iter_mut() {
        for c in g.iter_mut() {
            assert_eq!(c.expect_text(), msg);
        }
    }
}

#[test]
fn behind_nginx_the_limit_is_per_client_and_forged_forwarded_for_is_ignored() {
    assert!(have("nginx"), "nginx is not installed: apt-get install -y nginx-light (scripts/test.sh installs it)");
    let s = crier(&[]);
    let dir = TempDir::new();
    let port = free_port();
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/crier.conf")).unwrap();
    let site = nginx_plain_site(&sample, &[format!("server {};", s.ws)], port);
    assert!(site.contains("X-Forwarded-For $proxy_add_x_forwarded_for"), "the sample sets X-Forwarded-For");
    std::fs::write(dir.join("site.conf"), site).unwrap();
    std::fs::write(dir.join("nginx.conf"), nginx_main_conf(dir.path(), "site.conf", 256)).unwrap();
    let _nginx = Proxy(
        Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let via: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(via, "nginx");

    // Two clients behind NGINX, each with its own cap, although crier sees one peer.
    let mut a = open(via, "127.0.0.2", CAP, &[]);
    refused(via, "127.0.0.2", &[], "127.0.0.2 past its cap through NGINX");
    // A forged X-Forwarded-For does not help: NGINX appends the real peer, and crier takes
    // the right-most address that is not a trusted proxy.
    refused(via, "127.0.0.2", &[("X-Forwarded-For", "127.0.0.77")], "127.0.0.2 forging X-Forwarded-For");
    let mut b = open(via, "127.0.0.3", CAP, &[]);
    assert_eq!(s.metric0("crier_peer_addresses", &[]), 2.0, "counted under the clients, not NGINX's 127.0.0.1");
    assert_eq!(s.metric0("crier_connections_refused_total", &[("reason", "ip_connections")]), 2.0);

    // Straight to crier from an untrusted peer, X-Forwarded-For is ignored: three forged
    // addresses all count as 127.0.0.4.
    let mut direct: Vec<WsClient> = ["127.0.0.90", "127.0.0.91", "127.0.0.92"]
        .iter()
        .map(|f| ws_from("127.0.0.4", s.ws, "/ws?channels=news", &[("X-Forwarded-For", f)]).expect("direct"))
        .collect();
    refused(s.ws, "127.0.0.4", &[("X-Forwarded-For", "127.0.0.93")], "an untrusted peer's X-Forwarded-For");
    assert_eq!(s.metric0("crier_peer_addresses", &[]), 3.0);
    assert_receive(&s, &mut [&mut a, &mut b, &mut direct], "through nginx and direct");
}

/// HAProxy in TCP mode with a v2 frontend and a v1 frontend, both to crier.
fn haproxy(dir: &Path, crier: SocketAddr) -> (Proxy, SocketAddr, SocketAddr) {
    let (p2, p1) = (free_port(), free_port());
    let cfg = format!(
        "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         listen v2\n  bind 127.0.0.1:{p2}\n  server crier {crier} send-proxy-v2\n\
         listen v1\n  bind 127.0.0.1:{p1}\n  server crier {crier} send-proxy\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let v2: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let v1: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let proxy = Proxy(child);
    wait_listening(v2, "haproxy");
    wait_listening(v1, "haproxy");
    (proxy, v2, v1)
}

/// Sends `bytes` from `from` straight to crier and expects the connection closed without
/// an answer.
fn closed_without_answer(s: &Server, from: &str, bytes: &[u8]) {
    let mut c = connect_from(from.parse().unwrap(), s.ws).unwrap();
    c.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got); // EOF (or a reset): closed
    assert!(got.is_empty(), "expected a silent close, got {:?}", String::from_utf8_lossy(&got));
}

#[test]
fn behind_haproxy_proxy_protocol_names_the_client_and_bad_headers_are_closed() {
    assert!(
        have("haproxy") || Path::new("/usr/sbin/haproxy").exists(),
        "haproxy is not installed: apt-get install -y haproxy (scripts/test.sh installs it)"
    );
    let s = crier(&["--proxy-protocol"]);
    let dir = TempDir::new();
    let (_haproxy, v2, v1) = haproxy(dir.path(), s.ws);

    // send-proxy-v2: each client counted under its own address.
    let mut a = open(v2, "127.0.0.2", CAP, &[]);
    refused(v2, "127.0.0.2", &[], "127.0.0.2 past its cap through HAProxy (v2)");
    // Behind the PROXY header the client is 127.0.0.2, which is not trusted: its own
    // X-Forwarded-For is not believed.
    refused(v2, "127.0.0.2", &[("X-Forwarded-For", "127.0.0.77")], "forged X-Forwarded-For behind HAProxy");
    let mut b = open(v2, "127.0.0.3", CAP, &[]);
    // send-proxy (v1) works the same.
    let mut c = open(v1, "127.0.0.5", CAP, &[]);
    refused(v1, "127.0.0.5", &[], "127.0.0.5 past its cap through HAProxy (v1)");
    assert_eq!(s.metric0("crier_peer_addresses", &[]), 3.0, "{}", s.metrics_text());

    // A malformed header from the trusted peer, and a valid one from an untrusted peer
    // claiming to be someone else: both closed, each counted.
    closed_without_answer(&s, "127.0.0.1", b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\nGET /ws HTTP/1.1\r\n\r\n");
    closed_without_answer(&s, "127.0.0.1", b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c garbage garbage");
    closed_without_answer(&s, "127.0.0.6", b"PROXY TCP4 127.0.0.99 127.0.0.1 5555 80\r\nGET /ws HTTP/1.1\r\n\r\n");
    s.wait_metric("crier_connections_refused_total", &[("reason", "proxy_header_invalid")], IO_TIMEOUT, "2", |v| {
        v == 2.0
    });
    s.wait_metric("crier_connections_refused_total", &[("reason", "proxy_header_untrusted")], IO_TIMEOUT, "1", |v| {
        v == 1.0
    });
    // An untrusted peer without a PROXY header is an ordinary direct client.
    let mut d = open(s.ws, "127.0.0.7", 1, &[]);
    // Nobody else was harmed.
    assert_receive(&s, &mut [&mut a, &mut b, &mut c, &mut d], "through haproxy");
    let deadline = Instant::now() + IO_TIMEOUT;
    // A client leaving gives its place back behind the proxy too.
    a.pop().unwrap().send_close(1000, "").unwrap();
    loop {
        match ws_from("127.0.0.2", v2, "/ws?channels=news", &[]) {
            Ok(_) => break,
            Err(r) => assert!(r.status == 429 && Instant::now() < deadline, "{r:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn proxy_protocol_without_trusted_proxies_does_not_start() {
    let e = ServerBuilder::new(Driver::Epoll).arg("--proxy-protocol").run_expect_exit(Duration::from_secs(10));
    assert!(!e.became_ready && e.status.is_some_and(|s| !s.success()), "{}", e.stderr);
    assert!(e.stderr.contains("--proxy-protocol needs --trusted-proxies"), "{}", e.stderr);
}

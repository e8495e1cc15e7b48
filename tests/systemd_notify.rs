//! crier under systemd's notify protocol (`Type=notify` in systemd/crier.service), with the
//! test playing systemd: it binds its own datagram socket, starts the real binary with
//! NOTIFY_SOCKET pointing at it, and reads what arrives.
//!
//! - READY=1 arrives only when crier accepts connections: a WebSocket upgrade made right
//!   after it succeeds (HTTP 101), and the publisher socket exists.
//! - SIGTERM: STOPPING=1 arrives, the client gets close 1001, and crier exits 0.
//! - With WATCHDOG_USEC set, WATCHDOG=1 keeps arriving.
//!
//! No sleep stands in for readiness; every wait has a deadline; only our own child is
//! signalled, by its PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_crier");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crier-notify-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The crier under test. Dropping it kills it (SIGKILL by PID) if it is still running.
struct Crier {
    child: Child,
    stderr: Receiver<String>,
    log: Vec<String>,
}

impl Crier {
    fn start(dir: &Path, notify: &Path, watchdog_usec: Option<&str>) -> Crier {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--shards", "2"])
            .arg("--publish-socket")
            .arg(dir.join("p.sock"))
            .args(["--drain-timeout", "2s"])
            .env("NOTIFY_SOCKET", notify)
            .env("NO_COLOR", "1")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .env_remove("CRIER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(usec) = watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec);
        }
        let mut child = cmd.spawn().expect("start crier");
        let pipe = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Crier { child, stderr: rx, log: Vec::new() }
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Waits for the `ready ws=<addr> …` log line and returns the WebSocket address.
    fn ready_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.stderr.recv_timeout(left) else {
                panic!("no `ready ws=` line within {STEP_TIMEOUT:?}; stderr so far:\n{}", self.log.join("\n"));
            };
            self.log.push(line.clone());
            if let Some(rest) = line.split("ready ws=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr.parse().unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"));
            }
        }
    }

    /// Waits for the process to exit, at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "crier did not exit within {timeout:?}; stderr:\n{}", self.drain_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn drain_log(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0, "kill(SIGTERM)");
    }
}

impl Drop for Crier {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in sigterm; the child is still ours and unreaped.
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// systemd's side of the notify socket.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { sock, path, seen: Vec::new() }
    }

    /// Reads datagrams until one carries `want` (e.g. "READY=1"), at most `timeout`.
    /// A datagram may hold several newline-separated assignments (sd_notify(3)).
    fn expect(&mut self, want: &str, timeout: Duration, crier: &mut Crier) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {want} on NOTIFY_SOCKET within {timeout:?}; received {:?}; crier stderr:\n{}",
                    self.seen,
                    crier.drain_log()
                );
            }
            self.sock.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("set_read_timeout");
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let found = text.lines().any(|l| l == want);
                    self.seen.extend(text.lines().map(str::to_string));
                    if found {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if let Ok(Some(status)) = crier.child.try_wait() {
                        panic!(
                            "crier exited ({status}) before {want}; received {:?}; stderr:\n{}",
                            self.seen,
                            crier.drain_log()
                        );
                    }
                }
                Err(e) => panic!("recv on notify socket: {e}"),
            }
        }
    }

    fn count(&self, what: &str) -> usize {
        self.seen.iter().filter(|l| *l == what).count()
    }
}

/// Makes a WebSocket upgrade by hand and returns the stream and the response head.
fn upgrade(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT).expect("connect right after READY=1");
    s.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(STEP_TIMEOUT)).unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => panic!("connection closed during the handshake after {:?}", String::from_utf8_lossy(&head)),
            Err(e) => panic!("reading the upgrade response: {e}; got {:?}", String::from_utf8_lossy(&head)),
        }
        assert!(head.len() < 8192, "response head too long");
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Reads server frames until a close frame; returns its status code.
fn read_close_code(s: &mut TcpStream) -> u16 {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("read frame header (expected a close frame)");
        let opcode = h[0] & 0x0f;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).unwrap();
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
        s.read_exact(&mut payload).expect("read frame payload");
        if opcode == 0x8 {
            assert!(payload.len() >= 2, "close frame without a status code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn ready_only_when_accepting_then_stopping_on_sigterm() {
    let dir = TempDir::new();
    let mut notify = NotifySocket::bind(&dir.0);
    let mut crier = Crier::start(&dir.0, &notify.path, None);

    notify.expect("READY=1", START_TIMEOUT, &mut crier);
    let addr = crier.ready_addr();
    let (mut ws, head) = upgrade(addr);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade right after READY=1 must succeed, got:\n{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455 accept value:\n{head}");
    let publish = dir.0.join("p.sock");
    let meta = std::fs::metadata(&publish).unwrap_or_else(|e| panic!("publisher socket {publish:?} at READY=1: {e}"));
    assert!(meta.file_type().is_socket(), "{publish:?} is a socket");
    assert_eq!(notify.count("STOPPING=1"), 0, "no STOPPING=1 before SIGTERM: {:?}", notify.seen);

    crier.sigterm();
    notify.expect("STOPPING=1", STEP_TIMEOUT, &mut crier);
    assert_eq!(read_close_code(&mut ws), 1001, "clients see close 1001 (going away) on shutdown");
    let status = crier.wait_exit(STEP_TIMEOUT);
    assert!(status.success(), "crier exits 0 after draining, got {status}; stderr:\n{}", crier.drain_log());
    let ready_at = notify.seen.iter().position(|l| l == "READY=1");
    let stopping_at = notify.seen.iter().position(|l| l == "STOPPING=1");
    assert!(ready_at < stopping_at, "READY=1 before STOPPING=1: {:?}", notify.seen);
}

#[test]
fn sigterm_right_after_ready_still_drains() {
    // `systemctl start crier && systemctl stop crier`: systemd may send SIGTERM the moment
    // READY=1 arrives. crier must already handle it then (STOPPING=1, exit 0), not die of it.
    let dir = TempDir::new();
    let mut notify = NotifySocket::bind(&dir.0);
    let mut crier = Crier::start(&dir.0, &notify.path, None);
    notify.expect("READY=1", START_TIMEOUT, &mut crier);
    crier.sigterm();
    notify.expect("STOPPING=1", STEP_TIMEOUT, &mut crier);
    let status = crier.wait_exit(STEP_TIMEOUT);
    assert!(
        status.success(),
        "exit 0 after a SIGTERM right after READY=1, got {status}; stderr:\n{}",
        crier.drain_log()
    );
}

#[test]
fn watchdog_pings_arrive_when_watchdog_usec_is_set() {
    let dir = TempDir::new();
    let mut notify = NotifySocket::bind(&dir.0);
    // 200 ms: systemd expects a ping at least every 200 ms, sd_watchdog_enabled(3) says to
    // ping at half that.
    let mut crier = Crier::start(&dir.0, &notify.path, Some("200000"));

    notify.expect("READY=1", START_TIMEOUT, &mut crier);
    let before = notify.count("WATCHDOG=1");
    // Two more pings after READY=1 show they are periodic, not a one-off.
    notify.expect("WATCHDOG=1", STEP_TIMEOUT, &mut crier);
    notify.expect("WATCHDOG=1", STEP_TIMEOUT, &mut crier);
    assert!(notify.count("WATCHDOG=1") >= before + 2);

    crier.sigterm();
    notify.expect("STOPPING=1", STEP_TIMEOUT, &mut crier);
    let status = crier.wait_exit(STEP_TIMEOUT);
    assert!(status.success(), "exit 0, got {status}; stderr:\n{}", crier.drain_log());
}

#[test]
fn no_notify_socket_no_trouble() {
    // Without NOTIFY_SOCKET (a start outside systemd) crier still starts and stops cleanly.
    let dir = TempDir::new();
    let mut crier = Crier::start(&dir.0, Path::new(""), None);
    let addr = crier.ready_addr();
    let (_ws, head) = upgrade(addr);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    crier.sigterm();
    let status = crier.wait_exit(STEP_TIMEOUT);
    assert!(status.success(), "exit 0, got {status}; stderr:\n{}", crier.drain_log());
}

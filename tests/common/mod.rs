//! Shared harness for the integration tests: starts the real `crier` binary, waits for its
//! `ready` log line, and talks to it over real sockets (WebSocket over TCP, the publisher
//! Unix socket, the admin HTTP port).
//!
//! Every blocking read has a timeout and every wait has a deadline, so a broken server makes
//! a test fail, never hang.
#![allow(dead_code, unused_macros)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
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

// ---------------------------------------------------------------------------------------
// Temporary directories (for the publisher socket and config files).
// ---------------------------------------------------------------------------------------

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        // Keep it short: a Unix socket path must fit in 108 bytes.
        let base =
            if std::env::temp_dir().as_os_str().len() <= 40 { std::env::temp_dir() } else { PathBuf::from("/tmp") };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = base.join(format!("crier-t{}-{}-{:x}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), nanos));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Starting the server.
// ---------------------------------------------------------------------------------------

pub struct ServerBuilder {
    driver: Option<String>,
    expect_driver: Option<Driver>,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    omit: Vec<&'static str>,
    publish: Option<PathBuf>,
    block_io_uring: bool,
    dir: TempDir,
}

/// A command that has been run to completion (or killed at its deadline).
pub struct Exited {
    /// `None` when it did not exit before the deadline (it was killed).
    pub status: Option<ExitStatus>,
    pub stderr: String,
    /// True when it printed the `ready` line (it started although the test expected not).
    pub became_ready: bool,
}

impl ServerBuilder {
    pub fn new(driver: Driver) -> ServerBuilder {
        ServerBuilder {
            driver: Some(driver.arg().to_string()),
            expect_driver: Some(driver),
            args: Vec::new(),
            envs: Vec::new(),
            omit: Vec::new(),
            publish: None,
            block_io_uring: false,
            dir: TempDir::new(),
        }
    }

    /// A builder that passes `--driver <value>` verbatim and checks nothing about the result.
    pub fn with_driver_arg(value: &str) -> ServerBuilder {
        let mut b = ServerBuilder::new(Driver::Epoll);
        b.driver = Some(value.to_string());
        b.expect_driver = None;
        b
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// Do not pass one of the harness's default flags (`--listen`, `--admin-listen`,
    /// `--publish-socket`, `--shards`, `--driver`).
    pub fn omit(mut self, flag: &'static str) -> Self {
        self.omit.push(flag);
        self
    }

    /// Use this publisher socket path instead of `<tempdir>/p.sock`.
    pub fn publish_socket(mut self, p: impl Into<PathBuf>) -> Self {
        self.publish = Some(p.into());
        self
    }

    /// Run the server under a seccomp filter that makes `io_uring_setup` (and the other
    /// io_uring syscalls) fail with EPERM, as Docker's default profile does.
    pub fn block_io_uring(mut self) -> Self {
        self.block_io_uring = true;
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn publish_path(&self) -> PathBuf {
        self.publish.clone().unwrap_or_else(|| self.dir.join("p.sock"))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        let defaults: [(&str, OsString); 5] = [
            ("--listen", "127.0.0.1:0".into()),
            ("--admin-listen", "127.0.0.1:0".into()),
            ("--publish-socket", self.publish_path().into_os_string()),
            ("--shards", "2".into()),
            ("--driver", self.driver.clone().unwrap_or_else(|| "auto".into()).into()),
        ];
        for (flag, value) in defaults {
            if !self.omit.contains(&flag) {
                cmd.arg(flag).arg(value);
            }
        }
        cmd.args(&self.args);
        // The tests' own environment must not leak settings into the server.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CRIER_") || k == "RUST_LOG" || k.starts_with("MONOIO_") {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        if self.block_io_uring {
            install_io_uring_blocker(&mut cmd);
        }
        cmd
    }

    /// Start the server and wait for its `ready` line.
    pub fn start(self) -> Server {
        let mut cmd = self.command();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let rx = spawn_line_reader(stderr);
        let mut lines = Vec::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready_line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let is_ready = line.contains("ready ws=");
                    lines.push(line.clone());
                    if is_ready {
                        break line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    kill_pid(pid, libc::SIGKILL);
                    let _ = child.wait();
                    panic!(
                        "server did not print its ready line within {READY_TIMEOUT:?}; stderr:\n{}",
                        lines.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_pid_timeout(&mut child, Duration::from_secs(5));
                    panic!("server exited before ready ({status:?}); stderr:\n{}", lines.join("\n"));
                }
            }
        };
        let ready = parse_ready(&ready_line).unwrap_or_else(|| panic!("cannot parse ready line: {ready_line:?}"));
        let server = Server {
            child,
            pid,
            ws: ready.ws,
            admin: ready.admin,
            publish: PathBuf::from(&ready.publish),
            driver: ready.driver.clone(),
            shards: ready.shards,
            ready_line,
            log: Mutex::new(LogState { rx, lines }),
            dir: self.dir,
        };
        if let Some(d) = self.expect_driver {
            assert_eq!(
                server.driver,
                d.reported(),
                "ready line reports another driver than requested: {}",
                server.ready_line
            );
        }
        assert_eq!(
            server.publish,
            self.publish.unwrap_or_else(|| server.dir.join("p.sock")),
            "ready line reports another publish socket: {}",
            server.ready_line
        );
        server
    }

    /// Spawn without waiting for the ready line (for runs where it is filtered out of the
    /// log). Returns the child, its stderr lines, the temp dir and the publisher socket path.
    pub fn spawn(self) -> (Child, Receiver<String>, TempDir, PathBuf) {
        let mut cmd = self.command();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let rx = spawn_line_reader(child.stderr.take().unwrap());
        let path = self.publish_path();
        (child, rx, self.dir, path)
    }

    /// Run the server expecting it to exit by itself (a configuration error, say).
    pub fn run_expect_exit(self, timeout: Duration) -> Exited {
        let mut cmd = self.command();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let pid = child.id();
        let rx = spawn_line_reader(child.stderr.take().unwrap());
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        let mut became_ready = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("ready ws=") {
                        became_ready = true;
                        lines.push(line);
                        kill_pid(pid, libc::SIGKILL);
                        let _ = child.wait();
                        return Exited { status: None, stderr: lines.join("\n"), became_ready };
                    }
                    lines.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    kill_pid(pid, libc::SIGKILL);
                    let _ = child.wait();
                    return Exited { status: None, stderr: lines.join("\n"), became_ready };
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = wait_pid_timeout(&mut child, Duration::from_secs(5));
        Exited { status, stderr: lines.join("\n"), became_ready }
    }
}

struct Ready {
    ws: SocketAddr,
    admin: Option<SocketAddr>,
    publish: String,
    driver: String,
    shards: usize,
}

fn parse_ready(line: &str) -> Option<Ready> {
    let at = line.find("ready ws=")?;
    let mut ws = None;
    let mut admin = None;
    let mut publish = None;
    let mut driver = None;
    let mut shards = None;
    for tok in line[at + "ready ".len()..].split_whitespace() {
        let Some((k, v)) = tok.split_once('=') else {
            continue;
        };
        let v = v.trim_matches('"');
        match k {
            "ws" => ws = v.parse().ok(),
            "admin" => admin = Some(v.parse().ok()),
            "publish" => publish = Some(v.to_string()),
            "driver" => driver = Some(v.to_string()),
            "shards" => shards = v.parse().ok(),
            _ => {}
        }
    }
    Some(Ready { ws: ws?, admin: admin?, publish: publish?, driver: driver?, shards: shards? })
}

/// Forward a child's output, line by line and without ANSI colour codes, into a channel.
pub fn spawn_line_reader(stderr: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(&String::from_utf8_lossy(&buf));
                    let line = line.trim_end_matches(['\r', '\n']).to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn kill_pid(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a PID this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn wait_pid_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct LogState {
    rx: Receiver<String>,
    lines: Vec<String>,
}

/// A running `crier serve`. Killed (SIGKILL) on drop if it is still running.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub ws: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub publish: PathBuf,
    pub driver: String,
    pub shards: usize,
    pub ready_line: String,
    log: Mutex<LogState>,
    pub dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_pid(self.pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- crier (pid {}) stderr ----\n{}\n---- end of crier stderr ----", self.pid, self.log_text());
        }
    }
}

impl Server {
    pub fn builder(driver: Driver) -> ServerBuilder {
        ServerBuilder::new(driver)
    }

    pub fn start(driver: Driver) -> Server {
        ServerBuilder::new(driver).start()
    }

    /// Every stderr line seen so far (including the ones before `ready`).
    pub fn log_lines(&self) -> Vec<String> {
        let mut st = self.log.lock().unwrap();
        while let Ok(l) = st.rx.try_recv() {
            st.lines.push(l);
        }
        st.lines.clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Wait until a stderr line satisfies `pred`; returns it, or None at the deadline.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut st = self.log.lock().unwrap();
                while let Ok(l) = st.rx.try_recv() {
                    st.lines.push(l);
                }
                if let Some(l) = st.lines.iter().find(|l| pred(l)) {
                    return Some(l.clone());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        kill_pid(self.pid, sig);
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Wait for the process to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_pid_timeout(&mut self.child, timeout)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("crier exited unexpectedly: {st:?}\n{}", self.log_text());
        }
    }

    /// VmRSS of the server process in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("read /proc/<pid>/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
        kb * 1024
    }

    // ---- admin HTTP ------------------------------------------------------------------

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("admin listener is off")
    }

    pub fn admin_get(&self, path: &str) -> HttpResponse {
        http_get(self.admin_addr(), path).unwrap_or_else(|e| panic!("GET {path} on admin: {e}"))
    }

    pub fn metrics_text(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        String::from_utf8(r.body).expect("metrics are UTF-8")
    }

    /// Sum of every series of `name` whose labels include `labels`; None if there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics_text(), name, labels)
    }

    /// Like `metric`, with a missing series read as 0.
    pub fn metric0(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).unwrap_or(0.0)
    }

    /// Poll a metric until `pred` holds; panics with the last value at the deadline.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        what: &str,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics_text();
            let v = metric_value(&text, name, labels);
            if let Some(v) = v
                && pred(v)
            {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "metric {name}{labels:?} never became {what} within {timeout:?} (last: {v:?}); /metrics:\n{text}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `crier_connections` (summed over shards) equals `n`.
    pub fn wait_connections(&self, n: usize) {
        self.wait_metric("crier_connections", &[], Duration::from_secs(10), &format!("{n}"), |v| v as usize == n);
    }

    // ---- publishing --------------------------------------------------------------------

    pub fn publisher(&self) -> Publisher {
        Publisher::connect(&self.publish)
    }

    /// Publish one text message on a fresh publisher connection; returns its seq.
    pub fn publish(&self, channel: &str, payload: &str) -> u64 {
        self.publisher().publish(channel, payload.as_bytes(), false)
    }

    pub fn publish_binary(&self, channel: &str, payload: &[u8]) -> u64 {
        self.publisher().publish(channel, payload, true)
    }

    // ---- subscribers -------------------------------------------------------------------

    /// Raw client, upgraded on `target` (e.g. `/ws?channels=a`), panics unless 101.
    pub fn ws(&self, target: &str) -> WsClient {
        WsClient::connect(self.ws, target)
    }

    /// Raw client offering permessage-deflate; panics unless it was negotiated.
    pub fn ws_deflate(&self, target: &str) -> WsClient {
        let c = WsClient::connect_with(
            self.ws,
            target,
            &[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")],
        )
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
        assert_eq!(
            c.response.header("sec-websocket-extensions"),
            Some(DEFLATE_ANSWER),
            "permessage-deflate not negotiated as the README says"
        );
        c
    }

    /// A tungstenite client (a WebSocket implementation we did not write).
    pub fn tung(&self, target: &str) -> tungstenite::WebSocket<TcpStream> {
        tung_connect(self.ws, target)
    }

    /// Check the server still works: a fresh connection receives a broadcast (on a channel
    /// of its own, so other subscribers of the test do not see the probes).
    pub fn assert_serving(&self) {
        let mut c = self.ws("/ws?channels=probe.serving");
        // The subscription may be registered just after the 101; retry the probe
        // publish a few times rather than sleeping.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        loop {
            n += 1;
            let probe = format!("still-serving-{n}");
            self.publish("probe.serving", &probe);
            match c.recv(Duration::from_millis(500)) {
                Ok(m) => {
                    // An earlier probe may arrive; any probe proves delivery.
                    assert!(m.text().starts_with("still-serving-"), "unexpected message {m:?}");
                    return;
                }
                Err(WsEnd::Timeout) if Instant::now() < deadline => continue,
                Err(e) => panic!("server no longer serving broadcasts: {e:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus text parsing.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_end, has_labels) = match line.find(['{', ' ']) {
            Some(i) => (i, line.as_bytes()[i] == b'{'),
            None => continue,
        };
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if has_labels {
            let bytes = rest.as_bytes();
            let mut i = 1;
            loop {
                while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    i += 1;
                    break;
                }
                let ks = i;
                while i < bytes.len() && bytes[i] != b'=' {
                    i += 1;
                }
                let key = rest[ks..i].trim().to_string();
                i += 1; // '='
                if i >= bytes.len() || bytes[i] != b'"' {
                    break;
                }
                i += 1;
                let mut val = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                        val.push(match bytes[i] {
                            b'n' => '\n',
                            c => c as char,
                        });
                    } else {
                        val.push(bytes[i] as char);
                    }
                    i += 1;
                }
                i += 1; // closing quote
                labels.insert(key, val);
            }
            rest = &rest[i.min(rest.len())..];
        }
        let Some(v) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// Sum of the series of `name` whose labels include `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in parse_metrics(text) {
        if s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// Plain HTTP.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} body={:?}", self.status_line, self.headers, String::from_utf8_lossy(&self.body))
    }
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(head: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::other(format!("not an HTTP response: {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(HttpResponse { status, status_line, headers, body: Vec::new() })
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Read one HTTP response (head and body) from `stream`. `buf` holds bytes already read;
/// on return it holds what followed the response head (for a 101) or is empty.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(e) = find_head_end(buf) {
            break e;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete response head within {timeout:?}; got {:?}", String::from_utf8_lossy(buf)),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(buf)
                    ),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("{e} (after {:?})", String::from_utf8_lossy(buf))));
            }
        }
    };
    let mut resp = parse_head(&buf[..head_end])?;
    let rest: Vec<u8> = buf[head_end..].to_vec();
    buf.clear();
    if resp.status == 101 {
        *buf = rest;
        return Ok(resp);
    }
    // Body: Content-Length if given, else until EOF (or a short quiet period).
    let mut body = rest;
    let want = resp.header("content-length").and_then(|v| v.parse::<usize>().ok());
    loop {
        if let Some(n) = want
            && body.len() >= n
        {
            body.truncate(n);
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = if want.is_some() { left } else { left.min(Duration::from_secs(2)) };
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    resp.body = body;
    Ok(resp)
}

/// Send raw bytes to `addr` and read one HTTP response.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    if let Err(e) = s.write_all(request) {
        // The server may answer and close before reading everything; try to read anyway.
        if !is_reset(&e) {
            return Err(e);
        }
    }
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, IO_TIMEOUT)
}

pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    http_raw(addr, format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
}

/// A well-formed WebSocket upgrade request for `target` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    let has = |n: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("Sec-WebSocket-Key") {
        req.push_str(&format!("Sec-WebSocket-Key: {WS_KEY}\r\n"));
    }
    if !has("Sec-WebSocket-Version") {
        req.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    for (k, v) in extra {
        if !v.is_empty() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    req
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket client.
// ---------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: &[u8] = &self.payload[..self.payload.len().min(64)];
        write!(
            f,
            "Frame {{ fin: {}, rsv: {:03b}, opcode: {:#x}, len: {}, payload: {:?}{} }}",
            self.fin,
            self.rsv,
            self.opcode,
            self.payload.len(),
            String::from_utf8_lossy(shown),
            if self.payload.len() > 64 { "…" } else { "" }
        )
    }
}

impl Frame {
    pub fn rsv1(&self) -> bool {
        self.rsv & RSV1 != 0
    }
    /// Close code of a close frame (None for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A complete data message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub opcode: u8,
    pub data: Vec<u8>,
    /// The first frame had RSV1 set (the payload was deflated on the wire).
    pub compressed: bool,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: &[u8] = &self.data[..self.data.len().min(64)];
        write!(
            f,
            "Message {{ {}, len: {}, compressed: {}, data: {:?}{} }}",
            match self.opcode {
                OP_TEXT => "text",
                OP_BINARY => "binary",
                _ => "?",
            },
            self.data.len(),
            self.compressed,
            String::from_utf8_lossy(shown),
            if self.data.len() > 64 { "…" } else { "" }
        )
    }
}

impl Message {
    pub fn is_text(&self) -> bool {
        self.opcode == OP_TEXT
    }
    pub fn is_binary(&self) -> bool {
        self.opcode == OP_BINARY
    }
    pub fn text(&self) -> &str {
        assert!(self.is_text(), "expected a text message, got {self:?}");
        std::str::from_utf8(&self.data).expect("text message is valid UTF-8")
    }
}

/// How reading from a WebSocket ended instead of yielding what was asked for.
#[derive(Debug)]
pub enum WsEnd {
    /// The server sent a close frame (code, reason).
    Close(Option<u16>, String),
    /// TCP EOF without a close frame.
    Eof,
    /// Connection reset.
    Reset,
    /// Nothing within the timeout.
    Timeout,
    Io(io::Error),
    /// The server sent something that is not valid per RFC 6455.
    Protocol(String),
}

pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub response: HttpResponse,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
    /// Answer pings automatically while reading data messages.
    pub auto_pong: bool,
    mask_state: u64,
    /// Pings seen while reading data messages.
    pub pings_seen: usize,
}

impl WsClient {
    pub fn connect(addr: SocketAddr, target: &str) -> WsClient {
        Self::connect_with(addr, target, &[]).unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
    }

    /// Upgrade with extra request headers; Err(response) if the answer is not 101.
    pub fn connect_with(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Result<WsClient, HttpResponse> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::handshake(stream, addr, target, extra)
    }

    /// Upgrade on an already connected stream (e.g. one with a small receive buffer).
    pub fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        extra: &[(&str, &str)],
    ) -> Result<WsClient, HttpResponse> {
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let req = upgrade_request(addr, target, extra);
        stream.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("send upgrade request: {e}"));
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("reading the upgrade response to {target}: {e}"));
        if resp.status != 101 {
            return Err(resp);
        }
        assert_eq!(resp.header("sec-websocket-accept"), Some(WS_ACCEPT), "wrong Sec-WebSocket-Accept: {resp:?}");
        let deflate = resp.header("sec-websocket-extensions").is_some_and(|v| v.contains("permessage-deflate"));
        Ok(WsClient {
            stream,
            buf,
            response: resp,
            deflate,
            auto_pong: false,
            mask_state: 0x9E37_79B9_7F4A_7C15,
            pings_seen: 0,
        })
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), WsEnd> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WsEnd::Timeout);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(WsEnd::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(WsEnd::Timeout),
                Err(e) if is_reset(&e) => return Err(WsEnd::Reset),
                Err(e) => return Err(WsEnd::Io(e)),
            }
        }
    }

    /// Parse one frame from the buffer if complete.
    fn take_frame(&mut self) -> Result<Option<Frame>, WsEnd> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = (b[0] >> 4) & 0x7;
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let mut len = (b[1] & 0x7F) as u64;
        let mut pos = 2;
        if len == 126 {
            if b.len() < 4 {
                return Ok(None);
            }
            len = u16::from_be_bytes([b[2], b[3]]) as u64;
            pos = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return Ok(None);
            }
            len = u64::from_be_bytes(b[2..10].try_into().unwrap());
            pos = 10;
        }
        if masked {
            return Err(WsEnd::Protocol("server sent a masked frame (RFC 6455 5.1 forbids it)".into()));
        }
        if len > 64 * 1024 * 1024 {
            return Err(WsEnd::Protocol(format!("frame length {len} is absurd")));
        }
        let total = pos + len as usize;
        if b.len() < total {
            return Ok(None);
        }
        let payload = b[pos..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Frame { fin, rsv, opcode, payload }))
    }

    /// Read the next frame of any kind.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, WsEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(f);
            }
            self.fill(deadline)?;
        }
    }

    /// Read the next data message (reassembling fragments, inflating RSV1 payloads).
    /// Pings and pongs are skipped (answered when `auto_pong`); a close frame ends it.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message, WsEnd> {
        let deadline = Instant::now() + timeout;
        let mut partial: Option<Message> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.read_frame(left)?;
            match f.opcode {
                OP_PING => {
                    self.pings_seen += 1;
                    if self.auto_pong {
                        let _ = self.send_frame(true, 0, OP_PONG, &f.payload, true);
                    }
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let reason = if f.payload.len() > 2 {
                        String::from_utf8_lossy(&f.payload[2..]).into_owned()
                    } else {
                        String::new()
                    };
                    return Err(WsEnd::Close(f.close_code(), reason));
                }
                OP_TEXT | OP_BINARY => {
                    if partial.is_some() {
                        return Err(WsEnd::Protocol(format!(
                            "new data frame while a fragmented message is open: {f:?}"
                        )));
                    }
                    if f.rsv1() && !self.deflate {
                        return Err(WsEnd::Protocol(format!("RSV1 set without permessage-deflate: {f:?}")));
                    }
                    if f.rsv & (RSV2 | RSV3) != 0 {
                        return Err(WsEnd::Protocol(format!("RSV2/RSV3 set: {f:?}")));
                    }
                    let compressed = f.rsv1();
                    let m = Message { opcode: f.opcode, data: f.payload, compressed };
                    if f.fin {
                        return Ok(finish_message(m));
                    }
                    partial = Some(m);
                }
                OP_CONT => {
                    let Some(mut m) = partial.take() else {
                        return Err(WsEnd::Protocol(format!("continuation frame without a start: {f:?}")));
                    };
                    m.data.extend_from_slice(&f.payload);
                    if f.fin {
                        return Ok(finish_message(m));
                    }
                    partial = Some(m);
                }
                op => {
                    return Err(WsEnd::Protocol(format!("server sent reserved opcode {op:#x}")));
                }
            }
        }
    }

    /// Receive a data message or panic with what happened instead.
    pub fn expect_msg(&mut self) -> Message {
        match self.recv(IO_TIMEOUT) {
            Ok(m) => m,
            Err(e) => panic!("expected a message, got {e:?}"),
        }
    }

    pub fn expect_text(&mut self) -> String {
        let m = self.expect_msg();
        m.text().to_string()
    }

    /// Assert nothing (no data message, no close) arrives for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        match self.recv(quiet) {
            Err(WsEnd::Timeout) => {}
            other => panic!("expected nothing for {quiet:?}, got {other:?}"),
        }
    }

    /// Read (discarding data) until the server's close frame; return its code.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(f) if f.opcode == OP_CLOSE => return f.close_code(),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e:?}"),
            }
        }
    }

    /// Read until the connection ends; return how (close frame, EOF, reset, timeout).
    pub fn wait_end(&mut self, timeout: Duration) -> WsEnd {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(f) if f.opcode == OP_CLOSE => {
                    return WsEnd::Close(f.close_code(), String::new());
                }
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    }

    /// After a close, the server must close TCP: expect EOF (or reset) within `timeout`.
    pub fn expect_tcp_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(()) => continue,
                Err(WsEnd::Eof) | Err(WsEnd::Reset) => return,
                Err(e) => panic!("expected the server to close TCP, got {e:?}"),
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift; any key works, it just must not be all zero every time.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_be_bytes()
    }

    /// Send one frame with any flags. `masked: false` sends a (forbidden) unmasked frame.
    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> io::Result<()> {
        let mask = self.next_mask();
        let bytes = encode_frame(fin, rsv, opcode, payload, masked.then_some(mask));
        self.stream.write_all(&bytes)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_text(&mut self, s: &str) -> io::Result<()> {
        self.send_frame(true, 0, OP_TEXT, s.as_bytes(), true)
    }

    pub fn send_binary(&mut self, b: &[u8]) -> io::Result<()> {
        self.send_frame(true, 0, OP_BINARY, b, true)
    }

    pub fn send_ping(&mut self, b: &[u8]) -> io::Result<()> {
        self.send_frame(true, 0, OP_PING, b, true)
    }

    pub fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.send_frame(true, 0, OP_CLOSE, &p, true)
    }

    /// Send a message deflated per RFC 7692 (RSV1, no context takeover).
    pub fn send_compressed(&mut self, opcode: u8, data: &[u8]) -> io::Result<()> {
        let z = deflate_raw(data);
        self.send_frame(true, RSV1, opcode, &z, true)
    }
}

fn finish_message(mut m: Message) -> Message {
    if m.compressed {
        m.data = inflate_raw(&m.data);
    }
    m
}

pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

// ---------------------------------------------------------------------------------------
// permessage-deflate helpers (RFC 7692 section 7.2).
// ---------------------------------------------------------------------------------------

/// Inflate one message payload: append 00 00 ff ff and raw-inflate with a fresh context
/// (the server promises server_no_context_takeover, so a fresh context must always work).
pub fn inflate_raw(data: &[u8]) -> Vec<u8> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut input = data.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4 + 1024);
    loop {
        if out.capacity() - out.len() < 32 * 1024 {
            out.reserve(64 * 1024);
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let st = d
            .decompress_vec(&input[in0 as usize..], &mut out, FlushDecompress::Sync)
            .unwrap_or_else(|e| panic!("server's deflated payload does not inflate: {e}"));
        if st == Status::StreamEnd {
            break;
        }
        let consumed_all = d.total_in() as usize == input.len();
        let room_left = out.capacity() > out.len();
        if consumed_all && room_left {
            break;
        }
        if d.total_in() == in0 && d.total_out() == out0 && room_left {
            panic!("inflate made no progress on the server's payload");
        }
    }
    out
}

/// Deflate a message as a client would (sync flush, trailing 00 00 ff ff removed).
pub fn deflate_raw(data: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.flush().unwrap();
    let mut v = e.get_ref().clone();
    assert!(v.ends_with(&[0, 0, 0xff, 0xff]), "sync flush marker missing");
    v.truncate(v.len() - 4);
    v
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A compressible JSON-ish text payload of about `n` bytes.
pub fn compressible_text(n: usize) -> String {
    let mut s = String::with_capacity(n + 64);
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("{{\"flight\":\"BA{:03}\",\"gate\":\"B32\",\"status\":\"boarding\"}},", i % 7));
        i += 1;
    }
    s.truncate(n);
    s
}

// ---------------------------------------------------------------------------------------
// tungstenite as a second, independent client.
// ---------------------------------------------------------------------------------------

pub fn tung_connect(addr: SocketAddr, target: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}{target}");
    let (ws, resp) =
        tungstenite::client(url.as_str(), stream).unwrap_or_else(|e| panic!("tungstenite handshake with {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Next data message from a tungstenite client (pings and pongs are skipped).
pub fn tung_recv(ws: &mut tungstenite::WebSocket<TcpStream>) -> tungstenite::Message {
    loop {
        match ws.read() {
            Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => return m,
            Ok(tungstenite::Message::Close(c)) => panic!("tungstenite: server closed: {c:?}"),
            Ok(_) => continue,
            Err(e) => panic!("tungstenite read: {e}"),
        }
    }
}

pub fn tung_recv_text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    match tung_recv(ws) {
        tungstenite::Message::Text(t) => t.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Publisher protocol over the Unix socket.
// ---------------------------------------------------------------------------------------

pub struct Publisher {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

/// Bytes of one `PUB` command; `kind` None leaves the type out (defaults to text).
pub fn pub_command(channel: &str, payload: &[u8], kind: Option<&str>) -> Vec<u8> {
    let mut v = match kind {
        Some(k) => format!("PUB {channel} {} {k}\r\n", payload.len()),
        None => format!("PUB {channel} {}\r\n", payload.len()),
    }
    .into_bytes();
    v.extend_from_slice(payload);
    v.extend_from_slice(b"\r\n");
    v
}

impl Publisher {
    pub fn connect(path: &Path) -> Publisher {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect publisher socket {}: {e}", path.display()));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Publisher { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Next reply line without its line ending; None on EOF (or reset).
    pub fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                assert!(
                    buf.ends_with(b"\r\n"),
                    "publisher reply must end in CRLF: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                Some(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string())
            }
            Err(e) if is_reset(&e) => None,
            Err(e) => panic!("reading a publisher reply: {e}"),
        }
    }

    pub fn expect_line(&mut self) -> String {
        self.line().expect("publisher connection closed, expected a reply")
    }

    /// Publish and return the seq; panics on a refusal.
    pub fn publish(&mut self, channel: &str, payload: &[u8], binary: bool) -> u64 {
        let kind = if binary { "binary" } else { "text" };
        self.send(&pub_command(channel, payload, Some(kind))).expect("send PUB");
        let l = self.expect_line();
        parse_ok(&l)
    }

    /// Expect EOF: the server closed this publisher connection.
    pub fn expect_closed(&mut self) {
        self.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 256];
        match self.reader.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the server to close the publisher connection, got {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if is_reset(&e) => {}
            Err(e) => panic!("expected the publisher connection closed, got {e}"),
        }
    }
}

pub fn parse_ok(line: &str) -> u64 {
    line.strip_prefix("+OK ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected +OK <seq>, got {line:?}"))
}

// ---------------------------------------------------------------------------------------
// Running `crier <subcommand>` as a plain command.
// ---------------------------------------------------------------------------------------

pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Debug for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status={:?}\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Run `crier args…` with `stdin`, extra environment, and a deadline.
pub fn run_crier(args: &[&str], stdin: Option<&[u8]>, envs: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CRIER_") || k == "RUST_LOG" {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn crier");
    let pid = child.id();
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&input);
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(out)) => CmdOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
        },
        Ok(Err(e)) => panic!("waiting for crier {args:?}: {e}"),
        Err(_) => {
            kill_pid(pid, libc::SIGKILL);
            panic!("crier {args:?} did not finish within 30 s");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Docker-like seccomp filter that blocks io_uring.
// ---------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn install_io_uring_blocker(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // Classic BPF opcodes.
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
    const BPF_JEQ_K: u16 = 0x15; // BPF_JMP (0x05) | BPF_JEQ (0x10) | BPF_K (0x00)
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    // struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; }
    const OFF_NR: u32 = 0;
    const OFF_ARCH: u32 = 4;
    // io_uring_setup, io_uring_enter, io_uring_register: 425, 426, 427 on both arches.
    const EPERM_RET: u32 = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32);
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let filter: [libc::sock_filter; 8] = [
        ins(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        ins(BPF_JEQ_K, 0, 5, AUDIT_ARCH), // other arch → allow (index 7)
        ins(BPF_LD_W_ABS, 0, 0, OFF_NR),
        // Jump offsets count from the next instruction.
        ins(BPF_JEQ_K, 2, 0, 425), // io_uring_setup → EPERM (index 6)
        ins(BPF_JEQ_K, 1, 0, 426), // io_uring_enter → EPERM
        ins(BPF_JEQ_K, 0, 1, 427), // io_uring_register → EPERM; else allow (index 7)
        ins(BPF_RET_K, 0, 0, EPERM_RET),
        ins(BPF_RET_K, 0, 0, ALLOW),
    ];
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl on
    // data that was built before the fork (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let prog = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn install_io_uring_blocker(_cmd: &mut Command) {
    panic!("the io_uring seccomp blocker knows only x86_64 and aarch64");
}

/// The kernel allows io_uring for unprivileged-by-sysctl use here (io_uring_disabled = 0).
pub fn kernel_allows_io_uring() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim() == "0").unwrap_or(true)
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

// ---------------------------------------------------------------------------------------
// The README's tables, read at test time so the tests follow the contract as it grows.
// ---------------------------------------------------------------------------------------

pub fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("read README.md")
}

/// Cells of every Markdown table row whose first cell is one code span starting with
/// `prefix` (e.g. "`--" for the settings table, "`crier_" for the metrics table).
pub fn readme_rows(prefix: &str) -> Vec<Vec<String>> {
    readme()
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|cells| {
            cells.first().is_some_and(|c| c.starts_with(prefix) && c.ends_with('`') && c.matches('`').count() == 2)
        })
        .collect()
}

/// The first `code` span of a Markdown cell.
pub fn first_code(cell: &str) -> Option<String> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(cell[start..start + len].to_string())
}

/// The settings of the README table: (name without `--`, default cell).
pub fn readme_settings() -> Vec<(String, String)> {
    let rows = readme_rows("`--");
    assert!(!rows.is_empty(), "no settings table found in README.md");
    rows.into_iter()
        .map(|c| {
            let name = first_code(&c[0]).unwrap();
            (name.trim_start_matches("--").to_string(), c.get(1).cloned().unwrap_or_default())
        })
        .collect()
}

/// The metric names of the README table (labels stripped).
pub fn readme_metrics() -> Vec<String> {
    let rows = readme_rows("`crier_");
    assert!(!rows.is_empty(), "no metrics table found in README.md");
    rows.into_iter()
        .map(|c| {
            let m = first_code(&c[0]).unwrap();
            m.split('{').next().unwrap().to_string()
        })
        .collect()
}

impl WsClient {
    /// The socket and the bytes already read past the upgrade response (frames the server
    /// sent right after its 101), for tests that parse frames themselves.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

// ---- h-fds helpers ----

impl ServerBuilder {
    /// Start the server with RLIMIT_NOFILE (soft and hard) set to `n` in the child, as on a
    /// box with a low descriptor limit that crier cannot raise; waits for `ready` like `start`.
    pub fn start_with_nofile(self, n: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command();
        let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
        // SAFETY: runs in the forked child before exec; setrlimit only reads `lim`, which was
        // built before the fork (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let pid = child.id();
        let rx = spawn_line_reader(child.stderr.take().unwrap());
        let mut lines = Vec::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready_line = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("ready ws=") => {
                    lines.push(line.clone());
                    break line;
                }
                Ok(line) => lines.push(line),
                Err(_) => {
                    kill_pid(pid, libc::SIGKILL);
                    let _ = child.wait();
                    panic!("server with RLIMIT_NOFILE {n} did not become ready; stderr:\n{}", lines.join("\n"));
                }
            }
        };
        let ready = parse_ready(&ready_line).unwrap_or_else(|| panic!("cannot parse ready line: {ready_line:?}"));
        Server {
            child,
            pid,
            ws: ready.ws,
            admin: ready.admin,
            publish: PathBuf::from(&ready.publish),
            driver: ready.driver,
            shards: ready.shards,
            ready_line,
            log: Mutex::new(LogState { rx, lines }),
            dir: self.dir,
        }
    }
}

impl Server {
    /// Descriptors the server process holds now (entries of /proc/<pid>/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map(|d| d.count()).unwrap_or(0)
    }

    /// Connected TCP sockets the server holds on its WebSocket port (accepted, whether in
    /// the handshake or upgraded, or being refused): its socket descriptors matched against
    /// /proc/net/tcp.
    pub fn ws_sockets_held(&self) -> usize {
        let mut inodes = std::collections::HashSet::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            for e in dir.flatten() {
                if let Ok(target) = std::fs::read_link(e.path()) {
                    let t = target.to_string_lossy();
                    if let Some(ino) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                        inodes.insert(ino.to_string());
                    }
                }
            }
        }
        let port = format!(":{:04X}", self.ws.port());
        // Counted by inode: the kernel's table can list a socket twice while it changes.
        let mut seen = std::collections::HashSet::new();
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{}/net/{table}", self.pid)).unwrap_or_default();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                if f.len() > 9 && f[1].ends_with(&port) && f[3] != "0A" && inodes.contains(f[9]) {
                    seen.insert(f[9].to_string());
                }
            }
        }
        seen.len()
    }
}

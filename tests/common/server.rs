//! Temporary directories and starting the real server: `ServerBuilder`, `Server`.

use super::*;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

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
        without_outside_settings(&mut cmd);
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

pub(crate) fn kill_pid(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a PID this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

pub(crate) fn wait_pid_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

// Descriptor limits: a child with a low RLIMIT_NOFILE, and counting what it holds.

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
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
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

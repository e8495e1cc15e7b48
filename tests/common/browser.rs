//! Headless Chromium for the browser tests: `tests/browser/run.mjs` drives Debian's
//! `/usr/bin/chromium` through playwright-core (from `tests/browser/node_modules`; both
//! installed by scripts/test.sh), opens `tests/browser/page.html`, which imports crier.js
//! from the given crier base URL (a crier, or NGINX in front of several), subscribes, and
//! reports every event as one line.

use super::spawn_line_reader;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound of every wait for the page.
/// `tests/browser`, once Chromium and playwright-core are known to be there: a test that
/// needs them fails with the command that installs what is missing.
pub fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "this test needs Debian's chromium at {CHROMIUM} (scripts/test.sh installs it: apt-get install chromium)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "this test needs playwright-core in tests/browser/node_modules (scripts/test.sh installs it: \
         cd tests/browser && npm ci)"
    );
    dir
}

pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// `tests/browser/run.mjs` and the headless Chromium it drives.
pub struct Browser {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every line read so far (for failure messages).
    transcript: Vec<String>,
}

impl Browser {
    pub fn start(crier_http: &str, channels: &str, last: u32) -> Browser {
        Self::launch(crier_http, channels, last, None)
    }

    /// The page takes its token from its backend (`GET /token` on run.mjs, answering
    /// `first` until told otherwise with [`Browser::command`] `token <jwt> <delayMs>`).
    pub fn start_with_token(crier_http: &str, channels: &str, first: &str) -> Browser {
        Self::launch(crier_http, channels, 0, Some(first))
    }

    fn launch(crier_http: &str, channels: &str, last: u32, token: Option<&str>) -> Browser {
        let dir = browser_dir();
        let mut child = Command::new("node")
            .arg(dir.join("run.mjs"))
            .args([crier_http, channels, &last.to_string()])
            .args(token.map(|_| "token"))
            .env("CRIER_BROWSER_TOKEN", token.unwrap_or(""))
            .env("CHROMIUM", CHROMIUM)
            .env("CRIER_BROWSER_TIMEOUT_MS", "150000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that Chromium can be stopped with it if need be.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node (is Node.js installed?): {e}"));
        let pid = child.id();
        let lines = spawn_line_reader(child.stdout.take().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        Browser { child, pid, stdin, lines, stderr, transcript: Vec::new() }
    }

    pub fn context(&self) -> String {
        format!(
            "page transcript:\n  {}\nrun.mjs stderr:\n{}",
            self.transcript.join("\n  "),
            self.stderr.lock().unwrap()
        )
    }

    /// The next line from the page; panics on a `fatal` or `error` line, or at the deadline.
    pub fn next(&mut self, deadline: Instant, waiting_for: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.transcript.push(line.clone());
                if line.starts_with("fatal") || line.starts_with("error") {
                    panic!("the page reported a failure: {line}\n{}", self.context());
                }
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("timed out waiting for {waiting_for}\n{}", self.context())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.child.try_wait();
                panic!("run.mjs ended ({st:?}) while waiting for {waiting_for}\n{}", self.context())
            }
        }
    }

    /// Read lines until one starts with `prefix`; returns it and the lines before it.
    pub fn until(&mut self, prefix: &str) -> (String, Vec<String>) {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let line = self.next(deadline, &format!("a line starting {prefix:?}"));
            if line.starts_with(prefix) {
                return (line, before);
            }
            before.push(line);
        }
    }

    /// Lines that arrive within `quiet` (none is expected, usually).
    pub fn drain_for(&mut self, quiet: Duration) -> Vec<String> {
        let deadline = Instant::now() + quiet;
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.transcript.push(line.clone());
            out.push(line);
        }
        out
    }

    pub fn command(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("run.mjs stdin is open");
        let sent = writeln!(stdin, "{cmd}").and_then(|()| stdin.flush());
        if let Err(e) = sent {
            panic!("sending {cmd:?} to run.mjs: {e}\n{}", self.context());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of stdin asks run.mjs to close Chromium and exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut signalled = false;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() >= deadline {
                // SAFETY: signals to the process group this test created for run.mjs
                // (its id is run.mjs's PID); nothing else is in it.
                unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
                let _ = self.child.wait();
                break;
            }
            if !signalled && Instant::now() + Duration::from_secs(5) >= deadline {
                // SAFETY: signal to the PID of the child this test spawned.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
                signalled = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.context());
        }
    }
}

/// One `message <channel> <seq> <epoch> <text|binary> <data>` line from the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMsg {
    pub channel: String,
    pub seq: u64,
    pub epoch: String,
    pub binary: bool,
    /// The text, or the bytes in hex.
    pub data: String,
}

pub fn page_msg(line: &str) -> Option<PageMsg> {
    let rest = line.strip_prefix("message ")?;
    let mut f = rest.splitn(5, ' ');
    let channel = f.next()?.to_string();
    let seq = f.next()?.parse().ok()?;
    let epoch = f.next()?.to_string();
    let binary = match f.next()? {
        "binary" => true,
        "text" => false,
        _ => return None,
    };
    let data = f.next().unwrap_or("").to_string();
    Some(PageMsg { channel, seq, epoch, binary, data })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Receive page lines until every channel in `want` has delivered up to its seq; returns
/// the messages per channel. Panics on a gap or reset line.
pub fn collect_until(b: &mut Browser, want: &[(&str, u64)]) -> BTreeMap<String, Vec<PageMsg>> {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    let mut got: BTreeMap<String, Vec<PageMsg>> = BTreeMap::new();
    let done = |got: &BTreeMap<String, Vec<PageMsg>>| {
        want.iter().all(|(ch, seq)| got.get(*ch).and_then(|v| v.last()).is_some_and(|m| m.seq >= *seq))
    };
    while !done(&got) {
        let line = b.next(deadline, &format!("messages up to {want:?}"));
        if let Some(m) = page_msg(&line) {
            got.entry(m.channel.clone()).or_default().push(m);
        } else if line.starts_with("gap") || line.starts_with("reset") {
            panic!("unexpected {line:?} while collecting messages\n{}", b.context());
        }
    }
    got
}

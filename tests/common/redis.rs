//! A real redis-server on a free loopback port, without persistence, for the cluster-mode
//! tests (`apt-get install -y redis-server`; scripts/test.sh installs it).

use super::{TempDir, free_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

/// Fails (never skips) when `bin` is missing, with the command that installs it.
pub fn need_redis(bin: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {bin}")).stdout(Stdio::null()).status();
    assert!(
        found.map(|s| s.success()).unwrap_or(false),
        "{bin} is not installed; these tests need a real Redis: apt-get install -y redis-server"
    );
}

impl Redis {
    pub fn start() -> Redis {
        need_redis("redis-server");
        need_redis("redis-cli");
        let mut r = Redis { child: None, port: free_port(), dir: TempDir::new() };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts redis-server (again, after `kill`) on the same port, empty.
    pub fn spawn(&mut self) {
        self.child = Some(spawn_redis_server(self.port, self.dir.path(), &[]));
    }

    /// `redis-cli -p PORT ARGS…`, its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// SIGSTOP / SIGCONT by PID: Redis stops answering, with everything kept.
    pub fn pause(&self, stop: bool) {
        let c = self.child.as_ref().expect("redis-server running");
        // SAFETY: a signal to the PID of the child this helper spawned.
        unsafe { libc::kill(c.id() as i32, if stop { libc::SIGSTOP } else { libc::SIGCONT }) };
    }

    /// SIGKILL by PID and reap: Redis loses everything (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a redis-server without persistence on `port` (its files in `dir`), with `extra`
/// arguments, and waits until it answers PING.
pub fn spawn_redis_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    wait_until(Duration::from_secs(10), "redis-server to answer PING", || redis_cli(port, &["ping"]).trim() == "PONG");
    child
}

/// `redis-cli -p PORT ARGS…`, its standard output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

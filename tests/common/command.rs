//! Running `crier <subcommand>` as a plain command: `run_crier`.

use super::*;
use std::fmt;
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

/// Removes the test runner's own settings from `cmd`'s environment (`CRIER_*`, `RUST_LOG`,
/// `MONOIO_*`, `MIMALLOC_*`), so that crier sees only what the test gives it.
pub fn without_outside_settings(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CRIER_") || k == "RUST_LOG" || k.starts_with("MONOIO_") || k.starts_with("MIMALLOC_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// Fails unless shellcheck passes `path` (and says how to install shellcheck if it is
/// missing).
pub fn assert_shellcheck(path: &std::path::Path) {
    let out = Command::new("shellcheck").arg(path).output().unwrap_or_else(|e| {
        panic!("shellcheck is not installed ({e}): apt-get install -y shellcheck (scripts/test.sh installs it)")
    });
    assert!(out.status.success(), "shellcheck {}:\n{}", path.display(), String::from_utf8_lossy(&out.stdout));
}

/// Run `crier args…` with `stdin`, extra environment, and a deadline.
pub fn run_crier(args: &[&str], stdin: Option<&[u8]>, envs: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new(BIN);
    without_outside_settings(cmd.args(args));
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

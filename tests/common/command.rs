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

//! Attacks on the publisher side, against the real binary:
//! - the default socket lives in a private directory (0700, owned by the user), and a
//!   directory someone else could reach or own is refused, by `crier serve` and by
//!   `crier publish`;
//! - a deleted socket file is noticed and recreated, a replaced one is reported (log,
//!   metrics, `/healthz`), and at exit crier unlinks only the socket it created;
//! - one publisher flooding a backlog does not hold back another one's messages;
//! - a publisher stuck in the middle of a command is timed out (`--publish-timeout`);
//!   one merely idle between commands is not.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A server that uses the default publisher socket, computed from `envs`.
fn default_socket_server(expected: &Path, envs: &[(&str, &str)]) -> Server {
    let mut b = ServerBuilder::new(Driver::Epoll).omit("--publish-socket").publish_socket(expected);
    for (k, v) in envs {
        b = b.env(k, v);
    }
    b.start()
}

fn dir_mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn default_socket_is_in_a_private_directory_and_crier_publish_finds_it() {
    let tmp = TempDir::new();
    let xdg = tmp.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let xdg_s = xdg.display().to_string();
    let expected = xdg.join("crier").join("publish.sock");
    let s = default_socket_server(&expected, &[("XDG_RUNTIME_DIR", &xdg_s)]);
    let dir = xdg.join("crier");
    assert_eq!(dir_mode(&dir), 0o700, "the socket's directory must be private");
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), euid());
    // `crier publish` computes the same default from the same environment.
    let mut sub = s.ws("/ws?channels=a");
    s.wait_connections(1);
    let out = run_crier(&["publish", "--channel", "a", "hello"], None, &[("XDG_RUNTIME_DIR", &xdg_s)]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1");
    assert_eq!(sub.expect_text(), "hello");
}

#[test]
fn default_without_xdg_runtime_dir_is_a_private_directory_in_tmpdir() {
    let tmp = TempDir::new();
    let tmp_s = tmp.path().display().to_string();
    let dir = tmp.join(&format!("crier-{}", euid()));
    let expected = dir.join("publish.sock");
    let envs = [("XDG_RUNTIME_DIR", ""), ("TMPDIR", tmp_s.as_str())];
    let s = default_socket_server(&expected, &envs);
    assert_eq!(dir_mode(&dir), 0o700);
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), euid());
    let out = run_crier(&["publish", "--channel", "a", "x"], None, &envs);
    assert!(out.status.success(), "{out:?}");
    drop(s);
}

/// Starting with the default socket must fail, naming the directory and the fix.
fn assert_refused(tmp: &TempDir, dir: &Path, why: &str) {
    let tmp_s = tmp.path().display().to_string();
    let e = ServerBuilder::new(Driver::Epoll)
        .omit("--publish-socket")
        .env("XDG_RUNTIME_DIR", "")
        .env("TMPDIR", &tmp_s)
        .run_expect_exit(Duration::from_secs(15));
    assert!(!e.became_ready, "{why}: crier started with an unsafe socket directory:\n{}", e.stderr);
    assert!(e.status.is_some_and(|s| !s.success()), "{why}: must exit non-zero:\n{}", e.stderr);
    let shown = dir.display().to_string();
    assert!(e.stderr.contains(&shown), "{why}: the error must name {shown}:\n{}", e.stderr);
    assert!(e.stderr.contains("--publish-socket"), "{why}: the error must name the fix:\n{}", e.stderr);
    // `crier publish` refuses the same directory before sending anything.
    let out = run_crier(&["publish", "--channel", "a", "secret"], None, &[("XDG_RUNTIME_DIR", ""), ("TMPDIR", &tmp_s)]);
    assert!(!out.status.success(), "{why}: crier publish used an unsafe directory: {out:?}");
    assert!(out.stderr.contains(&shown), "{why}: crier publish must name {shown}: {out:?}");
}

#[test]
fn default_directory_reachable_or_owned_by_others_is_refused() {
    let tmp = TempDir::new();
    let dir = tmp.join(&format!("crier-{}", euid()));
    std::fs::create_dir(&dir).unwrap();
    for mode in [0o755, 0o750, 0o701, 0o777] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_refused(&tmp, &dir, &format!("mode {mode:o}"));
    }
    std::fs::remove_dir(&dir).unwrap();
    // A symlink to a private directory: whoever made the link chose where it points.
    let real = tmp.join("elsewhere");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &dir).unwrap();
    assert_refused(&tmp, &dir, "symlink");
    std::fs::remove_file(&dir).unwrap();
    if euid() == 0 {
        // Another user made the directory first and listens inside it: neither the server
        // nor `crier publish` may use it, and no payload reaches the impostor.
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let impostor = UnixListener::bind(dir.join("publish.sock")).unwrap();
        impostor.set_nonblocking(true).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        assert_refused(&tmp, &dir, "owned by uid 65534");
        assert!(impostor.accept().is_err(), "crier publish connected to a socket in another user's directory");
    }
}

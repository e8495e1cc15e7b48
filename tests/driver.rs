//! `--driver`: io_uring where the kernel allows it, epoll where it is blocked the way
//! Docker's default seccomp profile blocks it (a seccomp filter answering EPERM to the
//! io_uring syscalls, installed in the child before exec).

mod common;

use common::*;
use std::time::Duration;

fn delivers(s: &Server) {
    let mut c = s.ws("/ws?channels=d");
    let mut t = s.tung("/ws?channels=d");
    s.wait_connections(2);
    assert_eq!(s.publish("d", "through the driver"), 1);
    assert_eq!(c.expect_text(), "through the driver");
    assert_eq!(tung_recv_text(&mut t), "through the driver");
}

#[test]
fn auto_uses_io_uring_when_allowed() {
    if !kernel_allows_io_uring() {
        panic!("kernel.io_uring_disabled is set on this machine; the io_uring half of the suite cannot run");
    }
    let s = ServerBuilder::with_driver_arg("auto").start();
    assert_eq!(s.driver, "io_uring", "{}", s.ready_line);
    assert_eq!(s.metric("crier_driver", &[("driver", "io_uring")]), Some(1.0));
    delivers(&s);
}

#[test]
fn default_driver_is_auto() {
    let s = ServerBuilder::with_driver_arg("auto").omit("--driver").start();
    let expected = if kernel_allows_io_uring() { "io_uring" } else { "epoll" };
    assert_eq!(s.driver, expected, "{}", s.ready_line);
}

#[test]
fn explicit_drivers_are_reported() {
    for d in [Driver::IoUring, Driver::Epoll] {
        let s = Server::start(d);
        assert_eq!(s.driver, d.reported());
        assert_eq!(s.shards, 2, "{}", s.ready_line);
        assert_eq!(s.metric("crier_driver", &[("driver", d.reported())]), Some(1.0));
        delivers(&s);
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn auto_falls_back_to_epoll_under_seccomp() {
    let s = ServerBuilder::with_driver_arg("auto").block_io_uring().start();
    assert_eq!(s.driver, "epoll", "io_uring is blocked, auto must fall back: {}", s.ready_line);
    let fell_back = s.log_lines().iter().any(|l| {
        let l = l.to_lowercase();
        !l.contains("ready ws=") && l.contains("epoll") && (l.contains("fall") || l.contains("fell"))
    });
    assert!(fell_back, "the log must say it fell back to epoll:\n{}", s.log_text());
    assert_eq!(s.metric("crier_driver", &[("driver", "epoll")]), Some(1.0), "{}", s.metrics_text());
    assert_eq!(s.metric0("crier_driver", &[("driver", "io_uring")]), 0.0);
    delivers(&s);
    s.assert_serving();
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn forced_io_uring_under_seccomp_fails() {
    let e = ServerBuilder::new(Driver::IoUring).block_io_uring().run_expect_exit(Duration::from_secs(15));
    assert!(!e.became_ready, "--driver io-uring started although io_uring is blocked:\n{}", e.stderr);
    let st = e.status.expect("--driver io-uring under seccomp neither failed nor became ready");
    assert!(!st.success(), "{st:?}");
    let err = e.stderr.to_lowercase();
    assert!(err.contains("io_uring") || err.contains("io-uring"), "the error must mention io_uring:\n{}", e.stderr);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn epoll_works_under_seccomp() {
    let s = ServerBuilder::new(Driver::Epoll).block_io_uring().start();
    delivers(&s);
}

#[test]
fn single_shard() {
    let s = ServerBuilder::new(Driver::Epoll).omit("--shards").args(["--shards", "1"]).start();
    assert_eq!(s.shards, 1);
    delivers(&s);
}

#[test]
fn default_shards_is_online_cpus() {
    let s = ServerBuilder::new(Driver::Epoll).omit("--shards").start();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert_eq!(s.shards, cpus, "{}", s.ready_line);
    // Each shard thread is pinned to its own CPU.
    let mut allowed = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", s.pid)).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            allowed.push(l.split_whitespace().nth(1).unwrap_or("").to_string());
        }
    }
    for cpu in 0..cpus {
        assert!(allowed.iter().any(|a| a == &cpu.to_string()), "no thread pinned to CPU {cpu}: {allowed:?}");
    }
    delivers(&s);
}

//! `crier check` against this machine's real limits, through the real binary.
//!
//! The test machine has a 20,000 open-files hard limit, so 100,000 connections must be
//! reported as blocked by RLIMIT_NOFILE (exit 1) with the file to change, and 1,000 must not
//! be blocked by it. Where the limit is larger (a tuned box) the expectations follow the
//! limit actually read, so the test stays true there too.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_crier");

fn check(args: &[&str]) -> Output {
    let out = Command::new(BIN).arg("check").args(args).output().expect("run crier check");
    assert!(out.status.code().is_some(), "crier check died from a signal: {out:?}");
    out
}

fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = check(args);
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("--json output is not JSON ({e}):\n{text}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap_or(-1), value)
}

fn finding<'a>(report: &'a serde_json::Value, item: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .expect("findings is an array")
        .iter()
        .find(|f| f["item"] == item)
        .unwrap_or_else(|| panic!("no finding {item} in {report:#}"))
}

/// The hard RLIMIT_NOFILE this test process (and so the child) has.
fn hard_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_max == libc::RLIM_INFINITY { u64::MAX } else { lim.rlim_max }
}

#[test]
fn json_names_the_nofile_blocker_for_100k() {
    let hard = hard_nofile();
    let (code, report) = json(&["--connections", "100000", "--json"]);
    assert_eq!(report["connections"], 100_000);
    let nofile = finding(&report, "RLIMIT_NOFILE");
    assert!(nofile["current"].as_str().unwrap().contains(&format!("hard {hard}")), "{nofile:#}");
    if hard < 100_000 {
        // This machine: hard limit 20,000.
        assert_eq!(nofile["status"], "blocking", "{nofile:#}");
        let fix = nofile["fix"].as_str().expect("a blocking finding says what to change");
        assert!(fix.contains("tuning/limits.d/90-crier.conf"), "{fix}");
        assert!(fix.contains("LimitNOFILE=1048576") && fix.contains("systemd/crier.service"), "{fix}");
        assert_eq!(report["verdict"], "blocked");
        assert_eq!(code, 1, "exit 1 when something blocks N");
    }
    // Whatever the machine, the exit code follows the blockers.
    let blockers = report["findings"].as_array().unwrap().iter().filter(|f| f["status"] == "blocking").count();
    assert_eq!(report["blocking"], blockers);
    assert_eq!(code, if blockers == 0 { 0 } else { 1 }, "{report:#}");
    for f in report["findings"].as_array().unwrap() {
        if f["status"] == "blocking" || f["status"] == "advice" {
            let fix = f["fix"].as_str().unwrap_or_else(|| panic!("no fix for {f:#}"));
            assert!(
                fix.contains("tuning/")
                    || fix.contains("systemd/")
                    || fix.contains("nothing required")
                    || fix.contains("crier serve"),
                "{f:#}"
            );
        }
    }
}

#[test]
fn json_reports_the_live_values() {
    let (_, report) = json(&["--json"]);
    assert_eq!(report["connections"], 100_000, "the default is 100000");
    let read = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let somaxconn = finding(&report, "net.core.somaxconn");
    assert_eq!(somaxconn["current"], read("net/core/somaxconn"));
    let nr_open = finding(&report, "fs.nr_open");
    assert_eq!(nr_open["current"], read("fs/nr_open"));
    let io = finding(&report, "io_uring");
    let current = io["current"].as_str().unwrap();
    assert!(current.starts_with("available") || current.contains("→ crier will use epoll"), "{io:#}");
    let memory = &report["memory"];
    assert_eq!(memory["kernel_bytes_per_connection"], 3686);
    assert_eq!(memory["user_bytes_per_connection"], 2048);
    assert_eq!(memory["idle_bytes"], 100_000 * (3686 + 2048));
}

#[test]
fn a_thousand_connections_are_not_blocked_by_nofile() {
    let hard = hard_nofile();
    assert!(hard >= 1000 + 1024, "the test machine needs at least 2024 open files");
    let (code, report) = json(&["--connections", "1000", "--json"]);
    assert_eq!(finding(&report, "RLIMIT_NOFILE")["status"], "ok");
    let blockers = report["blocking"].as_u64().unwrap();
    assert_eq!(code, if blockers == 0 { 0 } else { 1 }, "{report:#}");
}

#[test]
fn the_table_says_the_same_for_people() {
    let hard = hard_nofile();
    let out = check(&["--connections", "100000"]);
    let text = String::from_utf8(out.stdout).expect("utf-8 table");
    assert!(text.contains("can this machine hold 100000 connections?"), "{text}");
    let row = text.lines().find(|l| l.contains("RLIMIT_NOFILE")).unwrap_or_else(|| panic!("no nofile row:\n{text}"));
    if hard < 100_000 {
        assert!(row.starts_with("BLOCKING"), "{row}");
        assert!(text.contains("tuning/limits.d/90-crier.conf"), "{text}");
        assert!(text.contains("verdict: BLOCKED"), "{text}");
        assert_eq!(out.status.code(), Some(1));
    }
    let small = check(&["--connections", "1000"]);
    let text = String::from_utf8(small.stdout).unwrap();
    let row = text.lines().find(|l| l.contains("RLIMIT_NOFILE")).unwrap();
    assert!(row.starts_with("ok"), "{row}");
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = check(&["--connections", "many"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connections"));
}

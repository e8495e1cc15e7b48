//! The preflight on made-up machines: [`Readings`] in, findings, table and JSON out. The
//! rules are judged here rather than in `rules.rs` to keep that file to the rules themselves.

use super::readings::{Conntrack, IoUring, Readings, parse_port_list};
use super::report::{Finding, Report, Status, render_table};
use super::rules::{
    CONNTRACK_FILE, KERNEL_BYTES_PER_CONN, LIMITS_FILE, LOW_PORT_DROPIN, SYSCTL_FILE, UNIT_FILE, USER_BYTES_PER_CONN,
    assess,
};
use crate::config::CheckArgs;

/// A well-tuned 16 GiB, 4-CPU machine.
fn tuned() -> Readings {
    Readings {
        nofile_soft: Some(1024),
        nofile_hard: Some(1_048_576),
        file_max: Some(9_223_372_036_854_775_807),
        files_allocated: Some(2000),
        nr_open: Some(1_048_576),
        somaxconn: Some(65535),
        tcp_max_syn_backlog: Some(65535),
        tcp_syncookies: Some(1),
        netdev_max_backlog: Some(16384),
        ip_local_port_range: Some((10000, 65535)),
        ip_local_reserved_ports: Some(vec![]),
        ip_unprivileged_port_start: Some(1024),
        tcp_mem: Some([262_144, 524_288, 786_432]),
        tcp_rmem: Some([4096, 16384, 4_194_304]),
        tcp_wmem: Some([4096, 16384, 4_194_304]),
        tcp_fin_timeout: Some(15),
        conntrack: Conntrack::NotLoaded,
        mem_available: Some(16 << 30),
        cpus: Some(4),
        io_uring: IoUring::Available,
        io_uring_disabled: Some(0),
        page_size: 4096,
    }
}

fn args(n: u64) -> CheckArgs {
    CheckArgs {
        connections: n,
        json: false,
        listen: "0.0.0.0:8080".parse().unwrap(),
        backlog: 4096,
        shards: Some(2),
        cluster: false,
    }
}

fn get<'a>(report: &'a Report, item: &str) -> &'a Finding {
    report.findings.iter().find(|f| f.item == item).unwrap_or_else(|| panic!("no finding {item}"))
}

#[test]
fn a_tuned_machine_holds_100k_without_advice() {
    let report = assess(&tuned(), &args(100_000));
    let noisy: Vec<_> = report.findings.iter().filter(|f| !matches!(f.status, Status::Ok | Status::Info)).collect();
    assert!(noisy.is_empty(), "{noisy:#?}");
    assert_eq!(report.verdict, "ok");
    assert_eq!(report.memory.idle_bytes, 100_000 * (KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN));
}

#[test]
fn a_20000_hard_limit_blocks_100k_and_names_the_files() {
    let mut r = tuned();
    r.nofile_soft = Some(20_000);
    r.nofile_hard = Some(20_000);
    let report = assess(&r, &args(100_000));
    let f = get(&report, "RLIMIT_NOFILE");
    assert_eq!(f.status, Status::Blocking);
    let fix = f.fix.as_deref().unwrap();
    assert!(fix.contains("LimitNOFILE=1048576") && fix.contains(UNIT_FILE) && fix.contains(LIMITS_FILE), "{fix}");
    assert_eq!(report.verdict, "blocked");
    assert_eq!(report.blocking, 1);

    let small = assess(&r, &args(1000));
    assert_eq!(get(&small, "RLIMIT_NOFILE").status, Status::Ok);
    // The reserve counts (serve's own: 228 descriptors with 2 shards): a hard limit of
    // 20,000 holds 19,772 connections and not one more.
    assert_eq!(get(&assess(&r, &args(19_772)), "RLIMIT_NOFILE").status, Status::Ok);
    assert_eq!(get(&assess(&r, &args(19_773)), "RLIMIT_NOFILE").status, Status::Blocking);
}

#[test]
fn only_the_hard_limit_matters_because_crier_raises_the_soft_one() {
    let mut r = tuned();
    r.nofile_soft = Some(1024);
    assert_eq!(get(&assess(&r, &args(100_000)), "RLIMIT_NOFILE").status, Status::Ok);
    r.nofile_hard = Some(u64::MAX);
    assert!(get(&assess(&r, &args(100_000)), "RLIMIT_NOFILE").current.contains("unlimited"));
}

#[test]
fn nr_open_blocks_above_it_and_warns_below_the_units_limit() {
    let mut r = tuned();
    r.nr_open = Some(65536);
    let f = assess(&r, &args(100_000)).findings.into_iter().find(|f| f.item == "fs.nr_open").unwrap();
    assert_eq!(f.status, Status::Blocking);
    assert!(f.fix.unwrap().contains(SYSCTL_FILE));
    r.nr_open = Some(524_288);
    assert_eq!(get(&assess(&r, &args(100_000)), "fs.nr_open").status, Status::Advice);
}

#[test]
fn more_than_a_million_connections_need_a_bigger_unit_limit() {
    let mut r = tuned();
    r.nr_open = Some(4_000_000);
    r.nofile_hard = Some(1_048_576);
    r.mem_available = Some(64 << 30);
    let report = assess(&r, &args(2_000_000));
    let fix = get(&report, "RLIMIT_NOFILE").fix.clone().unwrap();
    assert!(fix.contains("LimitNOFILE=2000228 in a drop-in") && fix.contains("fs.nr_open"), "{fix}");
}

#[test]
fn file_max_counts_what_others_hold() {
    let mut r = tuned();
    r.file_max = Some(50_000);
    assert_eq!(get(&assess(&r, &args(100_000)), "fs.file-max").status, Status::Blocking);
    r.file_max = Some(150_000);
    r.files_allocated = Some(60_000);
    assert_eq!(get(&assess(&r, &args(100_000)), "fs.file-max").status, Status::Advice);
}

#[test]
fn memory_blocks_below_the_idle_estimate_and_says_how_many_fit() {
    let mut r = tuned();
    r.mem_available = Some(256 << 20);
    let report = assess(&r, &args(100_000));
    let f = get(&report, "memory");
    assert_eq!(f.status, Status::Blocking);
    let fits = (256u64 << 20) / (KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN);
    assert!(f.fix.as_deref().unwrap().contains(&fits.to_string()));
    r.mem_available = Some(800 << 20); // idle fits (547 MiB), a broadcast (938 MiB) does not
    assert_eq!(get(&assess(&r, &args(100_000)), "memory").status, Status::Advice);
}

#[test]
fn blocked_io_uring_is_advice_not_a_blocker() {
    let mut r = tuned();
    r.io_uring = IoUring::Refused(libc::EPERM);
    let report = assess(&r, &args(100_000));
    let f = get(&report, "io_uring");
    assert_eq!(f.status, Status::Advice);
    assert!(f.current.contains("blocked") && f.current.contains("epoll"), "{}", f.current);
    assert!(f.fix.as_deref().unwrap().contains("seccomp"));
    assert_eq!(report.verdict, "ok");
    r.io_uring = IoUring::Refused(libc::ENOMEM);
    assert!(get(&assess(&r, &args(10)), "io_uring").fix.as_deref().unwrap().contains("LimitMEMLOCK"));
    r.io_uring = IoUring::Refused(libc::EPERM);
    r.io_uring_disabled = Some(2);
    assert!(get(&assess(&r, &args(10)), "io_uring").fix.as_deref().unwrap().contains("io_uring_disabled = 0"));
}

/// Kernels whose io_uring lacks what monoio needs: `crier serve --driver auto` runs on epoll
/// there, and check says so instead of `available`.
#[test]
fn io_uring_without_the_operations_monoio_needs_is_advice() {
    let mut r = tuned();
    r.io_uring = IoUring::Unsupported;
    let report = assess(&r, &args(100_000));
    let f = get(&report, "io_uring");
    assert_eq!(f.status, Status::Advice);
    assert!(f.current.contains("→ crier will use epoll"), "{}", f.current);
    assert!(f.fix.as_deref().unwrap().starts_with("nothing required"), "{f:#?}");
    assert_eq!(report.verdict, "ok");
}

#[test]
fn backlogs_are_judged_against_the_listen_backlog() {
    let mut r = tuned();
    r.somaxconn = Some(128);
    let f = get(&assess(&r, &args(100_000)), "net.core.somaxconn").clone();
    assert_eq!(f.status, Status::Advice);
    assert!(f.why.contains("cut to 128"));
    r.tcp_max_syn_backlog = Some(128);
    assert_eq!(get(&assess(&r, &args(100_000)), "net.ipv4.tcp_max_syn_backlog").status, Status::Ok, "cookies on");
    r.tcp_syncookies = Some(0);
    assert_eq!(get(&assess(&r, &args(100_000)), "net.ipv4.tcp_max_syn_backlog").status, Status::Advice);
}

#[test]
fn storm_settings_matter_only_for_many_connections() {
    let mut r = tuned();
    r.netdev_max_backlog = Some(1000);
    r.tcp_fin_timeout = Some(60);
    let big = assess(&r, &args(100_000));
    assert_eq!(get(&big, "net.core.netdev_max_backlog").status, Status::Advice);
    assert_eq!(get(&big, "net.ipv4.tcp_fin_timeout").status, Status::Advice);
    let small = assess(&r, &args(1000));
    assert_eq!(get(&small, "net.core.netdev_max_backlog").status, Status::Ok);
    assert_eq!(get(&small, "net.ipv4.tcp_fin_timeout").status, Status::Ok);
}

#[test]
fn listen_port_inside_the_local_range_unless_reserved() {
    let mut r = tuned();
    r.ip_local_port_range = Some((1024, 65535));
    assert!(get(&assess(&r, &args(10)), "net.ipv4.ip_local_port_range").fix.as_deref().unwrap().contains("8080"));
    r.ip_local_reserved_ports = parse_port_list("80,8000-8100\n");
    assert_eq!(get(&assess(&r, &args(10)), "net.ipv4.ip_local_port_range").status, Status::Ok);
    r.ip_local_port_range = Some((32768, 60999));
    let f = get(&assess(&r, &args(100_000)), "net.ipv4.ip_local_port_range").clone();
    assert_eq!(f.status, Status::Info, "28k ports < 100k matters only behind a local proxy");
    assert!(f.fix.unwrap().contains("upstream addresses"));
    assert_eq!(get(&assess(&r, &args(10_000)), "net.ipv4.ip_local_port_range").status, Status::Ok);
}

#[test]
fn low_ports_point_at_the_drop_in() {
    let mut a = args(10);
    a.listen = "0.0.0.0:443".parse().unwrap();
    let f = get(&assess(&tuned(), &a), "listen port").clone();
    assert_eq!(f.status, Status::Advice);
    assert!(f.fix.unwrap().contains(LOW_PORT_DROPIN));
    assert!(assess(&tuned(), &args(10)).findings.iter().all(|f| f.item != "listen port"));
}

#[test]
fn tcp_memory_scales_with_n() {
    let mut r = tuned();
    r.tcp_mem = Some([22_000, 29_000, 44_000]); // a 1 GiB box's defaults: pressure 113 MiB
    let f = get(&assess(&r, &args(100_000)), "net.ipv4.tcp_mem").clone();
    assert_eq!(f.status, Status::Advice);
    assert!(f.fix.unwrap().contains("tcp_mem = 250000 500000 775000"));
    assert_eq!(get(&assess(&r, &args(5000)), "net.ipv4.tcp_mem").status, Status::Ok);
    r.tcp_rmem = Some([4096, 131_072, 6_291_456]);
    assert_eq!(get(&assess(&r, &args(100_000)), "net.ipv4.tcp_rmem").status, Status::Advice);
    assert!(
        get(&assess(&r, &args(100_000)), "net.ipv4.tcp_wmem").fix.as_deref().unwrap().contains("--socket-send-buffer")
    );
}

#[test]
fn conntrack_blocks_only_when_loaded_and_too_small() {
    let mut r = tuned();
    assert_eq!(get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").status, Status::Ok);
    r.conntrack = Conntrack::Loaded { max: Some(65536), count: Some(10) };
    let f = get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").clone();
    assert_eq!(f.status, Status::Blocking);
    assert!(f.fix.unwrap().contains(CONNTRACK_FILE));
    r.conntrack = Conntrack::Loaded { max: Some(262_144), count: Some(0) };
    assert_eq!(get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").status, Status::Ok);
    r.conntrack = Conntrack::Loaded { max: Some(262_144), count: Some(200_000) };
    assert_eq!(get(&assess(&r, &args(100_000)), "net.netfilter.nf_conntrack_max").status, Status::Advice);
}

#[test]
fn unreadable_values_are_unknown_not_blocking() {
    let mut r = tuned();
    r.nr_open = None;
    r.mem_available = None;
    r.nofile_hard = None;
    let report = assess(&r, &args(100_000));
    assert_eq!(get(&report, "fs.nr_open").status, Status::Unknown);
    assert_eq!(get(&report, "memory").status, Status::Unknown);
    assert_eq!(get(&report, "RLIMIT_NOFILE").status, Status::Unknown);
    assert_eq!(report.verdict, "ok");
}

#[test]
fn every_advice_and_blocker_says_what_to_change() {
    let r = Readings {
        nofile_hard: Some(100),
        nr_open: Some(100),
        file_max: Some(100),
        mem_available: Some(1 << 20),
        somaxconn: Some(16),
        tcp_syncookies: Some(0),
        tcp_max_syn_backlog: Some(16),
        netdev_max_backlog: Some(10),
        ip_local_port_range: Some((1024, 2000)),
        tcp_mem: Some([1, 2, 3]),
        tcp_fin_timeout: Some(120),
        conntrack: Conntrack::Loaded { max: Some(10), count: Some(0) },
        io_uring: IoUring::Refused(libc::ENOSYS),
        ..tuned()
    };
    let mut a = args(100_000);
    a.listen = "0.0.0.0:80".parse().unwrap();
    let report = assess(&r, &a);
    for f in &report.findings {
        if matches!(f.status, Status::Advice | Status::Blocking) {
            assert!(f.fix.is_some(), "{f:#?}");
        }
    }
    assert!(report.blocking >= 5, "{report:#?}");
    let table = render_table(&report);
    assert!(table.contains("BLOCKED") && table.contains("fix: "), "{table}");
}

#[test]
fn json_has_the_fields_machines_read() {
    let mut r = tuned();
    r.nofile_hard = Some(20_000);
    let json = serde_json::to_value(assess(&r, &args(100_000))).unwrap();
    assert_eq!(json["verdict"], "blocked");
    assert_eq!(json["connections"], 100_000);
    let nofile = json["findings"].as_array().unwrap().iter().find(|f| f["item"] == "RLIMIT_NOFILE").unwrap();
    assert_eq!(nofile["status"], "blocking");
    assert!(nofile["fix"].as_str().unwrap().contains("tuning/limits.d/90-crier.conf"));
}

#[test]
fn reading_this_machine_never_panics() {
    let r = Readings::from_system();
    let _ = render_table(&assess(&r, &args(100_000)));
}

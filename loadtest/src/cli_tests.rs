//! Unit tests of `cli.rs` (kept apart to keep that file short).

use super::*;

fn cli(args: &[&str]) -> Cli {
    let mut v = vec!["crier-load"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap()
}

const LIMITS: Limits = Limits { nofile_hard: 20_000, ephemeral_ports: 28_232 };

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("5 fortnights").is_err());
}

#[test]
fn urls() {
    let t = parse_url("ws://127.0.0.1:9000/ws", &[]).unwrap();
    assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(t.path, "/ws");
    assert_eq!(t.host_header, "127.0.0.1:9000");
    let t = parse_url("ws://localhost/ws?x=1", &["a".into(), "b".into()]).unwrap();
    assert_eq!(t.addr.port(), 80);
    assert_eq!(t.path, "/ws?x=1&channels=a,b");
    let t = parse_url("ws://[::1]:8080", &["a".into()]).unwrap();
    assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
    assert_eq!(t.path, "/?channels=a");
    assert!(parse_url("ws://10.0.0.1:8080/ws", &[]).unwrap_err().contains("loopback"));
    assert!(parse_url("ws://example.com/ws", &[]).is_err());
    assert!(parse_url("wss://127.0.0.1/ws", &[]).is_err());
    assert!(parse_url("ws://127.0.0.1:99999/", &[]).is_err());
}

#[test]
fn splits_connections_over_workers() {
    let p = Plan::new(&cli(&["-n", "200", "--procs", "3", "--src-ips", "2"]), LIMITS).unwrap();
    assert_eq!(p.workers, vec![(0, 67), (67, 67), (134, 66)]);
    assert_eq!(p.src_ips, vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)]);
    let pb = p.publish.unwrap();
    assert_eq!(pb.count, 1000); // 10 s × 100/s
    assert_eq!(pb.channel, "*");
    assert_eq!(pb.sockets, vec![default_publish_socket()]);
}

#[test]
fn refuses_too_many_sockets_per_worker() {
    let e = Plan::new(&cli(&["-n", "40000", "--procs", "2", "--src-ips", "2"]), LIMITS).unwrap_err();
    assert!(e.contains("at most 19000"), "{e}");
    assert!(e.contains("--procs 3"), "{e}");
    let p = Plan::new(&cli(&["-n", "38000", "--procs", "2", "--src-ips", "2"]), LIMITS).unwrap();
    assert!(p.warnings[0].contains("use --src-ips 3 or more"), "{:?}", p.warnings);
    let p = Plan::new(&cli(&["-n", "27000", "--procs", "2", "--src-ips", "2"]), LIMITS).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let p = Plan::new(&cli(&["--mode", "storm", "-n", "19000", "--src-ips", "2"]), LIMITS).unwrap();
    assert!(p.warnings[0].contains("use --src-ips 3 or more"), "{:?}", p.warnings);
    let p = Plan::new(&cli(&["--mode", "storm", "-n", "19000", "--src-ips", "4"]), LIMITS).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let e = Plan::new(&cli(&["-n", "30000", "--procs", "2"]), LIMITS).unwrap_err();
    assert!(e.contains("--src-ips 2"), "{e}");
}

#[test]
fn mode_defaults() {
    let p = Plan::new(&cli(&["--mode", "soak"]), LIMITS).unwrap();
    assert_eq!(p.publish.as_ref().unwrap().rate, 10.0);
    assert_eq!(p.publish.unwrap().count, 3000);
    let p = Plan::new(&cli(&["--mode", "storm"]), LIMITS).unwrap();
    assert_eq!(p.publish.unwrap().count, 10);
    let p = Plan::new(&cli(&["--mode", "idle", "--duration", "3s"]), LIMITS).unwrap();
    assert!(p.publish.is_none());
    assert_eq!(p.hold, Duration::from_secs(3));
    assert!(Plan::new(&cli(&["--mode", "idle", "-n", "0"]), LIMITS).is_err());
    let p = Plan::new(&cli(&["--count", "50", "--rate", "25", "-n", "0"]), LIMITS).unwrap();
    assert_eq!(p.publish.as_ref().unwrap().count, 50);
    // default timeout: connect + publish + grace + 60 s
    assert_eq!(p.timeout, Duration::from_secs(2 + 5 + 60));
}

#[test]
fn channels_and_sizes() {
    let p =
        Plan::new(&cli(&["--channels", "flights,gates", "--publish-socket", "/a", "--publish-socket", "/b"]), LIMITS)
            .unwrap();
    assert_eq!(p.target.path, "/ws?channels=flights,gates");
    let pb = p.publish.unwrap();
    assert_eq!(pb.channel, "flights");
    assert_eq!(pb.sockets, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert!(Plan::new(&cli(&["--channels", "bad name"]), LIMITS).is_err());
    let e = Plan::new(&cli(&["--size", "10"]), LIMITS).unwrap_err();
    assert!(e.contains("too small"), "{e}");
    assert!(Plan::new(&cli(&["--url", "ws://192.168.1.1:8080/ws"]), LIMITS).is_err());
    assert!(Plan::new(&cli(&["--url", "ws://[::1]:8080/ws", "--src-ips", "2"]), LIMITS).is_err());
    assert!(Plan::new(&cli(&["--url", "ws://[::1]:8080/ws"]), LIMITS).is_ok());
}

#[test]
fn channels_mode() {
    let p = Plan::new(&cli(&["--mode", "channels"]), LIMITS).unwrap();
    assert_eq!(p.connections, 10_000);
    let cs = p.channel_spec.clone().unwrap();
    assert_eq!((cs.count, cs.per_conn, cs.seed, cs.distribution), (1000, 5, 1, Distribution::RoundRobin));
    let pb = p.publish.unwrap();
    assert_eq!((pb.rate, pb.count), (2000.0, 20_000));
    assert_eq!(pb.schedule.as_ref().unwrap().len(), 20_000);
    assert_eq!(p.target.path, "/ws", "each connection adds its own ?channels=");
    let p = Plan::new(&cli(&["--mode", "channels", "-n", "10", "--distribution", "zipf", "--zipf-s", "1.2"]), LIMITS)
        .unwrap();
    assert_eq!(p.connections, 10);
    assert_eq!(p.channel_spec.unwrap().distribution, Distribution::Zipf);
    for bad in [
        &["--mode", "channels", "--channels", "a"][..],
        &["--mode", "channels", "--channel-count", "0"],
        &["--mode", "channels", "--channel-count", "4", "--channels-per-conn", "5"],
        &["--mode", "channels", "--channels-per-conn", "0"],
        &["--mode", "channels", "--zipf-s=-1"],
    ] {
        assert!(Plan::new(&cli(bad), LIMITS).is_err(), "{bad:?}");
    }
    // The header carries the channel and its sequence number too.
    let e = Plan::new(&cli(&["--mode", "channels", "--size", "30"]), LIMITS).unwrap_err();
    assert!(e.contains("needs 36 bytes"), "{e}"); // 5+1+19+1 and 3+1+5+1
}

#[test]
fn schedule_offsets() {
    assert_eq!(offset_ns(100.0, 1), 0);
    assert_eq!(offset_ns(100.0, 2), 10_000_000);
    assert_eq!(offset_ns(3.0, 4), 1_000_000_000);
}

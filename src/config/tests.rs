//! Unit tests of flag, environment and file resolution.
use super::*;

fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
    let mut argv = vec!["crier", "serve"];
    argv.extend_from_slice(args);
    match parse_cli_from(argv.into_iter().map(OsString::from).collect())?.command {
        Command::Serve(s) => Ok(*s),
        _ => unreachable!(),
    }
}

#[test]
fn sizes_and_durations() {
    assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
    assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
    assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
    assert!("1 furlong".parse::<ByteSize>().is_err());
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert!(parse_duration("soon").is_err());
    assert_eq!(parse_mode("0660").unwrap(), 0o660);
    assert!(parse_mode("0999").is_err());
}

#[test]
fn config_file_fills_defaults_only() {
    let dir = std::env::temp_dir().join(format!("crier-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "ping-interval = \"5s\"\nmax-channels = 3\ndeflate = false\npath = \"/live\"\n").unwrap();
    let f = file.to_str().unwrap();
    let s = serve(&["--config", f, "--max-channels", "9"]).unwrap();
    assert_eq!(s.ping_interval, Duration::from_secs(5));
    assert_eq!(s.max_channels, 9, "flag beats file");
    assert!(!s.deflate);
    assert_eq!(s.path, "/live");

    std::fs::write(&file, "ping-intervl = \"5s\"\n").unwrap();
    let e = serve(&["--config", f]).unwrap_err().to_string();
    assert!(e.contains("unknown setting 'ping-intervl'"), "{e}");
    std::fs::write(&file, "idle-timeout = \"forever\"\n").unwrap();
    let e = serve(&["--config", f]).unwrap_err().to_string();
    assert!(e.contains("idle-timeout"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn redis_cluster_seeds_from_a_toml_list() {
    let dir = std::env::temp_dir().join(format!("crier-cfg-rc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "redis-cluster = [\"redis://a:7000\", \"redis://b:7001\"]\n").unwrap();
    let f = file.to_str().unwrap();
    let c = serve(&["--config", f]).unwrap().resolve().unwrap();
    let redis = c.redis.unwrap();
    assert_eq!(redis.cluster.unwrap(), ["redis://a:7000", "redis://b:7001"]);
    std::fs::write(&file, "redis-cluster = [1, 2]\n").unwrap();
    let e = serve(&["--config", f]).unwrap_err().to_string();
    assert!(e.contains("'redis-cluster' must be a string or a list of URL strings"), "{e}");
    std::fs::write(&file, "redis = \"redis://a:1\"\nredis-cluster = \"redis://b:2\"\n").unwrap();
    let e = serve(&["--config", f]).unwrap().resolve().unwrap_err();
    assert!(e.0.contains("--redis and --redis-cluster"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn relations_are_checked() {
    let e = serve(&["--ping-interval", "1m", "--idle-timeout", "30s"]).unwrap().resolve().unwrap_err();
    assert!(e.0.contains("--idle-timeout"), "{e}");
    let e = serve(&["--shards", "0"]).unwrap().resolve().unwrap_err();
    assert!(e.0.contains("--shards"), "{e}");
    assert!(serve(&["--max-queue-bytes", "lots"]).unwrap_err().to_string().contains("max-queue-bytes"));
}

#[test]
fn sweep_tick_is_a_quarter_of_the_watchdog_interval_at_most() {
    let mut c = serve(&[]).unwrap().resolve().unwrap();
    c.watchdog = None;
    assert_eq!(c.sweep_tick(), Duration::from_secs(1), "defaults: 30s pings, capped at 1 s");
    c.watchdog = Some(Duration::from_secs(30));
    assert_eq!(c.sweep_tick(), Duration::from_secs(1), "WatchdogSec=30s leaves the tick alone");
    c.watchdog = Some(Duration::from_millis(200));
    assert_eq!(c.sweep_tick(), Duration::from_millis(50));
    c.watchdog = Some(Duration::from_millis(2));
    assert_eq!(c.sweep_tick(), Duration::from_millis(1), "never zero");
    let mut c = serve(&["--ping-interval", "40ms", "--idle-timeout", "1s"]).unwrap().resolve().unwrap();
    c.watchdog = None;
    assert_eq!(c.sweep_tick(), Duration::from_millis(20), "20 ms at least without a watchdog");
}

#[cfg(debug_assertions)]
#[test]
fn debug_wedge_shard_names_an_existing_shard() {
    let s = serve(&["--shards", "2", "--debug-wedge-shard", "1@2s"]).unwrap();
    assert_eq!(s.debug_wedge_shard, Some(Wedge { shard: 1, after: Duration::from_secs(2) }));
    let e = serve(&["--shards", "2", "--debug-wedge-shard", "2"]).unwrap().resolve().unwrap_err();
    assert!(e.0.contains("--debug-wedge-shard"), "{e}");
    assert!(serve(&["--debug-wedge-shard", "one"]).is_err());
}

#[test]
fn echo_is_off_by_default_and_refused_with_redis() {
    assert!(!serve(&[]).unwrap().resolve().unwrap().echo);
    assert!(serve(&["--echo"]).unwrap().resolve().unwrap().echo);
    let e = serve(&["--echo", "--redis", "redis://127.0.0.1:6379/"]).unwrap().resolve().unwrap_err();
    assert!(e.0.contains("--echo") && e.0.contains("--redis"), "{e}");
}

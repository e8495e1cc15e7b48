//! Settings from flags, CRIER_* environment variables and a TOML file: each source works,
//! flag beats environment beats file, invalid values and unknown keys stop crier with a
//! message naming the setting, and `crier serve --help` lists every setting with its default.

mod common;

use common::*;
use std::time::Duration;

const EXIT_WAIT: Duration = Duration::from_secs(15);

fn write_config(b: &ServerBuilder, text: &str) -> String {
    let p = b.dir().join("crier.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Does a fresh connection see a server ping within `within`?
fn sees_ping(s: &Server, within: Duration) -> bool {
    let mut c = s.ws("/ws");
    match c.read_frame(within) {
        Ok(f) => {
            assert_eq!(f.opcode, OP_PING, "{f:?}");
            true
        }
        Err(WsEnd::Timeout) => false,
        Err(e) => panic!("{e:?}"),
    }
}

fn upgrades_on(s: &Server, path: &str) -> bool {
    match WsClient::connect_with(s.ws, path, &[]) {
        Ok(_) => true,
        Err(r) if r.status == 404 => false,
        Err(r) => panic!("{path}: {r:?}"),
    }
}

#[test]
fn toml_file_settings() {
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(
        &b,
        "# crier settings\nping-interval = \"200ms\"\npath = \"/file\"\nmax-channels = 2\ndeflate = false\nmax-queue-bytes = \"128KiB\"\n",
    );
    let s = b.args(["--config", &cfg]).start();
    assert!(upgrades_on(&s, "/file"));
    assert!(!upgrades_on(&s, "/ws"));
    let r = http_raw(s.ws, upgrade_request(s.ws, "/file?channels=a,b,c", &[]).as_bytes()).unwrap();
    assert_eq!(r.status, 400, "max-channels = 2 from the file: {r:?}");
    let c = WsClient::connect_with(s.ws, "/file", &[("Sec-WebSocket-Extensions", "permessage-deflate")]).unwrap();
    assert!(!c.deflate, "deflate = false from the file");
    let mut c = s.ws("/file");
    let f = c.read_frame(Duration::from_secs(3)).expect("ping-interval = 200ms from the file");
    assert_eq!(f.opcode, OP_PING);
}

#[test]
fn config_path_from_env() {
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "path = \"/from-env-config\"\n");
    let s = b.env("CRIER_CONFIG", &cfg).start();
    assert!(upgrades_on(&s, "/from-env-config"));
}

#[test]
fn env_ping_interval() {
    let s = ServerBuilder::new(Driver::Epoll).env("CRIER_PING_INTERVAL", "200ms").start();
    assert!(sees_ping(&s, Duration::from_secs(3)), "CRIER_PING_INTERVAL=200ms ignored");
    let s = ServerBuilder::new(Driver::Epoll).env("CRIER_MAX_CHANNELS", "1").start();
    let r = http_raw(s.ws, upgrade_request(s.ws, "/ws?channels=a,b", &[]).as_bytes()).unwrap();
    assert_eq!(r.status, 400, "CRIER_MAX_CHANNELS=1 ignored: {r:?}");
}

#[test]
fn flag_beats_env_beats_file() {
    let all = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&all, "path = \"/file\"\n");
    let s = all.args(["--config", &cfg, "--path", "/flag"]).env("CRIER_PATH", "/env").start();
    assert!(upgrades_on(&s, "/flag"), "flag must win");
    assert!(!upgrades_on(&s, "/env"));
    assert!(!upgrades_on(&s, "/file"));

    let two = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&two, "path = \"/file\"\n");
    let s = two.args(["--config", &cfg]).env("CRIER_PATH", "/env").start();
    assert!(upgrades_on(&s, "/env"), "environment must beat the file");
    assert!(!upgrades_on(&s, "/file"));

    let one = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&one, "path = \"/file\"\n");
    let s = one.args(["--config", &cfg]).start();
    assert!(upgrades_on(&s, "/file"));
}

#[test]
fn flush_delay_auto_from_flag_env_and_file() {
    let s = ServerBuilder::new(Driver::Epoll).args(["--flush-delay", "auto"]).start();
    assert!(sees_no_hold(&s), "--flush-delay auto");
    let s = ServerBuilder::new(Driver::Epoll).env("CRIER_FLUSH_DELAY", "AUTO").start();
    assert!(sees_no_hold(&s), "CRIER_FLUSH_DELAY=AUTO");
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "flush-delay = \"auto\"\n");
    assert!(sees_no_hold(&b.args(["--config", &cfg]).start()), "flush-delay = \"auto\" in the file");
    // A bare 0 in the file is "never wait"; a duration there is a fixed hold, applied.
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "flush-delay = 0\n");
    assert!(sees_no_hold(&b.args(["--config", &cfg]).start()), "flush-delay = 0 in the file");
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "flush-delay = \"400ms\"\n");
    assert!(!sees_no_hold(&b.args(["--config", &cfg]).start()), "flush-delay = \"400ms\" in the file was not applied");
}

/// Publishes one message to one subscriber: true when it came within 200 ms and the shard
/// counted no hold (a light load under `auto` or `0`), false when it was held 400 ms.
fn sees_no_hold(s: &Server) -> bool {
    let mut c = s.ws("/ws?channels=x");
    s.wait_connections(1);
    let start = std::time::Instant::now();
    assert_eq!(s.publisher().publish("x", b"one", false), 1);
    assert_eq!(c.recv(Duration::from_secs(5)).expect("the message").text(), "one");
    let took = start.elapsed();
    let holds = s.metric0("crier_flush_holds_total", &[]);
    if took >= Duration::from_millis(400) {
        assert!(holds >= 1.0, "held {took:?} but no hold counted");
        return false;
    }
    assert!(took < Duration::from_millis(200) && holds == 0.0, "took {took:?}, {holds} holds");
    true
}

#[test]
fn ping_interval_precedence() {
    // File says 200 ms, environment says 60 s: the environment wins, no ping soon.
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "ping-interval = \"200ms\"\n");
    let s = b.args(["--config", &cfg]).env("CRIER_PING_INTERVAL", "60s").start();
    assert!(!sees_ping(&s, Duration::from_millis(1200)), "file beat the environment");
    // Flag says 200 ms, environment 60 s: the flag wins.
    let s =
        ServerBuilder::new(Driver::Epoll).args(["--ping-interval", "200ms"]).env("CRIER_PING_INTERVAL", "60s").start();
    assert!(sees_ping(&s, Duration::from_secs(3)), "environment beat the flag");
}

/// (setting, bad value) pairs covering each kind of value.
const BAD: &[(&str, &str)] = &[
    ("ping-interval", "banana"),
    ("idle-timeout", "-5s"),
    ("handshake-timeout", "10 parsecs"),
    ("flush-delay", "2s"),
    ("flush-delay", "sometimes"),
    ("max-queue-bytes", "12XB"),
    ("max-client-message-bytes", "lots"),
    ("max-connections", "many"),
    ("max-channels", "-1"),
    ("shards", "zero"),
    ("driver", "kqueue"),
    ("listen", "not-an-address"),
    ("deflate", "maybe"),
    ("publish-socket-mode", "rwx"),
    ("log-level", "loud"),
    // Per-address limits and proxies (src/peer/).
    ("max-connections-per-ip", "lots"),
    ("max-handshakes-per-ip-per-second", "-3"),
    ("ipv6-prefix-len", "80"),
    ("trusted-proxies", "10.0.0.1/8"),
];

fn env_name(setting: &str) -> String {
    format!("CRIER_{}", setting.to_uppercase().replace('-', "_"))
}

fn assert_fails_naming(e: &Exited, setting: &str, source: &str) {
    assert!(!e.became_ready, "{source}: {setting} invalid yet crier started:\n{}", e.stderr);
    let st =
        e.status.unwrap_or_else(|| panic!("{source}: {setting}: crier neither exited nor became ready:\n{}", e.stderr));
    assert!(!st.success(), "{source}: {setting}: exit status {st:?}");
    assert!(
        e.stderr.contains(setting) || e.stderr.contains(&env_name(setting)),
        "{source}: the error must name the setting {setting}:\n{}",
        e.stderr
    );
}

/// A server builder that leaves out its own value for `setting`, for the flags the harness
/// passes itself, so that the value under test is the only one.
fn builder_without(setting: &str) -> ServerBuilder {
    let b = ServerBuilder::new(Driver::Epoll);
    match setting {
        "listen" => b.omit("--listen"),
        "shards" => b.omit("--shards"),
        "driver" => b.omit("--driver"),
        _ => b,
    }
}

#[test]
fn invalid_flag_values() {
    for (setting, bad) in BAD {
        // `--name=value`, so a value starting with '-' is not read as a flag.
        let flag = format!("--{setting}={bad}");
        let b = builder_without(setting);
        let e = b.arg(flag).run_expect_exit(EXIT_WAIT);
        assert_fails_naming(&e, setting, "flag");
    }
}

#[test]
fn invalid_env_values() {
    for (setting, bad) in BAD {
        let b = builder_without(setting);
        let e = b.env(&env_name(setting), bad).run_expect_exit(EXIT_WAIT);
        assert_fails_naming(&e, setting, "environment");
    }
}

#[test]
fn invalid_file_values() {
    for (setting, bad) in BAD {
        let b = builder_without(setting);
        let cfg = write_config(&b, &format!("{setting} = \"{bad}\"\n"));
        let e = b.args(["--config", &cfg]).run_expect_exit(EXIT_WAIT);
        assert_fails_naming(&e, setting, "file");
    }
    // A value of the wrong TOML type.
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "max-connections = [1, 2]\n");
    let e = b.args(["--config", &cfg]).run_expect_exit(EXIT_WAIT);
    assert_fails_naming(&e, "max-connections", "file");
}

#[test]
fn unknown_key_in_file() {
    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "ping-interval = \"30s\"\npingg-interval = \"1s\"\n");
    let e = b.args(["--config", &cfg]).run_expect_exit(EXIT_WAIT);
    assert_fails_naming(&e, "pingg-interval", "file");
}

#[test]
fn missing_or_broken_config_file() {
    let b = ServerBuilder::new(Driver::Epoll);
    let missing = b.dir().join("nope.toml").display().to_string();
    let e = b.args(["--config", &missing]).run_expect_exit(EXIT_WAIT);
    assert!(e.status.is_some_and(|s| !s.success()), "{}", e.stderr);
    assert!(e.stderr.contains(&missing), "the error should name the file:\n{}", e.stderr);

    let b = ServerBuilder::new(Driver::Epoll);
    let cfg = write_config(&b, "ping-interval = \"30s\n this is [not toml\n");
    let e = b.args(["--config", &cfg]).run_expect_exit(EXIT_WAIT);
    assert!(e.status.is_some_and(|s| !s.success()), "{}", e.stderr);
}

/// How a README default may appear in `--help`: as written, or a size in bytes, or a
/// duration in seconds. None for computed defaults (online CPUs, `$XDG_RUNTIME_DIR/…`,
/// kernel default, none), whose description is checked separately.
fn default_forms(cell: &str) -> Option<Vec<String>> {
    let d = first_code(cell)?;
    if d.contains('$') || d.contains('<') {
        return None;
    }
    let mut forms = vec![d.clone()];
    let num: String = d.chars().take_while(|c| c.is_ascii_digit()).collect();
    if let Ok(n) = num.parse::<u64>() {
        let unit = &d[num.len()..];
        let mult = match unit {
            "KiB" => Some(1024),
            "MiB" => Some(1024 * 1024),
            "GiB" => Some(1024 * 1024 * 1024),
            "m" => Some(60),
            "h" => Some(3600),
            _ => None,
        };
        if let Some(m) = mult {
            forms.push((n * m).to_string());
            forms.push(format!("{n} {unit}"));
        }
        if unit == "m" {
            forms.push(format!("{n}min"));
        }
    }
    Some(forms)
}

#[test]
fn serve_help_lists_every_setting_with_default() {
    let out = run_crier(&["serve", "--help"], None, &[]);
    assert!(out.status.success(), "{out:?}");
    let help = out.stdout;
    // Split the help into one block per option.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--").or_else(|| t.split_once(", --").map(|(_, r)| r)) {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            blocks.push((name, line.to_string()));
        } else if let Some(last) = blocks.last_mut() {
            last.1.push('\n');
            last.1.push_str(line);
        }
    }
    // Every row of the README settings table (read from README.md).
    let settings = readme_settings();
    assert!(settings.len() >= 21, "README settings table: {settings:?}");
    for (name, default_cell) in &settings {
        let block = blocks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_str())
            .unwrap_or_else(|| panic!("`crier serve --help` does not list --{name}:\n{help}"));
        if let Some(forms) = default_forms(default_cell) {
            assert!(
                forms.iter().any(|d| block.contains(d.as_str())),
                "--{name}: README default {default_cell} not shown (looked for {forms:?}):\n{block}"
            );
        }
    }
    // The computed defaults are described too.
    let block = |n: &str| blocks.iter().find(|(b, _)| b == n).map(|(_, t)| t.to_lowercase()).unwrap();
    assert!(block("shards").contains("cpu"), "--shards default (online CPUs) not described:\n{}", block("shards"));
    assert!(
        block("publish-socket").contains("xdg_runtime_dir") || block("publish-socket").contains("/tmp/crier"),
        "--publish-socket default not described:\n{}",
        block("publish-socket")
    );
    assert!(
        block("socket-send-buffer").contains("kernel"),
        "--socket-send-buffer default not described:\n{}",
        block("socket-send-buffer")
    );
}

#[test]
fn sizes_and_durations_take_units() {
    // Plain bytes, KiB, MiB, GiB; ms, s, m.
    let s = ServerBuilder::new(Driver::Epoll)
        .args([
            "--max-queue-bytes",
            "1048576",
            "--max-message-bytes",
            "2MiB",
            "--max-client-message-bytes",
            "1GiB",
            "--handshake-timeout",
            "2m",
            "--ping-interval",
            "500ms",
            "--idle-timeout",
            "30s",
        ])
        .start();
    assert!(sees_ping(&s, Duration::from_secs(3)));
    // 2 MiB payloads pass, larger ones do not.
    let mut p = s.publisher();
    assert_eq!(p.publish("a", &vec![b'a'; 2 * 1024 * 1024], false), 1);
    p.send(format!("PUB a {}\r\n", 2 * 1024 * 1024 + 1).as_bytes()).unwrap();
    assert_eq!(
        p.expect_line(),
        format!("-ERR payload too large: {} bytes > max-message-bytes {}", 2 * 1024 * 1024 + 1, 2 * 1024 * 1024)
    );
}

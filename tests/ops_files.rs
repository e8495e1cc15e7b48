//! The operations files are checked with the tools an operator would use on them:
//!
//! - `systemd/crier.service`: `systemd-analyze verify` (alone and with the low-port drop-in),
//!   `systemd-analyze security` exposure ≤ 2.0 and the number written in the docs;
//! - `systemd/crier.sysusers`: `systemd-sysusers --root` creates user and group `crier`;
//! - `systemd/crier.toml`: lists every `crier serve` setting with its real default, and the
//!   real binary starts with all of them uncommented;
//! - `tuning/apply.sh` and `scripts/install.sh`: shellcheck; `apply.sh --dry-run` prints
//!   `key: old → new` for exactly the keys that differ and changes nothing; without root and
//!   without `--dry-run` it refuses; on a scratch tree it applies, never lowers a limit, and a
//!   second run changes nothing; `install.sh` stages everything under DESTDIR;
//! - `deploy/nginx/crier.conf`: `nginx -t`, and a WebSocket through it reaches crier (only
//!   where nginx and openssl are installed).
//!
//! `systemd-analyze verify` needs the unit's ExecStart binary to exist, so the unit is copied
//! to a scratch directory with ExecStart pointed at the binary under test; everything else is
//! the file as shipped. Needs `systemd` (systemd-analyze, systemd-sysusers) and `shellcheck`:
//! `apt-get install -y systemd shellcheck`.

// The one NGINX helper the cluster tests share; this file needs nothing else of `common`.
#[path = "common/nginx.rs"]
#[allow(dead_code)] // the NGINX runner is for tests/cluster*.rs
mod nginx;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nginx::{nginx_main_conf, nginx_plain_site};

const BIN: &str = env!("CARGO_BIN_EXE_crier");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TIMEOUT: Duration = Duration::from_secs(20);

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A scratch directory under the system temp dir (world-traversable, so `nobody` can run
/// scripts copied into it), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crier-ops-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        TempDir(dir)
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn need(tool: &str, package: &str) {
    assert!(have(tool), "{tool} is not installed: apt-get install -y {package} (.ci/run installs it)");
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The unit as shipped, in `dir`, with ExecStart pointing at the binary under test.
fn unit_copy(dir: &TempDir) -> PathBuf {
    let unit = read("systemd/crier.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/crier serve --config /etc/crier/crier.toml"));
    let unit = unit.replace("ExecStart=/usr/local/bin/crier ", &format!("ExecStart={BIN} "));
    let path = dir.path("crier.service");
    std::fs::write(&path, unit).unwrap();
    path
}

/// Lines of `systemd-analyze` output that are about our unit or drop-in.
fn complaints(out: &Output) -> Vec<String> {
    text(out).lines().filter(|l| l.contains("crier") || l.contains("low-port")).map(str::to_string).collect()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    need("systemd-analyze", "systemd");
    let dir = TempDir::new("verify");
    let unit = unit_copy(&dir);
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(out.status.success() && complaints(&out).is_empty(), "systemd-analyze verify:\n{}", text(&out));

    // The low-port drop-in, where systemd would find it: crier.service.d/ beside the unit.
    std::fs::create_dir_all(dir.path("crier.service.d")).unwrap();
    std::fs::copy(repo("systemd/low-port.conf"), dir.path("crier.service.d/low-port.conf")).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(out.status.success() && complaints(&out).is_empty(), "verify with low-port.conf:\n{}", text(&out));
}

/// `systemd-analyze security --offline=yes` on the unit: (exit status, exposure level).
fn exposure(unit: &Path) -> (bool, String) {
    // --threshold is in tenths: fail above 2.0.
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(unit));
    let all = text(&out);
    let level = all
        .lines()
        .find_map(|l| l.split("Overall exposure level for crier.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"))
        .to_string();
    (out.status.success(), level)
}

#[test]
fn unit_security_exposure_is_at_most_2_and_documented() {
    need("systemd-analyze", "systemd");
    let dir = TempDir::new("security");
    let (ok, level) = exposure(&unit_copy(&dir));
    let value: f64 = level.parse().unwrap();
    assert!(ok && value <= 2.0, "exposure {level} must be ≤ 2.0");
    let docs: String =
        ["README.md", "docs/OPERATIONS.md"].iter().filter_map(|p| std::fs::read_to_string(repo(p)).ok()).collect();
    let phrase = format!("exposure level {level}");
    assert!(docs.contains(&phrase), "the docs must state `{phrase}` (the number systemd-analyze gives now)");

    // The drop-in adds one capability and gives up PrivateUsers: still under 2.0.
    std::fs::create_dir_all(dir.path("crier.service.d")).unwrap();
    std::fs::copy(repo("systemd/low-port.conf"), dir.path("crier.service.d/low-port.conf")).unwrap();
    let (ok, with_dropin) = exposure(&dir.path("crier.service"));
    assert!(ok, "exposure with low-port.conf is {with_dropin}");
    assert!(
        docs.contains(&format!("exposure level {with_dropin}")),
        "the docs must state {with_dropin} for low-port.conf"
    );
}

#[test]
fn unit_keeps_the_contract() {
    let unit = read("systemd/crier.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/crier serve --config /etc/crier/crier.toml",
        "LimitNOFILE=1048576",
        "RuntimeDirectory=crier",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
        "CapabilityBoundingSet=",
    ] {
        assert!(has(line), "crier.service lacks `{line}`");
    }
    // TimeoutStopSec must leave room for the drain (default 5s) and then some.
    let stop = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).expect("TimeoutStopSec");
    let secs: u64 = stop.trim_end_matches('s').parse().expect("TimeoutStopSec in seconds");
    let sample = read("systemd/crier.toml");
    let drain = sample.lines().find_map(|l| l.strip_prefix("#drain-timeout = ")).expect("drain-timeout in the sample");
    let drain: u64 = drain.trim_matches('"').trim_end_matches('s').parse().unwrap();
    assert!(secs > drain * 2, "TimeoutStopSec={stop} must be well above drain-timeout {drain}s");
}

#[test]
fn sysusers_creates_user_and_group_crier() {
    need("systemd-sysusers", "systemd");
    let dir = TempDir::new("sysusers");
    std::fs::create_dir_all(dir.path("etc")).unwrap();
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", dir.0.display()))
        .arg(repo("systemd/crier.sysusers")));
    assert!(out.status.success(), "{}", text(&out));
    let passwd = std::fs::read_to_string(dir.path("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(dir.path("etc/group")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("crier:")).expect("user crier");
    assert!(user.ends_with(":/usr/sbin/nologin"), "{user}");
    let gid = user.split(':').nth(3).unwrap();
    assert!(group.lines().any(|l| l.starts_with(&format!("crier:x:{gid}:"))), "primary group crier:\n{group}");
}

/// `--flag` → its `[default: …]` (None when it has none), from `crier serve --help`.
fn serve_flags() -> BTreeMap<String, Option<String>> {
    let out = run(Command::new(BIN).args(["serve", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let name = rest.split([' ', '=', '<']).next().unwrap().to_string();
            flags.insert(name.clone(), None);
            current = Some(name);
        } else if let (Some(name), Some(d)) = (&current, t.strip_prefix("[default: ")) {
            flags.insert(name.clone(), Some(d.trim_end_matches(']').to_string()));
        }
    }
    for meta in ["help", "version", "config"] {
        flags.remove(meta);
    }
    flags
}

/// The sample with every `#key = value` line uncommented.
fn sample_uncommented() -> (String, BTreeMap<String, String>) {
    let mut keys = BTreeMap::new();
    let mut out = String::new();
    for line in read("systemd/crier.toml").lines() {
        let body = line.strip_prefix('#').filter(|b| b.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
        let line = body.unwrap_or(line);
        if let Some((k, v)) = line.split_once(" = ")
            && !line.starts_with('#')
        {
            assert!(keys.insert(k.to_string(), v.trim_matches('"').to_string()).is_none(), "{k} twice");
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, keys)
}

#[test]
fn sample_config_lists_every_setting_with_its_default() {
    let flags = serve_flags();
    let (_, keys) = sample_uncommented();
    let missing: Vec<_> = flags.keys().filter(|f| !keys.contains_key(*f)).collect();
    assert!(missing.is_empty(), "settings missing from systemd/crier.toml: {missing:?}");
    let unknown: Vec<_> = keys.keys().filter(|k| !flags.contains_key(*k)).collect();
    assert!(unknown.is_empty(), "keys in systemd/crier.toml that crier serve does not have: {unknown:?}");
    for (key, default) in &flags {
        if let Some(default) = default
            && key != "publish-socket"
        {
            assert_eq!(
                &keys[key], default,
                "systemd/crier.toml shows {key} = {:?}, the default is {default}",
                keys[key]
            );
        }
    }
    let active = read("systemd/crier.toml");
    assert!(
        active.lines().any(|l| l == "publish-socket = \"/run/crier/publish.sock\""),
        "the unit's socket path is set"
    );
}

/// Starts crier, waits for its `ready` line, SIGTERMs it and expects exit 0.
fn start_and_stop(mut cmd: Command) -> String {
    let mut child: Child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start crier");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let pipe = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut log = Vec::new();
    let ready = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("ready ws=") => break line,
            Ok(line) => log.push(line),
            Err(_) => {
                // SAFETY: our own, unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.wait();
                panic!("no ready line within {TIMEOUT:?}:\n{}", log.join("\n"));
            }
        }
    };
    // Serving: the admin port answers /healthz (this also keeps the test about the config,
    // not about how soon after `ready` SIGTERM is handled; tests/systemd_notify.rs covers that).
    let admin: SocketAddr = ready
        .split("admin=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {ready:?}"));
    let mut s = TcpStream::connect_timeout(&admin, TIMEOUT).expect("connect to admin");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    // The sample's `redis` line turns on cluster mode; with no Redis at that address the
    // node serves, and /healthz says it cannot reach Redis (README "Cluster mode").
    let no_redis = reply.starts_with("HTTP/1.1 503") && reply.ends_with("redis unavailable\n");
    assert!(reply.starts_with("HTTP/1.1 200") || no_redis, "/healthz: {reply:?}");
    // SAFETY: our own, unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("crier did not stop within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status}");
    ready
}

#[test]
fn the_server_accepts_the_sample_with_everything_uncommented() {
    let dir = TempDir::new("sample");
    let (toml, _) = sample_uncommented();
    // `redis` and `redis-cluster` exclude each other (the sample says so): keep `redis`.
    let toml: String = toml.lines().filter(|l| !l.starts_with("redis-cluster ")).map(|l| format!("{l}\n")).collect();
    let file = dir.path("crier.toml");
    std::fs::write(&file, toml).unwrap();
    // The sample's key files are under /etc/crier; flags point at test ones instead.
    std::fs::write(dir.path("jwt.secret"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(dir.path("admin.token"), "admin-token\n").unwrap();
    let mut cmd = Command::new(BIN);
    // Flags beat the file: keep the test on loopback, ephemeral ports and its own socket.
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--publish-socket")
        .arg(dir.path("p.sock"))
        .arg("--jwt-key-file")
        .arg(dir.path("jwt.secret"))
        .arg("--admin-token-file")
        .arg(dir.path("admin.token"))
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("CRIER_") {
            cmd.env_remove(k);
        }
    }
    let ready = start_and_stop(cmd);
    assert!(ready.contains("shards=2"), "shards = 2 from the file: {ready}");
}

#[test]
fn scripts_pass_shellcheck() {
    need("shellcheck", "shellcheck");
    for script in ["tuning/apply.sh", "scripts/install.sh"] {
        let out = run(Command::new("shellcheck").arg(repo(script)));
        assert!(out.status.success(), "shellcheck {script}:\n{}", text(&out));
    }
}

/// The keys of the tuning files: key → (optional, value).
fn tuning_keys() -> Vec<(String, bool, String)> {
    let mut keys = Vec::new();
    for file in ["tuning/sysctl.d/90-crier.conf", "tuning/sysctl.d/91-crier-conntrack.conf"] {
        for line in read(file).lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{file}: not key = value: {l}"));
            let k = k.trim();
            let optional = k.starts_with('-');
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            keys.push((k.trim_start_matches('-').to_string(), optional, v));
        }
    }
    keys
}

fn live(proc_root: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(proc_root.join(key.replace('.', "/")))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn apply_dry_run_prints_old_to_new_and_changes_nothing() {
    let keys = tuning_keys();
    let proc_sys = Path::new("/proc/sys");
    let before: Vec<_> = keys.iter().map(|(k, _, _)| live(proc_sys, k)).collect();
    let etc_files = [
        "/etc/sysctl.d/90-crier.conf",
        "/etc/sysctl.d/91-crier-conntrack.conf",
        "/etc/security/limits.d/90-crier.conf",
    ];
    let etc_before: Vec<_> = etc_files.iter().map(|f| std::fs::read(f).ok()).collect();

    let out = run(Command::new(repo("tuning/apply.sh")).arg("--dry-run"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.starts_with("apply.sh --dry-run: nothing will be changed"), "{stdout}");

    for ((key, optional, _), old) in keys.iter().zip(&before) {
        let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(&format!(" {key}"))).collect();
        assert_eq!(lines.len(), 1, "{key} reported once:\n{stdout}");
        let line = lines[0];
        match old {
            None => {
                assert!(*optional, "{key} is missing from /proc/sys but is not optional");
                assert!(line.starts_with(&format!("skip {key}: not present")), "{line}");
            }
            Some(old) if line.starts_with("would set ") => {
                let (was, new) = line.split_once(": ").unwrap().1.split_once(" → ").expect("old → new");
                assert_eq!(was, old, "{line}: old value is the live one");
                assert_ne!(new, old, "{line}: only keys that change get an arrow");
            }
            Some(old) => assert!(line.starts_with(&format!("ok   {key} = {old}")), "{line}"),
        }
    }
    let after: Vec<_> = keys.iter().map(|(k, _, _)| live(proc_sys, k)).collect();
    assert_eq!(before, after, "--dry-run changed a live value");
    let etc_after: Vec<_> = etc_files.iter().map(|f| std::fs::read(f).ok()).collect();
    assert_eq!(etc_before, etc_after, "--dry-run changed a file in /etc");
}

/// The tuning directory copied where `nobody` can read and run it.
fn tuning_copy(dir: &TempDir) -> PathBuf {
    let t = dir.path("tuning");
    for sub in ["sysctl.d", "limits.d"] {
        std::fs::create_dir_all(t.join(sub)).unwrap();
        set_mode(&t.join(sub), 0o755);
        for entry in std::fs::read_dir(repo(&format!("tuning/{sub}"))).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), t.join(sub).join(entry.file_name())).unwrap();
        }
    }
    set_mode(&t, 0o755);
    std::fs::copy(repo("tuning/apply.sh"), t.join("apply.sh")).unwrap();
    set_mode(&t.join("apply.sh"), 0o755);
    t
}

fn as_nobody(script: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(script).args(args);
        c
    } else {
        let mut c = Command::new(script);
        c.args(args);
        c
    }
}

#[test]
fn apply_refuses_without_root_unless_dry_run() {
    let dir = TempDir::new("nobody");
    let apply = tuning_copy(&dir).join("apply.sh");
    let out = run(&mut as_nobody(&apply, &[]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to run as") && err.contains("needs root") && err.contains("--dry-run"), "{err}");
    assert!(out.stdout.is_empty(), "nothing done before refusing: {}", String::from_utf8_lossy(&out.stdout));

    let out = run(&mut as_nobody(&apply, &["--dry-run"]));
    assert!(out.status.success(), "--dry-run works for anyone: {}", text(&out));
}

#[test]
fn apply_on_a_scratch_tree_applies_once_and_never_lowers_limits() {
    if !is_root() {
        eprintln!("skipped: needs root (apply.sh refuses otherwise; see apply_refuses_without_root_unless_dry_run)");
        return;
    }
    let dir = TempDir::new("apply");
    let proc_root = dir.path("proc");
    let seed = [
        ("fs/file-max", "9223372036854775807"), // systemd's maximum: must stay
        ("fs/nr_open", "1048576"),
        ("net/core/somaxconn", "4096"),
        ("net/ipv4/tcp_max_syn_backlog", "2048"),
        ("net/core/netdev_max_backlog", "1000"),
        ("net/ipv4/ip_local_port_range", "32768\t60999"),
        ("net/ipv4/tcp_mem", "287901\t383868\t575802"),
        ("net/ipv4/tcp_rmem", "4096\t131072\t33554432"),
        ("net/ipv4/tcp_wmem", "4096\t16384\t4194304"),
        ("net/ipv4/tcp_fin_timeout", "60"),
    ];
    for (k, v) in seed {
        let p = proc_root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{v}\n")).unwrap();
    }
    let etc = dir.path("etc");
    let apply = || {
        run(Command::new(repo("tuning/apply.sh")).env("CRIER_TUNING_PROC", &proc_root).env("CRIER_TUNING_ETC", &etc))
    };
    let first = apply();
    assert!(first.status.success(), "{}", text(&first));
    let got = |k: &str| live(&proc_root, k).unwrap();
    assert_eq!(got("fs.file-max"), "9223372036854775807", "never lowered");
    assert_eq!(got("net.core.somaxconn"), "65535");
    assert_eq!(got("net.ipv4.ip_local_port_range"), "10000 65535");
    assert_eq!(got("net.ipv4.tcp_mem"), "287901 524288 786432", "each threshold only raised");
    assert_eq!(got("net.ipv4.tcp_rmem"), "4096 16384 33554432", "the larger max kept");
    assert_eq!(got("net.ipv4.tcp_fin_timeout"), "15");
    let installed = std::fs::read_to_string(etc.join("sysctl.d/90-crier.conf")).unwrap();
    assert!(installed.contains("\nfs.file-max = 9223372036854775807\n"), "the boot file keeps the higher value");
    assert!(installed.contains("\nnet.ipv4.tcp_mem = 287901 524288 786432\n"));
    let conntrack = std::fs::read_to_string(etc.join("sysctl.d/91-crier-conntrack.conf")).unwrap();
    assert!(conntrack.contains("\n-net.netfilter.nf_conntrack_max = 262144\n"), "{conntrack}");
    assert_eq!(
        std::fs::read_to_string(etc.join("security/limits.d/90-crier.conf")).unwrap(),
        read("tuning/limits.d/90-crier.conf")
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("skip net.netfilter.nf_conntrack_max: not present"));

    let second = apply();
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{out}");
    assert!(!out.contains('→') && out.trim_end().ends_with("nothing to change"), "second run is a no-op:\n{out}");
}

#[test]
fn install_stages_everything_under_destdir() {
    let dir = TempDir::new("install");
    let dest = dir.path("root");
    let out = run(Command::new(repo("scripts/install.sh")).arg("--bin").arg(BIN).env("DESTDIR", &dest));
    assert!(out.status.success(), "{}", text(&out));
    for (path, mode) in [
        ("usr/local/bin/crier", 0o755),
        ("etc/systemd/system/crier.service", 0o644),
        ("etc/sysusers.d/crier.conf", 0o644),
        ("etc/crier/crier.toml", 0o640),
        ("usr/local/share/crier/tuning/apply.sh", 0o755),
        ("usr/local/share/crier/tuning/sysctl.d/90-crier.conf", 0o644),
        ("usr/local/share/crier/tuning/sysctl.d/91-crier-conntrack.conf", 0o644),
        ("usr/local/share/crier/tuning/limits.d/90-crier.conf", 0o644),
        ("usr/local/share/crier/low-port.conf", 0o644),
        ("usr/local/share/crier/nginx-crier.conf", 0o644),
        ("usr/local/share/doc/crier/README.md", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dest.join(path)).unwrap_or_else(|e| panic!("{path}: {e}\n{}", text(&out)));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
    }
    assert_eq!(std::fs::read_to_string(dest.join("etc/crier/crier.toml")).unwrap(), read("systemd/crier.toml"));
    if have("systemd-sysusers") {
        let passwd = std::fs::read_to_string(dest.join("etc/passwd")).unwrap();
        assert!(passwd.lines().any(|l| l.starts_with("crier:")), "{passwd}");
    }
    // Again, with an edited config: the operator's file stays, the sample goes beside it.
    std::fs::write(dest.join("etc/crier/crier.toml"), "max-connections = 5\n").unwrap();
    let again = run(Command::new(repo("scripts/install.sh")).arg("--bin").arg(BIN).env("DESTDIR", &dest));
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(dest.join("etc/crier/crier.toml")).unwrap(), "max-connections = 5\n");
    assert_eq!(std::fs::read_to_string(dest.join("etc/crier/crier.toml.new")).unwrap(), read("systemd/crier.toml"));
}

/// A free loopback port (bound and released; nginx binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn nginx_sample_is_valid_and_proxies_websockets() {
    assert!(
        have("nginx") && have("openssl"),
        "nginx or openssl is not installed: apt-get install -y nginx-light openssl (scripts/test.sh installs them)"
    );
    let dir = TempDir::new("nginx");
    let d = &dir.0;
    let out = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem")));
    assert!(out.status.success(), "{}", text(&out));
    let main_conf = |site: &str| nginx_main_conf(d, site, 256);
    let sample = read("deploy/nginx/crier.conf");

    // 1. The sample as shipped (TLS and all), with our certificate: nginx -t.
    let tls = sample
        .replace("/etc/nginx/tls/crier.example.com.fullchain.pem", &d.join("cert.pem").display().to_string())
        .replace("/etc/nginx/tls/crier.example.com.key.pem", &d.join("key.pem").display().to_string());
    std::fs::write(d.join("tls.conf"), tls).unwrap();
    std::fs::write(d.join("nginx-tls.conf"), main_conf("tls.conf")).unwrap();
    let out = run(Command::new("nginx").arg("-t").arg("-p").arg(d).arg("-c").arg(d.join("nginx-tls.conf")));
    assert!(out.status.success(), "nginx -t on the sample:\n{}", text(&out));

    // 2. Live: crier on loopback behind the sample's upstream and `location /ws`, on plain
    //    HTTP (no TLS client here), every upstream replaced by the local crier.
    let crier_port = free_port();
    let nginx_port = free_port();
    let site = nginx_plain_site(&sample, &[format!("server 127.0.0.1:{crier_port};")], nginx_port);
    std::fs::write(d.join("plain.conf"), site).unwrap();
    std::fs::write(d.join("nginx-plain.conf"), main_conf("plain.conf")).unwrap();

    let mut crier = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{crier_port}"), "--admin-listen", "off", "--shards", "1"])
        .arg("--publish-socket")
        .arg(d.join("p.sock"))
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut nginx = Command::new("nginx")
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx-plain.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kill = |c: &mut Child| {
        // SAFETY: our own, unreaped children, by PID.
        unsafe { libc::kill(libc::pid_t::try_from(c.id()).unwrap(), libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(libc::pid_t::try_from(c.id()).unwrap(), libc::SIGKILL) };
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Ready when both answer: crier's ready line, then nginx accepting on its port.
        let stderr = crier.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("crier ready line");
            if line.contains("ready ws=") {
                break;
            }
        }
        let nginx_addr: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().unwrap();
        let connect = || loop {
            match TcpStream::connect_timeout(&nginx_addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "nginx never listened on {nginx_addr}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        // The browser client passes through; other paths get NGINX's 404.
        for (path, status) in [("/crier.js", "HTTP/1.1 200"), ("/metrics", "HTTP/1.1 404")] {
            let mut c = connect();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: crier.example.com\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .unwrap();
            let mut reply = Vec::new();
            let _ = c.read_to_end(&mut reply);
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.starts_with(status), "GET {path} through nginx: {}", reply.lines().next().unwrap_or(""));
        }
        let mut s = connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"GET /ws?channels=t HTTP/1.1\r\nHost: crier.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut b).unwrap(),
                1,
                "nginx closed during the upgrade: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade through nginx:\n{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        // A message published to crier arrives through nginx. The connection counts as
        // subscribed once the upgrade is answered; retry the publish until the frame shows.
        let deadline = Instant::now() + TIMEOUT;
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        loop {
            let out = run(Command::new(BIN)
                .args(["publish", "--channel", "t", "--publish-socket"])
                .arg(d.join("p.sock"))
                .arg("via nginx"));
            assert!(out.status.success(), "{}", text(&out));
            let mut frame = [0u8; 11];
            match s.read_exact(&mut frame) {
                Ok(()) => {
                    assert_eq!(frame[0], 0x81, "a final text frame");
                    assert_eq!(&frame[2..], b"via nginx");
                    break;
                }
                Err(_) => assert!(Instant::now() < deadline, "no message through nginx"),
            }
        }
    }));
    kill(&mut nginx);
    kill(&mut crier);
    if let Err(e) = result {
        let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
        eprintln!("nginx error.log:\n{log}");
        std::panic::resume_unwind(e);
    }
}

//! The Debian package: `cargo deb` (cargo-deb, `[package.metadata.deb]` in Cargo.toml and
//! the files in `debian/`) builds `target/debian/crier_<version>_amd64.deb`; lintian finds
//! no error in it; `dpkg --root` installs it into a scratch tree (maintainer scripts run
//! with DPKG_ROOT, so they act on that tree, not on this machine) and every file, the
//! conffile, the user and the config's group are where the README says; the installed
//! binary runs; nothing is enabled or started; a changed config survives a reinstall;
//! purge removes the files and keeps the user. Then the README's plain `dpkg -i` (scripts
//! on the real paths: systemd-sysusers, dpkg-statoverride) on an overlay of this machine's
//! root in a private mount namespace, so that the machine itself is left unchanged.
//!
//! Needs cargo-deb (`cargo install cargo-deb --locked`), lintian and dpkg
//! (`apt-get install -y lintian`), and unshare (util-linux) with overlayfs for the last
//! test: scripts/test.sh installs them.

#[macro_use]
mod common;

use common::assert_shellcheck;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn need(cmd: &mut Command, install: &str) {
    let ok = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "{cmd:?} failed: this test needs it; install with: {install} (scripts/test.sh does)");
}

/// What the package installs: (path, mode).
const FILES: &[(&str, u32)] = &[
    ("usr/bin/crier", 0o755),
    ("usr/lib/systemd/system/crier.service", 0o644),
    ("usr/lib/sysusers.d/crier.conf", 0o644),
    ("usr/share/crier/tuning/apply.sh", 0o755),
    ("usr/share/crier/tuning/sysctl.d/90-crier.conf", 0o644),
    ("usr/share/crier/tuning/sysctl.d/91-crier-conntrack.conf", 0o644),
    ("usr/share/crier/tuning/limits.d/90-crier.conf", 0o644),
    ("usr/share/crier/low-port.conf", 0o644),
    ("usr/share/crier/nginx-crier.conf", 0o644),
    ("usr/share/doc/crier/README.md", 0o644),
    ("usr/share/doc/crier/ARCHITECTURE.md", 0o644),
    ("usr/share/doc/crier/copyright", 0o644),
    ("usr/share/doc/crier/changelog.gz", 0o644),
    ("usr/share/man/man1/crier.1.gz", 0o644),
    ("usr/share/lintian/overrides/crier", 0o644),
];

/// The same files in the checkout (the package ships them unchanged).
const SOURCES: &[(&str, &str)] = &[
    ("usr/lib/systemd/system/crier.service", "debian/crier.service"),
    ("usr/lib/sysusers.d/crier.conf", "systemd/crier.sysusers"),
    ("etc/crier/crier.toml", "systemd/crier.toml"),
    ("usr/share/crier/tuning/apply.sh", "tuning/apply.sh"),
    ("usr/share/crier/tuning/sysctl.d/90-crier.conf", "tuning/sysctl.d/90-crier.conf"),
    ("usr/share/crier/tuning/sysctl.d/91-crier-conntrack.conf", "tuning/sysctl.d/91-crier-conntrack.conf"),
    ("usr/share/crier/tuning/limits.d/90-crier.conf", "tuning/limits.d/90-crier.conf"),
    ("usr/share/crier/low-port.conf", "systemd/low-port.conf"),
    ("usr/share/crier/nginx-crier.conf", "deploy/nginx/crier.conf"),
    ("usr/share/doc/crier/README.md", "README.md"),
    ("usr/share/doc/crier/ARCHITECTURE.md", "ARCHITECTURE.md"),
];

/// `cargo deb` once for every test of this file (it builds the release binary if needed).
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        need(Command::new(&cargo).args(["deb", "--version"]), "cargo install cargo-deb --locked");
        // As the README says (the Cargo.lock in the checkout is used as it is).
        let out = run(Command::new(&cargo).arg("deb").current_dir(repo()));
        assert!(out.status.success(), "cargo deb failed:\n{}", text(&out));
        // cargo-deb prints the paths of what it made: the package, and its -dbgsym.ddeb.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(stdout.lines().find(|l| l.trim().ends_with(".deb")).unwrap_or("").trim());
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some(format!("crier_{VERSION}_amd64.deb").as_str()),
            "cargo deb output:\n{}",
            text(&out)
        );
        assert!(path.is_file(), "{} missing after cargo deb", path.display());
        path
    })
}

fn dpkg_deb(args: &[&str]) -> String {
    need(Command::new("dpkg-deb").arg("--version"), "apt-get install -y dpkg");
    let out = run(Command::new("dpkg-deb").args(args).arg(deb()));
    assert!(out.status.success(), "dpkg-deb {args:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn readme_shows_the_commands_and_this_version() {
    assert_eq!(
        common::readme_commands("### Debian package"),
        [
            "cargo install cargo-deb --locked".to_string(),
            "cargo deb".into(),
            format!("dpkg -i target/debian/crier_{VERSION}_amd64.deb")
        ]
    );
}

#[test]
fn lintian_finds_no_error() {
    need(Command::new("lintian").arg("--version"), "apt-get install -y lintian");
    let out =
        run(Command::new("lintian").args(["--fail-on", "error", "--info", "--display-level", ">=warning"]).arg(deb()));
    let report = text(&out);
    eprintln!("lintian:\n{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    // The exit status too: it also catches a lintian that could not check the package.
    assert!(out.status.success(), "lintian --fail-on error: {}\n{report}", out.status);
    // Warnings are allowed (there are none today; the notes that remain are overridden in
    // debian/lintian-overrides with their reasons), but shown.
    for w in report.lines().filter(|l| l.starts_with("W:")) {
        eprintln!("lintian warning: {w}");
    }
}

#[test]
fn control_declares_the_conffile_and_the_scripts() {
    let info = dpkg_deb(&["--info"]);
    for member in ["control", "conffiles", "postinst", "prerm", "postrm"] {
        assert!(
            info.lines().any(|l| l.split_whitespace().any(|w| w == member)),
            "control member {member} missing:\n{info}"
        );
    }
    let out = run(Command::new("dpkg-deb").arg("--info").arg(deb()).arg("conffiles"));
    assert!(out.status.success(), "the package has no conffiles member:\n{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["/etc/crier/crier.toml"], "conffiles");
    let control = run(Command::new("dpkg-deb").args(["--field"]).arg(deb()));
    let control = String::from_utf8_lossy(&control.stdout);
    for field in [
        "Package: crier".to_string(),
        format!("Version: {VERSION}"),
        "Architecture: amd64".into(),
        "Section: net".into(),
    ] {
        assert!(control.lines().any(|l| l == field), "control lacks {field:?}:\n{control}");
    }
    assert!(control.lines().any(|l| l.starts_with("Depends:") && l.contains("libc6")), "{control}");
}

#[test]
fn every_file_is_owned_by_root_with_its_mode() {
    let listing = dpkg_deb(&["--contents"]);
    for (path, mode) in FILES.iter().copied().chain([("etc/crier/crier.toml", 0o644)]) {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        let perms = line.split_whitespace().next().unwrap();
        let want = format!("-{}", rwx(mode));
        assert_eq!(perms, want, "{line}");
        let owner = line.split_whitespace().nth(1);
        assert!(owner == Some("0/0") || owner == Some("root/root"), "owned by root: {line}");
    }
    // Tuning is shipped, not applied: nothing goes to /etc/sysctl.d or /etc/security.
    assert!(!listing.contains("./etc/sysctl.d") && !listing.contains("./etc/security"), "{listing}");
    let etc: Vec<&str> = listing.lines().filter(|l| l.contains(" ./etc/") && !l.ends_with('/')).collect();
    assert_eq!(etc.len(), 1, "the only file under /etc is the config: {etc:?}");
}

fn rwx(mode: u32) -> String {
    (0..9).map(|i| if mode & (1 << (8 - i)) != 0 { ['r', 'w', 'x'][i % 3] } else { '-' }).collect()
}

#[test]
fn packaged_unit_is_the_source_unit_with_the_package_paths() {
    let ours = std::fs::read_to_string(repo().join("debian/crier.service")).unwrap();
    let source = std::fs::read_to_string(repo().join("systemd/crier.service")).unwrap();
    let body = |s: &str| s[s.find("\n[Unit]\n").expect("a [Unit] section")..].to_string();
    let expected = body(&source)
        .replace("/usr/local/bin/crier", "/usr/bin/crier")
        .replace("/usr/local/share/doc/crier", "/usr/share/doc/crier");
    assert!(
        body(&ours) == expected,
        "debian/crier.service must be systemd/crier.service from [Unit] on, with /usr/bin and /usr/share paths \
         (regenerate it with the command in its header)"
    );
    assert!(ours.contains("\nExecStart=/usr/bin/crier serve --config /etc/crier/crier.toml\n"));
    let changelog = std::fs::read_to_string(repo().join("debian/changelog")).unwrap();
    assert!(changelog.starts_with(&format!("crier ({VERSION}) ")), "debian/changelog's first entry is {VERSION}");
}

#[test]
fn maintainer_scripts_pass_shellcheck() {
    for script in ["debian/postinst", "debian/prerm", "debian/postrm"] {
        assert_shellcheck(&repo().join(script));
        // Nothing starts unasked: the only systemd calls are a daemon-reload, and a stop on removal.
        let body = std::fs::read_to_string(repo().join(script)).unwrap();
        for line in body.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with("echo ")) {
            if line.contains("systemctl") || line.contains("deb-systemd") || line.contains("invoke-rc.d") {
                assert!(
                    line == "systemctl daemon-reload || true"
                        || line == "deb-systemd-invoke stop crier.service || true",
                    "{script}: {line:?}: the package may reload systemd and stop crier on removal, nothing else"
                );
            }
        }
    }
}

/// A scratch dpkg tree: `dpkg --root DIR` with an empty database.
fn scratch_root() -> common::TempDir {
    let dir = common::TempDir::new();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
    dir
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    need(Command::new("dpkg").arg("--version"), "apt-get install -y dpkg");
    // The scripts run on this machine with DPKG_ROOT set (they support it), not chrooted
    // into a tree that has no shell; libc6 & co are the host's, not the tree's.
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--force-confold"])
        .args(args);
    run(&mut cmd)
}

/// The uid and gid of `name` in the tree's /etc/passwd.
fn tree_user(root: &Path, name: &str) -> Option<(u32, u32, String)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
    passwd.lines().find(|l| l.starts_with(&format!("{name}:"))).map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f[2].parse().unwrap(), f[3].parse().unwrap(), f[6].to_string())
    })
}

/// PIDs of processes running the binary at `exe`.
fn running(exe: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .collect()
}

#[test]
fn installs_into_a_scratch_root_and_starts_nothing() {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "dpkg --root needs root (CI runs the tests as root)");
    let root = scratch_root();
    let deb = deb().to_str().unwrap().to_string();
    let out = dpkg(root.path(), &["-i", &deb]);
    let log = text(&out);
    assert!(out.status.success(), "dpkg -i:\n{log}");
    assert!(log.contains("crier is installed, not started"), "postinst tells what to do next:\n{log}");

    let status = text(&dpkg(root.path(), &["-s", "crier"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("Conffiles:\n /etc/crier/crier.toml "), "dpkg records the conffile:\n{status}");

    for (path, mode) in FILES {
        let md = std::fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(md.permissions().mode() & 0o7777, *mode, "{path}");
        assert_eq!(md.uid(), 0, "{path}");
    }
    for (installed, source) in SOURCES {
        let a = std::fs::read(root.join(installed)).unwrap();
        assert!(a == std::fs::read(repo().join(source)).unwrap(), "{installed} is not {source} as shipped");
    }

    // The user, from the sysusers file; the config readable by its group only.
    let (uid, gid, shell) = tree_user(root.path(), "crier").expect("postinst created user crier in the tree");
    assert!(uid > 0 && uid < 1000, "a system uid: {uid}");
    assert_eq!(shell, "/usr/sbin/nologin");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with(&format!("crier:x:{gid}:"))), "group crier: {group}");
    let conf = std::fs::metadata(root.join("etc/crier/crier.toml")).unwrap();
    assert_eq!((conf.permissions().mode() & 0o7777, conf.uid(), conf.gid()), (0o640, 0, gid), "crier.toml");

    // The binary runs, and is this version.
    let bin = root.join("usr/bin/crier");
    let out = run(Command::new(&bin).arg("--version"));
    assert!(out.status.success() && text(&out).contains(VERSION), "{} --version: {}", bin.display(), text(&out));
    let out = run(Command::new(&bin).args(["serve", "--help"]));
    assert!(out.status.success() && text(&out).contains("--config"), "{}", text(&out));

    // Nothing enabled, nothing started, no kernel setting installed.
    assert!(running(&bin).is_empty(), "a crier from the package is running: {:?}", running(&bin));
    for p in ["etc/systemd/system/multi-user.target.wants/crier.service", "etc/sysctl.d", "etc/security/limits.d"] {
        assert!(!root.join(p).exists(), "{p} exists after install: nothing may be enabled or applied unasked");
    }

    // A changed config survives a reinstall (conffile); the rest is replaced.
    let conf_path = root.join("etc/crier/crier.toml");
    let mut changed = std::fs::read_to_string(&conf_path).unwrap();
    changed.push_str("\nlisten = \"127.0.0.1:9999\"\n");
    std::fs::write(&conf_path, &changed).unwrap();
    std::fs::remove_file(root.join("usr/share/crier/low-port.conf")).unwrap();
    let out = dpkg(root.path(), &["-i", &deb]);
    assert!(out.status.success(), "reinstall:\n{}", text(&out));
    assert_eq!(std::fs::read_to_string(&conf_path).unwrap(), changed, "the admin's crier.toml was kept");
    assert!(root.join("usr/share/crier/low-port.conf").exists(), "reinstall restores shipped files");
    assert_eq!(tree_user(root.path(), "crier").map(|u| u.0), Some(uid), "the user is created once");

    // Purge: the files and the config go, the user stays (Debian keeps system users).
    let out = dpkg(root.path(), &["--purge", "crier"]);
    assert!(out.status.success(), "purge:\n{}", text(&out));
    for (path, _) in FILES {
        assert!(!root.join(path).exists(), "{path} left after purge");
    }
    assert!(!conf_path.exists(), "crier.toml left after purge");
    assert!(tree_user(root.path(), "crier").is_some(), "purge keeps the system user");
}

/// The README's `dpkg -i`, for real (no DPKG_ROOT: systemd-sysusers on /etc, a
/// dpkg-statoverride in dpkg's own database), on a copy-on-write view of this machine: an
/// overlay of / in a private mount namespace, entered with chroot. Every write goes to the
/// overlay's upper directory; the machine itself is not changed.
#[test]
fn dpkg_i_on_an_overlay_of_this_machine() {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "mounting an overlay needs root (CI runs the tests as root)");
    need(Command::new("unshare").arg("--version"), "apt-get install -y util-linux");
    let dir = common::TempDir::new();
    for d in ["upper", "work", "merged", "pkg"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    std::fs::copy(deb(), dir.join("pkg/crier.deb")).unwrap();
    let inside = r#"
        set -e
        dpkg -i /pkg/crier.deb
        echo "user=$(getent passwd crier)"
        echo "config=$(stat -c '%a %U %G' /etc/crier/crier.toml)"
        echo "override=$(dpkg-statoverride --list /etc/crier/crier.toml)"
        echo "version=$(/usr/bin/crier --version)"
        [ -e /etc/systemd/system/multi-user.target.wants/crier.service ] && echo enabled
        dpkg --purge crier
        echo "purged-override=$(dpkg-statoverride --list /etc/crier/crier.toml || true)"
        [ -e /usr/bin/crier ] || echo "purged-binary"
        echo "purged-user=$(getent passwd crier)"
    "#;
    let outer = format!(
        "set -e
         mount -t overlay overlay -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {d}/merged
         mount -t proc proc {d}/merged/proc
         mount --bind /dev {d}/merged/dev
         mkdir -p {d}/merged/pkg
         mount --bind {d}/pkg {d}/merged/pkg
         exec chroot {d}/merged sh -c '{inside}'",
        d = dir.path().display(),
        inside = inside.replace('\'', r#"'\''"#)
    );
    let host = || (std::fs::read("/etc/passwd").unwrap(), text(&run(Command::new("dpkg-query").args(["-s", "crier"]))));
    let before = host();
    let out = run(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &outer]));
    let log = text(&out);
    assert!(out.status.success(), "dpkg -i on the overlay:\n{log}");
    let value = |key: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= line:\n{log}"))
            .to_string()
    };
    assert!(value("user").starts_with("crier:x:") && value("user").ends_with(":/:/usr/sbin/nologin"), "{log}");
    assert_eq!(value("config"), "640 root crier", "{log}");
    assert_eq!(value("override"), "root crier 640 /etc/crier/crier.toml");
    assert_eq!(value("version"), format!("crier {VERSION}"));
    assert!(!log.lines().any(|l| l == "enabled"), "installing enabled crier:\n{log}");
    assert!(log.contains("crier is installed, not started"), "{log}");
    assert_eq!(value("purged-override"), "", "purge drops the statoverride");
    assert!(log.lines().any(|l| l == "purged-binary"), "{log}");
    assert!(value("purged-user").starts_with("crier:x:"), "purge keeps the system user");
    // And this machine has none of it: its users and its dpkg database are as they were.
    assert!(host() == before, "installing on the overlay changed this machine's /etc/passwd or dpkg database");
}

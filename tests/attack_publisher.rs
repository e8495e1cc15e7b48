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
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

fn healthz(s: &Server) -> (u16, String) {
    let r = s.admin_get("/healthz");
    (r.status, r.body_text())
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

/// Connects to the publisher socket at `path`, or None.
fn try_publish(path: &Path, payload: &str) -> Option<u64> {
    let mut c = UnixStream::connect(path).ok()?;
    c.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    c.write_all(&pub_command("*", payload.as_bytes(), None)).ok()?;
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).ok()?;
    Some(parse_ok(line.trim_end()))
}

#[test]
fn deleted_socket_is_recreated_and_reported() {
    let s = Server::start(Driver::Epoll);
    let mut sub = s.ws("/ws");
    s.wait_connections(1);
    assert_eq!(s.publish("*", "before"), 1);
    assert_eq!(sub.expect_text(), "before");
    // A publisher connected before the deletion keeps working: its connection is not the file.
    let mut old = s.publisher();
    std::fs::remove_file(&s.publish).unwrap();
    let mut seq = None;
    wait_until(IO_TIMEOUT, "the publisher socket to be recreated", || {
        seq = try_publish(&s.publish, "after");
        seq.is_some()
    });
    assert_eq!(seq, Some(2));
    assert_eq!(sub.expect_text(), "after");
    assert_eq!(old.publish("*", b"old connection", false), 3);
    assert_eq!(sub.expect_text(), "old connection");
    assert_eq!(s.metric0("crier_publish_socket_recreated_total", &[]), 1.0);
    assert_eq!(s.metric0("crier_publish_socket_up", &[]), 1.0);
    assert_eq!(healthz(&s).0, 200);
    let meta = std::fs::metadata(&s.publish).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "recreated with --publish-socket-mode");
    assert!(
        s.wait_log(IO_TIMEOUT, |l| l.contains("recreated") && l.contains(&s.publish.display().to_string())).is_some(),
        "the log must say the socket was recreated:\n{}",
        s.log_text()
    );
}

/// Puts a socket of our own at `path` in one step (rename), as another instance would.
fn replace_with_own_socket(path: &Path) -> (UnixListener, u64) {
    let tmp = PathBuf::from(format!("{}.new", path.display()));
    let l = UnixListener::bind(&tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    let ino = std::fs::symlink_metadata(path).unwrap().ino();
    (l, ino)
}

#[test]
fn replaced_socket_is_reported_and_left_alone_at_exit() {
    let mut s = Server::start(Driver::Epoll);
    let path = s.publish.clone();
    let shown = path.display().to_string();
    assert_eq!(healthz(&s).0, 200);
    let (theirs, _) = replace_with_own_socket(&path);
    wait_until(IO_TIMEOUT, "/healthz to report the replaced socket", || healthz(&s).0 == 503);
    let (_, body) = healthz(&s);
    assert!(body.contains(&shown) && body.contains("replaced"), "/healthz must say what happened: {body:?}");
    assert_eq!(s.metric0("crier_publish_socket_up", &[]), 0.0);
    assert!(s.wait_log(IO_TIMEOUT, |l| l.contains("replaced") && l.contains(&shown)).is_some(), "{}", s.log_text());
    // crier does not touch a file it did not create; once it is gone, crier takes the path back.
    drop(theirs);
    std::fs::remove_file(&path).unwrap();
    wait_until(IO_TIMEOUT, "/healthz back to 200 after the path was freed", || healthz(&s).0 == 200);
    assert_eq!(try_publish(&path, "back"), Some(1));
    assert_eq!(s.metric0("crier_publish_socket_up", &[]), 1.0);

    // Replaced again, then crier exits: the other socket must survive.
    let (theirs, ino) = replace_with_own_socket(&path);
    wait_until(IO_TIMEOUT, "/healthz to report the replaced socket", || healthz(&s).0 == 503);
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(10)).is_some_and(|st| st.success()), "clean exit");
    let meta = std::fs::symlink_metadata(&path).expect("crier unlinked a socket it did not create");
    assert_eq!(meta.ino(), ino, "the file at the path is not the other instance's socket");
    let _c = UnixStream::connect(&path).expect("the other instance's socket must still answer");
    theirs.set_nonblocking(false).unwrap();
    assert!(theirs.accept().is_ok());
}

#[test]
fn own_socket_is_removed_at_exit() {
    let mut s = Server::start(Driver::Epoll);
    let path = s.publish.clone();
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(10)).is_some_and(|st| st.success()), "clean exit");
    assert!(std::fs::symlink_metadata(&path).is_err(), "crier's own socket must be removed at exit");
}

/// Reads every reply line of the flooding publisher; says when the first `+OK` came, and
/// returns how many came back.
fn read_replies(stream: UnixStream, n: usize, first: std::sync::mpsc::Sender<()>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut r = BufReader::with_capacity(1 << 20, stream);
        let mut line = Vec::new();
        let mut ok = 0;
        while ok < n {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.starts_with(b"+OK ") => ok += 1,
                Ok(_) => panic!("flood publisher got {:?}", String::from_utf8_lossy(&line)),
            }
            if ok == 1 {
                let _ = first.send(());
            }
        }
        ok
    })
}

/// Lets `stream` queue `bytes` in the kernel without blocking: SO_SNDBUFFORCE where
/// allowed (root), else as much as SO_SNDBUF gives. With the whole backlog queued, the
/// server always has more to read, which is the case a fair server must handle.
fn big_send_buffer(stream: &UnixStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    const SO_SNDBUFFORCE: libc::c_int = 32; // Linux, asm-generic
    let v = bytes as libc::c_int;
    for opt in [SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: v lives across the call; the fd is open.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

#[test]
fn a_flooding_publisher_does_not_hold_back_another() {
    // Sized so that, on a server that lets one publisher run until its socket is empty,
    // nothing else could get a turn: the whole backlog is queued in the kernel up front
    // (where SO_SNDBUFFORCE is allowed), the flood's replies fit in its socket's buffer
    // (~12 bytes each), and fewer messages than SHARD_QUEUE_HIGH_WATER (16 Ki) never
    // trigger the publishers' backpressure pause.
    const FLOOD: usize = 12_000;
    let s = Server::builder(Driver::Epoll).args(["--max-queue-bytes", "64MiB"]).start();
    let mut sub = s.ws("/ws?channels=c");
    // A permessage-deflate subscriber makes the server compress each message once: more
    // work per command, so the flood lasts long enough for the other publisher to send.
    let mut zsub = s.ws_deflate("/ws?channels=c");
    assert!(zsub.deflate);
    s.wait_connections(2);
    let rss_before = s.rss_bytes();
    let filler: String = (0..1000).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
    let mut backlog = Vec::with_capacity(FLOOD * 1100);
    for i in 0..FLOOD {
        let payload = if i == FLOOD - 1 { "LAST".to_string() } else { format!("f{i:07} {filler}") };
        backlog.extend_from_slice(&pub_command("c", payload.as_bytes(), None));
    }
    let flood = UnixStream::connect(&s.publish).unwrap();
    big_send_buffer(&flood, 2 * backlog.len());
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let replies = read_replies(flood.try_clone().unwrap(), FLOOD, first_tx);
    let mut fair = s.publisher();
    assert_eq!(fair.publish("other", b"warm-up", false), 1, "the second publisher is connected and served");
    let mut writer = flood.try_clone().unwrap();
    let t = Instant::now();
    let sender = std::thread::spawn(move || writer.write_all(&backlog).map(|_| ()));
    // Once the flood is being served, the other publisher sends one message.
    first_rx.recv_timeout(IO_TIMEOUT).expect("the flood's first +OK");
    let seq = fair.publish("c", b"FAIR", false);
    let fair_ok = t.elapsed();
    assert!(
        (seq as usize) < FLOOD,
        "the second publisher's message was sequenced after the whole flood (seq {seq}, flood {FLOOD}): publishers are not served fairly"
    );
    // The subscriber gets everything, and the second publisher's message before the flood's last.
    let mut fair_at = None;
    let mut got = 0;
    while got < FLOOD + 1 {
        let m = sub.recv(Duration::from_secs(30)).unwrap_or_else(|e| panic!("after {got} messages: {e:?}"));
        got += 1;
        match m.text() {
            "FAIR" => fair_at = Some(got),
            "LAST" => assert!(fair_at.is_some(), "the flood's last message arrived before the second publisher's"),
            _ => {}
        }
    }
    let flood_done = t.elapsed();
    for _ in 0..FLOOD + 1 {
        zsub.recv(Duration::from_secs(30)).expect("the deflate subscriber gets every message too");
    }
    assert_eq!(fair_at, Some(seq as usize), "delivered in sequence order");
    sender.join().unwrap().unwrap();
    assert_eq!(replies.join().unwrap(), FLOOD, "every flood command answered +OK");
    let grown = s.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes during the flood");
    eprintln!(
        "second publisher's +OK {fair_ok:?} after the flood started, seq {seq} of {}; flood delivered after {flood_done:?}",
        FLOOD + 1
    );
}

#[test]
fn publisher_stuck_mid_command_is_timed_out_idle_one_is_not() {
    let s = Server::builder(Driver::Epoll).args(["--publish-timeout", "1s"]).start();
    let mut sub = s.ws("/ws?channels=a");
    s.wait_connections(1);
    let mut idle = s.publisher();
    let t = Instant::now();
    // Stuck mid-payload.
    let mut stuck = s.publisher();
    stuck.send(b"PUB a 10\r\nhel").unwrap();
    let line = stuck.expect_line();
    assert!(line.starts_with("-ERR ") && line.contains("publish-timeout"), "{line:?}");
    assert!(t.elapsed() >= Duration::from_secs(1), "timed out before --publish-timeout");
    stuck.expect_closed();
    // Stuck mid-line.
    let mut stuck = s.publisher();
    stuck.send(b"PUB a").unwrap();
    assert!(stuck.expect_line().contains("publish-timeout"));
    stuck.expect_closed();
    s.wait_metric("crier_publish_errors_total", &[("reason", "timeout")], IO_TIMEOUT, "2", |v| v == 2.0);
    // The idle publisher waited longer than the timeout between commands: still served.
    assert!(t.elapsed() > Duration::from_secs(2));
    assert_eq!(idle.publish("a", b"still here", false), 1);
    assert_eq!(sub.expect_text(), "still here");
}

#[test]
fn trickling_publisher_does_not_reset_the_timeout() {
    let s = Server::builder(Driver::Epoll).args(["--publish-timeout", "1s"]).start();
    let mut p = s.publisher();
    let mut w = p.stream.try_clone().unwrap();
    let t = Instant::now();
    // One byte every 100 ms of a 200-byte payload: progress, but the command never ends
    // within the timeout, which counts from its first byte.
    let trickle = std::thread::spawn(move || {
        let _ = w.write_all(b"PUB a 200\r\n");
        for _ in 0..200 {
            if w.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // pacing, not waiting for readiness
        }
    });
    let line = p.expect_line();
    assert!(line.contains("publish-timeout"), "{line:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "the deadline must not move with each byte: {:?}", t.elapsed());
    p.expect_closed();
    trickle.join().unwrap();
}

#[test]
fn many_stuck_publishers_are_bounded_and_harm_no_one() {
    const STUCK: usize = 64;
    let s = Server::builder(Driver::Epoll).args(["--publish-timeout", "2s"]).start();
    let mut sub = s.ws("/ws?channels=a");
    s.wait_connections(1);
    let rss_before = s.rss_bytes();
    // Each sends the head of a 1 MiB payload and half of it, then stalls.
    let half = vec![b'x'; 512 * 1024];
    let mut stuck: Vec<Publisher> = (0..STUCK).map(|_| s.publisher()).collect();
    for p in &mut stuck {
        p.send(format!("PUB a {}\r\n", 1024 * 1024).as_bytes()).unwrap();
        p.send(&half).unwrap();
    }
    s.wait_metric("crier_publishers", &[], IO_TIMEOUT, ">= STUCK", |v| v >= STUCK as f64);
    // Meanwhile another publisher and the subscriber carry on.
    let mut good = s.publisher();
    for i in 1..=20u64 {
        assert_eq!(good.publish("a", format!("m{i}").as_bytes(), false), i);
        assert_eq!(sub.expect_text(), format!("m{i}"));
    }
    let peak = s.rss_bytes();
    for p in &mut stuck {
        let line = p.expect_line();
        assert!(line.contains("publish-timeout"), "{line:?}");
        p.expect_closed();
    }
    s.wait_metric("crier_publishers", &[], IO_TIMEOUT, "only the good one left", |v| v == 1.0);
    assert_eq!(s.metric0("crier_publish_errors_total", &[("reason", "timeout")]), STUCK as f64);
    // What the stuck publishers made crier hold is at most what they sent (plus slack).
    let grown = peak.saturating_sub(rss_before);
    assert!(grown < (STUCK as u64) * 2 * 1024 * 1024 + (32 << 20), "RSS grew by {grown} bytes");
    eprintln!("{STUCK} publishers stuck with 512 KiB each: RSS {rss_before} -> {peak} bytes, all timed out");
    assert_eq!(good.publish("a", b"after", false), 21);
    assert_eq!(sub.expect_text(), "after");
}

/// The shard queues are bounded in bytes as well as in broadcasts: with one shard wedged, a
/// publisher of 1 MiB messages is held once 64 MiB of them wait for that shard, instead of
/// queueing 16 Ki of them (16 GiB) before the count bound would stop it.
#[test]
fn shard_queues_are_bounded_in_bytes() {
    const MESSAGES: usize = 300;
    let s = ServerBuilder::new(Driver::Epoll).args(["--debug-wedge-shard", "1@1s"]).start();
    s.wait_metric("crier_shard_sweep_age_seconds", &[("shard", "1")], IO_TIMEOUT, "shard 1 wedged", |v| v > 1.5);
    let rss_before = s.rss_bytes();
    let payload = vec![b'x'; 1 << 20];
    let stream = UnixStream::connect(&s.publish).unwrap();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (stream, acked) = (stream.try_clone().unwrap(), acked.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                assert!(line.starts_with("+OK "), "{line:?}");
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                line.clear();
            }
        });
    }
    {
        let mut w = stream.try_clone().unwrap();
        let command = pub_command("c", &payload, Some("binary"));
        // Blocks once crier stops reading; ends with EPIPE when the server is dropped.
        std::thread::spawn(move || (0..MESSAGES).try_for_each(|_| w.write_all(&command)));
    }
    s.wait_metric("crier_shard_queue_bytes", &[("shard", "1")], IO_TIMEOUT, "64 MiB queued", |v| v > (63 << 20) as f64);
    // Held there: over a further second the wedged shard's queue stops growing.
    let queued = s.metric0("crier_shard_queue_bytes", &[("shard", "1")]);
    std::thread::sleep(Duration::from_secs(1));
    let later = s.metric0("crier_shard_queue_bytes", &[("shard", "1")]);
    assert!(later <= (66 << 20) as f64, "queue at {later} bytes, past 64 MiB and a message");
    assert!(later - queued <= (2 << 20) as f64, "still growing: {queued} then {later}");
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(acked < 80, "{acked} of {MESSAGES} 1 MiB messages accepted for a wedged shard");
    let grown = s.rss_bytes().saturating_sub(rss_before);
    eprintln!("wedged shard: {acked} accepted, queue {later} bytes, RSS grew {} MiB", grown >> 20);
    assert!(grown < 160 << 20, "RSS grew by {grown} bytes");
    assert_eq!(s.metric0("crier_shard_queue_bytes", &[("shard", "0")]), 0.0, "the healthy shard keeps up");
}

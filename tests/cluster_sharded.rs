//! Cluster mode over a real three-master Redis Cluster (`--redis-cluster`, sharded pub/sub)
//! and several crier nodes on loopback: channels spread over every master, order and
//! exactly-once across nodes, resume from the stream on another node, a master killed and
//! restarted mid-stream, per-channel SSUBSCRIBE following local subscribers (checked with
//! `PUBSUB SHARDNUMSUB` on the owning master), and no message missed right after a 101.
//!
//! Needs `redis-server` and `redis-cli` >= 7 (`apt-get install -y redis-server`).

#[macro_use]
mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const PROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", "crier.v1");

fn node_with(cluster: &RedisCluster, extra: &[&str]) -> Server {
    let mut args = vec!["--redis-cluster".to_string(), cluster.seeds()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let s = ServerBuilder::new(Driver::Epoll).args(args).start();
    wait_redis_up(&s);
    s
}

fn node(cluster: &RedisCluster) -> Server {
    node_with(cluster, &[])
}

fn wait_redis_up(s: &Server) {
    wait_until(Duration::from_secs(20), "crier_redis_up 1", || s.metric("crier_redis_up", &[]) == Some(1.0));
}

/// `m <channel> <seq> <epoch>\n<payload>`
#[derive(Debug, Clone, PartialEq, Eq)]
struct Env {
    channel: String,
    seq: u64,
    epoch: u64,
    payload: String,
}

fn next_env(c: &mut WsClient) -> Env {
    parse(&c.expect_msg())
}

fn parse(m: &Message) -> Env {
    let text = m.text();
    let (head, payload) = text.split_once('\n').unwrap_or_else(|| panic!("no header line: {text:?}"));
    match head.split(' ').collect::<Vec<_>>().as_slice() {
        ["m", ch, seq, epoch] => Env {
            channel: ch.to_string(),
            seq: seq.parse().unwrap(),
            epoch: epoch.parse().unwrap(),
            payload: payload.to_string(),
        },
        _ => panic!("expected an m line, got {head:?}"),
    }
}

fn env_ws(s: &Server, target: &str) -> WsClient {
    WsClient::connect_with(s.ws, target, &[PROTOCOL]).unwrap_or_else(|r| panic!("{target}: upgrade refused: {r:?}"))
}

fn quiet(c: &mut WsClient, d: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = c.recv(d) {
        out.push(m.text().to_string());
    }
    out
}

/// Pipelines `n` publishes per channel, round-robin over `channels`; returns the seqs of
/// each channel in the order the +OKs came.
fn publish_round_robin(p: &mut Publisher, channels: &[String], n: usize) -> HashMap<String, Vec<u64>> {
    let mut order = Vec::new();
    for i in 0..n {
        let mut batch = Vec::new();
        for ch in channels {
            batch.extend(pub_command(ch, format!("{ch} {i}").as_bytes(), None));
            order.push(ch.clone());
        }
        p.send(&batch).unwrap();
    }
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for ch in order {
        let line = p.expect_line();
        seqs.entry(ch).or_default().push(parse_ok(&line));
    }
    seqs
}

fn channel_on(cluster: &RedisCluster, master: usize, start: usize) -> String {
    (start..).map(|i| format!("m{master}x{i}")).find(|c| cluster.owner_of(&format!("{{crier:{c}}}")) == master).unwrap()
}

/// Messages on many channels, spread over all three masters and published on node A,
/// reach subscribers on node B (and A) in order, once, with the seq each +OK carried.
#[test]
fn channels_on_every_master_in_order_once() {
    let cluster = RedisCluster::start();
    let (a, b) = (node(&cluster), node(&cluster));
    let channels: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    let owners: HashSet<usize> = channels.iter().map(|c| cluster.owner_of(&format!("{{crier:{c}}}"))).collect();
    assert_eq!(owners.len(), 3, "the channels live on all three masters");
    let list = channels.join(",");
    let mut subs = vec![env_ws(&b, &format!("/ws?channels={list}")), env_ws(&b, &format!("/ws?channels={list}"))];
    subs.push(env_ws(&a, &format!("/ws?channels={list}")));
    let mut p = a.publisher();
    let n = 30;
    let seqs = publish_round_robin(&mut p, &channels, n);
    for ch in &channels {
        assert_eq!(seqs[ch], (1..=n as u64).collect::<Vec<_>>(), "{ch}: +OK seqs in publisher order");
    }
    for s in &mut subs {
        let mut got: HashMap<String, Vec<(u64, String)>> = HashMap::new();
        for _ in 0..channels.len() * n {
            let e = next_env(s);
            got.entry(e.channel.clone()).or_default().push((e.seq, e.payload));
        }
        for ch in &channels {
            let want: Vec<(u64, String)> = (0..n).map(|i| (i as u64 + 1, format!("{ch} {i}"))).collect();
            assert_eq!(got[ch], want, "{ch}: every message once, in order");
        }
        assert!(quiet(s, Duration::from_millis(300)).is_empty(), "nothing twice");
    }
    assert_eq!(b.metric0("crier_redis_unrepairable_messages_total", &[]), 0.0);
}

/// A client that resumes with since= on a node that never had the channel reads what it
/// missed from the channel's stream; `last=N` there reads the stream too.
#[test]
fn resume_on_another_node_reads_the_stream() {
    let cluster = RedisCluster::start();
    let (a, b) = (node(&cluster), node(&cluster));
    let mut sa = env_ws(&a, "/ws?channels=r");
    let mut p = a.publisher();
    for i in 1..=10 {
        assert_eq!(p.publish("r", format!("r{i}").as_bytes(), false), i);
    }
    let first = next_env(&mut sa);
    let mut rb = env_ws(&b, &format!("/ws?channels=r&since={}:3", first.epoch));
    let got: Vec<(u64, String)> = (0..7).map(|_| next_env(&mut rb)).map(|e| (e.seq, e.payload)).collect();
    assert_eq!(got, (4..=10).map(|i| (i, format!("r{i}"))).collect::<Vec<_>>());
    assert_eq!(p.publish("r", b"r11", false), 11);
    assert_eq!(next_env(&mut rb).seq, 11, "then live, no hole, no duplicate");
    assert!(quiet(&mut rb, Duration::from_millis(300)).is_empty());
    assert!(b.metric0("crier_redis_resume_fetched_messages_total", &[]) >= 7.0);
    // last=N too: node b's shards hold the channel only since their first subscriber.
    let mut lb = env_ws(&b, "/ws?channels=r&last=3");
    let got: Vec<u64> = (0..3).map(|_| next_env(&mut lb).seq).collect();
    assert_eq!(got, vec![9, 10, 11]);
    assert!(quiet(&mut lb, Duration::from_millis(300)).is_empty());
}

/// A master is SIGKILLed mid-stream and started again (empty): publishes in between get
/// `-ERR redis unavailable`, subscribers stay, /healthz says so, and every +OK'd message
/// reaches every subscriber once, in order — on the killed master's channel and on another.
#[test]
fn master_killed_and_restarted_mid_stream() {
    let mut cluster = RedisCluster::start();
    let (mut a, mut b) = (node(&cluster), node(&cluster));
    let victim = 1;
    let hit = channel_on(&cluster, victim, 0);
    let safe = channel_on(&cluster, (victim + 1) % 3, 0);
    let target = format!("/ws?channels={hit},{safe}");
    let mut subs = [env_ws(&a, &target), env_ws(&b, &target), env_ws(&b, &target)];
    let mut p = a.publisher();
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..20 {
        for ch in [&hit, &safe] {
            let payload = format!("before {i}");
            p.publish(ch, payload.as_bytes(), false);
            acked.entry(ch.clone()).or_default().push(payload);
        }
    }
    cluster.kill(victim);
    wait_until(Duration::from_secs(15), "crier_redis_up 0", || a.metric("crier_redis_up", &[]) == Some(0.0));
    assert_eq!(a.admin_get("/healthz").status, 503);
    p.send(&pub_command(&hit, b"during", None)).unwrap();
    assert_eq!(p.expect_line(), "-ERR redis unavailable", "refused, not numbered locally");
    // A client for a channel the node is not subscribed to cannot be served: 503, not a
    // 101 it could miss messages after.
    let Err(r) = WsClient::connect_with(a.ws, "/ws?channels=newcomer", &[]) else {
        panic!("a new channel's subscriber was upgraded during the outage");
    };
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body_text().contains("redis unavailable"), "{r:?}");
    assert!(a.metric0("crier_connections_refused_total", &[("reason", "redis_unavailable")]) >= 1.0);
    cluster.restart(victim);
    wait_redis_up(&a);
    wait_redis_up(&b);
    for i in 0..20 {
        for ch in [&hit, &safe] {
            let payload = format!("after {i}");
            // The cluster may still be settling: a refusal is fine, it is not acked.
            p.send(&pub_command(ch, payload.as_bytes(), None)).unwrap();
            if p.expect_line().starts_with("+OK") {
                acked.get_mut(ch.as_str()).unwrap().push(payload);
            }
        }
    }
    assert!(acked[&hit].len() > 30, "publishes work again after the restart: {}", acked[&hit].len());
    for s in &mut subs {
        let total: usize = acked.values().map(Vec::len).sum();
        let mut got: HashMap<String, Vec<String>> = HashMap::new();
        let mut resets = Vec::new();
        while got.values().map(Vec::len).sum::<usize>() < total {
            let m = s.expect_msg();
            // The killed master lost its channel (no persistence): live subscribers are
            // told, once, before the first message of its new epoch.
            if let Some(r) = m.text().strip_prefix("reset ") {
                resets.push(r.split(' ').next().unwrap().to_string());
                continue;
            }
            let e = parse(&m);
            got.entry(e.channel).or_default().push(e.payload);
        }
        assert_eq!(resets, std::slice::from_ref(&hit), "one reset, for the channel whose master lost it");
        assert_eq!(got[&hit], acked[&hit], "the killed master's channel: every +OK once, in order");
        assert_eq!(got[&safe], acked[&safe], "the other channel too");
        assert!(quiet(s, Duration::from_millis(300)).is_empty(), "nothing twice");
    }
    a.assert_running();
    b.assert_running();
}

/// The channel's slot moves to another master in the middle of a stream (IMPORTING /
/// MIGRATING, its keys MIGRATEd, SETSLOT NODE), with publishes between every step: every +OK'd message reaches every subscriber once, in seq order, and the
/// subscription follows the slot to its new master.
#[test]
fn resharding_mid_stream_keeps_order() {
    let cluster = RedisCluster::start();
    // Streams long enough to repair what pub/sub loses while the slot moves.
    let (a, b) =
        (node_with(&cluster, &["--history-messages", "1000"]), node_with(&cluster, &["--history-messages", "1000"]));
    let tag = "{crier:mv}";
    let from = cluster.owner_of(tag);
    let to = (from + 1) % 3;
    let slot: u16 = cluster.masters[0].cli(&["cluster", "keyslot", tag]).trim().parse().unwrap();
    let mut subs = [env_ws(&a, "/ws?channels=mv"), env_ws(&b, "/ws?channels=mv")];
    let mut p = a.publisher();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut n = 0;
    let mut burst = |p: &mut Publisher, acked: &mut Vec<(u64, String)>| {
        let mut batch = Vec::new();
        let first = n;
        for _ in 0..20 {
            batch.extend(pub_command("mv", format!("mv {n}").as_bytes(), None));
            n += 1;
        }
        p.send(&batch).unwrap();
        for i in first..n {
            let line = p.expect_line();
            if line.starts_with("+OK") {
                acked.push((parse_ok(&line), format!("mv {i}")));
            }
        }
    };
    burst(&mut p, &mut acked);
    cluster.move_slot(slot, from, to, || burst(&mut p, &mut acked));
    assert_eq!(cluster.owner_of(tag), to, "the slot moved");
    for _ in 0..3 {
        burst(&mut p, &mut acked);
    }
    let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "+OK seqs increase in publisher order: {seqs:?}");
    // Refused: calls sent behind one that met the migration (only the newest is sent
    // again). Everything else goes through, following ASK, then MOVED.
    assert!(acked.len() >= 120, "most publishes go through during the move: {} of {n}", acked.len());
    for s in &mut subs {
        let got: Vec<(u64, String)> = (0..acked.len()).map(|_| next_env(s)).map(|e| (e.seq, e.payload)).collect();
        assert_eq!(got, acked, "every +OK'd message once, in order, across the move");
        assert!(quiet(s, Duration::from_millis(300)).is_empty(), "nothing twice");
    }
    for n in [&a, &b] {
        assert_eq!(n.metric0("crier_redis_unrepairable_messages_total", &[]), 0.0);
    }
    wait_until(Duration::from_secs(10), "both nodes subscribed on the new owner", || {
        let out = cluster.masters[to].cli(&["pubsub", "shardnumsub", tag]);
        out.lines().nth(1).map(str::trim) == Some("2")
    });
}

/// Appends a message to a channel's state the way the script does, but without SPUBLISH:
/// what a node whose subscription broke never saw.
fn silent_publish(cluster: &RedisCluster, channel: &str, payload: &str) -> u64 {
    let seq: u64 = cluster.cli(&["hincrby", &format!("{{crier:{channel}}}:m"), "s", "1"]).trim().parse().unwrap();
    cluster.cli(&["xadd", &format!("{{crier:{channel}}}:s"), &format!("{seq}-0"), "k", "t", "d", payload]);
    seq
}

/// The node's connections to the channel's master are killed (as a network blip would):
/// the node reconnects, subscribes again and re-reads the channel from its last seq, so
/// what was published meanwhile (here: written without SPUBLISH) reaches its subscribers.
#[test]
fn node_resynchronises_after_a_master_connection_breaks() {
    let cluster = RedisCluster::start();
    let b = node(&cluster);
    let mut sb = env_ws(&b, "/ws?channels=h");
    let mut p = b.publisher();
    assert_eq!(p.publish("h", b"1", false), 1);
    assert_eq!(next_env(&mut sb).seq, 1);
    let reconnects = b.metric0("crier_redis_reconnects_total", &[]);
    for i in 2..=4 {
        silent_publish(&cluster, "h", &i.to_string());
    }
    assert!(sb.recv(Duration::from_millis(200)).is_err(), "nothing arrives without a trigger");
    let owner = &cluster.masters[cluster.owner_of("{crier:h}")];
    owner.cli(&["client", "kill", "type", "pubsub"]);
    wait_until(Duration::from_secs(10), "a reconnect", || b.metric0("crier_redis_reconnects_total", &[]) > reconnects);
    wait_redis_up(&b);
    let got: Vec<u64> = (0..3).map(|_| next_env(&mut sb).seq).collect();
    assert_eq!(got, vec![2, 3, 4]);
    assert_eq!(b.metric0("crier_redis_repaired_messages_total", &[]), 3.0);
    assert_eq!(p.publish("h", b"5", false), 5);
    assert_eq!(next_env(&mut sb).seq, 5, "then live");
    assert!(quiet(&mut sb, Duration::from_millis(300)).is_empty(), "nothing twice");
}

/// A master hangs (SIGSTOP: its sockets stay open, nothing is delivered) while nothing is
/// published: only the idle probe can notice. The node does, within the probe's timeouts,
/// reports Redis down, and once the master is back delivers again, in sequence.
#[test]
fn a_hung_master_is_caught_by_the_idle_probe() {
    let cluster = RedisCluster::start();
    let b = node(&cluster);
    let mut sb = env_ws(&b, "/ws?channels=h");
    let mut p = b.publisher();
    assert_eq!(p.publish("h", b"1", false), 1);
    assert_eq!(next_env(&mut sb).seq, 1);
    let owner = cluster.owner_of("{crier:h}");
    cluster.masters[owner].pause();
    wait_until(Duration::from_secs(20), "the hung master noticed without any publish", || {
        b.metric("crier_redis_up", &[]) == Some(0.0)
    });
    assert!(b.metric0("crier_redis_probes_failed_total", &[]) >= 1.0);
    cluster.masters[owner].resume();
    cluster.wait_ok();
    wait_redis_up(&b);
    let seq = loop {
        // The cluster may take a moment to accept writes again after the pause.
        p.send(&pub_command("h", b"2", None)).unwrap();
        let line = p.expect_line();
        if line.starts_with("+OK") {
            break parse_ok(&line);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seq, 2);
    assert_eq!(next_env(&mut sb).seq, 2);
    assert!(quiet(&mut sb, Duration::from_millis(300)).is_empty());
}

/// A node is SSUBSCRIBEd to a channel only while it has subscribers for it (plus the
/// linger): none before, one at the 101, none again after the last one left.
#[test]
fn ssubscribe_follows_local_subscribers() {
    let cluster = RedisCluster::start();
    let a = node_with(&cluster, &["--redis-unsubscribe-linger", "1s"]);
    let b = node(&cluster);
    let tag = "{crier:lonely}";
    assert_eq!(cluster.shard_subscribers(tag), 0, "no subscriber anywhere: no node is subscribed");
    assert_eq!(cluster.shard_subscribers("{crier:*}"), 2, "the broadcast channel: every node");
    let c = env_ws(&a, "/ws?channels=lonely");
    assert_eq!(cluster.shard_subscribers(tag), 1, "subscribed before the 101 came back");
    let c2 = env_ws(&a, "/ws?channels=lonely");
    assert_eq!(cluster.shard_subscribers(tag), 1, "one SSUBSCRIBE per node, not per client");
    drop(c);
    drop(c2);
    wait_until(Duration::from_secs(10), "SUNSUBSCRIBE after the linger", || cluster.shard_subscribers(tag) == 0);
    // And back: a new subscriber gets everything published after its 101.
    let mut c = env_ws(&a, "/ws?channels=lonely");
    assert_eq!(cluster.shard_subscribers(tag), 1);
    let mut p = b.publisher();
    let seq = p.publish("lonely", b"hello", false);
    let e = next_env(&mut c);
    assert_eq!((e.seq, e.payload.as_str()), (seq, "hello"));
}

/// The first subscriber of a channel on a node gets a message published right after its
/// 101 (the node subscribed before answering): for many fresh channels in a row.
#[test]
fn no_message_missed_right_after_the_101() {
    let cluster = RedisCluster::start();
    let (a, b) = (node(&cluster), node(&cluster));
    let mut p = a.publisher();
    for i in 0..40 {
        let ch = format!("fresh{i}");
        let mut c = env_ws(&b, &format!("/ws?channels={ch}"));
        let seq = p.publish(&ch, b"first", false);
        let e = next_env(&mut c);
        assert_eq!((e.channel.as_str(), e.seq, e.payload.as_str()), (ch.as_str(), seq, "first"), "{ch}");
    }
}

/// Attacker: one client after another subscribes to new channels and leaves. The node's
/// subscriptions follow (the linger lets them go), memory stays bounded, and a steady
/// subscriber keeps receiving everything.
#[test]
fn channel_churn_is_bounded() {
    let cluster = RedisCluster::start();
    let a = node_with(&cluster, &["--redis-unsubscribe-linger", "1s"]);
    let mut steady = env_ws(&a, "/ws?channels=steady");
    let mut p = a.publisher();
    let rss_before = a.rss_bytes();
    let mut sent = 0u64;
    for round in 0..25 {
        let list: Vec<String> = (0..64).map(|i| format!("churn{round}x{i}")).collect();
        let c = env_ws(&a, &format!("/ws?channels={}", list.join(",")));
        drop(c);
        sent += 1;
        assert_eq!(p.publish("steady", format!("s{sent}").as_bytes(), false), sent);
    }
    wait_until(Duration::from_secs(20), "the churned channels unsubscribed", || {
        a.metric("crier_redis_subscribed_channels", &[]) == Some(2.0)
    });
    // And Redis agrees: no master has a subscriber left on any of them.
    for m in &cluster.masters {
        let left = m.cli(&["pubsub", "shardchannels", "{crier:churn*"]);
        assert!(left.trim().is_empty(), "still subscribed on {}: {left}", m.port);
    }
    for i in 1..=sent {
        assert_eq!(next_env(&mut steady).payload, format!("s{i}"));
    }
    let rss_after = a.rss_bytes();
    assert!(rss_after < rss_before + 64 * 1024 * 1024, "memory stays bounded: {rss_before} → {rss_after}");
}

/// `crier publish --redis-cluster` publishes straight through the cluster.
#[test]
fn crier_publish_through_the_cluster() {
    let cluster = RedisCluster::start();
    let a = node(&cluster);
    let mut s = env_ws(&a, "/ws?channels=cli");
    let out = run_crier(
        &["publish", "--redis-cluster", &cluster.seeds(), "--channel", "cli", "--lines"],
        Some(b"x\ny\n"),
        &[],
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "1\n2\n");
    assert_eq!(next_env(&mut s).payload, "x");
    assert_eq!(next_env(&mut s).payload, "y");
}

/// Bad configuration is refused with a message naming the settings.
#[test]
fn redis_and_redis_cluster_exclude_each_other() {
    let out =
        run_crier(&["serve", "--redis", "redis://127.0.0.1:1", "--redis-cluster", "redis://127.0.0.1:2"], None, &[]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--redis and --redis-cluster"), "{}", out.stderr);
    let out = run_crier(&["serve", "--redis-cluster", "http://x"], None, &[]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--redis-cluster 'http://x'"), "{}", out.stderr);
}

/// Given a standalone Redis, --redis-cluster says what is wrong and stays down.
#[test]
fn a_standalone_redis_is_refused_clearly() {
    let mut cluster = RedisCluster::start();
    // A cluster-disabled redis-server on one master's port.
    let port = cluster.masters[0].port;
    cluster.kill(0);
    let dir = TempDir::new();
    let mut plain = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "plain redis", || cluster.masters[0].cli(&["ping"]).trim() == "PONG");
    let s = ServerBuilder::new(Driver::Epoll).args(["--redis-cluster", &format!("redis://127.0.0.1:{port}")]).start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log_text().contains("use --redis") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(plain.id() as i32, libc::SIGKILL) };
    let _ = plain.wait();
    assert!(s.log_text().contains("not a cluster"), "{}", s.log_text());
    assert_eq!(s.metric("crier_redis_up", &[]), Some(0.0));
}

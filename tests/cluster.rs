//! Cluster mode against real redis-server processes and several crier nodes on loopback:
//! one sequence per channel on every node, resume on another node, Redis restarted in the
//! middle of a stream, refusals while it is down.
//!
//! Needs `redis-server` and `redis-cli` (`apt-get install -y redis-server`).

#[macro_use]
mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

const PROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", "crier.v1");

// ---------------------------------------------------------------------------------------
// Nodes and envelope subscribers.
// ---------------------------------------------------------------------------------------

fn node(redis: &Redis) -> Server {
    let s = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url()]).start();
    wait_redis_up(&s);
    s
}

fn wait_redis_up(s: &Server) {
    wait_until(Duration::from_secs(15), "crier_redis_up 1", || s.metric("crier_redis_up", &[]) == Some(1.0));
}

/// `m <channel> <seq> <epoch>\n<payload>`
#[derive(Debug, Clone, PartialEq, Eq)]
struct Env {
    channel: String,
    seq: u64,
    epoch: u64,
    payload: String,
}

fn parse_env(m: &Message) -> Result<Env, String> {
    let text = m.text();
    let (head, payload) = text.split_once('\n').ok_or_else(|| format!("no header line: {text:?}"))?;
    let f: Vec<&str> = head.split(' ').collect();
    match f.as_slice() {
        ["m", ch, seq, epoch] => Ok(Env {
            channel: ch.to_string(),
            seq: seq.parse().map_err(|_| head.to_string())?,
            epoch: epoch.parse().map_err(|_| head.to_string())?,
            payload: payload.to_string(),
        }),
        _ => Err(head.to_string()),
    }
}

fn env_ws(s: &Server, target: &str) -> WsClient {
    WsClient::connect_with(s.ws, target, &[PROTOCOL]).unwrap_or_else(|r| panic!("{target}: upgrade refused: {r:?}"))
}

fn next_env(c: &mut WsClient) -> Env {
    let m = c.expect_msg();
    parse_env(&m).unwrap_or_else(|e| panic!("expected an m line, got {e}"))
}

/// Everything that arrives within `quiet` of the last thing.
fn drain_text(c: &mut WsClient, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = c.recv(quiet) {
        out.push(m.text().to_string());
    }
    out
}

fn connections(s: &Server) -> f64 {
    s.metric0("crier_connections", &[("shard", "0")]) + s.metric0("crier_connections", &[("shard", "1")])
}

fn wait_conns(s: &Server, n: usize) {
    wait_until(Duration::from_secs(10), "subscribers registered", || connections(s) >= n as f64);
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

/// A message published on any node reaches every node's subscribers, with the seq and
/// epoch Redis gave it, the same everywhere; the publisher's +OK carries that seq; order
/// per channel is the same on every node, whichever node each message was published on.
#[test]
fn one_sequence_per_channel_on_every_node() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut sa = env_ws(&a, "/ws?channels=flights");
    let mut sb = env_ws(&b, "/ws?channels=flights");
    let mut plain_b = b.ws("/ws?channels=flights");
    wait_conns(&a, 1);
    wait_conns(&b, 2);
    let (mut pa, mut pb) = (a.publisher(), b.publisher());
    let mut seqs = Vec::new();
    for i in 0..40 {
        let p = if i % 2 == 0 { &mut pa } else { &mut pb };
        seqs.push(p.publish("flights", format!("msg {i}").as_bytes(), false));
    }
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>(), "Redis numbers the channel 1, 2, 3, … across nodes");
    let got_a: Vec<Env> = (0..40).map(|_| next_env(&mut sa)).collect();
    let got_b: Vec<Env> = (0..40).map(|_| next_env(&mut sb)).collect();
    assert_eq!(got_a, got_b, "both nodes deliver the same messages, seqs and epoch, in the same order");
    for (i, e) in got_a.iter().enumerate() {
        assert_eq!((e.channel.as_str(), e.seq, e.payload.clone()), ("flights", i as u64 + 1, format!("msg {i}")));
    }
    let epoch = got_a[0].epoch;
    assert!(got_a.iter().all(|e| e.epoch == epoch), "one epoch per channel");
    for i in 0..40 {
        assert_eq!(plain_b.expect_text(), format!("msg {i}"), "bare subscribers get the payload as published");
    }
    // Encoded once per node, not per subscriber (two envelope forms built lazily aside).
    assert_eq!(a.metric0("crier_messages_published_total", &[]), 20.0, "each node counts its own +OKs");
    assert!(b.metric0("crier_frames_encoded_total", &[]) <= 80.0);
    // Another channel has its own sequence.
    assert_eq!(pa.publish("gates", b"g", false), 1);
}

/// Many publishers at once, pipelined: each publisher's replies come in command order and
/// its seqs increase; every subscriber sees 1..=N exactly once, in order.
#[test]
fn pipelined_publishers_keep_command_order() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut sa = env_ws(&a, "/ws?channels=c");
    let mut sb = env_ws(&b, "/ws?channels=c");
    wait_conns(&a, 1);
    wait_conns(&b, 1);
    const PER: usize = 500;
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let path = if w % 2 == 0 { a.publish.clone() } else { b.publish.clone() };
            std::thread::spawn(move || {
                let mut p = Publisher::connect(&path);
                let mut all = Vec::new();
                for i in 0..PER {
                    all.extend_from_slice(&pub_command("c", format!("{w}:{i}").as_bytes(), None));
                }
                p.send(&all).unwrap();
                (0..PER).map(|_| parse_ok(&p.expect_line())).collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut per_writer: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for seqs in &per_writer {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a publisher's seqs follow its command order");
    }
    let total = 4 * PER;
    let mut all: Vec<u64> = per_writer.concat();
    all.sort_unstable();
    assert_eq!(all, (1..=total as u64).collect::<Vec<_>>(), "every publish got its own seq");
    for s in [&mut sa, &mut sb] {
        let mut next_of: HashMap<String, usize> = HashMap::new();
        for want in 1..=total as u64 {
            let e = next_env(s);
            assert_eq!(e.seq, want, "in seq order, none missing or twice");
            let (w, i) = e.payload.split_once(':').unwrap();
            let i: usize = i.parse().unwrap();
            let n = next_of.entry(w.to_string()).or_default();
            assert_eq!(i, *n, "each publisher's messages in its order");
            *n += 1;
        }
    }
    per_writer.clear();
}

/// A client of node A resumes on node B with since=<epoch>:<seq> and gets exactly what it
/// missed, from B's history or from the Redis stream.
#[test]
fn resume_on_another_node() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut sa = env_ws(&a, "/ws?channels=r");
    wait_conns(&a, 1);
    let mut p = a.publisher();
    for i in 1..=5 {
        p.publish("r", format!("{i}").as_bytes(), false);
    }
    let seen: Vec<Env> = (0..5).map(|_| next_env(&mut sa)).collect();
    let epoch = seen[0].epoch;
    drop(sa); // node A "dies" for this client
    for i in 6..=9 {
        p.publish("r", format!("{i}").as_bytes(), false);
    }
    // Node B has no subscriber of r and (having started before) heard 1..=9 live; a third
    // node started now has heard nothing: both must replay 6..=9 and nothing else.
    let c = node(&redis);
    let mut last = 9;
    for s in [&b, &c] {
        let mut r = env_ws(s, &format!("/ws?channels=r&since={epoch}:5"));
        let got: Vec<Env> = (6..=last).map(|_| next_env(&mut r)).collect();
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (6..=last).collect::<Vec<_>>(), "exactly what was missed");
        assert!(got.iter().all(|e| e.epoch == epoch));
        assert_eq!(got[0].payload, "6");
        let extra = drain_text(&mut r, Duration::from_millis(300));
        assert!(extra.is_empty(), "no duplicate, no notice: {extra:?}");
        // And live after the replay.
        last = p.publish("r", b"live", false);
        let e = next_env(&mut r);
        assert_eq!((e.seq, e.payload.as_str()), (last, "live"));
    }
    // Another epoch: reset, then what the stream holds.
    let mut r = env_ws(&c, &format!("/ws?channels=r&since={}:5", epoch + 1));
    let first = r.expect_msg();
    assert_eq!(first.text(), format!("reset r {epoch}\n"));
    assert_eq!(next_env(&mut r).seq, 1, "then everything held");
}

/// Each channel has its own epoch in cluster mode: a client of two channels resumes both
/// on another node with one `<epoch>:<seq>` item per channel.
#[test]
fn resume_two_channels_with_their_own_epochs() {
    let redis = Redis::start();
    let a = node(&redis);
    let mut sa = env_ws(&a, "/ws?channels=x,y");
    wait_conns(&a, 1);
    let mut p = a.publisher();
    p.publish("x", b"x1", false);
    p.publish("y", b"y1", false);
    let (ex, ey) = (next_env(&mut sa), next_env(&mut sa));
    assert_ne!(ex.epoch, ey.epoch, "epochs are per channel");
    p.publish("x", b"x2", false);
    p.publish("y", b"y2", false);
    let b = node(&redis);
    let mut r = env_ws(&b, &format!("/ws?channels=x,y&since={}:1,{}:1", ex.epoch, ey.epoch));
    let got: Vec<String> = (0..2).map(|_| next_env(&mut r).payload).collect();
    assert_eq!(got, vec!["x2", "y2"], "exactly what was missed on each, no reset");
    assert!(drain_text(&mut r, Duration::from_millis(300)).is_empty());
    assert_eq!(b.metric0("crier_resumes_unsatisfied_total", &[("reason", "reset")]), 0.0);
}

/// Redis is killed mid-stream and started again empty: publishes during the outage are
/// refused (never numbered locally), subscribers stay connected, /healthz says so, and
/// every +OK'd publish reaches every subscriber once, in order.
#[test]
fn redis_restart_mid_stream() {
    let mut redis = Redis::start();
    let (mut a, mut b) = (node(&redis), node(&redis));
    let mut sa = env_ws(&a, "/ws?channels=s");
    let mut sb = env_ws(&b, "/ws?channels=s");
    wait_conns(&a, 1);
    wait_conns(&b, 1);
    let mut p = a.publisher();
    let mut acked: Vec<String> = Vec::new();
    for i in 0..20 {
        let payload = format!("before {i}");
        p.publish("s", payload.as_bytes(), false);
        acked.push(payload);
    }
    redis.kill();
    wait_until(Duration::from_secs(10), "crier_redis_up 0", || a.metric("crier_redis_up", &[]) == Some(0.0));
    let h = a.admin_get("/healthz");
    assert_eq!(h.status, 503, "{h:?}");
    assert_eq!(h.body_text(), "redis unavailable\n");
    p.send(&pub_command("s", b"during", None)).unwrap();
    assert_eq!(p.expect_line(), "-ERR redis unavailable", "refused, not numbered locally");
    assert!(a.metric0("crier_publish_errors_total", &[("reason", "redis_unavailable")]) >= 1.0);
    redis.spawn();
    wait_redis_up(&a);
    wait_redis_up(&b);
    assert_eq!(a.admin_get("/healthz").status, 200);
    for i in 0..20 {
        let payload = format!("after {i}");
        p.publish("s", payload.as_bytes(), false);
        acked.push(payload);
    }
    for s in [&mut sa, &mut sb] {
        let mut got: Vec<Env> = (0..20).map(|_| next_env(s)).collect();
        // Redis lost the channel: before the first message of its new epoch, live
        // subscribers are told that their seqs mean nothing now.
        let reset = s.expect_text();
        got.extend((20..acked.len()).map(|_| next_env(s)));
        let payloads: Vec<String> = got.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(payloads, acked, "every +OK'd message once, in order, over the restart");
        assert_ne!(got[0].epoch, got[20].epoch, "Redis lost the channel: a new epoch");
        assert_eq!(reset, format!("reset s {}\n", got[20].epoch), "the reset names the new epoch");
        assert_eq!(got[20].seq, 1, "and seqs start afresh");
        let extra = drain_text(s, Duration::from_millis(300));
        assert!(extra.is_empty(), "nothing twice: {extra:?}");
    }
    // One reset per live crier.v1 subscriber, counted on its node.
    assert_eq!(a.metric0("crier_live_resets_total", &[]), 1.0);
    assert_eq!(b.metric0("crier_live_resets_total", &[]), 1.0);
    a.assert_running();
    b.assert_running();
    assert!(a.metric0("crier_redis_reconnects_total", &[]) >= 1.0);
}

/// A publish whose script call is in flight when Redis stops answering gets `-ERR redis
/// outcome unknown`, not "unavailable": the call was sent, and Redis may still run it. Here
/// it does, once it is resumed: the node's resynchronisation delivers the message, once, in
/// order, so a publisher that retried would have sent it twice (README "Cluster mode").
#[test]
fn in_flight_publish_when_redis_stalls_is_outcome_unknown() {
    let redis = Redis::start();
    let a = node(&redis);
    let mut s = env_ws(&a, "/ws?channels=u");
    wait_conns(&a, 1);
    let mut p = a.publisher();
    assert_eq!(p.publish("u", b"one", false), 1);
    assert_eq!(next_env(&mut s).seq, 1);
    redis.pause(true);
    p.send(&pub_command("u", b"two", None)).unwrap();
    assert_eq!(p.expect_line(), "-ERR redis outcome unknown", "sent, never answered");
    assert_eq!(a.metric0("crier_publish_errors_total", &[("reason", "redis_outcome_unknown")]), 1.0);
    assert_eq!(a.metric0("crier_publish_errors_total", &[("reason", "redis_unavailable")]), 0.0);
    redis.pause(false);
    let e = next_env(&mut s);
    assert_eq!((e.seq, e.payload.as_str()), (2, "two"), "Redis ran it after all; the node caught up");
    wait_redis_up(&a);
    assert_eq!(p.publish("u", b"three", false), 3);
    assert_eq!(next_env(&mut s).seq, 3);
    assert!(drain_text(&mut s, Duration::from_millis(300)).is_empty(), "nothing twice");
}

/// Appends a message to a channel's state in Redis the way the script does, but without
/// PUBLISH: exactly what a node that lost pub/sub messages never saw.
fn silent_publish(redis: &Redis, channel: &str, payload: &str) -> u64 {
    let seq: u64 = redis.cli(&["hincrby", &format!("{{crier:{channel}}}:m"), "s", "1"]).trim().parse().unwrap();
    let id = format!("{seq}-0");
    redis.cli(&["xadd", &format!("{{crier:{channel}}}:s",), &id, "k", "t", "d", payload]);
    seq
}

/// A seq jump on a channel makes the node read the missing range from the stream and
/// deliver it, in order, before the message that revealed it (node-side repair).
#[test]
fn node_repairs_a_seq_gap() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut sb = env_ws(&b, "/ws?channels=g");
    let mut plain = b.ws("/ws?channels=g");
    wait_conns(&b, 2);
    let mut p = a.publisher();
    assert_eq!(p.publish("g", b"1", false), 1);
    for i in 2..=6 {
        assert_eq!(silent_publish(&redis, "g", &i.to_string()), i);
    }
    assert_eq!(p.publish("g", b"7", false), 7);
    let got: Vec<Env> = (0..7).map(|_| next_env(&mut sb)).collect();
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "the hole filled, in order, before 7");
    assert!(got.iter().all(|e| e.payload == e.seq.to_string()));
    for i in 1..=7 {
        assert_eq!(plain.expect_text(), i.to_string());
    }
    assert!(drain_text(&mut sb, Duration::from_millis(300)).is_empty(), "nothing twice");
    assert_eq!(b.metric0("crier_redis_repaired_messages_total", &[]), 5.0);
    assert_eq!(a.metric0("crier_redis_repaired_messages_total", &[]), 5.0, "every node repairs itself");
}

/// After a reconnect a node resynchronises every channel it knows (HMGET + XRANGE): what
/// was published while it was not subscribed is delivered, in order, once.
#[test]
fn node_resynchronises_after_reconnect() {
    let redis = Redis::start();
    let b = node(&redis);
    let mut sb = env_ws(&b, "/ws?channels=h");
    wait_conns(&b, 1);
    let mut p = b.publisher();
    assert_eq!(p.publish("h", b"1", false), 1);
    assert_eq!(next_env(&mut sb).seq, 1);
    let reconnects = b.metric0("crier_redis_reconnects_total", &[]);
    // Never published on pub/sub (as if sent while the node was not subscribed): only the
    // resynchronisation after the reconnect below can find them.
    for i in 2..=4 {
        silent_publish(&redis, "h", &i.to_string());
    }
    assert!(sb.recv(Duration::from_millis(200)).is_err(), "nothing arrives without a trigger");
    redis.cli(&["client", "kill", "type", "pubsub"]);
    wait_until(Duration::from_secs(10), "a reconnect", || b.metric0("crier_redis_reconnects_total", &[]) > reconnects);
    wait_redis_up(&b);
    let got: Vec<u64> = (0..3).map(|_| next_env(&mut sb).seq).collect();
    assert_eq!(got, vec![2, 3, 4]);
    assert_eq!(b.metric0("crier_redis_repaired_messages_total", &[]), 3.0);
    assert_eq!(p.publish("h", b"5", false), 5);
    assert_eq!(next_env(&mut sb).seq, 5, "then live");
    assert!(drain_text(&mut sb, Duration::from_millis(300)).is_empty(), "nothing twice");
}

/// Without --redis nothing of cluster mode shows: no redis metrics, /healthz as before.
#[test]
fn single_box_is_unchanged() {
    let s = Server::start(Driver::Epoll);
    assert_eq!(s.metric("crier_redis_up", &[]), None);
    assert_eq!(s.admin_get("/healthz").status, 200);
    assert_eq!(s.publish("x", "1"), 1);
}

/// The README's contract of the publish script, followed by a plain Redis client
/// (redis-cli), publishes to every node: one call may carry several messages.
#[test]
fn any_redis_client_can_publish_with_the_script() {
    let redis = Redis::start();
    let a = node(&redis);
    let mut sub = env_ws(&a, "/ws?channels=ext,bin");
    wait_conns(&a, 1);
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/cluster/publish.lua")).unwrap();
    let sha = redis.cli(&["script", "load", &script]).trim().to_string();
    assert_eq!(sha.len(), 40, "{sha}");
    let reply = redis.cli(&[
        "evalsha",
        &sha,
        "4",
        "{crier:ext}:m",
        "{crier:ext}:s",
        "{crier:bin}:m",
        "{crier:bin}:s",
        "64",
        "300000",
        "86400000",
        "publish",
        "{crier:ext}",
        "t",
        "from redis-cli",
        "{crier:bin}",
        "b",
        "raw",
    ]);
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 4, "epoch, seq per message: {reply:?}");
    assert_eq!((lines[1], lines[3]), ("1", "1"));
    let e = next_env(&mut sub);
    assert_eq!((e.channel.as_str(), e.seq, e.payload.as_str()), ("ext", 1, "from redis-cli"));
    assert_eq!(e.epoch.to_string(), lines[0]);
    let m = sub.expect_msg();
    assert!(m.is_binary(), "kind b is a binary frame");
    assert!(m.data.ends_with(b"\nraw"));
    // A node's own publish continues the same sequence.
    assert_eq!(a.publisher().publish("ext", b"next", false), 2);
}

/// `crier publish --redis` publishes through Redis from a box without crier: the nodes
/// deliver it, seqs continue the channel's sequence, --lines batches many in order.
#[test]
fn crier_publish_straight_through_redis() {
    let redis = Redis::start();
    let a = node(&redis);
    let mut sub = env_ws(&a, "/ws?channels=cli");
    wait_conns(&a, 1);
    let url = redis.url();
    let out = run_crier(&["publish", "--redis", &url, "--channel", "cli", "one"], None, &[]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "1");
    let lines: String = (2..=301).map(|i| format!("line {i}\n")).collect();
    let out = run_crier(&["publish", "--redis", &url, "--channel", "cli", "--lines"], Some(lines.as_bytes()), &[]);
    assert!(out.status.success(), "{}", out.stderr);
    let seqs: Vec<u64> = out.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(seqs, (2..=301).collect::<Vec<_>>());
    assert_eq!(next_env(&mut sub).payload, "one");
    for i in 2..=301 {
        let e = next_env(&mut sub);
        assert_eq!((e.seq, e.payload), (i, format!("line {i}")));
    }
    let out = run_crier(&["publish", "--redis", &url, "--channel", "bad/name", "x"], None, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("bad channel name"), "{}", out.stderr);
    let gone = format!("redis://127.0.0.1:{}/", free_port());
    let out = run_crier(&["publish", "--redis", &gone, "--channel", "cli", "x"], None, &[]);
    assert_eq!(out.status.code(), Some(2), "unreachable Redis: {}", out.stderr);
    assert!(out.stderr.contains("cannot reach Redis"), "{}", out.stderr);
}

/// Every cluster metric of the README table is served by a cluster node, with the values
/// a fresh node must have.
#[test]
fn cluster_metrics_are_served_and_documented() {
    let redis = Redis::start();
    let a = node(&redis);
    let mut p = a.publisher();
    p.publish("m", b"x", false);
    let text = a.metrics_text();
    let documented: Vec<String> = readme_metrics().into_iter().filter(|m| m.starts_with("crier_redis_")).collect();
    assert!(documented.len() >= 7, "{documented:?}");
    for m in &documented {
        assert!(text.contains(&format!("# TYPE {m} ")), "{m} not served:\n{text}");
    }
    assert_eq!(metric_value(&text, "crier_redis_up", &[]), Some(1.0));
    assert_eq!(metric_value(&text, "crier_redis_publish_seconds_count", &[]), Some(1.0));
    assert!(readme().contains("redis_unavailable"), "the publish error label is documented");
}

/// Settings are checked at start with a message naming them.
#[test]
fn bad_cluster_settings_stop_start_up() {
    for (args, needle) in [
        (vec!["--redis", "http://nope"], "--redis"),
        (vec!["--redis", "redis://127.0.0.1:1/", "--redis-prefix", "a{b"], "--redis-prefix"),
        (vec!["--redis", "redis://127.0.0.1:1/", "--history-messages", "0"], "--history-messages"),
    ] {
        let e = ServerBuilder::new(Driver::Epoll).args(args.clone()).run_expect_exit(Duration::from_secs(10));
        assert!(!e.became_ready, "{args:?}");
        assert!(e.stderr.contains(needle), "{args:?}: {}", e.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// NGINX (least_conn, deploy/nginx/crier.conf) in front of three nodes.
// ---------------------------------------------------------------------------------------

/// The shipped sample's upstream and `location /ws`, on plain HTTP on loopback, in front
/// of `nodes`; NGINX keeps its files in `dir`.
fn nginx_in_front_of(nodes: &[&Server], dir: &TempDir) -> Nginx {
    let upstreams: Vec<_> = nodes.iter().map(|n| n.ws).collect();
    Nginx::start(&upstreams, free_port(), dir.path())
}

/// Clients connected through NGINX receive every message whichever node it was published
/// on; `kill -9` of one node: its clients come back through NGINX to the others, resume
/// with since=, and nothing is lost or duplicated.
#[test]
fn nginx_three_nodes_kill_one_nothing_lost() {
    let redis = Redis::start();
    // History (and so each stream) holds every message of the test: a client slowed by a
    // busy machine may be far behind when its node dies, and what this test checks is the
    // failover, not the history bound (`gap` is tested in tests/history.rs).
    let node = |r: &Redis| {
        let s = ServerBuilder::new(Driver::Epoll).args(["--redis", &r.url(), "--history-messages", "1000"]).start();
        wait_redis_up(&s);
        s
    };
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let nginx_dir = TempDir::new();
    let nginx = nginx_in_front_of(&[&nodes[0], &nodes[1], &nodes[2]], &nginx_dir);
    let lb: std::net::SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    const CLIENTS: usize = 9;
    const N: u64 = 300;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut epoch, mut last) = (0u64, 0u64);
                let mut got = Vec::new();
                let mut reconnects = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while last < N && std::time::Instant::now() < deadline {
                    let target = if epoch == 0 {
                        "/ws?channels=lb".to_string()
                    } else {
                        format!("/ws?channels=lb&since={epoch}:{last}")
                    };
                    let Ok(mut c) = WsClient::connect_with(lb, &target, &[PROTOCOL]) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    reconnects += 1;
                    while let Ok(m) = c.recv(Duration::from_secs(5)) {
                        let e = parse_env(&m).unwrap_or_else(|h| panic!("expected only messages, got {h:?}"));
                        assert_eq!(e.seq, last + 1, "in order, nothing lost or twice");
                        (epoch, last) = (e.epoch, e.seq);
                        got.push(e.payload);
                        if last == N {
                            break;
                        }
                    }
                }
                (got, reconnects)
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "every client connected", || {
        nodes.iter().map(connections).sum::<f64>() >= CLIENTS as f64
    });
    let per_node: Vec<f64> = nodes.iter().map(connections).collect();
    assert!(per_node.iter().all(|&n| n >= 1.0), "least_conn spreads clients over the nodes: {per_node:?}");
    let (mut p0, mut p1) = (nodes[0].publisher(), nodes[1].publisher());
    for i in 1..=N {
        let p = if i % 2 == 0 { &mut p0 } else { &mut p1 };
        assert_eq!(p.publish("lb", format!("{i}").as_bytes(), false), i);
        if i == N / 3 {
            nodes[2].signal(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut came_back = 0;
    for c in clients {
        let (got, connects) = c.join().unwrap();
        assert_eq!(got, (1..=N).map(|i| i.to_string()).collect::<Vec<_>>(), "every message once, in order");
        if connects > 1 {
            came_back += 1;
        }
    }
    assert!(came_back as f64 >= per_node[2], "the killed node's clients reconnected ({came_back})");
}

// ---------------------------------------------------------------------------------------
// Issue 9's bounds hold in cluster mode too.
// ---------------------------------------------------------------------------------------

/// `--publish-timeout` through Redis: a publisher stuck in the middle of a command is
/// answered and disconnected; one idle between commands is not, and the wait for Redis's
/// answers never counts against a publisher.
#[test]
fn publish_timeout_applies_through_redis() {
    let redis = Redis::start();
    let s = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url(), "--publish-timeout", "1s"]).start();
    wait_redis_up(&s);
    let mut sub = env_ws(&s, "/ws?channels=a");
    wait_conns(&s, 1);
    let mut idle = s.publisher();
    assert_eq!(idle.publish("a", b"first", false), 1, "numbered by Redis");
    let t = std::time::Instant::now();
    let mut stuck = s.publisher();
    stuck.send(b"PUB a 10\r\nhel").unwrap();
    let line = stuck.expect_line();
    assert!(line.starts_with("-ERR ") && line.contains("publish-timeout"), "{line:?}");
    assert!(t.elapsed() >= Duration::from_secs(1), "timed out before --publish-timeout");
    stuck.expect_closed();
    s.wait_metric("crier_publish_errors_total", &[("reason", "timeout")], IO_TIMEOUT, "1", |v| v == 1.0);
    // Idle for longer than the timeout between commands (since before `t`): still served,
    // through Redis.
    assert_eq!(idle.publish("a", b"still here", false), 2);
    let got: Vec<String> = (0..2).map(|_| next_env(&mut sub).payload).collect();
    assert_eq!(got, vec!["first", "still here"]);
    // A pipelined batch whose answers take Redis round trips is not a stuck command.
    let mut batch = Vec::new();
    for i in 0..2000 {
        batch.extend_from_slice(&pub_command("a", format!("b{i}").as_bytes(), None));
    }
    idle.send(&batch).unwrap();
    for i in 0..2000u64 {
        assert_eq!(idle.expect_line(), format!("+OK {}", i + 3));
    }
    assert_eq!(s.metric0("crier_publish_errors_total", &[("reason", "timeout")]), 1.0);
}

/// The publisher cap holds in cluster mode: 128 publishers are served, one more is told so
/// and closed, and the others keep publishing through Redis.
#[test]
fn max_publishers_cap_applies_in_cluster_mode() {
    let redis = Redis::start();
    let s = node(&redis);
    let mut sub = env_ws(&s, "/ws?channels=c");
    wait_conns(&s, 1);
    let mut served: Vec<Publisher> = (0..128).map(|_| s.publisher()).collect();
    s.wait_metric("crier_publishers", &[], IO_TIMEOUT, "128", |v| v == 128.0);
    let mut extra = s.publisher();
    assert_eq!(extra.expect_line(), "-ERR too many publishers: 128 connected");
    extra.expect_closed();
    assert_eq!(s.metric0("crier_publish_errors_total", &[("reason", "too_many_publishers")]), 1.0);
    for (i, p) in served.iter_mut().enumerate() {
        assert_eq!(p.publish("c", format!("p{i}").as_bytes(), false), i as u64 + 1);
    }
    for i in 0..128 {
        assert_eq!(next_env(&mut sub).payload, format!("p{i}"));
    }
}

/// Publishers take turns through Redis: one flooding a pipelined backlog does not hold back
/// another's message, nothing is lost, and memory stays bounded.
#[test]
fn flooding_publisher_does_not_hold_back_another_through_redis() {
    use std::io::{BufRead, BufReader, Write};
    const FLOOD: usize = 12_000;
    let redis = Redis::start();
    let s = ServerBuilder::new(Driver::Epoll)
        .args(["--redis", &redis.url(), "--max-queue-bytes", "64MiB", "--history-messages", "20000"])
        .start();
    wait_redis_up(&s);
    let mut sub = s.ws("/ws?channels=c");
    wait_conns(&s, 1);
    let rss_before = s.rss_bytes();
    let filler = "x".repeat(200);
    let mut backlog = Vec::with_capacity(FLOOD * 250);
    for i in 0..FLOOD {
        let payload = if i == FLOOD - 1 { "LAST".to_string() } else { format!("f{i:07} {filler}") };
        backlog.extend_from_slice(&pub_command("c", payload.as_bytes(), None));
    }
    let flood = std::os::unix::net::UnixStream::connect(&s.publish).unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = {
        let stream = flood.try_clone().unwrap();
        std::thread::spawn(move || {
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut r = BufReader::new(stream);
            let (mut line, mut ok) = (String::new(), 0);
            while ok < FLOOD {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.starts_with("+OK ") => ok += 1,
                    Ok(_) => panic!("flood publisher got {line:?}"),
                }
                if ok == 1 {
                    let _ = first_tx.send(());
                }
            }
            ok
        })
    };
    let mut fair = s.publisher();
    assert_eq!(fair.publish("other", b"warm-up", false), 1);
    let mut writer = flood.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&backlog).map(|_| ()));
    first_rx.recv_timeout(IO_TIMEOUT).expect("the flood's first +OK");
    let seq = fair.publish("c", b"FAIR", false);
    assert!((seq as usize) < FLOOD, "the second publisher's message was numbered after the whole flood (seq {seq})");
    let mut fair_at = None;
    for got in 1..=FLOOD + 1 {
        let m = sub.recv(Duration::from_secs(30)).unwrap_or_else(|e| panic!("after {got} messages: {e:?}"));
        match m.text() {
            "FAIR" => fair_at = Some(got),
            "LAST" => assert!(fair_at.is_some(), "the flood's last message arrived before the second publisher's"),
            _ => {}
        }
    }
    assert_eq!(fair_at, Some(seq as usize), "delivered in Redis's seq order");
    sender.join().unwrap().unwrap();
    assert_eq!(reader.join().unwrap(), FLOOD, "every flood command answered +OK");
    let grown = s.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes during the flood");
}

/// The descriptor reserve holds the cluster thread's Redis connections: with the same
/// RLIMIT_NOFILE a cluster node's limit is 8 below a single box's, and with the WebSocket
/// side full the node still reconnects to a restarted Redis and publishes through it.
#[test]
fn descriptor_reserve_holds_the_redis_connections() {
    const NOFILE: u64 = 480;
    fn limit(s: &Server) -> usize {
        s.metric("crier_max_connections", &[]).expect("crier_max_connections") as usize
    }
    let single = ServerBuilder::new(Driver::Epoll).start_with_nofile(NOFILE);
    let single_limit = limit(&single);
    drop(single);
    let mut redis = Redis::start();
    let s = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url()]).start_with_nofile(NOFILE);
    wait_redis_up(&s);
    let cluster_limit = limit(&s);
    assert_eq!(single_limit - cluster_limit, 8, "the cluster thread's descriptors are in the reserve");
    // Fill the WebSocket side.
    let mut subs: Vec<WsClient> = (0..cluster_limit).map(|_| s.ws("/ws?channels=news")).collect();
    s.wait_connections(cluster_limit);
    redis.kill();
    wait_until(Duration::from_secs(10), "crier_redis_up 0", || s.metric("crier_redis_up", &[]) == Some(0.0));
    redis.spawn();
    wait_redis_up(&s);
    let mut p = s.publisher();
    assert_eq!(p.publish("news", b"after", false), 1, "a new epoch after Redis lost everything");
    for (i, c) in subs.iter_mut().enumerate() {
        let m = c.recv(IO_TIMEOUT).unwrap_or_else(|e| panic!("subscriber {i}: {e:?}"));
        assert_eq!(m.text(), "after");
    }
    assert!(s.open_fds() <= NOFILE as usize, "{} descriptors", s.open_fds());
}

/// A node that cannot keep up with what Redis sends it (here one of its shards is wedged)
/// stays bounded: its queues fill, it stops taking pub/sub and re-subscribes later instead
/// of buffering without end. Another node's subscribers meanwhile get every message.
#[test]
fn a_node_that_falls_behind_stays_bounded() {
    use std::io::{BufRead, BufReader, Write};
    const N: usize = 100_000;
    let redis = Redis::start();
    let slow = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url(), "--debug-wedge-shard", "1@1s"]).start();
    wait_redis_up(&slow);
    let mut fast =
        ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url(), "--max-queue-bytes", "64MiB"]).start();
    wait_redis_up(&fast);
    let mut sub = fast.ws("/ws?channels=f");
    wait_conns(&fast, 1);
    wait_until(Duration::from_secs(10), "shard 1 of the slow node to wedge", || {
        slow.metric0("crier_shard_sweep_age_seconds", &[("shard", "1")]) > 1.5
    });
    let rss_before = slow.rss_bytes();
    let filler = "x".repeat(1000);
    let mut backlog = Vec::with_capacity(N * 1030);
    for i in 0..N {
        backlog.extend_from_slice(&pub_command("f", format!("{i:07} {filler}").as_bytes(), None));
    }
    let publisher = std::os::unix::net::UnixStream::connect(&fast.publish).unwrap();
    let reader = {
        let stream = publisher.try_clone().unwrap();
        std::thread::spawn(move || {
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let (mut r, mut line, mut ok) = (BufReader::new(stream), String::new(), 0);
            while ok < N {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.starts_with("+OK ") => ok += 1,
                    Ok(_) => panic!("publisher got {line:?}"),
                }
            }
            ok
        })
    };
    let mut writer = publisher.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&backlog).map(|_| ()));
    for i in 0..N {
        let m = sub.recv(Duration::from_secs(30)).unwrap_or_else(|e| panic!("after {i} messages: {e:?}"));
        assert_eq!(&m.text()[..7], format!("{i:07}"), "in order, once");
    }
    sender.join().unwrap().unwrap();
    assert_eq!(reader.join().unwrap(), N, "every publish answered +OK");
    assert!(slow.metric0("crier_redis_fell_behind_total", &[]) >= 1.0, "the slow node noticed");
    let grown = slow.rss_bytes().saturating_sub(rss_before);
    eprintln!("slow node RSS grew by {} MiB", grown >> 20);
    // Unbounded, it grew by 300 MB for twice this traffic (redis-rs buffers pub/sub).
    assert!(grown < 64 << 20, "the slow node's RSS grew by {grown} bytes while {} MB went through Redis", N / 1000);
    fast.assert_running();
}

/// A resume that needs the stream while Redis is out of reach is refused with 503 (the
/// client retries later), not answered with a `reset` or `gap` that would be false.
#[test]
fn resume_needing_redis_while_it_is_down_is_a_503_not_a_reset() {
    let mut redis = Redis::start();
    let a = node(&redis);
    let mut p = a.publisher();
    for i in 1..=3 {
        assert_eq!(p.publish("r", format!("{i}").as_bytes(), false), i);
    }
    let mut sa = env_ws(&a, "/ws?channels=r&last=1");
    wait_conns(&a, 1);
    let epoch = next_env(&mut sa).epoch;
    // A node that never saw the channel: only the stream can answer a resume of it.
    let c = node(&redis);
    redis.kill();
    wait_until(Duration::from_secs(10), "crier_redis_up 0", || c.metric("crier_redis_up", &[]) == Some(0.0));
    let Err(refused) = WsClient::connect_with(c.ws, &format!("/ws?channels=r&since={epoch}:1"), &[PROTOCOL]) else {
        panic!("the resume must not be accepted while Redis cannot be read");
    };
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body_text().starts_with("redis unavailable"), "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(c.metric0("crier_connections_refused_total", &[("reason", "redis_unavailable")]) >= 1.0);
    assert_eq!(c.metric0("crier_resumes_unsatisfied_total", &[("reason", "reset")]), 0.0, "no false reset");
    // A fresh subscription needs nothing from Redis and is still served.
    let _fresh = env_ws(&c, "/ws?channels=r");
    wait_conns(&c, 1);
}

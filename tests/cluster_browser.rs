//! crier.js, the shipped browser client, in headless Chromium through NGINX (the shipped
//! sample's `least_conn` upstream and `location /ws`, on loopback) in front of three
//! `--redis` nodes joined by one redis-server. The page imports crier.js through NGINX and
//! subscribes to two channels; messages are published on every node; the node the page is
//! connected to hangs (SIGSTOP) while messages go on, then is killed (SIGKILL) while more
//! go on; crier.js reconnects through NGINX to another node and resumes with `since=`. The
//! page must show every message that was answered `+OK`, in order, once, with no `gap` and
//! no `reset`, including on the channel nothing had arrived on before the node died.
//!
//! Needs redis-server, nginx, Node.js, Debian's chromium and playwright-core in
//! tests/browser/node_modules (scripts/test.sh installs them all).

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

/// A node of the cluster, connected to Redis. Its history (and the Redis stream) holds 1,000
/// messages, more than the ~100 published while the page is away (with the default 64, a
/// slow reconnection ends in a correct `gap`; this test is about the resume).
fn node(redis: &Redis) -> Server {
    let s = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url(), "--history-messages", "1000"]).start();
    wait_until(Duration::from_secs(15), "crier_redis_up 1", || s.metric("crier_redis_up", &[]) == Some(1.0));
    s
}

fn connections(s: &Server) -> f64 {
    s.metric0("crier_connections", &[])
}

fn payload(channel: &str, seq: u64) -> String {
    format!("{channel}#{seq} é→✓")
}

/// Whether every thread of `pid` is stopped (state `T` in /proc/PID/task/*/stat): a
/// SIGSTOP takes effect only once the thread the kernel picked runs, which on a busy box
/// can take a few milliseconds, while the other threads still deliver.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|st| st.rfind(')').map(|i| st[i + 1..].trim_start().starts_with('T')))
            .unwrap_or(false)
    })
}

/// Publishes the next message of `channel` on `p`; returns the seq of its `+OK`.
fn publish(p: &mut Publisher, channel: &str, acked: &mut Vec<u64>) -> u64 {
    let seq = acked.last().map_or(1, |s| s + 1);
    let got = p.publish(channel, payload(channel, seq).as_bytes(), false);
    assert_eq!(got, seq, "{channel}: Redis numbers the channel's messages 1, 2, 3 …");
    acked.push(got);
    got
}

#[test]
fn browser_through_nginx_survives_the_kill_of_its_node() {
    let redis = Redis::start();
    let mut nodes = [node(&redis), node(&redis), node(&redis)];
    let nginx_dir = TempDir::new();
    let upstreams: Vec<_> = nodes.iter().map(|n| n.ws).collect();
    let nginx = Nginx::start(&upstreams, free_port(), nginx_dir.path());
    let base = format!("http://{}", nginx.addr());

    // `lb` is published from the start; `late` only once the page's node is gone, so the
    // page has no position on it when it reconnects.
    let mut b = Browser::start(&base, "lb,late", 0);
    b.until("ready");
    let (open, _) = b.until("open");
    assert!(open.contains("resumed=false"), "first connection: {open}");
    wait_until(Duration::from_secs(10), "the page's connection on one node", || {
        nodes.iter().map(connections).sum::<f64>() == 1.0
    });
    let home = nodes.iter().position(|n| connections(n) == 1.0).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != home).collect();
    let mut pubs: Vec<Publisher> = nodes.iter().map(|n| n.publisher()).collect();
    let (mut lb, mut late) = (Vec::new(), Vec::new());

    // Live, published on every node in turn (the page's own among them).
    for i in 0..30 {
        publish(&mut pubs[i % 3], "lb", &mut lb);
    }
    let got = collect_until(&mut b, &[("lb", 30)]);
    assert_eq!(got["lb"].iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    let epoch = got["lb"][0].epoch.clone();
    let replayed_before: Vec<f64> = nodes.iter().map(|n| n.metric0("crier_messages_replayed_total", &[])).collect();

    // The page's node hangs: what is published now, on the other nodes, the page misses.
    nodes[home].signal(libc::SIGSTOP);
    let pid = nodes[home].pid;
    wait_until(Duration::from_secs(10), "every thread of the page's node stopped", || all_threads_stopped(pid));
    for i in 0..30 {
        publish(&mut pubs[others[i % 2]], "lb", &mut lb);
        if i % 6 == 0 {
            publish(&mut pubs[others[(i + 1) % 2]], "late", &mut late);
        }
    }
    // Then it dies; publishing goes on while crier.js reconnects through NGINX.
    nodes[home].signal(libc::SIGKILL);
    assert!(nodes[home].wait_exit(Duration::from_secs(10)).is_some(), "the killed node is gone");
    for i in 0..60 {
        publish(&mut pubs[others[i % 2]], "lb", &mut lb);
        if i % 20 == 0 {
            publish(&mut pubs[others[(i + 1) % 2]], "late", &mut late);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (close, before) = b.until("close");
    assert!(!close.contains("reconnect=null"), "the client must plan to reconnect: {close}");
    assert!(before.iter().all(|l| page_msg(l).is_none()), "messages from the hung node: {before:?}");
    let (open, before) = b.until("open");
    assert!(open.contains("resumed=true"), "the reconnection must resume: {open}");
    assert!(before.iter().all(|l| page_msg(l).is_none()), "messages while away: {before:?}");
    let (lb_last, late_last) = (*lb.last().unwrap(), *late.last().unwrap());
    // Panics on any gap or reset line.
    let got = collect_until(&mut b, &[("lb", lb_last), ("late", late_last)]);

    let lb_seen: Vec<u64> = got["lb"].iter().map(|m| m.seq).collect();
    assert_eq!(lb_seen, lb[30..], "lb: every +OK'd message after the first 30, once, in order");
    let late_seen: Vec<u64> = got["late"].iter().map(|m| m.seq).collect();
    assert_eq!(late_seen, late, "late: every +OK'd message, once, in order (none had arrived before)");
    for m in got.values().flatten() {
        assert_eq!((m.data.as_str(), m.binary), (payload(&m.channel, m.seq).as_str(), false), "{m:?}");
    }
    assert!(got["lb"].iter().all(|m| m.epoch == epoch), "one epoch for lb on every node");
    assert_ne!(got["late"][0].epoch, "0");
    let extra = b.drain_for(Duration::from_millis(500));
    assert!(extra.is_empty(), "nothing more may arrive (no duplicate): {extra:?}");

    // The page is on a surviving node, which replayed what it missed (all of late's, and
    // lb's from the hang on, less what came live after the reconnection).
    let now: Vec<f64> = others.iter().map(|&i| connections(&nodes[i])).collect();
    assert_eq!(now.iter().sum::<f64>(), 1.0, "the page came back on a surviving node: {now:?}");
    let replayed: f64 =
        others.iter().map(|&i| nodes[i].metric0("crier_messages_replayed_total", &[]) - replayed_before[i]).sum();
    assert!(replayed >= 30.0 + 5.0, "the missed messages came from a replay ({replayed})");

    // Live again, on each survivor.
    for &i in &others {
        publish(&mut pubs[i], "lb", &mut lb);
    }
    let got = collect_until(&mut b, &[("lb", *lb.last().unwrap())]);
    assert_eq!(got["lb"].iter().map(|m| m.seq).collect::<Vec<_>>(), lb[lb.len() - 2..]);
    assert!(b.drain_for(Duration::from_millis(300)).is_empty());
    drop(pubs);
    drop(nginx);
    // Shown with --nocapture.
    eprintln!("{}", b.context());
}

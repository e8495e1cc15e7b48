//! A real three-master Redis Cluster on loopback ports (`redis-server --cluster-enabled
//! yes`, joined by `redis-cli --cluster create`), each master in its own temporary
//! directory, killed by PID when dropped. Needs `redis-server` and `redis-cli` (Redis >= 7:
//! `apt-get install -y redis-server`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TempDir, wait_until};

fn need(bin: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {bin}")).stdout(Stdio::null()).status();
    assert!(
        found.map(|s| s.success()).unwrap_or(false),
        "{bin} is not installed; these tests need a real Redis Cluster: apt-get install -y redis-server"
    );
}

/// A loopback port that is free, and whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

pub struct ClusterMaster {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl ClusterMaster {
    fn spawn(&mut self) {
        let cluster = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"];
        // A dead master is noticed fast, so a test's outage is short.
        let extra = [&cluster[..], &["--cluster-node-timeout", "2000"]].concat();
        self.child = Some(super::spawn_redis_server(self.port, self.dir.path(), &extra));
    }

    pub fn cli(&self, args: &[&str]) -> String {
        super::redis_cli(self.port, args)
    }

    /// SIGKILL by PID and reap: the master loses its data (no persistence), keeps its
    /// nodes.conf (so it comes back as the same node with the same slots).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl ClusterMaster {
    /// SIGSTOP by PID: the master keeps its sockets open and answers nothing (a hung
    /// server, or a network that silently drops everything).
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT by PID.
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }
}

impl Drop for ClusterMaster {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct RedisCluster {
    pub masters: Vec<ClusterMaster>,
}

impl RedisCluster {
    /// Three masters, no replicas, slots spread evenly; returns once every master says
    /// `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        need("redis-server");
        need("redis-cli");
        let mut masters: Vec<ClusterMaster> =
            (0..3).map(|_| ClusterMaster { port: free_cluster_port(), child: None, dir: TempDir::new() }).collect();
        for m in &mut masters {
            m.spawn();
        }
        let addrs: Vec<String> = masters.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let c = RedisCluster { masters };
        c.wait_ok();
        c
    }

    /// Waits until every master says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for m in &self.masters {
            wait_until(Duration::from_secs(30), "cluster_state:ok", || {
                m.cli(&["cluster", "info"]).contains("cluster_state:ok")
            });
        }
    }

    /// `--redis-cluster`'s value: every master as a seed.
    pub fn seeds(&self) -> String {
        self.masters.iter().map(|m| format!("redis://127.0.0.1:{}", m.port)).collect::<Vec<_>>().join(",")
    }

    /// The index of the master serving `key`'s slot (from each master's own line of
    /// `CLUSTER NODES`: `id addr flags master - ping pong epoch state <ranges…>`).
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = self.masters[0].cli(&["cluster", "keyslot", key]).trim().parse().expect("CLUSTER KEYSLOT");
        for (i, m) in self.masters.iter().enumerate() {
            let nodes = m.cli(&["cluster", "nodes"]);
            let Some(me) = nodes.lines().find(|l| l.contains("myself")) else { continue };
            let owns = me.split_whitespace().skip(8).any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if owns {
                return i;
            }
        }
        panic!("no master serves slot {slot} of {key}");
    }

    /// `PUBSUB SHARDNUMSUB channel` on the master that owns it: how many clients there are
    /// SSUBSCRIBEd to it.
    pub fn shard_subscribers(&self, channel: &str) -> u64 {
        let m = &self.masters[self.owner_of(channel)];
        let out = m.cli(&["pubsub", "shardnumsub", channel]);
        let lines: Vec<&str> = out.lines().collect();
        lines.get(1).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("PUBSUB SHARDNUMSUB: {out:?}"))
    }

    /// Runs redis-cli in cluster mode (`-c`: follows redirections).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &self.masters[0].port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node id of master `i`.
    pub fn id_of(&self, i: usize) -> String {
        self.masters[i].cli(&["cluster", "myid"]).trim().to_string()
    }

    /// Moves `slot` from master `from` to master `to` the way `redis-cli --cluster reshard`
    /// does, one step at a time, calling `between` after each step (IMPORTING/MIGRATING,
    /// the MIGRATE of its keys, SETSLOT NODE).
    pub fn move_slot(&self, slot: u16, from: usize, to: usize, mut between: impl FnMut()) {
        let (src, dst) = (&self.masters[from], &self.masters[to]);
        let (src_id, dst_id) = (self.id_of(from), self.id_of(to));
        let slot = slot.to_string();
        assert!(dst.cli(&["cluster", "setslot", &slot, "importing", &src_id]).contains("OK"));
        assert!(src.cli(&["cluster", "setslot", &slot, "migrating", &dst_id]).contains("OK"));
        between();
        // All the slot's keys in one MIGRATE … KEYS, as redis-cli does (in batches).
        let keys = src.cli(&["cluster", "getkeysinslot", &slot, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if !keys.is_empty() {
            let port = dst.port.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(&keys);
            let out = src.cli(&args);
            assert!(out.contains("OK"), "MIGRATE {keys:?}: {out}");
            between();
        }
        for m in [dst, src] {
            assert!(m.cli(&["cluster", "setslot", &slot, "node", &dst_id]).contains("OK"));
        }
        for (i, m) in self.masters.iter().enumerate() {
            if i != from && i != to {
                m.cli(&["cluster", "setslot", &slot, "node", &dst_id]);
            }
        }
        between();
    }

    pub fn kill(&mut self, i: usize) {
        self.masters[i].kill();
    }

    /// Starts a killed master again (same port, same nodes.conf, no data) and waits for the
    /// cluster to be whole.
    pub fn restart(&mut self, i: usize) {
        self.masters[i].spawn();
        self.wait_ok();
    }
}

//! The `crier-cluster` thread for a Redis Cluster (`--redis-cluster`): sharded pub/sub.
//!
//! A *session* is one redis-rs cluster connection (RESP3: commands and SSUBSCRIBEs share
//! each master's connection, pushes arrive on one queue). While it is up:
//! - publishes go out grouped by slot, in publisher order per slot ([`slot_publish`]);
//! - the node is SSUBSCRIBEd to the broadcast channel, to one probe channel per master, and
//!   to every channel a shard has a subscriber for ([`Interest`]); a shard's first
//!   subscriber of a channel waits until the SSUBSCRIBE is in effect and the channel's head
//!   is read, so it misses nothing published after its 101;
//! - messages go through the [`Sequencer`] as on a standalone Redis (gaps read back from
//!   the stream);
//! - each master is probed when nothing came from its slots for a while.
//!
//! Anything that breaks a master's connection (a `Disconnection` push, a probe that does
//! not come back, a command failing for want of a connection) ends the session; the next
//! one subscribes everything again and resynchronises every channel from where this node
//! stands (HMGET + XRANGE). Subscriptions that redis-rs moves by itself after a topology
//! change (an `ssubscribe` confirmation we did not ask for) are resynchronised too.
//!
//! [`slot_publish`]: super::slot_publish

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::interest::{Interest, Need, Report};
use super::script::{self, Addressed, Names};
use super::sequencer::{Position, Sequencer, Verdict};
use super::slot_publish::{self, Link};
use super::slots::{self, Master, slot_of};
use super::{
    BEHIND_AFTER, Backoff, CONNECT_TIMEOUT, Command, Delivery, PROBE_IDLE, PROBE_TIMEOUT, RESPONSE_TIMEOUT,
    RedisConfig, node_id,
};
use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::frame::MessageKind;

const TICK: Duration = Duration::from_millis(500);

/// Runs the cluster thread until the process exits.
pub fn run(
    cfg: RedisConfig,
    metrics: Arc<Metrics>,
    commands: flume::Receiver<Command>,
    reports: flume::Receiver<Report>,
    deliveries: flume::Sender<Delivery>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cluster mode: cannot start the tokio runtime: {e}");
            return;
        }
    };
    let mut interest = Interest::new(cfg.linger);
    // Every connection gets the broadcast channel: the node is always subscribed to it.
    interest.want(&ChannelName::broadcast());
    let node = Node {
        cfg,
        metrics,
        commands,
        reports,
        deliveries,
        sequencer: Sequencer::default(),
        interest,
        node_id: node_id(),
        own: HashSet::new(),
        sha: redis::Script::new(script::PUBLISH_LUA).get_hash().to_string(),
    };
    rt.block_on(node.run());
}

struct Node {
    cfg: RedisConfig,
    metrics: Arc<Metrics>,
    commands: flume::Receiver<Command>,
    reports: flume::Receiver<Report>,
    deliveries: flume::Sender<Delivery>,
    sequencer: Sequencer,
    interest: Interest,
    node_id: u64,
    sha: String,
    /// Channels this node SSUBSCRIBEd itself whose confirmation push has not come yet: an
    /// `ssubscribe` push for any other is redis-rs moving a subscription.
    own: HashSet<String>,
}

/// How many pushes may wait unread (besides `deliver` waiting [`BEHIND_AFTER`] for room in
/// the delivery queue) before the node counts as behind and restarts its session (README
/// "Cluster mode": bounded when a node falls behind).
const MAX_PUSH_BACKLOG: usize = 16 * 1024;

/// A connected session: the link, its pushes, and each master's probe channel.
struct Session {
    link: Link,
    pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
    masters: Vec<Probe>,
    /// Channels whose subscription Redis dropped (their slot moved): SSUBSCRIBEd again
    /// at the next tick.
    resubscribe: HashSet<ChannelName>,
}

/// One master's probe: a channel whose slot it serves.
struct Probe {
    master: Master,
    channel: String,
    heard: Instant,
    sent: Option<(String, Instant)>,
    count: u64,
}

/// The probe channel of `node` for the `k`-th candidate hash tag.
fn probe_name(prefix: &str, node: u64, k: u32) -> String {
    format!("{{{prefix}:~probe:{node}.{k}}}")
}

impl Node {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut logged_down = false;
        let shown = self.cfg.shown_url();
        loop {
            match self.connect().await {
                Ok(session) => {
                    self.metrics.redis.up.store(true, Relaxed);
                    tracing::info!("redis cluster {shown}: connected, {} masters", session.masters.len());
                    backoff.reset();
                    logged_down = false;
                    let why = self.session(session).await;
                    self.own.clear();
                    self.metrics.redis.up.store(false, Relaxed);
                    self.interest.unsubscribe_all();
                    tracing::warn!(
                        "redis cluster {shown}: {why}; publishes are refused until it is back, subscribers stay connected"
                    );
                }
                Err(e) if !logged_down => {
                    tracing::warn!("redis cluster {shown}: cannot connect: {e}; retrying with back-off");
                    logged_down = true;
                }
                Err(e) => tracing::debug!("redis cluster {shown}: cannot connect: {e}"),
            }
            self.refuse_for(backoff.next_wait()).await;
            self.metrics.redis.reconnects.fetch_add(1, Relaxed);
        }
    }

    /// While there is no session: refuse every request, and keep the shards' interest.
    async fn refuse_for(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                cmd = self.commands.recv_async() => match cmd {
                    Ok(cmd) => cmd.refuse(),
                    // The control thread is gone: the process is exiting.
                    Err(_) => std::future::pending::<()>().await,
                },
                Ok(r) = self.reports.recv_async() => match r {
                    Report::Want { channel, ack, .. } => {
                        self.interest.want(&channel);
                        let _ = ack.send(false);
                    }
                    Report::Unwant { channel, .. } => self.interest.unwant(&channel, Instant::now()),
                },
            }
            for (channel, _) in self.interest.expire(Instant::now()) {
                self.sequencer.forget(&channel);
            }
            self.metrics.redis.subscribed_channels.store(self.interest.len() as u64, Relaxed);
        }
    }

    async fn connect(&mut self) -> Result<Session, String> {
        let seeds = self.cfg.cluster.clone().unwrap_or_default();
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            // No retries by redis-rs: a retry after a dropped connection could run a
            // publish twice. What is safe to retry, slot_publish retries.
            .retries(0)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| {
                let e = e.to_string();
                if e.contains("cluster support disabled") {
                    format!("{e}: this Redis is not a cluster (cluster-enabled no); use --redis for a standalone Redis")
                } else {
                    e
                }
            })?;
        let link = Link { conn, broken: Arc::new(Notify::new()), metrics: self.metrics.clone() };
        let masters = self.check_masters(&link).await?;
        let mut probes = Vec::new();
        for master in masters {
            let channel = (0..100_000)
                .map(|k| probe_name(&self.cfg.prefix, self.node_id, k))
                .find(|c| master.owns(slot_of(c.as_bytes())))
                .ok_or_else(|| format!("no probe channel found for master {}", master.address()))?;
            probes.push(Probe { master, channel, heard: Instant::now(), sent: None, count: 0 });
        }
        for p in &probes {
            subscribe(&link, &p.channel).await?;
        }
        for channel in self.interest.channels() {
            self.start_channel(&link, &channel).await?;
        }
        Ok(Session { link, pushes, masters: probes, resubscribe: HashSet::new() })
    }

    /// Reads the masters, checks each runs Redis >= 7 (sharded pub/sub) and loads the
    /// publish script on it.
    async fn check_masters(&self, link: &Link) -> Result<Vec<Master>, String> {
        let mut conn = link.conn.clone();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let v = conn
            .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let masters = slots::parse_cluster_slots(&v).ok_or_else(|| format!("CLUSTER SLOTS: unexpected reply {v:?}"))?;
        if masters.is_empty() {
            return Err("CLUSTER SLOTS lists no master: the cluster is not set up (redis-cli --cluster create)".into());
        }
        for m in &masters {
            let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: m.host.clone(), port: m.port });
            let mut info = redis::cmd("INFO");
            info.arg("server");
            let v = conn.route_command(info, at.clone()).await.map_err(|e| format!("INFO on {}: {e}", m.address()))?;
            let text = match &v {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::VerbatimString { text, .. } => text.clone(),
                other => format!("{other:?}"),
            };
            match slots::redis_version(&text) {
                Some((major, _)) if major >= 7 => {}
                Some((major, minor)) => {
                    return Err(format!(
                        "master {} runs Redis {major}.{minor}: --redis-cluster needs Redis >= 7 (sharded pub/sub, SSUBSCRIBE); \
                         upgrade it, or use --redis with a standalone Redis",
                        m.address()
                    ));
                }
                None => return Err(format!("INFO on {}: no redis_version", m.address())),
            }
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script::PUBLISH_LUA);
            let sha = conn.route_command(load, at).await.map_err(|e| format!("SCRIPT LOAD on {}: {e}", m.address()))?;
            let same = match &sha {
                Value::BulkString(b) => b == self.sha.as_bytes(),
                Value::SimpleString(s) => *s == self.sha,
                _ => false,
            };
            if !same {
                return Err(format!("SCRIPT LOAD on {} returned {sha:?}, expected {}", m.address(), self.sha));
            }
        }
        Ok(masters)
    }

    /// SSUBSCRIBEs `channel`, then reads where it stands: resynchronised from this node's
    /// position if it has one, else started at Redis's head (so a message published after
    /// this returns arrives live, and one missed later is repaired).
    async fn start_channel(&mut self, link: &Link, channel: &ChannelName) -> Result<(), String> {
        let names = Names::new(&self.cfg.prefix, channel);
        subscribe(link, &names.pubsub).await?;
        self.own.insert(names.pubsub.clone());
        self.interest.subscribed(channel);
        match self.sequencer.position(channel) {
            Some(pos) => resync(self, link, channel, pos).await.then_some(()).ok_or("resynchronisation failed")?,
            None => {
                let f = link
                    .fetch(&self.cfg.prefix, channel, u64::MAX, Some(0))
                    .await
                    .ok_or("reading a channel's head failed")?;
                let position = match f.epoch {
                    Some(epoch) => Position { epoch, seq: f.head },
                    None => Position { epoch: 0, seq: 0 },
                };
                self.sequencer.start(channel, position);
            }
        }
        Ok(())
    }

    async fn session(&mut self, mut session: Session) -> &'static str {
        let commands = self.commands.clone();
        let (cfg, sha, link) = (self.cfg.clone(), self.sha.clone(), session.link.clone());
        tokio::select! {
            why = self.receive(&mut session) => why,
            why = slot_publish::serve_commands(&commands, &link, &cfg, &sha) => why,
        }
    }

    /// The pub/sub half: pushes, the shards' interest, probes and lingering channels.
    async fn receive(&mut self, s: &mut Session) -> &'static str {
        let mut tick = tokio::time::interval(TICK);
        let mut to_resync: HashSet<ChannelName> = HashSet::new();
        loop {
            tokio::select! {
                push = s.pushes.recv() => {
                    let Some(push) = push else { return "push queue closed" };
                    if let Err(why) = self.on_push(s, push, &mut to_resync).await {
                        return why;
                    }
                    // redis-rs queues pushes without bound: past this many waiting, the
                    // node is behind (see `deliver`).
                    if s.pushes.len() > MAX_PUSH_BACKLOG {
                        self.metrics.redis.fell_behind.fetch_add(1, Relaxed);
                        return "this node fell behind what Redis sends it";
                    }
                }
                Ok(report) = self.reports.recv_async() => match report {
                    Report::Want { channel, ack, .. } => {
                        if self.interest.want(&channel) == Need::Subscribe
                            && let Err(e) = self.start_channel(&s.link, &channel).await
                        {
                            let _ = ack.send(false);
                            tracing::warn!("redis cluster: subscribing to {channel}: {e}");
                            return "subscribing failed";
                        }
                        let _ = ack.send(true);
                    }
                    Report::Unwant { channel, .. } => self.interest.unwant(&channel, Instant::now()),
                },
                _ = tick.tick() => {
                    for (channel, subscribed) in self.interest.expire(Instant::now()) {
                        self.sequencer.forget(&channel);
                        if subscribed {
                            let mut conn = s.link.conn.clone();
                            let name = Names::new(&self.cfg.prefix, &channel).pubsub;
                            if let Err(e) = conn.sunsubscribe(&name).await {
                                s.link.failed(&e);
                            }
                        }
                    }
                    for channel in std::mem::take(&mut s.resubscribe) {
                        let name = Names::new(&self.cfg.prefix, &channel).pubsub;
                        let mut conn = s.link.conn.clone();
                        match tokio::time::timeout(RESPONSE_TIMEOUT, conn.ssubscribe(&name)).await {
                            Ok(Ok(())) => {
                                self.own.insert(name);
                                to_resync.insert(channel);
                            }
                            // The slot is still moving: again at the next tick.
                            Ok(Err(e)) if slot_publish::not_run(&e) => {
                                s.resubscribe.insert(channel);
                            }
                            _ => return "subscribing again failed",
                        }
                    }
                    for channel in std::mem::take(&mut to_resync) {
                        if let Some(pos) = self.sequencer.position(&channel)
                            && !resync(self, &s.link, &channel, pos).await
                        {
                            return "resynchronisation failed";
                        }
                    }
                    if let Err(why) = self.probe(s) {
                        return why;
                    }
                }
            }
            self.metrics.redis.subscribed_channels.store(self.interest.len() as u64, Relaxed);
        }
    }

    async fn on_push(
        &mut self,
        s: &mut Session,
        push: PushInfo,
        to_resync: &mut HashSet<ChannelName>,
    ) -> Result<(), &'static str> {
        let name = match push.data.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let prefix = self.cfg.prefix.clone();
        let addressed = script::addressed(&prefix, &name);

        match push.kind {
            PushKind::Disconnection => return Err("a connection to a master was lost"),
            PushKind::SMessage => {}
            // Subscriptions redis-rs moved by itself after a topology change: what was
            // published meanwhile is in the streams.
            PushKind::SSubscribe => {
                if !self.own.remove(&name)
                    && let Addressed::Channel(c) = addressed
                {
                    to_resync.insert(c);
                }
                return Ok(());
            }
            // Redis drops sharded subscriptions of a slot that moves away: subscribe again
            // at the next tick (redis-rs routes it to the new owner once it knows it), then
            // catch up from the stream.
            PushKind::SUnsubscribe => {
                if let Addressed::Channel(c) = addressed
                    && self.interest.is_subscribed(&c)
                {
                    s.resubscribe.insert(c);
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
        let payload = match push.data.get(1) {
            Some(Value::BulkString(b)) => b.as_slice(),
            _ => return Ok(()),
        };
        let slot = slot_of(name.as_bytes());
        if let Some(p) = s.masters.iter_mut().find(|p| p.master.owns(slot)) {
            p.heard = Instant::now();
        }
        if addressed == Addressed::Foreign && name.starts_with(&format!("{{{prefix}:~probe:")) {
            for p in &mut s.masters {
                if p.sent.as_ref().is_some_and(|(t, _)| t.as_bytes() == payload) {
                    p.sent = None;
                }
            }
            return Ok(());
        }
        let Addressed::Channel(channel) = addressed else { return Ok(()) };
        if !self.interest.is_subscribed(&channel) {
            return Ok(()); // left over from a channel unsubscribed meanwhile
        }
        let Some(m) = script::parse_message(payload) else {
            tracing::warn!("redis cluster: malformed message on {name}; ignored");
            return Ok(());
        };
        match self.sequencer.check(&channel, m.seq, m.epoch) {
            Verdict::Duplicate => {}
            Verdict::Deliver => self.deliver(&channel, m.seq, m.epoch, m.kind, m.payload).await?,
            Verdict::Missing { from, to } => {
                let f = s.link.fetch(&prefix, &channel, from, Some(to)).await.ok_or("repair failed")?;
                let entries = if f.epoch == Some(m.epoch) { f.entries } else { Vec::new() };
                self.repair_from(&channel, m.epoch, entries, Some(to)).await?;
                self.deliver(&channel, m.seq, m.epoch, m.kind, m.payload).await?;
            }
        }
        Ok(())
    }

    /// Probes each master whose slots have been silent; ends the session when a probe does
    /// not come back (centrifugal/centrifugo#1189: a subscription that looks connected but
    /// delivers nothing).
    fn probe(&self, s: &mut Session) -> Result<(), &'static str> {
        for p in &mut s.masters {
            match &p.sent {
                Some((_, sent)) if sent.elapsed() > PROBE_TIMEOUT => {
                    self.metrics.redis.probes_failed.fetch_add(1, Relaxed);
                    tracing::warn!("redis cluster: the probe of master {} did not come back", p.master.address());
                    return Err("a master's subscription probe did not come back");
                }
                None if p.heard.elapsed() > PROBE_IDLE => {
                    p.count += 1;
                    let token = format!("{}:{}", self.node_id, p.count);
                    let mut cmd = redis::cmd("SPUBLISH");
                    cmd.arg(&p.channel).arg(&token);
                    let (link, slot) = (s.link.clone(), slot_of(p.channel.as_bytes()));
                    tokio::spawn(async move {
                        if let Err(e) = link.route(&cmd, slot).await {
                            // A probe that cannot even be sent failed too.
                            link.metrics.redis.probes_failed.fetch_add(1, Relaxed);
                            link.failed(&e);
                        }
                    });
                    p.sent = Some((token, Instant::now()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Delivers fetched entries the sequencer still lacks, counting what was repaired and
    /// what Redis no longer held.
    async fn repair_from(
        &mut self,
        channel: &ChannelName,
        epoch: u64,
        entries: Vec<(u64, MessageKind, Bytes)>,
        to: Option<u64>,
    ) -> Result<(), &'static str> {
        let r = self.sequencer.repair(channel, epoch, entries, to);
        if r.lost > 0 {
            self.metrics.redis.unrepairable.fetch_add(r.lost, Relaxed);
            tracing::warn!("redis: {} message(s) of {channel} are no longer in its stream", r.lost);
        }
        for (seq, kind, payload) in r.deliver {
            self.metrics.redis.repaired.fetch_add(1, Relaxed);
            self.deliver(channel, seq, epoch, kind, payload).await?;
        }
        Ok(())
    }

    /// Hands one message to the control thread. If its queue has had no room for
    /// [`BEHIND_AFTER`], the node is behind: the session ends (its connections go, with
    /// whatever redis-rs buffered), and the next one re-reads every channel from the
    /// streams, as after any reconnect. The message counts as delivered only once queued.
    async fn deliver(
        &mut self,
        channel: &ChannelName,
        seq: u64,
        epoch: u64,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<(), &'static str> {
        let d = Delivery { channel: channel.clone(), seq, epoch, kind, payload, received_at: Instant::now() };
        if tokio::time::timeout(BEHIND_AFTER, self.deliveries.send_async(d)).await.is_err() {
            self.metrics.redis.fell_behind.fetch_add(1, Relaxed);
            return Err("this node fell behind what Redis sends it");
        }
        self.sequencer.delivered(channel, seq, epoch);
        Ok(())
    }
}

/// SSUBSCRIBE, confirmed; again while the slot is moving (MOVED: redis-rs refreshes its
/// slot map meanwhile), up to [`slot_publish::RETRY_FOR`].
async fn subscribe(link: &Link, name: &str) -> Result<(), String> {
    let deadline = Instant::now() + slot_publish::RETRY_FOR;
    loop {
        let mut conn = link.conn.clone();
        match tokio::time::timeout(RESPONSE_TIMEOUT, conn.ssubscribe(name)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if slot_publish::not_run(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => {
                link.failed(&e);
                return Err(format!("SSUBSCRIBE {name}: {e}"));
            }
            Err(_) => return Err(format!("SSUBSCRIBE {name} timed out")),
        }
    }
}

/// Catches a channel up from this node's position: what the stream holds after it (all
/// of it when Redis started a new epoch). False when Redis could not be read.
async fn resync(node: &mut Node, link: &Link, channel: &ChannelName, pos: Position) -> bool {
    let prefix = node.cfg.prefix.clone();
    let Some(f) = link.fetch(&prefix, channel, pos.seq + 1, None).await else { return false };
    let f = match f.epoch {
        None => return true, // Redis holds nothing; the next message starts an epoch
        Some(e) if e == pos.epoch => f,
        Some(_) => match link.fetch(&prefix, channel, 1, None).await {
            Some(f) => f,
            None => return false,
        },
    };
    if let Some(epoch) = f.epoch {
        return node.repair_from(channel, epoch, f.entries, None).await.is_ok();
    }
    true
}

//! `crier serve`: start-up, the control thread, signals and shutdown.
//!
//! The main thread binds every socket (so port 0 resolves once and errors surface before
//! anything runs), starts one thread per shard and the control thread (hub, publishers,
//! admin), reports ready, then waits for SIGTERM/SIGINT and drains. Shards own the client
//! connections; the control thread owns sequencing; the main thread owns nothing hot.

pub mod listen;

use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::{LegacyDriver, RuntimeBuilder};

use crate::access::Access;
use crate::cluster::ClusterHandle;
use crate::config::{Config, DriverChoice};
use crate::hub::{Hub, ShardMsg};
use crate::ops::metrics::Metrics;
use crate::ops::notify::Notifier;
use crate::ops::{admin, capacity};
use crate::publish::{self, Ingress};
use crate::shard;

/// Runs the server until a signal has drained it. Errors at start-up exit non-zero.
pub fn run(cfg: Config) -> ExitCode {
    match start_and_serve(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("crier: {e}");
            ExitCode::from(1)
        }
    }
}

fn start_and_serve(cfg: Config) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    // Before anything can report ready: a SIGTERM from then on must drain, not kill.
    let signals = install_signal_handlers()?;
    let nofile = raise_nofile();
    let metrics = Arc::new(Metrics::new(cfg.shards));
    let budget = capacity::budget(cfg.max_connections, nofile, cfg.shards, cfg.redis.is_some())?;
    log_budget(&budget);
    metrics.max_connections.store(budget.limit, Relaxed);
    let notifier = Notifier::new(cfg.notify_socket.clone());
    let access = Arc::new(Access::load(&cfg.access)?);

    // `ws` lives until this function returns: it keeps the address marked as not shared.
    let mut ws = listen::bind(&cfg)?;
    let (listeners, ws_addr) = (std::mem::take(&mut ws.listeners), ws.addr);
    let listener_fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let admin = match cfg.admin_listen {
        Some(addr) => {
            let l =
                std::net::TcpListener::bind(addr).map_err(|e| format!("--admin-listen {addr}: cannot listen: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Some(l)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let publisher = publish::bind(&cfg).map_err(|e| format!("--publish-socket: {e}"))?;
    let socket_file = publisher.file.clone();

    // Cluster mode: the Redis thread starts first; its handle goes to every shard (for
    // resumes) and to the control thread (for publishes), its deliveries to the control
    // thread.
    let (cluster, deliveries) = match &cfg.redis {
        Some(redis) => {
            let (handle, deliveries) = crate::cluster::start(redis.clone(), metrics.clone())?;
            tracing::info!("cluster mode: redis {} prefix {}", redis.shown_url(), redis.prefix);
            (Some(handle), Some(deliveries))
        }
        None => (None, None),
    };

    // Shards. One per-address table for all of them: SO_REUSEPORT spreads an address over
    // every shard.
    let peers = crate::peer::limits::PeerTable::new(&cfg.peer, metrics.clone());
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut senders = Vec::new();
    let mut shards: Vec<JoinHandle<()>> = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = flume::unbounded();
        senders.push(tx.clone());
        let (cfg, metrics, ready, cluster) = (cfg.clone(), metrics.clone(), ready_tx.clone(), cluster.clone());
        let (peers, access) = (peers.clone(), access.clone());
        let handle = std::thread::Builder::new()
            .name(format!("crier-shard-{id}"))
            .spawn(move || shard::runtime::run(id, cfg, (metrics, peers), cluster, access, listener, (tx, rx), ready))
            .map_err(|e| format!("cannot start shard thread: {e}"))?;
        shards.push(handle);
    }
    let mut driver = "";
    for _ in 0..cfg.shards {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(d)) => driver = d,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard did not start within 30 s".into()),
        }
    }
    let _ = metrics.driver.set(driver);
    if cfg.driver == DriverChoice::Auto && driver == "epoll" {
        let why = shard::runtime::probe_io_uring().err().map_or_else(|| "set-up failed".to_string(), |e| e.to_string());
        tracing::warn!("io_uring is not available ({why}); falling back to epoll");
    }

    // The control thread: hub, publishers, admin.
    let (control_tx, control_rx) = flume::unbounded::<()>();
    let (cready_tx, cready_rx) = mpsc::channel::<Result<(), String>>();
    let control = {
        let (cfg, metrics, access) = (cfg.clone(), metrics.clone(), access.clone());
        std::thread::Builder::new()
            .name("crier-control".into())
            .spawn(move || {
                let admin = admin.map(|l| (l, access));
                control_thread(cfg, metrics, senders, publisher, admin, (cluster, deliveries), control_rx, cready_tx)
            })
            .map_err(|e| format!("cannot start control thread: {e}"))?
    };
    match cready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the control thread did not start".into()),
    }

    if let Some(eager) = crate::ops::memory::arena_eager_commit() {
        tracing::info!("allocator: mimalloc arena_eager_commit={eager}");
    }
    let admin_shown = admin_addr.map_or("off".to_string(), |a| a.to_string());
    tracing::info!(
        "ready ws={ws_addr} admin={admin_shown} publish={} driver={driver} shards={}",
        cfg.publish_socket.display(),
        cfg.shards
    );
    notifier.notify("READY=1");
    if let Some(interval) = cfg.watchdog.filter(|_| notifier.enabled()) {
        let (n, metrics) = (notifier.clone(), metrics.clone());
        let _ = std::thread::Builder::new()
            .name("crier-watchdog".into())
            .spawn(move || crate::ops::notify::watchdog(&n, &metrics, interval));
    }

    let signal = wait_for_signal(signals, &access);
    tracing::info!("{signal}: draining (close 1001 to every client, up to {:?})", cfg.drain_timeout);
    notifier.notify("STOPPING=1");
    let deadline = Instant::now() + cfg.drain_timeout + Duration::from_secs(2);
    for fd in listener_fds {
        // Wakes the shard's pending accept and stops new connections reaching it.
        // SAFETY: the listener fds stay open until their shard threads end.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    let _ = control_tx.send(());
    for handle in shards {
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
    drop(control);
    // Only the socket this crier created: the path may now hold another instance's.
    socket_file.remove_if_ours();
    tracing::info!("stopped");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn control_thread(
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    shards: Vec<flume::Sender<ShardMsg>>,
    publisher: publish::Bound,
    admin: Option<(std::net::TcpListener, Arc<Access>)>,
    (cluster, deliveries): (Option<ClusterHandle>, Option<crate::cluster::Deliveries>),
    stop: flume::Receiver<()>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let mut rt = match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the control runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let publish::Bound { listener: publisher, file: socket_file } = publisher;
        let publisher = match monoio::net::UnixListener::from_std(publisher) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("publisher socket: {e}")));
                return;
            }
        };
        let admin =
            match admin.map(|(l, access)| monoio::net::TcpListener::from_std(l).map(|l| (l, access))).transpose() {
                Ok(a) => a,
                Err(e) => {
                    let _ = ready.send(Err(format!("admin listener: {e}")));
                    return;
                }
            };
        let hub = Hub::new(shards, metrics.clone());
        let stats = crate::ops::stats::StatsSource::new(cfg.clone(), hub.tally());
        let ingress = Rc::new(Ingress::new(hub, cfg, metrics.clone(), cluster));
        monoio::spawn(publish::accept_loop(publisher, socket_file, ingress.clone()));
        if let Some(deliveries) = deliveries {
            publish::spawn_cluster_deliveries(deliveries, ingress.clone());
        }
        if let Some((admin, access)) = admin {
            monoio::spawn(admin::accept_loop(admin, metrics.clone(), access, stats));
        }
        let _ = ready.send(Ok(()));
        // Drain is ordered here, on the thread that publishes, so that every publish
        // answered +OK reaches the shards before their drain order.
        let _ = stop.recv_async().await;
        metrics.draining.store(true, Relaxed);
        ingress.hub.borrow_mut().drain();
        // Keep serving /metrics and refusing publishers until the process exits.
        std::future::pending::<()>().await;
    });
}

fn install_signal_handlers() -> Result<signal_hook::iterator::Signals, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signal handlers: {e}"))
}

/// Waits for SIGTERM or SIGINT; each SIGHUP meanwhile reloads the access-control key files
/// (nobody is disconnected).
fn wait_for_signal(mut signals: signal_hook::iterator::Signals, access: &Access) -> &'static str {
    use signal_hook::consts::{SIGHUP, SIGINT};
    for sig in signals.forever() {
        match sig {
            SIGHUP => access.reload(),
            SIGINT => return "SIGINT",
            _ => return "SIGTERM",
        }
    }
    "SIGTERM"
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force.
fn raise_nofile() -> u64 {
    let old = match crate::ops::check::nofile_limits() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("getrlimit(RLIMIT_NOFILE): {e}");
            // What Linux gives a process by default.
            return 1024;
        }
    };
    let mut soft = old.soft;
    if old.soft < old.hard {
        let lim = libc::rlimit { rlim_cur: old.hard, rlim_max: old.hard };
        // SAFETY: setrlimit reads lim.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            soft = old.hard;
        } else {
            tracing::warn!("setrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
        }
    }
    tracing::info!("RLIMIT_NOFILE: soft {} -> {soft} (hard {})", old.soft, old.hard);
    soft
}

/// Logs the connection limit in force, with a warning when RLIMIT_NOFILE lowered it.
fn log_budget(b: &capacity::Budget) {
    if b.derived() {
        tracing::warn!(
            "max connections: {} (--max-connections {} cannot be held: RLIMIT_NOFILE {} less {} descriptors reserved for publishers, the admin port and refusals); raise LimitNOFILE= in the systemd unit or the hard nofile limit (tuning/limits.d/90-crier.conf) to hold more",
            b.limit,
            b.configured,
            b.nofile,
            b.reserve
        );
    } else {
        tracing::info!(
            "max connections: {} (--max-connections; RLIMIT_NOFILE {} holds {} with {} descriptors reserved)",
            b.limit,
            b.nofile,
            b.room(),
            b.reserve
        );
    }
}

//! `crier serve`: start-up, the control thread, signals and shutdown.
//!
//! The main thread binds every socket (so port 0 resolves once and errors surface before
//! anything runs), starts one thread per shard and the control thread (hub, publishers,
//! admin), reports ready, then waits for SIGTERM/SIGINT and drains. Shards own the client
//! connections; the control thread owns sequencing; the main thread owns nothing hot.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::{LegacyDriver, RuntimeBuilder};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, DriverChoice};
use crate::hub::{Hub, ShardMsg};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::publish::{self, Ingress};
use crate::{admin, shard};

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
    raise_nofile(&cfg);
    let metrics = Arc::new(Metrics::new(cfg.shards));
    let notifier = Notifier::new(cfg.notify_socket.clone());

    let (listeners, ws_addr) = bind_ws(&cfg)?;
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
    let publisher =
        publish::bind(&cfg.publish_socket, cfg.publish_socket_mode).map_err(|e| format!("--publish-socket: {e}"))?;

    // Shards.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut senders = Vec::new();
    let mut shards: Vec<JoinHandle<()>> = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = flume::unbounded();
        senders.push(tx.clone());
        let (cfg, metrics, ready) = (cfg.clone(), metrics.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("crier-shard-{id}"))
            .spawn(move || shard::run(id, cfg, metrics, listener, (tx, rx), ready))
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
        let why = shard::probe_io_uring().err().map_or_else(|| "set-up failed".to_string(), |e| e.to_string());
        tracing::warn!("io_uring is not available ({why}); falling back to epoll");
    }

    // Cluster mode: the Redis thread starts before the control thread that feeds on it.
    if let Some(redis) = &cfg.redis {
        crate::cluster::start(redis.clone(), metrics.clone())?;
        tracing::info!("cluster mode: redis {} prefix {}", redis.shown_url(), redis.prefix);
    }

    // The control thread: hub, publishers, admin.
    let (control_tx, control_rx) = flume::unbounded::<()>();
    let (cready_tx, cready_rx) = mpsc::channel::<Result<(), String>>();
    let control = {
        let (cfg, metrics) = (cfg.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("crier-control".into())
            .spawn(move || control_thread(cfg, metrics, senders, publisher, admin, control_rx, cready_tx))
            .map_err(|e| format!("cannot start control thread: {e}"))?
    };
    match cready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the control thread did not start".into()),
    }

    let admin_shown = admin_addr.map_or("off".to_string(), |a| a.to_string());
    tracing::info!(
        "ready ws={ws_addr} admin={admin_shown} publish={} driver={driver} shards={}",
        cfg.publish_socket.display(),
        cfg.shards
    );
    notifier.notify("READY=1");
    if let Some(interval) = cfg.watchdog.filter(|_| notifier.enabled()) {
        let n = notifier.clone();
        let _ = std::thread::Builder::new().name("crier-watchdog".into()).spawn(move || {
            loop {
                n.notify("WATCHDOG=1");
                std::thread::sleep(interval / 2);
            }
        });
    }

    let signal = wait_for_signal(signals);
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
    let _ = std::fs::remove_file(&cfg.publish_socket);
    tracing::info!("stopped");
    Ok(())
}

/// Binds one SO_REUSEPORT listener per shard on the same address.
fn bind_ws(cfg: &Config) -> Result<(Vec<std::net::TcpListener>, SocketAddr), String> {
    let mut addr = cfg.listen;
    let mut out = Vec::with_capacity(cfg.shards);
    for i in 0..cfg.shards {
        let fail = |what: &str, e: std::io::Error| format!("--listen {addr}: {what}: {e}");
        let sock =
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| fail("socket", e))?;
        sock.set_reuse_port(true).map_err(|e| fail("SO_REUSEPORT", e))?;
        sock.set_reuse_address(true).map_err(|e| fail("SO_REUSEADDR", e))?;
        if let Some(size) = cfg.socket_send_buffer {
            sock.set_send_buffer_size(size).map_err(|e| fail("SO_SNDBUF", e))?;
        }
        sock.set_nonblocking(true).map_err(|e| fail("non-blocking", e))?;
        sock.bind(&addr.into()).map_err(|e| fail("cannot bind", e))?;
        sock.listen(cfg.backlog).map_err(|e| fail("cannot listen", e))?;
        if i == 0 {
            // Port 0 resolves here; the other shards bind the same port.
            addr = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| format!("--listen {addr}: no local address"))?;
        }
        out.push(sock.into());
    }
    Ok((out, addr))
}

#[allow(clippy::too_many_arguments)]
fn control_thread(
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    shards: Vec<flume::Sender<ShardMsg>>,
    publisher: std::os::unix::net::UnixListener,
    admin: Option<std::net::TcpListener>,
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
        let publisher = match monoio::net::UnixListener::from_std(publisher) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("publisher socket: {e}")));
                return;
            }
        };
        let admin = match admin.map(monoio::net::TcpListener::from_std).transpose() {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Err(format!("admin listener: {e}")));
                return;
            }
        };
        let ingress = Rc::new(Ingress {
            hub: std::cell::RefCell::new(Hub::new(shards, metrics.clone())),
            cfg,
            metrics: metrics.clone(),
        });
        monoio::spawn(publish::accept_loop(publisher, ingress.clone()));
        crate::cluster::spawn_delivery_task(ingress.clone()); // no-op without --redis
        if let Some(admin) = admin {
            monoio::spawn(admin::accept_loop(admin, metrics.clone()));
        }
        let _ = ready.send(Ok(()));
        // Drain is ordered here, on the thread that publishes, so that every publish
        // answered +OK reaches the shards before their drain order.
        let _ = stop.recv_async().await;
        metrics.draining.store(true, Relaxed);
        ingress.hub.borrow().drain();
        // Keep serving /metrics and refusing publishers until the process exits.
        std::future::pending::<()>().await;
    });
}

fn install_signal_handlers() -> Result<signal_hook::iterator::Signals, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signal handlers: {e}"))
}

fn wait_for_signal(mut signals: signal_hook::iterator::Signals) -> &'static str {
    let sig = signals.forever().next().unwrap_or(signal_hook::consts::SIGTERM);
    if sig == signal_hook::consts::SIGINT { "SIGINT" } else { "SIGTERM" }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and warns when that cannot hold
/// --max-connections.
fn raise_nofile(cfg: &Config) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into lim.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
        return;
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads lim.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!("setrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
            lim.rlim_cur = old;
        }
    }
    tracing::info!("RLIMIT_NOFILE: soft {old} -> {} (hard {})", lim.rlim_cur, lim.rlim_max);
    // Each connection is one fd; shards, listeners, the publisher socket and logs need a few.
    let needed = cfg.max_connections as u64 + 64 + 8 * cfg.shards as u64;
    if lim.rlim_cur < needed {
        tracing::warn!(
            "RLIMIT_NOFILE {} cannot hold --max-connections {} (needs about {needed}): raise LimitNOFILE= in the systemd unit or the hard nofile limit (tuning/limits.d/90-crier.conf), or lower --max-connections",
            lim.rlim_cur,
            cfg.max_connections
        );
    }
}

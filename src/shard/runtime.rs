//! A shard's thread: pinned to its CPU, running one monoio runtime (io_uring where the
//! kernel allows it, epoll otherwise, both with timers), and the batch loop that takes the
//! hub's broadcasts, queues them on subscribers and flushes.
//!
//! The io_uring probe lives here once; `crier check` asks it too, so the preflight and the
//! server never disagree about which driver a shard will get.

use std::io;
use std::time::Instant;

use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use std::sync::Arc;

use monoio::net::TcpListener;

use super::{Shard, session, sweep};
use crate::cluster::ClusterHandle;
use crate::config::{Config, DriverChoice};
use crate::hub::ShardMsg;
use crate::ops::metrics::Metrics;
use crate::peer::limits::PeerTable;

/// The runtime type every shard runs: io_uring or epoll, both with timers.
pub type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Whether the kernel lets this process set up an io_uring (Docker's default seccomp
/// profile and `kernel.io_uring_disabled` do not).
pub fn probe_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes params, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned to us.
    unsafe { libc::close(fd as i32) };
    if monoio::utils::detect_uring() {
        Ok(())
    } else {
        Err(io::Error::other("the kernel lacks io_uring operations monoio needs"))
    }
}

/// Builds the runtime for `choice`; returns it with the driver's name.
pub fn build_runtime(choice: DriverChoice) -> Result<(Runtime, &'static str), String> {
    let uring =
        || RuntimeBuilder::<IoUringDriver>::new().enable_timer().build().map(|rt| (Runtime::from(rt), "io_uring"));
    let epoll = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|rt| (Runtime::from(rt), "epoll"))
            .map_err(|e| format!("cannot start the epoll driver: {e}"))
    };
    match choice {
        DriverChoice::Epoll => epoll(),
        DriverChoice::IoUring => match probe_io_uring() {
            Ok(()) => uring().map_err(|e| format!("cannot start the io_uring driver: {e}")),
            Err(e) => Err(format!(
                "--driver io-uring: io_uring is not available here ({e}); it is blocked by seccomp (e.g. Docker's default profile) or kernel.io_uring_disabled. Use --driver epoll or --driver auto"
            )),
        },
        DriverChoice::Auto => match probe_io_uring() {
            Ok(()) => uring().or_else(|e| {
                tracing::warn!("io_uring set-up failed ({e}); falling back to epoll");
                epoll()
            }),
            Err(_) => epoll(),
        },
    }
}

/// What a shard thread reports once its runtime is up: the driver, or why it failed.
pub type ReadyReport = Result<&'static str, String>;

/// Runs a shard on the current thread until it has drained.
#[allow(clippy::too_many_arguments)]
pub fn run(
    id: usize,
    cfg: Arc<Config>,
    (metrics, peers): (Arc<Metrics>, Arc<PeerTable>),
    cluster: Option<ClusterHandle>,
    access: Arc<crate::access::Access>,
    listener: std::net::TcpListener,
    (requeue, rx): (flume::Sender<ShardMsg>, flume::Receiver<ShardMsg>),
    ready: std::sync::mpsc::Sender<ReadyReport>,
) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if !cores.is_empty() {
        let core = cores[id % cores.len()];
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = id, "could not pin to CPU {}", core.id);
        }
    }
    let (mut rt, driver) = match build_runtime(cfg.driver) {
        Ok(built) => built,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot use listener: {e}")));
                return;
            }
        };
        let shard = Shard::new(id, cfg, metrics, peers, cluster, access, rx.clone(), requeue);
        let _ = ready.send(Ok(driver));
        monoio::spawn(session::accept_loop(shard.clone(), listener));
        monoio::spawn(sweep::sweep_loop(shard.clone()));
        loop {
            // Broadcasts taken during the last pass are still owed to the connections it had
            // written before they came: another pass follows at once (after the hold).
            if !shard.has_unflushed() {
                match rx.recv_async().await {
                    Ok(msg) if shard.take(&msg).is_some() => {}
                    Ok(_) => return drain(&shard).await,
                    Err(_) => return,
                }
            }
            // --flush-delay: the batch waits (taking broadcasts as they come) until the hold
            // ends or the batch is full. Connections keep being served meanwhile.
            if let Some(until) = shard.hold_until() {
                let since = Instant::now();
                while shard.batch_has_room() {
                    match monoio::time::timeout_at(until.into(), rx.recv_async()).await {
                        Ok(Ok(msg)) if shard.take(&msg).is_some() => {}
                        Ok(Ok(_)) => return drain(&shard).await,
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                shard.held(since);
            }
            while shard.batch_has_room() {
                match rx.try_recv() {
                    Ok(msg) if shard.take(&msg).is_some() => {}
                    Ok(_) => return drain(&shard).await,
                    Err(_) => break,
                }
            }
            shard.flush_pass();
            if !rx.is_empty() || shard.has_unflushed() {
                // A backlog: `recv_async` would return at once and this task would never
                // give way. Let the writers, read loops and accept loop run (and the driver
                // poll) between two batches, so that a connection blocked on its socket can
                // drain before it is offered the next batch.
                yield_now().await;
            }
        }
    });
}

/// The drain order: writes what is queued, closes every connection, stops the sweep.
async fn drain(shard: &Shard) {
    shard.flush_dirty();
    shard.drain().await;
    shard.stopped.set(true);
}

/// Gives way to every other ready task of the runtime once (monoio 0.2 has no public
/// `yield_now`): the first poll wakes itself and returns `Pending`.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

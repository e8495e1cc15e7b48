//! systemd notifications (sd_notify protocol): READY=1, STOPPING=1, WATCHDOG=1.
//!
//! Written by hand because it is one datagram to the socket named by NOTIFY_SOCKET; the
//! protocol is documented in sd_notify(3). Without NOTIFY_SOCKET every call is a no-op.
//! WATCHDOG=1 is sent only while every shard's sweep keeps running ([`watchdog`]), so a
//! wedged shard gets the process restarted rather than kept alive by a healthy thread.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::ops::metrics::Metrics;

/// A handle to systemd's notification socket, if crier was started with one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    pub fn new(socket: Option<OsString>) -> Self {
        Self { socket }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one state string, e.g. "READY=1". Errors are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let result = UnixDatagram::unbound().and_then(|sock| {
            let bytes = path.as_encoded_bytes();
            if let Some(abstract_name) = bytes.strip_prefix(b"@") {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            } else {
                sock.send_to(state.as_bytes(), path)
            }
        });
        if let Err(e) = result {
            tracing::warn!("sd_notify {state:?} to {path:?}: {e}");
        }
    }
}

/// The watchdog thread's loop: every half `interval` (as sd_watchdog_enabled(3) advises),
/// sends WATCHDOG=1 if every shard's sweep has run within the last `interval`. A shard that
/// has not (its thread blocked, or a task that never yields) gets no ping sent for it, so
/// systemd restarts crier at most two intervals after the shard stopped; the first skipped
/// ping logs a warning naming the shard. This is sound because the sweep tick is at most a
/// quarter of the interval (`Config::sweep_tick`). While draining, pings go on regardless:
/// shards stop sweeping as they finish, and the main thread bounds the drain itself.
pub fn watchdog(notifier: &Notifier, metrics: &Metrics, interval: Duration) {
    let mut warned = false;
    loop {
        let late = if metrics.draining.load(Relaxed) { None } else { metrics.late_shard(interval) };
        match late {
            None => {
                if std::mem::take(&mut warned) {
                    tracing::info!("every shard sweeps again: sending WATCHDOG=1 again");
                }
                notifier.notify("WATCHDOG=1");
            }
            Some((shard, age)) if !warned => {
                warned = true;
                tracing::warn!(
                    shard,
                    "shard {shard} is late: its sweep last ran {age:?} ago, over the watchdog interval {interval:?}; not sending WATCHDOG=1, so systemd will restart crier"
                );
            }
            Some(_) => {}
        }
        std::thread::sleep(interval / 2);
    }
}

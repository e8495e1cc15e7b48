//! systemd notifications (sd_notify protocol): READY=1, STOPPING=1, WATCHDOG=1.
//!
//! Written by hand because it is one datagram to the socket named by NOTIFY_SOCKET; the
//! protocol is documented in sd_notify(3). Without NOTIFY_SOCKET every call is a no-op.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

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

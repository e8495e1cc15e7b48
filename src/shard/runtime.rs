//! A shard's runtime: io_uring where the kernel allows it, epoll otherwise, both with timers.
//!
//! The io_uring probe lives here once; `crier check` asks it too, so the preflight and the
//! server never disagree about which driver a shard will get.

use std::io;

use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::DriverChoice;

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

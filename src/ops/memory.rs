//! Handing freed memory back to the kernel.
//!
//! mimalloc returns the pages a thread has emptied only when that thread next calls into
//! the allocator after its purge delay. A shard that goes quiet after a burst would keep the
//! burst's peak resident for good: 19,000 clients that took their time over the upgrade left
//! 1.3 KB of RSS per idle connection instead of 0.75 KB, since every pending handshake holds
//! a request buffer and a larger task. Each shard's sweep calls [`release`] once per tick.

/// mimalloc's option `arena_eager_commit` (`mi_option_arena_eager_commit` in mimalloc.h).
#[cfg(not(feature = "system-alloc"))]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// crier's own defaults for mimalloc, set before the first allocation. The binary calls it
/// from an `.init_array` constructor ordered ahead of mimalloc's, because an option read
/// later is too late for the first arena.
///
/// `arena_eager_commit` = 0: mimalloc's Linux default (2: commit each arena when it is
/// reserved, since Linux overcommits) measured ~1,215 B of RSS per idle connection for
/// 19,000 connections against ~730 B with 0 (`loadtest/targets.sh density`, README
/// "Performance"). A `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still wins: this only
/// changes the default (`mi_option_set_default`).
pub fn allocator_defaults() {
    #[cfg(not(feature = "system-alloc"))]
    // SAFETY: mi_option_set_default only stores a value in mimalloc's static option table;
    // it runs single-threaded, before main.
    unsafe {
        libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0)
    };
}

/// The value mimalloc uses for `arena_eager_commit` (after the environment is read).
pub fn arena_eager_commit() -> Option<i64> {
    #[cfg(not(feature = "system-alloc"))]
    // SAFETY: mi_option_get reads mimalloc's option table (initialised by then).
    return Some(unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) } as i64);
    #[cfg(feature = "system-alloc")]
    None
}

/// Returns this thread's emptied pages whose purge delay has passed to the OS. Cheap when
/// there is nothing to return; a no-op when built with the `system-alloc` feature.
pub fn release() {
    #[cfg(not(feature = "system-alloc"))]
    // SAFETY: mi_collect takes no pointers; it walks this thread's heap and the arenas.
    unsafe {
        libmimalloc_sys::mi_collect(false)
    };
}

#[cfg(all(test, not(feature = "system-alloc")))]
mod tests {
    use std::time::{Duration, Instant};

    // The lib's test binary runs on the server's allocator too.
    #[global_allocator]
    static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm.split_whitespace().nth(1).expect("rss field").parse().expect("number");
        // SAFETY: sysconf has no preconditions.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
    }

    #[test]
    fn release_hands_a_freed_burst_back_to_the_kernel() {
        const MIB: usize = 1 << 20;
        // A thread of its own, like a shard: its heap goes quiet after the burst.
        std::thread::spawn(|| {
            let burst: Vec<Vec<u8>> = (0..48 * 1024).map(|i| vec![i as u8; 1000]).collect();
            let high = rss_bytes();
            drop(burst);
            // Calls release once per tick, as the sweep does, until mimalloc's purge delay
            // (1 s by default) has passed and the pages are back with the kernel.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut low = high;
            while high < low + 32 * MIB && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                super::release();
                low = rss_bytes();
            }
            assert!(high > low + 32 * MIB, "RSS {} MiB after the burst, {} MiB after release", high / MIB, low / MIB);
        })
        .join()
        .expect("burst thread");
    }
}

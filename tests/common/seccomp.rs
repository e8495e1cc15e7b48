//! A Docker-like seccomp filter that blocks io_uring, and whether the kernel allows io_uring.

use std::io::{self};
use std::process::Command;

#[cfg(target_arch = "x86_64")]
pub(crate) const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
pub(crate) const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn install_io_uring_blocker(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // Classic BPF opcodes.
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
    const BPF_JEQ_K: u16 = 0x15; // BPF_JMP (0x05) | BPF_JEQ (0x10) | BPF_K (0x00)
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    // struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; }
    const OFF_NR: u32 = 0;
    const OFF_ARCH: u32 = 4;
    // io_uring_setup, io_uring_enter, io_uring_register: 425, 426, 427 on both arches.
    const EPERM_RET: u32 = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32);
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let filter: [libc::sock_filter; 8] = [
        ins(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        ins(BPF_JEQ_K, 0, 5, AUDIT_ARCH), // other arch → allow (index 7)
        ins(BPF_LD_W_ABS, 0, 0, OFF_NR),
        // Jump offsets count from the next instruction.
        ins(BPF_JEQ_K, 2, 0, 425), // io_uring_setup → EPERM (index 6)
        ins(BPF_JEQ_K, 1, 0, 426), // io_uring_enter → EPERM
        ins(BPF_JEQ_K, 0, 1, 427), // io_uring_register → EPERM; else allow (index 7)
        ins(BPF_RET_K, 0, 0, EPERM_RET),
        ins(BPF_RET_K, 0, 0, ALLOW),
    ];
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl on
    // data that was built before the fork (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let prog = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn install_io_uring_blocker(_cmd: &mut Command) {
    panic!("the io_uring seccomp blocker knows only x86_64 and aarch64");
}

/// The kernel allows io_uring for unprivileged-by-sysctl use here (io_uring_disabled = 0).
pub fn kernel_allows_io_uring() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim() == "0").unwrap_or(true)
}

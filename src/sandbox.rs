//! The open-files helper's confinement, beyond its user and capabilities:
//! a network namespace of its own (no interface but a down loopback), and
//! a seccomp filter that lets through only the system calls its loop makes
//! (read its socket, list and stat another process's descriptors, answer).
//! Anything else fails with `EPERM`: the helper then answers "unreadable",
//! and the daemon's collector fails rather than report a made-up 0. Not
//! `ptrace`, `process_vm_readv`, `socket`, `connect`, `execve`, `open` for
//! writing aside (no write flag is checked: the helper holds no write
//! capability), nor any other.

use std::io;

/// `AUDIT_ARCH_*` of the architectures this daemon is built for.
#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "arm")]
const ARCH: u32 = 0x4000_0028;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7;

/// What the helper's loop calls, by way of std, nix and the C library:
/// its socket, `/proc` reads, memory, leaving (and aborting).
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_clock_gettime,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_restart_syscall,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

#[cfg(target_arch = "x86_64")]
const ARCH_CALLS: &[libc::c_long] =
    &[libc::SYS_mmap, libc::SYS_newfstatat, libc::SYS_stat, libc::SYS_lstat, libc::SYS_readlink];
#[cfg(target_arch = "arm")]
const ARCH_CALLS: &[libc::c_long] = &[
    libc::SYS_mmap2,
    libc::SYS_fstatat64,
    libc::SYS_fstat64,
    libc::SYS_stat64,
    libc::SYS_lstat64,
    libc::SYS_recv,
    libc::SYS_send,
    // The 64-bit time calls a 32-bit C library makes first (Linux 5.1 on);
    // the libc crate does not name them.
    403, // clock_gettime64
    422, // futex_time64
    libc::SYS__llseek,
    libc::SYS_readlink,
];
#[cfg(target_arch = "aarch64")]
const ARCH_CALLS: &[libc::c_long] = &[libc::SYS_mmap, libc::SYS_newfstatat];

/// Leaves the host's network namespace: the helper needs no network, and
/// a process with `CAP_SYS_PTRACE` should reach none. Needs root
/// (`CAP_SYS_ADMIN`): called before the switch of user. `Ok(false)` on a
/// kernel built without namespaces (the device's: `CONFIG_NET_NS` is off
/// in rv1106-jetkvm-v2_defconfig), where the seccomp filter alone keeps
/// the helper off the network (no `socket`).
pub fn leave_network() -> io::Result<bool> {
    // SAFETY: unshare with a flag, on this single-threaded process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        e => Err(e),
    }
}

/// The filter: the architecture checked (another one's numbers mean other
/// calls: killed), then each allowed call, then `EPERM`.
fn program() -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let ret = |k: u32| stmt(libc::BPF_RET | libc::BPF_K, k);
    let allowed: Vec<u32> = COMMON.iter().chain(ARCH_CALLS).map(|&n| n as u32).collect();
    // seccomp_data: nr at 0, arch at 4.
    let mut p = vec![load(4), jeq(ARCH, 1, 0), ret(libc::SECCOMP_RET_KILL_PROCESS), load(0)];
    let n = allowed.len();
    for (i, nr) in allowed.iter().enumerate() {
        // Matched: jump past the rest of the list and the EPERM to ALLOW.
        p.push(jeq(*nr, (n - i) as u8, 0));
    }
    p.push(ret(libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA)));
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    p
}

/// Lets this process make only the helper's system calls, for the rest of
/// its life. Needs `no_new_privs` (set by the switch of user).
pub fn allow_only_the_helpers_calls() -> io::Result<()> {
    let filter = program();
    let prog =
        libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: the program outlives the call, which copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const _ as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child: after the filter, the helper's calls work and a socket,
    /// `ptrace` and `execve` are refused.
    #[test]
    fn the_filter_lets_the_helpers_calls_through_and_nothing_else() {
        // SAFETY: the child only makes system calls and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let code = (|| {
                    // SAFETY: plain prctl and system calls in this process.
                    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                    if allow_only_the_helpers_calls().is_err() {
                        return 10;
                    }
                    let me = std::process::id();
                    let answers = crate::capture_holders::answer(
                        &[me],
                        &["x".into()],
                        std::path::Path::new("/dev/null"),
                    );
                    if !answers.node || answers.pids != [crate::capture_holders::Answer::NotTheApp] {
                        return 11;
                    }
                    // Its own descriptors' links, as it reads the app's.
                    let null = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata("/dev/null").unwrap());
                    let _held = std::fs::File::open("/dev/null");
                    if !crate::capture_holders::holds(me, null).unwrap_or(false) {
                        return 12;
                    }
                    let eperm =
                        |r: i64| r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                    // SAFETY: calls expected to fail; their arguments are never used.
                    unsafe {
                        if !eperm(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64)
                            || !eperm(libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0))
                            || !eperm(libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null())
                                as i64)
                        {
                            return 13;
                        }
                    }
                    0
                })();
                // SAFETY: leaving the child.
                unsafe { libc::_exit(code) }
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(libc::WIFEXITED(status), "killed: {status}");
                assert_eq!(libc::WEXITSTATUS(status), 0);
            }
        }
    }
}

//! Whether a process of the device's app holds the video capture node open:
//! the app streams only while a remote session is connected, so this is the
//! closest outside view of "someone is using the KVM now".
//!
//! Another process's open files (`/proc/PID/fd`) need ptrace access to it,
//! and the app runs as root: only `CAP_SYS_PTRACE` gives that, and it lets
//! its holder attach to any process, which is root itself. So the daemon,
//! when it switches user, does not keep it: before the switch it forks a
//! helper that does (with `CAP_DAC_READ_SEARCH`, to list the `0500`
//! directory), and nothing else (`privilege::drop_to`). The helper has
//! no network, closes every descriptor but its socket, dies with the daemon,
//! and reads one kind of request: up to [`MAX_PIDS`] pids. It answers for a
//! pid only if that process's `comm` is one of the app's names, and only
//! about the capture node: a compromised daemon learns nothing else.
//! Without a switch (tests, or root by choice) the daemon reads directly,
//! with whatever access it has.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::privilege::{Keep, User};

/// A helper that hangs must not hold the worker: a scrape waits this long
/// at most for its answer, then reports the collector failed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(1);

/// Pids in one request: the app's processes (`app_processes`, at most 8).
pub const MAX_PIDS: usize = 8;

/// What is known of one pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Closed = 0,
    Open = 1,
    /// Gone, or not a process of the app (any more).
    NotTheApp = 2,
    /// Its open files could not be read.
    Unreadable = 3,
}

/// The answer to one request: whether the capture node exists, and one
/// answer per pid asked about.
#[derive(Debug, PartialEq, Eq)]
pub struct Answers {
    pub node: bool,
    pub pids: Vec<Answer>,
}

/// Who is asked.
pub enum Holders {
    /// This process reads `/proc/PID/fd` itself.
    Direct { names: Vec<String>, capture: PathBuf },
    /// The helper, over a socket: one request at a time.
    Helper { socket: Mutex<Channel>, pid: libc::pid_t },
}

/// The daemon's end of the helper's socket, and the number of its last
/// request: the helper echoes it, so an answer that came too late for its
/// scrape is never taken for the next one's.
pub struct Channel {
    socket: OwnedFd,
    sequence: u8,
}

impl Holders {
    pub fn ask(&self, pids: &[u32]) -> Result<Answers, String> {
        match self {
            Holders::Direct { names, capture } => Ok(answer(pids, names, capture)),
            Holders::Helper { socket, pid } => {
                let mut channel = socket.lock().unwrap_or_else(|e| e.into_inner());
                exchange(&mut channel, pids).inspect_err(|_| {
                    // A helper that is gone is reaped, not restarted: the
                    // privilege it had is not to be had again.
                    // SAFETY: waitpid on our own child, not blocking.
                    unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) };
                })
            }
        }
    }
}

fn exchange(channel: &mut Channel, pids: &[u32]) -> Result<Answers, String> {
    let pids = &pids[..pids.len().min(MAX_PIDS)];
    if pids.is_empty() {
        // A request of nothing would read as the socket closing.
        return Ok(Answers { node: true, pids: Vec::new() });
    }
    channel.sequence = channel.sequence.wrapping_add(1);
    let mut request = vec![channel.sequence];
    request.extend(pids.iter().flat_map(|p| p.to_le_bytes()));
    let fd = channel.socket.as_raw_fd();
    let lost = |e: nix::Error| format!("the open-files helper: {e}");
    // Never wait to send: a socket full of requests means the helper
    // hangs, and the worker must not hang with it.
    socket::send(fd, &request, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT).map_err(lost)?;
    let mut buf = [0u8; 2 + MAX_PIDS];
    // Answers to earlier requests (late for their scrape) are skipped; each
    // wait is bounded by the socket's receive timeout.
    let n = loop {
        let n = socket::recv(fd, &mut buf, MsgFlags::empty()).map_err(lost)?;
        if n == 0 {
            return Err("the open-files helper is gone".into());
        }
        if buf[0] == channel.sequence {
            break n;
        }
    };
    if n != 2 + pids.len() {
        return Err("the open-files helper answered out of turn".into());
    }
    let pids = buf[2..n]
        .iter()
        .map(|b| match b {
            0 => Answer::Closed,
            1 => Answer::Open,
            2 => Answer::NotTheApp,
            _ => Answer::Unreadable,
        })
        .collect();
    Ok(Answers { node: buf[1] == 1, pids })
}

/// The answers for `pids`, read here.
pub fn answer(pids: &[u32], names: &[String], capture: &Path) -> Answers {
    let rdev = std::fs::metadata(capture).ok().filter(|m| m.file_type().is_char_device()).map(|m| m.rdev());
    // SAFETY: plain getters.
    let (me, parent) = unsafe { (libc::getpid() as u32, libc::getppid() as u32) };
    let pids = pids
        .iter()
        .take(MAX_PIDS)
        .map(|&pid| {
            // A process that ended is not the app; a name that cannot be
            // read (a descriptor limit, a refusal) is not a "no".
            let comm = match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                Ok(comm) => comm,
                Err(e) if gone(&e) => return Answer::NotTheApp,
                Err(_) => return Answer::Unreadable,
            };
            let comm = comm.trim_end_matches('\n');
            // Names are at most 15 bytes (the configuration says so): as
            // `comm` keeps them.
            let app = pid != me && pid != parent && names.iter().any(|n| n == comm);
            match (app, rdev) {
                (false, _) => Answer::NotTheApp,
                (true, None) => Answer::Closed,
                (true, Some(rdev)) => match holds(pid, rdev) {
                    Ok(true) => Answer::Open,
                    Ok(false) => Answer::Closed,
                    Err(e) if gone(&e) => Answer::NotTheApp,
                    Err(_) => Answer::Unreadable,
                },
            }
        })
        .collect();
    Answers { node: rdev.is_some(), pids }
}

/// A process that ended between the asking and the reading.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Whether `pid` holds the character device `rdev` open. Only links into
/// `/dev` are looked at (sockets, pipes and files are most of them).
pub fn holds(pid: u32, rdev: u64) -> io::Result<bool> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let path = entry?.path();
        // A descriptor closed since the listing is simply not there; any
        // other error means the links cannot be read: not a "no".
        let target = match std::fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !target.starts_with("/dev/") {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == rdev => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Forks the helper; called while the daemon is still root and has one
/// thread. The helper becomes `user` with `CAP_SYS_PTRACE` and
/// `CAP_DAC_READ_SEARCH` only, and says so before the daemon goes on: a
/// helper that could not switch stops the daemon's start.
pub fn spawn(user: User, names: Vec<String>, capture: PathBuf) -> Result<Holders, String> {
    if !crate::privilege::single_threaded() {
        return Err("the open-files helper: threads already running; nothing forked".into());
    }
    let (ours, theirs) =
        socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("the open-files helper's socket: {e}"))?;
    // SAFETY: the process has one thread (checked above), so the child may
    // run ordinary code.
    let parent = unsafe { libc::getpid() };
    match unsafe { libc::fork() } {
        -1 => Err(format!("forking the open-files helper: {}", io::Error::last_os_error())),
        0 => {
            drop(ours);
            let code = helper(theirs, parent, &user, &names, &capture);
            // SAFETY: leaves without running the daemon's exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(theirs);
            let timeout = nix::sys::time::TimeVal::from(libc::timeval {
                tv_sec: HELPER_TIMEOUT.as_secs() as libc::time_t,
                tv_usec: 0,
            });
            socket::setsockopt(&ours, socket::sockopt::ReceiveTimeout, &timeout)
                .map_err(|e| format!("the open-files helper's socket: {e}"))?;
            let mut ready = [0u8; 1];
            if socket::recv(ours.as_raw_fd(), &mut ready, MsgFlags::empty()) != Ok(1) {
                // SAFETY: waitpid on our own child, which has exited or will.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                return Err("the open-files helper did not start (see the line above)".into());
            }
            Ok(Holders::Helper { socket: Mutex::new(Channel { socket: ours, sequence: 0 }), pid })
        }
    }
}

/// The helper's life: answer requests until the daemon's end closes.
fn helper(socket: OwnedFd, parent: libc::pid_t, user: &User, names: &[String], capture: &Path) -> i32 {
    // SAFETY: prctl with a static name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"jkm-openfiles".as_ptr() as libc::c_ulong, 0, 0, 0) };
    close_all_but(socket.as_raw_fd());
    // Listing another user's `/proc/PID/fd` (a 0500 directory) takes
    // CAP_DAC_READ_SEARCH; reading its links, ptrace access.
    if let Err(e) = crate::privilege::drop_to(user, &[Keep::SysPtrace, Keep::DacReadSearch]) {
        eprintln!("jetkvm-metrics: open-files helper: {e}");
        return 1;
    }
    // Set after the switch, which clears it: die with the daemon, and
    // leave if it is already gone.
    // SAFETY: prctl and getppid with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            return 0;
        }
    }
    let fd = socket.as_raw_fd();
    if socket::send(fd, &[1], MsgFlags::MSG_NOSIGNAL).is_err() {
        return 1;
    }
    let mut buf = [0u8; 1 + 4 * MAX_PIDS + 1];
    loop {
        let n = match socket::recv(fd, &mut buf, MsgFlags::empty()) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        };
        // Anything but a number and 1 to 8 whole pids is not the daemon
        // speaking: stop.
        if n < 5 || (n - 1) % 4 != 0 || n > 1 + 4 * MAX_PIDS {
            return 1;
        }
        let pids: Vec<u32> =
            buf[1..n].chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let a = answer(&pids, names, capture);
        let reply: Vec<u8> =
            [buf[0], a.node as u8].into_iter().chain(a.pids.iter().map(|p| *p as u8)).collect();
        if socket::send(fd, &reply, MsgFlags::MSG_NOSIGNAL).is_err() {
            return 1;
        }
    }
}

/// Closes every descriptor but standard input, output, error and `keep`:
/// the listening sockets and files inherited from the daemon.
fn close_all_but(keep: i32) {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        // SAFETY: closing a descriptor this process owns and no longer uses;
        // the listing's own descriptor is already closed (EBADF, ignored).
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_holding_a_node_is_seen_and_no_other_one() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let rdev = std::fs::metadata("/dev/null").unwrap().rdev();
        let me = std::process::id();
        assert!(holds(me, rdev).unwrap());
        let zero = std::fs::metadata("/dev/zero").unwrap().rdev();
        assert!(!holds(me, zero).unwrap());
        drop(null);
        // This process is never one of the app's, whatever its name.
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let names = vec![comm.trim_end().to_owned()];
        assert_eq!(
            answer(&[me, u32::MAX], &names, Path::new("/dev/null")),
            Answers { node: true, pids: vec![Answer::NotTheApp, Answer::NotTheApp] }
        );
        assert!(!answer(&[], &names, Path::new("/nonexistent")).node);
    }

    /// A name that cannot be read is not a "no": with no descriptor left
    /// (a limit the daemon's user may lower), the answer is unreadable.
    #[test]
    fn a_name_that_cannot_be_read_is_unreadable_not_another_process() {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let names = vec![comm.trim_end().to_owned()];
        // SAFETY: the child only sets a limit, reads, and leaves with
        // `_exit`; glibc's allocator is fork-safe.
        match unsafe { libc::fork() } {
            0 => {
                let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                // SAFETY: plain system calls on this process.
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &none) };
                let a = answer(&[unsafe { libc::getppid() } as u32], &names, Path::new("/dev/null"));
                unsafe { libc::_exit(a.pids[0] as i32) }
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(libc::WIFEXITED(status));
                assert_eq!(libc::WEXITSTATUS(status), Answer::Unreadable as i32);
            }
        }
    }

    #[test]
    fn a_late_answer_is_never_taken_for_the_current_one() {
        let (ours, theirs) =
            socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .unwrap();
        let helper = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let n = socket::recv(theirs.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
            assert_eq!(n, 5, "a number and one pid");
            // The answer to an earlier request (open), then this one's (closed).
            socket::send(theirs.as_raw_fd(), &[buf[0].wrapping_sub(1), 1, 1], MsgFlags::empty()).unwrap();
            socket::send(theirs.as_raw_fd(), &[buf[0], 1, 0], MsgFlags::empty()).unwrap();
            theirs
        });
        let mut channel = Channel { socket: ours, sequence: 7 };
        assert_eq!(
            exchange(&mut channel, &[42]).unwrap(),
            Answers { node: true, pids: vec![Answer::Closed] }
        );
        drop(helper.join().unwrap());
        // The helper gone: an error, never an answer.
        assert!(exchange(&mut channel, &[42]).is_err());
    }
}

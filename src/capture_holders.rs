//! Whether a process of the device's app holds the video capture node open:
//! the app streams only while a remote session is connected, so this is the
//! closest outside view of "someone is using the KVM now".
//!
//! Another process's open files (`/proc/PID/fd`) need ptrace access to it,
//! and the app runs as root: only `CAP_SYS_PTRACE` gives that, and it lets
//! its holder attach to any process, which is root itself. So the daemon,
//! when it switches user, does not keep it: before the switch it forks a
//! helper that does (with `CAP_DAC_READ_SEARCH`, to list the `0500`
//! directory), and nothing else (`privilege::drop_to`). The helper has a
//! network namespace of its own and only the system calls of its loop
//! (`sandbox`), closes every descriptor but its socket, dies with the
//! daemon, and reads one kind of request: up to [`MAX_PIDS`] pids. It
//! answers for a pid only if that process's `comm` is one of the app's
//! names, and only about the capture node: a compromised daemon learns
//! nothing else. The daemon asks on its runtime, never blocking its one
//! worker, and waits at most [`HELPER_TIMEOUT`]; while a question stays
//! unanswered (a helper stopped), it asks no other and fails at once.
//! Without a switch (tests, or root by choice) the daemon reads directly,
//! with whatever access it has.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use tokio::io::unix::AsyncFd;

use crate::privilege::{Keep, User};

/// A scrape waits this long at most for the helper's answer, then reports
/// the collector failed (the worker serves others meanwhile).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(1);

/// A request's number, echoed by the answer: wide enough that an answer
/// late by any number of scrapes never passes for the current one's.
type Sequence = u32;
const SEQ: usize = std::mem::size_of::<Sequence>();

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
    Helper { channel: tokio::sync::Mutex<Channel>, pid: libc::pid_t },
}

/// The daemon's end of the helper's socket (registered with the runtime
/// that asks, again if another one asks), the number of its last request,
/// and whether that one is still unanswered.
pub struct Channel {
    socket: Option<OwnedFd>,
    registered: Option<(tokio::runtime::Id, std::sync::Arc<AsyncFd<OwnedFd>>)>,
    sequence: Sequence,
    pending: bool,
}

impl Channel {
    pub fn new(socket: OwnedFd, sequence: Sequence) -> Channel {
        Channel { socket: Some(socket), registered: None, sequence, pending: false }
    }

    /// The socket, registered with the current runtime.
    fn registered(&mut self) -> Result<std::sync::Arc<AsyncFd<OwnedFd>>, String> {
        let runtime = tokio::runtime::Handle::current().id();
        if self.registered.as_ref().is_some_and(|(id, _)| *id != runtime) {
            let (_, fd) = self.registered.take().expect("checked");
            // Held nowhere else: the channel is asked one request at a time.
            let fd =
                std::sync::Arc::try_unwrap(fd).map_err(|_| "the open-files helper's socket is in use")?;
            self.socket = Some(fd.into_inner());
        }
        if self.registered.is_none() {
            let socket = self.socket.take().ok_or("the open-files helper's socket is gone")?;
            // SAFETY: an OwnedFd's descriptor is open, and stays the same
            // until it is dropped with the AsyncFd that owns it.
            match unsafe { AsyncFd::register(socket) } {
                Ok(fd) => self.registered = Some((runtime, std::sync::Arc::new(fd))),
                Err(e) => {
                    let (socket, e) = e.into_parts();
                    self.socket = Some(socket);
                    return Err(lost(e));
                }
            }
        }
        Ok(self.registered.as_ref().expect("registered above").1.clone())
    }
}

impl Holders {
    pub async fn ask(&self, pids: &[u32]) -> Result<Answers, String> {
        match self {
            Holders::Direct { names, capture } => Ok(answer(pids, names, capture)),
            Holders::Helper { channel, pid } => {
                let mut channel = channel.lock().await;
                exchange(&mut channel, pids).await.inspect_err(|_| {
                    // A helper that is gone is reaped, not restarted: the
                    // privilege it had is not to be had again.
                    // SAFETY: waitpid on our own child, not blocking.
                    unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) };
                })
            }
        }
    }
}

fn lost(e: impl std::fmt::Display) -> String {
    format!("the open-files helper: {e}")
}

async fn exchange(channel: &mut Channel, pids: &[u32]) -> Result<Answers, String> {
    let pids = &pids[..pids.len().min(MAX_PIDS)];
    if pids.is_empty() {
        // A request of nothing would read as the socket closing.
        return Ok(Answers { node: true, pids: Vec::new() });
    }
    let fd = channel.registered()?;
    let mut buf = [0u8; SEQ + 1 + MAX_PIDS];
    // The last question still unanswered: no other is asked until it is.
    if channel.pending {
        while channel.pending {
            match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Err("the open-files helper is gone".into()),
                Ok(n) => channel.pending = n < SEQ || buf[..SEQ] != channel.sequence.to_le_bytes(),
                Err(nix::Error::EAGAIN) => {
                    return Err("the open-files helper has not answered its last question".into())
                }
                Err(e) => return Err(lost(e)),
            }
        }
    }
    channel.sequence = channel.sequence.wrapping_add(1);
    let mut request = channel.sequence.to_le_bytes().to_vec();
    request.extend(pids.iter().flat_map(|p| p.to_le_bytes()));
    // Never wait to send: a socket full of requests means the helper hangs.
    socket::send(fd.as_raw_fd(), &request, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT).map_err(lost)?;
    channel.pending = true;
    let n = tokio::time::timeout(HELPER_TIMEOUT, receive(&fd, channel.sequence, &mut buf))
        .await
        .map_err(|_| format!("the open-files helper did not answer within {HELPER_TIMEOUT:?}"))??;
    channel.pending = false;
    if n != SEQ + 1 + pids.len() {
        return Err("the open-files helper answered out of turn".into());
    }
    let pids = buf[SEQ + 1..n]
        .iter()
        .map(|b| match b {
            0 => Answer::Closed,
            1 => Answer::Open,
            2 => Answer::NotTheApp,
            _ => Answer::Unreadable,
        })
        .collect();
    Ok(Answers { node: buf[SEQ] == 1, pids })
}

/// The answer numbered `sequence` (earlier ones, late for their scrape,
/// are skipped), read as the runtime says the socket is readable.
async fn receive(fd: &AsyncFd<OwnedFd>, sequence: Sequence, buf: &mut [u8]) -> Result<usize, String> {
    loop {
        let mut ready = fd.readable().await.map_err(lost)?;
        match socket::recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err("the open-files helper is gone".into()),
            Ok(n) if n >= SEQ && buf[..SEQ] == sequence.to_le_bytes() => return Ok(n),
            Ok(_) => {}
            Err(nix::Error::EAGAIN) => ready.clear_ready(),
            Err(e) => return Err(lost(e)),
        }
    }
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
            Ok(Holders::Helper { channel: tokio::sync::Mutex::new(Channel::new(ours, 0)), pid })
        }
    }
}

/// The helper's life: answer requests until the daemon's end closes.
fn helper(socket: OwnedFd, parent: libc::pid_t, user: &User, names: &[String], capture: &Path) -> i32 {
    // SAFETY: prctl with a static name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"jkm-openfiles".as_ptr() as libc::c_ulong, 0, 0, 0) };
    close_all_but(socket.as_raw_fd());
    // No network, from here on: leaving the host's namespace takes root.
    match crate::sandbox::leave_network() {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "jetkvm-metrics: open-files helper: this kernel has no network namespaces; its seccomp filter alone keeps it off the network"
        ),
        Err(e) => {
            eprintln!("jetkvm-metrics: open-files helper: leaving the network namespace: {e}");
            return 1;
        }
    }
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
    // Last: only the loop's system calls from here on.
    if let Err(e) = crate::sandbox::allow_only_the_helpers_calls() {
        eprintln!("jetkvm-metrics: open-files helper: seccomp: {e}");
        return 1;
    }
    let fd = socket.as_raw_fd();
    if socket::send(fd, &[1], MsgFlags::MSG_NOSIGNAL).is_err() {
        return 1;
    }
    serve(fd, names, capture)
}

/// Answers requests until the daemon's end closes.
fn serve(fd: i32, names: &[String], capture: &Path) -> i32 {
    let mut buf = [0u8; SEQ + 4 * MAX_PIDS + 1];
    loop {
        let n = match socket::recv(fd, &mut buf, MsgFlags::empty()) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        };
        // Anything but a number and 1 to 8 whole pids is not the daemon
        // speaking: stop.
        if n < SEQ + 4 || !(n - SEQ).is_multiple_of(4) || n > SEQ + 4 * MAX_PIDS {
            return 1;
        }
        let pids: Vec<u32> =
            buf[SEQ..n].chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let a = answer(&pids, names, capture);
        let reply: Vec<u8> =
            buf[..SEQ].iter().copied().chain([a.node as u8]).chain(a.pids.iter().map(|p| *p as u8)).collect();
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

    /// Answers a request with `answers` (each the request's number plus an
    /// offset, and a body), and hands its end back.
    fn fake_helper(theirs: OwnedFd, answers: Vec<(i64, Vec<u8>)>) -> std::thread::JoinHandle<OwnedFd> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let n = socket::recv(theirs.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
            assert_eq!(n, SEQ + 4, "a number and one pid");
            let asked = Sequence::from_le_bytes(buf[..SEQ].try_into().unwrap());
            for (offset, body) in answers {
                let mut reply = (asked as i64 + offset).to_le_bytes()[..SEQ].to_vec();
                reply.extend(body);
                socket::send(theirs.as_raw_fd(), &reply, MsgFlags::empty()).unwrap();
            }
            theirs
        })
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// An answer late by one request, or by 256 (which a one-byte number
    /// took for the current one), is never taken for the current one's.
    #[test]
    fn a_late_answer_is_never_taken_for_the_current_one() {
        let (ours, theirs) = pair();
        let helper = fake_helper(theirs, vec![(-1, vec![1, 1]), (-256, vec![1, 1]), (0, vec![1, 0])]);
        let mut channel = Channel::new(ours, 7 + 256 * 3);
        let got = runtime().block_on(exchange(&mut channel, &[42]));
        assert_eq!(got.unwrap(), Answers { node: true, pids: vec![Answer::Closed] });
        drop(helper.join().unwrap());
        // The helper gone: an error, never an answer.
        assert!(runtime().block_on(exchange(&mut channel, &[42])).is_err());
    }

    /// A helper that does not answer (stopped) costs one wait: until it
    /// answers, the next question fails at once, and none is sent.
    #[test]
    fn a_silent_helper_costs_one_wait_then_fails_at_once() {
        let (ours, theirs) = pair();
        let mut channel = Channel::new(ours, 0);
        let rt = runtime();
        let start = std::time::Instant::now();
        let first = rt.block_on(exchange(&mut channel, &[42]));
        assert!(first.unwrap_err().contains("did not answer within"));
        assert!(start.elapsed() >= HELPER_TIMEOUT);
        let start = std::time::Instant::now();
        let second = rt.block_on(exchange(&mut channel, &[42]));
        assert_eq!(second.unwrap_err(), "the open-files helper has not answered its last question");
        assert!(start.elapsed() < Duration::from_millis(100));
        // It answers the first question at last: the next is asked again.
        let mut buf = [0u8; 64];
        assert_eq!(socket::recv(theirs.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap(), SEQ + 4);
        assert!(
            socket::recv(theirs.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_err(),
            "one question sent"
        );
        let mut late = buf[..SEQ].to_vec();
        late.extend([1, 1]);
        socket::send(theirs.as_raw_fd(), &late, MsgFlags::empty()).unwrap();
        let helper = fake_helper(theirs, vec![(0, vec![1, 1])]);
        let third = rt.block_on(exchange(&mut channel, &[42]));
        assert_eq!(third.unwrap(), Answers { node: true, pids: vec![Answer::Open] });
        drop(helper.join().unwrap());
    }
}

//! Least privilege. The daemon parses hostile TLS and HTTP on a device that
//! types on a host's keyboard: once its sockets are bound it becomes its
//! own user, keeps one capability, and can never gain another.
//!
//! Kept: `CAP_DAC_READ_SEARCH`, to read what the device's app writes as
//! root-only files: `kvm_config.json`, the device's TLS keys, a token file
//! that `token new` made as root, and the daemon's own `/proc/self/fd` and
//! `io` (a process that changed user is not dumpable: its `/proc` entries
//! become root's), and the HDMI bridge's subdevice (root's), which the
//! `hdmi` collector opens read-only. Everything else it reads
//! (`/proc`, `/sys`, configfs, sock_diag) any user may.
//!
//! Not kept: `CAP_SYS_PTRACE`, although another process's open files
//! (`/proc/PID/fd`, "is someone watching the capture node") need it: it
//! lets its holder attach to any process, root's included, which is root
//! itself. The one question that needs it is asked of a helper forked
//! before the switch (`capture_holders`): the same user, `CAP_SYS_PTRACE` and
//! `CAP_DAC_READ_SEARCH` (another user's `/proc/PID/fd` is a `0500`
//! directory: listing it takes both), no network, and a request of a few
//! pids as all it reads.
//! No `CAP_NET_BIND_SERVICE`: sockets are bound before the switch, and
//! never again.

/// A capability kept (linux/capability.h).
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    DacReadSearch = 2,
    SysPtrace = 19,
}

impl Keep {
    fn name(self) -> &'static str {
        match self {
            Keep::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Keep::SysPtrace => "CAP_SYS_PTRACE",
        }
    }
}
/// The capability set format of 64-bit sets (`_LINUX_CAPABILITY_VERSION_3`).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The user the daemon switches to, by its ids. The init script resolves
/// the name (`id -u`, `id -g`): looking a name up here would link the C
/// library's user database code, 53 KB of the static armv7 binary, for one
/// lookup at start.
#[derive(Clone, Copy, Debug)]
pub struct User {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Parses `UID:GID`; root's ids are refused (nothing would be dropped).
pub fn user(ids: &str) -> Result<User, String> {
    let bad = || format!("--user {ids:?}: expected UID:GID, numbers as `id -u` and `id -g` print them");
    let (uid, gid) = ids.split_once(':').ok_or_else(bad)?;
    let digits = |v: &str| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit());
    if !digits(uid) || !digits(gid) {
        return Err(bad());
    }
    let (uid, gid): (libc::uid_t, libc::gid_t) =
        (uid.parse().map_err(|_| bad())?, gid.parse().map_err(|_| bad())?);
    if uid == 0 || gid == 0 {
        return Err(format!("--user {ids}: root's ids; the point is to leave them"));
    }
    Ok(User { uid, gid })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn prctl(what: &str, option: libc::c_int, arg: libc::c_ulong) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) } == 0 {
        Ok(())
    } else {
        Err(os_err(what))
    }
}

/// Whether this process runs as root (only root can switch user).
pub fn is_root() -> bool {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process has one thread: what forking and switching need.
pub fn single_threaded() -> bool {
    threads() == 1
}

/// Threads of this process: capability sets are per thread, so the switch
/// must happen while there is one.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Becomes the user with only `keep` (the daemon: `CAP_DAC_READ_SEARCH`),
/// in the effective and permitted sets and the bounding set, none
/// inheritable or ambient, and `no_new_privs`: no exec can give any back.
/// Already that user (started unprivileged as it): nothing to do. Fails,
/// and the daemon with it, rather than run on with more than that.
pub fn drop_to(user: &User, keep: &[Keep]) -> Result<(), String> {
    // SAFETY: plain getters.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    if euid != 0 {
        return if euid == user.uid && uid == user.uid {
            Ok(())
        } else {
            Err(format!("--user {}:{}: only root can switch to it", user.uid, user.gid))
        };
    }
    if threads() != 1 {
        return Err(format!("--user {}:{}: threads already running; nothing switched", user.uid, user.gid));
    }
    for cap in (0..=last_cap()).filter(|c| !keep.iter().any(|k| *k as u32 == *c)) {
        // EINVAL: a capability this kernel does not have.
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(os_err("dropping the bounding set"));
        }
    }
    prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, 1)?;
    // SAFETY: ids only; no supplementary groups (a null list of none).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(os_err("setgroups"));
        }
        if libc::setresgid(user.gid, user.gid, user.gid) != 0 {
            return Err(os_err("setresgid"));
        }
        if libc::setresuid(user.uid, user.uid, user.uid) != 0 {
            return Err(os_err("setresuid"));
        }
    }
    let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let set = keep.iter().fold(0u32, |set, k| set | 1 << *k as u32);
    let data = [CapData { effective: set, permitted: set, inheritable: 0 }, CapData::default()];
    // SAFETY: the header and two data words of version 3, as capset reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(os_err("capset"));
    }
    prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, 0)?;
    prctl("PR_CAP_AMBIENT", libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)?;
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    // Proof, not trust: root cannot be had back.
    // SAFETY: plain calls; success would be the failure reported.
    if unsafe { libc::setuid(0) } == 0 || unsafe { libc::geteuid() } != user.uid {
        return Err(format!("--user {}:{}: root could be regained", user.uid, user.gid));
    }
    let names: Vec<&str> = keep.iter().map(|k| k.name()).collect();
    log::info!("running as uid {} gid {}, keeping {} only", user.uid, user.gid, names.join(" and "));
    Ok(())
}

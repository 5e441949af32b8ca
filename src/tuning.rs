//! Process tuning at start, before any thread, and once start-up is over:
//! how the C allocator and the kernel's paging treat a small daemon on a
//! 256 MB device.

use std::path::Path;

/// Both tunings, before the daemon starts its threads.
pub fn at_start() {
    one_malloc_arena();
    code_pages_on_demand();
}

/// glibc gives each thread that allocates an arena of its own, whose pages
/// stay resident; this daemon's threads (accept, worker, bcrypt, gzip) do
/// little at once, and one arena keeps its memory small.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc tuning call before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Once start-up is over: the program's pages that only start-up ran
/// (configuration, TLS contexts, the command line) are let go. Its code is
/// unmapped (`MADV_DONTNEED`: code is never written, so it reads back
/// unchanged); the other read-only mappings may hold pages the process
/// wrote (relocated data), so they are only paged out, which keeps such
/// pages. Then the file's cached pages nothing maps are dropped: the kernel
/// maps the cached pages around each page fault, so a cache holding the
/// whole program made it resident again. From then on, what is resident is
/// what runs (board: docs/BENCHMARKS.md, "Resident memory"). Advice only:
/// where the kernel declines it, nothing changes.
pub fn after_start() {
    // Start-up's freed heap (parsed configuration, certificate files) is
    // given back too.
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc call with no pointers; glibc locks its arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    for (start, len, code) in program_mappings() {
        let advice = if code { libc::MADV_DONTNEED } else { libc::MADV_PAGEOUT };
        // SAFETY: advice on a read-only mapping of the program, of its
        // length; only never-written code is discarded (see above).
        if unsafe { libc::madvise(start.as_ptr(), len, advice) } != 0 {
            log::debug!("madvise({advice}): {}", std::io::Error::last_os_error());
        }
    }
    if let Ok(exe) = std::fs::File::open("/proc/self/exe") {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let fd = std::os::fd::AsRawFd::as_raw_fd(&exe);
        if let Err(e) = posix_fadvise(fd, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
            log::debug!("posix_fadvise(DONTNEED): {e}");
        }
    }
}

/// The program's own read-only mappings: (start, length, executable).
fn program_mappings() -> Vec<(std::ptr::NonNull<std::ffi::c_void>, usize, bool)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return Vec::new() };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with("r-") || f.nth(3).map(Path::new) != Some(exe.as_path()) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        if let Some(start) = std::ptr::NonNull::new(a as *mut std::ffi::c_void) {
            out.push((start, b - a, perms.as_bytes().get(2) == Some(&b'x')));
        }
    }
    out
}

/// The kernel reads a mapped program ahead of where it faults, and maps
/// what it read: nearly the whole binary ends up resident though a scrape
/// runs a fraction of it. Random-access advice on the program's own
/// read-only mappings keeps resident only the pages that run (on the board,
/// with the mTLS service up and 20 scrapes: 4,540 KiB resident, 4,740
/// without it).
fn code_pages_on_demand() {
    use nix::sys::mman::{madvise, MmapAdvise};
    for (start, len, _) in program_mappings() {
        // SAFETY: advice on a mapping this process has, of its length;
        // it changes paging, never the contents.
        if let Err(e) = unsafe { madvise(start, len, MmapAdvise::MADV_RANDOM) } {
            log::debug!("madvise(MADV_RANDOM): {e}");
        }
    }
}

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
/// stay resident; this daemon's threads (accept, worker, bcrypt, blocking) do
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
/// unmapped (`MADV_DONTNEED`: code nothing wrote reads back unchanged); a
/// mapping holding pages the process wrote (relocated data, or code a
/// debugger or probe patched) is only paged out, which keeps such pages.
/// Then the file's cached pages nothing maps are dropped: the kernel maps
/// the cached pages around each page fault, so a cache holding the whole
/// program made it resident again. From then on, what is resident is what
/// runs (board: docs/BENCHMARKS.md, "Resident memory now"). Advice only:
/// where the kernel declines it, nothing changes.
pub fn after_start() {
    // Start-up's freed heap (parsed configuration, certificate files) is
    // given back too.
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc call with no pointers; glibc locks its arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    for m in program_mappings("/proc/self/smaps") {
        let advice = if m.code && !m.written { libc::MADV_DONTNEED } else { libc::MADV_PAGEOUT };
        // SAFETY: advice on a read-only mapping of the program, of its
        // length; only code with no written page is discarded (see above).
        if unsafe { libc::madvise(m.start.as_ptr(), m.len, advice) } != 0 {
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

/// One read-only mapping of the program.
struct Mapping {
    start: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
    code: bool,
    /// Whether it holds pages the process wrote (`Anonymous:` in `smaps`;
    /// `maps` does not say, and reads as none).
    written: bool,
}

/// The program's own read-only mappings, from `maps` or `smaps`.
fn program_mappings(file: &str) -> Vec<Mapping> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return Vec::new() };
    let Ok(text) = std::fs::read_to_string(file) else { return Vec::new() };
    mappings_of(&text, &exe)
}

fn mappings_of(text: &str, exe: &Path) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    // Whether the last mapping line was one of ours: its fields follow.
    let mut ours = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if first.ends_with(':') {
            if ours && first == "Anonymous:" {
                if let (Some(m), Some(kb)) = (out.last_mut(), f.next()) {
                    m.written = kb != "0";
                }
            }
            continue;
        }
        ours = false;
        let Some(perms) = f.next() else { continue };
        if !perms.starts_with("r-") || f.nth(3).map(Path::new) != Some(exe) {
            continue;
        }
        let Some((a, b)) = first.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        if let Some(start) = std::ptr::NonNull::new(a as *mut std::ffi::c_void) {
            let code = perms.as_bytes().get(2) == Some(&b'x');
            out.push(Mapping { start, len: b.saturating_sub(a), code, written: false });
            ours = true;
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
    for m in program_mappings("/proc/self/maps") {
        // SAFETY: advice on a mapping this process has, of its length;
        // it changes paging, never the contents.
        if let Err(e) = unsafe { madvise(m.start, m.len, MmapAdvise::MADV_RANDOM) } {
            log::debug!("madvise(MADV_RANDOM): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_tells_written_code_from_clean_code() {
        let smaps = "\
00010000-003a0000 r-xp 00000000 fe:00 12 /usr/bin/jetkvm-metrics
Rss:                2604 kB
Anonymous:             0 kB
003a0000-003b0000 r-xp 00390000 fe:00 12 /usr/bin/jetkvm-metrics
Anonymous:             4 kB
003b0000-003f8000 r--p 003a0000 fe:00 12 /usr/bin/jetkvm-metrics
Anonymous:           120 kB
003f8000-003fe000 rw-p 003e8000 fe:00 12 /usr/bin/jetkvm-metrics
Anonymous:            24 kB
b6f00000-b6f01000 r-xp 00000000 fe:00 40 /usr/lib/other
Anonymous:             0 kB
bef00000-bef21000 rw-p 00000000 00:00 0 [stack]
Anonymous:            16 kB
";
        let m = mappings_of(smaps, Path::new("/usr/bin/jetkvm-metrics"));
        let got: Vec<_> = m.iter().map(|m| (m.start.as_ptr() as usize, m.len, m.code, m.written)).collect();
        assert_eq!(
            got,
            [
                (0x10000, 0x390000, true, false),
                (0x3a0000, 0x10000, true, true),
                (0x3b0000, 0x48000, false, true)
            ]
        );
        // `maps` has no fields: nothing reads as written.
        let maps: String = smaps
            .lines()
            .filter(|l| !l.contains(':') || l.contains(" fe:") || l.contains(" 00:"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(mappings_of(&maps, Path::new("/usr/bin/jetkvm-metrics")).iter().all(|m| !m.written));
    }
}

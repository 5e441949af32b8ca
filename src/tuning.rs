//! Process tuning at start, before any thread: how the C allocator and the
//! kernel's paging treat a small daemon on a 256 MB device.

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

/// The kernel reads a mapped program ahead of where it faults, and maps
/// what it read: nearly the whole binary ends up resident though a scrape
/// runs a fraction of it. Random-access advice on the program's own
/// read-only mappings keeps resident only the pages that run (on the board,
/// with the mTLS service up and 20 scrapes: 4,540 KiB resident, 4,740
/// without it).
fn code_pages_on_demand() {
    use nix::sys::mman::{madvise, MmapAdvise};
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if perms.starts_with("rw") || f.nth(3).map(Path::new) != Some(exe.as_path()) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        if let Some(start) = std::ptr::NonNull::new(a as *mut std::ffi::c_void) {
            // SAFETY: advice on a mapping this process has, of its length;
            // it changes paging, never the contents.
            if let Err(e) = unsafe { madvise(start, b - a, MmapAdvise::MADV_RANDOM) } {
                log::debug!("madvise {range}: {e}");
            }
        }
    }
}

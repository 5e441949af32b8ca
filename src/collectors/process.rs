//! The standard `process_*` metrics for the daemon itself, read from its own
//! `/proc/self`. Resident memory comes from `smaps_rollup` where the kernel
//! has it: on some kernels the `rss` of `stat` undercounts threaded
//! processes (split per-thread RSS counters).

use std::path::Path;

use super::{io_error, parse_error, read, user_hz, Result};
use crate::collectors::{meminfo::field_bytes, time::parse_btime};
use crate::exposition::{Exposition, Kind};

/// Fields of `/proc/self/stat` we use, counted after the `(comm)` field.
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        utime: n(11)?,
        stime: n(12)?,
        threads: n(17)?,
        starttime: n(19)?,
        vsize: n(20)?,
        rss_pages: n(21)?,
    })
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

pub fn update(self_dir: &Path, out: &mut Exposition) -> Result<()> {
    let stat_path = self_dir.join("stat");
    let stat = parse_stat(&read(&stat_path)?).ok_or_else(|| parse_error(&stat_path, "malformed"))?;
    let hz = user_hz();
    let rss = match read(&self_dir.join("smaps_rollup")) {
        Ok(t) => field_bytes(&t, "Rss"),
        Err(_) => None,
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    .unwrap_or_else(|| stat.rss_pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64);
    let fd_dir = self_dir.join("fd");
    let open_fds = std::fs::read_dir(&fd_dir).map_err(|e| io_error(&fd_dir, e))?.count();

    out.single(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        Kind::Counter,
        (stat.utime + stat.stime) as f64 / hz,
    );
    out.single("process_resident_memory_bytes", "Resident memory size in bytes.", Kind::Gauge, rss as f64);
    out.single(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        Kind::Gauge,
        stat.vsize as f64,
    );
    out.single("process_open_fds", "Number of open file descriptors.", Kind::Gauge, open_fds as f64);
    if let Some(max) = read(&self_dir.join("limits")).ok().as_deref().and_then(max_open_files) {
        out.single("process_max_fds", "Maximum number of open file descriptors.", Kind::Gauge, max as f64);
    }
    out.single("process_threads", "Number of OS threads in the process.", Kind::Gauge, stat.threads as f64);
    if let Some(btime) = read(Path::new("/proc/stat")).ok().as_deref().and_then(parse_btime) {
        out.single(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Kind::Gauge,
            btime + stat.starttime as f64 / hz,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stat_with_odd_comm() {
        let t = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 500 1000000 250 18446744073709551615";
        let s = super::parse_stat(t).unwrap();
        assert_eq!(
            (s.utime, s.stime, s.threads, s.starttime, s.vsize, s.rss_pages),
            (7, 3, 2, 500, 1000000, 250)
        );
        assert!(super::parse_stat("42 (a) S 1").is_none());
        assert!(super::parse_stat("no paren").is_none());
    }

    #[test]
    fn limits() {
        let t = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(super::max_open_files(t), Some(1024));
    }
}

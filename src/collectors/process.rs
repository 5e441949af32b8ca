//! The daemon's own `process_*` metrics, as client libraries name them:
//! virtual memory, file descriptors and start time through sysinfo; CPU
//! time and the descriptor limit through nix. Resident memory comes from
//! `/proc/self/smaps_rollup` on kernels before 6.2: their split RSS
//! counters, which sysinfo reads (`statm`), undercount a multi-threaded
//! process by megabytes (each thread holds back up to 64 faults, and a
//! fault maps up to 16 pages). From 6.2 the counters are per-CPU, off by
//! at most a batch per CPU (32 pages up to 16 CPUs, twice the CPU count
//! beyond), and `status` gives them: the walk of every page table that
//! `smaps_rollup` costs was a fifth of a scrape's CPU on a large host
//! (docs/BENCHMARKS.md). The thread count is the `Threads:` line of
//! `status`.

use std::path::Path;
use std::sync::Mutex;

use nix::sys::resource::{getrlimit, getrusage, Resource, UsageWho, RLIM_INFINITY};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::collector::{read_optional, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Process {
    system: Mutex<System>,
    pid: Pid,
    /// Whether `status`'s `VmRSS` is the resident size (kernel 6.2 on).
    counters_hold: bool,
}

impl Process {
    pub fn new() -> std::result::Result<Self, String> {
        let pid = sysinfo::get_current_pid().map_err(|e| format!("process: {e}"))?;
        let system = System::new().map_err(|e| format!("process: {e}"))?;
        let counters_hold = System::kernel_version().is_ok_and(|v| percpu_rss_counters(&v));
        Ok(Process { system: Mutex::new(system), pid, counters_hold })
    }
}

/// Whether a kernel release (`6.1.0-57-armmp`) keeps RSS in per-CPU
/// counters: 6.2 and later.
fn percpu_rss_counters(release: &str) -> bool {
    let mut n = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    matches!((n.next().flatten(), n.next().flatten()), (Some(major), Some(minor)) if (major, minor) >= (6, 2))
}

/// A number of `status` (`Threads:`, `VmRSS:`), without its unit.
/// sysinfo counts threads only by refreshing each as a process of its own
/// (a file read or more apiece).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
}

/// User and system CPU time of every thread of this process, in seconds.
fn cpu_seconds() -> Result<f64> {
    let u = getrusage(UsageWho::RUSAGE_SELF).map_err(|e| Error::Failed(format!("getrusage: {e}")))?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// `Rss:` of `smaps_rollup`, in kB.
fn smaps_rss(self_dir: &Path) -> Option<u64> {
    let text = read_optional(&self_dir.join("smaps_rollup"))?;
    text.lines().find_map(|l| l.strip_prefix("Rss:"))?.split_whitespace().next()?.parse().ok()
}

impl Collector for Process {
    fn name(&self) -> &'static str {
        "process"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let mut s = self.system.lock().unwrap_or_else(|p| p.into_inner());
        // Not its threads: their count is one line of `status`, where
        // sysinfo would list `task/`. Not its CPU either: sysinfo reads all
        // of `/proc/stat` with it, where this process's own times are one
        // system call (`getrusage`, the same figures, in microseconds).
        let kind = ProcessRefreshKind::nothing().with_memory().without_tasks();
        s.refresh_processes_specifics(ProcessesToUpdate::Some(&[self.pid]), true, kind);
        let Some(p) = s.process(self.pid) else {
            return Err(Error::NoData("/proc/self is not readable".into()));
        };
        out.single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            cpu_seconds()?,
        );
        let status = read_optional(Path::new("/proc/self/status")).unwrap_or_default();
        let kb = if self.counters_hold {
            status_field(&status, "VmRSS:")
        } else {
            smaps_rss(Path::new("/proc/self"))
        };
        let resident = kb.and_then(|kb| kb.checked_mul(1024)).unwrap_or(p.memory());
        out.single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
            resident as f64,
        );
        out.single(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
            p.virtual_memory() as f64,
        );
        if let Some(n) = p.open_files() {
            out.single("process_open_fds", "Number of open file descriptors.", Kind::Gauge, n as f64);
        }
        // This process's own limit is one system call away; sysinfo would
        // read and search `limits`. No limit is no sample, as before.
        let limit = getrlimit(Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft);
        if let Some(soft) = limit.filter(|soft| *soft != RLIM_INFINITY) {
            out.single(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
                soft as f64,
            );
        }
        if let Some(threads) = status_field(&status, "Threads:") {
            out.single(
                "process_threads",
                "Number of OS threads in the process.",
                Kind::Gauge,
                threads as f64,
            );
        }
        out.single(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Kind::Gauge,
            p.start_time() as f64,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_counters_from_6_2() {
        for (release, held) in [
            ("6.1.0-57-armmp", false),
            ("5.10.160", false),
            ("6.2", true),
            ("6.18.44-fc", true),
            ("7.0.1", true),
        ] {
            assert_eq!(percpu_rss_counters(release), held, "{release}");
        }
        assert!(!percpu_rss_counters("unknown"));
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tx\nVmRSS:\t   7876 kB\nThreads:\t4\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(7876));
        assert_eq!(status_field(status, "Threads:"), Some(4));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }
}

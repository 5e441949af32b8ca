//! The daemon's own `process_*` metrics, as client libraries name them:
//! virtual memory, file descriptors and start time through sysinfo; CPU
//! time and the descriptor limit through nix. Resident memory comes from
//! `/proc/self/smaps_rollup`: the kernel's split RSS counters, which
//! sysinfo reads (`statm`), undercount a multi-threaded process by
//! megabytes on the device's kernel. The thread count is the `Threads:`
//! line of `status`.

use std::path::Path;
use std::sync::Mutex;

use nix::sys::resource::{getrlimit, getrusage, Resource, UsageWho, RLIM_INFINITY};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::collector::{read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Process {
    system: Mutex<System>,
    pid: Pid,
}

impl Process {
    pub fn new() -> std::result::Result<Self, String> {
        let pid = sysinfo::get_current_pid().map_err(|e| format!("process: {e}"))?;
        let system = System::new().map_err(|e| format!("process: {e}"))?;
        Ok(Process { system: Mutex::new(system), pid })
    }
}

/// `Threads:` of `status`. sysinfo counts threads only by refreshing each
/// as a process of its own (a file read or more apiece).
fn threads(self_dir: &Path) -> Option<u64> {
    read(&self_dir.join("status")).ok()?.lines().find_map(|l| l.strip_prefix("Threads:"))?.trim().parse().ok()
}

/// User and system CPU time of every thread of this process, in seconds.
fn cpu_seconds() -> Result<f64> {
    let u = getrusage(UsageWho::RUSAGE_SELF).map_err(|e| Error::Failed(format!("getrusage: {e}")))?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// `Rss:` of `smaps_rollup`, in bytes.
fn rss(self_dir: &Path) -> Option<u64> {
    let text = read(&self_dir.join("smaps_rollup")).ok()?;
    let kb: u64 =
        text.lines().find_map(|l| l.strip_prefix("Rss:"))?.split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
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
        let resident = rss(Path::new("/proc/self")).unwrap_or(p.memory());
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
        if let Some(threads) = threads(Path::new("/proc/self")) {
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

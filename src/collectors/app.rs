//! The device's app, seen from outside: for each configured process name
//! (the app and its native helper by default) whether it runs, when it
//! started (a restart shows as a change), its CPU seconds and resident
//! memory, through sysinfo. Only what every user may read (`stat`, `statm`):
//! no privilege. The pids found are kept, and `/proc` is walked again only
//! when one of them ends, or while a name has none: then at most once per
//! [`WALK_INTERVAL`], and only if a process was created since the last walk
//! (the last pid in `/proc/loadavg` moved). A scrape costs a few reads
//! while the app runs, and about as few while it is down.
//! Resident memory is the kernel's split RSS counters (`statm`): a threaded
//! process's can lag by a few pages per thread, and the exact figure
//! (`smaps_rollup`) needs ptrace access to the app.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System};

use super::collector::{read_optional, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct App(Found);

/// The app's processes as found, shared with the `video_streaming`
/// collector: whichever of the two runs first in a scrape brings them up to
/// date, the other reads them.
#[derive(Clone)]
pub struct Found {
    names: Arc<[String]>,
    state: Arc<Mutex<State>>,
    /// 0 for the `app` collector, 1 for `video_streaming`.
    reader: usize,
}

struct State {
    /// The processes of the pids found, refreshed each scrape.
    system: System,
    /// The pid found for each name, by index.
    pids: Vec<Option<Pid>>,
    /// The last pid created as of the last walk of `/proc`, and when.
    walked: Option<(u64, Instant)>,
    /// Scrapes each reader has been through: a reader not ahead of the
    /// other is the first of its scrape.
    rounds: [u64; 2],
    /// Why this scrape's update failed, for the second reader: never its
    /// half-updated pids.
    failed: Option<String>,
}

/// While a name has no process, `/proc` is walked at most this often.
pub const WALK_INTERVAL: Duration = Duration::from_secs(5);

/// The last pid the kernel handed out: the fifth field of `/proc/loadavg`.
pub fn last_pid(loadavg: &str) -> Option<u64> {
    loadavg.split_whitespace().nth(4)?.parse().ok()
}

/// A process's name as the kernel keeps it (`comm`: 15 bytes).
fn comm(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn named(p: &Process, name: &str) -> bool {
    let n = p.name().to_string_lossy();
    n == name || n == comm(name)
}

impl App {
    pub fn new(names: Vec<String>) -> std::result::Result<Self, String> {
        let system = System::new().map_err(|e| format!("app: {e}"))?;
        let pids = vec![None; names.len()];
        let state = State { system, pids, walked: None, rounds: [0; 2], failed: None };
        Ok(App(Found { names: names.into(), state: Arc::new(Mutex::new(state)), reader: 0 }))
    }

    /// The processes found, for the `video_streaming` collector.
    pub fn found(&self) -> Found {
        Found { reader: 1, ..self.0.clone() }
    }
}

impl Found {
    /// The state, its pids up to date: brought up to date by the first
    /// reader of a scrape (every collector runs once a scrape).
    fn current(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let first = s.rounds[self.reader] >= s.rounds[1 - self.reader];
        s.rounds[self.reader] += 1;
        if !first {
            return match &s.failed {
                Some(why) => Err(Error::Failed(why.clone())),
                None => Ok(s),
            };
        }
        s.failed = None;
        let lost = s.refresh(&self.names);
        if s.pids.iter().any(Option::is_none) {
            // No process created since the last walk: none can have the
            // missing names now.
            let newest = read_optional(Path::new("/proc/loadavg")).as_deref().and_then(last_pid);
            if s.walk_due(lost, newest) {
                if let Err(e) = s.find(&self.names) {
                    s.failed = Some(e.to_string());
                    return Err(e);
                }
                s.walked = newest.map(|n| (n, Instant::now()));
                s.refresh(&self.names);
            }
        }
        Ok(s)
    }

    /// The pids of the app's running processes.
    pub fn pids(&self) -> Result<Vec<u32>> {
        Ok(self.current()?.pids.iter().flatten().map(|p| p.as_u32()).collect())
    }
}

impl State {
    /// Walks `/proc` for the names without a pid: the oldest process of
    /// each name (a helper it forked is younger). Each process's `comm`
    /// alone is read (sysinfo's own walk reads every thread's `stat`: 7.5 ms
    /// a scrape under qemu-arm against 1.5 ms), then sysinfo reads the
    /// candidates.
    fn find(&mut self, names: &[String]) -> Result<()> {
        let proc = std::fs::read_dir("/proc").map_err(|e| Error::Failed(format!("/proc: {e}")))?;
        let mut candidates: Vec<Pid> = Vec::new();
        for entry in proc.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let Some(got) = read_optional(&entry.path().join("comm")) else { continue };
            let got = got.trim_end_matches('\n');
            if names.iter().zip(&self.pids).any(|(n, found)| found.is_none() && got == comm(n)) {
                candidates.push(Pid::from(pid));
            }
        }
        // The candidates in a System of their own, dropped after: only the
        // pids chosen are kept between scrapes.
        let mut probe = System::new().map_err(|e| Error::Failed(format!("processes: {e}")))?;
        probe.refresh_processes_specifics(
            ProcessesToUpdate::Some(&candidates),
            false,
            ProcessRefreshKind::nothing(),
        );
        for (name, pid) in names.iter().zip(self.pids.iter_mut()).filter(|(_, p)| p.is_none()) {
            *pid = candidates
                .iter()
                .filter_map(|p| probe.process(*p))
                .filter(|p| named(p, name))
                .min_by_key(|p| (p.start_time(), p.pid()))
                .map(Process::pid);
        }
        Ok(())
    }

    /// Refreshes the pids found; one that ended, or was reused by another
    /// program, is forgotten. Returns whether one was.
    fn refresh(&mut self, names: &[String]) -> bool {
        let pids: Vec<Pid> = self.pids.iter().flatten().copied().collect();
        // Not their threads (sysinfo would list each one's `task/`).
        let kind = ProcessRefreshKind::nothing().with_cpu().with_memory().without_tasks();
        self.system.refresh_processes_specifics(ProcessesToUpdate::Some(&pids), true, kind);
        let mut lost = false;
        for (name, pid) in names.iter().zip(self.pids.iter_mut()) {
            if pid.is_some_and(|p| !self.system.process(p).is_some_and(|p| named(p, name))) {
                *pid = None;
                lost = true;
            }
        }
        lost
    }

    /// Whether to walk `/proc` for the names without a pid.
    fn walk_due(&self, lost: bool, newest: Option<u64>) -> bool {
        match (lost, newest, self.walked) {
            (true, _, _) | (_, None, _) | (_, _, None) => true,
            (false, Some(n), Some((at_pid, at))) => n != at_pid && at.elapsed() >= WALK_INTERVAL,
        }
    }
}

impl Collector for App {
    fn name(&self) -> &'static str {
        "app"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let s = self.0.current()?;
        let procs: Vec<(&str, Option<&Process>)> = self
            .0
            .names
            .iter()
            .zip(&s.pids)
            .map(|(name, pid)| (name.as_str(), pid.and_then(|p| s.system.process(p))))
            .collect();
        let mut f = out.family("jetkvm_app_up", "Whether a process of the device's app runs.", Kind::Gauge);
        for (name, p) in &procs {
            f.sample(&[("process", name)], if p.is_some() { 1.0 } else { 0.0 });
        }
        let running: Vec<(&str, &Process)> = procs.iter().filter_map(|(n, p)| Some((*n, (*p)?))).collect();
        let mut f = out.family(
            "jetkvm_app_start_time_seconds",
            "Start time of a process of the device's app, in seconds since the Unix epoch.",
            Kind::Gauge,
        );
        for (name, p) in &running {
            f.sample(&[("process", name)], p.start_time() as f64);
        }
        let mut f = out.family(
            "jetkvm_app_cpu_seconds_total",
            "User and system CPU time of a process of the device's app.",
            Kind::Counter,
        );
        for (name, p) in &running {
            f.sample(&[("process", name)], p.accumulated_cpu_time() as f64 / 1000.0);
        }
        let mut f = out.family(
            "jetkvm_app_resident_memory_bytes",
            "Resident memory of a process of the device's app (the kernel's statm).",
            Kind::Gauge,
        );
        for (name, p) in &running {
            f.sample(&[("process", name)], p.memory() as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_last_pid_created() {
        assert_eq!(super::last_pid("0.00 0.01 0.05 1/123 4567\n"), Some(4567));
        assert_eq!(super::last_pid("0.00 0.01 0.05 1/123\n"), None);
    }

    #[test]
    fn names_as_the_kernel_keeps_them() {
        assert_eq!(super::comm("jetkvm_app"), "jetkvm_app");
        assert_eq!(super::comm("jetkvm_native_helper"), "jetkvm_native_h");
        assert_eq!(super::comm("ééééééééé"), "ééééééé");
    }
}

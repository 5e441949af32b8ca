//! The device's app, seen from outside: each of its processes by role
//! (supervisor, app, native; `roles` tells them apart), whether it runs,
//! when it started (a restart shows as a new start time), its CPU seconds
//! and resident memory, through sysinfo. A role the app's generation does
//! not have is not exported, so it is never "down". Only what every user
//! may read (`comm`, `stat`, `statm`, `cmdline`): no privilege.
//!
//! The pids found are kept, and `/proc` is walked again only when one of
//! them ends, or while a role has none: then at most once per
//! [`WALK_INTERVAL`], and only if a process was created since the last
//! walk (the last pid in `/proc/loadavg` moved). A scrape costs a few reads
//! while the app runs, and about as few while it is down.
//! Resident memory is the kernel's split RSS counters (`statm`): a threaded
//! process's can lag by a few pages per thread, and the exact figure
//! (`smaps_rollup`) needs ptrace access to the app.

mod roles;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

use super::collector::{read_optional, Collector, Error, Result};
use crate::metrics::{Families, Kind};
pub use roles::{Generation, Role};

pub struct App(Found);

/// The app's processes, found anew before each scrape's collectors run
/// (`update`, by the capture question, which needs them first), then
/// reported by the `app` collector.
#[derive(Clone)]
pub struct Found {
    /// The names of the app's binaries: the first its own, any other a
    /// separate native binary.
    names: Arc<[String]>,
    state: Arc<Mutex<State>>,
}

struct State {
    /// The processes of the pids found, refreshed each scrape.
    system: System,
    /// What the last walk of `/proc` found, its pids forgotten as they end.
    found: roles::Found,
    /// The generation last seen: kept while the app is down, so that its
    /// roles are still expected.
    generation: Option<Generation>,
    /// The last pid created as of the last walk of `/proc`, and when.
    walked: Option<(u64, Instant)>,
    /// Why this scrape's update failed: the app collector reports it.
    failed: Option<String>,
}

/// While a role has no process, `/proc` is walked at most this often.
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

/// Which of `names` a process has, by index.
fn binary(names: &[String], got: &str) -> Option<usize> {
    names.iter().position(|n| n == got || comm(n) == got)
}

impl App {
    pub fn new(names: Vec<String>) -> std::result::Result<Self, String> {
        let system = System::new().map_err(|e| format!("app: {e}"))?;
        let state =
            State { system, found: roles::Found::default(), generation: None, walked: None, failed: None };
        Ok(App(Found { names: names.into(), state: Arc::new(Mutex::new(state)) }))
    }

    /// The processes found, for the `video_capture` collector.
    pub fn found(&self) -> Found {
        self.0.clone()
    }
}

impl Found {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the pids up to date, once a scrape before its collectors run;
    /// the pids of the app's running processes.
    pub fn update(&self) -> Result<Vec<u32>> {
        let mut s = self.lock();
        s.failed = None;
        let lost = s.refresh(&self.names);
        let generation = s.generation;
        let missing = Role::ALL
            .iter()
            .any(|&r| s.found.pid(r).is_none() && (generation.is_none() || Generation::has(generation, r)));
        if lost || missing {
            // No process created since the last walk: none can have taken
            // a missing role now.
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
        Ok(s.found.pids.iter().flatten().copied().collect())
    }

    /// What this scrape's update found, or why it failed.
    fn current(&self) -> Result<MutexGuard<'_, State>> {
        let s = self.lock();
        match &s.failed {
            Some(why) => Err(Error::Failed(why.clone())),
            None => Ok(s),
        }
    }
}

impl State {
    /// Walks `/proc` and tells the processes of the app's binaries apart.
    /// Each process's `comm` alone is read (sysinfo's own walk reads every
    /// thread's `stat`: 7.5 ms a scrape under qemu-arm against 1.5 ms), then
    /// sysinfo reads the candidates' `stat` and command lines. A `comm`
    /// that cannot be read, but for a process that ended, fails the walk:
    /// never "not the app".
    fn find(&mut self, names: &[String]) -> Result<()> {
        let proc = std::fs::read_dir("/proc").map_err(|e| Error::Failed(format!("/proc: {e}")))?;
        let mut named: Vec<(Pid, usize)> = Vec::new();
        for entry in proc {
            let entry = entry.map_err(|e| Error::Failed(format!("/proc: {e}")))?;
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let got = match std::fs::read(entry.path().join("comm")) {
                Ok(got) => got,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(Error::Failed(format!("/proc/{pid}/comm: {e}"))),
            };
            let got = String::from_utf8_lossy(&got);
            if let Some(b) = binary(names, got.trim_end_matches('\n')) {
                named.push((Pid::from(pid), b));
            }
        }
        // The candidates in a System of their own, dropped after: only the
        // pids chosen are kept between scrapes.
        let mut probe = System::new().map_err(|e| Error::Failed(format!("processes: {e}")))?;
        let pids: Vec<Pid> = named.iter().map(|(p, _)| *p).collect();
        let kind = ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always).without_tasks();
        probe.refresh_processes_specifics(ProcessesToUpdate::Some(&pids), false, kind);
        let candidates: Vec<roles::Candidate> = named
            .iter()
            .filter_map(|&(pid, binary)| {
                let p = probe.process(pid).filter(|p| running(p))?;
                Some(roles::Candidate {
                    pid: pid.as_u32(),
                    parent: p.parent().map(|p| p.as_u32()),
                    binary,
                    cmdline: p.cmd().iter().map(|a| a.to_string_lossy().into_owned()).collect(),
                    start: p.start_time(),
                })
            })
            .collect();
        self.found = roles::assign(&candidates);
        self.generation = self.found.generation.or(self.generation);
        Ok(())
    }

    /// Refreshes the pids found; one that ended, or was reused by another
    /// program, is forgotten. Returns whether one was.
    fn refresh(&mut self, names: &[String]) -> bool {
        let pids: Vec<Pid> = self.found.pids.iter().flatten().map(|&p| Pid::from_u32(p)).collect();
        // Not their threads (sysinfo would list each one's `task/`).
        let kind = ProcessRefreshKind::nothing().with_cpu().with_memory().without_tasks();
        self.system.refresh_processes_specifics(ProcessesToUpdate::Some(&pids), true, kind);
        let mut lost = false;
        for pid in self.found.pids.iter_mut() {
            let ours = |p: &Process| running(p) && binary(names, &p.name().to_string_lossy()).is_some();
            if pid.is_some_and(|p| !self.system.process(Pid::from_u32(p)).is_some_and(ours)) {
                *pid = None;
                lost = true;
            }
        }
        lost
    }

    /// Whether to walk `/proc` for the roles without a pid.
    fn walk_due(&self, lost: bool, newest: Option<u64>) -> bool {
        match (lost, newest, self.walked) {
            (true, _, _) | (_, None, _) | (_, _, None) => true,
            (false, Some(n), Some((at_pid, at))) => n != at_pid && at.elapsed() >= WALK_INTERVAL,
        }
    }

    fn process(&self, role: Role) -> Option<&Process> {
        self.system.process(Pid::from_u32(self.found.pid(role)?))
    }
}

/// A process that has not ended: a zombie waits only for its parent.
fn running(p: &Process) -> bool {
    p.status() != ProcessStatus::Zombie
}

/// A process that ended between the listing and the read.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

impl Collector for App {
    fn name(&self) -> &'static str {
        "app"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let s = self.0.current()?;
        // The roles its generation has, and any that runs.
        let roles: Vec<(Role, Option<&Process>)> = Role::ALL
            .iter()
            .map(|&r| (r, s.process(r)))
            .filter(|(r, p)| p.is_some() || Generation::has(s.generation, *r))
            .collect();
        let mut f = out.family(
            "jetkvm_app_up",
            "Whether the device app's process of this role runs (supervisor, app, native: the roles of its generation).",
            Kind::Gauge,
        );
        for (role, p) in &roles {
            f.sample(&[("role", role.label())], if p.is_some() { 1.0 } else { 0.0 });
        }
        let running: Vec<(&str, &Process)> =
            roles.iter().filter_map(|(r, p)| Some((r.label(), (*p)?))).collect();
        write_running(out, &running);
        if let Some(g) = s.generation {
            out.family(
                "jetkvm_app_generation_info",
                "How the device's app runs: one_binary (supervisor, app and native processes of one binary) or two_binaries (the app and a separate jetkvm_native); always 1.",
                Kind::Gauge,
            )
            .sample(&[("generation", g.label())], 1.0);
        }
        if let (Some(failsafe), Some(_)) = (s.found.failsafe, s.process(Role::App)) {
            out.single(
                "jetkvm_app_failsafe",
                "Whether the device's app runs in its failsafe mode (no video, after its native process crashed too often), as its title says.",
                Kind::Gauge,
                if failsafe { 1.0 } else { 0.0 },
            );
        }
        Ok(())
    }
}

/// The generation found, and each role it has with whether it runs.
pub type RolesNow = (Option<Generation>, Vec<(Role, bool)>);

/// The app's roles, looked at once. For `probe --require-app`, which a
/// system update asks before it keeps a slot.
pub fn roles_now(names: Vec<String>) -> std::result::Result<RolesNow, String> {
    let app = App::new(names)?;
    app.0.update().map_err(|e| e.to_string())?;
    let s = app.0.lock();
    let roles = Role::ALL
        .iter()
        .filter(|&&r| s.process(r).is_some() || Generation::has(s.generation, r))
        .map(|&r| (r, s.process(r).is_some()))
        .collect();
    Ok((s.generation, roles))
}

/// What is exported of each running role: name, help, type, value.
type Figure = (&'static str, &'static str, Kind, fn(&Process) -> f64);

const FIGURES: [Figure; 3] = [
    (
        "jetkvm_app_start_time_seconds",
        "Start time of the device app's process of this role, in seconds since the Unix epoch.",
        Kind::Gauge,
        |p| p.start_time() as f64,
    ),
    (
        "jetkvm_app_cpu_seconds_total",
        "User and system CPU time of the device app's process of this role.",
        Kind::Counter,
        |p| p.accumulated_cpu_time() as f64 / 1000.0,
    ),
    (
        "jetkvm_app_resident_memory_bytes",
        "Resident memory of the device app's process of this role (the kernel's statm).",
        Kind::Gauge,
        |p| p.memory() as f64,
    ),
];

/// Start time, CPU and memory of each running role.
fn write_running(out: &mut Families, running: &[(&str, &Process)]) {
    for (name, help, kind, value) in FIGURES {
        let mut f = out.family(name, help, kind);
        for (role, p) in running {
            f.sample(&[("role", role)], value(p));
        }
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
        let names = ["jetkvm_app".to_string(), "jetkvm_native".to_string()];
        assert_eq!(super::binary(&names, "jetkvm_native"), Some(1));
        assert_eq!(super::binary(&names, "jetkvm"), None);
    }
}

//! Collectors: each reads one source of device state when a scrape arrives
//! and writes its metric families. The runner times every collector and
//! reports `jetkvm_scrape_collector_{success,duration_seconds}`; a failing
//! collector never fails the scrape. Nothing here runs on a timer.
//!
//! Readers open files under the configured `proc_root`/`sys_root`, parsers
//! are pure functions on text so they are tested on inline input.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::exposition::{Exposition, Kind};

mod cpu;
mod device;
mod filesystem;
mod loadavg;
mod meminfo;
mod netdev;
mod process;
mod sock_diag;
mod tcp;
mod thermal;
mod time;
mod usb_gadget;

/// The pure parsers of procfs and sysfs text, for fuzzing and tests.
pub mod parsers {
    pub use super::cpu::parse as cpu_stat;
    pub use super::loadavg::parse as loadavg;
    pub use super::meminfo::field_bytes as meminfo_field;
    pub use super::netdev::parse as net_dev;
    pub use super::tcp::parse_sockets as net_tcp;
    pub use super::thermal::parse_millidegrees as thermal_millidegrees;
    pub use super::time::{parse_btime as btime, parse_uptime as uptime};
}

/// Why a collector produced nothing.
#[derive(Debug)]
pub enum Error {
    /// The source does not exist on this host (no thermal zone, no UDC):
    /// reported as success 0, logged only at debug level.
    NoData(String),
    /// The source exists but could not be read or parsed: logged as a warning.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoData(m) | Error::Failed(m) => f.write_str(m),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One source of metrics.
pub trait Collector: Send + Sync {
    /// The `collector` label value.
    fn name(&self) -> &'static str;
    /// Reads the source and writes complete metric families into `out`.
    fn update(&self, out: &mut Exposition) -> Result<()>;
}

/// All enabled collectors, in a fixed order.
pub struct Registry {
    collectors: Vec<Box<dyn Collector>>,
}

impl Registry {
    pub fn from_config(config: &Config) -> Self {
        let procfs = config.proc_root.clone();
        let sysfs = config.sys_root.clone();
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(time::Time::new(procfs.clone())),
            Box::new(loadavg::LoadAvg::new(procfs.clone())),
            Box::new(cpu::Cpu::new(procfs.clone())),
            Box::new(meminfo::MemInfo::new(procfs.clone())),
            Box::new(tcp::Tcp::new(procfs.clone(), config.connection_ports.clone())),
            Box::new(netdev::NetDev::new(procfs)),
            Box::new(filesystem::Filesystem::new(config.filesystems.clone())),
            Box::new(thermal::Thermal::new(sysfs.clone())),
            Box::new(usb_gadget::UsbGadget::new(sysfs)),
            Box::new(device::Device::new(config.version_file.clone())),
        ];
        Registry { collectors }
    }

    /// Runs every collector once and appends their families, followed by
    /// the per-collector success and duration families.
    pub fn gather(&self, out: &mut Exposition) {
        let mut results = Vec::with_capacity(self.collectors.len());
        for c in &self.collectors {
            let start = Instant::now();
            // A collector writes into its own buffer so a failure half-way
            // leaves no partial family behind.
            let mut part = Exposition::new();
            let ok = match c.update(&mut part) {
                Ok(()) => {
                    out.append(part);
                    true
                }
                Err(Error::NoData(msg)) => {
                    log::debug!("collector {}: no data: {msg}", c.name());
                    false
                }
                Err(Error::Failed(msg)) => {
                    log::warn!("collector {}: {msg}", c.name());
                    false
                }
            };
            results.push((c.name(), ok, start.elapsed().as_secs_f64()));
        }
        let mut f = out.family(
            "jetkvm_scrape_collector_duration_seconds",
            "Time a collector took during this scrape.",
            Kind::Gauge,
        );
        for (name, _, secs) in &results {
            f.sample(&[("collector", name)], *secs);
        }
        let mut f = out.family(
            "jetkvm_scrape_collector_success",
            "Whether a collector succeeded during this scrape (1) or could not read its source (0).",
            Kind::Gauge,
        );
        for (name, ok, _) in &results {
            f.sample(&[("collector", name)], if *ok { 1.0 } else { 0.0 });
        }
    }

    /// The process collector is not a device collector: it always reads the
    /// daemon's own `/proc/self`, whatever `proc_root` says.
    pub fn gather_process(out: &mut Exposition) {
        if let Err(e) = process::update(Path::new("/proc/self"), out) {
            log::debug!("process metrics: {e}");
        }
    }
}

/// Reads a whole file, mapping "not there" to [`Error::NoData`].
pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

pub(crate) fn io_error(path: &Path, e: io::Error) -> Error {
    let msg = format!("{}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::NotFound => Error::NoData(msg),
        _ => Error::Failed(msg),
    }
}

pub(crate) fn parse_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{}: {what}", path.display()))
}

/// Joins a root and a relative path such as `net/tcp`.
pub(crate) fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// Clock ticks per second, the unit of `/proc/stat` CPU times.
pub(crate) fn user_hz() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

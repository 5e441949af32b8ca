//! Collectors: each reads one source of device state when a scrape arrives
//! and hands its metric families to the `prometheus` registry, which runs
//! them on `gather`. Each is timed and reported in
//! `jetkvm_scrape_collector_{success,duration_seconds}`; a failing collector
//! never fails the scrape. Nothing here runs on a timer.
//!
//! What sysinfo provides (uptime, boot time, load, memory, the daemon's own
//! process) comes through it, from the live kernel. The rest is read here under the configured `proc_root`/`sys_root`, by parsers
//! that are pure functions on text, tested on inline input and fixtures.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prometheus::core::Desc;
use prometheus::proto::MetricFamily;

use crate::config::Config;
use crate::metrics::{Families, Kind};

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
pub use device::system_version;

pub mod parsers {
    pub use super::cpu::parse as cpu_stat;
    pub use super::netdev::parse as net_dev;
    pub use super::tcp::parse_sockets as net_tcp;
    pub use super::thermal::parse_millidegrees as thermal_millidegrees;
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
    /// Reads the source and builds complete metric families into `out`.
    fn update(&self, out: &mut Families) -> Result<()>;
}

const DURATION: &str = "jetkvm_scrape_collector_duration_seconds";
const DURATION_HELP: &str = "Time a collector took during this scrape.";
const SUCCESS: &str = "jetkvm_scrape_collector_success";
const SUCCESS_HELP: &str =
    "Whether a collector succeeded during this scrape (1) or could not read its source (0).";

/// A collector as the `prometheus` registry sees it: each scrape runs it
/// once, times it, and adds its success and duration samples (the registry
/// merges those of every collector into one family each).
struct Timed {
    inner: Box<dyn Collector>,
    descs: [Desc; 2],
}

impl Timed {
    fn new(inner: Box<dyn Collector>) -> prometheus::Result<Timed> {
        let desc = |name: &str, help: &str| {
            let labels = HashMap::from([("collector".to_owned(), inner.name().to_owned())]);
            Desc::new(name.to_owned(), help.to_owned(), Vec::new(), labels)
        };
        Ok(Timed { descs: [desc(DURATION, DURATION_HELP)?, desc(SUCCESS, SUCCESS_HELP)?], inner })
    }
}

impl prometheus::core::Collector for Timed {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let name = self.inner.name();
        let start = Instant::now();
        // A collector builds into its own families so a failure half-way
        // hands over nothing partial.
        let mut part = Families::new();
        let ok = match self.inner.update(&mut part) {
            Ok(()) => true,
            Err(Error::NoData(msg)) => {
                log::debug!("collector {name}: no data: {msg}");
                false
            }
            Err(Error::Failed(msg)) => {
                log::warn!("collector {name}: {msg}");
                false
            }
        };
        let mut out = if ok { part } else { Families::new() };
        out.family(DURATION, DURATION_HELP, Kind::Gauge)
            .sample(&[("collector", name)], start.elapsed().as_secs_f64());
        out.family(SUCCESS, SUCCESS_HELP, Kind::Gauge)
            .sample(&[("collector", name)], if ok { 1.0 } else { 0.0 });
        out.into_vec()
    }
}

/// Registers every enabled collector in `registry`, in a fixed order.
pub fn register(config: &Config, registry: &prometheus::Registry) -> prometheus::Result<()> {
    let procfs = config.proc_root.clone();
    let sysfs = config.sys_root.clone();
    let collectors: Vec<Box<dyn Collector>> = vec![
        Box::new(time::Time),
        Box::new(loadavg::LoadAvg),
        Box::new(cpu::Cpu::new(procfs.clone())),
        Box::new(meminfo::MemInfo::new().map_err(prometheus::Error::Msg)?),
        Box::new(tcp::Tcp::new(procfs.clone(), config.connection_ports.clone())),
        Box::new(netdev::NetDev::new(procfs)),
        Box::new(filesystem::Filesystem::new(config.filesystems.clone())),
        Box::new(thermal::Thermal::new(sysfs.clone())),
        Box::new(usb_gadget::UsbGadget::new(sysfs)),
        Box::new(device::Device::new(config.version_file.clone())),
    ];
    for c in collectors {
        registry.register(Box::new(Timed::new(c)?))?;
    }
    registry.register(Box::new(process::Process::new().map_err(prometheus::Error::Msg)?))
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

//! Collectors: each reads one source of device state when a scrape arrives
//! and hands its metric families to the `prometheus` registry, which runs
//! them on `gather`. The trait, its errors and the timing wrapper are in
//! `collector`; this module lists the collectors and registers them. Each is timed and reported in
//! `jetkvm_scrape_collector_{success,duration_seconds}`; a failing collector
//! never fails the scrape. Nothing here runs on a timer.
//!
//! What sysinfo provides (uptime, boot time, load, memory, the daemon's own
//! process) comes through it, from the live kernel. The rest is read here under the configured `proc_root`/`sys_root`, by parsers
//! that are pure functions on text, tested on inline input and fixtures.

use crate::config::Config;
use crate::holders::Holders;

mod app;
mod collector;
mod cpu;
mod device;
mod filesystem;
mod hdmi;
mod loadavg;
mod meminfo;
mod netclass;
mod netdev;
mod process;
mod rtc;
mod sock_diag;
mod streaming;
mod tcp;
mod thermal;
mod time;
mod usb_config;
mod usb_gadget;

/// The pure parsers of procfs and sysfs text, for fuzzing and tests.
pub use collector::{Collector, Error, Families, Kind, Result};
pub use device::system_version;

pub mod parsers {
    pub use super::cpu::parse as cpu_stat;
    pub use super::netdev::parse as net_dev;
    pub use super::tcp::parse_sockets as net_tcp;
    pub use super::thermal::parse_millidegrees as thermal_millidegrees;
}

/// Registers every enabled collector in `registry`, in a fixed order.
/// `holders` answers who holds the capture node open (the privileged helper
/// when the daemon switches user; else read here).
pub fn register(
    config: &Config,
    registry: &prometheus::Registry,
    holders: Option<Holders>,
) -> prometheus::Result<()> {
    let procfs = config.proc_root.clone();
    let sysfs = config.sys_root.clone();
    let gadget = sysfs.join("kernel/config/usb_gadget").join(&config.usb_gadget);
    let collectors: Vec<Box<dyn Collector>> = vec![
        Box::new(time::Time),
        Box::new(loadavg::LoadAvg),
        Box::new(cpu::Cpu::new(procfs.clone())),
        Box::new(meminfo::MemInfo::new().map_err(prometheus::Error::Msg)?),
        Box::new(tcp::Tcp::new(procfs.clone(), config.connection_ports.clone())),
        Box::new(netdev::NetDev::new(procfs)),
        Box::new(filesystem::Filesystem::new(config.filesystems.clone())),
        Box::new(thermal::Thermal::new(sysfs.clone())),
        Box::new(usb_gadget::UsbGadget::new(sysfs.clone())),
        Box::new(usb_config::UsbFunctions::new(gadget.clone())),
        Box::new(usb_config::VirtualMedia::new(gadget, sysfs.clone())),
        Box::new(netclass::NetClass::new(sysfs.clone())),
        Box::new(rtc::Rtc::new(sysfs.clone())),
        Box::new(hdmi::Hdmi::new(
            config.video.device.clone(),
            config.video.driver.clone(),
            sysfs,
            config.video.sleep_file.clone(),
            config.video.query_interval,
        )),
        Box::new(device::Device::new(config.version_file.clone())),
        Box::new(process::Process::new().map_err(prometheus::Error::Msg)?),
    ];
    for c in collectors {
        register_one(registry, c)?;
    }
    if !config.app_processes.is_empty() {
        let app = app::App::new(config.app_processes.clone()).map_err(prometheus::Error::Msg)?;
        let capture = config.video.capture_device.clone();
        let holders = holders.unwrap_or_else(|| Holders::Direct {
            names: config.app_processes.clone(),
            capture: capture.clone(),
        });
        let streaming = streaming::Streaming::new(app.found(), holders, capture);
        register_one(registry, Box::new(app))?;
        register_one(registry, Box::new(streaming))?;
    }
    Ok(())
}

/// Registers one collector, timed like every other.
pub fn register_one(registry: &prometheus::Registry, c: Box<dyn Collector>) -> prometheus::Result<()> {
    registry.register(Box::new(collector::Timed::new(c)?))
}

//! Collectors: each reads one source of device state when a scrape arrives
//! and writes its metric families into what it kept from the last scrape
//! (see `metrics::Families`). The trait, its errors and the timing wrapper
//! are in `collector`; this module lists the collectors and runs them for a
//! scrape. Each is timed and reported in
//! `jetkvm_scrape_collector_{success,duration_seconds}`; a failing collector
//! never fails the scrape. Nothing here runs on a timer.
//!
//! What sysinfo provides (uptime, boot time, load, memory, the daemon's own
//! process) comes through it, from the live kernel. The rest is read here under the configured `proc_root`/`sys_root`, by parsers
//! that are pure functions on text, tested on inline input and fixtures.

use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};

use crate::capture_holders::Holders;
use crate::config::Config;
use collector::Timed;

mod app;
mod backlight;
mod capture;
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
mod tcp;
mod thermal;
mod time;
mod usb_config;
mod usb_gadget;

pub use app::{roles_now, Generation, Role};
/// The pure parsers of procfs and sysfs text, for fuzzing and tests.
pub use collector::{Collector, Error, Families, Kind, Result};
pub use device::system_version;

pub mod parsers {
    pub use super::cpu::parse as cpu_stat;
    pub use super::netdev::parse as net_dev;
    pub use super::tcp::parse_sockets as net_tcp;
    pub use super::thermal::parse_millidegrees as thermal_millidegrees;
}

/// Every enabled collector, in a fixed order, with the two families that
/// report on each (its success and duration), kept between scrapes.
pub struct Collectors {
    timed: Vec<Timed>,
    /// The capture question, asked before the collectors run.
    capture: Option<capture::Capture>,
    status: Mutex<Families>,
    /// The body's buffer, and the last body's length.
    out: Mutex<(BytesMut, usize)>,
}

impl Collectors {
    /// Every enabled collector. `holders` answers who holds the capture node
    /// open (the privileged helper when the daemon switches user; else read
    /// here).
    pub fn new(config: &Config, holders: Option<Holders>) -> std::result::Result<Collectors, String> {
        let procfs = config.proc_root.clone();
        let sysfs = config.sys_root.clone();
        let gadget = sysfs.join("kernel/config/usb_gadget").join(&config.usb_gadget);
        let mut all =
            Collectors { timed: Vec::new(), capture: None, status: Mutex::default(), out: Mutex::default() };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(time::Time),
            Box::new(loadavg::LoadAvg),
            Box::new(cpu::Cpu::new(procfs.clone())),
            Box::new(meminfo::MemInfo::new()?),
            Box::new(tcp::Tcp::new(procfs.clone(), config.connection_ports.clone())),
            Box::new(netdev::NetDev::new(procfs)),
            Box::new(filesystem::Filesystem::new(config.filesystems.clone())),
            Box::new(thermal::Thermal::new(sysfs.clone())),
            Box::new(usb_gadget::UsbGadget::new(sysfs.clone())),
            Box::new(usb_config::UsbFunctions::new(gadget.clone())),
            Box::new(usb_config::VirtualMedia::new(gadget, sysfs.clone())),
            Box::new(netclass::NetClass::new(sysfs.clone())),
            Box::new(rtc::Rtc::new(sysfs.clone())),
            Box::new(backlight::Backlight::new(&sysfs, &config.display_backlight)),
            Box::new(hdmi::Hdmi::new(
                config.video.device.clone(),
                config.video.driver.clone(),
                sysfs,
                config.video.sleep_file.clone(),
                config.video.query_interval,
            )),
            Box::new(device::Device::new(config.version_file.clone())),
            Box::new(process::Process::new()?),
        ];
        for c in collectors {
            all.push(c)?;
        }
        if !config.app_processes.is_empty() {
            let app = app::App::new(config.app_processes.clone())?;
            let node = config.video.capture_device.clone();
            let holders = holders.unwrap_or_else(|| Holders::Direct {
                names: config.app_processes.clone(),
                capture: node.clone(),
            });
            let capture = capture::Capture::new(app.found(), holders, node);
            all.push(Box::new(app))?;
            all.push(Box::new(capture.clone()))?;
            all.capture = Some(capture);
        }
        Ok(all)
    }

    /// Adds a collector, run after those before it.
    pub fn push(&mut self, c: Box<dyn Collector>) -> std::result::Result<(), String> {
        if self.timed.iter().any(|t| t.name() == c.name()) {
            return Err(format!("two collectors named {}", c.name()));
        }
        self.timed.push(Timed::new(c));
        Ok(())
    }

    /// What a scrape asks before its collectors run, on the runtime: the
    /// app's processes found and who of them holds the capture node (the
    /// open-files helper may take its time; the worker serves others).
    pub async fn prepare(&self) {
        if let Some(c) = &self.capture {
            c.prepare().await;
        }
    }

    /// A scrape's body, after [`Collectors::prepare`]: every collector run once, in order, then what they
    /// hold, their success and duration, and `own` (families of the
    /// daemon's counters) encoded by name, as `prometheus::Registry` orders
    /// a gathering.
    pub fn scrape(&self, own: &mut Families) -> Bytes {
        let mut kept: Vec<_> = self.timed.iter().map(Timed::run).collect();
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.begin();
        let mut took = status.family(collector::DURATION, collector::DURATION_HELP, Kind::Gauge);
        for (t, k) in self.timed.iter().zip(&kept) {
            took.sample(&[("collector", t.name())], k.took);
        }
        let mut ok = status.family(collector::SUCCESS, collector::SUCCESS_HELP, Kind::Gauge);
        for (t, k) in self.timed.iter().zip(&kept) {
            ok.sample(&[("collector", t.name())], if k.ok { 1.0 } else { 0.0 });
        }
        status.finish();
        let families = kept.iter_mut().flat_map(|k| k.encoded()).chain(status.encoded()).chain(own.encoded());
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let (out, last) = &mut *guard;
        // The last body has been sent and dropped by now: `reserve` takes
        // its memory back rather than allocating (and the allocator
        // wiping) a new one per scrape.
        out.reserve((*last + *last / 8).max(16 * 1024));
        crate::metrics::write_gathered(families.collect(), &mut out.writer());
        *last = out.len();
        out.split().freeze()
    }
}

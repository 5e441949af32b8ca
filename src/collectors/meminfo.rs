//! Memory totals, through sysinfo (the live kernel's `/proc/meminfo`).

use std::sync::Mutex;

use sysinfo::{MemoryRefreshKind, System};

use super::collector::{Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct MemInfo {
    system: Mutex<System>,
}

impl MemInfo {
    pub fn new() -> std::result::Result<Self, String> {
        let system = System::new().map_err(|e| format!("memory: {e}"))?;
        Ok(MemInfo { system: Mutex::new(system) })
    }
}

impl Collector for MemInfo {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let mut s = self.system.lock().unwrap_or_else(|p| p.into_inner());
        s.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // sysinfo keeps its previous values (zero at first) when the read
        // fails: a device has RAM, so zero means "not read".
        if s.total_memory() == 0 {
            return Err(Error::Failed("meminfo: not readable".into()));
        }
        for (metric, help, v) in [
            ("jetkvm_memory_total_bytes", "Usable RAM.", s.total_memory()),
            (
                "jetkvm_memory_available_bytes",
                "Memory available for new work without swapping, as the kernel estimates it.",
                s.available_memory(),
            ),
            ("jetkvm_memory_free_bytes", "Memory not used at all.", s.free_memory()),
        ] {
            out.single(metric, help, Kind::Gauge, v as f64);
        }
        Ok(())
    }
}

//! Uptime and boot time, through sysinfo (the live kernel's `/proc/uptime`
//! and the `btime` of `/proc/stat`).

use sysinfo::System;

use super::collector::{Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Time;

impl Collector for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let uptime = System::uptime().map_err(|e| Error::Failed(format!("uptime: {e}")))?;
        let boot = System::boot_time().map_err(|e| Error::Failed(format!("boot time: {e}")))?;
        // When btime cannot be read sysinfo answers seconds since boot,
        // which is no time since the epoch: report a failure, not a 1970s date.
        if boot <= uptime {
            return Err(Error::Failed("boot time: btime unavailable".into()));
        }
        out.single(
            "jetkvm_system_uptime_seconds",
            "Seconds since the device booted.",
            Kind::Gauge,
            uptime as f64,
        );
        out.single(
            "jetkvm_system_boot_time_seconds",
            "Boot time of the device, in seconds since the Unix epoch.",
            Kind::Gauge,
            boot as f64,
        );
        Ok(())
    }
}

//! Uptime through sysinfo (the live kernel's `/proc/uptime`), and boot
//! time from the clocks as the kernel reckons `btime`. sysinfo reads
//! `btime` out of `/proc/stat`, which the kernel writes whole for it, every
//! interrupt's count included: a second `/proc/stat` a scrape (the `cpu`
//! collector reads one). In perf on a native daemon, formatting the two
//! was 2.6% of its CPU, their opens and closes on top (docs/BENCHMARKS.md).

use sysinfo::System;

use super::collector::{Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Time;

/// The wall clock now less the time since boot, suspend included
/// (`CLOCK_BOOTTIME`): the kernel's `btime`, which moves as it does when
/// the clock is set.
fn boot_time() -> Result<u64> {
    let failed = |what: &str| Error::Failed(format!("boot time: {what}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| failed("clock before 1970"))?;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Err(failed(&std::io::Error::last_os_error().to_string()));
    }
    let since = std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    now.checked_sub(since).map(|d| d.as_secs()).ok_or_else(|| failed("clock before boot"))
}

impl Collector for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let uptime = System::uptime().map_err(|e| Error::Failed(format!("uptime: {e}")))?;
        let boot = boot_time()?;
        // A clock not set yet (near 1970) puts boot within the uptime:
        // report a failure, not a 1970s date.
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

#[cfg(test)]
mod tests {
    #[test]
    fn boot_time_is_the_kernels_btime() {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let btime: u64 = stat.lines().find_map(|l| l.strip_prefix("btime ")).unwrap().trim().parse().unwrap();
        let ours = super::boot_time().unwrap();
        assert!(ours.abs_diff(btime) <= 1, "{ours} against btime {btime}");
    }
}

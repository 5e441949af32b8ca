//! Uptime and boot time: `/proc/uptime` and the `btime` line of `/proc/stat`.

use std::path::PathBuf;

use super::{parse_error, read, under, Collector, Result};
use crate::exposition::{Exposition, Kind};

pub struct Time {
    procfs: PathBuf,
}

impl Time {
    pub fn new(procfs: PathBuf) -> Self {
        Time { procfs }
    }
}

impl Collector for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    fn update(&self, out: &mut Exposition) -> Result<()> {
        let path = under(&self.procfs, "uptime");
        let uptime = parse_uptime(&read(&path)?).ok_or_else(|| parse_error(&path, "malformed"))?;
        let path = under(&self.procfs, "stat");
        let btime = parse_btime(&read(&path)?).ok_or_else(|| parse_error(&path, "no btime line"))?;
        out.single("jetkvm_system_uptime_seconds", "Seconds since the device booted.", Kind::Gauge, uptime);
        out.single(
            "jetkvm_system_boot_time_seconds",
            "Boot time of the device, in seconds since the Unix epoch.",
            Kind::Gauge,
            btime,
        );
        Ok(())
    }
}

/// `/proc/uptime`: "12345.67 54321.00".
pub fn parse_uptime(text: &str) -> Option<f64> {
    let v: f64 = text.split_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// The `btime N` line of `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735.47));
        for bad in ["", "\n", "abc 1", "-1 2", "NaN 1", "inf"] {
            assert_eq!(parse_uptime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn btime() {
        assert_eq!(parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 3\n"), Some(1.7e9));
        for bad in ["", "cpu 1\n", "btime\n", "btime x\n", "btime -5\n"] {
            assert_eq!(parse_btime(bad), None, "{bad:?}");
        }
    }
}

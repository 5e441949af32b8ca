//! The real-time clocks' time, from `/sys/class/rtc/<rtc>/since_epoch`, and
//! how far the system clock is from each. Never by opening `/dev/rtc0`: it
//! is exclusive, and the device's app holds it. The device's app sets the
//! system clock with `date -s` after a time sync, so the kernel never
//! reports the clock synchronised; an RTC that drifts from it is what can
//! be alerted on.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::collector::{io_error, parse_error, read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Rtc {
    dir: PathBuf,
}

impl Rtc {
    pub fn new(sysfs: PathBuf) -> Self {
        Rtc { dir: sysfs.join("class/rtc") }
    }
}

impl Collector for Rtc {
    fn name(&self) -> &'static str {
        "rtc"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut clocks = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path().join("since_epoch");
            let text = read(&path)?;
            let secs: u64 = text.trim().parse().map_err(|_| parse_error(&path, "not a number of seconds"))?;
            clocks.push((name, secs));
        }
        if clocks.is_empty() {
            return Err(Error::NoData(format!("{}: no real-time clock", self.dir.display())));
        }
        clocks.sort();
        // The system clock as of the reads; since_epoch has whole seconds.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut f = out.family(
            "jetkvm_rtc_time_seconds",
            "Time of a real-time clock, in whole seconds since the Unix epoch.",
            Kind::Gauge,
        );
        for (rtc, secs) in &clocks {
            f.sample(&[("rtc", rtc)], *secs as f64);
        }
        let mut f = out.family(
            "jetkvm_rtc_offset_seconds",
            "The system clock minus a real-time clock's time (the clock's resolution is one second).",
            Kind::Gauge,
        );
        for (rtc, secs) in &clocks {
            f.sample(&[("rtc", rtc)], now.floor() - *secs as f64);
        }
        Ok(())
    }
}

//! Temperatures of `/sys/class/thermal/thermal_zone*` (millidegrees Celsius).

use std::path::PathBuf;

use super::collector::{io_error, parse_error, read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Thermal {
    dir: PathBuf,
}

impl Thermal {
    pub fn new(sysfs: PathBuf) -> Self {
        Thermal { dir: sysfs.join("class/thermal") }
    }
}

impl Collector for Thermal {
    fn name(&self) -> &'static str {
        "thermal_zone"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut zones = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(zone) = name.strip_prefix("thermal_zone") else { continue };
            if zone.is_empty() || !zone.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = entry.path();
            let temp_path = path.join("temp");
            let temp = match read(&temp_path) {
                Ok(t) => parse_millidegrees(&t).ok_or_else(|| parse_error(&temp_path, "malformed"))?,
                // A zone whose sensor is off reads EINVAL/ENODATA: skip it.
                Err(e) => {
                    log::debug!("thermal: {e}");
                    continue;
                }
            };
            let kind = read(&path.join("type")).map(|t| t.trim().to_owned()).unwrap_or_default();
            zones.push((zone.parse::<u32>().unwrap_or(u32::MAX), zone.to_owned(), kind, temp));
        }
        if zones.is_empty() {
            return Err(Error::NoData(format!("{}: no readable thermal zone", self.dir.display())));
        }
        zones.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut f = out.family("jetkvm_thermal_zone_celsius", "Temperature of a thermal zone.", Kind::Gauge);
        for (_, zone, kind, temp) in &zones {
            f.sample(&[("zone", zone), ("type", kind)], *temp);
        }
        Ok(())
    }
}

/// "45230\n" -> 45.23
pub fn parse_millidegrees(text: &str) -> Option<f64> {
    text.trim().parse::<i64>().ok().map(|m| m as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn millidegrees() {
        assert_eq!(super::parse_millidegrees("45230\n"), Some(45.23));
        assert_eq!(super::parse_millidegrees("-5000"), Some(-5.0));
        assert_eq!(super::parse_millidegrees(""), None);
        assert_eq!(super::parse_millidegrees("45.2"), None);
    }
}

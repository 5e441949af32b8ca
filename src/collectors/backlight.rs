//! The device's display: its backlight's brightness and the most it can be
//! set to, from `/sys/class/backlight/<name>/{brightness,max_brightness}`.
//! Read only: the device's app writes `brightness` (its configured maximum,
//! 64 out of the box and at most 100, while awake; half of that dimmed; 0
//! off: jetkvm/kvm `display.go` at bde0a08), so the value tells whether the
//! display is awake, dimmed or off.

use std::path::{Path, PathBuf};

use super::collector::{parse_error, read, Collector, Result};
use crate::metrics::{Families, Kind};

pub struct Backlight {
    dir: PathBuf,
}

impl Backlight {
    /// The backlight `name` (the `display_backlight` key) under `sysfs`.
    pub fn new(sysfs: &Path, name: &str) -> Self {
        Backlight { dir: sysfs.join("class/backlight").join(name) }
    }
}

impl Collector for Backlight {
    fn name(&self) -> &'static str {
        "backlight"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        // Both read before either is written: a failure leaves nothing half.
        let brightness = level(&self.dir.join("brightness"))?;
        let max = level(&self.dir.join("max_brightness"))?;
        out.single(
            "jetkvm_display_brightness",
            "The display backlight's brightness as the device's app set it (0: off; dimmed is half of awake).",
            Kind::Gauge,
            brightness,
        );
        out.single(
            "jetkvm_display_max_brightness",
            "The most the display backlight's brightness can be set to.",
            Kind::Gauge,
            max,
        );
        Ok(())
    }
}

/// A backlight level: a whole number, as the kernel writes it.
fn level(path: &Path) -> Result<f64> {
    parse_level(&read(path)?).ok_or_else(|| parse_error(path, "not a whole number"))
}

/// "64\n" -> 64
fn parse_level(text: &str) -> Option<f64> {
    text.trim().parse::<u32>().ok().map(f64::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn levels() {
        assert_eq!(super::parse_level("64\n"), Some(64.0));
        assert_eq!(super::parse_level("0"), Some(0.0));
        assert_eq!(super::parse_level("-1"), None);
        assert_eq!(super::parse_level("6.4"), None);
        assert_eq!(super::parse_level(""), None);
    }
}

//! The device's system version (`/version` on the stock image), as an info
//! metric.

use std::path::PathBuf;

use super::{read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Device {
    version_file: PathBuf,
}

impl Device {
    pub fn new(version_file: PathBuf) -> Self {
        Device { version_file }
    }
}

impl Collector for Device {
    fn name(&self) -> &'static str {
        "device"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let text = read(&self.version_file)?;
        let version = text.lines().next().unwrap_or("").trim();
        // Bound what goes into a label: the file is not ours.
        if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
            return Err(Error::Failed(format!(
                "{}: empty or malformed version",
                self.version_file.display()
            )));
        }
        out.family("jetkvm_device_info", "The device's system version.", Kind::Gauge)
            .sample(&[("version", version)], 1.0);
        Ok(())
    }
}

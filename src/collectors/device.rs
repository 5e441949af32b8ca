//! The device's system version (`/version` on the stock image), as an info
//! metric. [`system_version`] is also what `/healthz` tells a client on the
//! device itself, and what `probe` expects to hear.

use std::path::{Path, PathBuf};

use super::collector::{read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Device {
    version_file: PathBuf,
}

impl Device {
    pub fn new(version_file: PathBuf) -> Self {
        Device { version_file }
    }
}

/// The first line of the version file, bounded: the file is not ours, and
/// its text goes into a label and a response.
pub fn system_version(path: &Path) -> Result<String> {
    let text = read(path)?;
    let version = text.lines().next().unwrap_or("").trim();
    if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
        return Err(Error::Failed(format!("{}: empty or malformed version", path.display())));
    }
    Ok(version.to_owned())
}

impl Collector for Device {
    fn name(&self) -> &'static str {
        "device"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let version = system_version(&self.version_file)?;
        out.family("jetkvm_device_info", "The device's system version.", Kind::Gauge)
            .sample(&[("version", &version)], 1.0);
        Ok(())
    }
}

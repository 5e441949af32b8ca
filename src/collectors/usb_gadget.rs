//! USB gadget link state (keyboard, mouse and storage emulation):
//! `/sys/class/udc/<udc>/state`.

use std::path::PathBuf;

use super::collector::{io_error, read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

/// The USB device states the kernel reports (`usb_state_string`), so each
/// one has a stable series that is 0 when not current.
const STATES: [&str; 9] = [
    "not attached",
    "attached",
    "powered",
    "reconnecting",
    "unauthenticated",
    "default",
    "addressed",
    "configured",
    "suspended",
];

pub struct UsbGadget {
    dir: PathBuf,
}

impl UsbGadget {
    pub fn new(sysfs: PathBuf) -> Self {
        UsbGadget { dir: sysfs.join("class/udc") }
    }
}

impl Collector for UsbGadget {
    fn name(&self) -> &'static str {
        "usb_gadget"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut udcs = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let state = read(&entry.path().join("state"))?;
            udcs.push((name, state.trim().to_owned()));
        }
        if udcs.is_empty() {
            return Err(Error::NoData(format!("{}: no USB device controller", self.dir.display())));
        }
        udcs.sort();
        let mut f = out.family(
            "jetkvm_usb_gadget_state",
            "USB gadget link state of a device controller: 1 for the current state.",
            Kind::Gauge,
        );
        for (udc, current) in &udcs {
            for s in STATES {
                f.sample(&[("udc", udc), ("state", s)], if s == current { 1.0 } else { 0.0 });
            }
            if !STATES.contains(&current.as_str()) {
                f.sample(&[("udc", udc), ("state", current)], 1.0);
            }
        }
        Ok(())
    }
}

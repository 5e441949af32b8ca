//! The host's USB link (keyboard, mouse and storage emulation): each device
//! controller's state and speed (`/sys/class/udc/<udc>/{state,current_speed}`),
//! and whether the target powers the port where the kernel says so (an
//! extcon's `USB=1` in `/sys/class/extcon/*/state`, on newer device builds).

use std::path::PathBuf;

use super::collector::{io_error, read, read_optional, Collector, Error, Result};
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
    extcon: PathBuf,
}

impl UsbGadget {
    pub fn new(sysfs: PathBuf) -> Self {
        UsbGadget { dir: sysfs.join("class/udc"), extcon: sysfs.join("class/extcon") }
    }
}

/// `USB=1` / `USB=0` among an extcon's `NAME=VALUE` lines.
pub fn usb_powered(state: &str) -> Option<bool> {
    state.lines().find_map(|l| match l.trim().strip_prefix("USB=")? {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    })
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
            // Older kernels have no current_speed: no speed sample.
            let mut speed = read_optional(&entry.path().join("current_speed")).map(|s| s.trim().to_owned());
            let mut state = state.trim().to_owned();
            // No gadget bound (an empty `function`): the link is down, though
            // the kernel may leave the last state and speed in place (it
            // does with dummy_udc).
            if read(&entry.path().join("function")).is_ok_and(|f| f.trim().is_empty()) {
                state = "not attached".into();
                speed = None;
            }
            udcs.push((name, state, speed));
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
        for (udc, current, _) in &udcs {
            for s in STATES {
                f.sample(&[("udc", udc), ("state", s)], if s == current { 1.0 } else { 0.0 });
            }
            if !STATES.contains(&current.as_str()) {
                f.sample(&[("udc", udc), ("state", current)], 1.0);
            }
        }
        let mut f = out.family(
            "jetkvm_usb_gadget_speed_info",
            "The speed a device controller's link runs at (UNKNOWN while not connected); always 1.",
            Kind::Gauge,
        );
        for (udc, _, speed) in &udcs {
            if let Some(speed) = speed {
                f.sample(&[("udc", udc), ("speed", speed)], 1.0);
            }
        }
        self.target_power(out);
        Ok(())
    }
}

impl UsbGadget {
    /// Each extcon that reports a USB cable: whether the target powers it.
    /// Most kernels have none: no sample, and the link state still counts.
    fn target_power(&self, out: &mut Families) {
        let Ok(entries) = std::fs::read_dir(&self.extcon) else { return };
        let mut powered: Vec<(String, bool)> = entries
            .flatten()
            .filter_map(|e| {
                let state = read_optional(&e.path().join("state"))?;
                Some((e.file_name().to_string_lossy().into_owned(), usb_powered(&state)?))
            })
            .collect();
        powered.sort();
        let mut f = out.family(
            "jetkvm_usb_target_powered",
            "Whether the target powers the USB port (the extcon's USB cable state).",
            Kind::Gauge,
        );
        for (extcon, on) in &powered {
            f.sample(&[("extcon", extcon)], if *on { 1.0 } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn extcon_usb_lines() {
        assert_eq!(super::usb_powered("USB=1\nUSB-HOST=0\n"), Some(true));
        assert_eq!(super::usb_powered("USB-HOST=1\nUSB=0\n"), Some(false));
        assert_eq!(super::usb_powered("HDMI=1\n"), None);
        assert_eq!(super::usb_powered("USB=x\n"), None);
    }
}

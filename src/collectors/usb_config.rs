//! The device's USB gadget as configfs describes it
//! (`/sys/kernel/config/usb_gadget/<usb_gadget>`): whether it is bound to a
//! device controller, which functions are enabled (keyboard, absolute and
//! relative mouse, mass storage), and what its mass storage serves (virtual
//! media). Read-only, and never `/dev/hidg*`: a descriptor held across a
//! rebind makes the device's app's later opens fail.

use std::path::{Path, PathBuf};

use super::collector::{io_error, read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

/// The device's function instances and what they are.
const ROLES: [(&str, &str); 4] = [
    ("hid.usb0", "keyboard"),
    ("hid.usb1", "absolute_mouse"),
    ("hid.usb2", "relative_mouse"),
    (MASS_STORAGE, "mass_storage"),
];

/// The function that serves virtual media.
const MASS_STORAGE: &str = "mass_storage.usb0";

pub struct UsbFunctions {
    gadget: PathBuf,
}

impl UsbFunctions {
    /// `gadget`: the gadget's configfs directory.
    pub fn new(gadget: PathBuf) -> Self {
        UsbFunctions { gadget }
    }
}

/// Function instances linked into any configuration of `gadget`.
fn enabled(gadget: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(configs) = std::fs::read_dir(gadget.join("configs")) else { return out };
    for config in configs.flatten() {
        let Ok(links) = std::fs::read_dir(config.path()) else { continue };
        // Only the links: a configuration's attributes are files beside them.
        for link in links.flatten().filter(|l| l.file_type().is_ok_and(|t| t.is_symlink())) {
            if let Ok(target) = std::fs::read_link(link.path()) {
                if let Some(name) = target.file_name() {
                    out.push(name.to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

impl Collector for UsbFunctions {
    fn name(&self) -> &'static str {
        "usb_functions"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let udc = read(&self.gadget.join("UDC"))?;
        let dir = self.gadget.join("functions");
        let mut functions: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| io_error(&dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        functions.sort();
        let on = enabled(&self.gadget);
        out.single(
            "jetkvm_usb_gadget_bound",
            "Whether the device's USB gadget is bound to a device controller.",
            Kind::Gauge,
            if udc.trim().is_empty() { 0.0 } else { 1.0 },
        );
        let mut f = out.family(
            "jetkvm_usb_gadget_function_enabled",
            "Whether a function of the device's USB gadget is in its configuration (role: keyboard, absolute_mouse, relative_mouse, mass_storage, or the function's type).",
            Kind::Gauge,
        );
        for name in &functions {
            let role = ROLES
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| *r)
                .unwrap_or_else(|| name.split('.').next().unwrap_or(name));
            f.sample(&[("function", name), ("role", role)], if on.contains(name) { 1.0 } else { 0.0 });
        }
        Ok(())
    }
}

/// What one mass-storage LUN serves.
#[derive(Debug, PartialEq)]
pub struct Medium {
    /// `local` (an image file), `nbd` (streamed from a browser), or `none`.
    pub source: &'static str,
    /// The image's file name (for nbd, the block device's).
    pub image: String,
    pub cdrom: bool,
    pub read_only: bool,
}

/// A LUN's `file`, `cdrom` and `ro` attributes as a medium; `None` when
/// nothing is inserted.
pub fn medium(file: &str, cdrom: &str, ro: &str) -> Option<Medium> {
    let file = file.trim();
    if file.is_empty() {
        return None;
    }
    let path = Path::new(file);
    let image = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let source = if file.starts_with("/dev/nbd") { "nbd" } else { "local" };
    Some(Medium { source, image, cdrom: cdrom.trim() == "1", read_only: ro.trim() == "1" })
}

pub struct VirtualMedia {
    gadget: PathBuf,
    sysfs: PathBuf,
}

impl VirtualMedia {
    pub fn new(gadget: PathBuf, sysfs: PathBuf) -> Self {
        VirtualMedia { gadget, sysfs }
    }

    /// Bytes the medium holds: an image's length (a stat, never a read),
    /// a network block device's size in sectors.
    fn size(&self, file: &str, m: &Medium) -> Option<u64> {
        match m.source {
            "nbd" => read(&self.sysfs.join("block").join(&m.image).join("size"))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?
                .checked_mul(512),
            _ => std::fs::metadata(file.trim()).ok().map(|md| md.len()),
        }
    }
}

impl Collector for VirtualMedia {
    fn name(&self) -> &'static str {
        "virtual_media"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let lun = self.gadget.join(format!("functions/{MASS_STORAGE}/lun.0"));
        if !self.gadget.is_dir() {
            return Err(Error::NoData(format!("{}: no USB gadget", self.gadget.display())));
        }
        // The app turns virtual media off by unlinking the function from
        // the configuration (its directory, and a `file`, stay), and never
        // makes the function if it was off at boot: the host sees media
        // only through the link.
        let linked = enabled(&self.gadget).iter().any(|f| f == MASS_STORAGE);
        let file = if linked { read(&lun.join("file"))? } else { String::new() };
        let attr = |name: &str| read(&lun.join(name)).unwrap_or_default();
        let m = medium(&file, &attr("cdrom"), &attr("ro"));
        out.single(
            "jetkvm_virtual_media_mounted",
            "Whether virtual media is inserted in the device's USB mass storage, and that function is in the gadget's configuration.",
            Kind::Gauge,
            if m.is_some() { 1.0 } else { 0.0 },
        );
        let Some(m) = m else { return Ok(()) };
        let kind = if m.cdrom { "cdrom" } else { "disk" };
        out.family(
            "jetkvm_virtual_media_info",
            "The inserted virtual media: its image's file name, source (local, nbd) and type (cdrom, disk); always 1.",
            Kind::Gauge,
        )
        .sample(&[("image", &m.image), ("source", m.source), ("type", kind)], 1.0);
        out.single(
            "jetkvm_virtual_media_read_only",
            "Whether the inserted virtual media is read-only to the host.",
            Kind::Gauge,
            if m.read_only { 1.0 } else { 0.0 },
        );
        if let Some(bytes) = self.size(&file, &m) {
            out.single(
                "jetkvm_virtual_media_size_bytes",
                "Size of the inserted virtual media.",
                Kind::Gauge,
                bytes as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media() {
        assert_eq!(medium("\n", "1", "1"), None);
        assert_eq!(
            medium("/userdata/jetkvm/images/debian.iso\n", "1\n", "1\n"),
            Some(Medium { source: "local", image: "debian.iso".into(), cdrom: true, read_only: true })
        );
        assert_eq!(
            medium("/dev/nbd0\n", "0\n", "0\n"),
            Some(Medium { source: "nbd", image: "nbd0".into(), cdrom: false, read_only: false })
        );
    }
}

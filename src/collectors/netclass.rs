//! Network link state from `/sys/class/net/<device>/`: carrier, speed,
//! duplex, operational state and carrier changes, as node_exporter's
//! netclass names them. A value the kernel does not give (`speed` is -1 on
//! some drivers; `carrier`, `speed` and `duplex` fail with EINVAL while the
//! link is down) is no sample, not a failure. Loopback is left out.

use std::path::{Path, PathBuf};

use super::collector::{io_error, read_optional, Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct NetClass {
    dir: PathBuf,
}

impl NetClass {
    pub fn new(sysfs: PathBuf) -> Self {
        NetClass { dir: sysfs.join("class/net") }
    }
}

/// What sysfs says of one interface; `None` where the kernel gives nothing.
#[derive(Debug, Default, PartialEq)]
pub struct Link {
    pub device: String,
    pub operstate: String,
    pub carrier: Option<bool>,
    /// Mbit/s.
    pub speed: Option<u64>,
    pub duplex: Option<String>,
    pub carrier_changes: Option<u64>,
}

/// One attribute's text, or `None` if the kernel refuses it (EINVAL while
/// the link is down) or the driver lacks it.
fn attr(dir: &Path, name: &str) -> Option<String> {
    read_optional(&dir.join(name)).map(|s| s.trim().to_owned())
}

/// The link of `dir` (`/sys/class/net/<device>`).
pub fn link(device: &str, dir: &Path) -> Link {
    let num = |name| attr(dir, name).and_then(|s| s.parse::<i64>().ok());
    Link {
        device: device.to_owned(),
        operstate: attr(dir, "operstate").unwrap_or_else(|| "unknown".into()),
        carrier: num("carrier").map(|c| c == 1),
        // -1 (SPEED_UNKNOWN) and anything negative: no speed known.
        speed: num("speed").and_then(|s| u64::try_from(s).ok()),
        duplex: attr(dir, "duplex").filter(|d| !d.is_empty() && d != "unknown"),
        carrier_changes: num("carrier_changes").and_then(|c| u64::try_from(c).ok()),
    }
}

impl Collector for NetClass {
    fn name(&self) -> &'static str {
        "netclass"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut links: Vec<Link> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(name, _)| name != "lo")
            .map(|(name, path)| link(&name, &path))
            .collect();
        if links.is_empty() {
            return Err(Error::NoData(format!("{}: no network interface", self.dir.display())));
        }
        links.sort_by(|a, b| a.device.cmp(&b.device));
        write(&links, out);
        Ok(())
    }
}

fn write(links: &[Link], out: &mut Families) {
    let mut f = out.family(
        "jetkvm_network_info",
        "A network interface's operational state and duplex (empty when unknown); always 1.",
        Kind::Gauge,
    );
    for l in links {
        let duplex = l.duplex.as_deref().unwrap_or("");
        f.sample(&[("device", &l.device), ("operstate", &l.operstate), ("duplex", duplex)], 1.0);
    }
    let mut f =
        out.family("jetkvm_network_up", "Whether an interface's operational state is up.", Kind::Gauge);
    for l in links {
        f.sample(&[("device", &l.device)], if l.operstate == "up" { 1.0 } else { 0.0 });
    }
    let mut f =
        out.family("jetkvm_network_carrier", "Whether an interface has a carrier (link).", Kind::Gauge);
    for l in links.iter().filter(|l| l.carrier.is_some()) {
        f.sample(&[("device", &l.device)], if l.carrier == Some(true) { 1.0 } else { 0.0 });
    }
    let mut f = out.family(
        "jetkvm_network_speed_bytes",
        "An interface's link speed, in bytes per second.",
        Kind::Gauge,
    );
    for l in links {
        if let Some(mbit) = l.speed {
            f.sample(&[("device", &l.device)], mbit as f64 * 1_000_000.0 / 8.0);
        }
    }
    let mut f = out.family(
        "jetkvm_network_carrier_changes_total",
        "Times an interface's carrier went up or down.",
        Kind::Counter,
    );
    for l in links {
        if let Some(n) = l.carrier_changes {
            f.sample(&[("device", &l.device)], n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn up_and_down_links() {
        let up = dir(&[
            ("operstate", "up\n"),
            ("carrier", "1\n"),
            ("speed", "100\n"),
            ("duplex", "full\n"),
            ("carrier_changes", "3\n"),
        ]);
        assert_eq!(
            link("eth0", up.path()),
            Link {
                device: "eth0".into(),
                operstate: "up".into(),
                carrier: Some(true),
                speed: Some(100),
                duplex: Some("full".into()),
                carrier_changes: Some(3),
            }
        );
        // Down: carrier, speed and duplex are not readable (no files here);
        // a driver that does not know its speed says -1.
        let down = dir(&[("operstate", "down\n"), ("speed", "-1\n"), ("carrier_changes", "4\n")]);
        let l = link("eth1", down.path());
        assert_eq!((l.carrier, l.speed, l.duplex.as_deref(), l.carrier_changes), (None, None, None, Some(4)));
    }
}

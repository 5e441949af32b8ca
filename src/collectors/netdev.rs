//! Network interface counters, through sysinfo (the live kernel's
//! `/sys/class/net/*/statistics`). sysinfo has no drop counters: those two
//! files of the same directory are read here.

use std::path::Path;
use std::sync::Mutex;

use sysinfo::Networks;

use super::{io_error, parse_error, read, Collector, Result};
use crate::metrics::{Families, Kind};

pub struct NetDev {
    networks: Mutex<Networks>,
}

impl NetDev {
    pub fn new() -> std::result::Result<Self, String> {
        let networks = Networks::new().map_err(|e| format!("network: {e}"))?;
        Ok(NetDev { networks: Mutex::new(networks) })
    }
}

/// One interface's counters, in the order of `FAMILIES`.
type Counters = [u64; 8];

const FAMILIES: [(&str, &str); 8] = [
    ("jetkvm_network_receive_bytes_total", "Bytes received by an interface."),
    ("jetkvm_network_receive_packets_total", "Packets received by an interface."),
    ("jetkvm_network_receive_errors_total", "Receive errors on an interface."),
    ("jetkvm_network_receive_drop_total", "Received packets an interface dropped."),
    ("jetkvm_network_transmit_bytes_total", "Bytes sent by an interface."),
    ("jetkvm_network_transmit_packets_total", "Packets sent by an interface."),
    ("jetkvm_network_transmit_errors_total", "Transmit errors on an interface."),
    ("jetkvm_network_transmit_drop_total", "Packets an interface dropped instead of sending."),
];

fn counter(statistics: &Path, name: &str) -> Result<u64> {
    let path = statistics.join(name);
    read(&path)?.trim().parse().map_err(|_| parse_error(&path, "not a counter"))
}

impl Collector for NetDev {
    fn name(&self) -> &'static str {
        "netdev"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let mut networks = self.networks.lock().unwrap_or_else(|p| p.into_inner());
        networks.refresh(true);
        let mut devices: Vec<(&str, Counters)> = Vec::new();
        for (name, data) in networks.iter() {
            let Some(name) = name.to_str() else { continue };
            let statistics = Path::new("/sys/class/net").join(name).join("statistics");
            // The directory sysinfo read: a counter missing there would be a
            // zero from sysinfo, so the interface is reported only whole.
            let (rx_drop, tx_drop) =
                match (counter(&statistics, "rx_dropped"), counter(&statistics, "tx_dropped")) {
                    (Ok(rx), Ok(tx)) => (rx, tx),
                    // Gone since sysinfo listed it.
                    _ if !statistics.exists() => continue,
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                };
            devices.push((
                name,
                [
                    data.total_received(),
                    data.total_packets_received(),
                    data.total_errors_on_received(),
                    rx_drop,
                    data.total_transmitted(),
                    data.total_packets_transmitted(),
                    data.total_errors_on_transmitted(),
                    tx_drop,
                ],
            ));
        }
        if devices.is_empty() {
            let dir = Path::new("/sys/class/net");
            return Err(match std::fs::read_dir(dir) {
                Err(e) => io_error(dir, e),
                Ok(_) => super::Error::NoData("no network interface".into()),
            });
        }
        devices.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (metric, help)) in FAMILIES.iter().enumerate() {
            let mut f = out.family(metric, help, Kind::Counter);
            for (name, values) in &devices {
                f.sample(&[("device", name)], values[i] as f64);
            }
        }
        Ok(())
    }
}

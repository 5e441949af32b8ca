//! TCP connections to the device's services: sockets whose local port is
//! one of `connection_ports`, by state. On the live `/proc` they come from
//! netlink `sock_diag` (see `sock_diag`), falling back to the text tables;
//! under any other `proc_root` from `net/tcp` and `net/tcp6` there.

use std::path::PathBuf;

use super::collector::{parse_error, read_table, under, Collector, Error, Result};
use crate::metrics::{Families, Kind};

/// Kernel TCP states, indexed by their `st` code minus one.
pub const STATES: [&str; 11] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

pub struct Tcp {
    procfs: PathBuf,
    ports: Vec<u16>,
    /// The ports as label values, made once.
    labels: Vec<String>,
    diag: super::sock_diag::Diag,
}

impl Tcp {
    pub fn new(procfs: PathBuf, ports: Vec<u16>) -> Self {
        let labels = ports.iter().map(u16::to_string).collect();
        Tcp { diag: super::sock_diag::Diag::new(&ports), procfs, ports, labels }
    }
}

impl Collector for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        // counts[port index][state index]
        let mut counts = vec![[0u64; STATES.len()]; self.ports.len()];
        if !self.ports.is_empty() {
            let live = self.procfs == std::path::Path::new("/proc");
            if !live
                || self
                    .diag
                    .count(&self.ports, &mut counts)
                    .map_err(|e| log::debug!("sock_diag: {e}; reading net/tcp"))
                    .is_err()
            {
                counts.fill(Default::default());
                self.count_tables(&mut counts)?;
            }
        }
        self.write(&counts, out);
        Ok(())
    }
}

impl Tcp {
    /// Counts the sockets in `net/tcp` and `net/tcp6` under the proc root.
    fn count_tables(&self, counts: &mut [[u64; STATES.len()]]) -> Result<()> {
        let mut found = 0;
        for file in ["net/tcp", "net/tcp6"] {
            let path = under(&self.procfs, file);
            let text = match read_table(&path) {
                Ok(t) => t,
                // A kernel without IPv6 has no tcp6: not an error.
                Err(Error::NoData(_)) => continue,
                Err(e) => return Err(e),
            };
            found += 1;
            for (port, state) in parse_sockets(&text).map_err(|e| parse_error(&path, e))? {
                if let Some(i) = self.ports.iter().position(|p| *p == port) {
                    counts[i][state as usize] += 1;
                }
            }
        }
        if found == 0 {
            return Err(Error::NoData(format!("{}: no net/tcp", self.procfs.display())));
        }
        Ok(())
    }

    fn write(&self, counts: &[[u64; STATES.len()]], out: &mut Families) {
        let mut f = out.family(
            "jetkvm_connections",
            "TCP sockets whose local port is one of the device's services, by state.",
            Kind::Gauge,
        );
        for (port, row) in self.labels.iter().zip(counts) {
            for (state, n) in STATES.iter().zip(row) {
                f.sample(&[("port", port), ("state", state)], *n as f64);
            }
        }
    }
}

/// Parses a `/proc/net/tcp{,6}` table into (local port, state index) pairs.
pub fn parse_sockets(text: &str) -> std::result::Result<Vec<(u16, u8)>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.trim_start().starts_with("sl") => {}
        _ => return Err("missing header line".into()),
    }
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let (_sl, local, _remote, st) = match (f.next(), f.next(), f.next(), f.next()) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => return Err(format!("line {}: too few fields", n + 2)),
        };
        let port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("line {}: bad local address {local:?}", n + 2))?;
        let state = u8::from_str_radix(st, 16)
            .ok()
            .filter(|s| (1..=STATES.len() as u8).contains(s))
            .ok_or_else(|| format!("line {}: bad state {st:?}", n + 2))?;
        out.push((port, state - 1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_sockets;

    const HEADER: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    #[test]
    fn ipv4_and_ipv6_rows() {
        let t = format!(
            "{HEADER}   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
             \x20  1: 0F02000A:0050 0202000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
             \x20  2: 00000000000000000000000001000000:1F4A 00000000000000000000000001000000:D431 06 0 0 0 0\n"
        );
        assert_eq!(parse_sockets(&t).unwrap(), vec![(80, 9), (80, 0), (8010, 5)]);
        assert_eq!(parse_sockets(HEADER).unwrap(), vec![]);
    }

    #[test]
    fn malformed() {
        for body in [
            "0: 0100007F:0050\n",                   // too few fields
            "0: 0100007F 00000000:0000 0A\n",       // no colon
            "0: 0100007F:ZZZZ 00000000:0000 0A\n",  // bad hex port
            "0: 0100007F:10000 00000000:0000 0A\n", // port overflow
            "0: 0100007F:0050 00000000:0000 0C\n",  // unknown state
            "0: 0100007F:0050 00000000:0000 00\n",  // state 0
            "0: 0100007F:0050 00000000:0000 XY\n",  // bad hex state
        ] {
            assert!(parse_sockets(&format!("{HEADER}{body}")).is_err(), "{body:?}");
        }
        assert!(parse_sockets("").is_err());
        assert!(parse_sockets("0: 0100007F:0050 00000000:0000 0A\n").is_err());
    }
}

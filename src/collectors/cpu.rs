//! Time the CPUs spent in each mode: the aggregate `cpu` line of `/proc/stat`.

use std::path::PathBuf;

use super::collector::{parse_error, read, under, user_hz, Collector, Result};
use crate::metrics::{Families, Kind};

/// Column order of the `cpu` line (guest time is already counted in user).
const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

pub struct Cpu {
    procfs: PathBuf,
}

impl Cpu {
    pub fn new(procfs: PathBuf) -> Self {
        Cpu { procfs }
    }
}

impl Collector for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let path = under(&self.procfs, "stat");
        let ticks = parse(&read(&path)?).ok_or_else(|| parse_error(&path, "malformed cpu line"))?;
        let hz = user_hz();
        let mut f =
            out.family("jetkvm_cpu_seconds_total", "Seconds the CPUs spent in each mode.", Kind::Counter);
        for (mode, t) in MODES.iter().zip(ticks) {
            f.sample(&[("mode", mode)], t as f64 / hz);
        }
        Ok(())
    }
}

/// Ticks per mode from the aggregate line; kernels older than 2.6.11 lack
/// `steal`, which then reads as 0.
pub fn parse(text: &str) -> Option<[u64; 8]> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let mut fields = line.split_whitespace().skip(1);
    let mut ticks = [0u64; 8];
    for (i, slot) in ticks.iter_mut().enumerate() {
        match fields.next() {
            Some(f) => *slot = f.parse().ok()?,
            None if i >= 4 => break,
            None => return None,
        }
    }
    Some(ticks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse() {
        let text = "cpu  100 2 30 4000 5 6 7 8 0 0\ncpu0 100 2 30 4000 5 6 7 8 0 0\n";
        assert_eq!(super::parse(text), Some([100, 2, 30, 4000, 5, 6, 7, 8]));
        assert_eq!(super::parse("cpu 1 2 3 4\n"), Some([1, 2, 3, 4, 0, 0, 0, 0]));
        for bad in ["", "cpu0 1 2 3 4\n", "cpu 1 2 3\n", "cpu 1 x 3 4\n", "cpu -1 2 3 4\n"] {
            assert_eq!(super::parse(bad), None, "{bad:?}");
        }
    }
}

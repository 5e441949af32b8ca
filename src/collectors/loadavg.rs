//! Load averages from `/proc/loadavg`.

use std::path::PathBuf;

use super::{parse_error, read, under, Collector, Result};
use crate::exposition::{Exposition, Kind};

pub struct LoadAvg {
    procfs: PathBuf,
}

impl LoadAvg {
    pub fn new(procfs: PathBuf) -> Self {
        LoadAvg { procfs }
    }
}

impl Collector for LoadAvg {
    fn name(&self) -> &'static str {
        "loadavg"
    }

    fn update(&self, out: &mut Exposition) -> Result<()> {
        let path = under(&self.procfs, "loadavg");
        let loads = parse(&read(&path)?).ok_or_else(|| parse_error(&path, "malformed"))?;
        for (name, v) in
            ["jetkvm_system_load1", "jetkvm_system_load5", "jetkvm_system_load15"].iter().zip(loads)
        {
            out.single(name, "Load average over the named number of minutes.", Kind::Gauge, v);
        }
        Ok(())
    }
}

/// "0.52 0.58 0.59 1/389 12345" -> the first three fields.
pub fn parse(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace();
    let mut v = [0.0; 3];
    for slot in &mut v {
        let x: f64 = it.next()?.parse().ok()?;
        if !x.is_finite() || x < 0.0 {
            return None;
        }
        *slot = x;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse() {
        assert_eq!(super::parse("0.52 0.58 0.59 1/389 12345\n"), Some([0.52, 0.58, 0.59]));
        for bad in ["", "0.1 0.2", "a b c", "0.1 -0.2 0.3", "0.1 inf 0.3"] {
            assert_eq!(super::parse(bad), None, "{bad:?}");
        }
    }
}

//! Memory totals from `/proc/meminfo`.

use std::path::PathBuf;

use super::{parse_error, read, under, Collector, Result};
use crate::exposition::{Exposition, Kind};

pub struct MemInfo {
    procfs: PathBuf,
}

impl MemInfo {
    pub fn new(procfs: PathBuf) -> Self {
        MemInfo { procfs }
    }
}

/// (field, metric, help)
const FIELDS: [(&str, &str, &str); 3] = [
    ("MemTotal", "jetkvm_memory_total_bytes", "Usable RAM."),
    (
        "MemAvailable",
        "jetkvm_memory_available_bytes",
        "Memory available for new work without swapping, as the kernel estimates it.",
    ),
    ("MemFree", "jetkvm_memory_free_bytes", "Memory not used at all."),
];

impl Collector for MemInfo {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn update(&self, out: &mut Exposition) -> Result<()> {
        let path = under(&self.procfs, "meminfo");
        let text = read(&path)?;
        let mut values = [0u64; FIELDS.len()];
        for (slot, (field, _, _)) in values.iter_mut().zip(FIELDS) {
            *slot = field_bytes(&text, field)
                .ok_or_else(|| parse_error(&path, format_args!("missing or malformed {field}")))?;
        }
        for (v, (_, metric, help)) in values.iter().zip(FIELDS) {
            out.single(metric, help, Kind::Gauge, *v as f64);
        }
        Ok(())
    }
}

/// "MemTotal:  1024 kB" -> 1048576.
pub fn field_bytes(text: &str, field: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let mut it = rest.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::field_bytes;

    #[test]
    fn fields() {
        let t = "MemTotal:         246580 kB\nMemFree:   1000 kB\nMemAvailableX: 1 kB\nHugePages_Total: 0\n";
        assert_eq!(field_bytes(t, "MemTotal"), Some(246580 * 1024));
        assert_eq!(field_bytes(t, "HugePages_Total"), Some(0));
        assert_eq!(field_bytes(t, "MemAvailable"), None);
        assert_eq!(field_bytes("MemTotal: x kB", "MemTotal"), None);
        assert_eq!(field_bytes("MemTotal: 1 MB", "MemTotal"), None);
        assert_eq!(field_bytes("MemTotal 1 kB", "MemTotal"), None);
        assert_eq!(field_bytes("MemTotal: 18446744073709551615 kB", "MemTotal"), None);
    }
}

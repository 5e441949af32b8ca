//! The other procfs/sysfs parsers, the token file and the configuration
//! file, on the same arbitrary text.
#![no_main]

use jetkvm_metrics::auth::token::Record;
use jetkvm_metrics::collectors::parsers;
use jetkvm_metrics::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parsers::cpu_stat(text);
    if let Some(l) = parsers::loadavg(text) {
        assert!(l.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
    let _ = parsers::meminfo_field(text, "MemTotal");
    let _ = parsers::net_dev(text);
    let _ = parsers::thermal_millidegrees(text);
    let _ = parsers::uptime(text);
    let _ = parsers::btime(text);
    let _ = Record::parse(text);
    let _ = Config::parse(text, "fuzz.toml");
});

//! The other procfs/sysfs parsers (what sysinfo does not read), the token
//! file and the configuration file, on the same arbitrary text.
#![no_main]

use jetkvm_metrics::auth::token::Record;
use jetkvm_metrics::collectors::parsers;
use jetkvm_metrics::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parsers::cpu_stat(text);
    let _ = parsers::net_dev(text);
    let _ = parsers::thermal_millidegrees(text);
    let _ = Record::parse(text);
    let _ = Config::parse(text, "fuzz.toml");
});

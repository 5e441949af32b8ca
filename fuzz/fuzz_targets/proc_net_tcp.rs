//! The `/proc/net/tcp` and `/proc/net/tcp6` parser.
#![no_main]

use jetkvm_metrics::collectors::parsers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(rows) = parsers::net_tcp(text) {
            for (_, state) in rows {
                assert!(state < 11);
            }
        }
    }
});

//! The device app's exposition as the daemon reads it: parsed, then merged
//! (prefixes, `source` removed) and encoded, on arbitrary text. The parser
//! bounds what it keeps; nothing may panic, and what merges must encode.
#![no_main]

use jetkvm_metrics::bridge::{kept, merge, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(families) = parse(text, kept) else { return };
    if let Ok(merged) = merge(families) {
        let _ = jetkvm_metrics::metrics::encode(&merged);
    }
});

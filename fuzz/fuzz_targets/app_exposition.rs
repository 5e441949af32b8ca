//! The device app's exposition as the daemon reads it, on arbitrary text:
//! merged line by line (prefixes, `source` removed, hostile families
//! dropped) and encoded. Nothing may panic, and the oracle: what the
//! daemon writes reads back whole through the same reader (every family
//! once, none to drop), and merging it again changes nothing but the
//! renamed build info, which is not one of the app's families.
#![no_main]

use jetkvm_metrics::app_metrics::merge_text;
use jetkvm_metrics::metrics::encode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(merged) = merge_text(text) else { return };
    let out = String::from_utf8(encode(&merged.families)).expect("the encoder writes UTF-8");
    let again = merge_text(&out).unwrap_or_else(|e| panic!("our own output refused: {e}\n{out}"));
    assert!(again.dropped.is_empty(), "our own output dropped: {:?}\n{out}", again.dropped);
    let apps: Vec<_> = merged.families.into_iter().filter(|f| f.get_name() != "jetkvm_app_build_info").collect();
    assert_eq!(encode(&again.families), encode(&apps), "merging twice changed it");
});

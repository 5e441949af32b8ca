//! The `Authorization` and `Cookie` parsers on arbitrary header values.
#![no_main]

use jetkvm_metrics::auth::{basic, cookie};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Up to three header values, split at 0xff bytes (never valid in one):
    // the odd ones as Authorization, every one as Cookie.
    let parts: Vec<&[u8]> = data.split(|b| *b == 0xff).take(3).collect();
    let authorization: Vec<&[u8]> = parts.iter().step_by(2).copied().collect();
    if let Ok(Some(basic::Authorization::Basic(p))) = basic::parse(&authorization) {
        assert!(p.as_bytes().len() <= data.len());
    }
    if let Ok(tokens) = cookie::session_tokens(&parts) {
        for t in &tokens {
            cookie::matches(&[t], "4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c90");
        }
    }
});

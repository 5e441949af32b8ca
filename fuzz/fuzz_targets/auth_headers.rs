//! The `Authorization` and `Cookie` parsers on arbitrary header values.
#![no_main]

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use jetkvm_metrics::auth::{basic, cookie};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Up to three header values, split at 0xff bytes (never valid in one).
    let mut h = HeaderMap::new();
    for (i, part) in data.split(|b| *b == 0xff).take(3).enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            h.append(if i % 2 == 0 { AUTHORIZATION } else { COOKIE }, v.clone());
            h.append(COOKIE, v);
        }
    }
    if let Ok(Some(basic::Authorization::Basic(p))) = basic::parse(&h) {
        assert!(p.as_bytes().len() <= data.len());
    }
    if let Ok(tokens) = cookie::session_tokens(&h) {
        for t in &tokens {
            cookie::matches(&[t], "4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c90");
        }
    }
});

//! The device's `kvm_config.json` reader: anything that parses must be a
//! known mode, and a usable hash must have the supported bcrypt form.
#![no_main]

use jetkvm_metrics::device::{is_supported_bcrypt, DeviceConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = DeviceConfig::parse(data) {
        if let Some(h) = &d.hashed_password {
            assert!(is_supported_bcrypt(h));
        }
        if let Some(t) = &d.session_token {
            assert!(!t.is_empty());
        }
    }
});

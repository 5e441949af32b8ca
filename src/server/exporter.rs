//! The exporter's own state as a collector like the others: its listeners
//! and their TLS, and whether the device's auth state and the token file
//! last loaded. It reads what the server and the decision hold; it changes
//! nothing (the device's TLS is brought up to date before a scrape, see
//! `middleware::follow_device`).

use std::sync::Arc;

use super::listener::Listener;
use crate::auth::token::TokenStore;
use crate::collectors::{Collector, Families, Kind, Result};
use crate::device::DeviceState;
use crate::tls::device::Serving;

pub struct Exporter {
    pub listeners: Vec<Arc<Listener>>,
    pub device: Arc<DeviceState>,
    pub tokens: Arc<TokenStore>,
}

impl Collector for Exporter {
    fn name(&self) -> &'static str {
        "exporter"
    }

    /// Listener, TLS, token and device-config state.
    fn update(&self, out: &mut Families) -> Result<()> {
        out.single(
            "jetkvm_exporter_device_config_load_success",
            "Whether the device's auth state (kvm_config.json) was last read successfully (an absent file, a device not set up yet, counts as success).",
            Kind::Gauge,
            if self.device.load_ok() { 1.0 } else { 0.0 },
        );
        let mut f = out.family(
            "jetkvm_exporter_listener_info",
            "A listener of this exporter: its role and TLS mode (none, tls, mtls, or pending: the device wants TLS and has no certificate yet, so plain HTTP is refused); always 1.",
            Kind::Gauge,
        );
        for l in &self.listeners {
            let addr = l.address().to_string();
            f.sample(&[("listener", l.role.label()), ("address", &addr), ("tls", l.tls_label())], 1.0);
        }
        // What each TLS listener serves: (role, last reload ok, certificates).
        let mut tls = Vec::new();
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                tls.push((l.role, t.reload_ok(), t.serving().not_after.clone()));
            } else if let Some(d) = &l.device_tls {
                match d.serving() {
                    Serving::Tls(b) => tls.push((l.role, d.reload_ok(), b.not_after.clone())),
                    Serving::Pending(_) => tls.push((l.role, d.reload_ok(), Vec::new())),
                    Serving::Off => {}
                }
            }
        }
        if !tls.is_empty() {
            let mut f = out.family(
                "jetkvm_exporter_tls_reload_success",
                "Whether the last load of a listener's certificate, key and CA files succeeded (0: still serving the previous ones).",
                Kind::Gauge,
            );
            for (role, ok, _) in &tls {
                f.sample(&[("listener", role.label())], if *ok { 1.0 } else { 0.0 });
            }
            let mut f = out.family(
                "jetkvm_exporter_tls_certificate_not_after_seconds",
                "Expiry of a served certificate, in seconds since the Unix epoch.",
                Kind::Gauge,
            );
            for (_, _, not_after) in &tls {
                for (file, not_after) in not_after {
                    f.sample(&[("cert_file", &file.to_string_lossy())], *not_after as f64);
                }
            }
        }
        out.single(
            "jetkvm_exporter_token_load_success",
            "Whether the metrics token file was last read successfully (an absent file counts as success).",
            Kind::Gauge,
            if self.tokens.load_ok() { 1.0 } else { 0.0 },
        );
        Ok(())
    }
}

//! One listener: its role, address and TLS (its own certificates, or the
//! device's it follows).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::tls::{self, device::Following};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `listen_addr`: `/`, `/healthz`, and `/metrics` unless the metrics
    /// service is enabled.
    General,
    /// `metrics_service.listen_addr`.
    MetricsService,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::General => "general",
            Role::MetricsService => "metrics_service",
        }
    }

    pub fn config_key(self) -> &'static str {
        match self {
            Role::General => "listen_addr",
            Role::MetricsService => "metrics_service.listen_addr",
        }
    }
}

/// One listener's configuration.
pub struct Listener {
    pub role: Role,
    /// As configured (the port may be 0).
    pub addr: SocketAddr,
    /// As bound.
    pub bound: std::sync::OnceLock<SocketAddr>,
    pub tls: Option<Arc<tls::Acceptor>>,
    /// The general listener's TLS when it follows the device's
    /// (`follow_device_tls`).
    pub device_tls: Option<Following>,
    pub serves_metrics: bool,
}

impl Listener {
    pub fn address(&self) -> SocketAddr {
        *self.bound.get().unwrap_or(&self.addr)
    }

    pub fn tls_label(&self) -> &'static str {
        use tls::device::Serving;
        match (&self.tls, &self.device_tls) {
            (Some(t), _) if t.mtls() => "mtls",
            (Some(_), _) => "tls",
            (None, Some(d)) => match d.serving() {
                Serving::Off => "none",
                Serving::Tls(_) => "tls",
                Serving::Pending(_) => "pending",
            },
            (None, None) => "none",
        }
    }

    /// Whether this listener may answer in clear now: never while it
    /// follows a device whose TLS is on (or wanted, certificates pending).
    pub async fn clear_allowed(&self) -> bool {
        match &self.device_tls {
            None => true,
            Some(d) => d.clear_allowed().await,
        }
    }
}

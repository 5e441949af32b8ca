//! What every request shares: the configuration, the one decision, the
//! collectors, the daemon's counters and the listeners (each with its role and
//! TLS).

use std::sync::Arc;
use std::time::Duration;

use super::exporter::Exporter;
use super::listener::{Listener, Role};
use super::loglimit::LogLimiter;
use crate::app_metrics::Bridge;
use crate::auth::Authenticator;
use crate::capture_holders::Holders;
use crate::collectors::Collectors;
use crate::config::Config;
use crate::device::DeviceState;
use crate::telemetry::Telemetry;
use crate::tls::{self, device::Following};

/// Everything a request needs, shared by the listeners.
pub struct State {
    pub config: Config,
    pub auth: Authenticator,
    /// The collectors, run on each scrape.
    pub collectors: Collectors,
    /// The device app's metrics, asked for before each gathering.
    pub app_metrics: Option<Arc<Bridge>>,
    /// The daemon's own counters.
    pub telemetry: Telemetry,
    pub listeners: Vec<Arc<Listener>>,
    pub refusal_log: LogLimiter,
    /// One scrape at a time: what a scrape asks before its collectors run
    /// (the app's answer, the capture question) is kept for its own
    /// gathering, never taken by another's that overtook it at an await.
    pub scrape_turn: tokio::sync::Mutex<()>,
}

impl State {
    /// Builds the state and the listeners' TLS; fails if a certificate or
    /// key cannot be used (never falls back to plaintext).
    pub fn new(config: Config, holders: Option<Holders>) -> Result<Arc<State>, String> {
        let device = Arc::new(DeviceState::new(config.device_config.clone()));
        let mut listeners = vec![Arc::new(Listener {
            role: Role::General,
            addr: config.listen_addr,
            bound: Default::default(),
            tls: None,
            device_tls: config.follow_device_tls.then(|| {
                let files = tls::DeviceTls::new(config.device_tls_dir.clone(), config.host_names.clone());
                Following::new(device.clone(), files)
            }),
            serves_metrics: config.metrics_service.is_none(),
        })];
        if let Some(ms) = &config.metrics_service {
            let tls = if ms.keypairs.is_empty() {
                None
            } else {
                Some(Arc::new(tls::Acceptor::new(ms).map_err(|e| crate::startup::tls_problem(&config, &e))?))
            };
            listeners.push(Arc::new(Listener {
                role: Role::MetricsService,
                addr: ms.listen_addr,
                bound: Default::default(),
                tls,
                device_tls: None,
                serves_metrics: true,
            }));
        }
        let auth = Authenticator::new(&config, device.clone());
        let exporter = Exporter { listeners: listeners.clone(), device, tokens: auth.tokens().clone() };
        let bridge = Bridge::new(&config.app_metrics);
        let mut collectors = Collectors::new(&config, holders).map_err(|e| format!("metrics: {e}"))?;
        if let Some(b) = &bridge {
            collectors.push(b.collector()).map_err(|e| format!("metrics: {e}"))?;
        }
        collectors.push(Box::new(exporter)).map_err(|e| format!("metrics: {e}"))?;
        Ok(Arc::new(State {
            auth,
            telemetry: Telemetry::new(),
            collectors,
            app_metrics: bridge,
            refusal_log: LogLimiter::new(20, Duration::from_secs(60)),
            scrape_turn: tokio::sync::Mutex::new(()),
            listeners,
            config,
        }))
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.listeners.iter().find(|l| l.role == Role::MetricsService).map(|l| l.address().port())
    }
}

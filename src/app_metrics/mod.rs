//! The device app's own metrics (cloud link, sessions, time sync, DC
//! power), re-exposed behind this daemon's authentication. The app serves
//! them on loopback with none. Each scrape first asks the app (`fetch`,
//! awaited with a deadline before the collectors run, so the one
//! worker never blocks), reads the answer line by line as it arrives
//! (`exposition`) and keeps and merges what belongs to the app as it goes
//! (`merge`: every bound counts merged series, so the app's clients cannot
//! push its metrics out); the `app_metrics` collector hands that to the
//! scrape with the families it had to drop, or reports success 0 when the
//! app did not answer.
//! An app that asks for credentials (newer builds may protect its
//! `/metrics`) is a state, not a failure: `jetkvm_app_metrics_auth_required`
//! says so, and one log line when it starts and one when it ends.

mod exposition;
mod fetch;
mod merge;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::collectors::{Collector, Error, Families, Kind, Result};
use crate::config::AppMetrics;

use fetch::Failure;
pub use fetch::Lines;
pub use merge::{kept, merge_text, Merged, Merger};

/// The app's address, the deadline, and what the last scrape got.
pub struct Bridge {
    address: SocketAddr,
    timeout: Duration,
    last: Mutex<Option<Fetched>>,
}

struct Fetched {
    took: Duration,
    result: std::result::Result<Merged, Failure>,
}

impl Bridge {
    /// `None` when no address is configured.
    pub fn new(config: &AppMetrics) -> Option<Arc<Bridge>> {
        let address = config.address?;
        Some(Arc::new(Bridge { address, timeout: config.timeout, last: Mutex::new(None) }))
    }

    /// Asks the app, within the deadline, and keeps what it said for the
    /// gathering that follows.
    pub async fn refresh(&self) {
        let start = Instant::now();
        let mut merger = Merger::default();
        let result = match tokio::time::timeout(self.timeout, fetch::get(self.address, &mut merger)).await {
            Ok(Ok(())) => Ok(merger.finish()),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::Other(format!("{}: no answer within {:?}", self.address, self.timeout))),
        };
        let fetched = Fetched { took: start.elapsed(), result };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(fetched);
    }

    /// The collector that hands the last answer to the scrape.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(AppMetricsCollector {
            bridge: self.clone(),
            auth_required: Mutex::new(false),
            dropped: Mutex::new(Vec::new()),
        })
    }
}

struct AppMetricsCollector {
    bridge: Arc<Bridge>,
    /// Whether the app asked for credentials last time: the log says
    /// when that starts and ends, not on every scrape.
    auth_required: Mutex<bool>,
    /// The families dropped from the last answer, and why: logged when
    /// that changes.
    dropped: Mutex<Vec<(String, String)>>,
}

impl AppMetricsCollector {
    fn dropped(&self, now: &[(String, String)]) {
        let mut was = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if *was != now {
            let said: Vec<String> = now.iter().map(|(name, why)| format!("{name} ({why})")).collect();
            match said.is_empty() {
                true => log::info!("app metrics: no family of the app's dropped any more"),
                false => log::warn!("app metrics: dropped {}", said.join(", ")),
            }
            *was = now.to_vec();
        }
    }

    fn auth_required(&self, now: bool, why: &str) {
        let mut was = self.auth_required.lock().unwrap_or_else(|e| e.into_inner());
        match (*was, now) {
            (false, true) => {
                log::warn!("app metrics: {why}; its metrics are not re-exposed until it stops asking")
            }
            (true, false) => log::info!("app metrics: the app serves its metrics without credentials again"),
            _ => {}
        }
        *was = now;
    }
}

impl Collector for AppMetricsCollector {
    fn name(&self) -> &'static str {
        "app_metrics"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        // Taken, not copied: each gathering follows its own asking.
        let last = self.bridge.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let fetched = last.ok_or_else(|| Error::NoData("not asked yet".into()))?;
        let result = match fetched.result {
            Ok(merged) => {
                out.extend(merged.families);
                self.auth_required(false, "");
                self.dropped(&merged.dropped);
                Ok((false, merged.dropped.len()))
            }
            Err(Failure::Unauthorized(why)) => {
                self.auth_required(true, &why);
                Ok((true, 0))
            }
            Err(Failure::Refused(msg)) => Err(Error::NoData(msg)),
            Err(Failure::Other(msg)) => Err(Error::Failed(msg)),
        };
        let (auth_required, dropped) = result?;
        out.single(
            "jetkvm_app_metrics_families_dropped",
            "Families of the device app's last answer not re-exposed: not mergeable, or past a bound after merging (see the log).",
            Kind::Gauge,
            dropped as f64,
        );
        out.single(
            "jetkvm_app_metrics_auth_required",
            "Whether the device app asked for credentials for its own metrics (then they are not re-exposed).",
            Kind::Gauge,
            if auth_required { 1.0 } else { 0.0 },
        );
        out.single(
            "jetkvm_app_metrics_fetch_duration_seconds",
            "Time the device app took to answer for its own metrics.",
            Kind::Gauge,
            fetched.took.as_secs_f64(),
        );
        Ok(())
    }
}

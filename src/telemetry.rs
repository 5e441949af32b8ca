//! The daemon's own counters (auth outcomes, HTTP errors, evictions), as
//! `prometheus` counters in the registry the collectors are in.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, Result};

use crate::auth::{Method, Reason};

/// Connection-level problems actix or our limits ended a connection for.
#[derive(Clone, Copy, Debug)]
pub enum HttpError {
    /// Malformed request line or headers.
    Parse,
    /// Request head over the size or count limit.
    TooLarge,
    /// Request head not complete in time, or a stalled write.
    Timeout,
    /// A TLS handshake that failed for a reason other than the client's
    /// certificate (plaintext on a TLS port, no shared protocol, ...).
    TlsHandshake,
    /// Other I/O errors (resets and the like).
    Io,
    /// A plain-HTTP request on the general listener while it serves the
    /// device's TLS: answered 400 before any credential is looked at.
    PlainHttp,
}

impl HttpError {
    pub const ALL: [HttpError; 6] = [
        HttpError::Parse,
        HttpError::TooLarge,
        HttpError::Timeout,
        HttpError::TlsHandshake,
        HttpError::Io,
        HttpError::PlainHttp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HttpError::Parse => "parse",
            HttpError::TooLarge => "too_large",
            HttpError::Timeout => "timeout",
            HttpError::TlsHandshake => "tls_handshake",
            HttpError::Io => "io",
            HttpError::PlainHttp => "plain_http",
        }
    }
}

/// The daemon's counters, registered in the same `prometheus` registry as
/// the collectors. One handle per label value, made at start: counting is
/// an atomic add, and every series is exposed from the first scrape on.
pub struct Telemetry {
    auth_failures: Vec<IntCounter>,
    auth_successes: Vec<IntCounter>,
    http_errors: Vec<IntCounter>,
    bad_requests: IntCounter,
    evicted: IntCounter,
    refused: IntCounter,
    scrapes: IntCounter,
}

/// A counter family with one label, a handle for each of `values`.
fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> Result<Vec<IntCounter>> {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(vec.clone()))?;
    Ok(values.iter().map(|v| vec.with_label_values(&[*v])).collect())
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Telemetry {
    pub fn new(registry: &Registry) -> Result<Telemetry> {
        let build = IntGaugeVec::new(
            Opts::new("jetkvm_exporter_build_info", "Version and target of this exporter; always 1."),
            &["version", "target"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::TARGET]).set(1);
        registry.register(Box::new(build))?;
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        let methods: Vec<&str> = Method::ALL.iter().map(|m| m.label()).collect();
        let errors: Vec<&str> = HttpError::ALL.iter().map(|e| e.label()).collect();
        Ok(Telemetry {
            auth_failures: counter_vec(
                registry,
                "jetkvm_exporter_auth_failures_total",
                "Requests for metrics or the settings page refused, by reason.",
                "reason",
                &reasons,
            )?,
            auth_successes: counter_vec(
                registry,
                "jetkvm_exporter_auth_successes_total",
                "Requests for metrics or the settings page allowed, by method.",
                "method",
                &methods,
            )?,
            http_errors: counter_vec(
                registry,
                "jetkvm_exporter_http_errors_total",
                "Connections ended for malformed, oversized or stalled requests, plain HTTP while the device's TLS is on, or I/O errors.",
                "reason",
                &errors,
            )?,
            bad_requests: counter(
                registry,
                "jetkvm_exporter_http_bad_requests_total",
                "Requests answered 4xx for their form, not their credentials (method not allowed, a malformed settings form, a format or encoding the client refuses).",
            )?,
            evicted: counter(
                registry,
                "jetkvm_exporter_connections_evicted_total",
                "Idle connections closed to make room under the connection limit.",
            )?,
            refused: counter(
                registry,
                "jetkvm_exporter_connections_refused_total",
                "New connections closed at once because every open connection was busy.",
            )?,
            scrapes: counter(
                registry,
                "jetkvm_exporter_scrapes_total",
                "Scrapes served, this one included.",
            )?,
        })
    }

    pub fn auth_failure(&self, r: Reason) {
        self.auth_failures[r as usize].inc();
    }

    pub fn auth_success(&self, m: Method) {
        self.auth_successes[m as usize].inc();
    }

    pub fn http_error(&self, e: HttpError) {
        self.http_errors[e as usize].inc();
    }

    /// A request refused before auth (bad method, unknown path is not one).
    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    pub fn evicted(&self) {
        self.evicted.inc();
    }

    /// A new connection closed at once: every open one was busy.
    pub fn refused(&self) {
        self.refused.inc();
    }

    pub fn scrape(&self) {
        self.scrapes.inc();
    }
}

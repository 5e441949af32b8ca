//! The daemon's own counters (auth outcomes, HTTP errors, evictions), as
//! `prometheus` counters, exposed beside the collectors' families.

use std::sync::{Mutex, MutexGuard};

use prometheus::{IntCounter, Result};

use crate::auth::{Method, Reason};
use crate::metrics::{Families, Kind};

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

/// The daemon's counters. One `prometheus` counter per label value, made
/// at start: counting is an atomic add, and every series is exposed from
/// the first scrape on. A scrape writes their values into families kept
/// between scrapes (`metrics::Families`), as the collectors do; a
/// `prometheus::Registry` would build every family, label pair and sample
/// again on each scrape.
pub struct Telemetry {
    auth_failures: Vec<IntCounter>,
    auth_successes: Vec<IntCounter>,
    http_errors: Vec<IntCounter>,
    bad_requests: IntCounter,
    evicted: IntCounter,
    refused: IntCounter,
    scrapes: IntCounter,
    kept: Mutex<Families>,
}

const AUTH_FAILURES: (&str, &str) =
    ("jetkvm_exporter_auth_failures_total", "Requests for metrics or the settings page refused, by reason.");
const AUTH_SUCCESSES: (&str, &str) =
    ("jetkvm_exporter_auth_successes_total", "Requests for metrics or the settings page allowed, by method.");
const HTTP_ERRORS: (&str, &str) = (
    "jetkvm_exporter_http_errors_total",
    "Connections ended for malformed, oversized or stalled requests, plain HTTP while the device's TLS is on, or I/O errors.",
);
const SINGLE: [(&str, &str); 4] = [
    (
        "jetkvm_exporter_http_bad_requests_total",
        "Requests answered 4xx for their form, not their credentials (method not allowed, a malformed settings form, a format or encoding the client refuses).",
    ),
    ("jetkvm_exporter_connections_evicted_total", "Idle connections closed to make room under the connection limit."),
    (
        "jetkvm_exporter_connections_refused_total",
        "New connections closed at once because every open connection was busy.",
    ),
    ("jetkvm_exporter_scrapes_total", "Scrapes served, this one included."),
];

/// A counter, never registered: the name and help it must have are never
/// read (the families above carry them).
fn counter() -> Result<IntCounter> {
    IntCounter::new("c", "c")
}

/// A counter for each label value.
fn counters(n: usize) -> Result<Vec<IntCounter>> {
    (0..n).map(|_| counter()).collect()
}

impl Telemetry {
    pub fn new() -> Result<Telemetry> {
        Ok(Telemetry {
            auth_failures: counters(Reason::ALL.len())?,
            auth_successes: counters(Method::ALL.len())?,
            http_errors: counters(HttpError::ALL.len())?,
            bad_requests: counter()?,
            evicted: counter()?,
            refused: counter()?,
            scrapes: counter()?,
            kept: Mutex::new(Families::new()),
        })
    }

    /// The counters' families, with this moment's values.
    pub fn families(&self) -> MutexGuard<'_, Families> {
        let mut f = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        f.begin();
        f.family("jetkvm_exporter_build_info", "Version and target of this exporter; always 1.", Kind::Gauge)
            .sample(&[("target", crate::TARGET), ("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let by_label = |f: &mut Families,
                        (name, help): (&str, &str),
                        label,
                        values: &[IntCounter],
                        labels: &mut dyn Iterator<Item = &'static str>| {
            let mut family = f.family(name, help, Kind::Counter);
            for (c, value) in values.iter().zip(labels) {
                family.sample(&[(label, value)], c.get() as f64);
            }
        };
        by_label(
            &mut f,
            AUTH_FAILURES,
            "reason",
            &self.auth_failures,
            &mut Reason::ALL.iter().map(|r| r.label()),
        );
        by_label(
            &mut f,
            AUTH_SUCCESSES,
            "method",
            &self.auth_successes,
            &mut Method::ALL.iter().map(|m| m.label()),
        );
        by_label(
            &mut f,
            HTTP_ERRORS,
            "reason",
            &self.http_errors,
            &mut HttpError::ALL.iter().map(|e| e.label()),
        );
        for ((name, help), c) in
            SINGLE.iter().zip([&self.bad_requests, &self.evicted, &self.refused, &self.scrapes])
        {
            f.single(name, help, Kind::Counter, c.get() as f64);
        }
        f.finish();
        f
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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

    /// The same counters in a `prometheus::Registry`, as they were
    /// exposed before: the kept families must encode to the same text.
    #[test]
    fn encodes_as_the_registry_did() {
        let t = Telemetry::new().unwrap();
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("jetkvm_exporter_build_info", "Version and target of this exporter; always 1."),
            &["version", "target"],
        )
        .unwrap();
        build.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::TARGET]).set(1);
        r.register(Box::new(build)).unwrap();
        let vec = |(name, help): (&str, &str), label: &str, values: Vec<&str>| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).unwrap();
            r.register(Box::new(v.clone())).unwrap();
            values.into_iter().map(|x| v.with_label_values(&[x])).collect::<Vec<_>>()
        };
        let failures = vec(AUTH_FAILURES, "reason", Reason::ALL.iter().map(|r| r.label()).collect());
        let successes = vec(AUTH_SUCCESSES, "method", Method::ALL.iter().map(|m| m.label()).collect());
        let errors = vec(HTTP_ERRORS, "reason", HttpError::ALL.iter().map(|e| e.label()).collect());
        let single: Vec<_> = SINGLE
            .iter()
            .map(|(name, help)| {
                let c = IntCounter::new(*name, *help).unwrap();
                r.register(Box::new(c.clone())).unwrap();
                c
            })
            .collect();
        let text =
            |t: &Telemetry| String::from_utf8(crate::metrics::encode_gathered(t.families().iter().collect()));
        let want = || String::from_utf8(crate::metrics::encode(&r.gather()));
        assert_eq!(text(&t), want());
        // Counts land on their own series, and a second scrape updates them.
        for _ in 0..2 {
            t.auth_failure(Reason::ALL[3]);
            failures[3].inc();
            t.auth_success(Method::ALL[1]);
            successes[1].inc();
            t.http_error(HttpError::Timeout);
            errors[HttpError::Timeout as usize].inc();
            t.bad_request();
            t.evicted();
            t.refused();
            t.scrape();
            single.iter().for_each(IntCounter::inc);
            assert_eq!(text(&t), want());
        }
    }
}

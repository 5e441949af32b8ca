//! The daemon's own counters (auth outcomes, HTTP errors, evictions), as
//! atomics, exposed beside the collectors' families.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use crate::auth::{Method, Reason};
use crate::metrics::{Families, Kind};

/// Connection-level problems actix or our limits ended a connection for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The daemon's counters: atomics, made at start, so counting is one atomic
/// add and every series is exposed from the first scrape on. A scrape
/// writes their values into families kept between scrapes
/// (`metrics::Families`), as the collectors do; a `prometheus::Registry`
/// would build every family, label pair and sample again on each scrape,
/// and its counters need names of their own that nothing here reads.
pub struct Telemetry {
    auth_failures: ByLabel<Reason>,
    auth_successes: ByLabel<Method>,
    http_errors: ByLabel<HttpError>,
    bad_requests: Single,
    evicted: Single,
    refused: Single,
    scrapes: Single,
    kept: Mutex<Families>,
}

/// A counter family with one label: a count per label value, found by the
/// value itself, never by an enum's position.
struct ByLabel<T: 'static> {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    counts: Vec<(T, &'static str, AtomicU64)>,
}

impl<T: Copy + PartialEq> ByLabel<T> {
    fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        all: &[T],
        value: fn(T) -> &'static str,
    ) -> Self {
        ByLabel { name, help, label, counts: all.iter().map(|&t| (t, value(t), AtomicU64::new(0))).collect() }
    }

    fn inc(&self, t: T) {
        let found = self.counts.iter().find(|(x, ..)| *x == t);
        debug_assert!(found.is_some(), "{}: a value missing from its ALL", self.name);
        if let Some((.., c)) = found {
            c.fetch_add(1, Relaxed);
        }
    }

    fn write(&self, f: &mut Families) {
        let mut family = f.family(self.name, self.help, Kind::Counter);
        for (_, value, c) in &self.counts {
            family.sample(&[(self.label, value)], c.load(Relaxed) as f64);
        }
    }
}

/// A counter without labels.
struct Single {
    name: &'static str,
    help: &'static str,
    count: AtomicU64,
}

impl Single {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Single { name, help, count: AtomicU64::new(0) }
    }

    fn inc(&self) {
        self.count.fetch_add(1, Relaxed);
    }

    fn write(&self, f: &mut Families) {
        f.single(self.name, self.help, Kind::Counter, self.count.load(Relaxed) as f64);
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry {
            auth_failures: ByLabel::new(
                "jetkvm_exporter_auth_failures_total",
                "Requests for metrics or the settings page refused, by reason.",
                "reason",
                &Reason::ALL,
                Reason::label,
            ),
            auth_successes: ByLabel::new(
                "jetkvm_exporter_auth_successes_total",
                "Requests for metrics or the settings page allowed, by method.",
                "method",
                &Method::ALL,
                Method::label,
            ),
            http_errors: ByLabel::new(
                "jetkvm_exporter_http_errors_total",
                "Connections ended for malformed, oversized or stalled requests, plain HTTP while the device's TLS is on, or I/O errors.",
                "reason",
                &HttpError::ALL,
                HttpError::label,
            ),
            bad_requests: Single::new(
                "jetkvm_exporter_http_bad_requests_total",
                "Requests answered 4xx for their form, not their credentials (method not allowed, a malformed settings form, a format or encoding the client refuses).",
            ),
            evicted: Single::new(
                "jetkvm_exporter_connections_evicted_total",
                "Idle connections closed to make room under the connection limit.",
            ),
            refused: Single::new(
                "jetkvm_exporter_connections_refused_total",
                "New connections closed at once because every open connection was busy.",
            ),
            scrapes: Single::new("jetkvm_exporter_scrapes_total", "Scrapes served, this one included."),
            kept: Mutex::new(Families::new()),
        }
    }

    /// The counters' families, with this moment's values.
    pub fn families(&self) -> MutexGuard<'_, Families> {
        let mut f = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        f.begin();
        f.family("jetkvm_exporter_build_info", "Version and target of this exporter; always 1.", Kind::Gauge)
            .sample(&[("target", crate::TARGET), ("version", env!("CARGO_PKG_VERSION"))], 1.0);
        self.auth_failures.write(&mut f);
        self.auth_successes.write(&mut f);
        self.http_errors.write(&mut f);
        for c in [&self.bad_requests, &self.evicted, &self.refused, &self.scrapes] {
            c.write(&mut f);
        }
        f.finish();
        f
    }

    pub fn auth_failure(&self, r: Reason) {
        self.auth_failures.inc(r);
    }

    pub fn auth_success(&self, m: Method) {
        self.auth_successes.inc(m);
    }

    pub fn http_error(&self, e: HttpError) {
        self.http_errors.inc(e);
    }

    /// A request refused before auth for its form (bad method, a format
    /// the client refuses); an unknown path is not one.
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
    use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

    /// A family's counters in `r`, every label value made.
    fn register<T: Copy + PartialEq>(r: &Registry, c: &ByLabel<T>) -> IntCounterVec {
        let v = IntCounterVec::new(Opts::new(c.name, c.help), &[c.label]).unwrap();
        r.register(Box::new(v.clone())).unwrap();
        for (_, value, _) in &c.counts {
            v.with_label_values(&[value]);
        }
        v
    }

    /// The same counters in a `prometheus::Registry`, as they were
    /// exposed before: the kept families must encode to the same text.
    #[test]
    fn encodes_as_the_registry_did() {
        let t = Telemetry::new();
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("jetkvm_exporter_build_info", "Version and target of this exporter; always 1."),
            &["version", "target"],
        )
        .unwrap();
        build.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::TARGET]).set(1);
        r.register(Box::new(build)).unwrap();
        let failures = register(&r, &t.auth_failures);
        let successes = register(&r, &t.auth_successes);
        let errors = register(&r, &t.http_errors);
        let single: Vec<_> = [&t.bad_requests, &t.evicted, &t.refused, &t.scrapes]
            .iter()
            .map(|s| {
                let c = IntCounter::new(s.name, s.help).unwrap();
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
            failures.with_label_values(&[Reason::ALL[3].label()]).inc();
            t.auth_success(Method::ALL[1]);
            successes.with_label_values(&[Method::ALL[1].label()]).inc();
            t.http_error(HttpError::Timeout);
            errors.with_label_values(&[HttpError::Timeout.label()]).inc();
            t.bad_request();
            t.evicted();
            t.refused();
            t.scrape();
            single.iter().for_each(IntCounter::inc);
            assert_eq!(text(&t), want());
        }
    }

    /// Every label value is its own series: none lost, none twice.
    #[test]
    fn every_label_value_once() {
        let t = Telemetry::new();
        for (name, labels) in [
            ("failures", Reason::ALL.iter().map(|r| r.label()).collect::<Vec<_>>()),
            ("successes", Method::ALL.iter().map(|m| m.label()).collect()),
            ("errors", HttpError::ALL.iter().map(|e| e.label()).collect()),
        ] {
            let mut unique = labels.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{name}: a label value twice");
        }
        for e in HttpError::ALL {
            t.http_error(e);
        }
        assert!(t.http_errors.counts.iter().all(|(.., c)| c.load(Relaxed) == 1));
    }
}

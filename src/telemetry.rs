//! The daemon's own counters (auth outcomes, HTTP errors, evictions) and
//! their exposition. Plain atomics indexed by small enums: no registry, no
//! allocation per request.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::{Method, Reason};
use crate::exposition::{Exposition, Kind};

/// Connection-level problems hyper or our limits ended a connection for.
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
}

impl HttpError {
    const ALL: [HttpError; 5] =
        [HttpError::Parse, HttpError::TooLarge, HttpError::Timeout, HttpError::TlsHandshake, HttpError::Io];

    fn label(self) -> &'static str {
        match self {
            HttpError::Parse => "parse",
            HttpError::TooLarge => "too_large",
            HttpError::Timeout => "timeout",
            HttpError::TlsHandshake => "tls_handshake",
            HttpError::Io => "io",
        }
    }
}

#[derive(Default)]
pub struct Telemetry {
    auth_failures: [AtomicU64; Reason::ALL.len()],
    auth_successes: [AtomicU64; Method::ALL.len()],
    http_errors: [AtomicU64; HttpError::ALL.len()],
    bad_requests: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    scrapes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Telemetry {
    pub fn auth_failure(&self, r: Reason) {
        bump(&self.auth_failures[r as usize]);
    }

    pub fn auth_success(&self, m: Method) {
        bump(&self.auth_successes[m as usize]);
    }

    pub fn http_error(&self, e: HttpError) {
        bump(&self.http_errors[e as usize]);
    }

    /// A request refused before auth (bad method, unknown path is not one).
    pub fn bad_request(&self) {
        bump(&self.bad_requests);
    }

    pub fn evicted(&self) {
        bump(&self.evicted);
    }

    /// A new connection closed at once: every open one was busy.
    pub fn refused(&self) {
        bump(&self.refused);
    }

    pub fn scrape(&self) {
        bump(&self.scrapes);
    }

    pub fn write(&self, out: &mut Exposition, device_config_ok: bool) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        out.family(
            "jetkvm_exporter_build_info",
            "Version and target of this exporter; always 1.",
            Kind::Gauge,
        )
        .sample(&[("version", env!("CARGO_PKG_VERSION")), ("target", crate::TARGET)], 1.0);
        let mut f = out.family(
            "jetkvm_exporter_auth_failures_total",
            "Requests for metrics refused, by reason.",
            Kind::Counter,
        );
        for r in Reason::ALL {
            f.sample(&[("reason", r.label())], get(&self.auth_failures[r as usize]));
        }
        let mut f = out.family(
            "jetkvm_exporter_auth_successes_total",
            "Requests for metrics allowed, by method.",
            Kind::Counter,
        );
        for m in Method::ALL {
            f.sample(&[("method", m.label())], get(&self.auth_successes[m as usize]));
        }
        out.single(
            "jetkvm_exporter_device_config_load_success",
            "Whether the device's auth state (kvm_config.json) was last read successfully.",
            Kind::Gauge,
            if device_config_ok { 1.0 } else { 0.0 },
        );
        let mut f = out.family(
            "jetkvm_exporter_http_errors_total",
            "Connections ended for malformed, oversized or stalled requests, or I/O errors.",
            Kind::Counter,
        );
        for e in HttpError::ALL {
            f.sample(&[("reason", e.label())], get(&self.http_errors[e as usize]));
        }
        out.single(
            "jetkvm_exporter_http_bad_requests_total",
            "Requests answered 4xx before authentication (method not allowed).",
            Kind::Counter,
            get(&self.bad_requests),
        );
        out.single(
            "jetkvm_exporter_connections_evicted_total",
            "Idle connections closed to make room under the connection limit.",
            Kind::Counter,
            get(&self.evicted),
        );
        out.single(
            "jetkvm_exporter_connections_refused_total",
            "New connections closed at once because every open connection was busy.",
            Kind::Counter,
            get(&self.refused),
        );
        out.single(
            "jetkvm_exporter_scrapes_total",
            "Scrapes served, this one included.",
            Kind::Counter,
            get(&self.scrapes),
        );
    }
}

//! TLS for the metrics service: building OpenSSL acceptors from the
//! configured keypairs and CAs, choosing a keypair by SNI, and re-reading
//! the files when they change. It owns certificates and handshake policy;
//! which client identities are accepted is `auth::client_cert`. The general
//! listener's TLS, which follows the device's own, is `device`.
//!
//! Policy: TLS 1.2 minimum (TLS 1.3 preferred by OpenSSL), Mozilla's
//! intermediate ciphers, no renegotiation. With mTLS, a client must present
//! a certificate that verifies against `ca_certs` only (never the system
//! roots) or the handshake fails, and sessions are never resumed there: a
//! resumed session would skip verifying the certificate, and could outlive
//! it or the CA that signed it.
//!
//! Files are stat'ed when a connection arrives and changed files are
//! rebuilt into a new acceptor. If a new keypair is bad (half-written, key
//! and certificate not matching yet) the previous keypair keeps serving. If
//! the CA files are bad, missing or empty, no client certificate verifies
//! until they are good again: an operator who empties the CA file revokes
//! every client. Either failure is logged and exposed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openssl::pkey::{PKey, Private};
use openssl::ssl::SslAcceptor;
use openssl::x509::X509;

use crate::config::MetricsService;
use crate::file_stamp::Stamp;
use context::{certs, context, dns_names, file_error, pair, short, unix_time, Mtls, RETRY_FAILED};

mod context;
pub mod device;

pub use context::{rejection, FileError, Role};

pub use device::DeviceTls;

/// Everything one build produced.
pub struct Built {
    /// What a connection's handshake starts with (the first keypair); SNI
    /// may switch its context.
    pub acceptor: SslAcceptor,
    /// `(cert_file, not_after as Unix seconds)` for each keypair.
    pub not_after: Vec<(PathBuf, i64)>,
}

/// A server certificate chain and its key, as loaded.
#[derive(Clone)]
struct Pair {
    cert_file: PathBuf,
    chain: Vec<X509>,
    key: PKey<Private>,
}

struct State {
    stamp: Stamp,
    built: Arc<Built>,
    /// The keypairs `built` serves: kept when new ones fail to load.
    pairs: Vec<Pair>,
    failed: Option<(Stamp, Instant)>,
}

pub struct Acceptor {
    config: MetricsService,
    state: Mutex<State>,
    reload_ok: AtomicBool,
}

impl Acceptor {
    /// Builds the acceptor, or says which file is wrong and how.
    pub fn new(config: &MetricsService) -> Result<Acceptor, FileError> {
        let stamp = Stamp::of(files(config));
        let cas = load_cas(config)?;
        let pairs = load_pairs(config)?;
        let built = build(config, &pairs, &cas)?;
        Ok(Acceptor {
            config: config.clone(),
            state: Mutex::new(State { stamp, built: Arc::new(built), pairs, failed: None }),
            reload_ok: AtomicBool::new(true),
        })
    }

    pub fn mtls(&self) -> bool {
        self.config.mtls
    }

    pub fn allowed_sans(&self) -> &[String] {
        &self.config.client_allowed_sans
    }

    /// Whether the last attempt to load changed files succeeded.
    pub fn reload_ok(&self) -> bool {
        self.reload_ok.load(Ordering::Relaxed)
    }

    /// What is being served now, without looking at the files.
    pub fn serving(&self) -> Arc<Built> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).built.clone()
    }

    /// The acceptor for a new connection, rebuilt first if files changed.
    pub fn current(&self) -> Arc<Built> {
        let now_stamp = Stamp::of(files(&self.config));
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.stamp.still(&now_stamp) {
            return s.built.clone();
        }
        if let Some((failed, at)) = &s.failed {
            if *failed == now_stamp && at.elapsed() < RETRY_FAILED {
                return s.built.clone();
            }
        }
        let mut problems = Vec::new();
        let pairs = load_pairs(&self.config).unwrap_or_else(|e| {
            problems.push(format!("{e}; still serving the previous certificates"));
            s.pairs.clone()
        });
        // Fail closed: CAs that do not load trust nobody, never the old ones.
        let cas = load_cas(&self.config).unwrap_or_else(|e| {
            problems.push(format!("{e}; refusing every client certificate until it is fixed"));
            Vec::new()
        });
        // New keypairs that load but do not build fall back to the previous
        // ones, still with the CAs of now.
        let built = build(&self.config, &pairs, &cas).map(|b| (b, pairs)).or_else(|e| {
            problems.push(format!("{e}; still serving the previous certificates"));
            build(&self.config, &s.pairs, &cas).map(|b| (b, s.pairs.clone()))
        });
        match built {
            Ok((b, pairs)) => {
                s.built = Arc::new(b);
                s.pairs = pairs;
            }
            Err(e) => log::error!("metrics service: {e}; cannot rebuild the previous certificates"),
        }
        if problems.is_empty() {
            if s.failed.is_some() || s.stamp != now_stamp {
                log::info!("metrics service: certificates reloaded");
            }
            s.stamp = now_stamp;
            s.failed = None;
            self.reload_ok.store(true, Ordering::Relaxed);
        } else {
            if s.failed.as_ref().map(|(f, _)| f != &now_stamp).unwrap_or(true) {
                for p in &problems {
                    log::warn!("metrics service: {p}");
                }
            }
            s.failed = Some((now_stamp, Instant::now()));
            self.reload_ok.store(false, Ordering::Relaxed);
        }
        s.built.clone()
    }
}

fn files(c: &MetricsService) -> impl Iterator<Item = &Path> {
    c.keypairs
        .iter()
        .flat_map(|k| [k.cert_file.as_path(), k.key_file.as_path()])
        .chain(c.ca_certs.iter().map(PathBuf::as_path))
}

/// Every CA in `ca_certs`; an error if any file is missing, unreadable,
/// empty or not PEM.
fn load_cas(c: &MetricsService) -> Result<Vec<X509>, FileError> {
    let mut cas = Vec::new();
    for f in &c.ca_certs {
        cas.extend(certs(Role::Ca, f)?);
    }
    Ok(cas)
}

/// Every keypair, each key checked against its certificate.
fn load_pairs(c: &MetricsService) -> Result<Vec<Pair>, FileError> {
    let mut pairs = Vec::new();
    for kp in &c.keypairs {
        let (chain, key) = pair(&kp.cert_file, &kp.key_file)?;
        pairs.push(Pair { cert_file: kp.cert_file.clone(), chain, key });
    }
    Ok(pairs)
}

fn build(c: &MetricsService, pairs: &[Pair], cas: &[X509]) -> Result<Built, FileError> {
    let err =
        |p: &Pair, e: openssl::error::ErrorStack| file_error(Role::Certificate, &p.cert_file, short(&e));
    // Every keypair but the first gets its own context for SNI; the first
    // is the default and holds the SNI callback.
    let mtls = || c.mtls.then_some(Mtls { cas, allowed: &c.client_allowed_sans });
    let mut by_name = Vec::new();
    for p in pairs.iter().skip(1) {
        let ctx = context(&p.chain, &p.key, mtls(), None).map_err(|e| err(p, e))?.into_context();
        by_name.push((dns_names(&p.chain[0]), ctx));
    }
    let first =
        pairs.first().ok_or_else(|| FileError { role: Role::Certificate, message: "no keypair".into() })?;
    let sni = (!by_name.is_empty()).then_some(by_name);
    let acceptor = context(&first.chain, &first.key, mtls(), sni).map_err(|e| err(first, e))?;
    let not_after = pairs.iter().map(|p| (p.cert_file.clone(), unix_time(p.chain[0].not_after()))).collect();
    Ok(Built { acceptor, not_after })
}

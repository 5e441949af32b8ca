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

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    NameType, SslAcceptor, SslContext, SslMethod, SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Name, X509};

use crate::auth::{client_cert, Reason};
use crate::config::{io_reason, MetricsService};
use crate::watch::Stamp;

pub mod device;

pub use device::DeviceTls;

thread_local! {
    /// Why the last client certificate was refused on this thread. The
    /// handshake that fails does so in the same poll in which the callback
    /// ran, and the listener takes the reason right then.
    static REJECTED: Cell<Option<Reason>> = const { Cell::new(None) };
}

fn reject(reason: Reason) {
    REJECTED.with(|r| {
        if r.get().is_none() {
            r.set(Some(reason));
        }
    });
}

/// The reason the verify callback recorded, if any, and clears it.
pub fn take_rejection() -> Option<Reason> {
    REJECTED.with(Cell::take)
}

/// A failed rebuild is retried at most this often while files keep
/// looking new.
const RETRY_FAILED: Duration = Duration::from_secs(1);

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
    pub fn new(config: &MetricsService) -> Result<Acceptor, String> {
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

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("key \"{key}\": {}: {}", path.display(), io_reason(&e)))
}

fn certs(key: &str, path: &Path) -> Result<Vec<X509>, String> {
    let pem = read(key, path)?;
    match X509::stack_from_pem(&pem) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("key \"{key}\": {}: no PEM certificate in file", path.display())),
        Err(e) => Err(format!("key \"{key}\": {}: not a PEM certificate: {}", path.display(), short(&e))),
    }
}

fn private_key(key: &str, path: &Path) -> Result<PKey<Private>, String> {
    let pem = read(key, path)?;
    PKey::private_key_from_pem(&pem)
        .map_err(|e| format!("key \"{key}\": {}: not a PEM private key: {}", path.display(), short(&e)))
}

/// A certificate chain and its key (`cert_key` and `key_key` name them in
/// errors), the key checked against the chain's first certificate.
fn pair(
    cert_key: &str,
    cert: &Path,
    key_key: &str,
    key: &Path,
) -> Result<(Vec<X509>, PKey<Private>), String> {
    let chain = certs(cert_key, cert)?;
    let pkey = private_key(key_key, key)?;
    if !chain[0].public_key().map(|p| p.public_eq(&pkey)).unwrap_or(false) {
        return Err(format!(
            "key \"{key_key}\": {}: does not match certificate {}",
            key.display(),
            cert.display()
        ));
    }
    Ok((chain, pkey))
}

/// OpenSSL's error stack in one short line. Its string tables are not
/// loaded (see `crypto::init`), so the code stands in when there is no text.
fn short(e: &openssl::error::ErrorStack) -> String {
    match e.errors().first() {
        Some(x) => x.reason().map(str::to_owned).unwrap_or_else(|| format!("OpenSSL error {:#x}", x.code())),
        None => "unknown error".into(),
    }
}

fn unix_time(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    match Asn1Time::from_unix(0).and_then(|epoch| epoch.diff(t)) {
        Ok(d) => d.days as i64 * 86_400 + d.secs as i64,
        Err(_) => 0,
    }
}

/// DNS names a certificate serves, for SNI.
fn dns_names(cert: &X509) -> Vec<String> {
    let mut names = client_cert::sans(cert);
    names.retain(|n| n.parse::<std::net::IpAddr>().is_err());
    names
}

fn name_matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        host.split_once('.').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix))
    } else {
        pattern.eq_ignore_ascii_case(host)
    }
}

/// Client certificates a context requires: verified against `cas`, with
/// one of `allowed` SANs if that is not empty.
struct Mtls<'a> {
    cas: &'a [X509],
    allowed: &'a [String],
}

/// Contexts chosen by SNI: the names each serves.
type ByName = Vec<(Vec<String>, SslContext)>;

fn context(
    chain: &[X509],
    key: &PKey<Private>,
    mtls: Option<Mtls<'_>>,
    sni: Option<ByName>,
) -> Result<SslAcceptor, openssl::error::ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    // SSL_OP_CLEANSE_PLAINTEXT (OpenSSL 3; the openssl crate has no name
    // for it): decrypted records are wiped once read, not left in the
    // record buffer until the next one overwrites them.
    const CLEANSE_PLAINTEXT: SslOptions = SslOptions::from_bits_retain(1 << 1);
    b.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::CIPHER_SERVER_PREFERENCE | CLEANSE_PLAINTEXT);
    if mtls.is_some() {
        // No resumption: every connection verifies a certificate against
        // the CAs of now. The context id is set as OpenSSL requires when
        // peers are verified, and no ticket or cached session is made.
        b.set_session_id_context(b"jetkvm-metrics mtls")?;
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        b.set_options(SslOptions::NO_TICKET);
        b.set_num_tickets(0)?;
    }
    b.set_certificate(&chain[0])?;
    for extra in &chain[1..] {
        b.add_extra_chain_cert(extra.clone())?;
    }
    b.set_private_key(key)?;
    b.check_private_key()?;
    if let Some(Mtls { cas, allowed }) = mtls {
        let mut store = X509StoreBuilder::new()?;
        let mut names = Stack::<X509Name>::new()?;
        for ca in cas {
            store.add_cert(ca.clone())?;
            names.push(ca.subject_name().to_owned()?)?;
        }
        b.set_verify_cert_store(store.build())?;
        b.set_client_ca_list(names);
        let allowed = allowed.to_vec();
        b.set_verify_callback(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT, move |ok, ctx| {
            if !ok {
                reject(Reason::ClientCertInvalid);
                return false;
            }
            if ctx.error_depth() == 0 {
                if let Some(cert) = ctx.current_cert() {
                    if !client_cert::allowed(cert, &allowed) {
                        reject(Reason::ClientCertNotAllowed);
                        return false;
                    }
                }
            }
            true
        });
    }
    if let Some(by_name) = sni {
        b.set_servername_callback(move |ssl, _alert| {
            if let Some(host) = ssl.servername(NameType::HOST_NAME).map(str::to_owned) {
                if let Some((_, ctx)) =
                    by_name.iter().find(|(names, _)| names.iter().any(|n| name_matches(n, &host)))
                {
                    ssl.set_ssl_context(ctx).map_err(|_| openssl::ssl::SniError::ALERT_FATAL)?;
                }
            }
            Ok(())
        });
    }
    Ok(b.build())
}

/// Every CA in `ca_certs`; an error if any file is missing, unreadable,
/// empty or not PEM.
fn load_cas(c: &MetricsService) -> Result<Vec<X509>, String> {
    let mut cas = Vec::new();
    for f in &c.ca_certs {
        cas.extend(certs("metrics_service.ca_certs", f)?);
    }
    Ok(cas)
}

/// Every keypair, each key checked against its certificate.
fn load_pairs(c: &MetricsService) -> Result<Vec<Pair>, String> {
    let mut pairs = Vec::new();
    for kp in &c.keypairs {
        let (chain, key) = pair(
            "metrics_service.keypairs.cert_file",
            &kp.cert_file,
            "metrics_service.keypairs.key_file",
            &kp.key_file,
        )?;
        pairs.push(Pair { cert_file: kp.cert_file.clone(), chain, key });
    }
    Ok(pairs)
}

fn build(c: &MetricsService, pairs: &[Pair], cas: &[X509]) -> Result<Built, String> {
    let err = |p: &Pair, e: openssl::error::ErrorStack| {
        format!("key \"metrics_service.keypairs\": {}: {}", p.cert_file.display(), short(&e))
    };
    // Every keypair but the first gets its own context for SNI; the first
    // is the default and holds the SNI callback.
    let mtls = || c.mtls.then_some(Mtls { cas, allowed: &c.client_allowed_sans });
    let mut by_name = Vec::new();
    for p in pairs.iter().skip(1) {
        let ctx = context(&p.chain, &p.key, mtls(), None).map_err(|e| err(p, e))?.into_context();
        by_name.push((dns_names(&p.chain[0]), ctx));
    }
    let first = pairs.first().ok_or("key \"metrics_service.keypairs\": no keypair")?;
    let sni = (!by_name.is_empty()).then_some(by_name);
    let acceptor = context(&first.chain, &first.key, mtls(), sni).map_err(|e| err(first, e))?;
    let not_after = pairs.iter().map(|p| (p.cert_file.clone(), unix_time(p.chain[0].not_after()))).collect();
    Ok(Built { acceptor, not_after })
}

#[cfg(test)]
mod tests {
    #[test]
    fn wildcards() {
        assert!(super::name_matches("*.lan", "jetkvm.lan"));
        assert!(!super::name_matches("*.lan", "a.b.lan"));
        assert!(!super::name_matches("*.lan", "lan"));
        assert!(super::name_matches("JetKVM.lan", "jetkvm.LAN"));
    }
}

//! What both listeners' TLS share: reading PEM files, and building an
//! OpenSSL context with the handshake policy (see `tls`). Errors name the
//! file and the problem; what the configuration calls that file is the
//! caller's to say.

use std::path::Path;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    NameType, SslAcceptor, SslContext, SslMethod, SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Name, X509};

use crate::auth::{client_cert, Reason};
use crate::wording::io_reason;

/// Which file a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Certificate,
    Key,
    Ca,
}

/// A file that cannot serve: which one, and "PATH: what is wrong".
#[derive(Clone, Debug)]
pub struct FileError {
    pub role: Role,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub(super) fn file_error(role: Role, path: &Path, what: impl std::fmt::Display) -> FileError {
    FileError { role, message: format!("{}: {what}", path.display()) }
}

/// OpenSSL's error library for applications: a refusal's reason travels as
/// an entry of the handshake's own error queue, so the failure that
/// reaches the listener carries it (no side channel to clear or race).
const ERR_LIB_USER: std::ffi::c_int = 128;

/// The reasons the verify callback gives, by their reason code there.
const REJECTIONS: [(Reason, std::ffi::c_int); 2] =
    [(Reason::ClientCertInvalid, 1), (Reason::ClientCertNotAllowed, 2)];

pub(super) fn reject(reason: Reason) {
    let code = REJECTIONS.iter().find(|(r, _)| *r == reason).map_or(0, |(_, c)| *c);
    // SAFETY: starts an error record on this thread's queue and fills it;
    // a null format adds no data.
    unsafe {
        openssl_sys::ERR_new();
        openssl_sys::ERR_set_error(ERR_LIB_USER, code, std::ptr::null());
    }
}

/// The reason the verify callback gave, if any, in a failed handshake's
/// errors.
pub fn rejection(errors: &openssl::error::ErrorStack) -> Option<Reason> {
    errors
        .errors()
        .iter()
        .filter(|e| e.library_code() == ERR_LIB_USER)
        .find_map(|e| REJECTIONS.iter().find(|(_, c)| *c == e.reason_code()).map(|(r, _)| *r))
}

/// A failed rebuild is retried at most this often while files keep
/// looking new.
pub(super) const RETRY_FAILED: Duration = Duration::from_secs(1);

/// The most a certificate, key or CA file holds.
const PEM_MAX: u64 = 1 << 20;

/// Read as root at start: a regular file (through links), never a FIFO
/// waited on or a device read.
fn read(role: Role, path: &Path) -> Result<Vec<u8>, FileError> {
    crate::files::read_file(path, PEM_MAX).map_err(|e| file_error(role, path, io_reason(&e)))
}

/// Every certificate in a PEM file, at least one.
pub(super) fn certs(role: Role, path: &Path) -> Result<Vec<X509>, FileError> {
    let pem = read(role, path)?;
    match X509::stack_from_pem(&pem) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(file_error(role, path, "no PEM certificate in file")),
        Err(e) => Err(file_error(role, path, format_args!("not a PEM certificate: {}", short(&e)))),
    }
}

fn private_key(path: &Path) -> Result<PKey<Private>, FileError> {
    let pem = read(Role::Key, path)?;
    PKey::private_key_from_pem(&pem)
        .map_err(|e| file_error(Role::Key, path, format_args!("not a PEM private key: {}", short(&e))))
}

/// A certificate chain and its key, the key checked against the chain's
/// first certificate.
pub(super) fn pair(cert: &Path, key: &Path) -> Result<(Vec<X509>, PKey<Private>), FileError> {
    let chain = certs(Role::Certificate, cert)?;
    let pkey = private_key(key)?;
    if !chain[0].public_key().map(|p| p.public_eq(&pkey)).unwrap_or(false) {
        return Err(file_error(
            Role::Key,
            key,
            format_args!("does not match certificate {}", cert.display()),
        ));
    }
    Ok((chain, pkey))
}

/// OpenSSL's error stack in one short line. Its string tables are not
/// loaded (see `crypto::init`), so the code stands in when there is no text.
pub(super) fn short(e: &openssl::error::ErrorStack) -> String {
    match e.errors().first() {
        Some(x) => x.reason().map(str::to_owned).unwrap_or_else(|| format!("OpenSSL error {:#x}", x.code())),
        None => "unknown error".into(),
    }
}

pub(super) fn unix_time(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    match Asn1Time::from_unix(0).and_then(|epoch| epoch.diff(t)) {
        Ok(d) => d.days as i64 * 86_400 + d.secs as i64,
        Err(_) => 0,
    }
}

/// DNS names a certificate serves, for SNI.
pub(super) fn dns_names(cert: &X509) -> Vec<String> {
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

/// Mozilla's intermediate TLS 1.3 suites and TLS 1.2 ciphers with
/// ChaCha20-Poly1305 first. On a CPU without AES instructions (the
/// device's Cortex-A7) OpenSSL's AES-GCM is table-free bit-slicing: in the
/// board a scrape over ChaCha20-Poly1305 cost less CPU (docs/BENCHMARKS.md,
/// "What the named stack cost, won back"). Go's TLS server makes the same
/// choice on such CPUs.
fn chacha_first() -> (&'static str, String) {
    let tls13 = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384";
    let (chacha, rest): (Vec<&str>, Vec<&str>) =
        INTERMEDIATE_TLS12.split(':').partition(|c| c.contains("CHACHA20"));
    (tls13, [chacha, rest].concat().join(":"))
}

/// Mozilla's intermediate TLS 1.2 ciphers, as `mozilla_intermediate_v5`
/// sets them.
const INTERMEDIATE_TLS12: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
    ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
    ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/// Whether the CPU has AES instructions (and, on x86, carry-less
/// multiplication for GCM).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "arm")]
    {
        // <asm/hwcap.h>: HWCAP2_AES is bit 0 (ARMv8's crypto extension
        // in AArch32; a Cortex-A7 has none).
        // SAFETY: getauxval reads the auxiliary vector; no pointers.
        unsafe { libc::getauxval(libc::AT_HWCAP2) & 1 != 0 }
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(any(
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "x86_64"
    )))]
    {
        false
    }
}

/// Client certificates a context requires: verified against `cas`, with
/// one of `allowed` SANs if that is not empty.
pub(super) struct Mtls<'a> {
    pub cas: &'a [X509],
    pub allowed: &'a [String],
}

/// Contexts chosen by SNI: the names each serves.
pub(super) type ByName = Vec<(Vec<String>, SslContext)>;

pub(super) fn context(
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
    if !aes_in_hardware() {
        let (tls13, tls12) = chacha_first();
        b.set_ciphersuites(tls13)?;
        b.set_cipher_list(&tls12)?;
    }
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

#[cfg(test)]
mod tests {
    use openssl::ssl::{SslAcceptor, SslMethod};

    #[test]
    fn chacha_first_keeps_the_intermediate_set() {
        let (tls13, tls12) = super::chacha_first();
        assert!(tls13.starts_with("TLS_CHACHA20_POLY1305_SHA256:"));
        assert!(
            tls12.starts_with("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128")
        );
        let mut a: Vec<_> = tls12.split(':').collect();
        let mut b: Vec<_> = super::INTERMEDIATE_TLS12.split(':').collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acceptor.set_ciphersuites(tls13).unwrap();
        acceptor.set_cipher_list(&tls12).unwrap();
    }

    #[test]
    fn wildcards() {
        assert!(super::name_matches("*.lan", "jetkvm.lan"));
        assert!(!super::name_matches("*.lan", "a.b.lan"));
        assert!(!super::name_matches("*.lan", "lan"));
        assert!(super::name_matches("JetKVM.lan", "jetkvm.LAN"));
    }
}

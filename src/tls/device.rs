//! The general listener's TLS, following the device's own (`tls_mode` in
//! the device's config, certificates under `device_tls_dir`):
//! - `custom`: `user-defined.crt` and `.key`;
//! - `self-signed`: a leaf `<host>.crt`/`.key` per host name, issued by the
//!   device's CA `__ca__.crt` when a host is first asked for. The device
//!   issues one for any name a client sends it, so the directory is
//!   attacker-fed: only the leaves of the names the device is known by are
//!   served ([`device_names`]: `jetkvm.local`, the system's host name alone
//!   and with `.local`, and `host_names`), never a scan of the directory. A
//!   client's SNI picks the leaf of that name; without SNI (or for a name
//!   with no leaf) the default host's, `jetkvm.local`, else the first.
//!
//! The files are stat'ed when a connection arrives (at most two per known
//! name and the CA) and rebuilt when they change. A changed file
//! that does not load leaves the previous certificates serving, as the
//! metrics service does. While the device wants TLS and no certificate of
//! its mode is usable (self-signed before the device has issued one), the
//! state is `Pending`: the listener refuses to answer in clear.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openssl::x509::X509;

use super::context::{context, dns_names, pair, short, unix_time, ByName, RETRY_FAILED};
use crate::device::{DeviceState, TlsMode};
use crate::file_stamp::Stamp;

/// The device's self-signed CA, which Prometheus can use as `ca_file`.
pub const CA_NAME: &str = "__ca__";
/// The `custom` mode's certificate.
pub const CUSTOM_NAME: &str = "user-defined";
/// The host name the device issues its first certificate for.
pub const DEFAULT_HOST: &str = "jetkvm.local";

/// What the general listener does now.
#[derive(Clone)]
pub enum Serving {
    /// The device's TLS is off: plain HTTP.
    Off,
    /// HTTPS with the device's certificates.
    Tls(Arc<Built>),
    /// The device wants TLS but none of its certificates is usable yet.
    Pending(TlsMode),
}

/// One build from the device's files.
pub struct Built {
    pub mode: TlsMode,
    pub acceptor: openssl::ssl::SslAcceptor,
    /// `(cert_file, not_after as Unix seconds)` for each certificate served.
    pub not_after: Vec<(PathBuf, i64)>,
    /// The host names served, the default first.
    pub hosts: Vec<String>,
    /// The CA a client can verify these certificates with, as PEM.
    pub ca_pem: Option<Vec<u8>>,
}

struct State {
    mode: TlsMode,
    stamp: Stamp,
    serving: Serving,
    failed: Option<(Stamp, Instant)>,
    reload_ok: bool,
}

pub struct DeviceTls {
    dir: PathBuf,
    /// `host_names`: names served beside the default and the host name.
    names: Vec<String>,
    state: Mutex<State>,
}

/// The general listener's TLS as the device has it now. The one place that
/// reads the device's `tls_mode` and then picks its certificate, so no
/// caller can pair a mode with the wrong moment's files.
pub struct Following {
    device: Arc<DeviceState>,
    tls: DeviceTls,
}

impl Following {
    pub fn new(device: Arc<DeviceState>, tls: DeviceTls) -> Following {
        Following { device, tls }
    }

    /// What to serve now: the device's state re-read if it changed, and the
    /// certificates rebuilt if the mode or the files did.
    pub async fn current(&self) -> Serving {
        self.tls.current(&self.device.tls_mode().await)
    }

    /// Whether plain HTTP may be answered now: only while the device's TLS
    /// is off (never while it is wanted and no certificate is issued yet).
    pub async fn clear_allowed(&self) -> bool {
        self.device.tls_mode().await == TlsMode::Off
    }

    /// What is served as of the last [`Following::current`].
    pub fn serving(&self) -> Serving {
        self.tls.serving()
    }

    pub fn reload_ok(&self) -> bool {
        self.tls.reload_ok()
    }
}

/// The names the device is known by: `jetkvm.local`, the system's host name
/// alone and with `.local`, and `extra` (`host_names`), lowercase, each
/// once. Bounded by the configuration, whatever a client asks for.
pub fn device_names(extra: &[String]) -> Vec<String> {
    let system = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let mut names = vec![DEFAULT_HOST.to_owned()];
    let system = system.to_ascii_lowercase();
    if !system.is_empty() && system != "localhost" {
        names.push(format!("{system}.local"));
        names.push(system);
    }
    names.extend(extra.iter().map(|n| n.to_ascii_lowercase()));
    let mut seen = Vec::with_capacity(names.len());
    names.retain(|n| {
        // A name that is no file name (the host name is the system's).
        let usable = !n.contains('/') && n != "." && n != ".." && !seen.contains(n);
        seen.push(n.clone());
        usable
    });
    names
}

impl DeviceTls {
    pub fn new(dir: PathBuf, names: Vec<String>) -> DeviceTls {
        DeviceTls {
            dir,
            names,
            state: Mutex::new(State {
                mode: TlsMode::Off,
                stamp: Stamp::default(),
                serving: Serving::Off,
                failed: None,
                reload_ok: true,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is served now, without looking at the files.
    pub fn serving(&self) -> Serving {
        self.lock().serving.clone()
    }

    /// Whether the last load of changed files succeeded.
    pub fn reload_ok(&self) -> bool {
        self.lock().reload_ok
    }

    /// What to serve for a new connection while the device's mode is
    /// `mode`, rebuilt first if the mode or the files changed.
    pub fn current(&self, mode: &TlsMode) -> Serving {
        let files = self.files(mode);
        let now_stamp = Stamp::of(files.iter().map(PathBuf::as_path));
        let mut s = self.lock();
        let same_mode = s.mode == *mode;
        if same_mode && s.stamp.still(&now_stamp) {
            return s.serving.clone();
        }
        if let Some((failed, at)) = &s.failed {
            if same_mode && *failed == now_stamp && at.elapsed() < RETRY_FAILED {
                return s.serving.clone();
            }
        }
        let loaded = match mode {
            TlsMode::Off => Ok(None),
            TlsMode::Custom => self.custom().map(Some),
            TlsMode::SelfSigned => self.self_signed().map(Some),
            TlsMode::Unknown(m) => {
                Err(format!("tls_mode {m:?}: no certificates this daemon knows how to find"))
            }
        };
        let previous = match &s.serving {
            Serving::Tls(b) if same_mode => Some(b.clone()),
            _ => None,
        };
        let (serving, problem) = match (loaded, previous) {
            (Ok(None), _) => (Serving::Off, None),
            (Ok(Some(b)), _) => (Serving::Tls(Arc::new(b)), None),
            (Err(e), Some(b)) => {
                (Serving::Tls(b), Some(format!("{e}; still serving the previous certificates")))
            }
            (Err(e), None) => {
                (Serving::Pending(mode.clone()), Some(format!("{e}; refusing to serve in clear until it is")))
            }
        };
        let changed_kind =
            std::mem::discriminant(&serving) != std::mem::discriminant(&s.serving) || !same_mode;
        match (&problem, &serving) {
            (Some(p), _) => {
                if s.failed.as_ref().map(|(f, _)| f != &now_stamp).unwrap_or(true) || !same_mode {
                    log::warn!("device TLS ({}): {p}", mode.label());
                }
            }
            (None, Serving::Tls(b)) => {
                // A rebuild of the same files (a recent write is re-read
                // until it settles) is not news.
                let same = match &s.serving {
                    Serving::Tls(old) => {
                        old.mode == b.mode && old.hosts == b.hosts && old.not_after == b.not_after
                    }
                    _ => false,
                };
                if !same {
                    log::info!("device TLS ({}): serving HTTPS for {}", mode.label(), b.hosts.join(", "))
                }
            }
            (None, _) if changed_kind => log::info!("device TLS off: plain HTTP"),
            (None, _) => {}
        }
        s.reload_ok = problem.is_none();
        s.failed = problem.map(|_| (now_stamp.clone(), Instant::now()));
        s.mode = mode.clone();
        s.stamp = now_stamp;
        s.serving = serving;
        s.serving.clone()
    }

    /// The files a mode's certificates live in: a bounded set, missing ones
    /// included (a leaf the device issues later appears there).
    fn files(&self, mode: &TlsMode) -> Vec<PathBuf> {
        match mode {
            TlsMode::Custom => vec![self.pem(CUSTOM_NAME, "crt"), self.pem(CUSTOM_NAME, "key")],
            TlsMode::SelfSigned => {
                let mut v = vec![self.pem(CA_NAME, "crt")];
                for host in device_names(&self.names) {
                    v.push(self.pem(&host, "crt"));
                    v.push(self.pem(&host, "key"));
                }
                v
            }
            TlsMode::Off | TlsMode::Unknown(_) => Vec::new(),
        }
    }

    fn pem(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    /// The device's names that have a leaf (a `.crt`), the default first.
    fn leaf_names(&self) -> Vec<String> {
        let mut names = device_names(&self.names);
        names.retain(|n| self.pem(n, "crt").exists());
        names
    }

    fn pair(&self, name: &str) -> Result<(Vec<X509>, openssl::pkey::PKey<openssl::pkey::Private>), String> {
        pair(&self.pem(name, "crt"), &self.pem(name, "key")).map_err(|e| e.message)
    }

    fn custom(&self) -> Result<Built, String> {
        let (chain, key) = self.pair(CUSTOM_NAME)?;
        let acceptor = context(&chain, &key, None, None).map_err(|e| self.build_error(CUSTOM_NAME, &e))?;
        let hosts = dns_names(&chain[0]);
        // The chain's last certificate, the issuer a client can pin. A
        // certificate alone offers none: pinning the leaf would break at
        // its renewal.
        let ca_pem = if chain.len() > 1 { chain.last().and_then(|c| c.to_pem().ok()) } else { None };
        Ok(Built {
            mode: TlsMode::Custom,
            acceptor,
            not_after: vec![(self.pem(CUSTOM_NAME, "crt"), unix_time(chain[0].not_after()))],
            hosts,
            ca_pem,
        })
    }

    fn self_signed(&self) -> Result<Built, String> {
        let names = self.leaf_names();
        if names.is_empty() {
            return Err(format!(
                "{}: no certificate issued yet for {}",
                self.dir.display(),
                device_names(&self.names).join(", ")
            ));
        }
        let mut pairs = Vec::new();
        let mut problems = Vec::new();
        for n in &names {
            match self.pair(n) {
                Ok(p) => pairs.push((n.clone(), p)),
                // A leaf being written now; the others still serve.
                Err(e) => problems.push(e),
            }
        }
        let Some(((default_name, (chain, key)), rest)) = pairs.split_first() else {
            return Err(problems.join("; "));
        };
        let mut by_name: ByName = Vec::new();
        for (n, (c, k)) in rest {
            match context(c, k, None, None) {
                Ok(ctx) => {
                    let mut served = dns_names(&c[0]);
                    served.push(n.clone());
                    by_name.push((served, ctx.into_context()));
                }
                Err(e) => problems.push(self.build_error(n, &e)),
            }
        }
        let sni = (!by_name.is_empty()).then_some(by_name);
        let acceptor = context(chain, key, None, sni).map_err(|e| self.build_error(default_name, &e))?;
        for p in &problems {
            log::warn!("device TLS (self-signed): {p}; serving the other certificates");
        }
        let ca_pem = X509::stack_from_pem(&std::fs::read(self.pem(CA_NAME, "crt")).unwrap_or_default())
            .ok()
            .and_then(|v| v.first().and_then(|c| c.to_pem().ok()));
        Ok(Built {
            mode: TlsMode::SelfSigned,
            acceptor,
            not_after: pairs
                .iter()
                .map(|(n, (c, _))| (self.pem(n, "crt"), unix_time(c[0].not_after())))
                .collect(),
            hosts: pairs.iter().map(|(n, _)| n.clone()).collect(),
            ca_pem,
        })
    }

    fn build_error(&self, name: &str, e: &openssl::error::ErrorStack) -> String {
        format!("{}: {}", self.pem(name, "crt").display(), short(e))
    }
}

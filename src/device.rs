//! The device's own auth state, `kvm_config.json`, as the device's main
//! application writes it. Owns loading, noticing changes and failing closed;
//! it does not decide requests (that is `auth::decide`).
//!
//! The application rewrites the file in place (truncate, then write), so a
//! read can see an empty or half-written file. Every request stats the file;
//! a changed file is re-read, and a read that does not parse is retried a
//! few times before the state becomes "unavailable", which refuses every
//! request. A file modified within `file_stamp::RACY_WINDOW` of being read is not
//! trusted to stay the same under an unchanged stat (a same-size rewrite in
//! the same timestamp tick), so it is read again on the next request.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::file_stamp::FileKey;
use crate::wording::io_reason;

/// Files larger than this are not a device config.
const MAX_SIZE: u64 = 1 << 20;
/// Pauses before re-reading a file that did not parse (a torn write).
const RETRY_DELAYS: [Duration; 3] =
    [Duration::from_millis(5), Duration::from_millis(20), Duration::from_millis(60)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Password,
    NoPassword,
    /// `localAuthMode` empty or absent: the device has not been set up.
    NotSetUp,
}

/// The device's `tls_mode`: whether its web UI serves HTTPS, and with which
/// certificates (see `tls::DeviceTls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    SelfSigned,
    Custom,
    /// A mode this daemon does not know: TLS is wanted, with no certificate
    /// it knows how to find, so credentials are refused in clear.
    Unknown(String),
}

impl TlsMode {
    pub fn label(&self) -> &str {
        match self {
            TlsMode::Off => "off",
            TlsMode::SelfSigned => "self-signed",
            TlsMode::Custom => "custom",
            TlsMode::Unknown(m) => m,
        }
    }
}

/// The parts of `kvm_config.json` that matter here. Secrets never appear in
/// `Debug` output.
pub struct DeviceConfig {
    pub mode: AuthMode,
    /// A bcrypt hash in a form we verify (`$2a$`, `$2b$`, `$2y$`), if set.
    pub hashed_password: Option<String>,
    /// The browser session token, if someone is logged in.
    pub session_token: Option<String>,
    pub tls_mode: TlsMode,
}

impl AuthMode {
    /// The `localAuthMode` value this mode comes from.
    pub fn label(self) -> &'static str {
        match self {
            AuthMode::Password => "password",
            AuthMode::NoPassword => "noPassword",
            AuthMode::NotSetUp => "not set up",
        }
    }
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("mode", &self.mode)
            .field("hashed_password", &self.hashed_password.as_ref().map(|_| "<set>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<set>"))
            .field("tls_mode", &self.tls_mode)
            .finish()
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "localAuthMode", default)]
    local_auth_mode: Option<String>,
    #[serde(default)]
    hashed_password: Option<String>,
    #[serde(default)]
    local_auth_token: Option<String>,
    #[serde(default)]
    tls_mode: Option<String>,
}

impl DeviceConfig {
    /// Parses the file's bytes. Anything that is not a complete JSON object
    /// with the expected field types is an error, never a default.
    pub fn parse(bytes: &[u8]) -> Result<DeviceConfig, String> {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err("empty".into()),
            // serde would also accept a JSON array for a struct.
            Some(b'{') => {}
            Some(_) => return Err("not a JSON object".into()),
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let mode = match raw.local_auth_mode.as_deref() {
            Some("password") => AuthMode::Password,
            Some("noPassword") => AuthMode::NoPassword,
            Some("") | None => AuthMode::NotSetUp,
            Some(other) => return Err(format!("unknown localAuthMode {other:?}")),
        };
        let hashed_password = raw.hashed_password.filter(|h| is_supported_bcrypt(h));
        let session_token = raw.local_auth_token.filter(|t| !t.is_empty());
        let tls_mode = match raw.tls_mode.as_deref() {
            Some("") | None => TlsMode::Off,
            Some("self-signed") => TlsMode::SelfSigned,
            Some("custom") => TlsMode::Custom,
            Some(other) => TlsMode::Unknown(other.chars().take(32).collect()),
        };
        Ok(DeviceConfig { mode, hashed_password, session_token, tls_mode })
    }

    /// One read, no retries: for `check-config`.
    pub fn load(path: &Path) -> Result<DeviceConfig, String> {
        let bytes = read_bounded(path).map_err(|e| format!("{}: {e}", path.display()))?;
        DeviceConfig::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost 4..=31, 53 characters of
/// bcrypt's base64 (salt and hash).
pub fn is_supported_bcrypt(h: &str) -> bool {
    let b = h.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && b[6] == b'$'
        && std::str::from_utf8(&b[4..6])
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c))
        && b[7..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| io_reason(&e))?;
    let mut bytes = Vec::new();
    file.take(MAX_SIZE + 1).read_to_end(&mut bytes).map_err(|e| io_reason(&e))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err("larger than 1 MiB".into());
    }
    Ok(bytes)
}

/// Why there is no usable device state. Every variant refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    Missing,
    Unreadable(String),
    Invalid(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Missing => f.write_str("no such file"),
            Unavailable::Unreadable(e) => write!(f, "unreadable: {e}"),
            Unavailable::Invalid(e) => write!(f, "invalid: {e}"),
        }
    }
}

pub type Current = Result<Arc<DeviceConfig>, Unavailable>;

struct Cached {
    key: Option<FileKey>,
    /// Whether an unchanged key may be taken to mean unchanged content.
    trusted: bool,
    state: Current,
}

/// The live device state, re-read when the file changes.
pub struct DeviceState {
    path: PathBuf,
    cached: Mutex<Cached>,
    /// One reload at a time; others wait and then use its result.
    reloading: tokio::sync::Mutex<()>,
    load_ok: AtomicBool,
    /// The TLS mode of the last state that loaded: a torn or vanished file
    /// must not turn the device's TLS off (credentials in clear).
    /// `None` until a file has loaded.
    tls_mode: Mutex<Option<TlsMode>>,
}

impl DeviceState {
    pub fn new(path: PathBuf) -> Self {
        DeviceState {
            path,
            cached: Mutex::new(Cached { key: None, trusted: false, state: Err(Unavailable::Missing) }),
            reloading: tokio::sync::Mutex::new(()),
            load_ok: AtomicBool::new(false),
            tls_mode: Mutex::new(None),
        }
    }

    /// The device's TLS mode as of now: the last mode read from a file that
    /// loaded. Off until one has: the device's own credentials are refused
    /// then anyway (nothing to check them against), and the token works
    /// whatever the device's state, as on a device not set up.
    pub async fn tls_mode(&self) -> TlsMode {
        let _ = self.current().await;
        self.tls_mode.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or(TlsMode::Off)
    }

    /// Whether the last load gave a usable state.
    pub fn load_ok(&self) -> bool {
        self.load_ok.load(Ordering::Relaxed)
    }

    /// Forgets the cached state so the next request re-reads the file.
    pub fn invalidate(&self) {
        self.lock().trusted = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        // A poisoned lock only means another thread panicked mid-update;
        // the data is a plain value we overwrite on the next load.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, key: Option<FileKey>) -> Option<Current> {
        let c = self.lock();
        let same = match (&c.key, &key) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        (c.trusted && same).then(|| c.state.clone())
    }

    /// The state as of now: cheap (one stat) while the file is unchanged.
    pub async fn current(&self) -> Current {
        let key = FileKey::stat(&self.path);
        if let Some(state) = self.fresh(key) {
            return state;
        }
        let _guard = self.reloading.lock().await;
        // Another request may have reloaded while we waited.
        let key = FileKey::stat(&self.path);
        if let Some(state) = self.fresh(key) {
            return state;
        }
        let (key, trusted, state) = self.reload().await;
        let mut c = self.lock();
        if let Ok(d) = &state {
            let mut tls = self.tls_mode.lock().unwrap_or_else(|p| p.into_inner());
            if tls.as_ref() != Some(&d.tls_mode) {
                log::info!("device config {}: TLS mode {}", self.path.display(), d.tls_mode.label());
                *tls = Some(d.tls_mode.clone());
            }
        }
        let changed = match (&c.state, &state) {
            (Ok(a), Ok(b)) => a.mode != b.mode,
            (Err(a), Err(b)) => a != b,
            _ => true,
        };
        if changed || c.key.is_none() {
            match &state {
                Ok(d) => log::info!("device config {}: auth mode {}", self.path.display(), d.mode.label()),
                Err(e) => {
                    log::warn!("device config {}: {e}; refusing device credentials", self.path.display())
                }
            }
        }
        // A device not set up yet has no file: a valid state, not a failure
        // to read (the decision still refuses device credentials).
        self.load_ok.store(matches!(state, Ok(_) | Err(Unavailable::Missing)), Ordering::Relaxed);
        *c = Cached { key, trusted, state: state.clone() };
        state
    }

    /// Reads until a parse succeeds or the retries run out. Returns the key
    /// the state belongs to and whether it may be trusted.
    async fn reload(&self) -> (Option<FileKey>, bool, Current) {
        let mut attempt = 0;
        loop {
            // Stat before reading: if the file changes during the read, the
            // next request sees a different key and reads again.
            let meta = match std::fs::metadata(&self.path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return (None, false, Err(Unavailable::Missing));
                }
                Err(e) => return (None, false, Err(Unavailable::Unreadable(io_reason(&e)))),
            };
            let key = FileKey::of(&meta);
            let result = match read_bounded(&self.path) {
                Ok(bytes) => DeviceConfig::parse(&bytes).map(Arc::new).map_err(Unavailable::Invalid),
                Err(e) => Err(Unavailable::Unreadable(e)),
            };
            let retry = matches!(result, Err(Unavailable::Invalid(_)));
            if !retry || attempt == RETRY_DELAYS.len() {
                return (Some(key), !key.racy, result);
            }
            tokio::time::sleep(RETRY_DELAYS[attempt]).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    #[test]
    fn parses_modes() {
        let d = DeviceConfig::parse(
            format!(r#"{{"localAuthMode":"password","hashed_password":"{HASH}","local_auth_token":"abc","tls_mode":""}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(d.mode, AuthMode::Password);
        assert_eq!(d.hashed_password.as_deref(), Some(HASH));
        assert_eq!(d.session_token.as_deref(), Some("abc"));
        assert_eq!(d.tls_mode, TlsMode::Off);
        for (raw, mode) in [
            ("self-signed", TlsMode::SelfSigned),
            ("custom", TlsMode::Custom),
            ("acme", TlsMode::Unknown("acme".into())),
        ] {
            let d = DeviceConfig::parse(
                format!(r#"{{"localAuthMode":"noPassword","tls_mode":"{raw}"}}"#).as_bytes(),
            );
            assert_eq!(d.unwrap().tls_mode, mode);
        }
        let d = DeviceConfig::parse(br#"{"localAuthMode":"noPassword"}"#).unwrap();
        assert_eq!(d.mode, AuthMode::NoPassword);
        let d = DeviceConfig::parse(br#"{"localAuthMode":"","local_auth_token":""}"#).unwrap();
        assert_eq!((d.mode, d.session_token.is_none()), (AuthMode::NotSetUp, true));
        assert_eq!(DeviceConfig::parse(b"{}").unwrap().mode, AuthMode::NotSetUp);
    }

    #[test]
    fn refuses_torn_and_odd_files() {
        for bad in [
            &b""[..],
            b"  \n",
            b"{",
            br#"{"localAuthMode":"password","hashed_pass"#,
            b"null",
            b"[]",
            br#"{"localAuthMode":5}"#,
            br#"{"localAuthMode":"Password"}"#,
            br#"{"localAuthMode":"password","hashed_password":7}"#,
            b"\xff\xfe",
        ] {
            assert!(DeviceConfig::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bcrypt_forms() {
        assert!(is_supported_bcrypt(HASH));
        assert!(is_supported_bcrypt(&HASH.replace("$2a$", "$2b$")));
        assert!(is_supported_bcrypt(&HASH.replace("$2a$", "$2y$")));
        assert!(!is_supported_bcrypt(&HASH.replace("$2a$", "$2x$")));
        assert!(!is_supported_bcrypt(&HASH.replace("$10$", "$03$")));
        assert!(!is_supported_bcrypt(&HASH.replace("$10$", "$32$")));
        assert!(!is_supported_bcrypt(&HASH[..59]));
        assert!(!is_supported_bcrypt(&HASH.replace('N', "!")));
        assert!(!is_supported_bcrypt(""));
    }

    #[tokio::test]
    async fn an_absent_file_loads_as_a_device_not_set_up_and_a_broken_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvm_config.json");
        let d = DeviceState::new(path.clone());
        assert!(matches!(d.current().await, Err(Unavailable::Missing)));
        assert!(d.load_ok(), "no file yet: a device not set up, not a failed read");
        std::fs::write(&path, b"{\"localAuthMode\":").unwrap();
        d.invalidate();
        assert!(d.current().await.is_err());
        assert!(!d.load_ok(), "a torn file is a failed read");
    }

    #[test]
    fn debug_hides_secrets() {
        let d = DeviceConfig::parse(
            format!(
                r#"{{"localAuthMode":"password","hashed_password":"{HASH}","local_auth_token":"sekrit"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let s = format!("{d:?}");
        assert!(!s.contains("sekrit") && !s.contains(HASH), "{s}");
    }
}

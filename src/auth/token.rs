//! The read-only metrics token: a random secret Prometheus presents as
//! `Authorization: Bearer` (or as the basic-auth password), so it need not
//! hold the device's admin password. Only the token's SHA-256 is stored, in
//! a file of our own (the device's application drops unknown fields from
//! its own config). The file is written atomically with mode 0600 and
//! re-read when it changes, so `token new` rotates and `token revoke`
//! revokes without a restart. The token works whatever the device's state.
//! A rotation may keep the previous token working for a bounded time
//! (`--keep-previous`), so a Prometheus given the new one in that time
//! never fails a scrape; the bound is checked on each request (no timer).
//!
//! Whoever can write the file can choose the token: a file or directory
//! writable by anyone but the daemon's user (or root) refuses every token.
//! The init script gives the token's directory to the daemon's user; root's
//! `token new` writes there as that user.
//! Messages about the file never quote its lines: a pasted token may be
//! among them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::crypto::{ct_eq, random_bytes};
use crate::file_stamp::Stamp;
use crate::wording::io_reason;

/// Tokens start with this, so a leaked one is recognisable.
pub const PREFIX: &str = "jkm_";
const HEADER: &str = "# jetkvm-metrics read-only metrics token: its SHA-256 only, never the token";
const MAX_FILE: u64 = 4096;
/// The longest a previous token may keep working after a rotation.
pub const MAX_KEEP_PREVIOUS: u64 = 24 * 3600;

/// What the token file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sha256: [u8; 32],
    /// Unix seconds.
    pub created: u64,
    /// The token this one replaced, and until when (Unix seconds) it
    /// still works.
    pub previous: Option<([u8; 32], u64)>,
}

impl Record {
    pub fn parse(text: &str) -> Result<Record, String> {
        let mut sha = None;
        let mut created = None;
        let (mut previous, mut until) = (None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some(("sha256", v)) => sha = Some(parse_hex32(v).ok_or("sha256 is not 64 hex digits")?),
                Some(("created", v)) => {
                    created = Some(v.parse::<u64>().map_err(|_| "created is not a number")?)
                }
                Some(("previous_sha256", v)) => {
                    previous = Some(parse_hex32(v).ok_or("previous_sha256 is not 64 hex digits")?)
                }
                Some(("previous_until", v)) => {
                    until = Some(v.parse::<u64>().map_err(|_| "previous_until is not a number")?)
                }
                _ => return Err(format!("line {}: not KEY=VALUE of a token record", n + 1)),
            }
        }
        let previous = match (previous, until) {
            // Written with `created`, by the same clock: a longer keep is
            // not ours, and is refused rather than honoured.
            (Some(_), Some(u)) if created.is_some_and(|c| u > c + MAX_KEEP_PREVIOUS) => {
                return Err("previous_until is more than 24 h after created".into())
            }
            (Some(p), Some(u)) => Some((p, u)),
            (None, None) => None,
            _ => return Err("previous_sha256 and previous_until go together".into()),
        };
        match (sha, created) {
            (Some(sha256), Some(created)) => Ok(Record { sha256, created, previous }),
            _ => Err("missing sha256 or created".into()),
        }
    }

    fn render(&self) -> String {
        let mut text =
            format!("{HEADER}\nsha256={}\ncreated={}\n", crate::crypto::hex(&self.sha256), self.created);
        if let Some((sha, until)) = &self.previous {
            text += &format!("previous_sha256={}\nprevious_until={until}\n", crate::crypto::hex(sha));
        }
        text
    }

    /// Whether `presented`'s hash is this token, or the previous one
    /// before its time is up. Both are compared whatever the first gives.
    fn accepts(&self, presented: &[u8; 32], now: u64) -> bool {
        let current = ct_eq(presented, &self.sha256);
        let previous = self.previous.is_some_and(|(sha, until)| ct_eq(presented, &sha) & (now < until));
        current | previous
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

pub fn hash(token: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(token)
}

/// A new token: 256 bits from OpenSSL's CSPRNG, base64url.
pub fn generate() -> String {
    let raw = random_bytes::<32>();
    format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Creates (or rotates) the token: writes its hash atomically and returns
/// the token, which is shown once and stored nowhere, and until when the
/// one it replaced still works. With `keep_previous` (seconds, at most
/// [`MAX_KEEP_PREVIOUS`]), the token it replaces, if one is set, keeps
/// working that long; one kept by an earlier rotation does not. A token
/// file that cannot be read then fails the rotation, and nothing is
/// written.
pub fn create(path: &Path, keep_previous: u64) -> Result<(String, Option<u64>), String> {
    let token = generate();
    let now = now();
    let previous = match keep_previous.min(MAX_KEEP_PREVIOUS) {
        0 => None,
        keep => status(path)?.map(|old| (old.sha256, now + keep)),
    };
    let record = Record { sha256: hash(token.as_bytes()), created: now, previous };
    write_atomically(path, record.render().as_bytes())?;
    Ok((token, previous.map(|(_, until)| until)))
}

/// Removes the token; `Ok(false)` if there was none.
pub fn revoke(path: &Path) -> Result<bool, String> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {}", path.display(), io_reason(&e))),
    }
}

/// The stored record, `None` if no token is set. The file is opened as
/// whoever reads it may find it (root, in `check-config`, where the
/// daemon's user writes): never a link followed or a FIFO waited on.
pub fn status(path: &Path) -> Result<Option<Record>, String> {
    let (text, meta) = match crate::files::read_regular(path, MAX_FILE) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let dir = fs::metadata(parent(path)).map_err(|e| io_err(parent(path), e))?;
    only_owner_writes(parent(path), &dir, trusted_dir_owner(&dir))?;
    only_owner_writes(path, &meta, Some(std::os::unix::fs::MetadataExt::uid(&dir)))?;
    Record::parse(&text).map(Some).map_err(|e| format!("{}: {e}", path.display()))
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {}", path.display(), io_reason(&e))
}

/// For root, the owner of the token's directory, whoever it is: root
/// trusts what its configuration names (the init script gives that
/// directory to the daemon's user).
fn trusted_dir_owner(dir: &fs::Metadata) -> Option<u32> {
    nix::unistd::geteuid().is_root().then(|| std::os::unix::fs::MetadataExt::uid(dir))
}

/// Refuses a file or directory that someone other than this process's
/// user, root (who can write anything anyway) or `also` could write.
fn only_owner_writes(path: &Path, meta: &fs::Metadata, also: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 && Some(meta.uid()) != also {
        return Err(format!(
            "{}: owned by uid {}, not by this daemon's user (uid {me})",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// temp file in the same directory (0600), fsync, rename, fsync the
/// directory: a reader sees the old file or the new one, never a mix.
fn write_atomically(path: &Path, content: &[u8]) -> Result<(), String> {
    let dir = parent(path);
    let err = io_err;
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))?;
    }
    // A token written where others can replace it would be refused anyway.
    let dir_meta = fs::metadata(dir).map_err(|e| err(dir, e))?;
    let owner = trusted_dir_owner(&dir_meta);
    only_owner_writes(dir, &dir_meta, owner)?;
    let name = path.file_name().ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // Root writing into the daemon user's directory: the file is that
        // user's, as if the daemon had written it.
        if let Some(uid) = owner.filter(|u| *u != 0) {
            std::os::unix::fs::fchown(&f, Some(uid), Some(std::os::unix::fs::MetadataExt::gid(&dir_meta)))?;
        }
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(path, e));
    }
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), String> {
    let dir = parent(path);
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

/// Result of checking a presented token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Valid,
    Invalid,
    /// No token is set.
    NoToken,
    /// The token file exists but cannot be used: refuse.
    Unavailable,
}

struct Cached {
    /// The file and its directory: who may write either matters.
    stamp: Stamp,
    state: Result<Option<Record>, String>,
}

/// The live token file, re-read when it changes.
pub struct TokenStore {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
    load_ok: AtomicBool,
}

impl TokenStore {
    pub fn new(path: PathBuf) -> TokenStore {
        TokenStore { path, cached: Mutex::new(None), load_ok: AtomicBool::new(true) }
    }

    /// Whether the token file was last read successfully (absent counts).
    pub fn load_ok(&self) -> bool {
        self.load_ok.load(Ordering::Relaxed)
    }

    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn current(&self) -> Result<Option<Record>, String> {
        let stamp = Stamp::of([self.path.as_path(), parent(&self.path)]);
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = c.as_ref() {
            if cached.stamp.still(&stamp) {
                return cached.state.clone();
            }
        }
        let state = status(&self.path);
        let changed = c
            .as_ref()
            .map(|old| old.state.as_ref().map(|o| o.is_some()) != state.as_ref().map(|s| s.is_some()));
        if changed != Some(false) {
            match &state {
                Ok(Some(_)) => log::info!("token file {}: token set", self.path.display()),
                Ok(None) => log::info!("token file {}: no token", self.path.display()),
                Err(e) => log::warn!("token file {e}; refusing tokens"),
            }
        }
        self.load_ok.store(state.is_ok(), Ordering::Relaxed);
        *c = Some(Cached { stamp, state: state.clone() });
        state
    }

    pub fn check(&self, presented: &[u8]) -> Check {
        match self.current() {
            Ok(Some(stored)) if stored.accepts(&hash(presented), now()) => Check::Valid,
            Ok(Some(_)) => Check::Invalid,
            Ok(None) => Check::NoToken,
            Err(_) => Check::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_malformed() {
        let r = Record { sha256: hash(b"x"), created: 1_700_000_000, previous: None };
        assert_eq!(Record::parse(&r.render()), Ok(r.clone()));
        let kept = Record { previous: Some((hash(b"old"), 1_700_000_600)), ..r };
        assert_eq!(Record::parse(&kept.render()), Ok(kept.clone()));
        let half = kept.render().replace("previous_until=1700000600\n", "");
        let too_long = kept.render().replace("previous_until=1700000600", "previous_until=1700086401");
        for bad in [
            "",
            "sha256=00\ncreated=1\n",
            "sha256=zz\n",
            "created=1\n",
            "foo=bar\n",
            "garbage",
            &half,
            &too_long,
        ] {
            assert!(Record::parse(bad).is_err(), "{bad:?}");
        }
        // A pasted token is never quoted back.
        let e = Record::parse("# header\njkm_pasted-secret\n").unwrap_err();
        assert_eq!(e, "line 2: not KEY=VALUE of a token record");
    }

    #[test]
    fn the_previous_token_works_until_its_time_and_not_after() {
        let r = Record { sha256: hash(b"new"), created: 100, previous: Some((hash(b"old"), 200)) };
        assert!(r.accepts(&hash(b"new"), 150) && r.accepts(&hash(b"new"), 10_000));
        assert!(r.accepts(&hash(b"old"), 199));
        assert!(!r.accepts(&hash(b"old"), 200) && !r.accepts(&hash(b"other"), 150));
        assert!(!Record { previous: None, ..r }.accepts(&hash(b"old"), 150));
    }

    #[test]
    fn a_rotation_keeps_the_previous_token_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t/token.sha256");
        let (first, kept) = create(&path, 0).unwrap();
        assert_eq!(kept, None);
        let store = TokenStore::new(path.clone());
        assert_eq!(store.check(first.as_bytes()), Check::Valid);
        let (second, kept) = create(&path, 600).unwrap();
        store.invalidate();
        assert_eq!(store.check(first.as_bytes()), Check::Valid);
        assert_eq!(store.check(second.as_bytes()), Check::Valid);
        let until = status(&path).unwrap().unwrap().previous.unwrap().1;
        assert_eq!(kept, Some(until));
        assert!((599..=601).contains(&(until - now())), "{until}");
        // Rotating again without it drops both older tokens at once.
        let (third, _) = create(&path, 0).unwrap();
        store.invalidate();
        assert_eq!(store.check(first.as_bytes()), Check::Invalid);
        assert_eq!(store.check(second.as_bytes()), Check::Invalid);
        assert_eq!(store.check(third.as_bytes()), Check::Valid);
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = generate();
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert_ne!(a, generate());
    }
}

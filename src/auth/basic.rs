//! HTTP basic auth with the device password: parsing the `Authorization`
//! header, and bcrypt verification against `hashed_password` that is paid
//! once per credential, not per scrape.
//!
//! Verified (and refused) passwords are remembered as HMACs under a key
//! chosen at start, bound to the hash they were checked against, so the
//! plaintext is never kept and a password change makes old entries useless.
//! bcrypt runs on the blocking pool behind a semaphore with a bounded queue:
//! requests whose credential is remembered never wait for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};
use tokio::sync::Semaphore;

use super::Malformed;
use crate::crypto::{ct_eq, Mac};

/// bcrypt looks at 72 bytes at most; longer passwords are refused rather
/// than silently truncated.
pub const MAX_PASSWORD: usize = 72;

/// What an `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization {
    /// The password of `Basic` credentials (the username is ignored, as the
    /// device does).
    Basic(Vec<u8>),
    Bearer(String),
    /// Another scheme.
    Other,
}

/// Parses the request's `Authorization`. `Ok(None)` when absent, `Err` when
/// malformed (repeated header, bad base64, no colon, non-ASCII).
pub fn parse(headers: &HeaderMap) -> Result<Option<Authorization>, Malformed> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Malformed);
    }
    let value = value.to_str().map_err(|_| Malformed)?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| Malformed)?;
        let colon = decoded.iter().position(|b| *b == b':').ok_or(Malformed)?;
        Ok(Some(Authorization::Basic(decoded[colon + 1..].to_vec())))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(' ') {
            return Err(Malformed);
        }
        Ok(Some(Authorization::Bearer(rest.to_owned())))
    } else if scheme.is_empty() {
        Err(Malformed)
    } else {
        Ok(Some(Authorization::Other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Wrong,
    TooLong,
    /// Too many verifications waiting: try later.
    Busy,
    /// Not remembered, and the caller did not allow bcrypt.
    NotRemembered,
}

struct Remembered {
    /// MAC of the hash the entries were checked against.
    hash_mac: [u8; 32],
    ok: VecDeque<[u8; 32]>,
    wrong: VecDeque<[u8; 32]>,
}

pub struct PasswordVerifier {
    /// Drawn on first use: a device in no-password mode, or scraped only
    /// with the token, never loads OpenSSL's MAC machinery.
    mac: std::sync::OnceLock<Mac>,
    remembered: Mutex<Remembered>,
    capacity: usize,
    permits: Arc<Semaphore>,
    /// Verifications running or waiting.
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

impl PasswordVerifier {
    pub fn new(concurrency: usize, queue: usize, capacity: usize) -> Self {
        PasswordVerifier {
            mac: std::sync::OnceLock::new(),
            remembered: Mutex::new(Remembered {
                hash_mac: [0; 32],
                ok: VecDeque::new(),
                wrong: VecDeque::new(),
            }),
            capacity,
            permits: Arc::new(Semaphore::new(concurrency)),
            in_flight: AtomicUsize::new(0),
            max_in_flight: concurrency + queue,
        }
    }

    fn mac(&self) -> &Mac {
        self.mac.get_or_init(Mac::new_random)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembered verdict for this credential, dropping every entry if the
    /// hash changed.
    fn recall(&self, hash_mac: &[u8; 32], cred: &[u8; 32]) -> Option<bool> {
        let mut r = self.lock();
        if !ct_eq(&r.hash_mac, hash_mac) {
            r.hash_mac = *hash_mac;
            r.ok.clear();
            r.wrong.clear();
            return None;
        }
        let hit = |q: &VecDeque<[u8; 32]>| q.iter().fold(false, |acc, e| acc | ct_eq(e, cred));
        if hit(&r.ok) {
            Some(true)
        } else if hit(&r.wrong) {
            Some(false)
        } else {
            None
        }
    }

    fn remember(&self, hash_mac: &[u8; 32], cred: [u8; 32], ok: bool) {
        let mut r = self.lock();
        if !ct_eq(&r.hash_mac, hash_mac) {
            return; // the hash changed while we verified
        }
        let q = if ok { &mut r.ok } else { &mut r.wrong };
        if q.len() >= self.capacity {
            q.pop_front();
        }
        q.push_back(cred);
    }

    /// Forgets every remembered credential (SIGHUP).
    pub fn forget(&self) {
        let mut r = self.lock();
        r.ok.clear();
        r.wrong.clear();
    }

    /// Checks `password` against `hash`: from memory if this credential was
    /// checked before, else with bcrypt if `may_bcrypt`.
    pub async fn verify(&self, hash: &str, password: &[u8], may_bcrypt: bool) -> Verdict {
        if password.len() > MAX_PASSWORD {
            return Verdict::TooLong;
        }
        let mac = self.mac();
        let hash_mac = mac.sign(&[hash.as_bytes()]);
        let cred = mac.sign(&[hash.as_bytes(), password]);
        match self.recall(&hash_mac, &cred) {
            Some(true) => return Verdict::Ok,
            Some(false) => return Verdict::Wrong,
            None if !may_bcrypt => return Verdict::NotRemembered,
            None => {}
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Verdict::Busy;
        }
        let ok = self.run_bcrypt(hash, password).await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match ok {
            Some(ok) => {
                self.remember(&hash_mac, cred, ok);
                if ok {
                    Verdict::Ok
                } else {
                    Verdict::Wrong
                }
            }
            None => Verdict::Busy,
        }
    }

    /// `None` if the blocking pool could not run the job.
    async fn run_bcrypt(&self, hash: &str, password: &[u8]) -> Option<bool> {
        let _permit = self.permits.clone().acquire_owned().await.ok()?;
        let hash = hash.to_owned();
        let password = password.to_vec();
        let job = tokio::task::spawn_blocking(move || {
            lower_priority();
            // Lengths over 72 were refused above; at 72 and below this
            // matches Go's bcrypt (the device's), which appends a NUL that
            // the key schedule never reaches. A malformed hash verifies
            // nothing.
            bcrypt::verify(&password, &hash).unwrap_or(false)
        });
        job.await.ok()
    }
}

/// bcrypt threads run at a lower CPU priority (nice 10), so that on a
/// single core a flood of passwords to check yields to scrapes whose
/// credentials are already verified. Linux applies nice per thread.
fn lower_priority() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    DONE.with(|done| {
        if !done.get() {
            // SAFETY: gettid and setpriority take plain integers.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            done.set(true);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_headers() {
        // "user:pa:ss" -> password "pa:ss"
        assert_eq!(
            parse(&with(&[b"Basic dXNlcjpwYTpzcw=="])),
            Ok(Some(Authorization::Basic(b"pa:ss".to_vec())))
        );
        assert_eq!(parse(&with(&[b"basic   Onh4"])), Ok(Some(Authorization::Basic(b"xx".to_vec()))));
        assert_eq!(parse(&with(&[b"Bearer abc"])), Ok(Some(Authorization::Bearer("abc".into()))));
        assert_eq!(parse(&with(&[b"Digest x"])), Ok(Some(Authorization::Other)));
        assert_eq!(parse(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            &b"Basic"[..],
            b"Basic !!!",
            b"Basic dXNlcg==",       // "user": no colon
            b"Basic dXNlcjpwYTpzcw", // missing padding
            b"Bearer",
            b"Bearer a b",
            b" ",
            b"Basic \xc3\xa9",
        ] {
            assert_eq!(parse(&with(&[bad])), Err(Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&with(&[b"Basic Onh4", b"Basic Onh4"])), Err(Malformed));
    }

    #[tokio::test]
    async fn remembers_and_forgets_on_hash_change() {
        let v = PasswordVerifier::new(1, 4, 2);
        let h1 = bcrypt::hash("one", 4).unwrap();
        let h2 = bcrypt::hash("two", 4).unwrap();
        assert_eq!(v.verify(&h1, b"one", true).await, Verdict::Ok);
        assert_eq!(
            v.recall(&v.mac().sign(&[h1.as_bytes()]), &v.mac().sign(&[h1.as_bytes(), b"one"])),
            Some(true)
        );
        assert_eq!(v.verify(&h1, b"bad", true).await, Verdict::Wrong);
        assert_eq!(
            v.recall(&v.mac().sign(&[h1.as_bytes()]), &v.mac().sign(&[h1.as_bytes(), b"bad"])),
            Some(false)
        );
        assert_eq!(v.verify(&h1, b"unseen", false).await, Verdict::NotRemembered);
        assert_eq!(v.verify(&h1, b"one", false).await, Verdict::Ok);
        // New hash: the old password is checked again, and fails.
        assert_eq!(v.verify(&h2, b"one", true).await, Verdict::Wrong);
        assert_eq!(v.verify(&h2, b"two", true).await, Verdict::Ok);
        assert_eq!(v.verify(&h2, &[b'a'; 73], true).await, Verdict::TooLong);
    }

    #[tokio::test]
    async fn bounded_queue_answers_busy() {
        let v = Arc::new(PasswordVerifier::new(1, 0, 4));
        let h = bcrypt::hash("x", 8).unwrap();
        let a = {
            let v = v.clone();
            let h = h.clone();
            tokio::spawn(async move { v.verify(&h, b"y", true).await })
        };
        tokio::task::yield_now().await;
        while v.in_flight.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(v.verify(&h, b"z", true).await, Verdict::Busy);
        assert_eq!(a.await.unwrap(), Verdict::Wrong);
    }
}

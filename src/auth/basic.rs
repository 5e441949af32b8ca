//! HTTP basic auth with the device password: parsing the `Authorization`
//! header, and bcrypt verification against `hashed_password` that is paid
//! once per credential, not per scrape.
//!
//! Checked passwords are remembered as HMACs under a key drawn on first
//! use, bound to the hash they were checked against and to the client
//! address that sent them: the plaintext is never kept, a password change
//! makes old entries useless, and what one client proved is no shortcut for
//! another. Plaintext buffers are wiped when dropped (`crypto::Secret`).
//! bcrypt runs on threads of its own (`Workers`) behind a bounded queue:
//! requests whose credential is remembered never wait for it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use base64::Engine;

use super::outcome::{visible_ascii, Malformed};
use crate::crypto::{ct_eq, Mac, Secret};

/// bcrypt looks at 72 bytes at most; longer passwords are refused rather
/// than silently truncated.
pub const MAX_PASSWORD: usize = 72;

/// What an `Authorization` header holds.
#[derive(Debug, PartialEq)]
pub enum Authorization {
    /// The password of `Basic` credentials (the username is ignored, as the
    /// device does).
    Basic(Secret),
    Bearer(Secret),
    /// Another scheme.
    Other,
}

/// Parses the request's `Authorization` header values. `Ok(None)` when
/// absent, `Err` when malformed (repeated header, bad base64, no colon,
/// non-ASCII).
pub fn parse(values: &[&[u8]]) -> Result<Option<Authorization>, Malformed> {
    let value = match values {
        [] => return Ok(None),
        [one] => visible_ascii(one)?,
        _ => return Err(Malformed),
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        // Decoded in place into one wiped buffer: no copy of the plaintext
        // is left behind in freed memory.
        let mut decoded = Secret::zeroed(rest.len() / 4 * 3 + 3);
        let engine = base64::engine::general_purpose::STANDARD;
        let n = engine.decode_slice(rest, decoded.as_mut_bytes()).map_err(|_| Malformed)?;
        let colon = decoded.as_bytes()[..n].iter().position(|b| *b == b':').ok_or(Malformed)?;
        decoded.keep(colon + 1..n);
        Ok(Some(Authorization::Basic(decoded)))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(' ') {
            return Err(Malformed);
        }
        Ok(Some(Authorization::Bearer(Secret::from_slice(rest.as_bytes()))))
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
    /// Too many verifications waiting: try later.
    Busy,
}

struct Remembered {
    /// MAC of the hash the entries were checked against.
    hash_mac: [u8; 32],
    ok: VecDeque<[u8; 32]>,
    wrong: VecDeque<[u8; 32]>,
}

/// A place among the verifications running or waiting, given back when
/// dropped: when the verification ends, or when a request still waiting
/// for its turn goes away.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct PasswordVerifier {
    /// Drawn on first use: a device in no-password mode, or scraped only
    /// with the token, never loads OpenSSL's MAC machinery.
    mac: std::sync::OnceLock<Mac>,
    remembered: Mutex<Remembered>,
    capacity: usize,
    workers: Workers,
    /// Verifications running or waiting.
    in_flight: Arc<AtomicUsize>,
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
            workers: Workers { count: concurrency, queue: OnceLock::new() },
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: concurrency + queue,
        }
    }

    fn mac(&self) -> &Mac {
        self.mac.get_or_init(Mac::new_random)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The MACs naming this hash, and this password from this client.
    fn macs(&self, hash: &str, client: IpAddr, password: &[u8]) -> ([u8; 32], [u8; 32]) {
        let mac = self.mac();
        let client = client_bytes(client);
        (mac.sign(&[hash.as_bytes()]), mac.sign(&[hash.as_bytes(), &client, password]))
    }

    /// Names this password from this client against this hash, for the
    /// failure budget's record of what the client tried.
    pub fn fingerprint(&self, hash: &str, client: IpAddr, password: &[u8]) -> super::ratelimit::Fingerprint {
        let mut fp = [0; 16];
        fp.copy_from_slice(&self.macs(hash, client, password).1[..16]);
        fp
    }

    /// What was remembered of this password from this client: `Some(true)`
    /// verified, `Some(false)` refused, `None` never checked. Every entry is
    /// compared, in constant time, whatever the answer.
    pub fn recall(&self, hash: &str, client: IpAddr, password: &[u8]) -> Option<bool> {
        let (hash_mac, cred) = self.macs(hash, client, password);
        let mut r = self.lock();
        if !ct_eq(&r.hash_mac, &hash_mac) {
            r.hash_mac = hash_mac;
            r.ok.clear();
            r.wrong.clear();
            return None;
        }
        let hit = |q: &VecDeque<[u8; 32]>| q.iter().fold(false, |acc, e| acc | ct_eq(e, &cred));
        let (ok, wrong) = (hit(&r.ok), hit(&r.wrong));
        if ok {
            Some(true)
        } else if wrong {
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

    /// Checks `password` from `client` against `hash` with bcrypt, and
    /// remembers the verdict. The caller has checked the length (at most
    /// [`MAX_PASSWORD`]) and the client's budget.
    pub async fn verify(&self, hash: &str, client: IpAddr, password: &[u8]) -> Verdict {
        let Some(slot) = Slot::take(&self.in_flight, self.max_in_flight) else {
            return Verdict::Busy;
        };
        let (hash_mac, cred) = self.macs(hash, client, password);
        let owned_hash = hash.to_owned();
        let password = Secret::from_slice(password);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The slot goes with the work: a request dropped while bcrypt runs
        // does not free it before the CPU is free.
        let job: Job = Box::new(move || {
            let _slot = slot;
            // Whoever asked has gone away while this waited: no answer needed.
            if tx.is_closed() {
                return;
            }
            // Lengths over 72 were refused by the caller; at 72 and below
            // this matches Go's bcrypt (the device's), which appends a NUL
            // that the key schedule never reaches. A malformed hash
            // verifies nothing.
            let _ = tx.send(bcrypt::verify(password.as_bytes(), &owned_hash).unwrap_or(false));
        });
        if !self.workers.send(job) {
            return Verdict::Busy;
        }
        match rx.await {
            Ok(ok) => {
                self.remember(&hash_mac, cred, ok);
                if ok {
                    Verdict::Ok
                } else {
                    Verdict::Wrong
                }
            }
            Err(_) => Verdict::Busy,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// bcrypt's own threads, started on first use, at a lower CPU priority (nice
/// 10, which Linux applies per thread): on a single core a flood of
/// passwords to check yields to scrapes. Not the runtime's blocking pool,
/// whose threads serve the settings page's token files and must not
/// inherit that.
struct Workers {
    count: usize,
    queue: OnceLock<mpsc::Sender<Job>>,
}

/// Stack of a bcrypt thread: the cipher state is 4 KiB.
const WORKER_STACK: usize = 128 * 1024;

impl Workers {
    /// `false` if no thread could take it.
    fn send(&self, job: Job) -> bool {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..self.count {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name("bcrypt".into())
                    .stack_size(WORKER_STACK)
                    .spawn(move || {
                        lower_priority();
                        loop {
                            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start a bcrypt thread: {e}");
                }
            }
            tx
        });
        queue.send(job).is_ok()
    }
}

/// The address a credential is bound to: IPv4-mapped IPv6 as IPv4.
fn client_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.to_ipv6_mapped()).unwrap_or(v6).octets(),
    }
}

fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn with<'a>(values: &[&'a [u8]]) -> Vec<&'a [u8]> {
        values.to_vec()
    }

    fn basic(p: &[u8]) -> Option<Authorization> {
        Some(Authorization::Basic(Secret::from_slice(p)))
    }

    #[test]
    fn parses_headers() {
        // "user:pa:ss" -> password "pa:ss"
        assert_eq!(parse(&with(&[b"Basic dXNlcjpwYTpzcw=="])), Ok(basic(b"pa:ss")));
        assert_eq!(parse(&with(&[b"basic   Onh4"])), Ok(basic(b"xx")));
        assert_eq!(parse(&with(&[b"Basic dXNlcjo="])), Ok(basic(b"")));
        assert_eq!(
            parse(&with(&[b"Bearer abc"])),
            Ok(Some(Authorization::Bearer(Secret::from_slice(b"abc"))))
        );
        assert_eq!(parse(&with(&[b"Digest x"])), Ok(Some(Authorization::Other)));
        assert_eq!(parse(&[]), Ok(None));
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
    async fn remembers_per_client_and_forgets_on_hash_change() {
        let v = PasswordVerifier::new(1, 4, 2);
        let h1 = bcrypt::hash("one", 4).unwrap();
        let h2 = bcrypt::hash("two", 4).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(v.recall(&h1, a, b"one"), None);
        assert_eq!(v.verify(&h1, a, b"one").await, Verdict::Ok);
        assert_eq!(v.recall(&h1, a, b"one"), Some(true));
        // The same address mapped into IPv6 is the same client...
        assert_eq!(v.recall(&h1, "::ffff:192.0.2.1".parse().unwrap(), b"one"), Some(true));
        // ...another client proved nothing yet.
        assert_eq!(v.recall(&h1, b, b"one"), None);
        assert_eq!(v.verify(&h1, a, b"bad").await, Verdict::Wrong);
        assert_eq!(v.recall(&h1, a, b"bad"), Some(false));
        // New hash: everything is forgotten, and the old password fails.
        assert_eq!(v.recall(&h2, a, b"one"), None);
        assert_eq!(v.verify(&h2, a, b"one").await, Verdict::Wrong);
        assert_eq!(v.verify(&h2, a, b"two").await, Verdict::Ok);
        v.forget();
        assert_eq!(v.recall(&h2, a, b"two"), None);
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// A wrong password for `h` being checked, once it holds its place.
    async fn running(v: &Arc<PasswordVerifier>, h: &str) -> tokio::task::JoinHandle<Verdict> {
        let (v2, h) = (v.clone(), h.to_owned());
        let job = tokio::spawn(async move { v2.verify(&h, CLIENT, b"wrong").await });
        while v.in_flight.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        job
    }

    #[tokio::test]
    async fn bounded_queue_answers_busy() {
        let v = Arc::new(PasswordVerifier::new(1, 0, 4));
        let h = bcrypt::hash("x", 8).unwrap();
        let a = running(&v, &h).await;
        assert_eq!(v.verify(&h, CLIENT, b"z").await, Verdict::Busy);
        assert_eq!(a.await.unwrap(), Verdict::Wrong);
    }

    /// Regression: a request dropped while its bcrypt ran (a client that
    /// hung up, a timeout) kept its place in the queue for ever, and once
    /// the queue was full every new password was answered "busy".
    #[tokio::test]
    async fn a_dropped_request_gives_its_place_back() {
        let v = PasswordVerifier::new(1, 0, 4);
        let h = bcrypt::hash("x", 10).unwrap();
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        let dropped = tokio::time::timeout(Duration::from_millis(5), v.verify(&h, c, b"y")).await;
        assert!(dropped.is_err(), "bcrypt at cost 10 took under 5 ms");
        // Held while the CPU still runs it, given back when it ends.
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while v.in_flight.load(Ordering::Acquire) != 0 {
            assert!(std::time::Instant::now() < end, "place never given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(v.verify(&h, c, b"x").await, Verdict::Ok);
    }

    #[tokio::test]
    async fn a_request_dropped_while_waiting_gives_its_place_back() {
        let v = Arc::new(PasswordVerifier::new(1, 1, 4));
        let h = bcrypt::hash("x", 10).unwrap();
        let first = running(&v, &h).await;
        let waiting = tokio::time::timeout(Duration::from_millis(5), v.verify(&h, CLIENT, b"b")).await;
        assert!(waiting.is_err());
        assert_eq!(first.await.unwrap(), Verdict::Wrong);
        // The dropped one is skipped when its turn comes, and its place freed.
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while v.in_flight.load(Ordering::Acquire) != 0 {
            assert!(std::time::Instant::now() < end, "place never given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

//! Brute-force resistance: how many failed authentications a client may
//! make. It owns the budgets; which checks a request over budget still gets
//! is decided in `auth::decide`.
//!
//! - Each client has a token bucket of `burst` failures, refilled one per
//!   `interval`. A client is an IPv4 address, an IPv6 /64 (one host usually
//!   holds all of it), or one IPv6 link-local address (every host on the
//!   link shares fe80::/64).
//! - The budget is taken when a request is checked, not after the outcome,
//!   and given back if the request is allowed: N concurrent guesses cost N.
//! - Requests refused while over budget keep costing: the bucket goes into
//!   debt (down to `-burst`), so a client sending faster than one request
//!   per interval never gets another check, however fast it sends.
//! - Clients not yet known good (never allowed) share one more bucket for
//!   bcrypt verifications, so an attacker with more addresses than the
//!   table holds, or than anyone could track, still gets a bounded number
//!   of password checks a second in total.
//! - The table holds `max_clients` entries, least recently used evicted in
//!   constant time; nothing runs on a timer (buckets refill on use).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whose budget a request spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    /// A global or unique-local IPv6 /64.
    V6Net(u64),
    /// A link-local IPv6 address (per address: the /64 is everyone's).
    V6LinkLocal(u128),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(u32::from(v4)),
                None if v6.segments()[0] & 0xffc0 == 0xfe80 => Client::V6LinkLocal(u128::from(v6)),
                None => Client::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A token bucket that may go into debt.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    fn refill(&mut self, burst: f64, interval: Duration, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / interval.as_secs_f64();
        self.tokens = (self.tokens + gained).min(burst);
        self.at = now;
    }

    /// Time until one token is available.
    fn wait(&self, interval: Duration) -> Duration {
        interval.mul_f64((1.0 - self.tokens).max(0.0))
    }
}

const NIL: usize = usize::MAX;

struct Entry {
    client: Client,
    bucket: Bucket,
    /// Allowed at least once since it entered the table.
    known_good: bool,
    newer: usize,
    older: usize,
}

/// Clients by recency: a hash map into a slab threaded with a doubly
/// linked list, so lookup, insertion and eviction take constant time.
struct Table {
    index: HashMap<Client, usize>,
    slab: Vec<Entry>,
    newest: usize,
    oldest: usize,
    max: usize,
}

impl Table {
    fn new(max: usize) -> Table {
        Table { index: HashMap::new(), slab: Vec::new(), newest: NIL, oldest: NIL, max: max.max(1) }
    }

    fn unlink(&mut self, i: usize) {
        let (newer, older) = (self.slab[i].newer, self.slab[i].older);
        match newer {
            NIL => self.newest = older,
            n => self.slab[n].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.slab[o].newer = newer,
        }
    }

    fn push_newest(&mut self, i: usize) {
        self.slab[i].newer = NIL;
        self.slab[i].older = self.newest;
        match self.newest {
            NIL => self.oldest = i,
            n => self.slab[n].newer = i,
        }
        self.newest = i;
    }

    /// The client's entry, made most recent; a new one (full bucket) takes
    /// a free slot or the least recently used one.
    fn entry(&mut self, client: Client, burst: f64, now: Instant) -> &mut Entry {
        let i = match self.index.get(&client) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => {
                let fresh = Entry {
                    client,
                    bucket: Bucket::full(burst, now),
                    known_good: false,
                    newer: NIL,
                    older: NIL,
                };
                let i = if self.slab.len() < self.max {
                    self.slab.push(fresh);
                    self.slab.len() - 1
                } else {
                    let i = self.oldest;
                    self.unlink(i);
                    self.index.remove(&self.slab[i].client);
                    self.slab[i] = fresh;
                    i
                };
                self.index.insert(client, i);
                i
            }
        };
        self.push_newest(i);
        &mut self.slab[i]
    }

    fn get(&self, client: Client) -> Option<&Entry> {
        self.index.get(&client).map(|&i| &self.slab[i])
    }
}

/// One unit of a client's budget, taken for one request.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    pub client: Client,
    /// Whether the client had budget left when the request arrived.
    pub within: bool,
    /// While over budget: when a request may be checked again.
    pub retry_after: Duration,
}

pub struct FailureLimiter {
    burst: f64,
    interval: Duration,
    /// The shared bucket of clients not known good: `burst` at once, then
    /// one per this interval.
    unverified_interval: Duration,
    state: Mutex<(Table, Bucket)>,
}

impl FailureLimiter {
    /// `burst` failures at once per client, then one more per `interval`;
    /// bcrypt checks of clients not known good: `burst` at once in total,
    /// then one per `unverified_interval`.
    pub fn new(burst: u32, interval: Duration, unverified_interval: Duration, max_clients: usize) -> Self {
        let burst = f64::from(burst.max(1));
        FailureLimiter {
            burst,
            interval,
            unverified_interval,
            state: Mutex::new((Table::new(max_clients), Bucket::full(burst, Instant::now()))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Table, Bucket)> {
        // A poisoned lock only means a panic elsewhere mid-update; buckets
        // are plain numbers that stay meaningful.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one unit of the client's budget for a request about to be
    /// checked, going into debt if there is none left.
    pub fn take(&self, ip: IpAddr) -> Ticket {
        let client = Client::from(ip);
        let now = Instant::now();
        let (burst, interval) = (self.burst, self.interval);
        let mut state = self.lock();
        let b = &mut state.0.entry(client, burst, now).bucket;
        b.refill(burst, interval, now);
        let within = b.tokens >= 1.0;
        b.tokens = (b.tokens - 1.0).max(-burst);
        Ticket { client, within, retry_after: b.wait(interval) }
    }

    /// The request was allowed: its unit comes back, and the client is
    /// known good from now on.
    pub fn allowed(&self, ticket: &Ticket) {
        let now = Instant::now();
        let (burst, interval) = (self.burst, self.interval);
        let mut state = self.lock();
        let e = state.0.entry(ticket.client, burst, now);
        e.bucket.refill(burst, interval, now);
        e.bucket.tokens = (e.bucket.tokens + 1.0).min(burst);
        e.known_good = true;
    }

    pub fn known_good(&self, ip: IpAddr) -> bool {
        self.lock().0.get(Client::from(ip)).is_some_and(|e| e.known_good)
    }

    /// One bcrypt check for a client not known good, from the shared
    /// bucket; `Err(retry_after)` when it is empty.
    pub fn take_unverified(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        let b = &mut state.1;
        b.refill(self.burst, self.unverified_interval, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(b.wait(self.unverified_interval))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(burst: u32, interval_ms: u64, max: usize) -> FailureLimiter {
        FailureLimiter::new(burst, Duration::from_millis(interval_ms), Duration::from_secs(1), max)
    }

    #[test]
    fn budget_is_taken_per_check_and_given_back_when_allowed() {
        let l = limiter(3, 60_000, 10);
        let a = ip("127.0.0.2");
        // Three checks in flight at once cost three, whatever their outcome.
        let tickets: Vec<Ticket> = (0..3).map(|_| l.take(a)).collect();
        assert!(tickets.iter().all(|t| t.within));
        assert!(!l.take(a).within);
        // Allowed requests cost nothing.
        l.allowed(&tickets[0]);
        l.allowed(&tickets[1]);
        assert!(l.take(a).within);
        assert!(l.known_good(a) && !l.known_good(ip("127.0.0.3")));
        assert!(l.take(ip("127.0.0.3")).within);
    }

    #[test]
    fn refusals_over_budget_go_into_debt() {
        let l = limiter(2, 50, 10);
        let a = ip("127.0.0.2");
        for _ in 0..2 {
            assert!(l.take(a).within);
        }
        // Sending faster than one per interval never gets a check, however
        // long it goes on: every refused request costs one more.
        let end = Instant::now() + Duration::from_millis(400);
        let mut checks = 0;
        while Instant::now() < end {
            if l.take(a).within {
                checks += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(checks, 0);
        // Debt is bounded: after (burst + 1) intervals of quiet, one check.
        let t = l.take(a);
        assert!(!t.within && t.retry_after > Duration::from_millis(100), "{t:?}");
        std::thread::sleep(Duration::from_millis(3 * 50 + 60));
        assert!(l.take(a).within);
    }

    #[test]
    fn clients_are_v4_addresses_v6_nets_and_link_local_addresses() {
        let l = limiter(1, 60_000, 10);
        l.take(ip("2001:db8::1"));
        assert!(!l.take(ip("2001:db8::ffff")).within);
        assert!(l.take(ip("2001:db8:0:1::1")).within);
        l.take(ip("::ffff:10.0.0.1"));
        assert!(!l.take(ip("10.0.0.1")).within);
        // Link-local: per address, not one shared fe80::/64.
        l.take(ip("fe80::1"));
        assert!(!l.take(ip("fe80::1")).within);
        assert!(l.take(ip("fe80::2")).within);
        assert!(matches!(Client::from(ip("febf::1")), Client::V6LinkLocal(_)));
        assert!(matches!(Client::from(ip("fec0::1")), Client::V6Net(_)));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_least_recent() {
        let l = limiter(1, 60_000, 4);
        for i in 0..100u32 {
            l.take(IpAddr::V4(i.into()));
        }
        let state = l.lock();
        assert_eq!((state.0.slab.len(), state.0.index.len()), (4, 4));
        drop(state);
        // The four most recent are still there; the others were evicted.
        for i in 96..100u32 {
            assert!(l.lock().0.get(Client::V4(i)).is_some(), "{i}");
        }
        assert!(l.lock().0.get(Client::V4(95)).is_none());
        // Touching an entry makes it the most recent: it survives the next
        // insertion, the least recent does not.
        l.take(IpAddr::V4(96u32.into()));
        l.take(IpAddr::V4(200u32.into()));
        assert!(l.lock().0.get(Client::V4(96)).is_some());
        assert!(l.lock().0.get(Client::V4(97)).is_none());
    }

    #[test]
    fn shared_bucket_bounds_unverified_checks() {
        let l = FailureLimiter::new(3, Duration::from_secs(60), Duration::from_millis(100), 16);
        for _ in 0..3 {
            assert!(l.take_unverified().is_ok());
        }
        let retry = l.take_unverified().unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.take_unverified().is_ok());
    }
}

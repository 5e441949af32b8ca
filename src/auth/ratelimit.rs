//! Brute-force resistance: how many passwords a client may try. It owns
//! the budgets; `auth` asks it before a password is checked.
//!
//! - The budget counts distinct passwords, not requests. Each client keeps
//!   a short ring of the passwords it tried against the current hash (as
//!   MACs): one found wrong is refused again at no cost, and one not yet
//!   checked (it came while over budget) costs nothing more when repeated.
//!   So a Prometheus job left with an old password costs one unit after a
//!   password change, not one per scrape.
//! - Each address has a token bucket of `burst` new passwords, refilled one
//!   per `interval`. The budget is taken when a password is about to be
//!   checked, not after the outcome, and given back if it was right: N
//!   concurrent guesses cost N.
//! - New passwords sent while over budget keep costing: the bucket goes
//!   into debt (down to `-burst`), so a client trying new passwords faster
//!   than one per interval never gets another check.
//! - An IPv6 address also draws on its /64's bucket, [`NET_FACTOR`] times
//!   looser (SLAAC gives one host many addresses, and the whole LAN one
//!   /64). A check is charged to the /64 only when the address is within
//!   its own budget, so one address cannot spend its neighbours'.
//!   Link-local addresses have no /64 bucket: fe80::/64 is every link's.
//! - Clients not yet known good (never allowed) share one more bucket for
//!   bcrypt verifications, so an attacker with more addresses than the
//!   table holds still gets a bounded number of password checks a second.
//! - The table holds `max_clients` entries, least recently used evicted in
//!   constant time; nothing runs on a timer (buckets refill on use).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crypto::ct_eq;

/// An IPv6 /64 may try this many times one address's passwords: at once,
/// and per interval.
pub const NET_FACTOR: u32 = 4;

/// Passwords remembered per client (wrong, or not yet checked).
const SEEN: usize = 8;

/// A password tried against the current hash, as the caller's MAC of both.
pub type Fingerprint = [u8; 16];

/// Whose budget a request spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    V6(u128),
    /// The shared budget of a global or unique-local IPv6 /64.
    V6Net(u64),
}

/// The address's own budget, and its /64's for IPv6 outside link-local.
fn clients(ip: IpAddr) -> (Client, Option<Client>) {
    match ip {
        IpAddr::V4(v4) => (Client::V4(u32::from(v4)), None),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (Client::V4(u32::from(v4)), None),
            None if v6.segments()[0] & 0xffc0 == 0xfe80 => (Client::V6(u128::from(v6)), None),
            None => (Client::V6(u128::from(v6)), Some(Client::V6Net((u128::from(v6) >> 64) as u64))),
        },
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

    /// Time until `level` tokens are there.
    fn wait(&self, level: f64, interval: Duration) -> Duration {
        interval.mul_f64((level - self.tokens).max(0.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// Checked against the current hash and refused.
    Wrong,
    /// Paid for, not yet checked (it came while over budget, or the check
    /// could not run).
    Unchecked,
    /// Being checked now.
    Checking,
}

/// The passwords a client tried lately, oldest replaced first.
#[derive(Default)]
struct Seen {
    ring: [Option<(Fingerprint, Mark)>; SEEN],
    next: usize,
}

impl Seen {
    /// Every slot is compared, whatever the answer.
    fn find(&self, fp: &Fingerprint) -> Option<usize> {
        let mut at = None;
        for (i, slot) in self.ring.iter().enumerate() {
            if let Some((f, _)) = slot {
                if ct_eq(f, fp) {
                    at = Some(i);
                }
            }
        }
        at
    }

    fn mark(&mut self, fp: &Fingerprint, mark: Option<Mark>) {
        let i = match self.find(fp) {
            Some(i) => i,
            None if mark.is_none() => return,
            None => {
                let i = self.next;
                self.next = (self.next + 1) % SEEN;
                i
            }
        };
        self.ring[i] = mark.map(|m| (*fp, m));
    }
}

const NIL: usize = usize::MAX;

struct Entry {
    client: Client,
    bucket: Bucket,
    /// Allowed at least once since it entered the table.
    known_good: bool,
    seen: Seen,
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
                    seen: Seen::default(),
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

/// A password about to be checked, with the budget it took. Dropped
/// without [`Ticket::finish`] (the request went away mid-check), it counts
/// as not checked.
pub struct Ticket<'a> {
    limiter: &'a FailureLimiter,
    client: Client,
    net: Option<Client>,
    fp: Fingerprint,
    done: bool,
}

impl Ticket<'_> {
    /// How the check ended: a right password gives its units back and is
    /// forgotten, a wrong one is remembered as wrong.
    pub fn finish(mut self, outcome: Checked) {
        self.done = true;
        self.limiter.checked(&self, outcome);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.limiter.checked(self, Checked::NotRun);
        }
    }
}

impl std::fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("client", &self.client).finish_non_exhaustive()
    }
}

/// What a client's password may have.
#[derive(Debug)]
pub enum Guess<'a> {
    /// This client tried it against the current hash and it was wrong:
    /// refused again at no cost.
    KnownWrong,
    /// The same password from this client is being checked now.
    InFlight,
    /// Check it now, then report with [`Ticket::finish`].
    Check(Ticket<'a>),
    /// Over budget: not checked; retry after this long.
    Limited(Duration),
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    Right,
    Wrong,
    /// bcrypt did not run (its queue or the shared budget was full).
    NotRun,
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
    /// `burst` new passwords at once per address, then one more per
    /// `interval`; bcrypt checks of clients not known good: `burst` at once
    /// in total, then one per `unverified_interval`.
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

    /// The bucket size and refill interval of a client.
    fn shape(&self, client: Client) -> (f64, Duration) {
        match client {
            Client::V6Net(_) => (self.burst * f64::from(NET_FACTOR), self.interval / NET_FACTOR),
            _ => (self.burst, self.interval),
        }
    }

    /// The client's bucket, refilled to now.
    fn bucket<'a>(&self, table: &'a mut Table, client: Client, now: Instant) -> &'a mut Bucket {
        let (burst, interval) = self.shape(client);
        let b = &mut table.entry(client, burst, now).bucket;
        b.refill(burst, interval, now);
        b
    }

    /// Whether the password `fp` from `ip` may be checked now. A new one
    /// costs one unit of the address's budget whatever happens next.
    pub fn guess(&self, ip: IpAddr, fp: &Fingerprint) -> Guess<'_> {
        let (client, net) = clients(ip);
        let now = Instant::now();
        let mut state = self.lock();
        let table = &mut state.0;
        // The /64 first: touching it after the address keeps the address
        // the most recent entry.
        let net_tokens = net.map(|n| self.bucket(table, n, now).tokens);
        self.bucket(table, client, now);
        let burst = self.burst;
        let e = table.entry(client, burst, now);
        let known = e.seen.find(fp).and_then(|i| e.seen.ring[i]).map(|(_, m)| m);
        // A new password needs a whole unit; one already paid for needs the
        // debt paid off.
        let level = match known {
            Some(Mark::Wrong) => return Guess::KnownWrong,
            Some(Mark::Checking) => return Guess::InFlight,
            Some(Mark::Unchecked) => 0.0,
            None => 1.0,
        };
        let within = e.bucket.tokens >= level;
        let mut retry = e.bucket.wait(level, self.interval);
        if known.is_none() {
            e.bucket.tokens = (e.bucket.tokens - 1.0).max(-burst);
            e.seen.mark(fp, Some(Mark::Unchecked));
            retry = e.bucket.wait(0.0, self.interval);
        }
        let net_within = net_tokens.is_none_or(|t| t >= 1.0);
        if let (Some(n), false) = (net, net_within) {
            let (_, interval) = self.shape(n);
            retry = retry.max(table.get(n).map_or(Duration::ZERO, |e| e.bucket.wait(1.0, interval)));
        }
        if !(within && net_within) {
            return Guess::Limited(retry.max(Duration::from_millis(1)));
        }
        table.entry(client, burst, now).seen.mark(fp, Some(Mark::Checking));
        if let Some(n) = net {
            self.bucket(table, n, now).tokens -= 1.0;
            // Back to the front: the address is what the next request looks up.
            table.entry(client, burst, now);
        }
        Guess::Check(Ticket { limiter: self, client, net, fp: *fp, done: false })
    }

    fn checked(&self, ticket: &Ticket, outcome: Checked) {
        let now = Instant::now();
        let mut state = self.lock();
        let table = &mut state.0;
        let mark = match outcome {
            Checked::Right => None,
            Checked::Wrong => Some(Mark::Wrong),
            Checked::NotRun => Some(Mark::Unchecked),
        };
        if outcome == Checked::Right {
            for c in std::iter::once(ticket.client).chain(ticket.net) {
                let (burst, _) = self.shape(c);
                let b = self.bucket(table, c, now);
                b.tokens = (b.tokens + 1.0).min(burst);
            }
        } else if outcome == Checked::NotRun {
            // Not checked: the /64's unit comes back (the address paid for
            // the password when it was new).
            if let Some(n) = ticket.net {
                let (burst, _) = self.shape(n);
                let b = self.bucket(table, n, now);
                b.tokens = (b.tokens + 1.0).min(burst);
            }
        }
        let burst = self.burst;
        table.entry(ticket.client, burst, now).seen.mark(&ticket.fp, mark);
    }

    /// A request from `ip` was allowed: the client is known good from now
    /// on.
    pub fn allowed(&self, ip: IpAddr) {
        let now = Instant::now();
        let burst = self.burst;
        self.lock().0.entry(clients(ip).0, burst, now).known_good = true;
    }

    /// `Some(retry_after)` when the address has no budget left for a new
    /// password. Costs nothing.
    pub fn over_budget(&self, ip: IpAddr) -> Option<Duration> {
        let (client, _) = clients(ip);
        let now = Instant::now();
        let state = self.lock();
        let mut b = state.0.get(client)?.bucket;
        b.refill(self.burst, self.interval, now);
        (b.tokens < 1.0).then(|| b.wait(1.0, self.interval))
    }

    pub fn known_good(&self, ip: IpAddr) -> bool {
        self.lock().0.get(clients(ip).0).is_some_and(|e| e.known_good)
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
            Err(b.wait(1.0, self.unverified_interval))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fp(n: u8) -> Fingerprint {
        [n; 16]
    }

    fn limiter(burst: u32, interval_ms: u64, max: usize) -> FailureLimiter {
        FailureLimiter::new(burst, Duration::from_millis(interval_ms), Duration::from_secs(1), max)
    }

    fn check<'a>(l: &'a FailureLimiter, from: &str, n: u8) -> Option<Ticket<'a>> {
        match l.guess(ip(from), &fp(n)) {
            Guess::Check(t) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn budget_is_taken_per_new_password_and_given_back_when_right() {
        let l = limiter(3, 60_000, 10);
        // Three checks in flight at once cost three, whatever their outcome.
        let tickets: Vec<Ticket> = (0..3).map(|n| check(&l, "127.0.0.2", n).unwrap()).collect();
        assert!(matches!(l.guess(ip("127.0.0.2"), &fp(3)), Guess::Limited(_)));
        // The same password while it is being checked is not checked twice.
        assert!(matches!(l.guess(ip("127.0.0.2"), &fp(0)), Guess::InFlight));
        // A right password costs nothing; a wrong one is refused again free.
        let mut t = tickets.into_iter();
        t.next().unwrap().finish(Checked::Right);
        t.next().unwrap().finish(Checked::Wrong);
        l.allowed(ip("127.0.0.2"));
        assert!(matches!(l.guess(ip("127.0.0.2"), &fp(1)), Guess::KnownWrong));
        // fp(3) came while over budget: it was paid for, and the unit the
        // right password gave back pays off that debt, so it is checked now.
        assert!(check(&l, "127.0.0.2", 3).is_some());
        assert!(l.known_good(ip("127.0.0.2")) && !l.known_good(ip("127.0.0.3")));
        assert!(check(&l, "127.0.0.3", 0).is_some());
    }

    #[test]
    fn new_passwords_over_budget_go_into_debt_repeated_ones_do_not() {
        let l = limiter(2, 50, 10);
        let a = "127.0.0.2";
        for n in 0..2 {
            check(&l, a, n).unwrap().finish(Checked::Wrong);
        }
        // New passwords faster than one per interval never get a check,
        // however long it goes on: every one costs one more.
        let end = Instant::now() + Duration::from_millis(400);
        let mut n = 10;
        while Instant::now() < end {
            assert!(check(&l, a, n).is_none());
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        // Debt is bounded: the last password (already paid for) is checked
        // once the debt (at most `burst`) is paid off.
        let Guess::Limited(retry) = l.guess(ip(a), &fp(n - 1)) else { panic!() };
        assert!(retry > Duration::from_millis(50) && retry <= Duration::from_millis(100), "{retry:?}");
        // Repeating it costs nothing.
        for _ in 0..50 {
            assert!(matches!(l.guess(ip(a), &fp(n - 1)), Guess::Limited(_)));
        }
        std::thread::sleep(Duration::from_millis(2 * 50 + 30));
        assert!(check(&l, a, n - 1).is_some());
    }

    #[test]
    fn ipv6_addresses_have_their_own_budget_and_share_a_looser_one_per_64() {
        let l = limiter(1, 60_000, 64);
        // Checks in flight hold their units.
        let mut held = Vec::new();
        // One address over its budget leaves its neighbours theirs.
        held.extend(check(&l, "2001:db8::1", 0));
        for n in 1..20 {
            assert!(check(&l, "2001:db8::1", n).is_none());
        }
        held.extend(check(&l, "2001:db8::2", 0));
        // The /64 has NET_FACTOR addresses' worth: after that, its other
        // addresses wait too; another /64 does not.
        for h in 3..=NET_FACTOR {
            held.extend(check(&l, &format!("2001:db8::{h}"), 0));
        }
        assert_eq!(held.len(), NET_FACTOR as usize);
        assert!(check(&l, "2001:db8::99", 0).is_none());
        assert!(check(&l, "2001:db8:0:1::1", 0).is_some());
        // A check that did not run (here: the request went away) gives the
        // /64 its unit back.
        drop(check(&l, "2001:db8:0:1::2", 0).unwrap());
        assert!(check(&l, "2001:db8:0:1::2", 0).is_some());
        // IPv4 in IPv6 is the IPv4 address; link-local is per address.
        check(&l, "::ffff:10.0.0.1", 0);
        assert!(check(&l, "10.0.0.1", 1).is_none());
        for h in 1..=2 * NET_FACTOR {
            assert!(check(&l, &format!("fe80::{h}"), 0).is_some(), "{h}");
        }
        assert_eq!(clients(ip("febf::1")), (Client::V6(0xfebfu128 << 112 | 1), None));
        assert!(matches!(clients(ip("fec0::1")).1, Some(Client::V6Net(_))));
    }

    #[test]
    fn the_ring_of_passwords_is_bounded() {
        let l = limiter(100, 60_000, 4);
        for n in 0..(SEEN as u8 + 1) {
            check(&l, "127.0.0.2", n).unwrap().finish(Checked::Wrong);
        }
        // The oldest was replaced, and is a new password again.
        assert!(check(&l, "127.0.0.2", 0).is_some());
        assert!(matches!(l.guess(ip("127.0.0.2"), &fp(SEEN as u8)), Guess::KnownWrong));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_least_recent() {
        let l = limiter(1, 60_000, 4);
        for i in 0..100u32 {
            l.guess(IpAddr::V4(i.into()), &fp(0));
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
        l.guess(IpAddr::V4(96u32.into()), &fp(1));
        l.guess(IpAddr::V4(200u32.into()), &fp(1));
        assert!(l.lock().0.get(Client::V4(96)).is_some());
        assert!(l.lock().0.get(Client::V4(97)).is_none());
    }

    #[test]
    fn an_entry_with_its_ring_is_small() {
        // tracked_clients (4096) of them, with their index, stay near 1.2 MB.
        let size = std::mem::size_of::<Entry>() + std::mem::size_of::<(Client, usize)>();
        eprintln!("{size} bytes a client");
        assert!(size <= 300, "{size}");
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

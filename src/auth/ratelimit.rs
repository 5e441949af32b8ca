//! Brute-force resistance: failed authentications are limited per client
//! address with a token bucket (IPv6 per /64). A client out of tokens gets
//! 429 before any credential work, bcrypt included. Buckets refill lazily on
//! use; nothing runs on a timer. Memory is bounded: when the table is full,
//! full buckets (which carry no state) go first, then the least recent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    /// The /64 prefix: one host usually holds all of it.
    V6(u64),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(u32::from(v4)),
                None => Client::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct FailureLimiter {
    burst: f64,
    interval: Duration,
    max_clients: usize,
    buckets: Mutex<HashMap<Client, Bucket>>,
}

impl FailureLimiter {
    /// `burst` failures at once, then one more per `interval`.
    pub fn new(burst: u32, interval: Duration, max_clients: usize) -> Self {
        FailureLimiter { burst: burst as f64, interval, max_clients, buckets: Mutex::new(HashMap::new()) }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(b.at).as_secs_f64() / self.interval.as_secs_f64();
        (b.tokens + gained).min(self.burst)
    }

    /// `Err(retry_after)` while the client has no failures left.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.get(&Client::from(ip)) else { return Ok(()) };
        let tokens = self.refilled(b, Instant::now());
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(self.interval.mul_f64(1.0 - tokens))
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let client = Client::from(ip);
        if !map.contains_key(&client) && map.len() >= self.max_clients {
            map.retain(|_, b| self.refilled(b, now) < self.burst);
            if map.len() >= self.max_clients {
                if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let b = map.entry(client).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (self.refilled(b, now) - 1.0).max(0.0);
        b.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_after_burst_per_client_and_recovers() {
        let l = FailureLimiter::new(3, Duration::from_millis(50), 10);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.record_failure(a);
        }
        let retry = l.check(a).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(50));
        assert!(l.check(b).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.check(a).is_ok());
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_v4_as_v4() {
        let l = FailureLimiter::new(1, Duration::from_secs(60), 10);
        l.record_failure("2001:db8::1".parse().unwrap());
        assert!(l.check("2001:db8::ffff".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        l.record_failure("::ffff:10.0.0.1".parse().unwrap());
        assert!(l.check("10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn table_is_bounded() {
        let l = FailureLimiter::new(1, Duration::from_secs(60), 4);
        for i in 0..100u32 {
            l.record_failure(IpAddr::V4(i.into()));
        }
        assert!(l.buckets.lock().unwrap().len() <= 4);
        // The most recent client is still limited.
        assert!(l.check(IpAddr::V4(99u32.into())).is_err());
    }
}

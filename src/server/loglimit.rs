//! A bound on log lines of one kind: a flood of refusals cannot fill the
//! log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `burst` lines per `window`, then one line saying how many were
/// dropped: a flood of refusals cannot fill the log.
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        LogLimiter { burst, window, state: Mutex::new((Instant::now(), 0, 0)) }
    }

    pub fn log(&self, msg: impl FnOnce() -> String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            if s.2 > 0 {
                log::warn!("{} similar messages suppressed", s.2);
            }
            *s = (now, 0, 0);
        }
        if s.1 < self.burst {
            s.1 += 1;
            log::warn!("{}", msg());
        } else {
            s.2 += 1;
        }
    }
}

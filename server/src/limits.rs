//! Abuse limits shared by the runner socket and the SSE feed: the configured numbers, a per-key
//! count of concurrent connections (runner credentials, SSE tickets) and a per-connection token
//! bucket for message rates.
//!
//! It knows neither HTTP nor WebSockets: callers turn a refusal into their status or close code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The configured limits (every one has a flag and a `DAP_*` variable; see `config.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message a runner may send, in bytes (larger → close 1009).
    pub runner_max_message_bytes: usize,
    /// Sustained messages per second per runner connection (0 = unlimited; above → close 1008).
    pub runner_rate_per_s: u32,
    /// Messages a runner connection may send at once above the sustained rate.
    pub runner_burst: u32,
    /// Concurrent sockets per runner credential (0 = unlimited; above → 429 before the upgrade).
    pub runner_max_connections: usize,
    /// A runner connection that sends nothing at all (not even a pong) for this long is closed
    /// with 4005, whatever the heartbeat setting.
    pub runner_idle_timeout: Duration,
    /// Concurrent SSE streams opened with one ticket (0 = unlimited; above → 429).
    pub sse_max_per_ticket: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            runner_max_message_bytes: 1 << 20,
            runner_rate_per_s: 100,
            runner_burst: 200,
            runner_max_connections: 2,
            runner_idle_timeout: Duration::from_secs(30),
            sse_max_per_ticket: 4,
        }
    }
}

/// Counts open connections per key and refuses one more than `max`.
#[derive(Clone)]
pub struct ConnectionCounter {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// Holds one counted connection; dropping it gives the place back.
pub struct ConnectionGuard {
    key: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl ConnectionCounter {
    /// `max` = 0 means unlimited.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts a new connection for `key`, or `None` when `key` already has `max` open.
    pub fn try_acquire(&self, key: &str) -> Option<ConnectionGuard> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.to_owned()).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnectionGuard {
            key: key.to_owned(),
            open: Arc::clone(&self.open),
        })
    }

    /// Connections open for `key` now.
    pub fn open(&self, key: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(key).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second; each message takes one.
/// Hand-rolled (a dozen lines) rather than a rate-limiting crate because it is per connection,
/// single-owner (no locking) and must run on tokio's clock so tests can pause time.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` when `rate` is 0 (unlimited).
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        (rate > 0).then(|| {
            let burst = f64::from(burst.max(1));
            Self {
                rate: f64::from(rate),
                burst,
                tokens: burst,
                last: Instant::now(),
            }
        })
    }

    /// Takes a token; false when the bucket is empty (the sender is over its rate).
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_refuses_above_max_and_frees_on_drop() {
        let c = ConnectionCounter::new(2);
        let a = c.try_acquire("r").unwrap();
        let _b = c.try_acquire("r").unwrap();
        assert!(c.try_acquire("r").is_none());
        assert!(c.try_acquire("other").is_some(), "keys are independent");
        drop(a);
        assert_eq!(c.open("r"), 1);
        assert!(c.try_acquire("r").is_some());
        let unlimited = ConnectionCounter::new(0);
        let held: Vec<_> = (0..100).map(|_| unlimited.try_acquire("k")).collect();
        assert!(held.iter().all(Option::is_some));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(10, 20).unwrap();
        assert_eq!((0..25).filter(|_| b.try_take()).count(), 20, "burst");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            (0..25).filter(|_| b.try_take()).count(),
            5,
            "10/s for 0.5 s"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..100).filter(|_| b.try_take()).count(),
            20,
            "refill caps at burst"
        );
        assert!(TokenBucket::new(0, 5).is_none(), "0 = unlimited");
    }
}

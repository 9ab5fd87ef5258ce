//! Backoff after failed logins, per account and per source address.
//!
//! After a number of free failures, every further attempt must wait a delay that doubles with
//! each failure, from a first delay up to a bound. Attempts made while waiting are refused without
//! looking at the password (no oracle, no cost to the server) and do not lengthen the wait, so
//! the longest an attacker can keep an account's owner out is the account bound (one minute by
//! default) after each of its own failures. The per-address limit is looser per attempt but
//! bounds guessing across many accounts. State is in memory: a restart forgets it, which only
//! helps the owner.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::LoginConfig;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

#[derive(Debug)]
struct Limiter<K> {
    free: u32,
    first_delay: Duration,
    max_delay: Duration,
    forget_after: Duration,
    entries: HashMap<K, Failures>,
}

/// Entries kept before old ones are swept, so a flood of names cannot grow memory unbounded.
const SWEEP_ABOVE: usize = 100_000;

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(free: u32, first_delay: Duration, max_delay: Duration, forget_after: Duration) -> Self {
        Limiter {
            free,
            first_delay,
            max_delay,
            forget_after,
            entries: HashMap::new(),
        }
    }

    fn wait(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        if now.duration_since(entry.last) > self.forget_after {
            self.entries.remove(key);
            return None;
        }
        (entry.blocked_until > now).then(|| entry.blocked_until - now)
    }

    fn fail(&mut self, key: &K, now: Instant) {
        if self.entries.len() > SWEEP_ABOVE {
            let forget_after = self.forget_after;
            self.entries
                .retain(|_, f| now.duration_since(f.last) <= forget_after);
        }
        let entry = self.entries.entry(key.clone()).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: now,
        });
        if now.duration_since(entry.last) > self.forget_after {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        if entry.count >= self.free {
            let doublings = (entry.count - self.free).min(20);
            let delay = self
                .first_delay
                .saturating_mul(1 << doublings)
                .min(self.max_delay);
            entry.blocked_until = now + delay;
        }
    }

    fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

/// The login throttle.
#[derive(Debug)]
pub struct LoginThrottle {
    accounts: Mutex<Limiter<String>>,
    addresses: Mutex<Limiter<IpAddr>>,
}

impl LoginThrottle {
    /// A throttle with the configured limits.
    pub fn new(config: &LoginConfig) -> Self {
        let forget = Duration::from_secs(config.forget_after_secs);
        LoginThrottle {
            accounts: Mutex::new(Limiter::new(
                config.account_free_failures,
                Duration::from_secs(config.account_first_delay_secs),
                Duration::from_secs(config.account_max_delay_secs),
                forget,
            )),
            addresses: Mutex::new(Limiter::new(
                config.ip_free_failures,
                Duration::from_secs(config.ip_first_delay_secs),
                Duration::from_secs(config.ip_max_delay_secs),
                forget,
            )),
        }
    }

    /// How long this attempt must wait, if it must (the caller answers 429 with Retry-After).
    pub fn check(&self, username: &str, address: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let account = self.accounts.lock().wait(&username.to_lowercase(), now);
        let address = self.addresses.lock().wait(&address, now);
        account.max(address)
    }

    /// Records a failed attempt (unknown user, wrong password or wrong second factor alike).
    pub fn failed(&self, username: &str, address: IpAddr) {
        let now = Instant::now();
        self.accounts.lock().fail(&username.to_lowercase(), now);
        self.addresses.lock().fail(&address, now);
    }

    /// Records a success: the account's failures are forgotten. The address's are not, so an
    /// attacker holding one valid account cannot reset its budget for guessing others.
    pub fn succeeded(&self, username: &str) {
        self.accounts.lock().clear(&username.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_starts_after_free_failures_doubles_and_is_bounded() {
        let mut limiter = Limiter::new(
            5,
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(900),
        );
        let start = Instant::now();
        for _ in 0..4 {
            limiter.fail(&"alice", start);
            assert_eq!(limiter.wait(&"alice", start), None);
        }
        limiter.fail(&"alice", start);
        assert_eq!(limiter.wait(&"alice", start), Some(Duration::from_secs(1)));
        limiter.fail(&"alice", start);
        assert_eq!(limiter.wait(&"alice", start), Some(Duration::from_secs(2)));
        for _ in 0..20 {
            limiter.fail(&"alice", start);
        }
        assert_eq!(limiter.wait(&"alice", start), Some(Duration::from_secs(60)));
        assert_eq!(
            limiter.wait(&"alice", start + Duration::from_secs(61)),
            None
        );
        assert_eq!(limiter.wait(&"bob", start), None);
        let later = start + Duration::from_secs(901);
        assert_eq!(limiter.wait(&"alice", later), None, "forgotten");
    }
}

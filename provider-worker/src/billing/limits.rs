//! Per-user budgets: requests per minute and tokens per minute, each a token bucket that refills
//! continuously (a user may burst up to a minute's budget, then goes at the refill rate). Tokens
//! are counted at admission as OpenAI counts them: prompt tokens plus the `max_tokens` asked
//! for. Only users with an escrow reach this point, so the map holds paying users; it is bounded
//! all the same.

use crate::config::LimitsConfig;
use compute_primitives::AccountId;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most users tracked; beyond it, users whose buckets are full again are forgotten.
const MAX_USERS: usize = 65_536;

/// Where a user stands, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub limit_requests: u32,
    pub remaining_requests: u32,
    /// Until the request bucket is full again.
    pub reset_requests: Duration,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    /// Until the token bucket is full again.
    pub reset_tokens: Duration,
}

/// A request over budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub quota: Quota,
    /// Which budget: `requests` or `tokens`.
    pub budget: &'static str,
    /// When the request would fit.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    requests: f64,
    tokens: f64,
    at: Instant,
}

/// The budgets of every user.
pub struct Limits {
    requests_per_minute: f64,
    tokens_per_minute: f64,
    users: Mutex<HashMap<AccountId, Bucket>>,
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Self {
        Limits {
            requests_per_minute: f64::from(c.requests_per_minute.max(1)),
            tokens_per_minute: c.tokens_per_minute.max(1) as f64,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let minutes = now.saturating_duration_since(b.at).as_secs_f64() / 60.0;
        Bucket {
            requests: (b.requests + minutes * self.requests_per_minute)
                .min(self.requests_per_minute),
            tokens: (b.tokens + minutes * self.tokens_per_minute).min(self.tokens_per_minute),
            at: now,
        }
    }

    fn full(&self, now: Instant) -> Bucket {
        Bucket { requests: self.requests_per_minute, tokens: self.tokens_per_minute, at: now }
    }

    fn quota(&self, b: &Bucket) -> Quota {
        let until_full =
            |level: f64, cap: f64| Duration::from_secs_f64(((cap - level).max(0.0) / cap) * 60.0);
        Quota {
            limit_requests: self.requests_per_minute as u32,
            remaining_requests: b.requests.max(0.0) as u32,
            reset_requests: until_full(b.requests, self.requests_per_minute),
            limit_tokens: self.tokens_per_minute as u64,
            remaining_tokens: b.tokens.max(0.0) as u64,
            reset_tokens: until_full(b.tokens, self.tokens_per_minute),
        }
    }

    /// Take one request and `tokens` from `user`'s budget, or say when it would fit. A request
    /// larger than a whole minute's token budget needs the full bucket and empties it.
    pub fn take(&self, user: &AccountId, tokens: u64) -> Result<Quota, Limited> {
        self.take_parts(user, 1.0, tokens)
    }

    /// Take one request (before the request is measured: even a malformed one costs it).
    pub fn take_request(&self, user: &AccountId) -> Result<Quota, Limited> {
        self.take_parts(user, 1.0, 0)
    }

    /// Take `tokens` (once the request is measured).
    pub fn take_tokens(&self, user: &AccountId, tokens: u64) -> Result<Quota, Limited> {
        self.take_parts(user, 0.0, tokens)
    }

    fn take_parts(&self, user: &AccountId, requests: f64, tokens: u64) -> Result<Quota, Limited> {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.len() >= MAX_USERS && !users.contains_key(user) {
            let full = self.full(now);
            users.retain(|_, b| {
                let b = self.refilled(*b, now);
                b.requests < full.requests || b.tokens < full.tokens
            });
            if users.len() >= MAX_USERS {
                users.clear();
            }
        }
        let b = self.refilled(users.get(user).copied().unwrap_or_else(|| self.full(now)), now);
        let need = (tokens as f64).min(self.tokens_per_minute);
        let short = |level: f64, need: f64, per_minute: f64| {
            Duration::from_secs_f64(((need - level).max(0.0) / per_minute) * 60.0)
        };
        if b.requests < requests {
            users.insert(user.clone(), b);
            return Err(Limited {
                quota: self.quota(&b),
                budget: "requests",
                retry_after: short(b.requests, 1.0, self.requests_per_minute),
            });
        }
        if b.tokens < need {
            users.insert(user.clone(), b);
            return Err(Limited {
                quota: self.quota(&b),
                budget: "tokens",
                retry_after: short(b.tokens, need, self.tokens_per_minute),
            });
        }
        let b = Bucket { requests: b.requests - requests, tokens: b.tokens - need, ..b };
        users.insert(user.clone(), b);
        Ok(self.quota(&b))
    }

    /// `user`'s budget now, taking nothing.
    pub fn peek(&self, user: &AccountId) -> Quota {
        let now = Instant::now();
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let b = users.get(user).map_or_else(|| self.full(now), |b| self.refilled(*b, now));
        self.quota(&b)
    }

    /// Users tracked.
    pub fn tracked(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u32, tpm: u64) -> Limits {
        Limits::new(&LimitsConfig {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn a_burst_of_a_minutes_requests_then_refusal_with_a_retry_time() {
        let l = limits(3, 1_000);
        let u = AccountId::new([1; 32]);
        for left in [2, 1, 0] {
            assert_eq!(l.take(&u, 10).expect("within budget").remaining_requests, left);
        }
        let refused = l.take(&u, 10).unwrap_err();
        assert_eq!(refused.budget, "requests");
        // One request refills in 20 s at 3 per minute.
        assert!(refused.retry_after <= Duration::from_secs(20), "{:?}", refused.retry_after);
        assert!(refused.retry_after >= Duration::from_secs(19), "{:?}", refused.retry_after);
        // Another user has a budget of its own.
        assert!(l.take(&AccountId::new([2; 32]), 10).is_ok());
    }

    #[test]
    fn tokens_run_out_before_requests_and_a_huge_request_empties_the_bucket() {
        let l = limits(100, 1_000);
        let u = AccountId::new([1; 32]);
        assert_eq!(l.take(&u, 600).unwrap().remaining_tokens, 400);
        assert_eq!(l.take(&u, 600).unwrap_err().budget, "tokens");
        let v = AccountId::new([3; 32]);
        // Larger than a minute's budget: allowed once from a full bucket.
        assert_eq!(l.take(&v, 1_000_000).unwrap().remaining_tokens, 0);
        assert_eq!(l.peek(&v).remaining_tokens, 0);
    }

    #[test]
    fn the_map_stays_bounded() {
        let l = limits(10, 10);
        for i in 0..(MAX_USERS + 10) as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let _ = l.take(&AccountId::new(id), 1);
        }
        assert!(l.tracked() <= MAX_USERS);
    }
}

//! Token-bucket rate limiting, one bucket per route or per rendered key.
//!
//! Written here rather than taken from `governor` because the buckets must run on tokio's clock, so that tests
//! can pause time, and because keyed buckets need the same template rendering as the rest of the route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;

use super::guard::Guard;
use crate::body::Prepared;
use crate::config::RateLimitConfig;
use crate::problem::GatewayError;
use crate::request::render;
use crate::template::Template;

/// Most distinct keys remembered; beyond it, buckets that have refilled are forgotten.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A route's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// Renders the bucket key; one shared bucket when absent.
    pub key: Option<Template>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Compiles `rate_limit = {…}` (validated).
    pub fn new(cfg: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            per_second: cfg.per_second,
            burst: cfg.burst.unwrap_or(cfg.per_second).max(1.0),
            key: cfg.key.as_deref().and_then(|k| Template::parse(k).ok()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket; `Err(wait)` says when one will be there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

/// A route's rate limit as a [`Guard`]: renders the key (which may read the body), then takes a token.
#[derive(Debug)]
pub struct RateLimit {
    /// The buckets.
    pub limiter: RateLimiter,
    /// Route name, for `{route}` in the key.
    pub route: Arc<str>,
}

impl Guard for RateLimit {
    fn check(&self, req: &mut Request<Prepared>) -> Result<(), GatewayError> {
        let key = match &self.limiter.key {
            Some(t) => render(t, req, &self.route)?,
            None => String::new(),
        };
        self.limiter.check(&key).map_err(|retry_after| GatewayError::RateLimited { retry_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig { per_second, burst: Some(burst), key: None })
    }

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_the_sustained_rate() {
        let l = limiter(10.0, 5.0);
        for _ in 0..5 {
            assert!(l.check("").is_ok());
        }
        let wait = l.check("").unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.check("").is_ok());
        assert!(l.check("").is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        let allowed = (0..20).filter(|_| l.check("").is_ok()).count();
        assert_eq!(allowed, 5, "refill is capped at burst");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets() {
        let l = limiter(1.0, 1.0);
        assert!(l.check("alice").is_ok());
        assert!(l.check("alice").is_err());
        assert!(l.check("bob").is_ok());
    }
}

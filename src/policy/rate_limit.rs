//! Token-bucket rate limiting, one bucket per route or per rendered key; with `[store] kind = "redis"`, the buckets
//! are shared by every replica ([`SharedRateLimit`]).
//!
//! Written here rather than taken from `governor` because the buckets must run on tokio's clock, so that tests
//! can pause time, and because keyed buckets need the same template rendering as the rest of the route.
//!
//! Memory is bounded whatever keys clients send: a key is kept as a 64-bit hash (keyed per process, so clients
//! cannot aim collisions), and at most `max_keys` buckets are kept. The buckets are spread over shards (one lock
//! each); a shard keeps two generations of at most half its share each: a bucket in use is found in the current
//! generation or moved there from the previous one, and when the current one is full the previous one is dropped
//! whole and the current one becomes the previous. Every request costs O(1); the buckets dropped are those not used
//! for a whole generation (a client coming back after that starts with a full bucket again).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::guard::Guard;
use crate::body::{Body, Prepared};
use crate::config::RateLimitConfig;
use crate::problem::{AnswerFuture, GatewayError};
use crate::request::render;
use crate::store::Store;
use crate::template::Template;

/// Most shards (locks) of one limiter.
const MAX_SHARDS: usize = 16;
/// Fewest buckets a shard is made for (small limits get fewer shards, so that the bound stays exact).
const MIN_SHARD_KEYS: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A share of the buckets, in two generations.
#[derive(Debug, Default)]
struct Shard {
    current: HashMap<u64, Bucket>,
    previous: HashMap<u64, Bucket>,
}

/// A route's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// Renders the bucket key; one shared bucket when absent.
    pub key: Option<Template>,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Most buckets in one generation of one shard.
    generation: usize,
    /// `sluice_rate_limit_keys{route}`: buckets held now.
    keys: Gauge,
}

impl RateLimiter {
    /// Compiles `rate_limit = {…}` (validated), reporting the number of buckets in `keys`.
    pub fn new(cfg: &RateLimitConfig, keys: Gauge) -> RateLimiter {
        let max_keys = cfg.max_keys.max(2);
        let shards = (max_keys / MIN_SHARD_KEYS).clamp(1, MAX_SHARDS);
        keys.set(0);
        RateLimiter {
            per_second: cfg.per_second,
            burst: cfg.burst.unwrap_or(cfg.per_second).max(1.0),
            key: cfg.key.as_deref().and_then(|k| Template::parse(k).ok()),
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            generation: (max_keys / shards / 2).max(1),
            keys,
        }
    }

    /// Takes a token from `key`'s bucket; `Err(wait)` says when one will be there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[(hash % self.shards.len() as u64) as usize].lock().expect("rate limiter lock");
        let shard = &mut *shard;
        if !shard.current.contains_key(&hash) {
            let bucket = match shard.previous.remove(&hash) {
                Some(b) => b,
                None => {
                    self.keys.inc();
                    Bucket { tokens: self.burst, updated: now }
                }
            };
            if shard.current.len() >= self.generation {
                self.keys.dec_by(shard.previous.len() as i64);
                shard.previous = std::mem::take(&mut shard.current);
            }
            shard.current.insert(hash, bucket);
        }
        let bucket = shard.current.get_mut(&hash).expect("inserted above");
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

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().expect("rate limiter lock");
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// A route's rate limit in the shared store (`[store] kind = "redis"`): every replica takes from the same buckets
/// (GCRA in Redis, see [`crate::store`]); `per_second` and `burst` as for the in-process limiter.
#[derive(Debug)]
pub struct SharedRateLimit {
    /// The shared store.
    pub store: Arc<Store>,
    /// Route name (bucket keys are per route; `{route}` in the key).
    pub route: Arc<str>,
    /// Renders the bucket key; one shared bucket when absent.
    pub key: Option<Template>,
    /// Sustained rate.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: f64,
}

impl SharedRateLimit {
    /// The limit `cfg` in `store`.
    #[must_use]
    pub fn new(cfg: &RateLimitConfig, store: Arc<Store>, route: Arc<str>) -> SharedRateLimit {
        let key = cfg.key.as_deref().and_then(|k| Template::parse(k).ok());
        let burst = cfg.burst.unwrap_or(cfg.per_second).max(1.0);
        SharedRateLimit { store, route, key, per_second: cfg.per_second, burst }
    }
}

/// Runs a route's [`SharedRateLimit`] before its inner layers.
#[derive(Clone, Debug)]
pub struct SharedRateLimitLayer(pub Arc<SharedRateLimit>);

impl<S> Layer<S> for SharedRateLimitLayer {
    type Service = SharedLimited<S>;

    fn layer(&self, inner: S) -> SharedLimited<S> {
        SharedLimited { limit: self.0.clone(), inner }
    }
}

/// A service behind a [`SharedRateLimit`].
#[derive(Clone, Debug)]
pub struct SharedLimited<S> {
    limit: Arc<SharedRateLimit>,
    inner: S,
}

impl<S> Service<Request<Prepared>> for SharedLimited<S>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Prepared>) -> AnswerFuture {
        let limit = self.limit.clone();
        let key = match &limit.key {
            Some(t) => match render(t, &req, &limit.route) {
                Ok(key) => key,
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            },
            None => String::new(),
        };
        // The store answers first, so the call happens in the future: on a clone of the (always ready) service.
        let mut inner = self.inner.clone();
        Box::pin(async move {
            match limit.store.take(&limit.route, &key, limit.per_second, limit.burst).await {
                Ok(None) => inner.call(req).await,
                Ok(Some(retry_after)) => Err(GatewayError::RateLimited { retry_after }),
                Err(_) if limit.store.fail_closed => Err(GatewayError::StoreUnavailable),
                // Fail open: served without the shared check (counted in sluice_store_errors_total).
                Err(_) => inner.call(req).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(
            &RateLimitConfig { per_second, burst: Some(burst), key: None, max_keys: 100_000 },
            Gauge::default(),
        )
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

    #[tokio::test(start_paused = true)]
    async fn two_hundred_thousand_keys_stay_within_max_keys() {
        for max_keys in [100_000, 5_000, 10] {
            let keys = Gauge::default();
            let l = RateLimiter::new(
                &RateLimitConfig { per_second: 1.0, burst: Some(1.0), key: None, max_keys },
                keys.clone(),
            );
            for i in 0..200_000u32 {
                // Long keys cost nothing more: only their hash is kept.
                let key = format!("{i:0>300}");
                assert!(l.check(&key).is_ok(), "a new key starts with a full bucket");
                if i % 1000 == 0 {
                    assert!(l.len() <= max_keys, "{} buckets at key {i}", l.len());
                }
            }
            assert!(l.len() <= max_keys, "{} buckets for max_keys {max_keys}", l.len());
            assert_eq!(keys.get(), l.len() as i64, "the gauge follows the buckets held");
            assert!(l.len() >= max_keys / 2, "recent keys are kept: {} of {max_keys}", l.len());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_key_keeps_its_bucket_while_others_churn() {
        let l = RateLimiter::new(
            &RateLimitConfig { per_second: 1.0, burst: Some(1.0), key: None, max_keys: 100 },
            Gauge::default(),
        );
        assert!(l.check("busy").is_ok());
        for i in 0..10_000 {
            assert!(l.check(&i.to_string()).is_ok());
            assert!(l.check("busy").is_err(), "the busy client stays limited while {i} other keys pass");
        }
    }
}

//! State that several gateway replicas share (`[store] kind = "redis"`): the `Idempotency-Key` table and the
//! rate-limit buckets, in Redis, so that a retry landing on another replica is still recognised and a per-key limit
//! holds across all of them.
//!
//! - Each operation is one Lua script, so it is atomic across replicas: a key is claimed with a short-lived in-flight
//!   marker, then replaced by the stored answer (kept for the route's window) or deleted when the request failed;
//!   a rate limit is GCRA over one stored "theoretical arrival time" per bucket, on Redis's clock.
//! - Keys are `sluice:idem:{route}:{key}` and `sluice:rl:{route}:{sha256(key)}`; every key expires on its own, so
//!   Redis holds at most a window of answers and one short-lived entry per active bucket.
//! - When Redis does not answer (down, slow: 500 ms), `on_error` decides: `fail_open` lets the request through
//!   without the shared check, `fail_closed` answers 503; either way `sluice_store_errors_total{op}` counts it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::config::{OnStoreError, StoreConfig};
use crate::policy::idempotency::{Begin, Stored};

/// How long a key stays claimed by a request still in flight (a replica that died mid-request frees it then).
pub const IN_FLIGHT_TTL: Duration = Duration::from_secs(60);
/// Longest wait for Redis per operation.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Claims a key for the request whose marker is ARGV[2] unless it is there: nothing (claimed), an in-flight marker
/// (`~` and a token) or the stored answer (JSON).
const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return false";
/// Replaces this request's in-flight marker by the answer (nothing if its claim expired and another took the key).
const COMPLETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[3] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1";
/// Releases this request's claim, if the key is still its.
const ABORT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1";
/// GCRA: ARGV[1] milliseconds per request, ARGV[2] burst. Returns 0 (allowed) or the milliseconds to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if allow_at > now then return math.ceil(allow_at - now) end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1)
return 0";

/// Redis did not answer in time, or answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

/// The shared store of one config: a Redis connection (made lazily, re-made when lost) and what to do without it.
pub struct Store {
    redis: ConnectionManager,
    settings: StoreConfig,
    /// Fail closed (503) rather than open when Redis does not answer.
    pub fail_closed: bool,
    errors_idempotency: Counter,
    errors_rate_limit: Counter,
    begin: redis::Script,
    complete: redis::Script,
    abort: redis::Script,
    gcra: redis::Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("fail_closed", &self.fail_closed).finish_non_exhaustive()
    }
}

/// A stored answer as kept in Redis.
#[derive(Serialize, Deserialize)]
struct Answer {
    status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    body: String,
}

impl Store {
    /// The store `cfg` describes, with the URL read from its `url_env`. Connects on first use; fails only on a URL
    /// Redis's client refuses.
    pub fn connect(cfg: &StoreConfig, errors: [Counter; 2]) -> Result<Store, String> {
        let var = cfg.url_env.as_deref().unwrap_or_default();
        let url = std::env::var(var).map_err(|_| format!("store: url_env names {var:?}, which is not set"))?;
        Store::open(&url, cfg, errors)
    }

    /// The store of `cfg` at `url`.
    pub fn open(url: &str, cfg: &StoreConfig, errors: [Counter; 2]) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| format!("store: bad Redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("store: Redis connection: {e}"))?;
        let [errors_idempotency, errors_rate_limit] = errors;
        Ok(Store {
            redis,
            settings: cfg.clone(),
            fail_closed: cfg.on_error == OnStoreError::FailClosed,
            errors_idempotency,
            errors_rate_limit,
            begin: redis::Script::new(BEGIN),
            complete: redis::Script::new(COMPLETE),
            abort: redis::Script::new(ABORT),
            gcra: redis::Script::new(GCRA),
        })
    }

    /// Whether this store was made from `cfg` (a reload that leaves `[store]` alone keeps the connection).
    #[must_use]
    pub fn is(&self, cfg: &StoreConfig) -> bool {
        &self.settings == cfg
    }

    /// Claims `key` of `route` for the request holding `token`, or says why not.
    pub async fn begin(&self, route: &str, key: &str, token: &str) -> Result<Begin, StoreError> {
        let mut script = self.begin.key(idempotency_key(route, key));
        script.arg(IN_FLIGHT_TTL.as_millis() as u64).arg(marker(token));
        let found: Option<Vec<u8>> = self.run(&script, &self.errors_idempotency).await?;
        Ok(match found {
            None => Begin::New,
            Some(v) if v.first() == Some(&b'~') => Begin::InFlight,
            Some(v) => Begin::Replay(decode(&v).ok_or_else(|| StoreError("unreadable stored answer".into()))?),
        })
    }

    /// Stores the answer to the request (holding `token`) that claimed `key`, for `window`.
    pub async fn complete(
        &self,
        route: &str,
        key: &str,
        token: &str,
        answer: &Stored,
        window: Duration,
    ) -> Result<(), StoreError> {
        let mut script = self.complete.key(idempotency_key(route, key));
        script.arg(encode(answer)).arg(window.as_millis().max(1) as u64).arg(marker(token));
        self.run::<i64>(&script, &self.errors_idempotency).await.map(drop)
    }

    /// Releases `key` if the request holding `token` still has it (it failed, or its client went away).
    pub async fn abort(&self, route: &str, key: &str, token: &str) -> Result<(), StoreError> {
        let mut script = self.abort.key(idempotency_key(route, key));
        script.arg(marker(token));
        self.run::<i64>(&script, &self.errors_idempotency).await.map(drop)
    }

    /// Takes one request from bucket `key` of `route`: `Ok(None)` when allowed, `Ok(Some(wait))` when limited.
    pub async fn take(
        &self,
        route: &str,
        key: &str,
        per_second: f64,
        burst: f64,
    ) -> Result<Option<Duration>, StoreError> {
        let mut script = self.gcra.key(rate_key(route, key));
        script.arg(1000.0 / per_second).arg(burst);
        let wait: u64 = self.run(&script, &self.errors_rate_limit).await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
        errors: &Counter,
    ) -> Result<T, StoreError> {
        let mut redis = self.redis.clone();
        match tokio::time::timeout(TIMEOUT * 2, script.invoke_async(&mut redis)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                errors.inc();
                tracing::debug!(error = %e, "redis store error");
                Err(StoreError(e.to_string()))
            }
            Err(_) => {
                errors.inc();
                Err(StoreError("redis timed out".into()))
            }
        }
    }
}

/// A key's Redis key: the route's name length-prefixed, so that no two (route, key) pairs share one.
fn idempotency_key(route: &str, key: &str) -> String {
    format!("sluice:idem:{}:{route}:{key}", route.len())
}

/// The in-flight marker of a claim (never the first byte of a stored answer, which is JSON).
fn marker(token: &str) -> String {
    format!("~{token}")
}

/// A bucket's Redis key: the rendered key hashed, so that a client's key cannot be arbitrarily long.
fn rate_key(route: &str, key: &str) -> String {
    format!("sluice:rl:{}:{route}:{}", route.len(), hex::encode(sha2::Sha256::digest(key.as_bytes())))
}

fn encode(answer: &Stored) -> Vec<u8> {
    let content_type = answer.content_type.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned);
    let stored = Answer { status: answer.status, content_type, body: STANDARD.encode(&answer.body) };
    serde_json::to_vec(&stored).expect("answer serializes")
}

fn decode(bytes: &[u8]) -> Option<Stored> {
    let a: Answer = serde_json::from_slice(bytes).ok()?;
    Some(Stored {
        status: a.status,
        body: Bytes::from(STANDARD.decode(a.body).ok()?),
        content_type: a.content_type.and_then(|t| HeaderValue::from_str(&t).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_answer_survives_the_round_trip() {
        let answer = Stored {
            status: 202,
            body: Bytes::from_static(b"{\"id\":\"x\"}"),
            content_type: Some(HeaderValue::from_static("application/json")),
        };
        assert_eq!(decode(&encode(&answer)), Some(answer));
    }

    #[test]
    fn bucket_keys_are_bounded_whatever_the_client_sends() {
        assert_eq!(rate_key("r", &"x".repeat(10_000)).len(), "sluice:rl:1:r:".len() + 64);
        assert_ne!(idempotency_key("a", "b:k"), idempotency_key("a:b", "k"), "no two routes share a key");
    }
}

//! Bearer tokens a route verified recently, with their claims: a client that sends the same token again (most send
//! one token until it expires) is admitted without base64, JSON or signature work for as long as the token's `exp`
//! and `nbf` admit it, with the same leeway as a full check. An RS256 or ES256 check is a public-key operation
//! that costs far more than an HS256 one (which bench/README.md measures at about 1.5 µs of a request here);
//! Envoy's `jwt_authn` keeps the same kind of cache.
//!
//! Only tokens that passed every check (signature, `exp`, `nbf`, `iss`, audience, scopes) are kept, so a client
//! cannot fill the cache with tokens it made up; it is bounded by bytes all the same ([`CAPACITY_BYTES`]), the
//! least used tokens leaving first (quick_cache's S3-FIFO). A reload compiles the route anew and so starts with an
//! empty cache: a token the old keys admitted is checked again with the new ones.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde_json::{Map, Value};

/// Most weight a route keeps (see [`Size`]): about 3,300 tokens of 300 bytes.
const CAPACITY_BYTES: u64 = 4 << 20;
/// Tokens expected in a full cache (quick_cache sizes its tables from it).
const ESTIMATED_TOKENS: usize = 4096;

/// Tokens verified recently (see the module doc).
#[derive(Debug)]
pub struct Verified {
    cache: Cache<Box<str>, Entry, Size>,
    /// The route's `leeway`, in seconds.
    leeway: u64,
}

/// A verified token's claims and the times that bound its use.
#[derive(Clone, Debug)]
struct Entry {
    claims: Arc<Map<String, Value>>,
    /// `exp`, seconds since the Unix epoch (a verified token always has one).
    exp: u64,
    /// `nbf`, or 0.
    nbf: u64,
}

/// An entry's weight: its token's bytes, and an estimate of its claims' (decoded, they take about as much as
/// the token's base64 payload, a few times over as a map of strings and values).
#[derive(Clone, Debug)]
struct Size;

impl Weighter<Box<str>, Entry> for Size {
    fn weight(&self, token: &Box<str>, _: &Entry) -> u64 {
        4 * token.len() as u64 + 64
    }
}

impl Verified {
    /// An empty cache for a route whose checks allow `leeway` seconds of clock skew.
    pub fn new(leeway: u64) -> Verified {
        Verified { cache: Cache::with_weighter(ESTIMATED_TOKENS, CAPACITY_BYTES, Size), leeway }
    }

    /// The claims of `token` if it was verified and is still within its `exp` and `nbf` at `now` (seconds since
    /// the Unix epoch); an expired one is forgotten.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Map<String, Value>>> {
        let entry = self.cache.get(token)?;
        if entry.exp.saturating_add(self.leeway) < now {
            self.cache.remove(token);
            return None;
        }
        (entry.nbf <= now.saturating_add(self.leeway)).then_some(entry.claims)
    }

    /// Keeps `token`, which passed every check, with its claims; a token whose `exp` or `nbf` is not a whole
    /// number of seconds is not kept (it is checked in full each time, as jsonwebtoken reads such times).
    pub fn insert(&self, token: &str, claims: &Arc<Map<String, Value>>) {
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else { return };
        let nbf = match claims.get("nbf") {
            None => 0,
            Some(nbf) => match nbf.as_u64() {
                Some(nbf) => nbf,
                None => return,
            },
        };
        self.cache.insert(token.into(), Entry { claims: claims.clone(), exp, nbf });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, u64)]) -> Arc<Map<String, Value>> {
        Arc::new(pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect())
    }

    #[test]
    fn a_kept_token_is_admitted_between_nbf_and_exp_with_the_leeway() {
        let verified = Verified::new(60);
        verified.insert("t", &claims(&[("exp", 1_000), ("nbf", 500)]));
        assert!(verified.get("t", 1_000).is_some());
        assert!(verified.get("t", 1_060).is_some(), "within the leeway after exp");
        assert!(verified.get("t", 440).is_some(), "within the leeway before nbf");
        assert!(verified.get("t", 439).is_none(), "not yet valid");
        assert!(verified.get("other", 800).is_none(), "never verified");
        assert!(verified.get("t", 1_061).is_none(), "expired");
        assert!(verified.get("t", 800).is_none(), "an expired token is forgotten");
    }

    #[test]
    fn tokens_without_a_whole_exp_or_nbf_are_not_kept() {
        let verified = Verified::new(0);
        verified.insert("float", &Arc::new(serde_json::json!({"exp": 1.5e9}).as_object().unwrap().clone()));
        verified.insert("none", &claims(&[("nbf", 1)]));
        verified.insert("nbf", &Arc::new(serde_json::json!({"exp": 9, "nbf": 0.5}).as_object().unwrap().clone()));
        assert!(verified.get("float", 1).is_none() && verified.get("none", 1).is_none());
        assert!(verified.get("nbf", 1).is_none());
    }

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let verified = Verified::new(0);
        let token = "x".repeat(1000);
        for i in 0..10_000 {
            verified.insert(&format!("{i}{token}"), &claims(&[("exp", u64::MAX)]));
        }
        assert!(verified.cache.weight() <= CAPACITY_BYTES, "{}", verified.cache.weight());
        assert!(verified.cache.len() < 10_000 && verified.cache.len() > 500, "{}", verified.cache.len());
    }
}

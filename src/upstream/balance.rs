//! Endpoint selection: p2c (least outstanding of two random picks), round robin, random and rendezvous hashing,
//! over the endpoints that are available, avoiding those a retry already tried when others remain.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;
use crate::config::Balance;

/// What the balancer found.
#[derive(Debug)]
pub enum Pick {
    /// Send to this endpoint.
    Endpoint(Arc<Endpoint>),
    /// There are endpoints, but all are ejected or unhealthy: 503.
    AllUnavailable,
    /// There is no endpoint at all (DNS gave nothing): 502.
    NoEndpoints,
}

/// Picks an endpoint.
///
/// `tried` holds endpoints earlier attempts of the same request used; they are skipped while another available
/// endpoint remains. `hash` is the hashed `hash_key` for `Balance::Hash`.
pub fn pick(
    policy: Balance,
    endpoints: &[Arc<Endpoint>],
    now_ms: u64,
    tried: &[Arc<Endpoint>],
    hash: Option<u64>,
    cursor: &AtomicUsize,
) -> Pick {
    if endpoints.is_empty() {
        return Pick::NoEndpoints;
    }
    let fresh = |e: &Arc<Endpoint>| e.is_available(now_ms) && !tried.iter().any(|t| Arc::ptr_eq(t, e));
    let mut count = endpoints.iter().filter(|e| fresh(e)).count();
    let mut candidate: &dyn Fn(&Arc<Endpoint>) -> bool = &fresh;
    let available = |e: &Arc<Endpoint>| e.is_available(now_ms);
    if count == 0 {
        count = endpoints.iter().filter(|e| available(e)).count();
        candidate = &available;
    }
    if count == 0 {
        return Pick::AllUnavailable;
    }
    let nth = |n: usize| endpoints.iter().filter(|e| candidate(e)).nth(n).expect("n < count").clone();
    let chosen = match policy {
        Balance::RoundRobin => nth(cursor.fetch_add(1, Ordering::Relaxed) % count),
        Balance::Random => nth(fastrand::usize(..count)),
        Balance::P2c if count == 1 => nth(0),
        Balance::P2c => {
            let a = fastrand::usize(..count);
            let b = (a + 1 + fastrand::usize(..count - 1)) % count;
            let (a, b) = (nth(a), nth(b));
            if b.load() < a.load() { b } else { a }
        }
        Balance::Hash => {
            let key = hash.unwrap_or_else(|| fastrand::u64(..));
            endpoints
                .iter()
                .filter(|e| candidate(e))
                .max_by_key(|e| rendezvous_weight(key, e))
                .expect("count > 0")
                .clone()
        }
    };
    Pick::Endpoint(chosen)
}

/// Hashes a rendered `hash_key`.
pub fn hash_key(key: &str) -> u64 {
    let mut h = FIXED_STATE.build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

/// Highest-random-weight score of an endpoint for a key: stable when other endpoints come and go.
fn rendezvous_weight(key: u64, e: &Endpoint) -> u64 {
    let mut h = FIXED_STATE.build_hasher();
    h.write_u64(key);
    h.write(e.url.as_bytes());
    h.write(e.addr.to_string().as_bytes());
    h.finish()
}

/// A fixed-key hasher so that a key maps to the same endpoint in every process of a fleet.
const FIXED_STATE: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    use super::*;

    use crate::upstream::endpoint::test_endpoints as endpoints;

    fn chosen(p: Pick) -> Arc<Endpoint> {
        match p {
            Pick::Endpoint(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_robin_cycles_through_available_endpoints() {
        let eps = endpoints(3);
        let cursor = AtomicUsize::new(0);
        let ports: Vec<u16> =
            (0..6).map(|_| chosen(pick(Balance::RoundRobin, &eps, 1, &[], None, &cursor)).addr.port()).collect();
        assert_eq!(ports, vec![9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let eps = endpoints(2);
        eps[0].outstanding.store(10, Ordering::Relaxed);
        let cursor = AtomicUsize::new(0);
        for _ in 0..50 {
            assert_eq!(chosen(pick(Balance::P2c, &eps, 1, &[], None, &cursor)).addr.port(), 9001);
        }
    }

    #[test]
    fn skips_ejected_and_tried_endpoints() {
        let eps = endpoints(3);
        eps[0].ejected_until_ms.store(1000, Ordering::Relaxed);
        let cursor = AtomicUsize::new(0);
        for policy in [Balance::P2c, Balance::Random, Balance::RoundRobin, Balance::Hash] {
            for _ in 0..20 {
                let e = chosen(pick(policy, &eps, 5, &[eps[1].clone()], Some(7), &cursor));
                assert_eq!(e.addr.port(), 9002, "{policy:?}");
            }
        }
        // All tried: fall back to any available endpoint.
        let e = chosen(pick(Balance::P2c, &eps, 5, &[eps[1].clone(), eps[2].clone()], None, &cursor));
        assert_ne!(e.addr.port(), 9000);
        eps[1].healthy.store(false, Ordering::Relaxed);
        eps[2].ejected_until_ms.store(1000, Ordering::Relaxed);
        assert!(matches!(pick(Balance::P2c, &eps, 5, &[], None, &cursor), Pick::AllUnavailable));
        assert!(matches!(pick(Balance::P2c, &[], 5, &[], None, &cursor), Pick::NoEndpoints));
    }

    #[test]
    fn hash_is_sticky_and_spreads_keys() {
        let eps = endpoints(3);
        let cursor = AtomicUsize::new(0);
        let mut seen = HashMap::new();
        for user in 0..300 {
            let h = hash_key(&format!("user-{user}"));
            let first = chosen(pick(Balance::Hash, &eps, 1, &[], Some(h), &cursor)).addr.port();
            let again = chosen(pick(Balance::Hash, &eps, 1, &[], Some(h), &cursor)).addr.port();
            assert_eq!(first, again);
            *seen.entry(first).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3);
        assert!(seen.values().all(|&n| n > 50), "{seen:?}");
    }
}

//! Exponential backoff with full jitter: the one delay schedule used by upstream retries, subscription
//! redelivery and broker reconnects (AWS Architecture Blog, "Exponential Backoff And Jitter").

use std::time::Duration;

/// Delays that double from `base` up to `max`, each drawn uniformly from zero to the current ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// A schedule from `base` to `max`.
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The ceiling before attempt number `retry` (1-based): `min(max, base × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `retry` (1-based): uniform in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        self.ceiling(retry).mul_f64(fastrand::f64())
    }
}

/// A running count of attempts over a [`Backoff`], for loops that reconnect until they succeed.
#[derive(Debug)]
pub struct Attempts {
    schedule: Backoff,
    failures: u32,
}

impl Attempts {
    /// No failure yet.
    pub fn new(schedule: Backoff) -> Attempts {
        Attempts { schedule, failures: 0 }
    }

    /// The delay after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.schedule.delay(self.failures)
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling of the next delay.
    pub fn next_ceiling(&self) -> Duration {
        self.schedule.ceiling(self.failures.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_below_a_doubling_capped_ceiling() {
        let b = Backoff::new(Duration::from_millis(25), Duration::from_millis(100));
        for retry in 1..10 {
            let ceiling = Duration::from_millis((25u64 << (retry - 1)).min(100));
            assert_eq!(b.ceiling(retry), ceiling);
            for _ in 0..200 {
                assert!(b.delay(retry) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| b.delay(3)).collect();
        assert!(spread.len() > 10, "jittered, not fixed");
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(100), "no overflow");
    }

    #[test]
    fn attempts_grow_and_reset() {
        let mut a = Attempts::new(Backoff::new(Duration::from_millis(100), Duration::from_secs(5)));
        assert_eq!(a.next_ceiling(), Duration::from_millis(100));
        for _ in 0..10 {
            a.next_delay();
        }
        assert_eq!(a.next_ceiling(), Duration::from_secs(5));
        a.reset();
        assert_eq!(a.next_ceiling(), Duration::from_millis(100));
    }
}

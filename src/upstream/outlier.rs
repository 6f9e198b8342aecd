//! Passive outlier ejection: an endpoint that fails `consecutive_failures` times in a row is taken out of the
//! rotation for `ejection_time`, doubling on each repeat (capped at 10x), never more than `max_ejected_percent`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::endpoint::Endpoint;
use crate::config::OutlierConfig;

/// Ejection policy of one upstream, with its clock origin.
#[derive(Debug)]
pub struct OutlierDetector {
    consecutive_failures: u32,
    ejection_time: Duration,
    max_ejected_fraction: f64,
    origin: Instant,
}

impl OutlierDetector {
    /// A detector with the upstream's settings; time is tokio's, so tests can pause it. `previous` (the detector
    /// before a config reload) lends its clock origin, so that ejection deadlines of kept endpoints stay right.
    pub fn new(cfg: &OutlierConfig, previous: Option<&OutlierDetector>) -> OutlierDetector {
        OutlierDetector {
            consecutive_failures: cfg.consecutive_failures.max(1),
            ejection_time: cfg.ejection_time.0,
            max_ejected_fraction: cfg.max_ejected_percent.fraction(),
            origin: previous.map_or_else(Instant::now, |p| p.origin),
        }
    }

    /// Milliseconds since the origin; what `Endpoint::is_available` compares against.
    pub fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "not ejected".
        crate::clock::now().duration_since(self.origin).as_millis() as u64 + 1
    }

    /// Records a success: the failure streak ends, and a long-healthy endpoint forgets past ejections.
    pub fn on_success(&self, ep: &Endpoint) {
        if ep.consecutive_failures.load(Ordering::Relaxed) != 0 {
            ep.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let times = ep.times_ejected.load(Ordering::Relaxed);
        if times > 0 {
            let until = ep.ejected_until_ms.load(Ordering::Relaxed);
            if self.now_ms() >= until + self.ejection_time.as_millis() as u64 {
                ep.times_ejected.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Records a failure; returns true when this failure ejected the endpoint.
    pub fn on_failure(&self, ep: &Endpoint, all: &[std::sync::Arc<Endpoint>]) -> bool {
        let streak = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < self.consecutive_failures {
            return false;
        }
        let now = self.now_ms();
        if ep.is_ejected(now) {
            return false;
        }
        let ejected = all.iter().filter(|e| e.is_ejected(now)).count();
        let allowed = ((all.len() as f64) * self.max_ejected_fraction).floor() as usize;
        // Like Envoy, one endpoint may always be ejected when the percentage allows any at all.
        let allowed = if self.max_ejected_fraction > 0.0 { allowed.max(1) } else { 0 };
        if ejected >= allowed {
            return false;
        }
        let times = ep.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self.ejection_duration(times);
        ep.ejected_until_ms.store(now + duration.as_millis() as u64, Ordering::Relaxed);
        ep.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }

    /// How long the `times`-th ejection in a row lasts: base × 2^(times-1), at most 10 × base.
    pub fn ejection_duration(&self, times: u32) -> Duration {
        let factor = 1u32.checked_shl(times.saturating_sub(1)).unwrap_or(u32::MAX).min(10);
        self.ejection_time * factor
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::units::{Dur, Percent};

    use crate::upstream::endpoint::test_endpoints as endpoints;

    fn detector(failures: u32, pct: f64) -> OutlierDetector {
        OutlierDetector::new(
            &OutlierConfig {
                consecutive_failures: failures,
                ejection_time: Dur::secs(30),
                max_ejected_percent: Percent(pct),
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_returns_after_ejection_time() {
        let d = detector(3, 50.0);
        let eps = endpoints(3);
        assert!(!d.on_failure(&eps[0], &eps));
        d.on_success(&eps[0]);
        assert!(!d.on_failure(&eps[0], &eps));
        assert!(!d.on_failure(&eps[0], &eps));
        assert!(d.on_failure(&eps[0], &eps), "third failure in a row ejects");
        assert!(!eps[0].is_available(d.now_ms()));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!eps[0].is_available(d.now_ms()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(eps[0].is_available(d.now_ms()), "back after ejection_time");
        // A repeat ejection lasts twice as long.
        for _ in 0..3 {
            d.on_failure(&eps[0], &eps);
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!eps[0].is_available(d.now_ms()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(eps[0].is_available(d.now_ms()));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_doubles_and_caps_at_ten_times() {
        let d = detector(1, 100.0);
        assert_eq!(d.ejection_duration(1), Duration::from_secs(30));
        assert_eq!(d.ejection_duration(2), Duration::from_secs(60));
        assert_eq!(d.ejection_duration(3), Duration::from_secs(120));
        assert_eq!(d.ejection_duration(4), Duration::from_secs(240));
        assert_eq!(d.ejection_duration(5), Duration::from_secs(300));
        assert_eq!(d.ejection_duration(40), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_max_ejected_percent() {
        let d = detector(1, 50.0);
        let eps = endpoints(4);
        assert!(d.on_failure(&eps[0], &eps));
        assert!(d.on_failure(&eps[1], &eps));
        assert!(!d.on_failure(&eps[2], &eps), "50% of 4 is 2");
        assert!(eps[2].is_available(d.now_ms()));
        let none = detector(1, 0.0);
        let eps = endpoints(2);
        assert!(!none.on_failure(&eps[0], &eps));
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_past_ejections_after_a_healthy_period() {
        let d = detector(1, 100.0);
        let eps = endpoints(1);
        assert!(d.on_failure(&eps[0], &eps));
        tokio::time::advance(Duration::from_secs(61)).await;
        d.on_success(&eps[0]);
        assert_eq!(eps[0].times_ejected.load(Ordering::Relaxed), 0);
        assert!(d.on_failure(&eps[0], &eps));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(eps[0].is_available(d.now_ms()), "first ejection again, not a doubled one");
    }
}

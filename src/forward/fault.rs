//! Fault injection: delay or abort a configured share of a route's requests.

use std::time::Duration;

use http::StatusCode;

use crate::config::FaultConfig;

/// A route's compiled `fault = {…}`.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    delay: Option<(Duration, f64)>,
    abort: Option<(StatusCode, f64)>,
}

/// What to do to one request.
#[derive(Debug, PartialEq)]
pub struct Injection {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this status instead of forwarding.
    pub abort: Option<StatusCode>,
}

impl Fault {
    /// Compiles the route's fault table (validated).
    pub fn new(cfg: &FaultConfig) -> Fault {
        Fault {
            delay: cfg.delay.zip(cfg.delay_percent).map(|(d, p)| (d.0, p.fraction())),
            abort: cfg
                .abort_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .zip(cfg.abort_percent)
                .map(|(s, p)| (s, p.fraction())),
        }
    }

    /// Rolls the dice for one request.
    pub fn roll(&self) -> Injection {
        Injection {
            delay: self.delay.filter(|(_, p)| fastrand::f64() < *p).map(|(d, _)| d),
            abort: self.abort.filter(|(_, p)| fastrand::f64() < *p).map(|(s, _)| s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::{Dur, Percent};

    #[test]
    fn injects_roughly_the_configured_share() {
        let f = Fault::new(&FaultConfig {
            delay: Some(Dur::ms(5)),
            delay_percent: Some(Percent(100.0)),
            abort_status: Some(503),
            abort_percent: Some(Percent(25.0)),
        });
        let rolls: Vec<Injection> = (0..4000).map(|_| f.roll()).collect();
        assert!(rolls.iter().all(|r| r.delay == Some(Duration::from_millis(5))));
        let aborted = rolls.iter().filter(|r| r.abort == Some(StatusCode::SERVICE_UNAVAILABLE)).count();
        assert!((800..1200).contains(&aborted), "{aborted}");
        assert_eq!(Fault::default().roll(), Injection { delay: None, abort: None });
    }
}

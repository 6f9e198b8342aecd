//! Retry policy: which outcomes are retried, when a request may be sent again, backoff with full jitter, and a
//! budget (tower's `TpsBudget`) so that retries cannot amplify an outage.

use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};

use crate::backoff::Backoff;
use crate::config::RetryConfig;
use crate::request::IDEMPOTENCY_KEY;

/// A class of outcomes named in `retry.on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection could not be made: the request was never sent.
    ConnectFailure,
    /// The connection broke, or the attempt timed out, after the request may have been sent.
    Reset,
    /// Any 5xx response (and resets and per-try timeouts, as in Envoy).
    Status5xx,
    /// 502, 503 or 504 (and resets and per-try timeouts).
    GatewayError,
    /// One specific status.
    Status(u16),
}

impl FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "5xx" => RetryOn::Status5xx,
            "gateway-error" => RetryOn::GatewayError,
            other => match other.strip_prefix("retriable-status:").map(str::parse::<u16>) {
                Some(Ok(code)) if (100..=599).contains(&code) => RetryOn::Status(code),
                _ => {
                    return Err(format!(
                        "{s:?} is not one of connect-failure, reset, 5xx, gateway-error, retriable-status:<code>"
                    ));
                }
            },
        })
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No connection: nothing was sent.
    ConnectFailure,
    /// The connection failed after the request may have been sent.
    Reset,
    /// `per_try_timeout` elapsed.
    Timeout,
    /// The upstream answered.
    Status(StatusCode),
}

impl Outcome {
    /// Whether this outcome counts against the endpoint for outlier ejection.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Status(s) => s.is_server_error(),
            _ => true,
        }
    }
}

/// A route's compiled retry policy.
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Timeout of one attempt (until response headers).
    pub per_try_timeout: Option<Duration>,
    on: Vec<RetryOn>,
    backoff: Backoff,
    budget: TpsBudget,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy").field("max_retries", &self.max_retries).field("on", &self.on).finish()
    }
}

/// Retries allowed per second whatever the traffic (the budget's floor).
const BUDGET_FLOOR_PER_SEC: u32 = 10;
/// How far back the budget looks.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryPolicy {
    /// Compiles `retry = {…}` (validated: every `on` entry parses).
    pub fn new(cfg: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            max_retries: cfg.max_retries,
            per_try_timeout: cfg.per_try_timeout.map(|d| d.0),
            on: cfg.on.iter().filter_map(|s| s.parse().ok()).collect(),
            backoff: Backoff::new(cfg.backoff.0, cfg.max_backoff.0),
            budget: TpsBudget::new(BUDGET_WINDOW, BUDGET_FLOOR_PER_SEC, cfg.budget_percent.fraction() as f32),
        }
    }

    /// Whether `outcome` is in a class listed in `retry.on`.
    pub fn is_retriable(&self, outcome: Outcome) -> bool {
        self.on.iter().any(|on| match (on, outcome) {
            (RetryOn::ConnectFailure, Outcome::ConnectFailure) => true,
            (RetryOn::Reset | RetryOn::Status5xx | RetryOn::GatewayError, Outcome::Reset | Outcome::Timeout) => true,
            (RetryOn::Status5xx, Outcome::Status(s)) => s.is_server_error(),
            (RetryOn::GatewayError, Outcome::Status(s)) => {
                matches!(s.as_u16(), 502..=504)
            }
            (RetryOn::Status(code), Outcome::Status(s)) => s.as_u16() == *code,
            _ => false,
        })
    }

    /// Whether a request that reached the upstream may ever be sent again under this policy (a class other than
    /// `connect-failure` is listed and the request is idempotent). When not, an attempt need not keep a copy of
    /// the request: a connect failure hands the unsent request back.
    pub fn may_resend(&self, idempotent: bool) -> bool {
        self.max_retries > 0 && idempotent && self.on.iter().any(|on| *on != RetryOn::ConnectFailure)
    }

    /// Whether attempt number `retries + 1` may follow `outcome`, budget aside.
    ///
    /// A request that never left (connect failure) may always be sent again; one that may have reached the
    /// upstream only when it is idempotent and its body can be replayed.
    pub fn may_retry(&self, outcome: Outcome, retries: u32, idempotent: bool, replayable: bool) -> bool {
        retries < self.max_retries
            && self.is_retriable(outcome)
            && replayable
            && (outcome == Outcome::ConnectFailure || idempotent)
    }

    /// Records a request for the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes a retry from the budget; false when retries already make up too much of recent traffic.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// Sleep before retry number `retry` (1-based): full jitter below `min(max_backoff, backoff × 2^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff.delay(retry)
    }
}

/// Whether a request may be sent twice: an idempotent method, or an `Idempotency-Key` header.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
        || headers.contains_key(&IDEMPOTENCY_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::{Dur, Percent};

    fn policy(on: &[&str]) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            max_retries: 2,
            on: on.iter().map(|s| s.to_string()).collect(),
            ..RetryConfig::default()
        })
    }

    #[test]
    fn parses_retry_classes() {
        assert_eq!("retriable-status:409".parse::<RetryOn>(), Ok(RetryOn::Status(409)));
        assert!("retriable-status:99".parse::<RetryOn>().is_err());
        assert!("sometimes".parse::<RetryOn>().is_err());
    }

    #[test]
    fn classes_select_outcomes() {
        let p = policy(&["gateway-error"]);
        assert!(p.is_retriable(Outcome::Status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!p.is_retriable(Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(p.is_retriable(Outcome::Timeout));
        assert!(!p.is_retriable(Outcome::ConnectFailure));
        let p = policy(&["5xx", "retriable-status:409"]);
        assert!(p.is_retriable(Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(p.is_retriable(Outcome::Status(StatusCode::CONFLICT)));
        assert!(!p.is_retriable(Outcome::Status(StatusCode::NOT_FOUND)));
        assert!(policy(&["reset"]).is_retriable(Outcome::Reset));
    }

    #[test]
    fn only_idempotent_requests_are_retried_after_they_may_have_been_sent() {
        let p = policy(&["connect-failure", "5xx"]);
        let five = Outcome::Status(StatusCode::BAD_GATEWAY);
        assert!(p.may_retry(Outcome::ConnectFailure, 0, false, true), "never sent: POST retried");
        assert!(!p.may_retry(five, 0, false, true), "POST 5xx not retried");
        assert!(p.may_retry(five, 0, true, true), "GET 5xx retried");
        assert!(!p.may_retry(five, 0, true, false), "streamed body cannot be replayed");
        assert!(!p.may_retry(five, 2, true, true), "max_retries reached");
        let mut h = HeaderMap::new();
        assert!(!is_idempotent(&Method::POST, &h));
        h.insert("idempotency-key", "k1".parse().unwrap());
        assert!(is_idempotent(&Method::POST, &h));
        assert!(is_idempotent(&Method::PUT, &HeaderMap::new()));
    }

    #[test]
    fn backoff_follows_the_route_settings() {
        let p = RetryPolicy::new(&RetryConfig {
            backoff: Dur::ms(25),
            max_backoff: Dur::ms(100),
            ..RetryConfig::default()
        });
        assert_eq!(p.backoff, Backoff::new(Duration::from_millis(25), Duration::from_millis(100)));
        assert!((1..10).all(|r| p.backoff(r) <= Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries_at_a_share_of_traffic_plus_a_floor() {
        let p = RetryPolicy::new(&RetryConfig { budget_percent: Percent(20.0), ..RetryConfig::default() });
        for _ in 0..1000 {
            p.deposit();
        }
        let granted = (0..1000).filter(|_| p.withdraw()).count();
        // 20% of 1000 requests plus the floor of 10/s over the 10 s window.
        assert!((200..=310).contains(&granted), "granted {granted}");
        let none = RetryPolicy::new(&RetryConfig { budget_percent: Percent(0.0), ..RetryConfig::default() });
        let floor = (0..1000).filter(|_| none.withdraw()).count();
        assert!((90..=110).contains(&floor), "floor {floor}");
    }
}

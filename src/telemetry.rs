//! Telemetry: the log subscriber, the Prometheus registry with every metric Sluice exports, W3C trace context,
//! and the access log line.

use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global log subscriber (`RUST_LOG` filters, default `info`).
pub fn init_logging(cfg: &TelemetryConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCode {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcome {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    route: String,
    broker: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabel {
    broker: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Every metric family, registered once per process (they survive config reloads).
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteCode, Counter>,
    durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    attempts: Family<UpstreamOutcome, Counter>,
    retries: Family<RouteLabel, Counter>,
    ejections: Family<UpstreamLabel, Counter>,
    publishes: Family<PublishLabels, Counter>,
    publish_durations: Family<BrokerLabel, Histogram, fn() -> Histogram>,
    broker_up: Family<BrokerLabel, Gauge>,
    /// Requests being served right now.
    pub in_flight: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RouteCode, Counter>::default();
        let durations = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let attempts = Family::<UpstreamOutcome, Counter>::default();
        let retries = Family::<RouteLabel, Counter>::default();
        let ejections = Family::<UpstreamLabel, Counter>::default();
        let in_flight = Gauge::default();
        let publishes = Family::<PublishLabels, Counter>::default();
        let publish_durations =
            Family::<BrokerLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let broker_up = Family::<BrokerLabel, Gauge>::default();
        registry.register("sluice_publish", "Publish attempts, by route, broker and outcome", publishes.clone());
        registry.register(
            "sluice_publish_duration_seconds",
            "Time until the broker confirmed",
            publish_durations.clone(),
        );
        registry.register("sluice_broker_up", "1 while the broker is connected", broker_up.clone());
        registry.register("sluice_requests", "Requests answered, by route and status", requests.clone());
        registry.register("sluice_request_duration_seconds", "Time to answer a request", durations.clone());
        registry.register("sluice_upstream_attempts", "Attempts sent upstream, by outcome", attempts.clone());
        registry.register("sluice_retries", "Retries sent, by route", retries.clone());
        registry.register("sluice_ejections", "Endpoints ejected by outlier detection", ejections.clone());
        registry.register("sluice_requests_in_flight", "Requests being served", in_flight.clone());
        Metrics {
            registry,
            requests,
            durations,
            attempts,
            retries,
            ejections,
            publishes,
            publish_durations,
            broker_up,
            in_flight,
        }
    }

    /// Handles for one route, looked up once per config load.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let label = RouteLabel { route: route.to_owned() };
        RouteMetrics {
            name: route.to_owned(),
            family: self.requests.clone(),
            by_code: (0..500).map(|_| OnceLock::new()).collect(),
            duration: self.durations.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
        }
    }

    /// Handles for one upstream.
    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let outcome =
            |outcome| self.attempts.get_or_create(&UpstreamOutcome { upstream: upstream.to_owned(), outcome }).clone();
        UpstreamMetrics {
            success: outcome("success"),
            status_5xx: outcome("5xx"),
            connect_failure: outcome("connect_failure"),
            reset: outcome("reset"),
            timeout: outcome("timeout"),
            ejections: self.ejections.get_or_create(&UpstreamLabel { upstream: upstream.to_owned() }).clone(),
        }
    }

    /// Handles for one publish route.
    pub fn publish(&self, route: &str, broker: &str) -> PublishMetrics {
        PublishMetrics {
            route: route.to_owned(),
            broker: broker.to_owned(),
            family: self.publishes.clone(),
            by_outcome: PUBLISH_OUTCOMES.iter().map(|_| OnceLock::new()).collect(),
            duration: self.publish_durations.get_or_create(&BrokerLabel { broker: broker.to_owned() }).clone(),
        }
    }

    /// Sets `sluice_broker_up{broker}`.
    pub fn broker_up(&self, broker: &str, up: bool) {
        self.broker_up.get_or_create(&BrokerLabel { broker: broker.to_owned() }).set(i64::from(up));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// A route's metric handles (no label lookups on the request path).
#[derive(Debug)]
pub struct RouteMetrics {
    name: String,
    family: Family<RouteCode, Counter>,
    by_code: Vec<OnceLock<Counter>>,
    duration: Histogram,
    /// `sluice_retries_total{route}`.
    pub retries: Counter,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn observe(&self, code: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let counter = match self.by_code.get(code.wrapping_sub(100) as usize) {
            Some(cell) => {
                cell.get_or_init(|| self.family.get_or_create(&RouteCode { route: self.name.clone(), code }).clone())
            }
            None => {
                self.family.get_or_create(&RouteCode { route: self.name.clone(), code }).inc();
                return;
            }
        };
        counter.inc();
    }
}

/// A publish route's metric handles.
#[derive(Debug)]
pub struct PublishMetrics {
    route: String,
    broker: String,
    family: Family<PublishLabels, Counter>,
    /// Handles for the known outcomes, looked up once each (no label allocation on the request path).
    by_outcome: Box<[OnceLock<Counter>]>,
    /// `sluice_publish_duration_seconds{broker}`.
    pub duration: Histogram,
}

/// The outcomes a publish can have (`PublishError::outcome` plus the two successes).
const PUBLISH_OUTCOMES: [&str; 6] = ["confirmed", "unconfirmed", "unavailable", "unroutable", "rejected", "config"];

impl PublishMetrics {
    /// `sluice_publish_total{route,broker,outcome}`.
    pub fn outcome(&self, outcome: &'static str) -> Counter {
        let create = || {
            self.family
                .get_or_create(&PublishLabels { route: self.route.clone(), broker: self.broker.clone(), outcome })
                .clone()
        };
        match PUBLISH_OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.by_outcome[i].get_or_init(create).clone(),
            None => create(),
        }
    }
}

/// An upstream's metric handles.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Attempts answered below 500.
    pub success: Counter,
    /// Attempts answered 5xx.
    pub status_5xx: Counter,
    /// Attempts that could not connect.
    pub connect_failure: Counter,
    /// Attempts whose connection broke.
    pub reset: Counter,
    /// Attempts that hit `per_try_timeout`.
    pub timeout: Counter,
    /// Ejections.
    pub ejections: Counter,
}

/// W3C trace context of one request: the trace continues from the client's `traceparent`, or starts here.
/// Kept as integers so that a request pays for no string formatting unless a header or log line needs it.
#[derive(Clone, Debug)]
pub struct TraceContext {
    /// Trace id (never 0).
    pub trace_id: u128,
    /// This hop's span id (never 0).
    pub span_id: u64,
    /// Trace flags.
    pub flags: u8,
    /// `tracestate`, passed through.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Reads `traceparent`/`tracestate` from a request, or starts a new sampled trace.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = fastrand::u64(1..);
        match headers.get("traceparent").and_then(|v| parse_traceparent(v.as_bytes())) {
            Some((trace_id, flags)) => {
                TraceContext { trace_id, span_id, flags, tracestate: headers.get("tracestate").cloned() }
            }
            None => TraceContext { trace_id: fastrand::u128(1..), span_id, flags: 1, tracestate: None },
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` to send onwards (this hop as the parent).
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        hex_into(&mut buf[3..35], self.trace_id, 32);
        buf[35] = b'-';
        hex_into(&mut buf[36..52], u128::from(self.span_id), 16);
        buf[52] = b'-';
        hex_into(&mut buf[53..55], u128::from(self.flags), 2);
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }
}

fn hex_into(out: &mut [u8], mut value: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out[i] = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn parse_traceparent(v: &[u8]) -> Option<(u128, u8)> {
    // version(2) - trace-id(32) - parent-id(16) - flags(2); future versions may append fields.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let hex = |s: &[u8]| -> Option<u128> {
        s.iter().try_fold(0u128, |acc, b| {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u128::from(d))
        })
    };
    let version = hex(&v[..2])?;
    let trace = hex(&v[3..35])?;
    let parent = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    (version != 0xff && trace != 0 && parent != 0 && (version != 0 || v.len() == 55)).then_some((trace, flags as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_and_starts_one_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        h.insert("tracestate", "vendor=1".parse().unwrap());
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        let sent = t.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(sent.ends_with("-01") && sent.len() == 55, "{sent}");
        assert_eq!(t.tracestate.unwrap(), "vendor=1");
        let bad = HeaderMap::from_iter([(
            http::header::HeaderName::from_static("traceparent"),
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        )]);
        let fresh = TraceContext::from_headers(&bad);
        assert_eq!(fresh.trace_id_hex().len(), 32);
        assert_ne!(fresh.trace_id, 0);
        assert!(fresh.traceparent().to_str().unwrap().starts_with("00-"));
    }

    #[test]
    fn exposes_request_metrics() {
        let m = Metrics::new();
        m.route("orders").observe(200, Duration::from_millis(3));
        m.upstream("orders").success.inc();
        let text = m.encode();
        assert!(text.contains("sluice_requests_total{route=\"orders\",code=\"200\"} 1"), "{text}");
        assert!(text.contains("sluice_request_duration_seconds_count{route=\"orders\"} 1"));
        assert!(text.contains("sluice_upstream_attempts_total{upstream=\"orders\",outcome=\"success\"} 1"));
    }
}

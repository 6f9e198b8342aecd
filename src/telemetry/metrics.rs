//! The Prometheus registry with every metric Sluice exports, and the per-route / per-upstream / per-publish handles
//! looked up once per config load so the request path does no label lookups.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
struct SubscriptionLabel {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionPartition {
    subscription: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionOutcome {
    subscription: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcome {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabel {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabel {
    timeout: &'static str,
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
    request_replies: Family<RouteOutcome, Counter>,
    request_reply_durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    request_reply_pending: Family<RouteLabel, Gauge>,
    late_replies: Family<BrokerLabel, Counter>,
    backlogs: Family<RouteLabel, Gauge>,
    deliveries: Family<SubscriptionOutcome, Counter>,
    delivery_durations: Family<SubscriptionLabel, Histogram, fn() -> Histogram>,
    stuck: Family<SubscriptionLabel, Gauge>,
    lags: Family<SubscriptionPartition, Gauge>,
    publish_durations: Family<BrokerLabel, Histogram, fn() -> Histogram>,
    broker_up: Family<BrokerLabel, Gauge>,
    route_serving: Family<RouteLabel, Gauge>,
    /// The routes `route_serving` has a series for.
    routes_shown: Mutex<HashSet<String>>,
    spool_bytes: Family<BrokerLabel, Gauge>,
    spool_messages: Family<BrokerLabel, Gauge>,
    spool_replayed: Family<BrokerLabel, Counter>,
    spool_dropped: Family<BrokerLabel, Counter>,
    store_errors: Family<OpLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    route_in_flight: Family<RouteLabel, Gauge>,
    idempotency_keys: Family<RouteLabel, Gauge>,
    rate_limit_keys: Family<RouteLabel, Gauge>,
    /// Requests being served right now.
    pub in_flight: Gauge,
    /// Finished spans dropped because the export queue was full.
    pub spans_dropped: Counter,
    /// Client connections open now (`sluice_open_connections`).
    pub open_connections: Gauge,
    /// Of those, kept-alive connections parked between requests, holding no HTTP state
    /// (`sluice_parked_connections`).
    pub parked_connections: Gauge,
    /// Times the listener stopped accepting because `server.max_connections` were open
    /// (`sluice_connection_limit_reached_total`).
    pub connection_limit_reached: Counter,
    /// Connections closed by the gateway for taking too long: `header` (`server.header_read_timeout`) or `idle`
    /// (`server.idle_timeout`).
    pub connection_timeouts: ConnectionTimeouts,
}

/// `sluice_connection_timeouts_total{timeout}` handles.
#[derive(Clone, Debug)]
pub struct ConnectionTimeouts {
    /// `timeout="header"`: the request headers did not arrive in time.
    pub header: Counter,
    /// `timeout="idle"`: a kept-alive connection carried no request for `server.idle_timeout`.
    pub idle: Counter,
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
        let route_serving = Family::<RouteLabel, Gauge>::default();
        let spool_bytes = Family::<BrokerLabel, Gauge>::default();
        let spool_messages = Family::<BrokerLabel, Gauge>::default();
        let spool_replayed = Family::<BrokerLabel, Counter>::default();
        let spool_dropped = Family::<BrokerLabel, Counter>::default();
        let store_errors = Family::<OpLabel, Counter>::default();
        let request_replies = Family::<RouteOutcome, Counter>::default();
        let request_reply_durations =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let request_reply_pending = Family::<RouteLabel, Gauge>::default();
        let late_replies = Family::<BrokerLabel, Counter>::default();
        let backlogs = Family::<RouteLabel, Gauge>::default();
        let deliveries = Family::<SubscriptionOutcome, Counter>::default();
        let delivery_durations =
            Family::<SubscriptionLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let stuck = Family::<SubscriptionLabel, Gauge>::default();
        let lags = Family::<SubscriptionPartition, Gauge>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let route_in_flight = Family::<RouteLabel, Gauge>::default();
        let idempotency_keys = Family::<RouteLabel, Gauge>::default();
        let rate_limit_keys = Family::<RouteLabel, Gauge>::default();
        let spans_dropped = Counter::default();
        let open_connections = Gauge::default();
        let parked_connections = Gauge::default();
        let connection_limit_reached = Counter::default();
        let timeouts = Family::<TimeoutLabel, Counter>::default();
        // One statement each: a handle's read guard must be gone before the next entry is created.
        let header = timeouts.get_or_create(&TimeoutLabel { timeout: "header" }).clone();
        let idle = timeouts.get_or_create(&TimeoutLabel { timeout: "idle" }).clone();
        let connection_timeouts = ConnectionTimeouts { header, idle };
        // Both results exist from the start, so a dashboard can tell "no reload yet" from "no data".
        drop(reloads.get_or_create(&ResultLabel { result: "success" }));
        drop(reloads.get_or_create(&ResultLabel { result: "error" }));
        registry.register("sluice_config_reloads", "Config reloads, by result (success, error)", reloads.clone());
        registry.register("sluice_inflight_requests", "Requests being served, by route", route_in_flight.clone());
        registry.register(
            "sluice_trace_spans_dropped",
            "Finished spans dropped because the OTLP export queue was full",
            spans_dropped.clone(),
        );
        registry.register("sluice_publish", "Publish attempts, by route, broker and outcome", publishes.clone());
        registry.register(
            "sluice_publish_duration_seconds",
            "Time until the broker confirmed",
            publish_durations.clone(),
        );
        registry.register("sluice_broker_up", "1 while the broker is connected", broker_up.clone());
        registry.register(
            "sluice_route_serving",
            "1 while the route answers as configured (0: it answers 503, its broker down or its reply topic not consumed)",
            route_serving.clone(),
        );
        registry.register("sluice_spool_bytes", "Bytes held in the broker's spool", spool_bytes.clone());
        registry.register("sluice_spool_messages", "Messages held in the broker's spool", spool_messages.clone());
        registry.register("sluice_spool_replayed", "Spooled messages published to the broker", spool_replayed.clone());
        registry.register(
            "sluice_store_errors",
            "Operations on the shared store (Redis) that failed or timed out, by op (idempotency, rate_limit)",
            store_errors.clone(),
        );
        registry.register(
            "sluice_spool_dropped",
            "Spooled messages given up (corrupted on disk, or refused by the broker for good)",
            spool_dropped.clone(),
        );
        registry.register(
            "sluice_request_reply",
            "Request-reply requests, by route and outcome (replied, no_reply, invalid_reply, too_many_pending, \
             unavailable, unroutable, rejected)",
            request_replies.clone(),
        );
        registry.register(
            "sluice_request_reply_duration_seconds",
            "Time from sending a request until its reply arrived",
            request_reply_durations.clone(),
        );
        registry.register(
            "sluice_request_reply_pending",
            "Requests waiting for their replies",
            request_reply_pending.clone(),
        );
        registry.register(
            "sluice_deliveries",
            "Subscription delivery attempts' results: delivered, retried, dead_lettered",
            deliveries.clone(),
        );
        registry.register(
            "sluice_delivery_duration_seconds",
            "Time from receiving a message to its acknowledgement (delivered or dead-lettered)",
            delivery_durations.clone(),
        );
        registry.register(
            "sluice_subscription_stuck",
            "Messages past max_retries without a dead letter, retried at max_backoff",
            stuck.clone(),
        );
        registry.register(
            "sluice_subscription_lag",
            "Kafka: records of the partition the subscription's group has not committed yet",
            lags.clone(),
        );
        registry.register(
            "sluice_publish_backlog",
            "The destination's backlog last sampled for a route with max_backlog",
            backlogs.clone(),
        );
        registry.register(
            "sluice_request_reply_late",
            "Replies that arrived after their request stopped waiting (dropped)",
            late_replies.clone(),
        );
        registry.register("sluice_requests", "Requests answered, by route and status", requests.clone());
        registry.register("sluice_request_duration_seconds", "Time to answer a request", durations.clone());
        registry.register("sluice_upstream_attempts", "Attempts sent upstream, by outcome", attempts.clone());
        registry.register("sluice_retries", "Retries sent, by route", retries.clone());
        registry.register("sluice_ejections", "Endpoints ejected by outlier detection", ejections.clone());
        registry.register("sluice_requests_in_flight", "Requests being served", in_flight.clone());
        registry.register(
            "sluice_idempotency_keys",
            "Idempotency-Keys remembered (in flight or answered), by route",
            idempotency_keys.clone(),
        );
        registry.register("sluice_rate_limit_keys", "Rate-limit buckets held, by route", rate_limit_keys.clone());
        registry.register("sluice_open_connections", "Client connections open now", open_connections.clone());
        if let Some(workers) = crate::workers::installed() {
            registry.register(
                "sluice_worker_connections",
                "Client connections open now, by serving worker",
                workers.connections().clone(),
            );
        }
        registry.register(
            "sluice_parked_connections",
            "Idle kept-alive client connections parked between requests, holding no HTTP state",
            parked_connections.clone(),
        );
        registry.register(
            "sluice_connection_limit_reached",
            "Times the listener stopped accepting because server.max_connections connections were open",
            connection_limit_reached.clone(),
        );
        registry.register(
            "sluice_connection_timeouts",
            "Client connections closed for taking too long: header (server.header_read_timeout), idle (server.idle_timeout)",
            timeouts,
        );
        Metrics {
            registry,
            requests,
            durations,
            attempts,
            retries,
            ejections,
            publishes,
            request_replies,
            request_reply_durations,
            request_reply_pending,
            late_replies,
            backlogs,
            deliveries,
            delivery_durations,
            stuck,
            lags,
            publish_durations,
            broker_up,
            route_serving,
            routes_shown: Mutex::default(),
            spool_bytes,
            spool_messages,
            spool_replayed,
            spool_dropped,
            store_errors,
            reloads,
            route_in_flight,
            idempotency_keys,
            rate_limit_keys,
            in_flight,
            spans_dropped,
            open_connections,
            parked_connections,
            connection_limit_reached,
            connection_timeouts,
        }
    }

    /// Counts one config reload: `result` is `success` or `error`.
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
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
            in_flight: self.route_in_flight.get_or_create(&label).clone(),
        }
    }

    /// `sluice_idempotency_keys{route}`.
    pub fn idempotency_keys(&self, route: &str) -> Gauge {
        self.idempotency_keys.get_or_create(&RouteLabel { route: route.to_owned() }).clone()
    }

    /// `sluice_rate_limit_keys{route}`.
    pub fn rate_limit_keys(&self, route: &str) -> Gauge {
        self.rate_limit_keys.get_or_create(&RouteLabel { route: route.to_owned() }).clone()
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

    /// Handles for one request-reply route.
    pub fn request_reply(&self, route: &str) -> RequestReplyMetrics {
        let label = RouteLabel { route: route.to_owned() };
        RequestReplyMetrics {
            route: route.to_owned(),
            family: self.request_replies.clone(),
            duration: self.request_reply_durations.get_or_create(&label).clone(),
            pending: self.request_reply_pending.get_or_create(&label).clone(),
        }
    }

    /// Handles for one subscription.
    pub fn subscription(&self, name: &str) -> SubscriptionMetrics {
        let label = SubscriptionLabel { subscription: name.to_owned() };
        let outcome = |outcome| {
            self.deliveries.get_or_create(&SubscriptionOutcome { subscription: name.to_owned(), outcome }).clone()
        };
        SubscriptionMetrics {
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            duration: self.delivery_durations.get_or_create(&label).clone(),
            stuck: self.stuck.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&RouteLabel { route: name.to_owned() }).clone(),
            name: name.to_owned(),
            lags: self.lags.clone(),
        }
    }

    /// `sluice_publish_backlog{route}`.
    pub fn backlog(&self, route: &str) -> Gauge {
        self.backlogs.get_or_create(&RouteLabel { route: route.to_owned() }).clone()
    }

    /// `sluice_request_reply_late_total{broker}`.
    pub fn late_replies(&self, broker: &str) -> Counter {
        self.late_replies.get_or_create(&BrokerLabel { broker: broker.to_owned() }).clone()
    }

    /// `sluice_store_errors_total{op}` for the idempotency and rate-limit operations.
    pub fn store_errors(&self) -> [Counter; 2] {
        ["idempotency", "rate_limit"].map(|op| self.store_errors.get_or_create(&OpLabel { op }).clone())
    }

    /// Handles for one broker's spool.
    pub fn spool(&self, broker: &str) -> SpoolMetrics {
        let label = BrokerLabel { broker: broker.to_owned() };
        SpoolMetrics {
            bytes: self.spool_bytes.get_or_create(&label).clone(),
            messages: self.spool_messages.get_or_create(&label).clone(),
            replayed: self.spool_replayed.get_or_create(&label).clone(),
            dropped: self.spool_dropped.get_or_create(&label).clone(),
        }
    }

    /// Sets `sluice_broker_up{broker}`.
    pub fn broker_up(&self, broker: &str, up: bool) {
        self.broker_up.get_or_create(&BrokerLabel { broker: broker.to_owned() }).set(i64::from(up));
    }

    /// Sets `sluice_route_serving{route}` for the routes of the running config; the series of a route a reload
    /// removed goes (only those: a scrape at the same time never misses a route that is still there).
    pub fn routes_serving<'a>(&self, routes: impl Iterator<Item = (&'a str, bool)>) {
        let mut shown = self.routes_shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashSet::new();
        for (route, serving) in routes {
            self.route_serving.get_or_create(&RouteLabel { route: route.to_owned() }).set(i64::from(serving));
            now.insert(route.to_owned());
        }
        for gone in shown.difference(&now) {
            self.route_serving.remove(&RouteLabel { route: gone.clone() });
        }
        *shown = now;
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
    /// `sluice_inflight_requests{route}`.
    pub in_flight: Gauge,
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

/// A broker spool's metric handles.
#[derive(Debug, Clone, Default)]
pub struct SpoolMetrics {
    /// `sluice_spool_bytes{broker}`.
    pub bytes: Gauge,
    /// `sluice_spool_messages{broker}`.
    pub messages: Gauge,
    /// `sluice_spool_replayed_total{broker}`.
    pub replayed: Counter,
    /// `sluice_spool_dropped_total{broker}`.
    pub dropped: Counter,
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
const PUBLISH_OUTCOMES: [&str; 9] =
    ["confirmed", "unconfirmed", "spooled", "unavailable", "nacked", "unroutable", "rejected", "config", "backlogged"];

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

/// Counts one thing in a gauge while it lives (a request waiting for its reply, a stuck message).
#[derive(Debug)]
pub struct Held(Gauge);

impl Held {
    /// Adds one to `gauge` until the returned value is dropped.
    pub fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A subscription's metric handles.
#[derive(Clone, Debug)]
pub struct SubscriptionMetrics {
    /// `sluice_deliveries_total{outcome="delivered"}`.
    pub delivered: Counter,
    /// `sluice_deliveries_total{outcome="retried"}`.
    pub retried: Counter,
    /// `sluice_deliveries_total{outcome="dead_lettered"}`.
    pub dead_lettered: Counter,
    /// `sluice_delivery_duration_seconds`.
    pub duration: Histogram,
    /// `sluice_subscription_stuck`.
    pub stuck: Gauge,
    /// The upstream call's own retries (none: the subscription retries), `sluice_retries_total{route=NAME}`.
    pub retries: Counter,
    name: String,
    lags: Family<SubscriptionPartition, Gauge>,
}

impl SubscriptionMetrics {
    /// `sluice_subscription_lag{subscription,partition}`.
    pub fn lag(&self, partition: i32) -> Gauge {
        self.lags.get_or_create(&SubscriptionPartition { subscription: self.name.clone(), partition }).clone()
    }

    /// Drops the lag series of a partition this gateway no longer consumes (another member reports it now).
    pub fn forget_lag(&self, partition: i32) {
        self.lags.remove(&SubscriptionPartition { subscription: self.name.clone(), partition });
    }
}

/// A request-reply route's metric handles.
#[derive(Debug)]
pub struct RequestReplyMetrics {
    route: String,
    family: Family<RouteOutcome, Counter>,
    /// `sluice_request_reply_duration_seconds{route}`.
    pub duration: Histogram,
    /// `sluice_request_reply_pending{route}`.
    pub pending: Gauge,
}

impl RequestReplyMetrics {
    /// `sluice_request_reply_total{route,outcome}`.
    pub fn outcome(&self, outcome: &'static str) -> Counter {
        self.family.get_or_create(&RouteOutcome { route: self.route.clone(), outcome }).clone()
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn exposes_reloads_and_in_flight_requests_per_route() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.contains("sluice_config_reloads_total{result=\"success\"} 0"), "{text}");
        assert!(text.contains("sluice_config_reloads_total{result=\"error\"} 0"), "{text}");
        m.reload("error");
        let route = m.route("orders");
        route.in_flight.inc();
        let text = m.encode();
        assert!(text.contains("sluice_config_reloads_total{result=\"error\"} 1"), "{text}");
        assert!(text.contains("sluice_inflight_requests{route=\"orders\"} 1"), "{text}");
        assert!(text.contains("sluice_trace_spans_dropped_total 0"), "{text}");
    }
}

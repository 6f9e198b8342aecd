//! A config compiled for serving: the router, each route's action and policies, and the upstream pools. Built
//! once per (re)load and shared read-only behind an `Arc`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{AckMode, BrokerConfig, BrokerKind, Config, PublishConfig, PublishFormat, RetryConfig};
use crate::forward::{Fault, ForwardRoute, RateLimiter, RetryPolicy, Upstream};
use crate::publish::encoder::{CloudEvents, Encoder, Target};
use crate::publish::idempotency::IdempotencyStore;
use crate::publish::{Ack, PublishError, PublishRoute, Publisher};
use crate::router::{Matcher, Router};
use crate::telemetry::{Metrics, RouteMetrics};
use crate::template::Template;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name.
    pub name: Arc<str>,
    /// What the route does.
    pub action: Action,
    /// Optional token bucket.
    pub rate_limit: Option<RateLimiter>,
    /// Metric handles.
    pub metrics: RouteMetrics,
}

/// A route's action.
#[derive(Debug)]
pub enum Action {
    /// Synchronous forwarding.
    Forward(ForwardRoute),
    /// Asynchronous publishing.
    Publish(PublishRoute),
}

impl Action {
    /// The upstream or broker the action talks to (for the access log).
    pub fn target(&self) -> &str {
        match self {
            Action::Forward(f) => &f.upstream.name,
            Action::Publish(p) => &p.broker_name,
        }
    }
}

/// The compiled config.
#[derive(Debug)]
pub struct Runtime {
    /// The config as loaded (served on /routes).
    pub config: Arc<Config>,
    /// Route table.
    pub router: Router,
    /// Routes by index.
    pub routes: Vec<Route>,
    /// Upstream pools by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Broker producers by name.
    pub brokers: BTreeMap<String, Publisher>,
    /// Metric handles for requests no route took.
    pub unmatched: RouteMetrics,
}

impl Runtime {
    /// Compiles a validated config, starts its upstream pools and connects its brokers (a broker that is down
    /// does not stop the start: its producer keeps reconnecting).
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Runtime, PublishError> {
        let mut upstreams = BTreeMap::new();
        for (name, cfg) in &config.upstreams {
            upstreams.insert(name.clone(), Upstream::start(name, cfg, metrics).await);
        }
        let mut brokers = BTreeMap::new();
        for (name, cfg) in &config.brokers {
            brokers.insert(name.clone(), connect(name, cfg).await?);
        }
        let mut matchers = Vec::with_capacity(config.routes.len());
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let matcher = Matcher::compile(&r.matcher).expect("validated match");
            let action = match (&r.forward, &r.publish) {
                (Some(forward), _) => Action::Forward(ForwardRoute {
                    upstream: upstreams[&forward.upstream].clone(),
                    prefix: matcher.prefix().map(str::to_owned),
                    rewrite: forward.rewrite_prefix.clone(),
                    timeout: forward.timeout.unwrap_or(config.server.request_timeout).0,
                    retry: RetryPolicy::new(r.retry.as_ref().unwrap_or(&RetryConfig::default())),
                    fault: r.fault.as_ref().map(Fault::new),
                }),
                (None, Some(publish)) => Action::Publish(publish_route(&r.name, publish, &brokers, &config, metrics)),
                (None, None) => unreachable!("validated: a route has an action"),
            };
            matchers.push(matcher);
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                action,
                rate_limit: r.rate_limit.as_ref().map(RateLimiter::new),
                metrics: metrics.route(&r.name),
            });
        }
        Ok(Runtime {
            router: Router::new(matchers),
            routes,
            upstreams,
            brokers,
            unmatched: metrics.route(""),
            config: Arc::new(config),
        })
    }

    /// Brokers used by at least one route, with whether each is connected.
    pub fn broker_status(&self) -> Vec<(&str, bool)> {
        let used: std::collections::BTreeSet<&str> = self
            .routes
            .iter()
            .filter_map(|r| match &r.action {
                Action::Publish(p) => Some(p.broker_name.as_str()),
                Action::Forward(_) => None,
            })
            .collect();
        self.brokers.iter().filter(|(n, _)| used.contains(n.as_str())).map(|(n, p)| (n.as_str(), p.is_up())).collect()
    }
}

async fn connect(name: &str, cfg: &BrokerConfig) -> Result<Publisher, PublishError> {
    match cfg.kind {
        BrokerKind::Kafka => {
            let options = cfg
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect();
            let bootstrap = cfg.bootstrap.as_deref().unwrap_or_default();
            Publisher::connect_kafka(name, bootstrap, cfg.delivery_timeout.0, &options).await
        }
        BrokerKind::Amqp => {
            let url = match (&cfg.url, &cfg.url_env) {
                (Some(u), _) => u.clone(),
                (None, Some(var)) => std::env::var(var).unwrap_or_default(),
                (None, None) => String::new(),
            };
            Publisher::connect_amqp(name, &url, cfg.confirm_timeout.0).await
        }
    }
}

fn publish_route(
    route: &str,
    p: &PublishConfig,
    brokers: &BTreeMap<String, Publisher>,
    config: &Config,
    metrics: &Metrics,
) -> PublishRoute {
    let template = |s: &str| Template::parse(s).expect("validated template");
    let target = match config.brokers[&p.broker].kind {
        BrokerKind::Kafka => Target::Kafka {
            topic: template(p.topic.as_deref().unwrap_or_default()),
            key: p.key.as_deref().map(template),
        },
        BrokerKind::Amqp => Target::Amqp {
            exchange: p.exchange.clone().unwrap_or_default(),
            routing_key: template(p.routing_key.as_deref().unwrap_or_default()),
            persistent: p.persistent,
        },
    };
    let cloudevents = (p.format == PublishFormat::Cloudevents).then(|| CloudEvents {
        ce_type: template(p.ce_type.as_deref().unwrap_or("{route}")),
        ce_source: template(p.ce_source.as_deref().unwrap_or("/sluice")),
    });
    let headers = p.headers.iter().filter_map(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok());
    PublishRoute {
        broker_name: p.broker.clone(),
        publisher: brokers[&p.broker].clone(),
        encoder: Encoder { target, cloudevents, headers: headers.collect() },
        ack: match p.ack {
            AckMode::Confirm => Ack::Confirm,
            AckMode::None => Ack::None,
        },
        idempotency: IdempotencyStore::new(p.idempotency_window.0, p.idempotency_capacity),
        metrics: metrics.publish(route, &p.broker),
    }
}

//! A config compiled for serving: the router, each route's action and policies, and the upstream pools. Built
//! once per (re)load and shared read-only behind an `Arc`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, RetryConfig};
use crate::forward::{Fault, ForwardRoute, RateLimiter, RetryPolicy, Upstream};
use crate::router::{Matcher, Router};
use crate::telemetry::{Metrics, RouteMetrics};

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
}

impl Action {
    /// The upstream or broker the action talks to (for the access log).
    pub fn target(&self) -> &str {
        match self {
            Action::Forward(f) => &f.upstream.name,
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
    /// Metric handles for requests no route took.
    pub unmatched: RouteMetrics,
}

impl Runtime {
    /// Compiles a validated config and starts its upstream pools.
    pub async fn build(config: Config, metrics: &Metrics) -> Runtime {
        let mut upstreams = BTreeMap::new();
        for (name, cfg) in &config.upstreams {
            upstreams.insert(name.clone(), Upstream::start(name, cfg, metrics).await);
        }
        let mut matchers = Vec::with_capacity(config.routes.len());
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            matchers.push(Matcher::compile(&r.matcher).expect("validated match"));
            let forward = r
                .forward
                .as_ref()
                .expect("validated: a route has an action");
            let action = Action::Forward(ForwardRoute {
                upstream: upstreams[&forward.upstream].clone(),
                prefix: matchers.last().and_then(|m| m.prefix().map(str::to_owned)),
                rewrite: forward.rewrite_prefix.clone(),
                timeout: forward.timeout.unwrap_or(config.server.request_timeout).0,
                retry: RetryPolicy::new(r.retry.as_ref().unwrap_or(&RetryConfig::default())),
                fault: r.fault.as_ref().map(Fault::new),
            });
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                action,
                rate_limit: r.rate_limit.as_ref().map(RateLimiter::new),
                metrics: metrics.route(&r.name),
            });
        }
        Runtime {
            router: Router::new(matchers),
            routes,
            upstreams,
            unmatched: metrics.route(""),
            config: Arc::new(config),
        }
    }
}

//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/routes` (the active config, every
//! secret masked) and `POST /reload`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::reload::Reloader;
use crate::server::Gateway;
use crate::snapshot::Snapshot;

#[derive(Clone)]
struct Admin {
    gateway: Arc<Gateway>,
    reloader: Option<Arc<Reloader>>,
}

/// The admin router over a running gateway; `reloader` serves `POST /reload` (absent when the gateway was not
/// started from a file).
pub fn router(gateway: Arc<Gateway>, reloader: Option<Arc<Reloader>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/routes", get(routes))
        .route("/reload", post(reload))
        .with_state(Admin { gateway, reloader })
}

async fn reload(State(admin): State<Admin>) -> Response {
    let Some(reloader) = &admin.reloader else {
        let body = json!({ "reloaded": false, "problems": ["the gateway was not started from a config file"] });
        return (StatusCode::CONFLICT, Json(body)).into_response();
    };
    let outcome = reloader.reload("admin").await;
    let status = if outcome.reloaded { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    (status, Json(outcome)).into_response()
}

/// Ready while the gateway can serve its routes: a config is loaded (always, once running) and it is not shutting
/// down. A broker that is down does not make the gateway unready, since its routes answer 503 while the others keep
/// serving (or spool); `spools` gives the depth of each broker's spool; `?verbose` lists each broker and each publish
/// route's state.
async fn readyz(State(Admin { gateway: gw, .. }): State<Admin>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let draining = gw.draining.load(Ordering::Relaxed);
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let mut body = json!({ "ready": !draining });
    if draining {
        body["not_ready"] = json!(["shutting down"]);
    }
    let runtime = gw.snapshot.load();
    let spools: serde_json::Map<String, serde_json::Value> = runtime
        .brokers
        .iter()
        .filter_map(|(name, b)| {
            let depth = b.publisher.spool()?.depth();
            Some((
                name.clone(),
                json!({ "messages": depth.messages, "bytes": depth.bytes, "max_bytes": depth.max_bytes }),
            ))
        })
        .collect();
    if !spools.is_empty() {
        body["spools"] = spools.into();
    }
    let verbose = query.is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    if verbose {
        let up: BTreeMap<&str, bool> = runtime.broker_status().into_iter().collect();
        body["brokers"] = up.iter().map(|(name, up)| (name.to_string(), json!(state(*up)))).collect();
        body["routes"] = route_states(&runtime, &up)
            .into_iter()
            .map(|(name, state)| (name.to_owned(), json!(state.describe())))
            .collect();
        body["subscriptions"] = runtime
            .subscriptions
            .iter()
            .map(|(name, s)| (name.clone(), json!(if s.is_consuming() { "consuming" } else { "connecting" })))
            .collect();
    }
    (status, Json(body))
}

/// What a route does now, for `/readyz?verbose` and `sluice_route_serving`.
enum RouteState<'a> {
    Serving,
    /// Its broker is down and it spools (still `202`).
    Spooling(&'a str),
    /// Its broker is down: `503`.
    BrokerDown(&'a str),
    /// A request-reply route whose reply topic or queue is not consumed yet: `503`.
    NotListening(&'a str),
}

impl RouteState<'_> {
    fn describe(&self) -> String {
        match self {
            RouteState::Serving => "serving".to_owned(),
            RouteState::Spooling(b) => format!("broker {b} down: spooling"),
            RouteState::BrokerDown(b) => format!("broker {b} down: answering 503"),
            RouteState::NotListening(topic) => format!("not consuming reply topic {topic} yet: answering 503"),
        }
    }

    /// Whether the route answers its requests as configured (a spooling route does: `202`).
    fn serving(&self) -> bool {
        matches!(self, RouteState::Serving | RouteState::Spooling(_))
    }
}

/// Each route of `runtime` and its state, in config order.
fn route_states<'a>(runtime: &'a Snapshot, up: &BTreeMap<&'a str, bool>) -> Vec<(&'a str, RouteState<'a>)> {
    runtime
        .config
        .routes
        .iter()
        .map(|route| {
            let broker = route
                .publish
                .as_ref()
                .map(|p| p.broker.as_str())
                .or(route.request_reply.as_ref().map(|r| r.broker.as_str()));
            let reply_topic =
                route.request_reply.as_ref().and_then(|r| r.reply_topic.as_deref().or(r.reply_queue.as_deref()));
            let listening = |b: &str, topic: &str| runtime.brokers.get(b).is_none_or(|b| b.publisher.listening(topic));
            let spooled = |b: &str| {
                route.publish.is_some() && runtime.brokers.get(b).is_some_and(|b| b.publisher.spool().is_some())
            };
            let state = match (broker, broker.and_then(|b| up.get(b)), reply_topic) {
                (Some(b), Some(false), _) if spooled(b) => RouteState::Spooling(b),
                (Some(b), Some(false), _) => RouteState::BrokerDown(b),
                (Some(b), _, Some(topic)) if !listening(b, topic) => RouteState::NotListening(topic),
                _ => RouteState::Serving,
            };
            (route.name.as_str(), state)
        })
        .collect()
}

fn state(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

async fn metrics(State(Admin { gateway: gw, .. }): State<Admin>) -> impl IntoResponse {
    let runtime = gw.snapshot.load();
    for (name, broker) in &runtime.brokers {
        gw.metrics().broker_up(name, broker.publisher.is_up());
    }
    let up: BTreeMap<&str, bool> = runtime.broker_status().into_iter().collect();
    gw.metrics().routes_serving(route_states(&runtime, &up).iter().map(|(name, state)| (*name, state.serving())));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], gw.metrics().encode())
}

async fn routes(State(Admin { gateway: gw, .. }): State<Admin>) -> impl IntoResponse {
    let runtime = gw.snapshot.load();
    let mut doc = serde_json::to_value(&*runtime.config).unwrap_or_default();
    crate::redact::config(&mut doc);
    Json(doc)
}

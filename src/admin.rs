//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/routes` (the active config, every
//! secret masked) and `POST /reload`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::reload::Reloader;
use crate::server::Gateway;

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

async fn readyz(State(Admin { gateway: gw, .. }): State<Admin>) -> impl IntoResponse {
    let mut not_ready = Vec::new();
    if !gw.accepting.load(Ordering::Relaxed) {
        not_ready.push("shutting down".to_owned());
    }
    let runtime = gw.snapshot.load();
    let mut brokers = serde_json::Map::new();
    for (broker, up) in runtime.broker_status() {
        brokers.insert(broker.to_owned(), json!(if up { "up" } else { "down" }));
        if !up {
            not_ready.push(format!("broker {broker} is not connected"));
        }
    }
    if not_ready.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true, "brokers": brokers })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "not_ready": not_ready, "brokers": brokers })))
    }
}

async fn metrics(State(Admin { gateway: gw, .. }): State<Admin>) -> impl IntoResponse {
    for (name, broker) in &gw.snapshot.load().brokers {
        gw.metrics().broker_up(name, broker.publisher.is_up());
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], gw.metrics().encode())
}

async fn routes(State(Admin { gateway: gw, .. }): State<Admin>) -> impl IntoResponse {
    let runtime = gw.snapshot.load();
    let mut doc = serde_json::to_value(&*runtime.config).unwrap_or_default();
    crate::redact::config(&mut doc);
    Json(doc)
}

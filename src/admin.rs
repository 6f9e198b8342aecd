//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/routes` (the active config).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::server::Gateway;

/// The admin router over a running gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/routes", get(routes))
        .with_state(gateway)
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    let mut not_ready = Vec::new();
    if !gw.accepting.load(Ordering::Relaxed) {
        not_ready.push("shutting down".to_owned());
    }
    if not_ready.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "not_ready": not_ready })),
        )
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.encode(),
    )
}

async fn routes(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    let runtime = gw.runtime.load();
    Json(serde_json::to_value(&*runtime.config).unwrap_or_default())
}

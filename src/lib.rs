//! Sluice: an edge gateway that forwards HTTP requests to upstreams with service-mesh resilience.
//!
//! Data flows one way: listener → router → action → problem/response.
//!
//! - [`config`]: the `routes.toml` model, loading with environment overrides, and `validate()`.
//! - [`template`]: `{header.x}`-style templates, parsed once, rendered per request.
//! - [`router`]: the compiled route table (method, host, path, headers → route + params).
//! - [`runtime`]: a config compiled for serving (routes, actions, upstream pools), swapped atomically.
//! - [`server`]: the public listener, dispatch, access log, graceful shutdown.
//! - [`forward`]: upstream pools, balancing, outlier ejection, retries and budget, fault injection, rate limits.
//! - [`body`]: request and response body types (replayable small bodies, streamed large ones).
//! - [`publish`]: Kafka and RabbitMQ producers, request → message encoding, idempotency keys.
//! - [`problem`]: the one place where errors become HTTP (`application/problem+json`).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/routes`.
//! - [`telemetry`]: logging, metrics registry, trace context.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
pub mod forward;
pub mod problem;
pub mod publish;
pub mod router;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod template;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::server::Gateway;
use crate::telemetry::Metrics;

/// The sockets Sluice serves on (bound by the caller, so tests can use port 0).
pub struct Listeners {
    /// Public listener.
    pub main: TcpListener,
    /// Admin listener.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses named in the config.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            main: TcpListener::bind(config.server.listen).await?,
            admin: TcpListener::bind(config.server.admin_listen).await?,
        })
    }
}

/// Runs the gateway with a validated `config` until `shutdown` resolves, then stops accepting, drains in-flight
/// requests for up to `server.shutdown_grace`, and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), publish::PublishError> {
    let metrics = Arc::new(Metrics::new());
    let grace = config.server.shutdown_grace.0;
    let runtime = Runtime::build(config, &metrics).await?;
    let gateway = Arc::new(Gateway::new(runtime, metrics));
    let admin = admin::router(gateway.clone());
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(async move {
        let serve = axum::serve(listeners.admin, admin).with_graceful_shutdown(async {
            let _ = admin_stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    tracing::info!(listen = %listeners.main.local_addr().map(|a| a.to_string()).unwrap_or_default(), "sluice is serving");
    server::serve(listeners.main, gateway.clone(), shutdown, grace).await;
    // Nothing confirmed to a client may be lost: let producers deliver what they still hold.
    for publisher in gateway.runtime.load().brokers.values() {
        publisher.flush(grace).await;
    }
    let _ = admin_stop.send(());
    let _ = admin_task.await;
    tracing::info!("sluice stopped");
    Ok(())
}

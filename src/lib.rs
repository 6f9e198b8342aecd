//! Sluice: an edge gateway that forwards HTTP requests to upstreams with service-mesh resilience, or publishes
//! them durably to RabbitMQ and Kafka.
//!
//! Data flows one way, top to bottom: listener → stack → policies → action → upstream call / producer.
//!
//! - [`config`]: the `routes.toml` model, loading with environment overrides, and `validate()`.
//! - [`snapshot`]: a config compiled for serving (routes → stacks, upstreams, brokers), swapped atomically.
//! - [`reload`]: SIGHUP, file watch and `POST /reload` → validate → compile → swap.
//! - `config_watch`: the config file's directory watched for the events that can change the file (Linux).
//! - [`server`]: the public listener (plain or TLS), routing each request to its route's stack, graceful shutdown.
//! - [`workers`]: thread-per-core serving: each client connection on one worker thread with its own runtime.
//! - [`connection`]: one client connection's limits (header-read and idle timeouts, its `max_connections` slot).
//! - [`stack`]: the per-route layer order, in one place.
//! - [`store`]: state several replicas share in Redis (idempotency keys, rate-limit buckets).
//! - [`layers`]: request id, SERVER span + metrics + access log, panics → 500, body reading.
//! - [`policy`]: guards (webhook signatures, rate limit; the auth slot), idempotency.
//! - [`request`]: facts about the client request shared by every layer and action.
//! - [`forwarded`]: the client's address: the peer, or what a trusted proxy's `X-Forwarded-For` names.
//! - [`action`]: `forward` | `publish`, and the answer for requests no route takes.
//! - [`forward`]: HTTP proxying on top of [`upstream`]: headers, rewrite, upgrades, fault injection.
//! - [`upstream`]: calling an upstream with resilience (pool, balance, outlier, health, retry, timeouts).
//! - [`publish`]: the `Producer` trait, Kafka and RabbitMQ producers, request → message encoding.
//! - [`body`]: request and response body types (replayable small bodies, streamed large ones).
//! - [`template`], [`router`]: compiled templates and the route table; pure.
//! - [`backoff`]: the one exponential backoff with full jitter.
//! - [`tls`]: rustls settings from PEM files: the listener's certificate, the roots upstreams are verified against.
//! - [`problem`]: the one place where errors become HTTP (`application/problem+json`).
//! - [`redact`]: secrets masked in everything Sluice shows (`/routes`, `sluice check`).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/routes`, `POST /reload`.
//! - [`telemetry`]: logging, metrics registry, traces (OTLP).
#![forbid(unsafe_code)]

pub mod action;
pub mod admin;
pub mod backoff;
pub mod body;
pub mod boxed;
pub mod bridge;
pub mod clock;
pub mod config;
#[cfg(target_os = "linux")]
mod config_watch;
pub mod connection;
pub mod drain;
pub mod forward;
pub mod forwarded;
pub mod lane;
pub mod layers;
pub mod park;
pub mod policy;
pub mod problem;
pub mod publish;
pub mod redact;
pub mod reload;
pub mod request;
pub mod router;
#[cfg(test)]
mod scratch;
pub mod server;
pub mod snapshot;
pub mod stack;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod upstream;
pub mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;
use crate::reload::Reloader;
use crate::server::Gateway;
use crate::snapshot::{Shared, Snapshot};
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
            main: listen(config.server.listen)?,
            admin: TcpListener::bind(config.server.admin_listen).await?,
        })
    }
}

/// How many connections the kernel completes and holds for the public listener before Sluice accepts them (and,
/// with `server.max_connections` open, until one closes). tokio's `TcpListener::bind` asks for 128, as the standard
/// library does; a burst of a few hundred new clients overflows that, and the kernel drops their SYNs, each client
/// trying again after a second (with a 1 s connect timeout, a proxy in front gives up). nginx asks for 511; this asks
/// for 4096, which Linux caps at `net.core.somaxconn` (4096 by default since 5.4).
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind` sets it).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Where a running gateway reloads its config from.
pub struct ReloadSource {
    /// The config file (watched for changes; read again on `SIGHUP` and `POST /reload`).
    pub path: PathBuf,
    /// The `SIGHUP` stream, registered by the caller before start-up so an early SIGHUP cannot kill the process.
    pub hangup: Option<tokio::signal::unix::Signal>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config could not be compiled: a broker's settings were refused by its client library, a route's auth
    /// keys could not be loaded, or a TLS file is missing or wrong.
    #[error(transparent)]
    Build(#[from] snapshot::BuildError),
    /// Trace export could not be set up.
    #[error("{0}")]
    Telemetry(String),
}

/// Runs the gateway with a validated `config` until `shutdown` resolves, then reports not ready, keeps accepting
/// for `server.drain_delay`, stops accepting, drains in-flight requests for up to `server.shutdown_grace`, flushes
/// producers and spans (together, for up to `shutdown_grace` more), and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_with_reload(config, None, listeners, shutdown).await
}

/// [`run`], reloading the config from `reload` on SIGHUP, file change and `POST /reload`.
pub async fn run_with_reload(
    config: Config,
    reload: Option<ReloadSource>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let (tracer, export) =
        telemetry::trace::start(&config.telemetry, metrics.spans_dropped.clone()).map_err(StartError::Telemetry)?;
    let grace = config.server.shutdown_grace.0;
    let shared = Shared { metrics, tracer };
    let snapshot = Snapshot::build(config, None, &shared).await?;
    let gateway = Arc::new(Gateway::new(snapshot, shared));
    let reloader = reload.map(|source| {
        let reloader = Arc::new(Reloader::new(source.path, gateway.clone()));
        reloader.spawn(source.hangup);
        reloader
    });
    let admin = admin::router(gateway.clone(), reloader);
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
    // Nothing confirmed to a client may be lost: let producers deliver what they still hold, and the exporter send
    // the last spans, all at once within one more `shutdown_grace`.
    let snapshot = gateway.snapshot.load();
    // Subscriptions' deliveries in flight finish (their dead letters are confirmed inside them), within the grace.
    let subscriptions = futures_util::future::join_all(snapshot.subscriptions.values().map(|s| s.stop(grace)));
    let producers = futures_util::future::join_all(snapshot.brokers.values().map(|b| b.publisher.flush(grace)));
    let spans = async {
        if let Some(export) = &export {
            export.flush(grace).await;
        }
    };
    tokio::join!(subscriptions, producers, spans);
    let _ = admin_stop.send(());
    let _ = admin_task.await;
    tracing::info!("sluice stopped");
    Ok(())
}

//! The public listener: accepts connections (HTTP/1.1 and h2c; or, with `server.tls`, TLS with HTTP/2 or HTTP/1.1
//! by ALPN), routes each request, runs the route's action, turns errors into problem responses, records metrics and
//! the access log, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::body::Body;
use crate::layers::catch_panic::{CatchPanicFuture, guard};
use crate::problem::GatewayError;
use crate::request::Facts;
use crate::router::RouteMatch;
use crate::snapshot::{Shared, Snapshot};
use crate::stack::RouteService;
use crate::telemetry::Metrics;

/// Shared state of a running gateway.
pub struct Gateway {
    /// The active compiled config; each request takes the route's stack from it and keeps that until it ends.
    pub snapshot: ArcSwap<Snapshot>,
    /// What every snapshot is compiled with (metrics, tracer).
    pub shared: Shared,
    /// False once shutdown has begun (readiness turns 503).
    pub accepting: AtomicBool,
}

impl Gateway {
    /// A gateway serving `snapshot`.
    pub fn new(snapshot: Snapshot, shared: Shared) -> Gateway {
        Gateway { snapshot: ArcSwap::from_pointee(snapshot), shared, accepting: AtomicBool::new(true) }
    }

    /// Metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }
}

/// How long a client may take to complete the TLS handshake before its connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves, then drains open requests for at most `grace`.
///
/// The listener speaks TLS when the snapshot it starts with has `server.tls` (a reload changes the certificate,
/// not whether there is one). Each TLS handshake runs in the connection's own task, so a slow client delays no
/// other accept, and takes the certificate of the snapshot current when the connection was accepted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>, grace: Duration) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let tls = gateway.snapshot.load().tls.is_some();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The client address as an `x-forwarded-for` value, made once per connection.
        let peer_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a header value");
        if tls {
            let config = gateway.snapshot.load().tls.clone().expect("a TLS listener's snapshots have server.tls");
            let (gw, builder, watcher) = (gateway.clone(), builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                let Some(stream) = handshake(TlsAcceptor::from(config), stream, peer).await else { return };
                let service = service(gw, peer_ip, "https");
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        } else {
            let service = service(gateway.clone(), peer_ip, "http");
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
    gateway.accepting.store(false, Ordering::Relaxed);
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed with requests still open"),
    }
}

/// The service of one connection from `peer_ip` over `scheme` (`http` or `https`).
fn service(gw: Arc<Gateway>, peer_ip: HeaderValue, scheme: &'static str) -> Connection {
    Connection { gw, peer_ip, scheme }
}

/// One connection's requests: each is routed and its route's stack called at once, so the future hyper keeps for
/// a request is the stack's own (no wrapping `async` block whose larger future would be moved again).
#[derive(Clone)]
struct Connection {
    gw: Arc<Gateway>,
    peer_ip: HeaderValue,
    scheme: &'static str,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CatchPanicFuture<<RouteService as Service<Request<Incoming>>>::Future>;

    /// Answers one request; never fails (errors become problem responses). The stack catches panics below its
    /// observe layer; this catches the rest, so no panic drops a connection.
    fn call(&self, req: Request<Incoming>) -> Self::Future {
        guard(|| handle(&self.gw, req, &self.peer_ip, self.scheme))
    }
}

/// The server side of a TLS handshake, within [`TLS_HANDSHAKE_TIMEOUT`]; `None` (logged) when it failed.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// Routes one request received over `scheme` (`http` or `https`) and calls its route's stack.
fn handle(
    gw: &Gateway,
    mut req: Request<Incoming>,
    peer_ip: &HeaderValue,
    scheme: &'static str,
) -> <RouteService as Service<Request<Incoming>>>::Future {
    let (mut service, facts) = {
        let snapshot = gw.snapshot.load();
        let facts = |params| Facts::new(peer_ip.clone(), scheme, params);
        match snapshot.router.route(req.method(), host_of(&req), req.uri().path(), req.headers()) {
            RouteMatch::Found { index, params } => (snapshot.routes[index].service.clone(), facts(params)),
            RouteMatch::MethodNotAllowed { first, params, .. }
                if is_preflight(&req) && snapshot.routes[first].answers_preflight =>
            {
                (snapshot.routes[first].service.clone(), facts(params))
            }
            RouteMatch::MethodNotAllowed { allow, .. } => {
                let mut f = facts(Default::default());
                f.unmatched = Some(GatewayError::MethodNotAllowed { allow });
                (snapshot.unmatched.clone(), f)
            }
            RouteMatch::NotFound => {
                let mut f = facts(Default::default());
                f.unmatched = Some(GatewayError::NotFound);
                (snapshot.unmatched.clone(), f)
            }
        }
    };
    req.extensions_mut().insert(facts);
    // Every layer of a route's stack is always ready (their state is shared and immutable): call it at once.
    service.call(req)
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(req: &Request<Incoming>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Host without port, from the Host header or (HTTP/2) the URI authority.
fn host_of(req: &Request<Incoming>) -> Option<&str> {
    let raw = match req.headers().get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(h) => h,
        None => req.uri().authority()?.as_str(),
    };
    if raw.starts_with('[') {
        return raw.split_once(']').map(|(h, _)| &h[1..]);
    }
    Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h))
}

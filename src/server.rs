//! The public listener: accepts connections (HTTP/1.1 and h2c), routes each request, runs the route's action,
//! turns errors into problem responses, records metrics and the access log, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::body::Body;
use crate::forward::{Downstream, forward};
use crate::problem::GatewayError;
use crate::publish::publish;
use crate::router::RouteMatch;
use crate::runtime::{Action, Runtime};
use crate::telemetry::{Metrics, TraceContext};
use crate::template::RenderContext;

/// Shared state of a running gateway.
pub struct Gateway {
    /// The active compiled config; requests take a snapshot and keep it until they finish.
    pub runtime: ArcSwap<Runtime>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// False once shutdown has begun (readiness turns 503).
    pub accepting: AtomicBool,
    access_log: bool,
}

impl Gateway {
    /// A gateway serving `runtime`.
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Gateway {
        let access_log = runtime.config.telemetry.access_log;
        Gateway { runtime: ArcSwap::from_pointee(runtime), metrics, accepting: AtomicBool::new(true), access_log }
    }
}

static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Serves `listener` until `shutdown` resolves, then drains open requests for at most `grace`.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>, grace: Duration) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
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
        let gw = gateway.clone();
        // The client address as an `x-forwarded-for` value, made once per connection.
        let peer_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a header value");
        let service = service_fn(move |req| {
            let gw = gw.clone();
            let peer_ip = peer_ip.clone();
            async move { Ok::<_, Infallible>(handle(&gw, req, &peer_ip).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    gateway.accepting.store(false, Ordering::Relaxed);
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed with requests still open"),
    }
}

/// Answers one request; never fails (errors become problem responses).
pub async fn handle(gw: &Gateway, req: Request<Incoming>, peer_ip: &HeaderValue) -> Response<Body> {
    let start = Instant::now();
    let runtime = gw.runtime.load_full();
    let _in_flight = InFlightGauge::new(&gw.metrics.in_flight);
    let request_id = request_id(req.headers());
    let trace = TraceContext::from_headers(req.headers());
    // Kept for the access log: cheap clones (shared bytes), no copies.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let matched = runtime.router.route(req.method(), host_of(&req), req.uri().path(), req.headers());
    let (route, result) = match matched {
        RouteMatch::NotFound => (None, Err(GatewayError::NotFound)),
        RouteMatch::MethodNotAllowed { allow } => (None, Err(GatewayError::MethodNotAllowed { allow })),
        RouteMatch::Found { index, params } => {
            let route = &runtime.routes[index];
            let result = async {
                if let Some(limiter) = &route.rate_limit {
                    let key = match &limiter.key {
                        Some(t) => {
                            let cx = RenderContext::new(
                                req.method(),
                                req.headers(),
                                &params,
                                req.uri().query(),
                                &route.name,
                            );
                            t.render(&cx).map_err(|m| GatewayError::BadRequest(format!("missing {m}")))?
                        }
                        None => String::new(),
                    };
                    limiter.check(&key).map_err(|retry_after| GatewayError::RateLimited { retry_after })?;
                }
                let ds = Downstream {
                    peer_ip,
                    request_id: &request_id,
                    trace: &trace,
                    scheme: "http",
                    params: &params,
                    max_body: runtime.config.server.max_body.0,
                };
                match &route.action {
                    // Boxed: the futures are large, and moving them through the layers above costs more.
                    Action::Forward(f) => Box::pin(forward(f, &route.metrics, req, ds)).await,
                    Action::Publish(p) => Box::pin(publish(p, &route.name, req, ds)).await,
                }
            }
            .await;
            (Some(route), result)
        }
    };
    let route_name = route.map(|r| &*r.name);
    let mut response = match result {
        Ok(res) => res,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(route = route_name.unwrap_or(""), request_id = ?request_id, error = %e, "gateway error");
            }
            e.into_response(route_name, request_id.to_str().unwrap_or(""))
        }
    };
    response.headers_mut().entry(&X_REQUEST_ID).or_insert_with(|| request_id.clone());
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    route.map_or(&runtime.unmatched, |r| &r.metrics).observe(status, elapsed);
    if gw.access_log {
        tracing::info!(
            target: "access",
            route = route_name.unwrap_or(""),
            method = %method,
            path = %uri.path(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            backend = route.map_or("", |r| r.action.target()),
            request_id = request_id.to_str().unwrap_or(""),
            trace_id = %trace.trace_id_hex(),
        );
    }
    response
}

/// Counts a request in `sluice_requests_in_flight` until dropped (also when the client goes away mid-request).
struct InFlightGauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlightGauge<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlightGauge(gauge)
    }
}

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The client's `x-request-id` when it is sane, else a new UUID.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 && v.to_str().is_ok() => v.clone(),
        _ => {
            let mut buf = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(id).expect("a UUID is a header value")
        }
    }
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

//! The synchronous request path of a `forward` route, read top to bottom:
//!
//! 1. fault injection (delay, then abort),
//! 2. the request body is read: buffered up to 64 KiB so it can be replayed, streamed beyond,
//! 3. the overall `timeout` wraps every attempt,
//! 4. each attempt: load shedding (`max_concurrent`) → balancer (skipping ejected, unhealthy and already tried
//!    endpoints) → `per_try_timeout` → the pooled HTTP client,
//! 5. the outcome feeds outlier ejection and metrics, then the retry policy (class, idempotency, replayability,
//!    budget, backoff) decides whether to go round again,
//! 6. the last upstream response is passed through, streamed, with hop-by-hop headers removed; a `101` to an
//!    upgrade request splices the two connections (WebSocket).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;

use super::balance::{Pick, hash_key};
use super::endpoint::Endpoint;
use super::fault::Fault;
use super::retry::{Outcome, RetryPolicy, is_idempotent};
use super::upgrade;
use super::upstream::Upstream;
use crate::body::{Body, ReadBodyError, is_too_large, prepare};
use crate::problem::GatewayError;
use crate::router::Params;
use crate::telemetry::{RouteMetrics, TraceContext};
use crate::template::RenderContext;

/// A compiled `forward` route.
#[derive(Debug)]
pub struct ForwardRoute {
    /// Where requests go.
    pub upstream: Arc<Upstream>,
    /// The matched `path_prefix`, replaced by `rewrite_prefix`.
    pub prefix: Option<String>,
    /// `rewrite_prefix`.
    pub rewrite: Option<String>,
    /// Overall timeout.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Fault injection.
    pub fault: Option<Fault>,
}

/// Facts about the client side of a request.
pub struct Downstream<'a> {
    /// Client IP address, as the value appended to `x-forwarded-for`.
    pub peer_ip: &'a HeaderValue,
    /// `x-request-id` sent upstream and echoed.
    pub request_id: &'a HeaderValue,
    /// Trace context to continue.
    pub trace: &'a TraceContext,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Path parameters (for the hash key template).
    pub params: &'a Params,
    /// `server.max_body`.
    pub max_body: u64,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Forwards one request along the route's stack (see the module doc for the order).
pub async fn forward(
    route: &ForwardRoute,
    metrics: &RouteMetrics,
    req: Request<Incoming>,
    ds: Downstream<'_>,
) -> Result<Response<Body>, GatewayError> {
    // 1. Fault injection.
    if let Some(fault) = &route.fault {
        let injection = fault.roll();
        if let Some(delay) = injection.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = injection.abort {
            return Err(GatewayError::FaultAbort(status));
        }
    }
    let mut req = req;
    let upgrade = upgrade::requested(req.headers()).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let upstream = &route.upstream;
    let hash = match &upstream.hash_key {
        Some(t) => {
            let cx = RenderContext::new(&parts.method, &parts.headers, ds.params, parts.uri.query(), "");
            Some(hash_key(&t.render(&cx).map_err(|m| GatewayError::BadRequest(format!("missing {m}")))?))
        }
        None => None,
    };
    // 2. Body: replayable when small.
    let body = prepare(body, ds.max_body, false).await.map_err(|e| match e {
        ReadBodyError::TooLarge(limit) => GatewayError::PayloadTooLarge { limit },
        ReadBodyError::Broken(_) => GatewayError::BodyRead,
    })?;
    let path = rewrite_path(&parts.uri, route.prefix.as_deref(), route.rewrite.as_deref());
    let idempotent = is_idempotent(&parts.method, &parts.headers);
    prepare_headers(&mut parts.headers, &ds);
    let mut client_upgrade = upgrade.map(|(protocol, on)| {
        upgrade::restore(&mut parts.headers, protocol);
        on
    });
    route.retry.deposit();

    // 3. Overall timeout around every attempt.
    let attempts = async {
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut retries = 0;
        loop {
            // 4. Shed, balance, send.
            let mut guard = upstream.admit().ok_or(GatewayError::Overloaded)?;
            let endpoint = match upstream.pick(&tried, hash) {
                Pick::Endpoint(e) => e,
                Pick::AllUnavailable => return Err(GatewayError::NoHealthyEndpoint),
                Pick::NoEndpoints => return Err(GatewayError::UpstreamUnreachable),
            };
            guard.assign(endpoint.clone());
            let out_body = body.attempt().ok_or(GatewayError::UpstreamUnreachable)?;
            // HTTP/1.1 connections take the origin form; the HTTP/2 client needs the absolute form.
            let uri = if upstream.is_h2() {
                let mut u = http::uri::Parts::default();
                u.scheme = Some(Scheme::HTTP);
                u.authority = Some(endpoint.authority.clone());
                u.path_and_query = Some(path.clone());
                Uri::from_parts(u).expect("scheme, authority and path make a URI")
            } else {
                Uri::from(path.clone())
            };
            let mut req = Request::new(out_body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = if retries < route.retry.max_retries {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            req.headers_mut().insert(header::HOST, endpoint.host_header.clone());
            let sent = upstream.send(&endpoint, req);
            let result = match route.retry.per_try_timeout {
                Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            let (outcome, response) = match result {
                Ok(Ok(res)) => (Outcome::Status(res.0.status()), Some(res)),
                Ok(Err(e)) if e.is_connect() => (Outcome::ConnectFailure, None),
                Ok(Err(e)) if is_too_large(&e) => {
                    return Err(GatewayError::PayloadTooLarge { limit: ds.max_body });
                }
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.url, error = %e, "attempt failed");
                    (Outcome::Reset, None)
                }
                Err(()) => (Outcome::Timeout, None),
            };

            // 5. Outcome → outlier ejection and metrics, then the retry decision.
            record(upstream, &endpoint, outcome);
            let retry =
                route.retry.may_retry(outcome, retries, idempotent, body.replayable()) && route.retry.withdraw();
            if !retry {
                // 6. The last upstream response is passed through.
                return match (outcome, response) {
                    (_, Some((res, conn))) => Ok(respond(res, conn, guard, ds.request_id, client_upgrade.take())),
                    (Outcome::Timeout, None) => Err(GatewayError::Timeout),
                    (_, None) => Err(GatewayError::UpstreamUnreachable),
                };
            }
            drop(response);
            drop(guard);
            retries += 1;
            metrics.retries.inc();
            tried.push(endpoint);
            tokio::time::sleep(route.retry.backoff(retries)).await;
        }
    };
    match tokio::time::timeout(route.timeout, attempts).await {
        Ok(result) => result,
        Err(_) => Err(GatewayError::Timeout),
    }
}

/// Feeds one attempt's outcome to outlier detection and the attempt counters.
fn record(upstream: &Upstream, endpoint: &Endpoint, outcome: Outcome) {
    let m = &upstream.metrics;
    match outcome {
        Outcome::Status(s) if s.is_server_error() => m.status_5xx.inc(),
        Outcome::Status(_) => m.success.inc(),
        Outcome::ConnectFailure => m.connect_failure.inc(),
        Outcome::Reset => m.reset.inc(),
        Outcome::Timeout => m.timeout.inc(),
    };
    if outcome.is_failure() {
        if upstream.outlier.on_failure(endpoint, &upstream.endpoints()) {
            m.ejections.inc();
            tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.url, "endpoint ejected after consecutive failures");
        }
    } else {
        upstream.outlier.on_success(endpoint);
    }
}

/// Replaces the matched prefix with `rewrite_prefix`, keeping the rest of the path and the query.
fn rewrite_path(uri: &Uri, prefix: Option<&str>, rewrite: Option<&str>) -> PathAndQuery {
    let original = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let (Some(prefix), Some(rewrite)) = (prefix, rewrite) else {
        return original;
    };
    let path = uri.path();
    let rest = if prefix == "/" { path } else { path.get(prefix.len()..).unwrap_or("") };
    let mut out = String::with_capacity(rewrite.len() + rest.len() + 16);
    out.push_str(rewrite.trim_end_matches('/'));
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::try_from(out).unwrap_or(original)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `te` is hop-by-hop too, except `te: trailers`, which gRPC needs.
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

fn prepare_headers(headers: &mut HeaderMap, ds: &Downstream<'_>) {
    strip_hop_by_hop(headers);
    let host = headers.remove(header::HOST);
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {}", ds.peer_ip.to_str().unwrap_or_default())).ok(),
        None => Some(ds.peer_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(ds.scheme));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    headers.insert(X_REQUEST_ID.clone(), ds.request_id.clone());
    headers.insert(TRACEPARENT.clone(), ds.trace.traceparent());
}

fn respond(
    mut res: Response<Incoming>,
    conn: Option<super::pool::Reusable>,
    guard: super::upstream::InFlight,
    request_id: &HeaderValue,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let guard = match client_upgrade {
        Some(on) => upgrade::splice(on, &mut res, guard),
        None => Some(guard),
    };
    let (mut parts, inner) = res.into_parts();
    match guard {
        Some(guard) => {
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
            // An empty body is finished already: the connection can serve the next request now.
            let conn = match conn {
                Some(c) if inner.is_end_stream() => {
                    c.release();
                    None
                }
                other => other,
            };
            Response::from_parts(parts, Body::Upstream { inner, guard, conn })
        }
        // 101: the upgrade headers stay, the connection now belongs to the splice task.
        None => {
            parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
            Response::from_parts(parts, Body::Empty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_prefix_and_keeps_the_query() {
        let uri: Uri = "/api/orders/7?x=1".parse().unwrap();
        assert_eq!(rewrite_path(&uri, Some("/api/orders"), Some("/orders")).as_str(), "/orders/7?x=1");
        assert_eq!(rewrite_path(&uri, Some("/api"), Some("/")).as_str(), "/orders/7?x=1");
        let exact: Uri = "/api/orders".parse().unwrap();
        assert_eq!(rewrite_path(&exact, Some("/api/orders"), Some("/")).as_str(), "/");
        assert_eq!(rewrite_path(&exact, Some("/"), Some("/v2")).as_str(), "/v2/api/orders");
        assert_eq!(rewrite_path(&uri, None, None).as_str(), "/api/orders/7?x=1");
    }

    #[test]
    fn removes_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-end-to-end", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none() && h.get("x-secret-hop").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-end-to-end"], "1");
    }
}

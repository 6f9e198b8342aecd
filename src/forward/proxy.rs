//! The action of a `forward` route: HTTP proxying on top of `upstream::call`, read top to bottom:
//!
//! 1. fault injection (delay, then abort),
//! 2. the hash key for `balance = "hash"` (it may read the body, which the stack has already read),
//! 3. the path is rewritten and the headers adapted (hop-by-hop removed, `x-forwarded-*`, `x-request-id`),
//! 4. `upstream::call` sends it with every resilience policy (timeouts, shedding, balancing, retries, ejection),
//! 5. the upstream's response is passed through, streamed, with hop-by-hop headers removed; a `101` to an
//!    upgrade request splices the two connections (WebSocket).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, Entry, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::Body as _;
use prometheus_client::metrics::counter::Counter;

use super::fault::Fault;
use super::upgrade;
use crate::body::{Body, Prepared};
use crate::problem::GatewayError;
use crate::request::{Facts, X_FORWARDED_FOR, render};
use crate::telemetry::Tracer;
use crate::upstream::{
    Answer, Call, Forwarded, RetryPolicy, Upstream, call, hash_key, is_idempotent, strip_hop_by_hop,
};

/// A compiled `forward` route.
#[derive(Debug)]
pub struct ForwardRoute {
    /// Route name (for `{route}` in the hash key).
    pub name: Arc<str>,
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
    /// Makes the CLIENT spans of the attempts.
    pub tracer: Tracer,
    /// `sluice_retries_total{route}`.
    pub retries: Counter,
    /// The upstream's header lines may be passed on as bytes (`upstream::Lines`) to plain HTTP/1.1 requests: no
    /// layer of the route rewrites an answer's headers (CORS does; see `stack::layers`).
    pub keep_lines: bool,
}

/// Forwards one request (see the module doc for the order).
///
/// Not an `async fn` (see `upstream::Pool::send`): the request is kept once in the future, not twice.
#[allow(clippy::manual_async_fn)] // on purpose: see `Pool::send`
pub fn forward(
    route: Arc<ForwardRoute>,
    mut req: Request<Prepared>,
) -> impl Future<Output = Result<Response<Body>, GatewayError>> + Send {
    async move {
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
        // 2. Hash key.
        let hash = match &route.upstream.hash_key {
            Some(t) => Some(hash_key(&render(t, &req, &route.name)?)),
            None => None,
        };
        // 3. Path and headers.
        // hyper gives only a request it could upgrade an `OnUpgrade` (HTTP/1.1 with `Upgrade`, or CONNECT): other
        // requests skip the header lookups.
        let upgrade = match req.extensions().get::<hyper::upgrade::OnUpgrade>() {
            Some(_) => upgrade::requested(req.headers()).map(|protocol| (protocol, hyper::upgrade::on(&mut req))),
            None => None,
        };
        let path = rewrite_path(req.uri(), route.prefix.as_deref(), route.rewrite.as_deref());
        let idempotent = is_idempotent(req.method(), req.headers());
        let (mut parts, body) = req.into_parts();
        let facts = parts.extensions.get::<Facts>().expect("the server inserts Facts");
        let trace = facts.trace.clone();
        let forwarded = prepare_headers(&mut parts.headers, facts);
        // Most answers to plain HTTP/1.1 requests are written by the fast lane, which takes the lines as bytes; those
        // to TLS and HTTP/2 requests go to hyper's server, which would put them back into the map.
        let plain_http1 = facts.scheme == "http" && parts.version == http::Version::HTTP_11;
        let client_upgrade = upgrade.map(|(protocol, on)| {
            upgrade::restore(&mut parts.headers, protocol);
            on
        });
        // 4. The resilient call.
        let answer = call(
            &route.upstream,
            Call {
                method: parts.method,
                path,
                headers: parts.headers,
                forwarded: Some(forwarded),
                body: &body,
                idempotent,
                hash,
                retry: &route.retry,
                timeout: route.timeout,
                trace: &trace,
                tracer: &route.tracer,
                retries: &route.retries,
                keep_lines: route.keep_lines && plain_http1,
            },
        )
        .await?;
        // 5. The response, passed through.
        Ok(respond(answer, client_upgrade))
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

/// Strips the hop-by-hop headers and makes the `x-forwarded-*` lines (each attempt adds them, see `Added`).
///
/// The client's `host` stays in the map: each attempt's own `host` replaces it. The lines are looked through once
/// rather than looked up by name (a lookup hashes the name: a `remove` and an `entry` were ~1.8% of a forwarded
/// request's instructions, for the few lines a request has).
fn prepare_headers(headers: &mut HeaderMap, facts: &Facts) -> Forwarded {
    strip_hop_by_hop(headers);
    let (mut host, mut client_chain) = (None, false);
    for (name, value) in headers.iter() {
        if name == header::HOST {
            host.get_or_insert_with(|| value.clone());
        } else if name == X_FORWARDED_FOR {
            client_chain = true;
        }
    }
    if !client_chain {
        return Forwarded { forwarded_for: Some(facts.peer_ip.clone()), proto: facts.scheme, host };
    }
    // Every line the client sent is kept (joined), then the peer is appended.
    let forwarded_for = match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(_) => Some(facts.peer_ip.clone()),
        Entry::Occupied(mut e) => {
            let prior: Vec<&str> = e.iter().filter_map(|v| v.to_str().ok()).collect();
            let joined = format!("{}, {}", prior.join(", "), facts.peer_ip.to_str().unwrap_or_default());
            if let Ok(v) = HeaderValue::try_from(joined) {
                e.insert(v);
            }
            None
        }
    };
    Forwarded { forwarded_for, proto: facts.scheme, host }
}

/// The upstream's response as the client's (the observe layer sets `x-request-id` on it).
fn respond(answer: Answer, client_upgrade: Option<hyper::upgrade::OnUpgrade>) -> Response<Body> {
    let Answer { response: mut res, conn, guard } = answer;
    let guard = match client_upgrade {
        Some(on) => upgrade::splice(on, &mut res, guard),
        None => Some(guard),
    };
    let (mut parts, inner) = res.into_parts();
    // The client talks to the gateway, not to the upstream: an HTTP/1.0 upstream's answer must not turn the client's
    // HTTP/1.1 connection into a 1.0 one (status line, and no keep-alive).
    parts.version = http::Version::HTTP_11;
    match guard {
        Some(guard) => {
            strip_hop_by_hop(&mut parts.headers);
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
        None => Response::from_parts(parts, Body::Empty),
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

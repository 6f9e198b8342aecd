//! One request sent to an upstream with every resilience policy, in this order, read top to bottom:
//!
//! 1. the overall `timeout` bounds every attempt and backoff (one deadline, checked by each attempt: a wire
//!    connection's timer moved to it, see `wire::Conn`; wrapping the whole loop in a timer of its own would also
//!    move its large future twice more per request);
//! 2. each attempt: load shedding (`max_concurrent`) → balancer (skipping ejected, unhealthy and already tried
//!    endpoints) → a CLIENT span whose context goes out as `traceparent` → `per_try_timeout` → the pooled client;
//! 3. the outcome feeds outlier ejection and the attempt metrics, then the retry policy (class, idempotency,
//!    replayability, budget) decides whether to go round again after a jittered backoff.
//!
//! The last upstream response is returned whatever its status; [`CallError`] says why there is none.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use opentelemetry::trace::SpanKind;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::added::{Added, Forwarded};
use super::balance::Pick;
use super::endpoint::Endpoint;
use super::error::CallError;
use super::group::{InFlight, Upstream};
use super::pool::{AnswerBody, Reusable, SendError};
use super::retry::{Outcome, RetryPolicy};
use crate::body::{OutBody, Prepared, is_too_large};
use crate::telemetry::{Span, TraceContext, Tracer};

/// One request to send.
pub struct Call<'a> {
    /// Method.
    pub method: Method,
    /// Origin-form path and query.
    pub path: PathAndQuery,
    /// Headers to send (each attempt adds `host` and `traceparent`, see [`Added`]).
    pub headers: HeaderMap,
    /// A forwarded request's `x-forwarded-*` lines, added to each attempt.
    pub forwarded: Option<Forwarded>,
    /// The body; each attempt takes its copy from it.
    pub body: &'a Prepared,
    /// Whether the request may be sent again after it may have reached the upstream.
    pub idempotent: bool,
    /// Hash of the `hash_key` for `balance = "hash"`.
    pub hash: Option<u64>,
    /// Retry classes, budget and backoff.
    pub retry: &'a RetryPolicy,
    /// Covers every attempt, until the response headers arrive.
    pub timeout: Duration,
    /// Parent of the attempts' CLIENT spans.
    pub trace: &'a TraceContext,
    /// Makes the CLIENT spans.
    pub tracer: &'a Tracer,
    /// Counts each retry sent (`sluice_retries_total` of the route or subscription).
    pub retries: &'a Counter,
    /// The answer's header lines may stay bytes, out of its map (`upstream::Lines`): for a forwarded answer that no
    /// layer reads or rewrites headers of, and that the server puts into the map when hyper's server sends it.
    pub keep_lines: bool,
}

/// The upstream's response to the last attempt.
#[derive(Debug)]
pub struct Answer {
    /// Status, headers and the streaming body.
    pub response: Response<AnswerBody>,
    /// hyper's HTTP/1.1 connection, to give back to its pool once the body was read to the end (the wire client's
    /// connections go back by themselves).
    pub conn: Option<Reusable>,
    /// Keeps the request counted against `max_concurrent` until dropped.
    pub guard: InFlight,
}

/// Sends `call` to `upstream` (see the module doc for the order of the policies).
///
/// Not an `async fn` (see `Pool::send`): `call` is kept once in the future, not twice.
#[allow(clippy::manual_async_fn)] // on purpose: see `Pool::send`
pub fn call<'a>(
    upstream: &'a Upstream,
    mut call: Call<'a>,
) -> impl Future<Output = Result<Answer, CallError>> + Send + 'a {
    async move {
        let now = crate::clock::now();
        let deadline = after(now, call.timeout);
        call.retry.deposit();
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut retries = 0;
        let may_resend = call.retry.may_resend(call.idempotent);
        loop {
            let mut guard = upstream.admit().ok_or(CallError::Overloaded)?;
            let endpoint = match upstream.pick(&tried, call.hash) {
                Pick::Endpoint(e) => e,
                Pick::AllUnavailable => return Err(CallError::NoHealthyEndpoint),
                Pick::NoEndpoints => return Err(CallError::Unreachable),
            };
            guard.assign(endpoint.clone());
            let body = call.body.attempt().ok_or(CallError::Unreachable)?;
            // The first attempt starts at the clock reading the deadline was taken from (the span's start, without
            // reading the clock again); a retry, after its backoff, now.
            let started = if retries == 0 { now } else { Instant::now() };
            let mut span = client_span(&call, upstream, &endpoint, retries, started);
            // Headers are copied only for an attempt that may be followed by a resend of a request that was sent;
            // otherwise they are moved, and a connect failure hands them back (the HTTP/2 client cannot).
            let copy = retries < call.retry.max_retries && (may_resend || upstream.is_h2());
            let added =
                Added { host: &endpoint.host_header, trace: Some(&span.cx), forwarded: call.forwarded.as_ref() };
            let limit = match call.retry.per_try_timeout {
                Some(t) => deadline.min(after(started, t)),
                None => deadline,
            };
            // The attempt's deadline goes with the request: the wire connection's timer keeps it (see `wire::Conn`),
            // hyper's paths have a timer of their own (`pool::within`). The request is made by a function, not filled
            // in through `&mut` borrows of a local here: a borrowed local keeps its room in this future across the
            // `.await`, though it was moved into the send.
            let headers = if copy { call.headers.clone() } else { std::mem::take(&mut call.headers) };
            let req = request(&call.method, upstream.uri(&endpoint, &call.path), headers, body);
            let result = upstream.send(&endpoint, req, added, limit, call.keep_lines).await;
            if matches!(result, Err(SendError::Timeout)) && limit == deadline {
                return Err(CallError::Timeout);
            }
            let (outcome, response) = match result {
                Ok(res) => (Outcome::Status(res.0.status()), Some(res)),
                Err(SendError::Timeout) => (Outcome::Timeout, None),
                Err(mut e) if e.is_connect() => {
                    if e.is_tls() {
                        // Nothing was sent; the client gets 502 (or another endpoint's answer). Only the log says why.
                        tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.url, error = %e, "upstream TLS handshake failed");
                    } else {
                        tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.url, error = %e, "connect failed");
                    }
                    if let Some(unsent) = e.take_unsent() {
                        call.headers = unsent.into_parts().0.headers;
                    }
                    (Outcome::ConnectFailure, None)
                }
                Err(e) if is_too_large(&e) => return Err(CallError::BodyTooLarge { limit: call.body.limit() }),
                Err(e) => {
                    tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.url, error = %e, "attempt failed");
                    (Outcome::Reset, None)
                }
            };
            record(upstream, &endpoint, outcome, &mut span);
            drop(span);
            let retry = call.retry.may_retry(outcome, retries, call.idempotent, call.body.replayable())
                && call.retry.withdraw();
            if !retry {
                return match (outcome, response) {
                    (_, Some((response, conn))) => Ok(Answer { response, conn, guard }),
                    (Outcome::Timeout, None) => Err(CallError::Timeout),
                    (_, None) => Err(CallError::Unreachable),
                };
            }
            drop(response);
            drop(guard);
            retries += 1;
            call.retries.inc();
            tried.push(endpoint);
            let backoff = after(Instant::now(), call.retry.backoff(retries));
            tokio::time::sleep_until(backoff.min(deadline)).await;
            if backoff >= deadline {
                return Err(CallError::Timeout);
            }
        }
    }
}

/// One attempt's request.
fn request(method: &Method, uri: http::Uri, headers: HeaderMap, body: OutBody) -> Request<OutBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// `d` after `now`, or a century after it for a `d` past what an `Instant` holds (a config may say "100000000y").
pub(super) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// The CLIENT span of one attempt (OpenTelemetry HTTP client conventions).
fn client_span(call: &Call<'_>, upstream: &Upstream, endpoint: &Endpoint, retries: u32, start: Instant) -> Span {
    call.tracer.child(call.trace, SpanKind::Client, Some(start), &[call.method.as_str()], |a| {
        a.str("http.request.method", call.method.as_str());
        a.fixed(&endpoint.span_attributes);
        a.str("url.path", call.path.path());
        a.str("sluice.upstream", &upstream.label);
        if retries > 0 {
            a.int("http.request.resend_count", i64::from(retries));
        }
    })
}

/// Feeds one attempt's outcome to outlier detection, the attempt counters and the attempt's span.
fn record(upstream: &Upstream, endpoint: &Endpoint, outcome: Outcome, span: &mut Span) {
    let m = &upstream.metrics;
    let label = match outcome {
        Outcome::Status(s) if s.is_server_error() => {
            m.status_5xx.inc();
            "5xx"
        }
        Outcome::Status(_) => {
            m.success.inc();
            "success"
        }
        Outcome::ConnectFailure => {
            m.connect_failure.inc();
            "connect_failure"
        }
        Outcome::Reset => {
            m.reset.inc();
            "reset"
        }
        Outcome::Timeout => {
            m.timeout.inc();
            "timeout"
        }
    };
    span.set_str("sluice.outcome", label);
    match outcome {
        Outcome::Status(s) => span.set_int("http.response.status_code", i64::from(s.as_u16())),
        _ => span.set_str("error.type", label),
    }
    if outcome.is_failure() {
        span.error(label);
        if upstream.outlier.on_failure(endpoint, &upstream.endpoints()) {
            m.ejections.inc();
            tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.url, last = label, "endpoint ejected after consecutive failures");
        }
    } else {
        upstream.outlier.on_success(endpoint);
    }
}

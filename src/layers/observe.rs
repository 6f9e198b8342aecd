//! What every request gets and leaves behind: its `x-request-id` (the client's when sane, else a new UUID; sent
//! upstream and echoed on the response), a SERVER span (continuing the client's `traceparent`), the in-flight
//! gauges, `sluice_requests_total` / `sluice_request_duration_seconds`, and one access-log line with the trace
//! and span ids. Errors from the layers below become `application/problem+json` here, where the route name and
//! the request id are known.
//!
//! The request id is handled here rather than with tower-http's `SetRequestId`/`PropagateRequestId` pair: that
//! pair looks the header up three times and stores the id in the request's extensions, which measurably cost
//! every request (bench/README.md); here it is one lookup, and the value is kept for the log and the response.
//!
//! The work before the call is done in `call`, the work after it when the inner future completes: no inner
//! service is cloned and no future is boxed, since every request of every route passes here.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{self, Entry, HeaderMap};
use http::{HeaderValue, Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::Body;
use crate::clock;
use crate::problem::GatewayError;
use crate::request::{Facts, X_REQUEST_ID};
use crate::telemetry::{Attributes, FixedAttributes, RouteMetrics, Span, Tracer};

/// One route's observation settings and metric handles.
#[derive(Debug)]
pub struct Observe {
    /// Route name; `None` for requests no route takes.
    pub route: Option<Arc<str>>,
    /// The route's path pattern (`http.route`).
    pub http_route: Option<Arc<str>>,
    /// The upstream or broker the route talks to (access log).
    pub backend: String,
    /// The route's metric handles.
    pub metrics: RouteMetrics,
    /// `sluice_requests_in_flight`.
    pub in_flight: Gauge,
    /// Makes the SERVER span.
    pub tracer: Tracer,
    /// Whether to write the access log line.
    pub access_log: bool,
    /// What the route's SERVER spans share (see [`RouteSpans::new`]).
    pub spans: RouteSpans,
}

/// What every SERVER span of a route shares, made when the config is compiled: its `sluice.route` and
/// `http.route` attributes, encoded, and its name, `METHOD pattern`, for each standard method.
#[derive(Debug, Default)]
pub struct RouteSpans {
    attributes: FixedAttributes,
    /// Indexed by [`standard`]; empty for requests no route takes (named by their method).
    names: Vec<String>,
}

/// The methods whose span names a route makes up front.
const STANDARD: [Method; 7] =
    [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD, Method::OPTIONS];

/// `method`'s index in [`STANDARD`].
fn standard(method: &Method) -> Option<usize> {
    STANDARD.iter().position(|m| m == method)
}

impl RouteSpans {
    /// For the route `route` whose path pattern is `http_route`.
    pub fn new(route: &str, http_route: Option<&str>) -> RouteSpans {
        let attributes = FixedAttributes::default().str("sluice.route", route);
        let attributes = match http_route {
            Some(pattern) => attributes.str("http.route", pattern),
            None => attributes,
        };
        let pattern = http_route.unwrap_or("");
        let names = STANDARD.iter().map(|m| format!("{m} {pattern}")).collect();
        RouteSpans { attributes, names }
    }
}

/// Observes a route's requests.
#[derive(Clone, Debug)]
pub struct ObserveLayer(pub Arc<Observe>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { observe: self.0.clone(), inner }
    }
}

/// An observed service.
#[derive(Clone, Debug)]
pub struct Observed<S> {
    observe: Arc<Observe>,
    inner: S,
}

impl<S, B> Service<Request<B>> for Observed<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Errors of the inner service are answers too; its readiness errors cannot happen (every layer below is
        // always ready), but would be answered as a 500 by the call.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let o = &self.observe;
        let start = clock::now();
        let request_id = request_id(req.headers_mut());
        // `METHOD pattern` (made up front for the standard methods); a request no route takes is named by its
        // method.
        let method = req.method().as_str();
        let name: &[&str] = match (&o.route, standard(req.method()).and_then(|i| o.spans.names.get(i))) {
            (Some(_), Some(name)) => &[name],
            (Some(_), None) => &[method, " ", o.http_route.as_deref().unwrap_or("")],
            (None, _) => &[method],
        };
        let span = o.tracer.server(req.headers(), start, name, |a| server_attributes(o, &req, a));
        if let Some(facts) = req.extensions_mut().get_mut::<Facts>() {
            facts.trace = span.cx.clone();
        }
        let (method, uri) = if o.access_log { (req.method().clone(), req.uri().clone()) } else { Default::default() };
        let seen = Seen { observe: InFlight::new(o), start, span, request_id, method, uri };
        ObservedFuture { inner: self.inner.call(req), seen: Some(Box::new(seen)) }
    }
}

pin_project! {
    /// The future of an observed request: the inner answer, then the bookkeeping.
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        // Boxed: the answer's future is moved into the connection's slot; a small one moves cheaply.
        seen: Option<Box<Seen>>,
    }
}

/// What is known about a request before its answer.
struct Seen {
    observe: InFlight,
    start: Instant,
    span: Span,
    request_id: HeaderValue,
    /// Kept for the access log only (empty when it is off).
    method: Method,
    uri: Uri,
}

impl<F> Future for ObservedFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let seen = this.seen.take().expect("an observed future is not polled after it completed");
        Poll::Ready(Ok(seen.finish(result)))
    }
}

impl Seen {
    fn finish(self: Box<Self>, result: Result<Response<Body>, GatewayError>) -> Response<Body> {
        let Seen { observe: in_flight, start, mut span, request_id, method, uri } = *self;
        let o = &in_flight.0;
        let route = o.route.as_deref();
        let id = request_id.to_str().unwrap_or("");
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::warn!(route = route.unwrap_or(""), request_id = id, error = %e, "gateway error");
                }
                span.set_str("error.type", e.status().as_str());
                e.into_response(route, id)
            }
        };
        response.headers_mut().insert(X_REQUEST_ID.clone(), request_id.clone());
        let status = response.status().as_u16();
        span.set_int("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.error(format!("answered {status}"));
        }
        let now = clock::now();
        span.end_at(now);
        let elapsed = now.saturating_duration_since(start);
        o.metrics.observe(status, elapsed);
        if o.access_log {
            tracing::info!(
                target: "access",
                route = route.unwrap_or(""),
                method = %method,
                path = %uri.path(),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                backend = %o.backend,
                request_id = id,
                trace_id = %span.cx.trace_id_hex(),
                span_id = %span.cx.span_id_hex(),
            );
        }
        response
    }
}

/// The client's `x-request-id` when it is sane (1 to 200 visible ASCII bytes), else a new UUID put in its place.
fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(e) if sane(e.get()) => e.get().clone(),
        Entry::Occupied(mut e) => {
            let id = new_request_id();
            e.insert(id.clone());
            id
        }
        Entry::Vacant(e) => e.insert(new_request_id()).clone(),
    }
}

fn sane(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= 200 && v.to_str().is_ok()
}

/// A random UUID (v4), formatted without allocating a `String` first, in bytes that are shared from the start: the
/// value goes on the request and on the response, and the first clone of bytes copied from a slice would allocate
/// their shared form then.
fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf)).expect("a UUID is a header value")
}

/// The SERVER span's attributes (HTTP server semantic conventions), set only when the span records, encoded from
/// the request's own text.
fn server_attributes<B>(o: &Observe, req: &Request<B>, a: &mut Attributes<'_>) {
    let text = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    a.str("http.request.method", req.method().as_str());
    a.str("url.path", req.uri().path());
    if let Some(facts) = req.extensions().get::<Facts>() {
        a.str("url.scheme", facts.scheme);
        if let Ok(ip) = facts.peer_ip.to_str() {
            a.str("client.address", ip);
        }
    }
    if let Some(host) = text(header::HOST).or_else(|| req.uri().host()) {
        a.str("server.address", without_port(host));
    }
    if let Some(agent) = text(header::USER_AGENT) {
        a.str("user_agent.original", agent);
    }
    a.fixed(&o.spans.attributes);
}

/// `host` without a trailing `:port` (1 to 5 digits, at most 65535): `example.com:8080` → `example.com`,
/// `[::1]:80` → `[::1]`; `[::1]` stays as it is. A scan from the end, without the search and parse machinery of
/// `rsplit_once` and `str::parse` (this runs on every traced request).
fn without_port(host: &str) -> &str {
    let b = host.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let colon = b.len() - digits;
    let port = b[colon..].iter().fold(0u32, |p, d| p.saturating_mul(10).saturating_add(u32::from(d - b'0')));
    if (1..=5).contains(&digits) && colon > 0 && b[colon - 1] == b':' && port <= 65535 {
        &host[..colon - 1]
    } else {
        host
    }
}

/// Counts a request in the in-flight gauges (all routes, and its route) until dropped, also when the client goes
/// away mid-request.
struct InFlight(Arc<Observe>);

impl InFlight {
    fn new(observe: &Arc<Observe>) -> InFlight {
        observe.in_flight.inc();
        observe.metrics.in_flight.inc();
        InFlight(observe.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
        self.0.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_span_names_are_made_for_the_standard_methods() {
        let spans = RouteSpans::new("orders", Some("/orders/{id}"));
        assert_eq!(spans.names.len(), STANDARD.len());
        assert_eq!(spans.names[standard(&Method::POST).unwrap()], "POST /orders/{id}");
        assert_eq!(standard(&Method::from_bytes(b"PURGE").unwrap()), None);
        assert_eq!(standard(&Method::TRACE), None);
    }

    #[test]
    fn a_host_loses_its_port_only() {
        for (host, address) in [
            ("example.com:8080", "example.com"),
            ("example.com", "example.com"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]:443", "[::1]"),
            ("[::1]", "[::1]"),
            ("example.com:", "example.com:"),
            ("example.com:65536", "example.com:65536"),
            ("example.com:123456", "example.com:123456"),
            ("8080", "8080"),
            (":1", ""),
        ] {
            assert_eq!(without_port(host), address, "{host}");
        }
    }
}

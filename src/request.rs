//! Facts about the client request that every layer and action reads: who sent it, what the router captured,
//! and the context of its SERVER span. The server puts them in the request's extensions before the route's
//! stack runs; the trace layer fills in the span context. The auth layer adds the [`Claims`] of a verified JWT.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};

use crate::body::Prepared;
use crate::problem::GatewayError;
use crate::router::Params;
use crate::telemetry::TraceContext;
use crate::template::{Missing, RenderContext, Template};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `x-forwarded-for`: the client chain (read for trusted proxies, appended to when forwarding).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`, set on forwarded requests.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`, set on forwarded requests.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What the gateway knows about one request beyond its method, URI, headers and body.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The client's IP address, as the value appended to `x-forwarded-for`.
    pub peer_ip: HeaderValue,
    /// `{client_ip}`: the peer's address, or the client a trusted proxy names (`server.trusted_proxies`).
    pub client_ip: HeaderValue,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Path parameters captured by the route.
    pub params: Params,
    /// The SERVER span's context: the parent of every span the action makes (set by the trace layer).
    pub trace: TraceContext,
    /// For requests no route takes: the answer (404, or 405 with `Allow`).
    pub unmatched: Option<GatewayError>,
}

impl Facts {
    /// Facts for a request from `peer_ip`, over `scheme`, with the route's `params`.
    pub fn new(peer_ip: HeaderValue, scheme: &'static str, params: Params) -> Facts {
        let client_ip = peer_ip.clone();
        Facts { peer_ip, client_ip, scheme, params, trace: TraceContext::default(), unmatched: None }
    }
}

/// The claims of the request's verified JWT, put into its extensions by the auth layer (routes with JWT auth
/// only) and read by every later template (`{jwt.CLAIM}`).
#[derive(Clone, Debug)]
pub struct Claims(pub Arc<serde_json::Map<String, serde_json::Value>>);

/// The facts of `req` (the server always inserts them; a test that forgot gets a clear panic, turned into 500).
pub fn facts<B>(req: &Request<B>) -> &Facts {
    req.extensions().get::<Facts>().expect("the server inserts Facts into every request")
}

/// The `x-request-id` of `req` (set by the request-id layer, so always present past it).
pub fn request_id<B>(req: &Request<B>) -> &str {
    req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Renders `template` against `req`: headers, path parameters, query, the body when it was buffered, and the
/// verified JWT claims when the route has JWT auth.
pub fn render(template: &Template, req: &Request<Prepared>, route: &str) -> Result<String, GatewayError> {
    let cx = context(req, route);
    template.render(&cx).map_err(|m: Missing| m.into())
}

/// The render context of `req` for templates of `route`.
pub fn context<'a>(req: &'a Request<Prepared>, route: &'a str) -> RenderContext<'a> {
    let facts = facts(req);
    let mut cx = RenderContext::new(req.method(), req.headers(), &facts.params, req.uri().query(), route)
        .with_client_ip(facts.client_ip.to_str().unwrap_or_default());
    if let Some(Claims(claims)) = req.extensions().get::<Claims>() {
        cx = cx.with_claims(claims);
    }
    match req.body().bytes() {
        Some(body) if !body.is_empty() => cx.with_body(body),
        _ => cx,
    }
}

//! Facts about the client request that every layer and action reads: who sent it, what the router captured,
//! and the context of its SERVER span. The server puts them in the request's extensions before the route's
//! stack runs; the trace layer fills in the span context.

use http::{HeaderValue, Request};

use crate::body::Prepared;
use crate::problem::GatewayError;
use crate::router::Params;
use crate::telemetry::TraceContext;
use crate::template::{Missing, RenderContext, Template};

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

/// The facts of `req` (the server always inserts them; a test that forgot gets a clear panic, turned into 500).
pub fn facts<B>(req: &Request<B>) -> &Facts {
    req.extensions().get::<Facts>().expect("the server inserts Facts into every request")
}

/// The `x-request-id` of `req` (set by the request-id layer, so always present past it).
pub fn request_id<B>(req: &Request<B>) -> &str {
    req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Renders `template` against `req`: headers, path parameters, query, and the body when it was buffered.
pub fn render(template: &Template, req: &Request<Prepared>, route: &str) -> Result<String, GatewayError> {
    let cx = context(req, route);
    template.render(&cx).map_err(|m: Missing| m.into())
}

/// The render context of `req` for templates of `route`.
pub fn context<'a>(req: &'a Request<Prepared>, route: &'a str) -> RenderContext<'a> {
    let facts = facts(req);
    let cx = RenderContext::new(req.method(), req.headers(), &facts.params, req.uri().query(), route)
        .with_client_ip(facts.client_ip.to_str().unwrap_or_default());
    match req.body().bytes() {
        Some(body) if !body.is_empty() => cx.with_body(body),
        _ => cx,
    }
}

//! Every route's request path, in one place, one line a layer, outermost first. Built once per config load;
//! a route pays only for the layers it configures (an absent policy is `Identity`: no code runs for it).
//!
//! request id → SERVER span, metrics, access log → (panics → 500) → body read → verify → auth → cors →
//! rate limit → idempotency → action (`forward` | `publish`)

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::action::{Action, Unmatched};
use crate::body::Body;
use crate::layers::{CatchPanicLayer, NewRequestId, ObserveLayer, ReadBodyLayer};
use crate::policy::{GuardLayer, IdempotencyLayer};

/// A route's compiled stack: the client's request in, the response out (errors are already responses).
pub type RouteService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// What one route's stack is made of.
#[derive(Debug)]
pub struct Layers {
    /// SERVER span, metrics and access log of the route.
    pub observe: ObserveLayer,
    /// Body limit and whether the whole body is needed in memory.
    pub read_body: ReadBodyLayer,
    /// Webhook signature verification (security issue: not configurable yet).
    pub verify: Option<GuardLayer>,
    /// API keys or JWT bearer tokens (`auth`); a verified token's claims go into the request's extensions.
    pub auth: Option<GuardLayer>,
    /// CORS; preflight requests are answered here and go no further.
    pub cors: Option<CorsLayer>,
    /// Token buckets (`rate_limit`).
    pub rate_limit: Option<GuardLayer>,
    /// `Idempotency-Key` replay and conflicts (publish routes).
    pub idempotency: Option<IdempotencyLayer>,
    /// What the route does.
    pub action: Action,
}

/// Builds a route's stack.
pub fn route(l: Layers) -> RouteService {
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(NewRequestId)) // x-request-id: the client's, else a new UUID
        .layer(PropagateRequestIdLayer::x_request_id()) //        echoed on every response
        .layer(l.observe) //                                       SERVER span, metrics, access log; errors → problem+json
        .layer(CatchPanicLayer) //                                 a panic below is a 500, the process serves on
        .layer(l.read_body) //                                     body read once: verify and templates see the same bytes
        .option_layer(l.verify) //                                 webhook signatures over the raw body
        .option_layer(l.auth) //                                   API keys, JWT
        .option_layer(l.cors) //                                   CORS; preflights answered here
        .option_layer(l.rate_limit) //                             429 before any work is done
        .option_layer(l.idempotency) //                            replay or 409 before publishing twice
        .service(l.action); //                                     forward | publish
    BoxCloneSyncService::new(stack)
}

/// The stack of requests no route takes: the same request id, span, metrics and log, then 404 or 405.
pub fn unmatched(observe: ObserveLayer) -> RouteService {
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(observe)
        .service(Unmatched);
    BoxCloneSyncService::new(stack)
}

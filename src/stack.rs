//! Every route's request path, in one place, one line a layer, outermost first. Built once per config load;
//! a route pays only for the layers it configures (an absent policy is `Identity`: no code runs for it).
//!
//! request id + SERVER span, metrics, access log → (panics → 500) → body read → verify → auth → cors →
//! rate limit → idempotency → action (`forward` | `publish`)

use tower::ServiceBuilder;
use tower::util::Either;
use tower_http::cors::{Cors, CorsLayer};

use crate::action::Action;
use crate::layers::catch_panic::CatchPanic;
use crate::layers::observe::Observed;
use crate::layers::read_body::ReadBody;
use crate::layers::{CatchPanicLayer, ObserveLayer, ReadBodyLayer};
use crate::policy::guard::Guarded;
use crate::policy::idempotency::Idempotent;
use crate::policy::rate_limit::SharedLimited;
use crate::policy::{GuardLayer, IdempotencyLayer, SharedRateLimitLayer};

/// A route's compiled stack: the client's request in, the response out (errors are already responses). Every
/// route has this one type (an absent policy is the `Either` branch without it), so a request clones and calls
/// it with no boxing and no dynamic dispatch. Spelled out from the innermost layer:
pub type RouteService = Observed<CatchPanic<ReadBody<Verified>>>;
type Verified = Either<Guarded<Authenticated>, Authenticated>;
type Authenticated = Either<Guarded<CrossOrigin>, CrossOrigin>;
type CrossOrigin = Either<Cors<Limited>, Limited>;
type Limited = Either<Guarded<SharedLimits>, SharedLimits>;
type SharedLimits = Either<SharedLimited<OnceOnly>, OnceOnly>;
type OnceOnly = Either<Idempotent<Action>, Action>;

/// What one route's stack is made of.
#[derive(Debug)]
pub struct Layers {
    /// SERVER span, metrics and access log of the route.
    pub observe: ObserveLayer,
    /// Body limit and whether the whole body is needed in memory.
    pub read_body: ReadBodyLayer,
    /// Webhook signature verification (`verify`) over the raw body.
    pub verify: Option<GuardLayer>,
    /// API keys or JWT bearer tokens (`auth`); a verified token's claims go into the request's extensions.
    pub auth: Option<GuardLayer>,
    /// CORS; preflight requests are answered here and go no further.
    pub cors: Option<CorsLayer>,
    /// Token buckets (`rate_limit`) in this process.
    pub rate_limit: Option<GuardLayer>,
    /// Token buckets (`rate_limit`) shared by every replica (`[store] kind = "redis"`).
    pub shared_rate_limit: Option<SharedRateLimitLayer>,
    /// `Idempotency-Key` replay and conflicts (publish routes).
    pub idempotency: Option<IdempotencyLayer>,
    /// What the route does.
    pub action: Action,
}

/// Builds a route's stack.
pub fn route(l: Layers) -> RouteService {
    ServiceBuilder::new()
        .layer(l.observe) //                                       x-request-id, SERVER span, metrics, access log; errors → problem+json
        .layer(CatchPanicLayer) //                                 a panic below is a 500, the process serves on
        .layer(l.read_body) //                                     body read once: verify and templates see the same bytes
        .option_layer(l.verify) //                                 webhook signatures over the raw body
        .option_layer(l.auth) //                                   API keys, JWT
        // CORS is the one layer that rewrites a forwarded answer's headers: a route with it has the upstream's lines
        // in the map (`ForwardRoute::keep_lines`); a layer added here that reads or rewrites them must do the same.
        .option_layer(l.cors) //                                   CORS; preflights answered here
        .option_layer(l.rate_limit) //                             429 before any work is done
        .option_layer(l.shared_rate_limit) //                      the same, buckets in Redis
        .option_layer(l.idempotency) //                            replay or 409 before publishing twice
        .service(l.action) //                                      forward | publish
}

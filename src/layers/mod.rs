//! The gateway's own tower layers that every route's stack uses (the policies live in `policy/`):
//!
//! - [`observe`]: the SERVER span, in-flight gauges, request metrics and the access log; errors become
//!   problem+json here, the one place that knows the route name and the request id.
//! - [`catch_panic`]: a panic below becomes a 500 instead of a dropped connection.
//! - [`read_body`]: the request body, read once before any policy.

pub mod catch_panic;
pub mod observe;
pub mod read_body;

pub use catch_panic::CatchPanicLayer;
pub use observe::{Observe, ObserveLayer, RouteSpans};
pub use read_body::ReadBodyLayer;

//! Calling an upstream with resilience: endpoints and their pools, balancing, outlier ejection, active health
//! checks, retries with a budget, timeouts and `max_concurrent`. No server types: the HTTP forwarder and
//! queue→HTTP subscriptions both use [`call`].
//!
//! - [`group`]: [`Upstream`], a named group of endpoints (DNS re-resolution, admission, sending).
//! - [`call`]: one request sent with every resilience policy, in one readable order.
//! - [`added`]: the lines each attempt adds to the request's headers (`host`, `traceparent`, `x-forwarded-*`).
//! - [`endpoint`], [`connect`] (plain or TLS), [`pool`] (with the [`wire`] HTTP/1.1 client, the answers'
//!   [`names`] and their [`lines`] kept as bytes), [`balance`], [`outlier`], [`health`], [`retry`]: one concern
//!   each.
//! - [`error`]: [`CallError`], with whether trying again later may help.

mod added;
mod balance;
pub mod call;
mod connect;
mod endpoint;
pub mod error;
mod group;
mod headers;
mod health;
mod lines;
pub(crate) mod names;
mod outlier;
mod pool;
mod retry;
mod wire;

pub use added::{Added, Forwarded};
pub use balance::{Pick, hash_key};
pub use call::{Answer, Call, call};
pub use connect::{ConnectError, Connector};
pub use endpoint::{Endpoint, EndpointUrl, authority_host};
pub use error::CallError;
pub use group::{InFlight, Upstream};
pub use headers::strip_hop_by_hop;
pub use lines::{Lines, PassedLines, into_map};
pub use outlier::OutlierDetector;
pub use pool::{AnswerBody, Reusable, SendError};
pub use retry::{Outcome, RetryOn, RetryPolicy, is_idempotent};
pub(crate) use wire::decimal;

//! Synchronous forwarding: upstream pools, balancing, outlier ejection, retries with a budget, fault injection
//! and rate limiting. `proxy.rs` holds the order of these layers; each concern lives in its own file.

mod balance;
mod endpoint;
mod fault;
mod outlier;
mod pool;
mod proxy;
mod ratelimit;
mod retry;
mod upgrade;
mod upstream;

pub use balance::{Pick, hash_key};
pub use endpoint::{Endpoint, EndpointUrl};
pub use fault::Fault;
pub use outlier::OutlierDetector;
pub use pool::{Reusable, SendError};
pub use proxy::{Downstream, ForwardRoute, forward};
pub use ratelimit::RateLimiter;
pub use retry::{Outcome, RetryOn, RetryPolicy, is_idempotent};
pub use upstream::{InFlight, Upstream};

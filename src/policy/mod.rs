//! Route policies, one file a layer; `stack.rs` puts them in their fixed order.
//!
//! - [`guard`]: [`Guard`], a check that may answer instead of the action, and its layer. Verify (webhook
//!   signatures), auth (API keys, JWT) and the rate limit are guards.
//! - [`auth`]: API keys and JWT bearer tokens; a verified token's claims feed `{jwt.CLAIM}` templates.
//! - [`cors`]: `cors = {…}` as tower-http's `CorsLayer`.
//! - [`rate_limit`]: keyed token buckets.
//! - [`idempotency`]: `Idempotency-Key` replay and in-flight conflicts (publish routes).
//! - [`verified`]: bearer tokens a route verified recently (auth's cache).
//! - [`verify`]: inbound webhook signatures (`github`, `stripe`, `standard`, `hmac`) over the raw body.

pub mod auth;
pub mod cors;
pub mod guard;
pub mod idempotency;
pub mod rate_limit;
pub mod verified;
pub mod verify;

pub use auth::{Auth, AuthError};
pub use guard::{Guard, GuardLayer};
pub use idempotency::{IdempotencyLayer, IdempotencyStore, Keys};
pub use rate_limit::{RateLimit, RateLimiter, SharedRateLimit, SharedRateLimitLayer};
pub use verify::Verify;

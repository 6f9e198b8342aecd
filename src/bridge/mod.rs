//! Bridges between HTTP and the brokers that are more than a publish: request-reply over a queue (sync over async).
//! Queue → HTTP subscriptions will live here too.

pub mod request_reply;

pub use request_reply::{RequestReplyRoute, request_reply};

//! Bridges between HTTP and the brokers that are more than a publish: request-reply over a queue (sync over async),
//! and queue → HTTP subscriptions.

pub mod rebalance;
pub mod request_reply;
pub mod subscribe;

pub use request_reply::{RequestReplyRoute, request_reply};
pub use subscribe::{DeadLetter, Subscription, Wiring};

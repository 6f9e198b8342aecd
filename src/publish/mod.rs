//! Publishing HTTP requests as durable messages on Kafka (rdkafka) and RabbitMQ (lapin).
//!
//! - [`message`]: what is published ([`Message`], [`Destination`]), how it is acknowledged ([`Ack`]) and what
//!   the broker confirmed ([`Receipt`]).
//! - [`error`]: [`PublishError`]; `problem.rs` maps it to HTTP.
//! - [`publisher`]: the [`Producer`] trait and the [`Publisher`] handle per configured broker; [`kafka`] and
//!   [`amqp`] implement it.
//! - [`encoder`]: request → message (metadata, CloudEvents).
//! - [`destination`]: checks of the rendered topic or routing key (Kafka's rules, length, allow-lists).
//! - [`outage`]: one log line when a broker goes down, one when it is back.
//! - [`route`]: the action of a publish route.
//! - [`api`]: drop-in produce APIs (Strimzi Kafka Bridge, Confluent REST v3, Dapr) on a publish route.
//! - [`sqs`]: the SQS producer (aws-sdk-sqs).
//! - [`spool`]: the durable spool in front of a broker while it is unreachable.

pub mod amqp;
pub mod api;
pub mod backlog;
pub mod destination;
pub mod encoder;
pub mod error;
pub mod kafka;
pub mod kafka_replies;
pub mod message;
pub mod outage;
pub mod publisher;
pub mod reply;
pub mod route;
pub mod spool;
pub mod sqs;
pub mod sqs_replies;

pub use error::PublishError;
pub use message::{Ack, Destination, Message, Receipt};
pub use publisher::{Producer, Publisher};
pub use route::{PublishRoute, publish};

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("name", &self.name()).field("kind", &self.kind()).finish()
    }
}

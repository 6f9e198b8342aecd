//! Publishing HTTP requests as durable messages on Kafka (rdkafka) and RabbitMQ (lapin).
//!
//! - [`message`]: what is published ([`Message`], [`Destination`]), how it is acknowledged ([`Ack`]) and what
//!   the broker confirmed ([`Receipt`]).
//! - [`error`]: [`PublishError`], with the HTTP status each kind becomes.
//! - [`publisher`]: [`Publisher`], the handle per configured broker; [`kafka`] and [`amqp`] implement it.
//! - [`encoder`]: request → message (metadata, CloudEvents).
//! - [`idempotency`]: `Idempotency-Key` replay and conflict detection.
//! - [`route`]: a compiled publish route and its request path.

pub mod amqp;
pub mod encoder;
pub mod error;
pub mod idempotency;
pub mod kafka;
pub mod message;
pub mod publisher;
pub mod route;

pub use error::PublishError;
pub use message::{Ack, Destination, Message, Receipt};
pub use publisher::Publisher;
pub use route::{PublishRoute, publish};

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("name", &self.name()).field("kind", &self.kind()).finish()
    }
}

//! The [`Publisher`] handle the gateway holds per configured broker: one type over Kafka and AMQP.

use std::collections::BTreeMap;
use std::time::Duration;

use super::amqp::AmqpPublisher;
use super::error::PublishError;
use super::kafka::KafkaPublisher;
use super::message::{Ack, Message, Receipt};

/// A connected (or reconnecting) producer for one configured broker.
///
/// Cheap to clone; all clones share one connection. Safe to call from many tasks at once: sends are
/// never serialized behind each other.
#[derive(Clone)]
pub struct Publisher {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Kafka(KafkaPublisher),
    Amqp(AmqpPublisher),
}

impl Publisher {
    /// A Kafka producer (`acks=all`, idempotent, `message.timeout.ms = delivery_timeout`, short
    /// `linger.ms`); `options` are passed to librdkafka as-is and win over these defaults.
    ///
    /// Succeeds while the broker is down: librdkafka connects and reconnects in the background.
    /// Fails only on options librdkafka rejects ([`PublishError::Config`]).
    pub async fn connect_kafka(
        name: &str,
        bootstrap: &str,
        delivery_timeout: Duration,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, PublishError> {
        let publisher = KafkaPublisher::connect(name, bootstrap, delivery_timeout, options).await?;
        Ok(Self { kind: Kind::Kafka(publisher) })
    }

    /// A RabbitMQ publisher: one connection, confirm-mode channels, `mandatory` publishes.
    ///
    /// Succeeds while the broker is down: a background task connects, and reconnects with backoff
    /// (100ms up to 5s) whenever the connection is lost. Fails only on an invalid URL
    /// ([`PublishError::Config`]).
    pub async fn connect_amqp(name: &str, url: &str, confirm_timeout: Duration) -> Result<Self, PublishError> {
        let publisher = AmqpPublisher::connect(name, url, confirm_timeout).await?;
        Ok(Self { kind: Kind::Amqp(publisher) })
    }

    /// Publish one message.
    ///
    /// With [`Ack::Confirm`], `Ok` means the broker took responsibility for it: a Kafka delivery
    /// report ([`Receipt::Kafka`] with partition and offset) or an AMQP publisher confirm for a
    /// routed message ([`Receipt::Amqp`]). With [`Ack::None`], `Ok(Receipt::Unconfirmed)` means the
    /// client library has it (at-most-once). Errors: [`PublishError::Unavailable`] (503, nothing
    /// stored), [`PublishError::Unroutable`] / [`PublishError::Rejected`] (502),
    /// [`PublishError::Config`] (a destination of the other kind).
    pub async fn publish(&self, msg: Message, ack: Ack) -> Result<Receipt, PublishError> {
        match &self.kind {
            Kind::Kafka(p) => p.publish(msg, ack).await,
            Kind::Amqp(p) => p.publish(msg, ack).await,
        }
    }

    /// True while the broker is reachable; for `/readyz` and `sluice_broker_up`.
    #[must_use]
    pub fn is_up(&self) -> bool {
        match &self.kind {
            Kind::Kafka(p) => p.is_up(),
            Kind::Amqp(p) => p.is_up(),
        }
    }

    /// On shutdown: wait up to `timeout` for messages still in flight to be confirmed.
    pub async fn flush(&self, timeout: Duration) {
        match &self.kind {
            Kind::Kafka(p) => p.flush(timeout).await,
            Kind::Amqp(p) => p.flush(timeout).await,
        }
    }

    /// The broker's name from the config.
    #[must_use]
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::Kafka(p) => p.name(),
            Kind::Amqp(p) => p.name(),
        }
    }

    /// `"kafka"` or `"amqp"`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match &self.kind {
            Kind::Kafka(_) => "kafka",
            Kind::Amqp(_) => "amqp",
        }
    }
}

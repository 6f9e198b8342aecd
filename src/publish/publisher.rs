//! The [`Producer`] trait every broker client implements, and the [`Publisher`] handle the gateway holds per
//! configured broker. A spool (or any other wrapper) is a `Producer` around another one.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::amqp::AmqpPublisher;
use super::backlog::BacklogSource;
use super::error::PublishError;
use super::kafka::KafkaPublisher;
use super::message::{Ack, Message, Receipt};
use super::reply::{Replies, Waiter};
use super::spool::Spool;
use super::sqs::SqsPublisher;
use crate::boxed::in_place;

/// A boxed future of a producer.
pub type ProducerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connected (or reconnecting) client of one broker.
pub trait Producer: Send + Sync + 'static {
    /// Publishes one message; see [`Publisher::publish`] for what `Ok` promises.
    fn publish(&self, msg: Message, ack: Ack) -> ProducerFuture<'_, Result<Receipt, PublishError>>;
    /// Publishes `msgs` confirmed, each destination receiving them in this order (a spool's replay). Stops at the
    /// first failure: the results are those of the messages tried, in order.
    fn publish_ordered(&self, msgs: Vec<Message>) -> ProducerFuture<'_, Vec<Result<Receipt, PublishError>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(msgs.len());
            for msg in msgs {
                let result = self.publish(msg, Ack::Confirm).await;
                let failed = result.is_err();
                results.push(result);
                if failed {
                    break;
                }
            }
            results
        })
    }
    /// True while the broker is reachable.
    fn is_up(&self) -> bool;
    /// Waits up to `timeout` for messages still in flight to be confirmed.
    fn flush(&self, timeout: Duration) -> ProducerFuture<'_, ()>;
    /// The broker's name from the config.
    fn name(&self) -> &str;
    /// `"kafka"` or `"amqp"`.
    fn kind(&self) -> &'static str;
    /// Sends a request whose reply comes back through the broker (on `reply_topic` for Kafka); see
    /// [`Publisher::request`]. Brokers without request-reply refuse it.
    fn request<'a>(&'a self, msg: Message, reply_topic: &'a str) -> ProducerFuture<'a, Result<Waiter, PublishError>> {
        let _ = (msg, reply_topic);
        let why = format!("{} broker {:?} does not do request-reply", self.kind(), self.name());
        Box::pin(std::future::ready(Err(PublishError::config(why, None))))
    }
    /// The requests waiting for replies, for brokers that do request-reply.
    fn replies(&self) -> Option<&Arc<Replies>> {
        None
    }
    /// Starts consuming the replies that come back on `reply_topic` (Kafka; a no-op elsewhere).
    fn listen(&self, reply_topic: &str) {
        let _ = reply_topic;
    }
    /// Measures a route's backlog (`publish.max_backlog`); brokers that cannot measure `source` refuse.
    fn backlog<'a>(&'a self, source: &'a BacklogSource) -> ProducerFuture<'a, Result<u64, PublishError>> {
        let why = format!("{} broker {:?} cannot measure {source:?}", self.kind(), self.name());
        Box::pin(std::future::ready(Err(PublishError::config(why, None))))
    }
    /// The RabbitMQ client underneath, for consuming (subscriptions).
    fn as_amqp(&self) -> Option<&AmqpPublisher> {
        None
    }
    /// The Kafka client underneath, for consuming (subscriptions).
    fn as_kafka(&self) -> Option<&KafkaPublisher> {
        None
    }
    /// The SQS client underneath, for receiving (subscriptions).
    fn as_sqs(&self) -> Option<&SqsPublisher> {
        None
    }
    /// Whether replies on `reply_topic` are being consumed (always, where replies need no topic).
    fn listening(&self, reply_topic: &str) -> bool {
        let _ = reply_topic;
        true
    }
    /// The spool in front of the broker, if it has one.
    fn spool(&self) -> Option<&Arc<Spool>> {
        None
    }
}

/// The handle to one configured broker's [`Producer`].
///
/// Cheap to clone; all clones share one connection. Safe to call from many tasks at once: sends are
/// never serialized behind each other.
#[derive(Clone)]
pub struct Publisher(Arc<dyn Producer>);

impl Publisher {
    /// Wraps any producer.
    pub fn new(producer: impl Producer) -> Publisher {
        Publisher(Arc::new(producer))
    }

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
        Ok(Publisher::new(KafkaPublisher::connect(name, bootstrap, delivery_timeout, options).await?))
    }

    /// A RabbitMQ publisher: one connection, confirm-mode channels, `mandatory` publishes.
    ///
    /// Succeeds while the broker is down: a background task connects, and reconnects with backoff
    /// (100ms up to 5s) whenever the connection is lost. Fails only on an invalid URL
    /// ([`PublishError::Config`]).
    pub async fn connect_amqp(
        name: &str,
        url: &str,
        confirm_timeout: Duration,
        ca_file: Option<std::path::PathBuf>,
    ) -> Result<Self, PublishError> {
        Ok(Publisher::new(AmqpPublisher::connect(name, url, confirm_timeout, ca_file).await?))
    }

    /// An SQS client for `endpoint` (or AWS's for `region`); succeeds while SQS is unreachable.
    pub fn connect_sqs(name: &str, endpoint: Option<&str>, region: &str) -> Result<Self, PublishError> {
        Ok(Publisher::new(SqsPublisher::connect(name, endpoint, region)?))
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
        self.0.publish(msg, ack).await
    }

    /// Publishes `msgs` confirmed and in order (see [`Producer::publish_ordered`]).
    pub async fn publish_ordered(&self, msgs: Vec<Message>) -> Vec<Result<Receipt, PublishError>> {
        self.0.publish_ordered(msgs).await
    }

    /// The spool in front of the broker, if it has one.
    #[must_use]
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.0.spool()
    }

    /// Sends a request (confirmed, like [`Ack::Confirm`]) with a correlation id (its `sluice-id`) and a reply
    /// address, and returns what waits for the reply: the caller chooses how long. Errors as for `publish`.
    /// `reply_topic`: where a Kafka responder sends the reply (AMQP replies use direct reply-to; it is ignored).
    pub async fn request(&self, msg: Message, reply_topic: &str) -> Result<Waiter, PublishError> {
        self.0.request(msg, reply_topic).await
    }

    /// Starts consuming replies on `reply_topic` (Kafka request-reply routes; nothing for AMQP).
    pub fn listen(&self, reply_topic: &str) {
        self.0.listen(reply_topic);
    }

    /// The backlog of `source` now: a RabbitMQ queue's ready messages, or a Kafka group's lag on a topic.
    pub async fn backlog(&self, source: &BacklogSource) -> Result<u64, PublishError> {
        self.0.backlog(source).await
    }

    /// Whether `self` and `other` are the same producer (the same connection).
    #[must_use]
    pub fn same(&self, other: &Publisher) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The RabbitMQ client underneath, when the broker is RabbitMQ (subscriptions consume through it).
    #[must_use]
    pub fn as_amqp(&self) -> Option<&AmqpPublisher> {
        self.0.as_amqp()
    }

    /// The Kafka client underneath, when the broker is Kafka (subscriptions consume through it).
    #[must_use]
    pub fn as_kafka(&self) -> Option<&KafkaPublisher> {
        self.0.as_kafka()
    }

    /// The SQS client underneath, when the broker is SQS (subscriptions receive through it).
    #[must_use]
    pub fn as_sqs(&self) -> Option<&SqsPublisher> {
        self.0.as_sqs()
    }

    /// Whether replies on `reply_topic` are consumed yet (for `/readyz?verbose`).
    #[must_use]
    pub fn listening(&self, reply_topic: &str) -> bool {
        self.0.listening(reply_topic)
    }

    /// The requests waiting for replies (`None` for brokers without request-reply).
    #[must_use]
    pub fn replies(&self) -> Option<&Arc<Replies>> {
        self.0.replies()
    }

    /// True while the broker is reachable; for `/readyz` and `sluice_broker_up`.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.0.is_up()
    }

    /// On shutdown: wait up to `timeout` for messages still in flight to be confirmed.
    pub async fn flush(&self, timeout: Duration) {
        self.0.flush(timeout).await;
    }

    /// The broker's name from the config.
    #[must_use]
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// `"kafka"` or `"amqp"`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }
}

impl Producer for KafkaPublisher {
    fn publish(&self, msg: Message, ack: Ack) -> ProducerFuture<'_, Result<Receipt, PublishError>> {
        in_place(|| KafkaPublisher::publish(self, msg, ack))
    }
    fn publish_ordered(&self, msgs: Vec<Message>) -> ProducerFuture<'_, Vec<Result<Receipt, PublishError>>> {
        Box::pin(KafkaPublisher::publish_ordered(self, msgs))
    }
    fn is_up(&self) -> bool {
        KafkaPublisher::is_up(self)
    }
    fn flush(&self, timeout: Duration) -> ProducerFuture<'_, ()> {
        Box::pin(KafkaPublisher::flush(self, timeout))
    }
    fn name(&self) -> &str {
        KafkaPublisher::name(self)
    }
    fn kind(&self) -> &'static str {
        "kafka"
    }
    fn request<'a>(&'a self, msg: Message, reply_topic: &'a str) -> ProducerFuture<'a, Result<Waiter, PublishError>> {
        Box::pin(KafkaPublisher::request(self, msg, reply_topic))
    }
    fn replies(&self) -> Option<&Arc<Replies>> {
        Some(KafkaPublisher::replies(self))
    }
    fn listen(&self, reply_topic: &str) {
        KafkaPublisher::listen(self, reply_topic);
    }
    fn listening(&self, reply_topic: &str) -> bool {
        KafkaPublisher::listening(self, reply_topic)
    }
    fn as_kafka(&self) -> Option<&KafkaPublisher> {
        Some(self)
    }
    fn backlog<'a>(&'a self, source: &'a BacklogSource) -> ProducerFuture<'a, Result<u64, PublishError>> {
        match source {
            BacklogSource::Group { group, topic } => Box::pin(KafkaPublisher::group_lag(self, group, topic)),
            BacklogSource::Queue(_) => {
                Box::pin(std::future::ready(Err(PublishError::config("a kafka broker has no queues", None))))
            }
        }
    }
}

impl Producer for SqsPublisher {
    fn publish(&self, msg: Message, ack: Ack) -> ProducerFuture<'_, Result<Receipt, PublishError>> {
        in_place(|| SqsPublisher::publish(self, msg, ack))
    }
    fn is_up(&self) -> bool {
        SqsPublisher::is_up(self)
    }
    fn flush(&self, timeout: Duration) -> ProducerFuture<'_, ()> {
        // Nothing is ever in flight after `SendMessage` answered: only the reply queues go.
        Box::pin(SqsPublisher::flush(self, timeout))
    }
    fn name(&self) -> &str {
        SqsPublisher::name(self)
    }
    fn request<'a>(&'a self, msg: Message, reply_queue: &'a str) -> ProducerFuture<'a, Result<Waiter, PublishError>> {
        Box::pin(SqsPublisher::request(self, msg, reply_queue))
    }
    fn replies(&self) -> Option<&Arc<Replies>> {
        Some(SqsPublisher::replies(self))
    }
    fn listen(&self, reply_queue: &str) {
        SqsPublisher::listen(self, reply_queue);
    }
    fn listening(&self, reply_queue: &str) -> bool {
        SqsPublisher::listening(self, reply_queue)
    }
    fn kind(&self) -> &'static str {
        "sqs"
    }
    fn as_sqs(&self) -> Option<&SqsPublisher> {
        Some(self)
    }
}

impl Producer for AmqpPublisher {
    fn publish(&self, msg: Message, ack: Ack) -> ProducerFuture<'_, Result<Receipt, PublishError>> {
        in_place(|| AmqpPublisher::publish(self, msg, ack))
    }
    fn is_up(&self) -> bool {
        AmqpPublisher::is_up(self)
    }
    fn flush(&self, timeout: Duration) -> ProducerFuture<'_, ()> {
        Box::pin(AmqpPublisher::flush(self, timeout))
    }
    fn name(&self) -> &str {
        AmqpPublisher::name(self)
    }
    fn kind(&self) -> &'static str {
        "amqp"
    }
    fn request<'a>(&'a self, msg: Message, _reply_topic: &'a str) -> ProducerFuture<'a, Result<Waiter, PublishError>> {
        Box::pin(AmqpPublisher::request(self, msg))
    }
    fn as_amqp(&self) -> Option<&AmqpPublisher> {
        Some(self)
    }
    fn publish_ordered(&self, msgs: Vec<Message>) -> ProducerFuture<'_, Vec<Result<Receipt, PublishError>>> {
        Box::pin(AmqpPublisher::publish_ordered(self, msgs))
    }
    fn backlog<'a>(&'a self, source: &'a BacklogSource) -> ProducerFuture<'a, Result<u64, PublishError>> {
        match source {
            BacklogSource::Queue(queue) => Box::pin(AmqpPublisher::queue_depth(self, queue)),
            BacklogSource::Group { .. } => {
                Box::pin(std::future::ready(Err(PublishError::config("an amqp broker has no consumer groups", None))))
            }
        }
    }
    fn replies(&self) -> Option<&Arc<Replies>> {
        Some(AmqpPublisher::replies(self))
    }
}

//! Kafka publishing with rdkafka's `FutureProducer`: idempotent, `acks=all`, many sends in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::error::PublishError;
use super::kafka_replies::{CORRELATION_HEADER, REPLY_TO_HEADER, ReplyListener};
use super::message::{Ack, Destination, Message, Receipt};
use super::outage::Outage;
use super::reply::{Replies, Waiter};

/// Each partition's lag in `committed` (a consumer group's committed offsets): its high watermark minus the committed
/// offset, or minus its low watermark where the group committed none; never negative. Blocking (one watermark
/// request per partition).
pub fn partition_lags<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    committed: &TopicPartitionList,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    let mut lags = Vec::with_capacity(committed.count());
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lags.push((e.partition(), (high - from).max(0)));
    }
    Ok(lags)
}

/// librdkafka properties of producers only, left out of the reply consumers' settings.
const PRODUCER_ONLY: [&str; 8] = [
    "acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "batch.size",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// How long a send waits for room when librdkafka's local queue is full (back-pressure) before the
/// publish fails as unavailable. Capped by the delivery timeout.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(500);
/// Pause between two enqueue attempts while the local queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(5);
/// Longest wait for topic metadata (capped by the delivery timeout).
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unknown topic is remembered, so a flood of requests for it costs one lookup.
const UNKNOWN_TOPIC_TTL: Duration = Duration::from_secs(1);
/// Topic metadata lookups running at once (each holds a blocking thread).
const METADATA_CONCURRENCY: usize = 4;
/// Extra time given to librdkafka beyond `message.timeout.ms` before a delivery report is given up.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// A Kafka producer shared by every route that publishes to one broker.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    /// Broker name from the config, for logs.
    name: String,
    producer: FutureProducer<SluiceContext>,
    /// Broker connectivity, shared with the client context.
    up: Arc<AtomicBool>,
    /// The effective `message.timeout.ms` (after user options).
    delivery_timeout: Duration,
    topics: TopicCache,
    /// Settings for the reply consumers: the broker's address and the user's options (security included).
    consumer_config: ClientConfig,
    /// Requests waiting for their replies.
    replies: Arc<Replies>,
    /// One consumer per reply topic.
    listeners: Mutex<HashMap<String, Arc<ReplyListener>>>,
    /// One offsets reader per consumer group whose lag a route bounds.
    lag_probes: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl KafkaPublisher {
    /// Create the producer. librdkafka connects in the background and reconnects by itself, so this
    /// succeeds while the broker is down; it fails only on invalid options.
    pub async fn connect(
        name: &str,
        bootstrap: &str,
        delivery_timeout: Duration,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, PublishError> {
        let mut consumer_config = ClientConfig::new();
        consumer_config
            .set("bootstrap.servers", bootstrap)
            .set("client.id", format!("sluice-{name}-replies"))
            // Assigned partitions only: the group is never joined and nothing is committed.
            .set("group.id", format!("sluice-replies-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.auto.commit", "false");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("client.id", format!("sluice-{name}"))
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            // Batch concurrent sends without adding noticeable latency.
            .set("linger.ms", "2")
            // Come back quickly after an outage (librdkafka's default backs off up to 10s).
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "2000")
            // Broker states for `is_up` (see `SluiceContext::stats`).
            .set("statistics.interval.ms", "1000");
        let delivery_timeout = effective_delivery_timeout(options, delivery_timeout);
        config.set("message.timeout.ms", delivery_timeout.as_millis().to_string());
        for (key, value) in options {
            if key != "delivery.timeout.ms" {
                config.set(key, value);
            }
            if !PRODUCER_ONLY.contains(&key.as_str()) {
                consumer_config.set(key, value);
            }
        }
        let up = Arc::new(AtomicBool::new(false));
        let context = SluiceContext { name: name.to_owned(), up: up.clone(), outage: Outage::new(name, "kafka") };
        let producer: FutureProducer<SluiceContext> = config.create_with_context(context).map_err(|e| {
            // librdkafka's message repeats the value it refused: mask secret ones (and drop the source).
            let mut message = e.to_string();
            for (_, value) in options.iter().filter(|(k, v)| crate::redact::is_secret_option(k) && !v.is_empty()) {
                message = message.replace(value.as_str(), crate::redact::MASK);
            }
            PublishError::config(format!("kafka broker {name:?}: {message}"), None)
        })?;
        let publisher = Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                producer,
                up,
                delivery_timeout,
                topics: TopicCache::default(),
                consumer_config,
                replies: Arc::new(Replies::default()),
                listeners: Mutex::new(HashMap::new()),
                lag_probes: Mutex::new(HashMap::new()),
            }),
        };
        // Learn early whether the broker answers, so readiness does not wait for the first stats.
        let probe = publisher.clone();
        tokio::spawn(async move {
            let producer = probe.inner.producer.clone();
            let answered = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, Duration::from_secs(2)).is_ok()
            })
            .await
            .unwrap_or(false);
            if answered {
                probe.inner.up.store(true, Ordering::Relaxed);
            }
        });
        Ok(publisher)
    }

    /// Publish one record; see [`crate::publish::Publisher::publish`].
    pub async fn publish(&self, msg: Message, ack: Ack) -> Result<Receipt, PublishError> {
        let delivery = self.enqueue_message(&msg).await?;
        match ack {
            Ack::None => {
                // At-most-once: answer now, only log what the delivery report says later.
                let inner = self.inner.clone();
                let id = msg.id;
                tokio::spawn(async move {
                    if let Err(e) = inner.await_delivery(delivery).await {
                        tracing::warn!(broker = %inner.name, sluice_id = %id, error = %e, "unconfirmed kafka publish failed");
                    }
                });
                Ok(Receipt::Unconfirmed)
            }
            Ack::Confirm => self.inner.await_delivery(delivery).await,
        }
    }

    /// Publishes records in order (a spool's replay): each is handed to librdkafka before the next, so the
    /// idempotent producer keeps their order within a partition; then every delivery report is awaited.
    pub async fn publish_ordered(&self, msgs: Vec<Message>) -> Vec<Result<Receipt, PublishError>> {
        let mut deliveries = Vec::with_capacity(msgs.len());
        for msg in &msgs {
            match self.enqueue_message(msg).await {
                Ok(delivery) => deliveries.push(delivery),
                Err(e) => {
                    let mut results: Vec<_> =
                        futures_util::future::join_all(deliveries.into_iter().map(|d| self.inner.await_delivery(d)))
                            .await;
                    results.push(Err(e));
                    return results;
                }
            }
        }
        futures_util::future::join_all(deliveries.into_iter().map(|d| self.inner.await_delivery(d))).await
    }

    /// Checks the topic and hands the record to librdkafka.
    async fn enqueue_message(&self, msg: &Message) -> Result<DeliveryFuture, PublishError> {
        let Destination::Kafka { topic, key, partition } = &msg.destination else {
            return Err(PublishError::config(
                format!("kafka broker {:?} got an AMQP destination", self.inner.name),
                None,
            ));
        };
        self.check_topic(topic).await?;

        let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len() + 1);
        if let Some(content_type) = &msg.content_type
            && !msg.headers.iter().any(|(k, _)| k == "content-type")
        {
            headers = headers.insert(Header { key: "content-type", value: Some(content_type.as_bytes()) });
        }
        for (k, v) in &msg.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut record = FutureRecord::to(topic).payload(msg.body.as_ref()).headers(headers);
        if let Some(key) = key {
            record = record.key(key.as_ref());
        }
        if let Some(partition) = partition {
            record = record.partition(*partition);
        }

        self.enqueue(record).await
    }

    /// Starts (once) the consumer of `reply_topic` that request-reply routes sending there wait on.
    pub fn listen(&self, reply_topic: &str) {
        let mut listeners = self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if !listeners.contains_key(reply_topic) {
            let listener = ReplyListener::start(
                &self.inner.name,
                reply_topic,
                self.inner.consumer_config.clone(),
                self.inner.replies.clone(),
            );
            listeners.insert(reply_topic.to_owned(), Arc::new(listener));
        }
    }

    /// Sends a request (confirmed) with the headers `sluice-correlation-id` (its `sluice-id`) and `sluice-reply-to`
    /// (`reply_topic`), and returns what waits for the reply; see [`crate::publish::Publisher::request`]. `503` until
    /// the reply topic's consumer is in place ([`Self::listen`]).
    pub async fn request(&self, mut msg: Message, reply_topic: &str) -> Result<Waiter, PublishError> {
        if !self.listening(reply_topic) {
            return Err(PublishError::unavailable(format!("not consuming the reply topic {reply_topic:?} yet"), None));
        }
        msg.headers.push((CORRELATION_HEADER.into(), msg.id.clone()));
        msg.headers.push((REPLY_TO_HEADER.into(), reply_topic.to_owned()));
        let waiter = self.inner.replies.wait(&msg.id);
        self.publish(msg, Ack::Confirm).await?;
        Ok(waiter)
    }

    /// The requests of this broker waiting for replies.
    #[must_use]
    pub fn replies(&self) -> &Arc<Replies> {
        &self.inner.replies
    }

    /// The records of `topic` consumer group `group` has not committed: per partition, the high watermark minus the
    /// group's committed offset (minus the low watermark where it committed none). One consumer per group, made on
    /// the first sample and kept (it never joins the group, only reads its offsets).
    pub async fn group_lag(&self, group: &str, topic: &str) -> Result<u64, PublishError> {
        let consumer = {
            let mut probes = self.inner.lag_probes.lock().unwrap_or_else(|e| e.into_inner());
            match probes.get(group) {
                Some(c) => c.clone(),
                None => {
                    let mut config = self.inner.consumer_config.clone();
                    config.set("group.id", group);
                    let c: Arc<BaseConsumer> = Arc::new(config.create().map_err(|e| map_error(e, "lag consumer"))?);
                    probes.insert(group.to_owned(), c.clone());
                    c
                }
            }
        };
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> Result<u64, KafkaError> {
            let metadata = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, i32::try_from(p).unwrap_or(i32::MAX));
            }
            let committed = consumer.committed_offsets(tpl, METADATA_TIMEOUT)?;
            // Serve (and drop) the events a never-polled consumer would pile up.
            let _ = consumer.poll(Duration::ZERO);
            let lags = partition_lags(&*consumer, &committed, METADATA_TIMEOUT)?;
            Ok(lags.iter().map(|(_, lag)| lag.unsigned_abs()).sum())
        })
        .await
        .map_err(|e| PublishError::unavailable("kafka lag sample panicked", Some(e.into())))?
        .map_err(|e| map_error(e, "consumer group lag"))
    }

    /// A consumer of `topic` in consumer group `group` for a subscription: the broker's client settings, offsets stored
    /// by the caller once a message is done (`store_offset`) and committed automatically and on rebalances, reading
    /// from the earliest record when the group has no offset yet; `context` hears of rebalances.
    pub fn subscriber<C: ConsumerContext + 'static>(
        &self,
        group: &str,
        topic: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, PublishError> {
        let mut config = self.inner.consumer_config.clone();
        config
            .set("group.id", group)
            .set("client.id", format!("sluice-{}-{group}", self.inner.name))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        // A partition whose worker falls behind is paused; on resume librdkafka fetches again what it dropped, and a
        // short fetch wait keeps that pause from stalling the partition (librdkafka's default wait is 500 ms).
        if config.get("fetch.wait.max.ms").is_none() {
            config.set("fetch.wait.max.ms", "50");
        }
        // Incremental rebalances: a member joining or leaving takes away only the partitions that move, so the
        // deliveries of the others go on (with librdkafka's default, eager, assignors every rebalance revokes all).
        if config.get("partition.assignment.strategy").is_none() {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        let consumer: StreamConsumer<C> =
            config.create_with_context(context).map_err(|e| map_error(e, "subscription consumer"))?;
        consumer.subscribe(&[topic]).map_err(|e| map_error(e, "subscribe"))?;
        Ok(consumer)
    }

    /// Whether the consumer of `reply_topic` is in place.
    #[must_use]
    pub fn listening(&self, reply_topic: &str) -> bool {
        let listeners = self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.get(reply_topic).is_some_and(|l| l.is_ready())
    }

    /// Hand the record to librdkafka. A full local queue is back-pressure: retry for a short while,
    /// then fail as unavailable. Never waits for the broker, so many sends stay in flight.
    async fn enqueue(&self, mut record: FutureRecord<'_, [u8], [u8]>) -> Result<DeliveryFuture, PublishError> {
        // Read the clock only once the queue is full: the usual send takes no time reading.
        let mut deadline = None;
        loop {
            match self.inner.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now()
                        < *deadline.get_or_insert_with(|| {
                            Instant::now() + QUEUE_FULL_WAIT.min(self.inner.delivery_timeout)
                        }) =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((e, _)) => return Err(map_error(e, "enqueue")),
            }
        }
    }

    /// Fail fast (502) for a topic that does not exist: with automatic topic creation off,
    /// librdkafka would otherwise hold the record until `message.timeout.ms`. Existing topics are
    /// cached, so the hot path does one read-locked set lookup.
    async fn check_topic(&self, topic: &str) -> Result<(), PublishError> {
        let cache = &self.inner.topics;
        if cache.is_known(topic) {
            return Ok(());
        }
        if cache.recently_unknown(topic) {
            return Err(unknown_topic(topic));
        }
        let lookup_timeout = METADATA_TIMEOUT.min(self.inner.delivery_timeout);
        let _permit = tokio::time::timeout(lookup_timeout, cache.lookups.acquire())
            .await
            .map_err(|_| PublishError::unavailable("kafka metadata lookups backed up", None))?
            .map_err(|_| PublishError::unavailable("kafka producer closed", None))?;
        if cache.is_known(topic) {
            return Ok(());
        }
        // All topics, not `Some(topic)`: asking for one topic makes librdkafka create (and keep) a
        // handle for it, which a flood of made-up topic names would pile up.
        let producer = self.inner.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, lookup_timeout))
            .await
            .map_err(|e| PublishError::unavailable("kafka metadata lookup panicked", Some(e.into())))?
            .map_err(|e| map_error(e, "topic metadata"))?;
        self.inner.up.store(true, Ordering::Relaxed);
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        match found.map(|t| t.error().map(RDKafkaErrorCode::from)) {
            Some(None) => {
                cache.remember_known(topic);
                Ok(())
            }
            None => {
                cache.remember_unknown(topic);
                Err(unknown_topic(topic))
            }
            Some(Some(code)) if is_unroutable(code) => {
                cache.remember_unknown(topic);
                Err(PublishError::unroutable(format!("kafka topic {topic:?}: {code}"), None))
            }
            // Leader elections and the like: the topic exists, let librdkafka wait for it.
            Some(Some(_)) => Ok(()),
        }
    }

    /// True while librdkafka reaches at least one broker.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Wait up to `timeout` for every queued record to be delivered (or to fail).
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.inner.producer.clone();
        let name = self.inner.name.clone();
        let result = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(broker = %name, error = %e, "kafka flush incomplete");
        }
    }

    /// Broker name from the config.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl Inner {
    /// Wait for the delivery report: librdkafka reports every record within `message.timeout.ms`;
    /// the extra grace only guards against a lost report.
    async fn await_delivery(&self, delivery: DeliveryFuture) -> Result<Receipt, PublishError> {
        match tokio::time::timeout(self.delivery_timeout + DELIVERY_GRACE, delivery).await {
            Ok(Ok(Ok(d))) => {
                self.up.store(true, Ordering::Relaxed);
                Ok(Receipt::Kafka { partition: d.partition, offset: d.offset })
            }
            Ok(Ok(Err((e, message)))) => {
                let err = map_error(e, "delivery");
                if err.is_unroutable() {
                    use rdkafka::Message as _;
                    self.topics.forget(message.topic());
                }
                Err(err)
            }
            Ok(Err(_canceled)) => Err(PublishError::unavailable("kafka producer dropped the delivery report", None)),
            Err(_elapsed) => Err(PublishError::unavailable("kafka delivery report timed out", None)),
        }
    }
}

fn unknown_topic(topic: &str) -> PublishError {
    PublishError::unroutable(format!("kafka topic {topic:?} does not exist"), None)
}

/// `message.timeout.ms`: a user option wins (`message.timeout.ms`, else its alias
/// `delivery.timeout.ms`), else the broker's `delivery_timeout`. Set under one key only, so
/// librdkafka never sees two conflicting values.
fn effective_delivery_timeout(options: &BTreeMap<String, String>, default: Duration) -> Duration {
    ["message.timeout.ms", "delivery.timeout.ms"]
        .iter()
        .find_map(|key| options.get(*key)?.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// Codes that mean "this topic or partition is not there": HTTP 502.
fn is_unroutable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidTopic
    )
}

/// Codes that refuse this record for good (retrying it cannot help): HTTP 502.
fn is_rejected(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::PolicyViolation
    )
}

/// Map a librdkafka error to a publish error.
///
/// - Unroutable (502): `UnknownTopicOrPartition`, `UnknownTopic`, `UnknownPartition`, `InvalidTopic`.
/// - Rejected (502, not retryable): see [`is_rejected`] (too large, invalid record, not authorized).
/// - Unavailable (503, retryable: nothing was stored, the client may send it again), everything
///   else, notably `MessageTimedOut` (delivery timeout), `QueueFull` (local back-pressure),
///   `BrokerTransportFailure`, `AllBrokersDown`, `RequestTimedOut`, `NetworkException`,
///   `NotEnoughReplicas(AfterAppend)`, `LeaderNotAvailable`, `NotLeaderForPartition`, `Fatal`
///   (fatal idempotent-producer state; needs a new producer).
fn map_error(e: KafkaError, during: &str) -> PublishError {
    let reason = format!("kafka {during}: {e}");
    match e.rdkafka_error_code() {
        Some(code) if is_unroutable(code) => PublishError::unroutable(reason, Some(e.into())),
        Some(code) if is_rejected(code) => PublishError::rejected(reason, Some(e.into())),
        _ => PublishError::unavailable(reason, Some(e.into())),
    }
}

/// Which topics exist, so a publish does not ask the broker each time.
struct TopicCache {
    /// Topics the broker reported; only a delivery error for the topic removes one.
    known: RwLock<HashSet<String>>,
    /// Topics reported unknown, with when; trusted for [`UNKNOWN_TOPIC_TTL`].
    unknown: Mutex<HashMap<String, Instant>>,
    /// Bounds concurrent metadata lookups.
    lookups: Semaphore,
}

impl Default for TopicCache {
    fn default() -> Self {
        Self { known: RwLock::default(), unknown: Mutex::default(), lookups: Semaphore::new(METADATA_CONCURRENCY) }
    }
}

impl TopicCache {
    fn is_known(&self, topic: &str) -> bool {
        self.known.read().unwrap_or_else(|e| e.into_inner()).contains(topic)
    }

    fn remember_known(&self, topic: &str) {
        self.unknown.lock().unwrap_or_else(|e| e.into_inner()).remove(topic);
        self.known.write().unwrap_or_else(|e| e.into_inner()).insert(topic.to_owned());
    }

    fn forget(&self, topic: &str) {
        self.known.write().unwrap_or_else(|e| e.into_inner()).remove(topic);
    }

    fn recently_unknown(&self, topic: &str) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        unknown.get(topic).is_some_and(|at| at.elapsed() < UNKNOWN_TOPIC_TTL)
    }

    fn remember_unknown(&self, topic: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        if unknown.len() >= 10_000 {
            unknown.retain(|_, at| at.elapsed() < UNKNOWN_TOPIC_TTL);
        }
        unknown.insert(topic.to_owned(), Instant::now());
    }
}

/// librdkafka callbacks: broker connectivity for `is_up`, and librdkafka's logs as tracing events.
struct SluiceContext {
    name: String,
    up: Arc<AtomicBool>,
    /// Connection failures are logged as one outage, not one line each.
    outage: Outage,
}

impl ClientContext for SluiceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // A failed connection ("FAIL") also comes to `error`, which logs it as part of the outage.
        let level = if fac == "FAIL" { RDKafkaLogLevel::Debug } else { level };
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(broker = %self.name, facility = fac, "librdkafka: {log_message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(broker = %self.name, facility = fac, "librdkafka: {log_message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(broker = %self.name, facility = fac, "librdkafka: {log_message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(broker = %self.name, facility = fac, "librdkafka: {log_message}");
            }
        }
    }

    /// Every `statistics.interval.ms`: up while at least one broker connection is `UP`.
    fn stats(&self, statistics: Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.up.store(up, Ordering::Relaxed);
        if up {
            self.outage.up();
        } else {
            self.outage.down(&"no broker connection is up");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.up.store(false, Ordering::Relaxed);
                self.outage.down(&reason);
            }
            // One broker of a cluster failing is not an outage (librdkafka fails over); all of them are, above.
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException,
            ) => tracing::debug!(broker = %self.name, error = %error, "kafka client error: {reason}"),
            _ => tracing::warn!(broker = %self.name, error = %error, "kafka client error: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_unroutable_rejected_or_unavailable() {
        let class = |code| map_error(KafkaError::MessageProduction(code), "test").outcome();
        assert_eq!(class(RDKafkaErrorCode::UnknownTopicOrPartition), "unroutable");
        assert_eq!(class(RDKafkaErrorCode::UnknownTopic), "unroutable");
        assert_eq!(class(RDKafkaErrorCode::UnknownPartition), "unroutable");
        assert_eq!(class(RDKafkaErrorCode::MessageSizeTooLarge), "rejected");
        assert_eq!(class(RDKafkaErrorCode::TopicAuthorizationFailed), "rejected");
        for retryable in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            let err = map_error(KafkaError::MessageProduction(retryable), "test");
            assert!(err.is_retryable(), "{retryable:?}");
            assert_eq!(err.status_code(), 503);
        }
    }

    #[test]
    fn user_delivery_timeout_wins() {
        let default = Duration::from_secs(5);
        let mut options = BTreeMap::new();
        assert_eq!(effective_delivery_timeout(&options, default), default);
        options.insert("delivery.timeout.ms".to_owned(), "7000".to_owned());
        assert_eq!(effective_delivery_timeout(&options, default), Duration::from_secs(7));
        options.insert("message.timeout.ms".to_owned(), "9000".to_owned());
        assert_eq!(effective_delivery_timeout(&options, default), Duration::from_secs(9));
    }
}

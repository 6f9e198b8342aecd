//! `[[subscriptions]]`: consume a RabbitMQ queue (or a Kafka topic in a consumer group) and deliver each message to an
//! upstream through the same resilience module forwarding uses ([`crate::upstream::call`]: balancing, outlier
//! ejection, `max_concurrent`, timeouts), then acknowledge it (Kafka: store its offset for the next commit).
//! At-least-once: a message is acknowledged only after a `2xx`, or after its dead letter was confirmed.
//!
//! Outcomes of one attempt:
//! - `2xx` → ack;
//! - `4xx` other than 408 and 429 → dead letter at once (the upstream will never take it);
//! - `5xx`, 408, 429, a timeout or no connection → retry after an exponential backoff with full jitter (`Retry-After`
//!   honoured up to `max_backoff`); after `max_retries` retries, dead letter. Without `dead_letter`, a message is never
//!   dropped: it keeps being retried every `max_backoff`, counted in `sluice_subscription_stuck`.
//!
//! A dead letter carries the original body and headers plus `sluice-error` (why) and `sluice-attempts`. If it cannot
//! be published, the message goes back to its queue (nack with requeue) to be tried again later.
//!
//! At most `concurrency` deliveries run at once (RabbitMQ: the channel's prefetch; Kafka: across partitions, each
//! partition's records one after another in offset order, up to [`PARTITION_BUFFER`] more waiting per partition and the rest held while
//! the partition is paused). Stopping (shutdown, or a reload that changes the subscription) cancels the consumer, lets
//! the deliveries in flight finish for up to the grace period, and puts back (requeues, or leaves uncommitted) those
//! still waiting for a retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use std::collections::{HashMap, VecDeque};
use tokio::sync::mpsc;
use tokio::sync::{Semaphore, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::rebalance::{Rebalances, SubscriptionConsumer};
use crate::backoff::Backoff;
use crate::body::Prepared;
use crate::config::{RetryConfig, SubscriptionConfig};
use crate::publish::amqp::header_pairs;
use crate::publish::kafka::partition_lags;
use crate::publish::{Ack, Destination, Message, Publisher};
use crate::telemetry::{Held, SubscriptionMetrics, TraceContext, Tracer};
use crate::upstream::{Call, CallError, RetryPolicy, Upstream, call, strip_hop_by_hop};

/// Where dead letters go.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The broker's producer.
    pub publisher: Publisher,
    /// Exchange and routing key, or topic.
    pub destination: Destination,
}

/// What a subscription needs to run.
#[derive(Clone, Debug)]
pub struct Wiring {
    /// The broker consumed.
    pub source: Publisher,
    /// The upstream delivered to.
    pub upstream: Arc<Upstream>,
    /// Dead letters, when configured.
    pub dead_letter: Option<DeadLetter>,
    /// Spans.
    pub tracer: Tracer,
    /// Metric handles.
    pub metrics: SubscriptionMetrics,
}

/// A running subscription.
#[derive(Debug)]
pub struct Subscription {
    /// Its settings.
    pub config: SubscriptionConfig,
    /// The broker it consumes (a reload that replaces the broker restarts the subscription).
    pub source: Publisher,
    /// The dead-letter broker, if any (likewise).
    pub dead_letter: Option<Publisher>,
    /// The upstream it delivers to (a reload that replaces the upstream restarts the subscription).
    pub upstream: Arc<Upstream>,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

/// The stop signal (a watch, so that a stop given while nobody waits is still seen by the next wait) and the state.
#[derive(Debug)]
struct Control {
    stopping: watch::Sender<bool>,
    /// True while a consumer is attached to the queue.
    consuming: AtomicBool,
}

impl Default for Control {
    fn default() -> Self {
        Control { stopping: watch::channel(false).0, consuming: AtomicBool::new(false) }
    }
}

impl Control {
    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn signal(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the subscription is stopping (at once if it is already).
    async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// Records waiting for a Kafka partition's worker before the partition is paused. Large enough that pausing is rare:
/// librdkafka drops what it had fetched for a paused partition and fetches it again after the resume (after up to
/// `fetch.wait.max.ms`), so pausing on every few records cut throughput by a factor of seven (bench/README.md).
const PARTITION_BUFFER: usize = 512;

/// The most of an upstream's answer read (and discarded) per delivery.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One delivery's fixed parts, shared by every message of the subscription.
#[derive(Debug)]
struct Deliverer {
    name: String,
    method: Method,
    path: PathAndQuery,
    timeout: Duration,
    max_retries: u32,
    backoff: Backoff,
    max_backoff: Duration,
    no_retries: RetryPolicy,
    wiring: Wiring,
    control: Arc<Control>,
}

impl Subscription {
    /// Starts consuming. Connecting (and reconnecting after a broker outage) happens in the background.
    pub fn start(config: SubscriptionConfig, wiring: Wiring) -> Subscription {
        let control = Arc::new(Control::default());
        let deliverer = Arc::new(Deliverer {
            name: config.name.clone(),
            method: config.to.method.parse().unwrap_or(Method::POST),
            path: config.to.path.parse().unwrap_or_else(|_| PathAndQuery::from_static("/")),
            timeout: config.to.timeout.0,
            max_retries: config.retry.max_retries,
            backoff: Backoff::new(config.retry.backoff.0, config.retry.max_backoff.0),
            max_backoff: config.retry.max_backoff.0,
            no_retries: RetryPolicy::new(&RetryConfig { max_retries: 0, ..RetryConfig::default() }),
            wiring: wiring.clone(),
            control: control.clone(),
        });
        let task = match (&config.from.topic, &config.from.group) {
            _ if wiring.source.as_sqs().is_some() => {
                let queue = config.from.queue.clone().unwrap_or_default();
                tokio::spawn(consume_sqs(deliverer, queue, config.concurrency))
            }
            (Some(topic), Some(group)) => {
                tokio::spawn(consume_kafka(deliverer, topic.clone(), group.clone(), config.concurrency))
            }
            _ => {
                let queue = config.from.queue.clone().unwrap_or_default();
                let prefetch = u16::try_from(config.concurrency).unwrap_or(u16::MAX);
                tokio::spawn(consume(deliverer, queue, prefetch))
            }
        };
        let dead_letter = wiring.dead_letter.map(|dl| dl.publisher);
        Subscription { upstream: wiring.upstream, source: wiring.source, dead_letter, config, control, task }
    }

    /// Whether a consumer is attached to the queue now (for `/readyz?verbose`).
    pub fn is_consuming(&self) -> bool {
        self.control.consuming.load(Ordering::Relaxed)
    }

    /// Stops taking messages (at once; deliveries in flight go on).
    pub fn signal_stop(&self) {
        self.control.signal();
    }

    /// Stops taking messages and waits up to `grace` for the deliveries in flight (the rest go back to the queue).
    pub async fn stop(&self, grace: Duration) {
        self.signal_stop();
        let task = &self.task;
        let finished = async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, finished).await.is_err() {
            tracing::warn!(subscription = %self.config.name, "deliveries still in flight after the grace period");
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A subscription a reload replaced: stop taking messages; those in flight finish on their own.
        self.signal_stop();
    }
}

/// Consumes the queue while the subscription runs, reconnecting after the broker or the queue went away.
async fn consume(deliverer: Arc<Deliverer>, queue: String, prefetch: u16) {
    let name = deliverer.name.clone();
    let mut failures = 0u32;
    let in_flight = Arc::new(Semaphore::new(usize::from(prefetch)));
    let retry_schedule = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    while !deliverer.control.stopping() {
        let Some(amqp) = deliverer.wiring.source.as_amqp() else { return };
        let tag = format!("sluice-{name}-{}", uuid::Uuid::new_v4().simple());
        let (channel, mut consumer) = match amqp.consume(&queue, prefetch, &tag).await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                // At start the broker's connection is usually being made: try again soon, then every second.
                if failures > 1 && (failures == 2 || failures.is_multiple_of(30)) {
                    tracing::warn!(subscription = %name, queue = %queue, error = %e, "cannot consume yet; retrying");
                }
                let wait = retry_schedule.ceiling(failures);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = deliverer.control.stopped() => {}
                }
                continue;
            }
        };
        failures = 0;
        deliverer.control.consuming.store(true, Ordering::Relaxed);
        tracing::info!(subscription = %name, queue = %queue, "consuming");
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                () = deliverer.control.stopped() => None,
            };
            let Some(Ok(delivery)) = next else {
                deliverer.control.consuming.store(false, Ordering::Relaxed);
                break;
            };
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => Some(permit.expect("never closed")),
                () = deliverer.control.stopped() => None,
            };
            let Some(permit) = permit.filter(|_| !deliverer.control.stopping()) else {
                // Taken after the stop: back to the queue, undelivered.
                let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                let _ = delivery.acker.nack(requeue).await;
                deliverer.control.consuming.store(false, Ordering::Relaxed);
                break;
            };
            let deliverer = deliverer.clone();
            tokio::spawn(async move {
                deliverer.deliver(Inbound::amqp(delivery)).await;
                drop(permit);
            });
        }
        if deliverer.control.stopping() {
            let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            // Deliveries in flight finish (or requeue themselves) before the channel closes.
            let _ = in_flight.acquire_many(u32::from(prefetch)).await;
            let _ = channel.close(200, "sluice subscription stopped".into()).await;
        } else {
            tracing::warn!(subscription = %name, queue = %queue, "consumer ended (connection lost?); resubscribing");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How long a received SQS message stays invisible to other consumers; renewed every half of it while its delivery
/// runs, so a delivery may take longer (retries included) without the message being handed out twice.
const SQS_VISIBILITY: Duration = Duration::from_secs(30);
/// The longest an SQS `ReceiveMessage` waits for messages (long polling).
const SQS_WAIT: i32 = 10;

/// Receives from the SQS queue (long polling) while the subscription runs, at most `concurrency` deliveries at once.
/// A message stays invisible while it is delivered, is deleted once delivered or dead-lettered, and is made visible
/// again at once when it goes back (stop, dead letter not stored).
async fn consume_sqs(deliverer: Arc<Deliverer>, queue: String, concurrency: usize) {
    let name = deliverer.name.clone();
    let Some(sqs) = deliverer.wiring.source.as_sqs().cloned() else { return };
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let retry_schedule = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    let mut failures = 0u32;
    let mut url: Option<String> = None;
    while !deliverer.control.stopping() {
        let result = match &url {
            Some(u) => {
                // Ask for no more than there is room for.
                let room = tokio::select! {
                    permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
                    () = deliverer.control.stopped() => break,
                };
                let wanted = (in_flight.available_permits() + 1).min(10) as i32;
                drop(room);
                let receive = sqs
                    .client()
                    .receive_message()
                    .queue_url(u)
                    .max_number_of_messages(wanted)
                    .wait_time_seconds(SQS_WAIT)
                    .visibility_timeout(SQS_VISIBILITY.as_secs() as i32)
                    .message_attribute_names("All")
                    .send();
                tokio::select! {
                    r = receive => r.map_err(|e| crate::publish::PublishError::unavailable(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(), None)).map(Some),
                    () = deliverer.control.stopped() => break,
                }
            }
            None => sqs.queue_url(&queue).await.map(|u| {
                url = Some(u);
                None
            }),
        };
        let received = match result {
            Ok(Some(out)) => out,
            Ok(None) => continue,
            Err(e) => {
                deliverer.control.consuming.store(false, Ordering::Relaxed);
                failures += 1;
                if failures == 2 || failures.is_multiple_of(30) {
                    tracing::warn!(subscription = %name, queue = %queue, error = %e, "cannot receive yet; retrying");
                }
                if e.is_unroutable() {
                    url = None;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry_schedule.ceiling(failures)) => {}
                    () = deliverer.control.stopped() => {}
                }
                continue;
            }
        };
        if failures > 0 || !deliverer.control.consuming.swap(true, Ordering::Relaxed) {
            tracing::info!(subscription = %name, queue = %queue, "consuming");
        }
        failures = 0;
        let url = url.clone().unwrap_or_default();
        for m in received.messages.unwrap_or_default() {
            let permit = in_flight.clone().acquire_owned().await.expect("never closed");
            let inbound = Inbound::sqs(m, sqs.client().clone(), url.clone(), &queue);
            let deliverer = deliverer.clone();
            tokio::spawn(async move {
                deliverer.deliver(inbound).await;
                drop(permit);
            });
        }
    }
    deliverer.control.consuming.store(false, Ordering::Relaxed);
    // Deliveries in flight finish (or give their message back) before the subscription ends.
    let _ = in_flight.acquire_many(u32::try_from(concurrency).unwrap_or(u32::MAX)).await;
}

/// Consumes the topic in the consumer group while the subscription runs. Each partition's messages are delivered
/// one after another, in offset order, by a worker of its own; at most `concurrency` deliveries run at once across
/// partitions. A message's offset is stored once it is delivered or dead-lettered, and committed every second and on
/// rebalances; a partition a rebalance takes away has its undelivered records and its delivery in flight abandoned
/// (see `rebalance`); on stop, what is stored is committed before the consumer closes.
async fn consume_kafka(deliverer: Arc<Deliverer>, topic: String, group: String, concurrency: usize) {
    let name = deliverer.name.clone();
    let Some(kafka) = deliverer.wiring.source.as_kafka() else { return };
    let (consumer, mut revocations) = loop {
        let (context, revocations) = Rebalances::new(&name);
        match kafka.subscriber(&group, &topic, context) {
            Ok(c) => break (Arc::new(c), revocations),
            Err(e) => {
                tracing::warn!(subscription = %name, topic = %topic, error = %e, "cannot consume yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = deliverer.control.stopped() => {}
                }
                if deliverer.control.stopping() {
                    return;
                }
            }
        }
    };
    deliverer.control.consuming.store(true, Ordering::Relaxed);
    tracing::info!(subscription = %name, topic = %topic, group = %group, "consuming");
    let lag = tokio::spawn(sample_lag(consumer.clone(), deliverer.wiring.metrics.clone()));
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut partitions: HashMap<i32, (mpsc::Sender<Inbound>, AbortHandle)> = HashMap::new();
    // A partition whose worker has PARTITION_BUFFER records waiting is paused (librdkafka stops fetching it) and what it still
    // returns is held here, in order, until the worker takes more: a slow partition holds back itself, not the others,
    // and the consumer keeps polling (no eviction from the group).
    let mut held: HashMap<i32, VecDeque<Inbound>> = HashMap::new();
    let (took, mut taken) = mpsc::unbounded_channel::<i32>();
    let mut workers = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            // Revocations first: a record must not reach the worker of a partition already taken away.
            biased;
            Some(revoked) = revocations.recv() => {
                // Another member delivers these from the committed offset on: drop what was fetched, stop the worker.
                for partition in revoked {
                    held.remove(&partition);
                    deliverer.wiring.metrics.forget_lag(partition);
                    if let Some((_, worker)) = partitions.remove(&partition) {
                        worker.abort();
                    }
                }
                while workers.try_join_next().is_some() {}
                continue;
            }
            next = consumer.recv() => Some(next),
            Some(partition) = taken.recv() => {
                // The partition's worker took a record: hand it what was held, resume fetching once all is handed.
                if let (Some(queue), Some((worker, _))) = (held.get_mut(&partition), partitions.get(&partition)) {
                    while let Some(inbound) = queue.pop_front() {
                        if let Err(mpsc::error::TrySendError::Full(inbound)) = worker.try_send(inbound) {
                            queue.push_front(inbound);
                            break;
                        }
                    }
                    if queue.is_empty() {
                        held.remove(&partition);
                        let _ = consumer.resume(&one_partition(&topic, partition));
                    }
                }
                continue;
            }
            () = deliverer.control.stopped() => None,
        };
        let Some(next) = next else { break };
        if deliverer.control.stopping() {
            break;
        }
        let m = match next {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(subscription = %name, error = %e, "kafka consumer error");
                continue;
            }
        };
        let inbound = Inbound::kafka(&m, consumer.clone());
        let partition = m.partition();
        drop(m);
        let (worker, _) = partitions.entry(partition).or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Inbound>(PARTITION_BUFFER);
            let (deliverer, slots, took) = (deliverer.clone(), slots.clone(), took.clone());
            let handle = workers.spawn(async move {
                while let Some(inbound) = rx.recv().await {
                    let _ = took.send(partition);
                    if deliverer.control.stopping() {
                        break;
                    }
                    let _slot = slots.acquire().await;
                    deliverer.deliver(inbound).await;
                }
            });
            (tx, handle)
        });
        match held.get_mut(&partition) {
            Some(queue) => queue.push_back(inbound),
            None => match worker.try_send(inbound) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(inbound)) => {
                    let _ = consumer.pause(&one_partition(&topic, partition));
                    held.insert(partition, VecDeque::from([inbound]));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            },
        }
    }
    deliverer.control.consuming.store(false, Ordering::Relaxed);
    drop(partitions);
    while workers.join_next().await.is_some() {}
    lag.abort();
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(subscription = %name, error = %e, "final offset commit");
    }
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Every few seconds, the lag of each assigned partition: its high watermark minus the group's committed offset
/// (`sluice_subscription_lag`).
async fn sample_lag(consumer: Arc<SubscriptionConsumer>, metrics: SubscriptionMetrics) {
    const EVERY: Duration = Duration::from_secs(2);
    const TIMEOUT: Duration = Duration::from_secs(5);
    loop {
        tokio::time::sleep(EVERY).await;
        let c = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || -> Option<Vec<(i32, i64)>> {
            let committed = c.committed(TIMEOUT).ok()?;
            partition_lags(&*c, &committed, TIMEOUT).ok()
        })
        .await;
        if let Ok(Some(lags)) = lags {
            for (partition, lag) in lags {
                metrics.lag(partition).set(lag);
            }
        }
    }
}

/// One message taken from a broker, detached from the client library, and how to settle it.
struct Inbound {
    body: Bytes,
    /// Its metadata as request headers.
    http: HeaderMap,
    /// Its metadata as it came (for a dead letter).
    metadata: Vec<(String, String)>,
    /// Its `sluice-id` or message id (a new one when it has none).
    id: String,
    content_type: Option<String>,
    /// The queue's routing key or the topic, for spans.
    source: String,
    settle: Settle,
}

/// How a message is acknowledged.
enum Settle {
    /// RabbitMQ: ack, or nack with requeue.
    Amqp(lapin::Acker),
    /// Kafka: store the next offset of the partition (committed automatically).
    Kafka { consumer: Arc<SubscriptionConsumer>, topic: String, partition: i32, offset: i64 },
    /// SQS: delete the message, or make it visible again; `keep` renews its invisibility meanwhile.
    Sqs { client: aws_sdk_sqs::Client, url: String, receipt: String, keep: tokio::task::AbortHandle },
}

impl Drop for Settle {
    fn drop(&mut self) {
        // However a delivery ends, an SQS message's invisibility is no longer renewed after it.
        if let Settle::Sqs { keep, .. } = self {
            keep.abort();
        }
    }
}

impl Settle {
    fn system(&self) -> &'static str {
        match self {
            Settle::Amqp(_) => "rabbitmq",
            Settle::Kafka { .. } => "kafka",
            Settle::Sqs { .. } => "aws_sqs",
        }
    }

    /// The message is done with (delivered, or dead-lettered).
    async fn done(&self) {
        match self {
            Settle::Amqp(acker) => {
                let _ = acker.ack(BasicAckOptions::default()).await;
            }
            Settle::Kafka { consumer, topic, partition, offset } => {
                // librdkafka's legacy store: the message's own offset, committed as the next one to read. Fails only
                // when the partition was revoked meanwhile: its new owner reads the message again.
                let _ = consumer.store_offset(topic, *partition, *offset);
            }
            Settle::Sqs { client, url, receipt, keep } => {
                keep.abort();
                // Not deleted (SQS unreachable): it comes back after its visibility timeout and is delivered again.
                let _ = client.delete_message().queue_url(url).receipt_handle(receipt).send().await;
            }
        }
    }

    /// Whether the message can be handed back to the broker for later (AMQP); a Kafka partition cannot skip it.
    fn can_requeue(&self) -> bool {
        matches!(self, Settle::Amqp(_) | Settle::Sqs { .. })
    }

    /// Gives the message back: requeued (AMQP); not stored, so read again after a restart or rebalance (Kafka).
    async fn again(&self) {
        match self {
            Settle::Amqp(acker) => {
                let _ = acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
            }
            Settle::Sqs { client, url, receipt, keep } => {
                keep.abort();
                let visible = client.change_message_visibility().queue_url(url).receipt_handle(receipt);
                let _ = visible.visibility_timeout(0).send().await;
            }
            Settle::Kafka { .. } => {}
        }
    }
}

impl Inbound {
    fn amqp(delivery: Delivery) -> Inbound {
        let p = &delivery.properties;
        let metadata = header_pairs(p);
        let mut http = http_headers(&delivery, &metadata);
        let id = meta(&metadata, "sluice-id")
            .or_else(|| p.message_id().as_ref().map(|m| m.as_str()))
            .map_or_else(Message::new_id, str::to_owned);
        identify(&mut http, &id);
        let content_type = p.content_type().as_ref().map(|c| c.as_str().to_owned());
        let source = delivery.routing_key.as_str().to_owned();
        Inbound {
            body: Bytes::from(delivery.data),
            http,
            metadata,
            id,
            content_type,
            source,
            settle: Settle::Amqp(delivery.acker),
        }
    }

    fn kafka(m: &BorrowedMessage<'_>, consumer: Arc<SubscriptionConsumer>) -> Inbound {
        let mut metadata = Vec::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if let Ok(v) = std::str::from_utf8(h.value.unwrap_or_default()) {
                    metadata.push((h.key.to_owned(), v.to_owned()));
                }
            }
        }
        let mut http = headers_of(&metadata);
        http.insert(
            HeaderName::from_static("sluice-topic"),
            HeaderValue::try_from(m.topic()).unwrap_or(HeaderValue::from_static("")),
        );
        http.insert(HeaderName::from_static("sluice-partition"), HeaderValue::from(m.partition()));
        http.insert(HeaderName::from_static("sluice-offset"), HeaderValue::from(m.offset()));
        // A record another producer wrote without an id gets one from where it is, the same on every redelivery.
        let id = meta(&metadata, "sluice-id")
            .map_or_else(|| format!("{}-{}-{}", m.topic(), m.partition(), m.offset()), str::to_owned);
        identify(&mut http, &id);
        let content_type = meta(&metadata, "content-type").map(str::to_owned);
        Inbound {
            body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            http,
            metadata,
            id,
            content_type,
            source: m.topic().to_owned(),
            settle: Settle::Kafka {
                consumer,
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
            },
        }
    }
}

impl Inbound {
    fn sqs(m: aws_sdk_sqs::types::Message, client: aws_sdk_sqs::Client, url: String, queue: &str) -> Inbound {
        let mut metadata = Vec::new();
        let mut base64 = false;
        for (k, v) in m.message_attributes.unwrap_or_default() {
            let Some(value) = v.string_value else { continue };
            match k.as_str() {
                "sluice-body-encoding" => base64 = value == "base64",
                // More metadata than SQS has attributes for (see publish/sqs.rs).
                "sluice-headers" => {
                    if let Ok(serde_json::Value::Object(rest)) = serde_json::from_str(&value) {
                        metadata.extend(rest.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))));
                    }
                }
                _ => metadata.push((k, value)),
            }
        }
        let text = m.body.unwrap_or_default();
        let body = match base64 {
            true => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .map(Bytes::from)
                    .unwrap_or_else(|_| Bytes::from(text))
            }
            false => Bytes::from(text),
        };
        let mut http = headers_of(&metadata);
        http.insert(
            HeaderName::from_static("sluice-queue"),
            HeaderValue::try_from(queue).unwrap_or(HeaderValue::from_static("")),
        );
        let message_id = m.message_id.unwrap_or_default();
        let id = meta(&metadata, "sluice-id").map_or(message_id, str::to_owned);
        identify(&mut http, &id);
        let content_type = meta(&metadata, "content-type").map(str::to_owned);
        let receipt = m.receipt_handle.unwrap_or_default();
        let keep = tokio::spawn({
            let (client, url, receipt) = (client.clone(), url.clone(), receipt.clone());
            async move {
                loop {
                    tokio::time::sleep(SQS_VISIBILITY / 2).await;
                    let renew = client.change_message_visibility().queue_url(&url).receipt_handle(&receipt);
                    let _ = renew.visibility_timeout(SQS_VISIBILITY.as_secs() as i32).send().await;
                }
            }
        })
        .abort_handle();
        Inbound {
            body,
            http,
            metadata,
            id,
            content_type,
            source: queue.to_owned(),
            settle: Settle::Sqs { client, url, receipt, keep },
        }
    }
}

/// The value of metadata entry `name` (as the producer wrote its name).
fn meta<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Gives every delivery a `sluice-id` (the message's: its own header, else the broker's message id or a Kafka
/// record's `topic-partition-offset`, else a new one) and an `x-request-id` (the message's own, else the same id), also
/// for messages that other producers wrote without them.
fn identify(http: &mut HeaderMap, id: &str) {
    let Ok(value) = HeaderValue::try_from(id) else { return };
    if !http.contains_key("sluice-id") {
        http.insert(HeaderName::from_static("sluice-id"), value.clone());
    }
    if !http.contains_key("x-request-id") {
        http.insert(HeaderName::from_static("x-request-id"), value);
    }
}

/// A message's metadata as request headers (CloudEvents binary mode on Kafka and SQS: `ce_type` → `ce-type`), less
/// what must not reach the upstream.
fn headers_of(metadata: &[(String, String)]) -> HeaderMap {
    let mut http = HeaderMap::new();
    for (k, v) in metadata {
        let name = match k.strip_prefix("ce_") {
            Some(attribute) => format!("ce-{attribute}"),
            None => k.to_ascii_lowercase(),
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::try_from(v.as_str())) {
            http.insert(n, v);
        }
    }
    strip_framing(&mut http);
    http
}

/// How long a `Retry-After` asks to wait: delay-seconds, or an HTTP date (RFC 9110 §10.2.3; a date in the past is
/// no wait). Anything else is ignored.
fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => {
            let at = httpdate::parse_http_date(text).ok()?;
            Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
        }
    }
}

/// How one attempt ended.
enum Verdict {
    Delivered,
    /// Never deliverable: dead letter at once.
    Refused(String),
    /// Try again later (after at least the given wait, from `Retry-After`).
    Again(String, Option<Duration>),
    /// Not sent: the upstream is at `max_concurrent` here. Try again soon; not counted as an attempt.
    Busy,
}

impl Deliverer {
    async fn deliver(&self, inbound: Inbound) {
        let start = Instant::now();
        let headers = &inbound.http;
        let body = Prepared::Buffered(inbound.body.clone());
        // One CONSUMER span per message, continuing the trace the message carries; each attempt is a CLIENT span in it.
        let span = self.wiring.tracer.consumer(headers, &["process ", &self.name], |a| {
            a.str("messaging.system", inbound.settle.system());
            a.str("messaging.operation.type", "process");
            a.str("messaging.destination.name", &inbound.source);
            a.str("sluice.subscription", &self.name);
        });
        let mut attempt: u32 = 1;
        // Counted in `sluice_subscription_stuck` from its first retry past the end without a dead letter.
        let mut stuck: Option<Held> = None;
        loop {
            let (reason, retry_after, exhausted) = match self.attempt(headers, &body, attempt, &span.cx).await {
                Verdict::Delivered => {
                    self.wiring.metrics.delivered.inc();
                    self.wiring.metrics.duration.observe(start.elapsed().as_secs_f64());
                    inbound.settle.done().await;
                    return;
                }
                Verdict::Refused(reason) => (reason, None, true),
                Verdict::Busy => {
                    let stopped = self.control.stopping()
                        || tokio::select! {
                            () = tokio::time::sleep(self.backoff.base) => self.control.stopping(),
                            () = self.control.stopped() => true,
                        };
                    if stopped {
                        inbound.settle.again().await;
                        return;
                    }
                    continue;
                }
                Verdict::Again(reason, retry_after) => (reason, retry_after, attempt > self.max_retries),
            };
            if exhausted && self.wiring.dead_letter.is_some() {
                self.dead_letter(&inbound, &reason, attempt, start).await;
                return;
            }
            self.wiring.metrics.retried.inc();
            let wait = if exhausted {
                if stuck.is_none() {
                    tracing::warn!(subscription = %self.name, reason = %reason, "no dead_letter: retrying every max_backoff");
                    stuck = Some(Held::new(&self.wiring.metrics.stuck));
                }
                self.max_backoff
            } else {
                self.backoff.delay(attempt).max(retry_after.unwrap_or_default()).min(self.max_backoff)
            };
            // (A stop signalled before this wait began is seen by the check, one during it by the select.)
            let stopped = self.control.stopping()
                || tokio::select! {
                    () = tokio::time::sleep(wait) => self.control.stopping(),
                    () = self.control.stopped() => true,
                };
            if stopped {
                inbound.settle.again().await;
                return;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    async fn attempt(&self, headers: &HeaderMap, body: &Prepared, attempt: u32, trace: &TraceContext) -> Verdict {
        let mut headers = headers.clone();
        headers.insert(HeaderName::from_static("sluice-attempt"), HeaderValue::from(attempt));
        let sent = Call {
            method: self.method.clone(),
            path: self.path.clone(),
            headers,
            forwarded: None,
            body,
            idempotent: true,
            hash: None,
            retry: &self.no_retries,
            timeout: self.timeout,
            trace,
            tracer: &self.wiring.tracer,
            retries: &self.wiring.metrics.retries,
            keep_lines: false,
        };
        match call(&self.wiring.upstream, sent).await {
            Ok(answer) => {
                let status = answer.response.status();
                let retry_after = answer.response.headers().get(http::header::RETRY_AFTER).and_then(retry_after);
                // Read the answer to its end (so the connection can serve the next delivery), but only so much and
                // for so long: a huge or endless answer costs the connection, not memory or the delivery slot.
                let body = Limited::new(answer.response.into_body(), MAX_ANSWER_BYTES);
                let read = matches!(tokio::time::timeout(self.timeout, body.collect()).await, Ok(Ok(_)));
                if let (true, Some(conn)) = (read, answer.conn) {
                    conn.release();
                }
                drop(answer.guard);
                verdict(status, retry_after)
            }
            // Sluice's own `max_concurrent` for the upstream: wait for room, the message was not tried.
            Err(CallError::Overloaded) => Verdict::Busy,
            Err(e @ CallError::BodyTooLarge { .. }) => Verdict::Refused(call_error(&e).to_owned()),
            Err(e) => Verdict::Again(call_error(&e).to_owned(), None),
        }
    }

    /// Publishes the dead letter (confirmed), then settles the message. If the dead letter cannot be stored, an AMQP
    /// message goes back to its queue; a Kafka one (whose partition must not move past it) is dead-lettered again
    /// every `max_backoff` until it is stored or the subscription stops (then it is read again after the restart).
    async fn dead_letter(&self, inbound: &Inbound, reason: &str, attempts: u32, start: Instant) {
        let Some(dl) = &self.wiring.dead_letter else { return };
        let mut headers: Vec<_> = inbound
            .metadata
            .iter()
            .filter(|(k, _)| k != "sluice-error" && k != "sluice-attempts")
            .map(|(k, v)| (k.clone().into(), v.clone()))
            .collect();
        headers.push(("sluice-error".into(), reason.to_owned()));
        headers.push(("sluice-attempts".into(), attempts.to_string()));
        let message = Message {
            id: inbound.id.clone(),
            body: inbound.body.clone(),
            content_type: inbound.content_type.clone(),
            headers,
            destination: dl.destination.clone(),
        };
        loop {
            match dl.publisher.publish(message.clone(), Ack::Confirm).await {
                Ok(_) => {
                    self.wiring.metrics.dead_lettered.inc();
                    self.wiring.metrics.duration.observe(start.elapsed().as_secs_f64());
                    inbound.settle.done().await;
                    return;
                }
                Err(e) if inbound.settle.can_requeue() => {
                    // Requeued after a pause, not at once: a dead-letter broker that is down must not turn this
                    // message into a tight loop of upstream calls.
                    tracing::warn!(subscription = %self.name, error = %e, "dead letter not stored: message requeued");
                    tokio::select! {
                        () = tokio::time::sleep(self.max_backoff) => {}
                        () = self.control.stopped() => {}
                    }
                    inbound.settle.again().await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(subscription = %self.name, error = %e, "dead letter not stored: trying again");
                    let stopped = tokio::select! {
                        () = tokio::time::sleep(self.max_backoff) => self.control.stopping(),
                        () = self.control.stopped() => true,
                    };
                    if stopped {
                        return;
                    }
                }
            }
        }
    }
}

/// The verdict on an upstream's answer.
fn verdict(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Again(format!("upstream answered {}", status.as_u16()), retry_after),
        400..=499 => Verdict::Refused(format!("upstream answered {}", status.as_u16())),
        _ => Verdict::Again(format!("upstream answered {}", status.as_u16()), retry_after),
    }
}

fn call_error(e: &CallError) -> &'static str {
    match e {
        CallError::Timeout => "upstream timeout",
        CallError::Overloaded => "upstream at max_concurrent",
        CallError::NoHealthyEndpoint => "no healthy endpoint",
        CallError::Unreachable => "upstream unreachable",
        CallError::BodyTooLarge { .. } => "message body too large",
    }
}

/// Headers a message may carry that must not reach the upstream besides the hop-by-hop ones: framing the client sets
/// itself (`content-length`, `host`, `expect`) and `te` (also `te: trailers`, which only a forwarded client may ask).
const NOT_FORWARDED: [HeaderName; 4] = [header::CONTENT_LENGTH, header::EXPECT, header::HOST, header::TE];

/// Removes from a message's headers what must not reach the upstream.
fn strip_framing(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for name in &NOT_FORWARDED {
        headers.remove(name);
    }
}

/// The message's metadata as request headers: its AMQP headers (CloudEvents `cloudEvents:*` as `ce-*`), `content-type`,
/// `sluice-id` (the message id, when it has no `sluice-id` header), `sluice-exchange` and `sluice-routing-key`.
fn http_headers(delivery: &Delivery, metadata: &[(String, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let put = |headers: &mut HeaderMap, name: &str, value: &str| {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes());
        if let (Ok(n), Ok(v)) = (name, HeaderValue::try_from(value)) {
            headers.insert(n, v);
        }
    };
    let p = &delivery.properties;
    for (k, v) in metadata {
        match k.strip_prefix("cloudEvents:") {
            Some(attribute) => put(&mut headers, &format!("ce-{attribute}"), v),
            None => put(&mut headers, k, v),
        }
    }
    if let Some(ct) = p.content_type() {
        put(&mut headers, "content-type", ct.as_str());
    }
    put(&mut headers, "sluice-exchange", delivery.exchange.as_str());
    put(&mut headers, "sluice-routing-key", delivery.routing_key.as_str());
    strip_framing(&mut headers);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_delivered_refused_or_tried_again() {
        let ok = |s: u16| matches!(verdict(StatusCode::from_u16(s).unwrap(), None), Verdict::Delivered);
        let refused = |s: u16| matches!(verdict(StatusCode::from_u16(s).unwrap(), None), Verdict::Refused(_));
        let again = |s: u16| matches!(verdict(StatusCode::from_u16(s).unwrap(), None), Verdict::Again(..));
        assert!(ok(200) && ok(202) && ok(204));
        assert!(refused(400) && refused(404) && refused(422));
        assert!(again(408) && again(429) && again(500) && again(503) && again(302));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let parse = |v: &str| retry_after(&HeaderValue::try_from(v).unwrap());
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let wait = parse(&httpdate::fmt_http_date(later)).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a date in the past: no wait");
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("-1"), None);
    }

    #[test]
    fn every_delivery_carries_a_sluice_id_and_a_request_id() {
        let mut bare = HeaderMap::new();
        identify(&mut bare, "m-1");
        assert_eq!(
            (&bare["sluice-id"], &bare["x-request-id"]),
            (&HeaderValue::from_static("m-1"), &HeaderValue::from_static("m-1"))
        );
        let mut own = HeaderMap::new();
        own.insert("sluice-id", HeaderValue::from_static("s-1"));
        own.insert("x-request-id", HeaderValue::from_static("r-1"));
        identify(&mut own, "other");
        assert_eq!(
            (&own["sluice-id"], &own["x-request-id"]),
            (&HeaderValue::from_static("s-1"), &HeaderValue::from_static("r-1"))
        );
    }
}

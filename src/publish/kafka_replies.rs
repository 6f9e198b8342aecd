//! The replies of request-reply routes over Kafka: one consumer per gateway instance and reply topic, assigned every
//! partition of the topic (no consumer group, so no rebalances and no other instance's replies are taken from it),
//! starting at each partition's end as it was when the listener started. Each record's `sluice-correlation-id`
//! header names the request it answers ([`Replies`]); the others are late or stray and counted.
//!
//! Requests are refused until the listener has its assignment: a reply written before the consumer knew where the
//! end was could otherwise be missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::AbortHandle;

use super::reply::{Replies, Reply};
use crate::backoff::{Attempts, Backoff};

/// The header that carries the request's correlation id (its `sluice-id`), on requests and on replies.
pub const CORRELATION_HEADER: &str = "sluice-correlation-id";
/// The request header naming the topic the reply goes to.
pub const REPLY_TO_HEADER: &str = "sluice-reply-to";
/// Longest wait for one metadata or watermark answer while the listener starts.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running consumer of one reply topic; stopped when dropped.
#[derive(Debug)]
pub struct ReplyListener {
    topic: String,
    ready: Arc<AtomicBool>,
    task: AbortHandle,
}

impl ReplyListener {
    /// Starts consuming `topic` with a consumer made from `config` (the broker's client settings), handing replies to
    /// `replies`. Keeps trying (with backoff) while the topic is unknown or Kafka is down.
    pub fn start(broker: &str, topic: &str, config: ClientConfig, replies: Arc<Replies>) -> ReplyListener {
        let ready = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(listen(broker.to_owned(), topic.to_owned(), config, replies, ready.clone()));
        ReplyListener { topic: topic.to_owned(), ready, task: task.abort_handle() }
    }

    /// Whether it consumes from the end of every partition now (requests may be sent).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The reply topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Drop for ReplyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(broker: String, topic: String, config: ClientConfig, replies: Arc<Replies>, ready: Arc<AtomicBool>) {
    let mut backoff = Attempts::new(Backoff::new(Duration::from_millis(200), Duration::from_secs(5)));
    let consumer = loop {
        match assigned_at_end(&config, &topic).await {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(broker = %broker, topic = %topic, error = %e, "kafka reply topic not ready; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    ready.store(true, Ordering::Release);
    tracing::info!(broker = %broker, topic = %topic, "listening for kafka replies");
    loop {
        match consumer.recv().await {
            Ok(m) => {
                let mut headers = Vec::new();
                let mut correlation = None;
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                        if h.key == CORRELATION_HEADER {
                            correlation = Some(value.clone());
                        }
                        headers.push((h.key.to_ascii_lowercase(), value));
                    }
                }
                let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone());
                let body = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                replies.deliver(correlation.as_deref(), Reply { body, content_type, headers });
            }
            Err(e) => {
                tracing::debug!(broker = %broker, topic = %topic, error = %e, "kafka reply consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A consumer assigned every partition of `topic` at its current end (high watermark).
async fn assigned_at_end(config: &ClientConfig, topic: &str) -> Result<StreamConsumer, String> {
    let mut config = config.clone();
    // Replies are waited for: fetch them as soon as they are written.
    config.set("fetch.wait.max.ms", "10");
    let consumer: StreamConsumer = config.create().map_err(|e| e.to_string())?;
    let consumer = Arc::new(consumer);
    let (c, t) = (consumer.clone(), topic.to_owned());
    let tpl = tokio::task::spawn_blocking(move || -> Result<TopicPartitionList, String> {
        let metadata = c.fetch_metadata(Some(&t), LOOKUP_TIMEOUT).map_err(|e| e.to_string())?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|m| m.name() == t && m.error().is_none())
            .map(|m| m.partitions().len())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("topic {t:?} does not exist"))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let p = i32::try_from(p).map_err(|e| e.to_string())?;
            let (_, high) = c.fetch_watermarks(&t, p, LOOKUP_TIMEOUT).map_err(|e| e.to_string())?;
            tpl.add_partition_offset(&t, p, Offset::Offset(high)).map_err(|e| e.to_string())?;
        }
        Ok(tpl)
    })
    .await
    .map_err(|e| e.to_string())??;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    Arc::try_unwrap(consumer).map_err(|_| "the consumer is still shared".to_owned())
}

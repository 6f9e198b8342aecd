//! The replies of request-reply routes over SQS: each gateway process creates a reply queue of its own,
//! `{reply_queue}-{instance}`, so that several replicas never take each other's replies (AWS's temporary-queue
//! pattern), long-polls it, hands each reply to the request waiting under its `sluice-correlation-id`, and deletes
//! it. The queue is deleted when the broker is flushed at shutdown; one left by a killed process is named with its
//! process' id and can be removed by hand (or by an SQS queue retention policy).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_sqs::Client;
use bytes::Bytes;

use super::kafka_replies::CORRELATION_HEADER;
use super::reply::{Replies, Reply};
use crate::backoff::{Attempts, Backoff};

/// This process' part of its reply queues' names.
fn instance() -> &'static str {
    static INSTANCE: OnceLock<String> = OnceLock::new();
    INSTANCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
}

/// One reply queue of this process and the task receiving from it.
pub struct SqsReplyListener {
    /// The queue's URL, once it exists.
    url: Arc<OnceLock<String>>,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SqsReplyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SqsReplyListener {
    /// Creates this process' queue for `reply_queue` and starts receiving from it.
    pub fn start(broker: &str, reply_queue: &str, client: Client, replies: Arc<Replies>) -> SqsReplyListener {
        let name = format!("{reply_queue}-{}", instance());
        let (url, ready) = (Arc::new(OnceLock::new()), Arc::new(AtomicBool::new(false)));
        let task = tokio::spawn(receive(broker.to_owned(), name, client, replies, url.clone(), ready.clone()));
        SqsReplyListener { url, ready, task }
    }

    /// Whether the queue exists and is received from.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The queue's URL (the requests' `sluice-reply-to`), once it exists.
    #[must_use]
    pub fn url(&self) -> Option<&str> {
        self.url.get().map(String::as_str)
    }
}

async fn receive(
    broker: String,
    name: String,
    client: Client,
    replies: Arc<Replies>,
    url: Arc<OnceLock<String>>,
    ready: Arc<AtomicBool>,
) {
    let mut backoff = Attempts::new(Backoff::new(Duration::from_millis(200), Duration::from_secs(5)));
    let queue_url = loop {
        match client.create_queue().queue_name(&name).send().await {
            Ok(out) => break out.queue_url().unwrap_or_default().to_owned(),
            Err(e) => {
                let e = aws_sdk_sqs::error::DisplayErrorContext(&e);
                tracing::warn!(broker = %broker, queue = %name, error = %e, "sqs reply queue not created yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let _ = url.set(queue_url.clone());
    ready.store(true, Ordering::Release);
    tracing::info!(broker = %broker, queue = %name, "listening for sqs replies");
    loop {
        let received = client
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(10)
            .message_attribute_names("All")
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(broker = %broker, queue = %name, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "sqs reply receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in messages {
            let mut headers: Vec<(String, String)> = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.string_value?)))
                .collect();
            let correlation = headers.iter().find(|(k, _)| k == CORRELATION_HEADER).map(|(_, v)| v.clone());
            let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone());
            headers.retain(|(k, _)| k != "sluice-body-encoding");
            let body = Bytes::from(m.body.unwrap_or_default());
            replies.deliver(correlation.as_deref(), Reply { body, content_type, headers });
            if let Some(receipt) = m.receipt_handle {
                let _ = client.delete_message().queue_url(&queue_url).receipt_handle(receipt).send().await;
            }
        }
    }
}

/// Deletes this process' reply queue (at shutdown).
pub async fn remove(client: &Client, listener: &SqsReplyListener) {
    if let Some(url) = listener.url() {
        let _ = client.delete_queue().queue_url(url).send().await;
    }
}

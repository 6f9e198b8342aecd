//! Amazon SQS (and SQS-compatible servers such as ElasticMQ, through `endpoint`) with the official `aws-sdk-sqs`:
//! `SendMessage`, answered once SQS returned the message's id (SQS stores a message before it answers).
//!
//! - The body is the request body when it is UTF-8 text; other bytes are sent base64-encoded, with the attribute
//!   `sluice-body-encoding: base64` (an SQS body must be text).
//! - The metadata (DESIGN.md §4: `sluice-id`, `sluice-route`, `x-request-id`, `traceparent`, forwarded headers…) and
//!   `content-type` are String message attributes. SQS allows 10 attributes a message: past the ninth, the rest go
//!   together into one attribute `sluice-headers`, a JSON object.
//! - FIFO queues (`.fifo`) get a `MessageGroupId` and a `MessageDeduplicationId` (the route's templates; by default the
//!   route's name and the `Idempotency-Key`, else the `sluice-id`).
//! - Queue URLs are looked up once per queue name (a name that is a URL is used as it is).
//! - Errors: an unknown queue is unroutable (502); a message SQS refuses (too large, invalid characters, bad
//!   attribute) is rejected (502); anything else (no connection, throttling, 5xx, timeouts) is unavailable (503).
//!   Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::PublishError;
use super::kafka_replies::{CORRELATION_HEADER, REPLY_TO_HEADER};
use super::message::{Ack, Destination, Message, Receipt};
use super::reply::{Replies, Waiter};
use super::sqs_replies::{SqsReplyListener, remove};

/// Most message attributes SQS takes.
const MAX_ATTRIBUTES: usize = 10;
/// The longest wait for one SQS call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one configured SQS broker. Cheap to clone.
#[derive(Clone)]
pub struct SqsPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    client: Client,
    up: AtomicBool,
    /// Queue name → URL.
    urls: RwLock<HashMap<String, String>>,
    /// Requests of request-reply routes waiting for their replies.
    replies: Arc<Replies>,
    /// This process' reply queue per configured `reply_queue`.
    listeners: Mutex<HashMap<String, Arc<SqsReplyListener>>>,
}

impl SqsPublisher {
    /// A client for `endpoint` (or AWS's for `region`). Succeeds while SQS is unreachable: `is_up` says when it
    /// answers.
    pub fn connect(name: &str, endpoint: Option<&str>, region: &str) -> Result<SqsPublisher, PublishError> {
        let client = client(endpoint, region)?;
        let publisher = SqsPublisher {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                client,
                up: AtomicBool::new(false),
                urls: RwLock::new(HashMap::new()),
                replies: Arc::new(Replies::default()),
                listeners: Mutex::new(HashMap::new()),
            }),
        };
        let probe = publisher.clone();
        tokio::spawn(async move { probe.watch().await });
        Ok(publisher)
    }

    /// The SDK client (subscriptions receive through it).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Checks every few seconds that SQS answers (`ListQueues`), for `is_up`; stops with the last clone.
    async fn watch(self) {
        let weak = Arc::downgrade(&self.inner);
        drop(self);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let answered = inner.client.list_queues().max_results(1).send().await.is_ok();
            let was = inner.up.swap(answered, Ordering::Relaxed);
            if was != answered {
                tracing::info!(broker = %inner.name, up = answered, "sqs reachability changed");
            }
            drop(inner);
            tokio::time::sleep(Duration::from_secs(if answered { 5 } else { 1 })).await;
        }
    }

    /// Sends one message; see [`crate::publish::Publisher::publish`]. `Ack::None` is the same as `Ack::Confirm`:
    /// `SendMessage` answers once SQS has the message.
    pub async fn publish(&self, msg: Message, _ack: Ack) -> Result<Receipt, PublishError> {
        let Destination::Sqs { queue, group_id, dedup_id } = &msg.destination else {
            return Err(PublishError::config(
                format!("sqs broker {:?} got another broker's destination", self.inner.name),
                None,
            ));
        };
        let url = self.queue_url(queue).await?;
        let (body, base64) = match std::str::from_utf8(&msg.body) {
            Ok(text) => (text.to_owned(), false),
            Err(_) => (STANDARD.encode(&msg.body), true),
        };
        let mut send = self.inner.client.send_message().queue_url(url).message_body(body);
        for (name, value) in attributes(&msg, base64) {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| PublishError::rejected(format!("sqs attribute {name:?}: {e}"), None))?;
            send = send.message_attributes(name, value);
        }
        if queue.ends_with(".fifo") {
            send = send.message_group_id(group_id.clone().unwrap_or_default());
            send = send.message_deduplication_id(dedup_id.clone().unwrap_or_else(|| msg.id.clone()));
        }
        match send.send().await {
            Ok(_) => {
                self.inner.up.store(true, Ordering::Relaxed);
                Ok(Receipt::Sqs)
            }
            Err(e) => Err(self.map_error(e, queue)),
        }
    }

    /// Starts (once) receiving the replies of `reply_queue` on a queue of this process' own.
    pub fn listen(&self, reply_queue: &str) {
        let mut listeners = self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if !listeners.contains_key(reply_queue) {
            let listener = SqsReplyListener::start(
                &self.inner.name,
                reply_queue,
                self.inner.client.clone(),
                self.inner.replies.clone(),
            );
            listeners.insert(reply_queue.to_owned(), Arc::new(listener));
        }
    }

    /// Whether replies for `reply_queue` are received.
    #[must_use]
    pub fn listening(&self, reply_queue: &str) -> bool {
        self.listener(reply_queue).is_some_and(|l| l.is_ready())
    }

    fn listener(&self, reply_queue: &str) -> Option<Arc<SqsReplyListener>> {
        self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).get(reply_queue).cloned()
    }

    /// Sends a request with the attributes `sluice-correlation-id` (its `sluice-id`) and `sluice-reply-to` (this
    /// process' reply queue's URL), and returns what waits for the reply. `503` until that queue exists.
    pub async fn request(&self, mut msg: Message, reply_queue: &str) -> Result<Waiter, PublishError> {
        let Some(reply_to) =
            self.listener(reply_queue).filter(|l| l.is_ready()).and_then(|l| l.url().map(str::to_owned))
        else {
            return Err(PublishError::unavailable(format!("no reply queue for {reply_queue:?} yet"), None));
        };
        msg.headers.push((CORRELATION_HEADER.into(), msg.id.clone()));
        msg.headers.push((REPLY_TO_HEADER.into(), reply_to));
        let waiter = self.inner.replies.wait(&msg.id);
        self.publish(msg, Ack::Confirm).await?;
        Ok(waiter)
    }

    /// The requests waiting for replies.
    #[must_use]
    pub fn replies(&self) -> &Arc<Replies> {
        &self.inner.replies
    }

    /// At shutdown: deletes this process' reply queues.
    pub async fn flush(&self, timeout: Duration) {
        let listeners: Vec<_> =
            self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let removals = listeners.iter().map(|l| remove(&self.inner.client, l));
        let _ = tokio::time::timeout(timeout, futures_util::future::join_all(removals)).await;
    }

    /// The URL of `queue` (a name, or already a URL).
    pub async fn queue_url(&self, queue: &str) -> Result<String, PublishError> {
        if queue.starts_with("http://") || queue.starts_with("https://") {
            return Ok(queue.to_owned());
        }
        if let Some(url) = self.inner.urls.read().unwrap_or_else(|e| e.into_inner()).get(queue) {
            return Ok(url.clone());
        }
        let found =
            self.inner.client.get_queue_url().queue_name(queue).send().await.map_err(|e| self.map_error(e, queue))?;
        let url = found.queue_url().unwrap_or_default().to_owned();
        let mut urls = self.inner.urls.write().unwrap_or_else(|e| e.into_inner());
        if urls.len() >= 10_000 {
            urls.clear();
        }
        urls.insert(queue.to_owned(), url.clone());
        Ok(url)
    }

    fn map_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E>,
        queue: &str,
    ) -> PublishError {
        let code = e.code().unwrap_or_default().to_owned();
        let reason = format!("sqs queue {queue:?}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
        match code.as_str() {
            "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                self.inner.urls.write().unwrap_or_else(|e| e.into_inner()).remove(queue);
                PublishError::unroutable(reason, None)
            }
            "InvalidMessageContents"
            | "InvalidParameterValue"
            | "InvalidAttributeName"
            | "InvalidAttributeValue"
            | "MissingParameter"
            | "UnsupportedOperation"
            | "AccessDenied"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch" => PublishError::rejected(reason, None),
            _ => {
                if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) {
                    self.inner.up.store(false, Ordering::Relaxed);
                }
                PublishError::unavailable(reason, None)
            }
        }
    }

    /// True while SQS answered the last check or call.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Broker name from the config.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

/// The SDK client: static credentials from the environment, rustls with ring, bounded call times.
fn client(endpoint: Option<&str>, region: &str) -> Result<Client, PublishError> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credentials = Credentials::new(
        var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        var("AWS_SESSION_TOKEN"),
        None,
        "environment",
    );
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(CALL_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT * 2)
        .build();
    let mut config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(credentials)
        .timeout_config(timeouts)
        .http_client(http);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    Ok(Client::from_conf(config.build()))
}

/// The message attributes of `msg`: `content-type`, then its headers; past the ninth, the rest in `sluice-headers`.
fn attributes(msg: &Message, base64: bool) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = Vec::with_capacity(msg.headers.len() + 2);
    if let Some(ct) = &msg.content_type {
        all.push(("content-type".to_owned(), ct.clone()));
    }
    if base64 {
        all.push(("sluice-body-encoding".to_owned(), "base64".to_owned()));
    }
    all.extend(
        msg.headers.iter().filter(|(k, v)| valid_name(k) && !v.is_empty()).map(|(k, v)| (k.to_string(), v.clone())),
    );
    if all.len() <= MAX_ATTRIBUTES {
        return all;
    }
    let rest: serde_json::Map<String, serde_json::Value> =
        all.split_off(MAX_ATTRIBUTES - 1).into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    all.push(("sluice-headers".to_owned(), serde_json::Value::Object(rest).to_string()));
    all
}

/// SQS attribute names: letters, digits, `-`, `_`, `.`; not starting with `AWS.` or `Amazon.`; up to 256.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.to_ascii_lowercase().starts_with("aws.")
        && !name.to_ascii_lowercase().starts_with("amazon.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn more_than_ten_attributes_share_one_json_attribute() {
        let headers = (0..15).map(|i| (format!("h{i}").into(), format!("v{i}"))).collect();
        let msg = Message {
            id: "i".into(),
            body: Bytes::new(),
            content_type: Some("text/plain".into()),
            headers,
            destination: Destination::Sqs { queue: "q".into(), group_id: None, dedup_id: None },
        };
        let attrs = attributes(&msg, false);
        assert_eq!(attrs.len(), MAX_ATTRIBUTES);
        assert_eq!(attrs[0], ("content-type".to_owned(), "text/plain".to_owned()));
        let (name, rest) = &attrs[9];
        assert_eq!(name, "sluice-headers");
        let rest: serde_json::Value = serde_json::from_str(rest).unwrap();
        assert_eq!(rest["h8"], "v8");
        assert_eq!(rest["h14"], "v14");
    }

    #[test]
    fn attribute_names_follow_sqs_rules() {
        assert!(valid_name("x-request-id") && valid_name("ce_type") && valid_name("sluice.id"));
        assert!(!valid_name("AWS.trace") && !valid_name("a b") && !valid_name(".x") && !valid_name("a..b"));
    }
}

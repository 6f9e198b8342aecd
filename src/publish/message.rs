//! What is published ([`Message`] to a [`Destination`]), how it is acknowledged ([`Ack`]), and what
//! the broker confirmed ([`Receipt`]).

use std::borrow::Cow;

use bytes::Bytes;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Kafka topic.
    Kafka {
        /// Topic name (already rendered from the route's template).
        topic: String,
        /// Record key; records with the same key land on the same partition.
        key: Option<Bytes>,
        /// The partition, when the client chose one (drop-in produce APIs); else the key's (or any).
        partition: Option<i32>,
    },
    /// An SQS queue.
    Sqs {
        /// The queue's name or URL.
        queue: String,
        /// FIFO queues: `MessageGroupId`.
        group_id: Option<String>,
        /// FIFO queues: `MessageDeduplicationId` (the `sluice-id` when absent).
        dedup_id: Option<String>,
    },
    /// An AMQP 0-9-1 exchange (RabbitMQ).
    Amqp {
        /// Exchange name; `""` is the default exchange (routing key = queue name).
        exchange: String,
        /// Routing key (already rendered from the route's template).
        routing_key: String,
        /// `delivery_mode = 2` when true, `1` otherwise.
        persistent: bool,
    },
}

/// One message, already rendered from the HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The `sluice-id` (a UUIDv7); also the AMQP `message_id` property.
    pub id: String,
    /// The request body, published byte for byte.
    pub body: Bytes,
    /// The request's `content-type`: a Kafka record header, the AMQP `content_type` property.
    pub content_type: Option<String>,
    /// Metadata with lower-cased names (`sluice-id`, `sluice-route`, `x-request-id`, `traceparent`,
    /// `tracestate`, forwarded headers, `ce_*` / `cloudEvents:*` attributes), built by the caller.
    /// Kafka record headers; AMQP headers as long strings. The gateway's own names are borrowed, not copied per
    /// message.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// Where the message goes.
    pub destination: Destination,
}

impl Message {
    /// A new `sluice-id`: a UUIDv7 (time-ordered), hyphenated lower-case.
    #[must_use]
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// Adds `traceparent` (and `tracestate`) to the metadata, so that a consumer's span continues the trace.
    pub fn set_trace(&mut self, traceparent: &str, tracestate: Option<&str>) {
        self.headers.retain(|(k, _)| k != "traceparent" && k != "tracestate");
        self.headers.push((Cow::Borrowed("traceparent"), traceparent.to_owned()));
        if let Some(ts) = tracestate {
            self.headers.push((Cow::Borrowed("tracestate"), ts.to_owned()));
        }
    }
}

/// How long the caller waits before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ack {
    /// Wait for the broker: the Kafka delivery report (`acks=all`) or the AMQP publisher confirm.
    #[default]
    Confirm,
    /// Return once the message is handed to the client library: at-most-once, a later broker failure
    /// is only logged.
    None,
}

/// What the broker confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Kafka stored the record at this partition and offset.
    Kafka {
        /// Partition the record was written to.
        partition: i32,
        /// Offset of the record within the partition.
        offset: i64,
    },
    /// RabbitMQ confirmed the message (routed to at least one queue).
    Amqp,
    /// Handed to the client library without waiting for the broker (`Ack::None`).
    Unconfirmed,
    /// SQS has the message (`SendMessage` answered).
    Sqs,
    /// The broker was unreachable: appended to the broker's spool and fsync'd, to be published when it is back.
    Spooled,
}

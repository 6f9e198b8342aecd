//! The action of a `publish` route: request → message (templates, metadata, CloudEvents) → a PRODUCER span whose
//! context rides in the message → the broker's confirm → `202 Accepted` with the receipt.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;

use super::backlog::Backlog;
use super::destination::NameRules;
use super::encoder::{Encoder, Envelope};
use super::error::PublishError;
use super::message::{Ack, Destination, Message, Receipt};
use super::publisher::Publisher;
use crate::body::{Body, Prepared};
use crate::config::PublishApi;
use crate::problem::GatewayError;
use crate::request::{context, facts, request_id};
use crate::telemetry::{PublishMetrics, Span, TraceContext, Tracer};

/// A compiled `publish` route.
#[derive(Debug)]
pub struct PublishRoute {
    /// Route name (`sluice-route`, `{route}`).
    pub name: std::sync::Arc<str>,
    /// Broker name (for receipts, logs and metrics).
    pub broker_name: String,
    /// The broker's producer.
    pub publisher: Publisher,
    /// Request → message.
    pub encoder: Encoder,
    /// What the rendered topic or routing key must look like.
    pub names: NameRules,
    /// `confirm` or `none`.
    pub ack: Ack,
    /// Makes the PRODUCER span.
    pub tracer: Tracer,
    /// Metric handles.
    pub metrics: PublishMetrics,
    /// `max_backlog`: the destination's sampled backlog and its bound.
    pub backlog: Option<Backlog>,
    /// `api`: the produce API the route speaks instead of one message per request.
    pub api: Option<PublishApi>,
}

/// Publishes one request and answers with its receipt (or, with `publish.api`, in that API's shape).
pub async fn publish(route: Arc<PublishRoute>, req: Request<Prepared>) -> Result<Response<Body>, GatewayError> {
    if route.backlog.as_ref().is_some_and(Backlog::over) {
        route.metrics.outcome("backlogged").inc();
        return Err(GatewayError::Backlogged);
    }
    if let Some(api) = route.api {
        return super::api::handle(api, route, req).await;
    }
    let body = req.body().bytes().cloned().unwrap_or_default();
    let message = route.message(&req, body)?;
    let (id, destination) = (message.id.clone(), message.destination.clone());
    let receipt = route.send(&req, message, route.ack).await.map_err(|e| GatewayError::from(&e))?;
    Ok(accepted(receipt_body(&route.broker_name, &id, &destination, receipt)))
}

impl PublishRoute {
    /// The message of `body` for this request: metadata, rendered destination (checked against the allow-lists).
    pub fn message(&self, req: &Request<Prepared>, body: Bytes) -> Result<Message, GatewayError> {
        let env = Envelope { route: &self.name, request_id: request_id(req) };
        let message = self.encoder.encode(req.headers(), &context(req, &self.name), body, &env)?;
        self.names.check(&message.destination)?;
        Ok(message)
    }

    /// Publishes one message of `req` under a PRODUCER span whose context rides in the message, and counts it.
    pub async fn send(&self, req: &Request<Prepared>, mut message: Message, ack: Ack) -> Result<Receipt, PublishError> {
        let mut span = producer_span(&self.tracer, &facts(req).trace, &self.broker_name, &message);
        let traceparent = span.cx.traceparent();
        let tracestate = span.cx.tracestate.as_ref().and_then(|v| v.to_str().ok());
        message.set_trace(traceparent.to_str().unwrap_or_default(), tracestate);
        let start = Instant::now();
        let result = self.publisher.publish(message, ack).await;
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        let receipt = match result {
            Ok(r) => r,
            Err(e) => {
                self.metrics.outcome(e.outcome()).inc();
                span.set(|| KeyValue::new("error.type", e.outcome()));
                span.error(e.outcome());
                tracing::warn!(route = %self.name, broker = %self.broker_name, error = %e, "publish failed");
                return Err(e);
            }
        };
        if let Receipt::Kafka { partition, offset } = receipt {
            span.set(|| KeyValue::new("messaging.destination.partition.id", partition.to_string()));
            span.set(|| KeyValue::new("messaging.kafka.offset", offset));
        }
        let outcome = match receipt {
            Receipt::Unconfirmed => "unconfirmed",
            Receipt::Spooled => "spooled",
            Receipt::Kafka { .. } | Receipt::Amqp | Receipt::Sqs => "confirmed",
        };
        self.metrics.outcome(outcome).inc();
        Ok(receipt)
    }
}

/// The PRODUCER span of one publish (OpenTelemetry messaging conventions), also of a request-reply's request.
pub fn producer_span(tracer: &Tracer, parent: &TraceContext, broker: &str, message: &Message) -> Span {
    let (system, name) = match &message.destination {
        Destination::Kafka { topic, .. } => ("kafka", topic.as_str()),
        Destination::Sqs { queue, .. } => ("aws_sqs", queue.as_str()),
        Destination::Amqp { exchange, routing_key, .. } if exchange.is_empty() => ("rabbitmq", routing_key.as_str()),
        Destination::Amqp { exchange, .. } => ("rabbitmq", exchange.as_str()),
    };
    tracer.child(parent, SpanKind::Producer, None, &["send ", name], |a| {
        a.str("messaging.system", system);
        a.str("messaging.operation.type", "send");
        a.str("messaging.operation.name", "send");
        a.str("messaging.destination.name", name);
        a.str("messaging.message.id", &message.id);
        a.int("messaging.message.body.size", message.body.len() as i64);
        a.str("sluice.broker", broker);
        if let Destination::Amqp { routing_key, .. } = &message.destination {
            a.str("messaging.rabbitmq.destination.routing_key", routing_key);
        }
    })
}

/// The `202` document: the message id and where the broker stored it, its keys in alphabetical order (the order it
/// had when it was built as a `serde_json::Value`, whose map sorts its keys). Written by hand rather than serialized
/// because it is on every publish's path: serde_json escapes every key and value byte by byte (~1,000 instructions
/// a message by callgrind); here a string is copied as is unless it holds a byte JSON must escape.
fn receipt_body(broker: &str, id: &str, destination: &Destination, receipt: Receipt) -> Bytes {
    let mut out = Vec::with_capacity(RECEIPT_CAPACITY + id.len() + broker.len());
    out.extend_from_slice(b"{\"broker\":");
    json_str(&mut out, broker);
    if let Receipt::Unconfirmed = receipt {
        out.extend_from_slice(b",\"confirmed\":false");
    }
    if let Destination::Amqp { exchange, .. } = destination {
        out.extend_from_slice(b",\"exchange\":");
        json_str(&mut out, exchange);
    }
    out.extend_from_slice(b",\"id\":");
    json_str(&mut out, id);
    if let (Destination::Kafka { .. }, Receipt::Kafka { partition, offset }) = (destination, receipt) {
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
        out.extend_from_slice(b",\"partition\":");
        out.extend_from_slice(itoa::Buffer::new().format(partition).as_bytes());
    }
    if let Destination::Sqs { queue, .. } = destination {
        out.extend_from_slice(b",\"queue\":");
        json_str(&mut out, queue);
    }
    if let Destination::Amqp { routing_key, .. } = destination {
        out.extend_from_slice(b",\"routing_key\":");
        json_str(&mut out, routing_key);
    }
    if let Receipt::Spooled = receipt {
        out.extend_from_slice(b",\"spooled\":true");
    }
    if let Destination::Kafka { topic, .. } = destination {
        out.extend_from_slice(b",\"topic\":");
        json_str(&mut out, topic);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Bytes of a receipt beyond its id and broker name, with a destination of typical length: one allocation.
const RECEIPT_CAPACITY: usize = 96;

/// Appends `s` as a JSON string: copied between quotes when nothing in it needs escaping (control characters, `"`
/// and `\\`, as serde_json escapes), else escaped by serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

fn accepted(body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = StatusCode::ACCEPTED;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The document as it was built before, with `serde_json::Value`.
    fn as_value(broker: &str, id: &str, destination: &Destination, receipt: Receipt) -> Vec<u8> {
        let mut doc = json!({ "id": id, "broker": broker });
        match destination {
            Destination::Kafka { topic, .. } => {
                doc["topic"] = json!(topic);
                if let Receipt::Kafka { partition, offset } = receipt {
                    doc["partition"] = json!(partition);
                    doc["offset"] = json!(offset);
                }
            }
            Destination::Amqp { exchange, routing_key, .. } => {
                doc["exchange"] = json!(exchange);
                doc["routing_key"] = json!(routing_key);
            }
            Destination::Sqs { queue, .. } => doc["queue"] = json!(queue),
        }
        match receipt {
            Receipt::Unconfirmed => doc["confirmed"] = json!(false),
            Receipt::Spooled => doc["spooled"] = json!(true),
            Receipt::Kafka { .. } | Receipt::Amqp | Receipt::Sqs => {}
        }
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn receipts_are_the_same_bytes_as_before() {
        let kafka = Destination::Kafka { topic: "orders.\"acme\"".into(), key: None, partition: None };
        let plain = Destination::Kafka { topic: "orders.acme-1_x".into(), key: None, partition: None };
        let amqp = Destination::Amqp { exchange: "".into(), routing_key: "jobs".into(), persistent: true };
        let odd = Destination::Amqp {
            exchange: "a\\b\u{1}".into(),
            routing_key: "k\u{e9}/\t\u{7f}".into(),
            persistent: false,
        };
        let sqs = Destination::Sqs { queue: "q.fifo".into(), group_id: None, dedup_id: None };
        let cases = [
            (&kafka, Receipt::Kafka { partition: 2, offset: -1 }),
            (&kafka, Receipt::Kafka { partition: 0, offset: i64::MAX }),
            (&kafka, Receipt::Unconfirmed),
            (&kafka, Receipt::Spooled),
            (&plain, Receipt::Kafka { partition: i32::MIN, offset: 0 }),
            (&amqp, Receipt::Amqp),
            (&odd, Receipt::Amqp),
            (&amqp, Receipt::Unconfirmed),
            (&amqp, Receipt::Spooled),
            (&sqs, Receipt::Sqs),
            (&sqs, Receipt::Spooled),
        ];
        for (destination, receipt) in cases {
            let id = "01a23010-d345-71e4-a42f-7af258a653a4";
            assert_eq!(
                receipt_body("ev\u{e9}nts", id, destination, receipt).as_ref(),
                as_value("ev\u{e9}nts", id, destination, receipt).as_slice(),
                "{destination:?} {receipt:?}"
            );
        }
    }
}

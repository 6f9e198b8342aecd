//! Request → message: the body byte for byte, and the metadata of DESIGN.md §4 (content type, `sluice-id`,
//! route, request id, forwarded headers, CloudEvents binary-mode attributes). The trace context is added by the
//! publish route once its PRODUCER span exists ([`Message::set_trace`]).

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

use super::message::{Destination, Message};
use crate::template::{Missing, RenderContext, Template};

/// Where a route's messages go, with its templates.
#[derive(Debug)]
pub enum Target {
    /// A Kafka topic.
    Kafka {
        /// Topic template.
        topic: Template,
        /// Record key template.
        key: Option<Template>,
    },
    /// An SQS queue.
    Sqs {
        /// The queue's name or URL.
        queue: String,
        /// FIFO: the message group template.
        group: Template,
        /// FIFO: the deduplication id template (default: the `Idempotency-Key`, else the `sluice-id`).
        dedup: Option<Template>,
    },
    /// An AMQP exchange.
    Amqp {
        /// Exchange name.
        exchange: String,
        /// Routing key template.
        routing_key: Template,
        /// delivery_mode 2.
        persistent: bool,
    },
}

/// CloudEvents binding of the broker kind.
#[derive(Debug)]
pub struct CloudEvents {
    /// `type` template.
    pub ce_type: Template,
    /// `source` template.
    pub ce_source: Template,
}

/// Everything needed to turn a request into a message.
#[derive(Debug)]
pub struct Encoder {
    /// Destination templates.
    pub target: Target,
    /// Binary-mode CloudEvents, when `format = "cloudevents"`.
    pub cloudevents: Option<CloudEvents>,
    /// Request headers copied into the metadata.
    pub headers: Vec<HeaderName>,
}

/// Facts about the request that are not in its parts.
pub struct Envelope<'a> {
    /// Route name.
    pub route: &'a str,
    /// `x-request-id`.
    pub request_id: &'a str,
}

impl Encoder {
    /// Builds the message; a template value missing from the request is a [`Missing`].
    pub fn encode(
        &self,
        headers: &HeaderMap,
        cx: &RenderContext<'_>,
        body: Bytes,
        env: &Envelope<'_>,
    ) -> Result<Message, Missing> {
        let destination = match &self.target {
            Target::Kafka { topic, key } => Destination::Kafka {
                topic: topic.render(cx)?,
                key: key.as_ref().map(|k| k.render(cx).map(Bytes::from)).transpose()?,
                partition: None,
            },
            Target::Sqs { queue, group, dedup } => Destination::Sqs {
                queue: queue.clone(),
                group_id: Some(group.render(cx)?),
                dedup_id: match dedup {
                    Some(t) => Some(t.render(cx)?),
                    None => headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned),
                },
            },
            Target::Amqp { exchange, routing_key, persistent } => Destination::Amqp {
                exchange: exchange.clone(),
                routing_key: routing_key.render(cx)?,
                persistent: *persistent,
            },
        };
        let id = Message::new_id();
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request_headers = headers;
        let mut headers = Vec::with_capacity(6 + self.headers.len());
        headers.push((Cow::Borrowed("sluice-id"), id.clone()));
        headers.push((Cow::Borrowed("sluice-route"), env.route.to_owned()));
        headers.push((Cow::Borrowed("x-request-id"), env.request_id.to_owned()));
        for name in &self.headers {
            if let Some(v) = request_headers.get(name).and_then(|v| v.to_str().ok()) {
                headers.push((Cow::Owned(name.as_str().to_owned()), v.to_owned()));
            }
        }
        let structured = content_type.as_deref().is_some_and(|c| c.starts_with("application/cloudevents+json"));
        if let (Some(ce), false) = (&self.cloudevents, structured) {
            let prefix = match self.target {
                // CloudEvents' SQS binding names its attributes as Kafka's does.
                Target::Kafka { .. } | Target::Sqs { .. } => "ce_",
                Target::Amqp { .. } => "cloudEvents:",
            };
            let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
            for (attr, value) in [
                ("id", id.clone()),
                ("source", ce.ce_source.render(cx)?),
                ("type", ce.ce_type.render(cx)?),
                ("specversion", "1.0".to_owned()),
                ("time", time),
            ] {
                headers.push((Cow::Owned(format!("{prefix}{attr}")), value));
            }
        }
        Ok(Message { id, body, content_type, headers, destination })
    }
}

#[cfg(test)]
mod tests {
    use http::request::Parts;
    use http::{Method, Request};

    use super::*;
    use crate::router::Params;

    fn parts(content_type: &str) -> Parts {
        Request::builder()
            .method(Method::POST)
            .uri("/events/acme/orders")
            .header("content-type", content_type)
            .header("x-order-id", "o-1")
            .header("x-tenant", "acme")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn encoder(cloudevents: bool) -> Encoder {
        Encoder {
            target: Target::Kafka {
                topic: Template::parse("orders.{path.tenant}").unwrap(),
                key: Some(Template::parse("{header.x-order-id}").unwrap()),
            },
            cloudevents: cloudevents.then(|| CloudEvents {
                ce_type: Template::parse("{route}").unwrap(),
                ce_source: Template::parse("/sluice").unwrap(),
            }),
            headers: vec![HeaderName::from_static("x-tenant")],
        }
    }

    const ENV: Envelope<'static> = Envelope { route: "order-events", request_id: "rid" };

    #[test]
    fn encodes_body_destination_and_metadata() {
        let p = parts("application/json");
        let mut params = Params::default();
        params.push("tenant", "acme");
        let cx = RenderContext::new(&p.method, &p.headers, &params, None, "order-events");
        let m = encoder(false).encode(&p.headers, &cx, Bytes::from_static(b"\xff\x00body"), &ENV).unwrap();
        assert_eq!(m.body.as_ref(), b"\xff\x00body");
        assert_eq!(
            m.destination,
            Destination::Kafka { topic: "orders.acme".into(), key: Some(Bytes::from_static(b"o-1")), partition: None }
        );
        let h: std::collections::HashMap<_, _> = m.headers.iter().cloned().collect();
        assert_eq!(h["sluice-id"], m.id);
        assert_eq!(h["sluice-route"], "order-events");
        assert_eq!(h["x-tenant"], "acme");
        assert!(!h.contains_key("ce_id"));
        assert_eq!(uuid::Uuid::parse_str(&m.id).unwrap().get_version_num(), 7);
    }

    #[test]
    fn cloudevents_binary_mode_unless_structured() {
        let p = parts("application/json");
        let mut params = Params::default();
        params.push("tenant", "acme");
        let cx = RenderContext::new(&p.method, &p.headers, &params, None, "order-events");
        let m = encoder(true).encode(&p.headers, &cx, Bytes::new(), &ENV).unwrap();
        let h: std::collections::HashMap<_, _> = m.headers.iter().cloned().collect();
        assert_eq!(h["ce_id"], m.id);
        assert_eq!(h["ce_type"], "order-events");
        assert_eq!(h["ce_source"], "/sluice");
        assert_eq!(h["ce_specversion"], "1.0");
        assert!(h["ce_time"].ends_with('Z'));
        let p = parts("application/cloudevents+json; charset=utf-8");
        let cx = RenderContext::new(&p.method, &p.headers, &params, None, "order-events");
        let m = encoder(true).encode(&p.headers, &cx, Bytes::new(), &ENV).unwrap();
        assert!(!m.headers.iter().any(|(k, _)| k.starts_with("ce_")));
    }

    #[test]
    fn missing_template_values_are_named() {
        let p = parts("text/plain");
        let params = Params::default();
        let cx = RenderContext::new(&p.method, &p.headers, &params, None, "r");
        let err = encoder(false).encode(&p.headers, &cx, Bytes::new(), &ENV).unwrap_err();
        assert_eq!(err.0, "path parameter tenant");
    }
}

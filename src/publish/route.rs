//! A compiled `publish` route and its request path: read the body, honour `Idempotency-Key`, encode, publish,
//! and answer `202` with the broker's receipt only once the broker took the message (unless `ack = "none"`).

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use tokio::time::Instant;

use super::encoder::{Encoder, Envelope, Target};
use super::idempotency::{Begin, IdempotencyStore, Stored};
use super::{Ack, PublishError, Publisher, Receipt};
use crate::body::{Body, ReadBodyError, prepare};
use crate::forward::Downstream;
use crate::problem::GatewayError;
use crate::telemetry::PublishMetrics;
use crate::template::RenderContext;

/// A compiled `publish` route.
#[derive(Debug)]
pub struct PublishRoute {
    /// Broker name (for receipts, logs and metrics).
    pub broker_name: String,
    /// The broker's producer.
    pub publisher: Publisher,
    /// Request → message.
    pub encoder: Encoder,
    /// `confirm` or `none`.
    pub ack: Ack,
    /// Remembered `Idempotency-Key`s.
    pub idempotency: IdempotencyStore,
    /// Metric handles.
    pub metrics: PublishMetrics,
}

static IDEMPOTENT_REPLAYED: header::HeaderName = header::HeaderName::from_static("idempotent-replayed");

/// Publishes one request.
pub async fn publish(
    route: &PublishRoute,
    route_name: &str,
    req: Request<Incoming>,
    ds: Downstream<'_>,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = req.into_parts();
    let body = match prepare(body, ds.max_body, true).await {
        Ok(p) => p.bytes().cloned().unwrap_or_default(),
        Err(ReadBodyError::TooLarge(limit)) => return Err(GatewayError::PayloadTooLarge { limit }),
        Err(ReadBodyError::Broken(_)) => return Err(GatewayError::BodyRead),
    };
    let key = match parts.headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| GatewayError::BadRequest("Idempotency-Key must be text".into()))?),
    };
    // Releases the key if this future is dropped (client gone) before the answer is stored.
    let mut claim = None;
    if let Some(key) = key {
        match route.idempotency.begin(key) {
            Begin::New => claim = Some(Claim { store: &route.idempotency, key }),
            Begin::InFlight => return Err(GatewayError::IdempotencyConflict),
            Begin::Replay(stored) => {
                let mut res = receipt_response(stored.status, stored.body);
                res.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
                return Ok(res);
            }
        }
    }
    let result = send(route, route_name, &parts, body, &ds).await;
    if let (Some(claim), Ok((status, body))) = (claim.take(), &result) {
        claim.complete(Stored { status: *status, body: body.clone() });
    }
    result.map(|(status, body)| receipt_response(status, body))
}

async fn send(
    route: &PublishRoute,
    route_name: &str,
    parts: &http::request::Parts,
    body: Bytes,
    ds: &Downstream<'_>,
) -> Result<(u16, Bytes), GatewayError> {
    let mut cx = RenderContext::new(&parts.method, &parts.headers, ds.params, parts.uri.query(), route_name);
    if !body.is_empty() {
        cx = cx.with_body(&body);
    }
    let traceparent = ds.trace.traceparent();
    let env = Envelope {
        route: route_name,
        request_id: ds.request_id.to_str().unwrap_or(""),
        traceparent: traceparent.to_str().unwrap_or(""),
        tracestate: ds.trace.tracestate.as_ref().and_then(|v| v.to_str().ok()),
    };
    let message = route
        .encoder
        .encode(parts, &cx, body.clone(), &env)
        .map_err(|m| GatewayError::BadRequest(format!("missing {m}")))?;
    let id = message.id.clone();
    let destination = message.destination.clone();
    let start = Instant::now();
    let result = route.publisher.publish(message, route.ack).await;
    route.metrics.duration.observe(start.elapsed().as_secs_f64());
    let receipt = match result {
        Ok(r) => r,
        Err(e) => {
            route.metrics.outcome(e.outcome()).inc();
            tracing::warn!(route = route_name, broker = %route.broker_name, error = %e, "publish failed");
            return Err(match e {
                PublishError::Unavailable { .. } => GatewayError::BrokerUnavailable,
                PublishError::Unroutable { .. } | PublishError::Rejected { .. } => GatewayError::Unroutable,
                PublishError::Config { .. } => GatewayError::Internal,
            });
        }
    };
    route.metrics.outcome(if receipt == Receipt::Unconfirmed { "unconfirmed" } else { "confirmed" }).inc();
    let mut doc = json!({ "id": id, "broker": route.broker_name });
    match (&route.encoder.target, destination, receipt) {
        (Target::Kafka { .. }, super::Destination::Kafka { topic, .. }, receipt) => {
            doc["topic"] = json!(topic);
            if let Receipt::Kafka { partition, offset } = receipt {
                doc["partition"] = json!(partition);
                doc["offset"] = json!(offset);
            }
        }
        (_, super::Destination::Amqp { exchange, routing_key, .. }, _) => {
            doc["exchange"] = json!(exchange);
            doc["routing_key"] = json!(routing_key);
        }
        _ => {}
    }
    if receipt == Receipt::Unconfirmed {
        doc["confirmed"] = json!(false);
    }
    Ok((StatusCode::ACCEPTED.as_u16(), Bytes::from(serde_json::to_vec(&doc).expect("JSON serializes"))))
}

/// An `Idempotency-Key` this request started: completed with the answer, or released when dropped (the publish
/// failed or the client went away), so that a retry with the same key is not refused forever.
struct Claim<'a> {
    store: &'a IdempotencyStore,
    key: &'a str,
}

impl Claim<'_> {
    fn complete(self, answer: Stored) {
        self.store.complete(self.key, answer);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // No-op after `complete`: `abort` only removes keys still in flight.
        self.store.abort(self.key);
    }
}

fn receipt_response(status: u16, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

//! Drop-in produce APIs (`publish.api`): a route that accepts requests, and answers, in the shape of the Strimzi
//! Kafka Bridge, Confluent REST Proxy v3 or Dapr's publish API, so that their clients can move to Sluice unchanged.
//! Behind each is the route's producer as for any publish (Kafka: idempotent, `acks=all`), one message per record.
//!
//! - [`strimzi`]: `records` → `offsets`; [`confluent`]: concatenated records → one delivery report per record;
//!   [`dapr`]: a CloudEvent per publish (`204`), and bulk publish with `failedEntries`.
//! - Errors are answered in the API's own shape (not problem+json), with no broker internals in them.
//! - Each record carries the route's metadata (`sluice-id`, `sluice-route`, trace context…) plus its own headers.

pub mod confluent;
pub mod dapr;
pub mod strimzi;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::error::PublishError;
use super::message::{Ack, Destination, Receipt};
use super::route::PublishRoute;
use crate::body::{Body, Prepared};
use crate::config::PublishApi;
use crate::problem::GatewayError;

/// Answers one request of a route with `publish.api`.
pub async fn handle(
    api: PublishApi,
    route: Arc<PublishRoute>,
    req: Request<Prepared>,
) -> Result<Response<Body>, GatewayError> {
    match api {
        PublishApi::Strimzi => strimzi::handle(&route, req).await,
        PublishApi::ConfluentV3 => confluent::handle(route, req).await,
        PublishApi::Dapr => dapr::handle(&route, req).await,
    }
}

/// Most records one request may carry (more: the request is refused before anything is published).
pub const MAX_RECORDS: usize = 10_000;
/// Most records of one request being published at once (the rest wait; the answers keep the records' order).
pub const IN_FLIGHT: usize = 64;

/// One record of a request, before it becomes a message.
#[derive(Debug, Default)]
pub struct Record {
    /// The record key (Kafka); the route's `key` template when absent.
    pub key: Option<Bytes>,
    /// The message body.
    pub value: Bytes,
    /// The message's content type; the request's when absent.
    pub content_type: Option<String>,
    /// Headers added to the route's metadata (values as text; invalid UTF-8 is replaced).
    pub headers: Vec<(String, String)>,
    /// The partition the client chose (Kafka).
    pub partition: Option<i32>,
}

/// Publishes the records of `req` at once, each to the route's destination with its own key, partition and
/// headers; the results come in the order of the records. A template the request cannot fill, or a destination
/// outside the route's allow-list, fails the whole request before anything is sent.
pub async fn publish_all(
    route: &PublishRoute,
    req: &Request<Prepared>,
    records: Vec<Record>,
    ack: Ack,
) -> Result<Vec<Result<(Destination, Receipt), PublishError>>, GatewayError> {
    if records.len() > MAX_RECORDS {
        return Err(GatewayError::BadRequest(format!("at most {MAX_RECORDS} records in one request")));
    }
    let mut messages = Vec::with_capacity(records.len());
    for record in records {
        let mut message = route.message(req, record.value)?;
        if let Destination::Kafka { key, partition, .. } = &mut message.destination {
            if record.key.is_some() {
                *key = record.key;
            }
            *partition = record.partition;
        }
        if record.content_type.is_some() {
            message.content_type = record.content_type;
        }
        // The client's headers never stand in for the gateway's metadata (ids, route, trace context, CloudEvents).
        // The gateway's own names are borrowed: listing them copies only those forwarded from the request.
        let ours: Vec<Cow<'static, str>> = message.headers.iter().map(|(k, _)| k.clone()).collect();
        message.headers.extend(
            record
                .headers
                .into_iter()
                .filter(|(k, _)| !reserved(k) && !ours.iter().any(|o| o == k))
                .map(|(k, v)| (k.into(), v)),
        );
        messages.push(message);
    }
    let sends = messages.into_iter().map(|message| async move {
        // Only the destination is reported back (Confluent names the topic): not a copy of the whole message.
        let destination = message.destination.clone();
        route.send(req, message, ack).await.map(|receipt| (destination, receipt))
    });
    Ok(futures_util::stream::iter(sends).buffered(IN_FLIGHT).collect().await)
}

/// Header names a record may not set: the gateway's own metadata.
fn reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("sluice-")
        || name.starts_with("ce_")
        || name.starts_with("ce-")
        || ["x-request-id", "traceparent", "tracestate", "content-type"].contains(&name.as_str())
}

/// A JSON answer with `status` and `content_type`.
#[must_use]
pub fn json(status: StatusCode, content_type: &'static str, body: &serde_json::Value) -> Response<Body> {
    bytes(status, content_type, Bytes::from(serde_json::to_vec(body).expect("JSON serializes")))
}

/// An answer of `body` with `status` and `content_type`.
#[must_use]
pub fn bytes(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// A bodiless answer.
#[must_use]
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::Empty);
    *res.status_mut() = status;
    res
}

/// The request's media type, lower-cased, without parameters.
#[must_use]
pub fn media_type<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// What a client may be told about a failed record: no addresses, no broker messages.
#[must_use]
pub fn failure_text(e: &PublishError) -> &'static str {
    match e {
        PublishError::Unroutable { .. } => "The specified topic or partition was not found.",
        PublishError::Rejected { .. } => "The broker refused the record.",
        PublishError::Config { .. } => "The gateway is misconfigured.",
        PublishError::Unavailable { .. } | PublishError::Nacked { .. } => {
            "The broker did not confirm the record; retry later."
        }
    }
}

/// The value of query parameter `name`.
#[must_use]
pub fn query_param(req: &Request<Prepared>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The time now as RFC 3339 (UTC, milliseconds).
#[must_use]
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

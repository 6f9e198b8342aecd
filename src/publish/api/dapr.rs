//! Dapr's publish API: `POST /v1.0/publish/{pubsub}/{topic}` and bulk publish
//! `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}` (the route's `match` path; a path with `/publish/bulk/` is a bulk
//! publish). The pub/sub component's name is the route's broker: `{pubsub}`, when the path has it, must name it.
//!
//! - A publish is wrapped in a CloudEvent as Dapr does (`specversion` 1.0, `id`, `source` = the route, `type`
//!   `com.dapr.event.sent`, `datacontenttype` = the request's `Content-Type` or `text/plain`, `data` — JSON as JSON,
//!   text as a string, other bytes as `data_base64` — `topic`, `pubsubname`, `time`, `traceparent`), published as
//!   `application/cloudevents+json`; unless `?metadata.rawPayload=true` (the body as it is) or the request is a
//!   CloudEvent already (`application/cloudevents+json`, published as it is).
//! - `204` once the broker confirmed; `500` `{"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE","message"}` when it did not,
//!   `404` `ERR_PUBSUB_NOT_FOUND` for another pub/sub name.
//! - Bulk: a JSON array of `{"entryId", "event", "contentType", "metadata"?}` (ids present and unique, else `400`
//!   `ERR_PUBSUB_EVENTS_SER`); `204` when every entry was published, else `500`
//!   `{"failedEntries":[{"entryId","error"}],"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE"}`.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{Record, empty, json, media_type, now_rfc3339, publish_all, query_param};
use crate::body::{Body, Prepared};
use crate::problem::GatewayError;
use crate::publish::message::Destination;
use crate::publish::route::PublishRoute;
use crate::request::facts;

const CLOUDEVENTS: &str = "application/cloudevents+json";

/// Answers one publish or bulk publish.
pub async fn handle(route: &PublishRoute, req: Request<Prepared>) -> Result<Response<Body>, GatewayError> {
    let pubsub = facts(&req).params.get("pubsub").unwrap_or(&route.broker_name).to_owned();
    if pubsub != route.broker_name {
        return Ok(error(StatusCode::NOT_FOUND, "ERR_PUBSUB_NOT_FOUND", &format!("pubsub {pubsub} not found")));
    }
    let raw = match query_param(&req, "metadata.rawPayload").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            let m = "rawPayload must be true or false";
            return Ok(error(StatusCode::BAD_REQUEST, "ERR_PUBSUB_REQUEST_METADATA", m));
        }
    };
    // The topic as the route renders it, for the envelope's `topic`.
    let topic = match &route.message(&req, Bytes::new())?.destination {
        Destination::Kafka { topic, .. } => topic.clone(),
        Destination::Amqp { routing_key, .. } => routing_key.clone(),
        Destination::Sqs { queue, .. } => queue.clone(),
    };
    let cx = Envelope { route: &route.name, pubsub: &pubsub, topic: &topic, traceparent: traceparent(&req) };
    if req.uri().path().contains("/publish/bulk/") {
        return bulk(route, req, raw, &cx).await;
    }
    let content_type = media_type(&req).unwrap_or_else(|| "text/plain".to_owned());
    let body = req.body().bytes().cloned().unwrap_or_default();
    let record = if raw || content_type == CLOUDEVENTS {
        Record { value: body, content_type: Some(content_type), ..Record::default() }
    } else {
        Record {
            value: cx.wrap(&content_type, Data::Bytes(&body)),
            content_type: Some(CLOUDEVENTS.into()),
            ..Record::default()
        }
    };
    let mut results = publish_all(route, &req, vec![record], route.ack).await?;
    match results.pop().expect("one result") {
        Ok(_) => Ok(empty(StatusCode::NO_CONTENT)),
        Err(e) => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            &format!("error when publishing to topic {topic} in pubsub {pubsub}: {}", super::failure_text(&e)),
        )),
    }
}

async fn bulk(
    route: &PublishRoute,
    req: Request<Prepared>,
    raw: bool,
    cx: &Envelope<'_>,
) -> Result<Response<Body>, GatewayError> {
    let body = req.body().bytes().cloned().unwrap_or_default();
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&body) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_EVENTS_SER",
            "the request body must be a JSON array of entries",
        ));
    };
    let mut ids = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    let mut records = Vec::with_capacity(entries.len());
    for entry in &entries {
        let Some(id) = entry.get("entryId").and_then(Value::as_str).filter(|id| !id.is_empty() && seen.insert(*id))
        else {
            let m = "entryId is duplicated or not present for entry";
            return Ok(error(StatusCode::BAD_REQUEST, "ERR_PUBSUB_EVENTS_SER", m));
        };
        ids.push(id.to_owned());
        let event = entry.get("event").unwrap_or(&Value::Null);
        let content_type =
            entry.get("contentType").and_then(Value::as_str).unwrap_or("text/plain").to_ascii_lowercase();
        let record = if raw || content_type == CLOUDEVENTS {
            let value = match event {
                Value::String(s) => Bytes::from(s.clone()),
                other => Bytes::from(serde_json::to_vec(other).expect("JSON serializes")),
            };
            Record { value, content_type: Some(content_type), ..Record::default() }
        } else {
            Record {
                value: cx.wrap(&content_type, Data::Json(event)),
                content_type: Some(CLOUDEVENTS.into()),
                ..Record::default()
            }
        };
        records.push(record);
    }
    let results = publish_all(route, &req, records, route.ack).await?;
    let failed: Vec<Value> = ids
        .iter()
        .zip(&results)
        .filter_map(|(id, r)| r.as_ref().err().map(|e| json!({ "entryId": id, "error": super::failure_text(e) })))
        .collect();
    if failed.is_empty() {
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let body = json!({ "failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE" });
    Ok(json(StatusCode::INTERNAL_SERVER_ERROR, "application/json", &body))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, "application/json", &json!({ "errorCode": code, "message": message }))
}

fn traceparent(req: &Request<Prepared>) -> Option<String> {
    req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// What every envelope of one request shares.
struct Envelope<'a> {
    route: &'a str,
    pubsub: &'a str,
    topic: &'a str,
    traceparent: Option<String>,
}

/// An event's data: the request body, or a bulk entry's `event`.
enum Data<'a> {
    Bytes(&'a Bytes),
    Json(&'a Value),
}

impl Envelope<'_> {
    /// The CloudEvent Dapr would publish for data of `content_type`.
    fn wrap(&self, content_type: &str, data: Data<'_>) -> Bytes {
        let mut event = json!({
            "specversion": "1.0",
            "id": uuid::Uuid::new_v4().to_string(),
            "source": self.route,
            "type": "com.dapr.event.sent",
            "datacontenttype": content_type,
            "topic": self.topic,
            "pubsubname": self.pubsub,
            "time": now_rfc3339(),
        });
        if let Some(tp) = &self.traceparent {
            event["traceparent"] = json!(tp);
            event["traceid"] = json!(tp);
        }
        let is_json = content_type == "application/json" || content_type.ends_with("+json");
        match data {
            Data::Json(v) if is_json => event["data"] = v.clone(),
            Data::Json(Value::String(s)) => event["data"] = json!(s),
            Data::Json(v) => event["data"] = v.clone(),
            Data::Bytes(b) => match (is_json, std::str::from_utf8(b)) {
                (true, Ok(_)) if serde_json::from_slice::<Value>(b).is_ok() => {
                    event["data"] = serde_json::from_slice(b).expect("checked");
                }
                (_, Ok(text)) => event["data"] = json!(text),
                (_, Err(_)) => event["data_base64"] = json!(STANDARD.encode(b)),
            },
        }
        Bytes::from(serde_json::to_vec(&event).expect("JSON serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Envelope<'static> {
        Envelope { route: "r", pubsub: "events", topic: "orders", traceparent: None }
    }

    #[test]
    fn bodies_are_wrapped_as_dapr_does() {
        let json_body = Bytes::from_static(br#"{"status":"completed"}"#);
        let event: Value = serde_json::from_slice(&cx().wrap("application/json", Data::Bytes(&json_body))).unwrap();
        assert_eq!(event["data"], json!({ "status": "completed" }));
        assert_eq!(
            (event["datacontenttype"].as_str(), event["type"].as_str()),
            (Some("application/json"), Some("com.dapr.event.sent"))
        );
        assert_eq!((event["topic"].as_str(), event["pubsubname"].as_str()), (Some("orders"), Some("events")));
        let text: Value =
            serde_json::from_slice(&cx().wrap("text/plain", Data::Bytes(&Bytes::from_static(b"hi")))).unwrap();
        assert_eq!(text["data"], "hi");
        let binary: Value =
            serde_json::from_slice(&cx().wrap("application/octet-stream", Data::Bytes(&Bytes::from_static(b"\xff"))))
                .unwrap();
        assert_eq!(binary["data_base64"], "/w==");
        let entry: Value =
            serde_json::from_slice(&cx().wrap("text/plain", Data::Json(&json!("first text message")))).unwrap();
        assert_eq!(entry["data"], "first text message");
    }
}

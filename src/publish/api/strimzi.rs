//! The Strimzi Kafka Bridge's produce API: `POST /topics/{topic}` and `POST /topics/{topic}/partitions/{partition}`
//! (route `match` paths with a `{partition}` parameter), as its OpenAPI spec and producer code define it.
//!
//! - `Content-Type`: `application/vnd.kafka.json.v2+json` (key and value are JSON, published as their JSON text),
//!   `application/vnd.kafka.binary.v2+json` (base64) or `application/vnd.kafka.text.v2+json` (strings); body
//!   `{"records":[{"key"?, "value", "partition"?, "headers"?: [{"key", "value": base64}]}]}`.
//! - `200` `{"offsets":[…]}` in `application/vnd.kafka.v2+json`, one entry per record in order: `{"partition",
//!   "offset"}`, or `{"error_code": 404 | 500, "message"}` for a record that was not stored (the bridge's way: the
//!   status stays 200). A spooled or unconfirmed record has `"partition": -1, "offset": -1`.
//! - `?async=true`: `204` once the records are handed to the producer (at-most-once, no offsets).
//! - `422` `{"error_code":422,"message"}` for a body that is not a valid record list, `415` for another content type.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{Record, empty, failure_text, json, media_type, publish_all, query_param};
use crate::body::{Body, Prepared};
use crate::policy::idempotency::DoNotStore;
use crate::problem::GatewayError;
use crate::publish::message::{Ack, Receipt};
use crate::publish::route::PublishRoute;
use crate::request::facts;

/// The bridge's answer content type.
const V2: &str = "application/vnd.kafka.v2+json";

#[derive(Clone, Copy)]
enum Format {
    Json,
    Binary,
    Text,
}

/// Answers one produce request.
pub async fn handle(route: &PublishRoute, req: Request<Prepared>) -> Result<Response<Body>, GatewayError> {
    let format = match media_type(&req).as_deref() {
        Some("application/vnd.kafka.json.v2+json") => Format::Json,
        Some("application/vnd.kafka.binary.v2+json") => Format::Binary,
        Some("application/vnd.kafka.text.v2+json") => Format::Text,
        _ => return Ok(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Content-Type for the records.")),
    };
    let path_partition = match facts(&req).params.get("partition") {
        Some(p) => match p.parse::<i32>() {
            Ok(p) => Some(p),
            Err(_) => return Ok(error(StatusCode::UNPROCESSABLE_ENTITY, "Specified partition is not a valid number")),
        },
        None => None,
    };
    let body = req.body().bytes().cloned().unwrap_or_default();
    let records = match parse(&body, format, path_partition) {
        Ok(records) => records,
        Err(message) => return Ok(error(StatusCode::UNPROCESSABLE_ENTITY, &message)),
    };
    let async_send = query_param(&req, "async").is_some_and(|v| v == "true");
    let ack = if async_send { Ack::None } else { route.ack };
    let results = publish_all(route, &req, records, ack).await?;
    if async_send {
        let mut res = empty(StatusCode::NO_CONTENT);
        res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(V2));
        return Ok(res);
    }
    let offsets: Vec<Value> = results
        .iter()
        .map(|result| match result {
            Ok((_, Receipt::Kafka { partition, offset })) => json!({ "partition": partition, "offset": offset }),
            Ok(_) => json!({ "partition": -1, "offset": -1 }),
            Err(e) => {
                let code = if e.is_unroutable() { 404 } else { 500 };
                json!({ "error_code": code, "message": failure_text(e) })
            }
        })
        .collect();
    let mut res = json(StatusCode::OK, V2, &json!({ "offsets": offsets }));
    if results.iter().any(Result::is_err) {
        // A retry with the same Idempotency-Key must publish what failed, not get this answer again.
        res.extensions_mut().insert(DoNotStore);
    }
    Ok(res)
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, V2, &json!({ "error_code": status.as_u16(), "message": message }))
}

/// The records of a `ProducerRecordList`.
fn parse(body: &[u8], format: Format, path_partition: Option<i32>) -> Result<Vec<Record>, String> {
    let invalid = || "The record list contains invalid records.".to_owned();
    let list: Value = serde_json::from_slice(body).map_err(|e| format!("Invalid JSON: {e}"))?;
    let Some(Value::Array(records)) = list.get("records") else { return Err(invalid()) };
    if list.as_object().is_some_and(|o| o.len() != 1) {
        return Err(invalid());
    }
    records
        .iter()
        .map(|r| {
            let Some(r) = r.as_object() else { return Err(invalid()) };
            if let Some(unknown) =
                r.keys().find(|k| !["key", "value", "partition", "headers", "timestamp"].contains(&k.as_str()))
            {
                return Err(format!("Unknown record field {unknown:?}"));
            }
            let value = r.get("value").ok_or_else(|| "A record needs a value".to_owned())?;
            let partition = match (r.get("partition"), path_partition) {
                (Some(_), Some(_)) => return Err("Partition specified in body and in request path".to_owned()),
                (Some(p), None) => Some(p.as_i64().and_then(|p| i32::try_from(p).ok()).ok_or_else(invalid)?),
                (None, p) => p,
            };
            let headers = match r.get("headers") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(hs)) => hs.iter().map(header).collect::<Option<Vec<_>>>().ok_or_else(invalid)?,
                Some(_) => return Err(invalid()),
            };
            let key = match r.get("key") {
                None | Some(Value::Null) => None,
                Some(k) => Some(data(k, format, "key")?),
            };
            let value = if value.is_null() { Bytes::new() } else { data(value, format, "value")? };
            Ok(Record { key, value, headers, partition, content_type: None })
        })
        .collect()
}

/// A key or value in the request's embedded format.
fn data(v: &Value, format: Format, what: &str) -> Result<Bytes, String> {
    match (format, v) {
        (Format::Json, v) => Ok(Bytes::from(serde_json::to_vec(v).expect("JSON serializes"))),
        (Format::Binary, Value::String(s)) => {
            STANDARD.decode(s).map(Bytes::from).map_err(|_| format!("The {what} is not valid base64"))
        }
        (Format::Text, Value::String(s)) => Ok(Bytes::from(s.clone())),
        (Format::Binary, _) => Err(format!("Because the embedded format is 'binary', the {what} must be a string")),
        (Format::Text, _) => Err(format!("Because the embedded format is 'text', the {what} must be a string")),
    }
}

/// A `KafkaHeader`: `{"key", "value": base64}`.
fn header(h: &Value) -> Option<(String, String)> {
    let key = h.get("key")?.as_str()?;
    let value = STANDARD.decode(h.get("value")?.as_str()?).ok()?;
    Some((key.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_examples_parse() {
        let records = parse(
            br#"{"records":[{"key":"key1","value":"value1"},{"value":"value2","partition":1},{"value":"value3"}]}"#,
            Format::Json,
            None,
        )
        .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key.as_deref(), Some(&b"\"key1\""[..]), "JSON keys are published as JSON text");
        assert_eq!(records[1].partition, Some(1));
        let binary = parse(
            br#"{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50","headers":[{"key":"key1","value":"dmFsdWUx"}]}]}"#,
            Format::Binary,
            Some(0),
        )
        .unwrap();
        assert_eq!((binary[0].key.as_deref(), &binary[0].value[..]), (Some(&b"key"[..]), &b"confluent"[..]));
        assert_eq!(binary[0].headers, [("key1".to_owned(), "value1".to_owned())]);
        assert_eq!(binary[0].partition, Some(0));
    }

    #[test]
    fn invalid_lists_are_refused_with_the_bridges_messages() {
        for (body, format, partition, message) in [
            (&br#"{"records":[{"value":1}]}"#[..], Format::Text, None, "the value must be a string"),
            (br#"{"records":[{"value":"a","partition":1}]}"#, Format::Json, Some(0), "in body and in request path"),
            (br#"{"records":{}}"#, Format::Json, None, "invalid records"),
            (br#"{"records":[{"key":"x"}]}"#, Format::Json, None, "needs a value"),
            (br#"{"records":[{"value":"%%"}]}"#, Format::Binary, None, "not valid base64"),
        ] {
            let e = parse(body, format, partition).expect_err("refused");
            assert!(e.contains(message), "{e}");
        }
    }
}

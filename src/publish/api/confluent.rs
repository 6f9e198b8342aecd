//! Confluent REST Proxy v3's produce API: `POST /v3/clusters/{cluster}/topics/{topic}/records` (the route's `match`
//! path; `{cluster}` is echoed as `cluster_id`), as its OpenAPI spec defines it.
//!
//! - The body is one or more `ProduceRequest` objects, concatenated: `{"partition_id"?, "headers"?: [{"name",
//!   "value": base64}], "key"?: {"type", "data"}, "value"?: {"type", "data"}, "timestamp"?}` with `type` `BINARY`
//!   (base64 `data`; the default), `JSON` (any JSON, published as its text) or `STRING`. Schema Registry formats
//!   (`AVRO`, `PROTOBUF`, `JSONSCHEMA`, or any schema field) are refused for the record.
//! - `200` `application/json`: one delivery report per record, in order, each followed by `\r\n` (the proxy's
//!   framing): `{"error_code":200, "cluster_id", "topic_name", "partition_id", "offset", "timestamp", "key"?:
//!   {"type","size"}, "value"?: {…}}`, or `{"error_code", "message"}` for a record that was not stored (40403
//!   unknown topic or partition, 50003 retriable, 400 a record that cannot be read: the rest of the body then too).
//! - Streaming mode: a chunked body is read as it comes, and each record's report is sent as soon as it (and every
//!   record before it) is settled, for as long as the client keeps the request open (up to `server.max_body`).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{IN_FLIGHT, MAX_RECORDS, Record, bytes, failure_text, now_rfc3339, publish_all};
use crate::body::{Body, OutBody, Prepared};
use crate::policy::idempotency::DoNotStore;
use crate::problem::GatewayError;
use crate::publish::message::{Destination, Receipt};
use crate::publish::route::PublishRoute;
use crate::request::facts;

/// Why a record cannot be published: its `error_code` and message.
type Refused = (u32, String);
/// A record as read with the types of its key and value, or why it cannot be published.
type Parsed = Result<(Record, Option<&'static str>, Option<&'static str>), Refused>;
/// A key or value: its bytes and its type's name.
type Data = (Option<Bytes>, Option<&'static str>);

/// Answers one produce request: at once for a body already read, record by record for one that streams.
pub async fn handle(route: Arc<PublishRoute>, req: Request<Prepared>) -> Result<Response<Body>, GatewayError> {
    let cluster = facts(&req).params.get("cluster").unwrap_or_default().to_owned();
    let Some(stream) = req.body().attempt().filter(|_| req.body().bytes().is_none()) else {
        let body = req.body().bytes().cloned().unwrap_or_default();
        let mut reports = Vec::new();
        let mut sends = FuturesOrdered::new();
        for p in parse(&body) {
            if sends.len() == IN_FLIGHT {
                reports.extend(sends.next().await);
            }
            sends.push_back(report(&route, &req, &cluster, p));
        }
        reports.extend(sends.collect::<Vec<Value>>().await);
        let mut out = BytesMut::new();
        for r in &reports {
            frame(&mut out, r);
        }
        let mut res = bytes(StatusCode::OK, "application/json", out.freeze());
        if reports.iter().any(|r| r["error_code"] != 200) {
            // A retry with the same Idempotency-Key must publish what failed, not get this answer again.
            res.extensions_mut().insert(DoNotStore);
        }
        return Ok(res);
    };
    // Streaming mode: reports go out as records come in, in their order, while the client keeps sending.
    let (tx, rx) = mpsc::channel(64);
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, Prepared::Buffered(Bytes::new()));
    tokio::spawn(async move { stream_reports(&route, &req, &cluster, stream, tx).await });
    let mut res = bytes(StatusCode::OK, "application/json", Bytes::new());
    *res.body_mut() = Body::Channel(rx);
    Ok(res)
}

/// Reads records off `body` as they arrive, publishes each, and sends its report in order; ends with the body (or
/// the first unreadable record, or the client going away).
async fn stream_reports(
    route: &PublishRoute,
    req: &Request<Prepared>,
    cluster: &str,
    mut body: OutBody,
    tx: mpsc::Sender<Bytes>,
) {
    let mut buf = BytesMut::new();
    let mut scan = Scanner::default();
    let mut pending = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            // At most IN_FLIGHT records being published at once: the body is not read further meanwhile.
            frame = body.frame(), if reading && pending.len() < IN_FLIGHT => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                    // Each byte is scanned once; a record is parsed only when its closing brace has arrived.
                    loop {
                        match scan.next_record(&buf) {
                            Ok(Some(end)) => {
                                let bytes = buf.split_to(end);
                                scan = Scanner::default();
                                let parsed = match serde_json::from_slice::<Value>(&bytes) {
                                    Ok(v) => record(&v),
                                    Err(e) => Err((400, format!("Invalid JSON: {e}"))),
                                };
                                pending.push_back(report(route, req, cluster, parsed));
                            }
                            Ok(None) => break,
                            Err(message) => {
                                pending.push_back(report(route, req, cluster, Err((400, message))));
                                reading = false;
                                break;
                            }
                        }
                    }
                }
                None => {
                    reading = false;
                    if buf.iter().any(|b| !b.is_ascii_whitespace()) {
                        let refused = Err((400, "The body ends inside a record.".to_owned()));
                        pending.push_back(report(route, req, cluster, refused));
                    }
                }
                Some(Err(e)) => {
                    reading = false;
                    let message = if crate::body::is_too_large(&*e) {
                        "The stream is larger than the gateway accepts."
                    } else {
                        "The body could not be read."
                    };
                    pending.push_back(report(route, req, cluster, Err((400, message.to_owned()))));
                }
            },
            Some(report) = pending.next(), if !pending.is_empty() => {
                let mut out = BytesMut::new();
                frame(&mut out, &report);
                if tx.send(out.freeze()).await.is_err() {
                    return; // the client went away
                }
            }
            else => return,
        }
    }
}

/// Finds where each concatenated record ends in a stream, scanning every byte once (re-parsing the buffer on each
/// chunk would cost quadratic time for a record sent a byte at a time).
#[derive(Default)]
struct Scanner {
    /// Bytes scanned so far in the current record.
    at: usize,
    depth: u32,
    started: bool,
    in_string: bool,
    escaped: bool,
}

impl Scanner {
    /// The end (exclusive) of the first record of `buf` once it is all there; an error for what cannot be a record.
    fn next_record(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        while self.at < buf.len() {
            let b = buf[self.at];
            self.at += 1;
            if !self.started {
                match b {
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                    }
                    b if b.is_ascii_whitespace() => {}
                    _ => return Err("Invalid JSON: a record must be a JSON object.".to_owned()),
                }
                continue;
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some(self.at));
                    }
                }
                _ => {}
            }
        }
        if self.at > MAX_RECORD_BYTES {
            return Err(format!("A record is larger than {MAX_RECORD_BYTES} bytes."));
        }
        Ok(None)
    }
}

/// Largest record of a stream.
const MAX_RECORD_BYTES: usize = 1 << 20;

/// One report followed by the proxy's `\r\n`.
fn frame(out: &mut BytesMut, report: &Value) {
    serde_json::to_writer(out.writer(), report).expect("JSON serializes");
    out.put_slice(b"\r\n");
}

/// Publishes one record (or not, when it was refused) and makes its delivery report.
async fn report(route: &PublishRoute, req: &Request<Prepared>, cluster: &str, parsed: Parsed) -> Value {
    let (record, key_type, value_type) = match parsed {
        Ok(p) => p,
        Err((code, message)) => return json!({ "error_code": code, "message": message }),
    };
    let (key_size, value_size) = (record.key.as_ref().map(Bytes::len), record.value.len());
    let result = match publish_all(route, req, vec![record], route.ack).await {
        Ok(mut results) => results.pop().expect("one result"),
        Err(e) => return json!({ "error_code": e.status().as_u16(), "message": e.to_string() }),
    };
    match result {
        Ok((destination, receipt)) => {
            let topic = match &destination {
                Destination::Kafka { topic, .. } => topic.clone(),
                Destination::Amqp { routing_key, .. } => routing_key.clone(),
                Destination::Sqs { queue, .. } => queue.clone(),
            };
            let (partition, offset) = match receipt {
                Receipt::Kafka { partition, offset } => (partition, offset),
                _ => (-1, -1),
            };
            let mut report = json!({
                "error_code": 200, "cluster_id": cluster, "topic_name": topic,
                "partition_id": partition, "offset": offset, "timestamp": now_rfc3339(),
            });
            if let (Some(t), Some(size)) = (key_type, key_size) {
                report["key"] = json!({ "type": t, "size": size });
            }
            if let Some(t) = value_type {
                report["value"] = json!({ "type": t, "size": value_size });
            }
            report
        }
        Err(e) => {
            let code = if e.is_unroutable() {
                40403
            } else if e.is_retryable() {
                50003
            } else {
                500
            };
            json!({ "error_code": code, "message": failure_text(&e) })
        }
    }
}

/// Every concatenated `ProduceRequest`, with the formats of its key and value. Once the JSON cannot be read, the
/// rest of the body is one `400` error.
fn parse(body: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    for item in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
        if out.len() == MAX_RECORDS {
            out.push(Err((400, format!("At most {MAX_RECORDS} records in one request; the rest was not read."))));
            break;
        }
        match item {
            Ok(v) => out.push(record(&v)),
            Err(e) => {
                out.push(Err((400, format!("Invalid JSON: {e}"))));
                break;
            }
        }
    }
    if out.is_empty() {
        out.push(Err((400, "The request has no record.".to_owned())));
    }
    out
}

fn record(v: &Value) -> Parsed {
    let bad = |m: &str| (400, m.to_owned());
    let Some(o) = v.as_object() else { return Err(bad("A record must be a JSON object.")) };
    if let Some(unknown) =
        o.keys().find(|k| !["partition_id", "headers", "key", "value", "timestamp"].contains(&k.as_str()))
    {
        return Err(bad(&format!("Unrecognized field {unknown:?}")));
    }
    let partition = match o.get("partition_id") {
        None | Some(Value::Null) => None,
        Some(p) => Some(p.as_i64().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| bad("Invalid partition_id."))?),
    };
    let headers = match o.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(hs)) => hs
            .iter()
            .map(|h| {
                let name = h.get("name")?.as_str()?.to_ascii_lowercase();
                let value = match h.get("value") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => STANDARD.decode(v.as_str()?).ok()?,
                };
                Some((name, String::from_utf8_lossy(&value).into_owned()))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("Invalid headers: each needs a name and a base64 value."))?,
        Some(_) => return Err(bad("Invalid headers.")),
    };
    let (key, key_type) = data(o.get("key"))?;
    let (value, value_type) = data(o.get("value"))?;
    Ok((Record { key, value: value.unwrap_or_default(), headers, partition, content_type: None }, key_type, value_type))
}

/// A key or value: its bytes and its type's name.
fn data(v: Option<&Value>) -> Result<Data, Refused> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok((None, None)) };
    let bad = |m: &str| (400, m.to_owned());
    let Some(o) = v.as_object() else { return Err(bad("A key or value must be an object with a type and data.")) };
    if ["subject", "subject_name_strategy", "schema_id", "schema_version", "schema"].iter().any(|k| o.contains_key(*k))
    {
        return Err(bad("Schema Registry formats are not supported: use BINARY, JSON or STRING."));
    }
    let data = o.get("data").unwrap_or(&Value::Null);
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("BINARY");
    match (ty, data) {
        (_, Value::Null) => Ok((None, Some(name(ty)?))),
        ("BINARY", Value::String(s)) => match STANDARD.decode(s) {
            Ok(b) => Ok((Some(Bytes::from(b)), Some("BINARY"))),
            Err(_) => Err(bad("BINARY data must be base64.")),
        },
        ("JSON", d) => Ok((Some(Bytes::from(serde_json::to_vec(d).expect("JSON serializes"))), Some("JSON"))),
        ("STRING", Value::String(s)) => Ok((Some(Bytes::from(s.clone())), Some("STRING"))),
        ("BINARY" | "STRING", _) => Err(bad(&format!("{ty} data must be a string."))),
        _ => Err(bad("Schema Registry formats are not supported: use BINARY, JSON or STRING.")),
    }
}

fn name(ty: &str) -> Result<&'static str, Refused> {
    match ty {
        "BINARY" => Ok("BINARY"),
        "JSON" => Ok("JSON"),
        "STRING" => Ok("STRING"),
        _ => Err((400, "Schema Registry formats are not supported: use BINARY, JSON or STRING.".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_records_parse_with_their_formats() {
        let body = br#"{"partition_id":1,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="}],
            "key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo":"bar"}},"timestamp":"2021-02-05T19:14:42Z"}
            {"value":{"type":"STRING","data":"a"}}{"value":{"type":"JSON","data":1}}"#;
        let parsed = parse(body);
        assert_eq!(parsed.len(), 3);
        let (first, key_type, value_type) = parsed[0].as_ref().unwrap();
        assert_eq!((first.key.as_deref(), &first.value[..]), (Some(&b"foobar"[..]), &br#"{"foo":"bar"}"#[..]));
        assert_eq!((*key_type, *value_type, first.partition), (Some("BINARY"), Some("JSON"), Some(1)));
        assert_eq!(first.headers, [("header-1".to_owned(), "Header-1".to_owned())]);
        assert_eq!(&parsed[1].as_ref().unwrap().0.value[..], b"a");
        assert_eq!(&parsed[2].as_ref().unwrap().0.value[..], b"1");
    }

    #[test]
    fn schema_registry_records_and_broken_json_are_refused_in_place() {
        let parsed = parse(br#"{"value":{"type":"AVRO","schema_id":1,"data":{}}}{"value":{"data":"AA=="}}{"#);
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].as_ref().is_err_and(|(c, m)| *c == 400 && m.contains("Schema Registry")));
        assert!(parsed[1].is_ok(), "BINARY is the default type");
        assert!(parsed[2].as_ref().is_err_and(|(c, _)| *c == 400));
    }
}

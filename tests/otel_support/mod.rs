//! Spans as the real OpenTelemetry Collector received them: `integration/otel.sh up` runs a collector whose only
//! pipeline writes every span it gets over OTLP to a JSON lines file; these helpers find that file, parse it and
//! wait for a trace to arrive. Tests send to `otlp_endpoint()` and assert on what `wait_for_trace` returns.
//!
//! Each line of the file is one OTLP export request in OTLP JSON (the shape is documented, with a real
//! example, at the top of integration/otel.sh): `resourceSpans[].scopeSpans[].spans[]`, ids as lowercase hex,
//! `kind` and `status.code` as integers, attributes as `[{key, value: {stringValue|intValue|...}}]` with 64-bit
//! integers as strings. tests/otel_support_selftest.rs parses captured lines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The spans file: `SLUICE_TEST_OTLP_SPANS`, else `otel/spans.jsonl` under the state directory, computed as
/// integration/otel.sh does (`SLUICE_STATE_DIR`, else `$SLUICE_CACHE_DIR/state`, else
/// `$XDG_CACHE_HOME/sluice/state`, else `$HOME/.cache/sluice/state`; empty variables count as unset).
pub fn spans_file() -> PathBuf {
    if let Some(path) = env_nonempty("SLUICE_TEST_OTLP_SPANS") {
        return PathBuf::from(path);
    }
    state_dir().join("otel").join("spans.jsonl")
}

/// The collector's OTLP/gRPC endpoint: `SLUICE_TEST_OTLP`, else `http://127.0.0.1:4317` (the port from
/// `SLUICE_TEST_OTLP_PORT` when set, as in integration/otel.sh).
pub fn otlp_endpoint() -> String {
    if let Some(url) = env_nonempty("SLUICE_TEST_OTLP") {
        return url;
    }
    let port = env_nonempty("SLUICE_TEST_OTLP_PORT").unwrap_or_else(|| "4317".to_owned());
    format!("http://127.0.0.1:{port}")
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn state_dir() -> PathBuf {
    if let Some(dir) = env_nonempty("SLUICE_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let cache = if let Some(dir) = env_nonempty("SLUICE_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = env_nonempty("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("sluice")
    } else {
        let home = env_nonempty("HOME").expect("HOME is not set (needed for the default spans file)");
        PathBuf::from(home).join(".cache").join("sluice")
    };
    cache.join("state")
}

/// One span, flattened: the parts tests assert on.
#[derive(Debug, Clone)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    /// Attribute values unwrapped: string, integer (a JSON number, although OTLP JSON sends it as a string),
    /// bool, double; arrays and key-value lists as JSON arrays and objects, bytes as their base64 string, an empty
    /// value as null.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i64,
    /// The resource's `service.name` ("" when missing).
    pub service_name: String,
}

pub const KIND_INTERNAL: i64 = 1;
pub const KIND_SERVER: i64 = 2;
pub const KIND_CLIENT: i64 = 3;
pub const KIND_PRODUCER: i64 = 4;
pub const KIND_CONSUMER: i64 = 5;
pub const STATUS_UNSET: i64 = 0;
pub const STATUS_OK: i64 = 1;
pub const STATUS_ERROR: i64 = 2;

impl Span {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }

    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        self.attributes.get(key).and_then(Value::as_bool)
    }

    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        self.attributes.get(key).and_then(Value::as_f64)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// Every span in the spans file, in file order; none when the file does not exist. A last line without its
/// newline is being written (the exporter flushes through a buffer) and is left for the next read.
pub fn read_spans() -> Vec<Span> {
    read_spans_from(&spans_file())
}

/// `read_spans` for another file.
pub fn read_spans_from(path: &Path) -> Vec<Span> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read the spans file {}: {e}", path.display()),
    };
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => return Vec::new(),
    };
    let mut spans = Vec::new();
    for line in String::from_utf8_lossy(complete).lines() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(request) => spans.extend(spans_of_request(&request)),
            Err(e) => eprintln!("otel_support: skipping a line of {} that is not JSON: {e}", path.display()),
        }
    }
    spans
}

/// The spans of the trace `trace_id` (hex, any case) in the spans file, now.
pub fn trace_spans(trace_id: &str) -> Vec<Span> {
    let trace_id = trace_id.to_ascii_lowercase();
    read_spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
}

/// Polls the spans file every 100 ms until it holds at least `min_spans` spans of the trace `trace_id` (hex, any
/// case), and returns them; at `timeout`, returns what is there (the caller asserts).
pub async fn wait_for_trace(trace_id: &str, min_spans: usize, timeout: Duration) -> Vec<Span> {
    let deadline = Instant::now() + timeout;
    loop {
        let spans = trace_spans(trace_id);
        if spans.len() >= min_spans || Instant::now() >= deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spans of one line of the spans file (one OTLP JSON export request); none if it is not JSON.
pub fn parse_line(line: &str) -> Vec<Span> {
    match serde_json::from_str::<Value>(line) {
        Ok(request) => spans_of_request(&request),
        Err(_) => Vec::new(),
    }
}

fn spans_of_request(request: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in array(request, "resourceSpans") {
        let resource_attributes = attributes(resource_spans.get("resource").unwrap_or(&Value::Null));
        let service_name =
            resource_attributes.get("service.name").and_then(Value::as_str).unwrap_or_default().to_owned();
        for scope_spans in array(resource_spans, "scopeSpans") {
            for span in array(scope_spans, "spans") {
                let status = span.get("status").unwrap_or(&Value::Null);
                out.push(Span {
                    trace_id: hex_id(span, "traceId"),
                    span_id: hex_id(span, "spanId"),
                    parent_span_id: hex_id(span, "parentSpanId"),
                    name: span.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    kind: enum_value(
                        span.get("kind"),
                        "SPAN_KIND_",
                        &["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"],
                    ),
                    attributes: attributes(span),
                    status_code: enum_value(status.get("code"), "STATUS_CODE_", &["UNSET", "OK", "ERROR"]),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    out
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn hex_id(span: &Value, key: &str) -> String {
    span.get(key).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase()
}

/// An OTLP enum: an integer (what the collector writes), or its name (what some other OTLP JSON writers use).
fn enum_value(value: Option<&Value>, prefix: &str, names: &[&str]) -> i64 {
    match value {
        Some(Value::Number(n)) => n.as_i64().unwrap_or_default(),
        Some(Value::String(s)) => {
            let name = s.strip_prefix(prefix).unwrap_or(s);
            names.iter().position(|n| *n == name).map_or(0, |i| i as i64)
        }
        _ => 0,
    }
}

/// `{"attributes": [{"key": .., "value": {..}}]}` -> key -> unwrapped value.
fn attributes(owner: &Value) -> BTreeMap<String, Value> {
    array(owner, "attributes")
        .iter()
        .filter_map(|kv| Some((kv.get("key")?.as_str()?.to_owned(), any_value(kv.get("value")?))))
        .collect()
}

/// An OTLP `AnyValue` in JSON -> its plain JSON value.
fn any_value(value: &Value) -> Value {
    let Some(obj) = value.as_object() else {
        return Value::Null;
    };
    if let Some(v) = obj.get("stringValue").or_else(|| obj.get("boolValue")).or_else(|| obj.get("bytesValue")) {
        return v.clone();
    }
    if let Some(v) = obj.get("intValue") {
        return match v {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or_else(|_| v.clone()),
            other => other.clone(),
        };
    }
    if let Some(v) = obj.get("doubleValue") {
        return v.clone(); // a number, or "NaN" / "Infinity" / "-Infinity"
    }
    if let Some(v) = obj.get("arrayValue") {
        return Value::Array(array(v, "values").iter().map(any_value).collect());
    }
    if let Some(v) = obj.get("kvlistValue") {
        let map: Map<String, Value> = array(v, "values")
            .iter()
            .filter_map(|kv| Some((kv.get("key")?.as_str()?.to_owned(), any_value(kv.get("value")?))))
            .collect();
        return Value::Object(map);
    }
    Value::Null
}

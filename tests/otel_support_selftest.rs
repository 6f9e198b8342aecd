//! tests/otel_support (the spans-file reader of the tracing tests) against what the real OpenTelemetry
//! Collector of integration/otel.sh writes: lines captured from it, and a live round trip through it (the
//! collector must be up: `integration/otel.sh up`; a missing collector fails the test).

mod otel_support;

use std::time::Duration;

use otel_support::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One line of the spans file, captured from the collector after the Python SDK (opentelemetry-sdk 1.45.2,
/// OTLPSpanExporter over gRPC) sent a server span with three children: producer, client (error status, an
/// exception event) and internal.
const PYTHON_GRPC_LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"telemetry.sdk.language","value":{"stringValue":"python"}},{"key":"telemetry.sdk.name","value":{"stringValue":"opentelemetry"}},{"key":"telemetry.sdk.version","value":{"stringValue":"1.45.2"}},{"key":"service.instance.id","value":{"stringValue":"c8face29-9194-43f2-b2ab-8c3934663e69"}},{"key":"service.name","value":{"stringValue":"sluice-selftest"}}]},"scopeSpans":[{"scope":{"name":"otel-selftest","version":"0.1.0"},"spans":[{"traceId":"79d81e0def20b9691e4088b66da3e277","spanId":"92453b8e428ffd05","parentSpanId":"cc67f405ebded72b","flags":256,"name":"orders.acme publish","kind":4,"startTimeUnixNano":"1795999778509756547","endTimeUnixNano":"1795999778509769391","attributes":[{"key":"messaging.system","value":{"stringValue":"kafka"}},{"key":"messaging.destination.name","value":{"stringValue":"orders.acme"}},{"key":"messaging.destination.partition.id","value":{"stringValue":"2"}},{"key":"messaging.kafka.offset","value":{"intValue":"1234"}}],"status":{}},{"traceId":"79d81e0def20b9691e4088b66da3e277","spanId":"5198972d6816110a","parentSpanId":"cc67f405ebded72b","flags":256,"name":"POST","kind":3,"startTimeUnixNano":"1795999778509810666","endTimeUnixNano":"1795999778509841454","attributes":[{"key":"server.port","value":{"intValue":"8080"}}],"events":[{"timeUnixNano":"1795999778509835499","name":"exception","attributes":[{"key":"exception.message","value":{"stringValue":"timeout"}}]}],"status":{"message":"upstream timed out","code":2}},{"traceId":"79d81e0def20b9691e4088b66da3e277","spanId":"fb254a83de5e2d55","parentSpanId":"cc67f405ebded72b","flags":256,"name":"internal-step","kind":1,"startTimeUnixNano":"1795999778509865088","endTimeUnixNano":"1795999778509870648","status":{}},{"traceId":"79d81e0def20b9691e4088b66da3e277","spanId":"cc67f405ebded72b","flags":256,"name":"POST /orders/{tenant}","kind":2,"startTimeUnixNano":"1795999778509689762","endTimeUnixNano":"1795999778509931806","attributes":[{"key":"http.request.method","value":{"stringValue":"POST"}},{"key":"http.response.status_code","value":{"intValue":"202"}},{"key":"url.path","value":{"stringValue":"/orders/acme"}},{"key":"sluice.retry","value":{"boolValue":true}},{"key":"sluice.ratio","value":{"doubleValue":0.5}},{"key":"sluice.tags","value":{"arrayValue":{"values":[{"stringValue":"a"},{"stringValue":"b"}]}}}],"status":{}}]}]}]}"#;

/// One line of the spans file, captured after an OTLP/HTTP JSON export (curl) of a span with no kind, an
/// upper-case trace id, a trace state, a key-value list, bytes and an empty value.
const HTTP_JSON_LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"curl"}}]},"scopeSpans":[{"scope":{"name":"curl"},"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","traceState":"a=b","name":"nokind","startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{"key":"kv","value":{"kvlistValue":{"values":[{"key":"x","value":{"intValue":"5"}}]}}},{"key":"bytes","value":{"bytesValue":"AQI="}},{"key":"empty","value":{}}],"status":{"code":1}}]}]}]}"#;

const PYTHON_TRACE: &str = "79d81e0def20b9691e4088b66da3e277";

fn by_name<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[test]
fn parses_a_line_the_collector_wrote_for_a_grpc_export() {
    let spans = parse_line(PYTHON_GRPC_LINE);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == PYTHON_TRACE && s.service_name == "sluice-selftest"));

    let server = by_name(&spans, "POST /orders/{tenant}");
    assert!(server.is_root());
    assert_eq!(server.span_id, "cc67f405ebded72b");
    assert_eq!(server.kind, KIND_SERVER);
    assert_eq!(server.status_code, STATUS_UNSET);
    assert_eq!(server.attr_str("http.request.method"), Some("POST"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(202));
    assert_eq!(server.attr_str("http.response.status_code"), None, "intValue is unwrapped to a number");
    assert_eq!(server.attr_bool("sluice.retry"), Some(true));
    assert_eq!(server.attr_f64("sluice.ratio"), Some(0.5));
    assert_eq!(server.attributes["sluice.tags"], json!(["a", "b"]));

    let producer = by_name(&spans, "orders.acme publish");
    assert_eq!(producer.span_id, "92453b8e428ffd05");
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(producer.kind, KIND_PRODUCER);
    assert_eq!(producer.attr_str("messaging.system"), Some("kafka"));
    assert_eq!(producer.attr_str("messaging.destination.partition.id"), Some("2"));
    assert_eq!(producer.attr_i64("messaging.kafka.offset"), Some(1234));

    let client = by_name(&spans, "POST");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.kind, KIND_CLIENT);
    assert_eq!(client.status_code, STATUS_ERROR);
    assert_eq!(client.attr_i64("server.port"), Some(8080));

    let internal = by_name(&spans, "internal-step");
    assert_eq!(internal.kind, KIND_INTERNAL);
    assert!(internal.attributes.is_empty());
}

#[test]
fn parses_a_line_the_collector_wrote_for_an_http_json_export() {
    let spans = parse_line(HTTP_JSON_LINE);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.trace_id, "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(span.span_id, "0102030405060708");
    assert!(span.is_root());
    assert_eq!(span.name, "nokind");
    assert_eq!(span.kind, 0, "the collector leaves out kind 0 (unspecified)");
    assert_eq!(span.status_code, STATUS_OK);
    assert_eq!(span.service_name, "curl");
    assert_eq!(span.attributes["kv"], json!({ "x": 5 }));
    assert_eq!(span.attr_str("bytes"), Some("AQI="));
    assert_eq!(span.attributes["empty"], serde_json::Value::Null);
}

#[test]
fn parse_line_ignores_what_is_not_an_export() {
    assert!(parse_line("").is_empty());
    assert!(parse_line(&PYTHON_GRPC_LINE[..PYTHON_GRPC_LINE.len() / 2]).is_empty());
    assert!(parse_line("{}").is_empty());
}

#[test]
fn read_spans_skips_a_torn_last_line() {
    let path = std::env::temp_dir().join(format!("sluice-otel-selftest-{}.jsonl", std::process::id()));
    let torn = &HTTP_JSON_LINE[..HTTP_JSON_LINE.len() - 10];
    std::fs::write(&path, format!("{PYTHON_GRPC_LINE}\n{torn}")).unwrap();
    assert_eq!(read_spans_from(&path).len(), 4);
    std::fs::write(&path, format!("{PYTHON_GRPC_LINE}\n{HTTP_JSON_LINE}\n")).unwrap();
    assert_eq!(read_spans_from(&path).len(), 5);
    std::fs::remove_file(&path).unwrap();
    assert!(read_spans_from(&path).is_empty(), "a missing file holds no spans");
}

/// Exports two spans of a new trace to the running collector (OTLP/HTTP JSON, on SLUICE_TEST_OTLP_HTTP_PORT,
/// default 4318: no gRPC client among the dev-dependencies) and finds them in spans_file(), the path computed
/// here independently of integration/otel.sh.
#[tokio::test]
async fn spans_sent_to_the_collector_land_in_spans_file() {
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let (root, child) = (format!("{:016x}", fastrand::u64(1..)), format!("{:016x}", fastrand::u64(1..)));
    let body = json!({ "resourceSpans": [{
        "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "otel-selftest" } }] },
        "scopeSpans": [{ "scope": { "name": "otel_support_selftest" }, "spans": [
            { "traceId": trace_id, "spanId": root, "name": "root", "kind": 2,
              "startTimeUnixNano": "1", "endTimeUnixNano": "3",
              "attributes": [{ "key": "n", "value": { "intValue": "7" } }] },
            { "traceId": trace_id, "spanId": child, "parentSpanId": root, "name": "child", "kind": 4,
              "startTimeUnixNano": "2", "endTimeUnixNano": "3", "status": { "code": 2 } },
        ] }],
    }] })
    .to_string();
    let port = std::env::var("SLUICE_TEST_OTLP_HTTP_PORT").ok().filter(|p| !p.is_empty()).unwrap_or("4318".into());
    let mut conn =
        tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).await.unwrap_or_else(|e| {
            panic!(
                "no OTLP/HTTP receiver on 127.0.0.1:{port} ({e}); run integration/otel.sh up (gRPC: {})",
                otlp_endpoint()
            )
        });
    let request = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let spans = wait_for_trace(&trace_id.to_uppercase(), 2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "trace {trace_id} in {}: {spans:#?}", spans_file().display());
    let root_span = by_name(&spans, "root");
    let child_span = by_name(&spans, "child");
    assert_eq!(root_span.span_id, root);
    assert!(root_span.is_root());
    assert_eq!(root_span.kind, KIND_SERVER);
    assert_eq!(root_span.attr_i64("n"), Some(7));
    assert_eq!(child_span.parent_span_id, root);
    assert_eq!(child_span.kind, KIND_PRODUCER);
    assert_eq!(child_span.status_code, STATUS_ERROR);
    assert!(spans.iter().all(|s| s.service_name == "otel-selftest"));
}

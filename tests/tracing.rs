//! Traces checked against a real OpenTelemetry Collector (`integration/otel.sh up`, OTLP/gRPC at
//! `SLUICE_TEST_OTLP`, spans written to `SLUICE_TEST_OTLP_SPANS`): one trace per request with the SERVER span, a
//! CLIENT span per upstream attempt (the resend count on a retry), a PRODUCER span per publish on Kafka and
//! RabbitMQ, the `traceparent` that left the gateway equal to the span that sent it, and a subscription's CONSUMER
//! span continuing the trace its message carries, with a CLIENT span per delivery attempt.

mod broker_support;
mod otel_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker_support::common;
use broker_support::{Amqp, Gateway, RabbitLock, assert_accepted, create_topic, kafka_read_at, random_name};
use otel_support::{
    KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER, STATUS_ERROR, Span, otlp_endpoint, wait_for_trace,
};
use serde_json::{Value, json};

/// A client `traceparent` starting a new sampled trace: `(header, trace id, parent span id)`.
fn client_trace() -> (String, String, String) {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let parent = format!("{:016x}", fastrand::u64(1..));
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

fn telemetry() -> Value {
    json!({ "otlp_endpoint": otlp_endpoint(), "service_name": "sluice-test", "access_log": false })
}

/// `00-<trace>-<span>-<flags>` → (trace, span).
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent: {traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn one(spans: &[Span], kind: i64) -> &Span {
    let of_kind: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(of_kind.len(), 1, "one span of kind {kind} in {spans:#?}");
    of_kind[0]
}

/// An upstream that answers its first request 503 and every later one 200, and the count of requests it got.
async fn fails_once() -> (common::Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = common::Upstream::start(move |_| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move { if first { common::reply(503, "busy") } else { common::reply(200, "ok") } }
    })
    .await;
    (upstream, calls)
}

#[tokio::test]
async fn a_retried_forward_is_one_trace_with_a_client_span_per_attempt() {
    let (upstream, _calls) = fails_once().await;
    let gw = Gateway::start(json!({
        "telemetry": telemetry(),
        "upstreams": { "svc": { "endpoints": [upstream.url()] } },
        "routes": [{
            "name": "traced", "match": { "path_prefix": "/api" },
            "forward": { "upstream": "svc" },
            "retry": { "max_retries": 2, "on": ["5xx"], "backoff": "1ms", "max_backoff": "2ms" }
        }]
    }))
    .await;
    let (traceparent, trace, client_span) = client_trace();
    let req = http::Request::get(format!("http://{}/api/items?x=1", gw.addr))
        .header("traceparent", &traceparent)
        .header("user-agent", "tracing-test/1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, 200);

    let spans = wait_for_trace(&trace, 3, Duration::from_secs(30)).await;
    assert_eq!(spans.len(), 3, "SERVER + two CLIENT spans: {spans:#?}");
    let server = one(&spans, KIND_SERVER);
    assert_eq!(server.parent_span_id, client_span, "continues the client's trace");
    assert_eq!(server.name, "GET /api");
    assert_eq!(server.service_name, "sluice-test");
    assert_eq!(server.attr_str("http.request.method"), Some("GET"));
    assert_eq!(server.attr_str("url.path"), Some("/api/items"));
    assert_eq!(server.attr_str("http.route"), Some("/api"));
    assert_eq!(server.attr_str("sluice.route"), Some("traced"));
    assert_eq!(server.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(server.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(server.attr_str("user_agent.original"), Some("tracing-test/1"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));

    let mut clients: Vec<&Span> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    clients.sort_by_key(|s| s.attr_i64("http.request.resend_count").unwrap_or(0));
    assert_eq!(clients.len(), 2);
    for c in &clients {
        assert_eq!(c.parent_span_id, server.span_id, "attempts are children of the SERVER span");
        assert_eq!(c.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(c.attr_i64("server.port"), Some(i64::from(upstream.addr.port())));
    }
    assert_eq!(clients[0].attr_i64("http.request.resend_count"), None, "the first attempt is no resend");
    assert_eq!(clients[0].attr_i64("http.response.status_code"), Some(503));
    assert_eq!(clients[0].status_code, STATUS_ERROR);
    assert_eq!(clients[1].attr_i64("http.request.resend_count"), Some(1));
    assert_eq!(clients[1].attr_i64("http.response.status_code"), Some(200));

    // What each attempt carried upstream is the context of its own CLIENT span.
    let sent: Vec<(String, String)> = upstream.requests().iter().map(|s| ids(s.header("traceparent"))).collect();
    let expected: Vec<(String, String)> = clients.iter().map(|c| (trace.clone(), c.span_id.clone())).collect();
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn a_kafka_publish_has_a_producer_span_whose_context_rides_in_the_record() {
    let topic = create_topic("trace", 1).await;
    let gw = Gateway::start(json!({
        "telemetry": telemetry(),
        "brokers": { "events": { "kind": "kafka", "bootstrap": broker_support::kafka_bootstrap() } },
        "routes": [broker_support::publish_route("events", "/events", json!({ "broker": "events", "topic": topic }))]
    }))
    .await;
    let (traceparent, trace, _) = client_trace();
    let r = gw.post("/events", &[("traceparent", &traceparent), ("content-type", "text/plain")], "hello").await;
    let receipt = assert_accepted(&r);
    let (partition, offset) = (receipt["partition"].as_i64().unwrap() as i32, receipt["offset"].as_i64().unwrap());
    let record = kafka_read_at(&topic, partition, offset).await;

    let spans = wait_for_trace(&trace, 2, Duration::from_secs(30)).await;
    let server = one(&spans, KIND_SERVER);
    let producer = one(&spans, KIND_PRODUCER);
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(producer.name, format!("send {topic}"));
    assert_eq!(producer.attr_str("messaging.system"), Some("kafka"));
    assert_eq!(producer.attr_str("messaging.operation.type"), Some("send"));
    assert_eq!(producer.attr_str("messaging.destination.name"), Some(topic.as_str()));
    assert_eq!(producer.attr_str("messaging.message.id"), receipt["id"].as_str());
    assert_eq!(producer.attr_str("messaging.destination.partition.id"), Some(partition.to_string().as_str()));
    assert_eq!(producer.attr_i64("messaging.kafka.offset"), Some(offset));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(202));

    let carried = record.header("traceparent").expect("the record carries a traceparent");
    assert_eq!(ids(&carried), (trace, producer.span_id.clone()), "the record's parent is the PRODUCER span");
    assert_eq!(record.header_count("traceparent"), 1);
}

#[tokio::test]
async fn an_amqp_publish_has_a_producer_span_whose_context_rides_in_the_message() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let (exchange, queue) = (random_name("trace-x"), random_name("trace-q"));
    amqp.exchange(&exchange, false).await;
    amqp.queue(&queue, &exchange, "traced", false).await;
    let gw = Gateway::start(json!({
        "telemetry": telemetry(),
        "brokers": { "rabbit": { "kind": "amqp", "url": broker_support::amqp_url() } },
        "routes": [broker_support::publish_route(
            "hooks", "/hooks", json!({ "broker": "rabbit", "exchange": exchange, "routing_key": "traced" })
        )]
    }))
    .await;
    // The producer connects in the background; a publish before that is (correctly) a 503.
    broker_support::eventually("RabbitMQ connected (/readyz 200)", async || gw.brokers_up().await).await;
    let (traceparent, trace, _) = client_trace();
    let r = gw.post("/hooks", &[("traceparent", &traceparent), ("tracestate", "vendor=1")], "hello").await;
    let receipt = assert_accepted(&r);
    let messages = amqp.drain(&queue).await;
    amqp.delete(&queue, &exchange).await;
    assert_eq!(messages.len(), 1);

    let spans = wait_for_trace(&trace, 2, Duration::from_secs(30)).await;
    let server = one(&spans, KIND_SERVER);
    let producer = one(&spans, KIND_PRODUCER);
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(producer.attr_str("messaging.system"), Some("rabbitmq"));
    assert_eq!(producer.attr_str("messaging.destination.name"), Some(exchange.as_str()));
    assert_eq!(producer.attr_str("messaging.rabbitmq.destination.routing_key"), Some("traced"));
    assert_eq!(producer.attr_str("messaging.message.id"), receipt["id"].as_str());

    let carried = messages[0].header("traceparent").expect("the message carries a traceparent");
    assert_eq!(ids(&carried), (trace, producer.span_id.clone()), "the message's parent is the PRODUCER span");
    assert_eq!(messages[0].header("tracestate").as_deref(), Some("vendor=1"));
}

/// HTTP → RabbitMQ → HTTP in one trace: the publish route's SERVER and PRODUCER spans, then the subscription's
/// CONSUMER span (a child of the PRODUCER span, whose context the message carried) and a CLIENT span per delivery
/// attempt (the upstream fails the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_continues_the_trace_its_message_carries() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let queue = random_name("trace-sub-q");
    amqp.queue(&queue, "amq.direct", &queue, false).await;
    let (upstream, calls) = fails_once().await;
    let gw = Gateway::start(json!({
        "telemetry": telemetry(),
        "brokers": { "rabbit": { "kind": "amqp", "url": broker_support::amqp_url() } },
        "upstreams": { "app": { "endpoints": [upstream.url()] } },
        "routes": [broker_support::publish_route(
            "hooks", "/hooks", json!({ "broker": "rabbit", "exchange": "amq.direct", "routing_key": queue })
        )],
        "subscriptions": [{
            "name": "deliver", "from": { "broker": "rabbit", "queue": queue },
            "to": { "upstream": "app", "path": "/in" },
            "retry": { "max_retries": 3, "backoff": "1ms", "max_backoff": "5ms" }
        }]
    }))
    .await;
    broker_support::eventually("RabbitMQ connected (/readyz 200)", async || gw.brokers_up().await).await;
    let (traceparent, trace, _) = client_trace();
    assert_accepted(&gw.post("/hooks", &[("traceparent", &traceparent)], "hello").await);
    broker_support::eventually("the delivery", async || calls.load(Ordering::SeqCst) == 2).await;

    let spans = wait_for_trace(&trace, 5, Duration::from_secs(30)).await;
    let producer = one(&spans, KIND_PRODUCER);
    let consumer = one(&spans, KIND_CONSUMER);
    assert_eq!(consumer.parent_span_id, producer.span_id, "the CONSUMER span continues the message's trace");
    assert_eq!(consumer.name, "process deliver");
    assert_eq!(consumer.attr_str("messaging.system"), Some("rabbitmq"));
    assert_eq!(consumer.attr_str("sluice.subscription"), Some("deliver"));
    let attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    assert_eq!(attempts.len(), 2, "a CLIENT span per delivery attempt: {spans:#?}");
    assert!(attempts.iter().all(|a| a.parent_span_id == consumer.span_id));
    let mut statuses: Vec<i64> = attempts.iter().filter_map(|a| a.attr_i64("http.response.status_code")).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503]);
    let m = gw.metrics().await;
    let count = broker_support::metric(&m, "sluice_delivery_duration_seconds_count", &[("subscription", "deliver")]);
    assert_eq!(count, Some(1.0), "the delivery's duration is observed once: {m}");
    let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
}

#[tokio::test]
async fn a_collector_that_is_down_changes_nothing_for_clients() {
    let upstream = common::Upstream::status(200, "ok").await;
    let dead = common::refused_url().await;
    let gw = Gateway::start(json!({
        "telemetry": { "otlp_endpoint": dead, "access_log": false },
        "upstreams": { "svc": { "endpoints": [upstream.url()] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "forward": { "upstream": "svc" } }]
    }))
    .await;
    for _ in 0..200 {
        let req = http::Request::get(format!("http://{}/x", gw.addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        assert_eq!(gw.send(req).await.status, 200);
    }
    assert_eq!(upstream.hits(), 200);
}

#[tokio::test]
async fn sample_ratio_zero_records_nothing_and_tells_the_upstream_not_to_sample() {
    let upstream = common::Upstream::status(200, "ok").await;
    let gw = Gateway::start(json!({
        "telemetry": { "otlp_endpoint": otlp_endpoint(), "sample_ratio": 0.0, "access_log": false },
        "upstreams": { "svc": { "endpoints": [upstream.url()] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "forward": { "upstream": "svc" } }]
    }))
    .await;
    let req = http::Request::get(format!("http://{}/x", gw.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(gw.send(req).await.status, 200);
    let sent = upstream.last().header("traceparent").to_owned();
    assert!(sent.ends_with("-00"), "not sampled: {sent}");
    let (trace, _) = ids(&sent);
    // A sampled trace of the same gateway shows up within a second; this one must not, even after 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(otel_support::trace_spans(&trace).is_empty(), "an unsampled trace was exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_at_sigterm_are_flushed_before_exit() {
    use std::process::{Command, Stdio};
    let upstream = common::Upstream::status(200, "ok").await;
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let listen = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let admin = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let dir = std::env::temp_dir().join(format!("sluice-trace-flush-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"

[telemetry]
otlp_endpoint = "{}"
access_log = false

[upstreams.svc]
endpoints = ["{}"]

[[routes]]
name = "r"
match = {{ path_prefix = "/" }}
forward = {{ upstream = "svc" }}
"#,
            otlp_endpoint(),
            upstream.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = common::client();
    broker_support::eventually("the binary answers", async || {
        let req = http::Request::get(format!("http://127.0.0.1:{admin}/healthz")).body(common::empty()).unwrap();
        matches!(client.request(req).await, Ok(r) if r.status() == 200)
    })
    .await;
    let (traceparent, trace, _) = client_trace();
    let req = http::Request::get(format!("http://127.0.0.1:{listen}/x"))
        .header("traceparent", &traceparent)
        .body(common::empty())
        .unwrap();
    assert_eq!(common::send(&client, req).await.status, 200);
    // SIGTERM at once: the span is still in the export queue (batches wait up to 200 ms).
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "exit 0 after SIGTERM: {exit:?}");
    let spans = wait_for_trace(&trace, 2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "the SERVER and CLIENT spans were flushed before exit: {spans:#?}");
    std::fs::remove_dir_all(dir).ok();
}

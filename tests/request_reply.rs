//! Request-reply routes over the real RabbitMQ (direct reply-to) and the real Kafka (a reply topic), answered by
//! independent responders written with Python's pika and confluent-kafka (`tests/bridge_support/`): each request
//! gets its own reply (no cross-talk under 200 concurrent requests), the responder picks the status, a missing
//! responder is a `504` after the timeout, a late reply is dropped and counted, an unroutable request is a `502` at
//! once, `max_pending` bounds the waiting, and the request carries its PRODUCER span's context while the reply's
//! handling joins the same trace.

mod broker_support;
mod otel_support;
mod process_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use broker_support::*;
use process_support::python;
use serde_json::{Value, json};

/// The pika responder on its own queue; killed when dropped.
struct Responder {
    child: Child,
    queue: String,
}

impl Responder {
    /// Starts answering requests on a new queue, after `delay` seconds each.
    async fn start(delay: f64) -> Responder {
        let queue = random_name("rr-q");
        Responder::spawn("responder.py", &[amqp_url(), queue.clone(), delay.to_string()], queue).await
    }

    /// Runs `tests/bridge_support/SCRIPT ARGS…` and waits until it prints `ready`; `queue` is where it listens.
    async fn spawn(script: &str, args: &[String], queue: String) -> Responder {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bridge_support").join(script);
        let mut child = Command::new(python())
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(line.trim(), "ready", "{script} did not start");
        Responder { child, queue }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway with broker `rabbit` and route `rpc` on `POST /rpc` sending to `queue` (default exchange).
async fn gateway(queue: &str, extra: Value) -> Gateway {
    let mut rr = json!({
        "broker": "rabbit", "exchange": "", "routing_key": queue, "timeout": "5s",
        "headers": ["x-want-status"], "reply_headers": ["x-quote-id", "x-seen-route"]
    });
    if let (Value::Object(r), Value::Object(e)) = (&mut rr, extra) {
        r.extend(e);
    }
    let gw = Gateway::start(json!({
        "brokers": { "rabbit": { "kind": "amqp", "url": amqp_url() } },
        "routes": [{ "name": "rpc", "match": { "path": "/rpc", "methods": ["POST"] }, "request_reply": rr }]
    }))
    .await;
    eventually("the gateway to connect to RabbitMQ", async || gw.brokers_up().await).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_of_200_concurrent_requests_gets_its_own_reply() {
    let _lock = RabbitLock::shared().await;
    let responder = Responder::start(0.0).await;
    let gw = std::sync::Arc::new(gateway(&responder.queue, json!({})).await);
    let calls = (0..200).map(|i| {
        let gw = gw.clone();
        tokio::spawn(async move { (i, gw.post("/rpc", &[("content-type", "text/plain")], format!("n{i}")).await) })
    });
    for call in calls {
        let (i, r) = call.await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), format!("reply:n{i}"), "request {i} got another request's reply");
        assert_eq!(r.header("content-type"), "text/plain");
        assert_eq!(r.header("x-seen-route"), "rpc");
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_request_reply_total", &[("route", "rpc"), ("outcome", "replied")]), Some(200.0));
    assert_eq!(metric(&m, "sluice_request_reply_pending", &[("route", "rpc")]), Some(0.0), "{m}");
    let durations = metric(&m, "sluice_request_reply_duration_seconds_count", &[("route", "rpc")]);
    assert_eq!(durations, Some(200.0), "each round trip's duration is observed: {m}");
}

#[tokio::test]
async fn the_responder_picks_the_status_and_the_reply_comes_back_byte_for_byte() {
    let _lock = RabbitLock::shared().await;
    let responder = Responder::start(0.0).await;
    let gw = gateway(&responder.queue, json!({})).await;
    let body = binary_body();
    let r =
        gw.post("/rpc", &[("x-want-status", "201"), ("content-type", "application/octet-stream")], body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(&r.body[..6], b"reply:");
    assert_eq!(&r.body[6..], &body[..], "the reply body byte for byte");
    assert_eq!(r.header("content-type"), "application/octet-stream");
    assert!(r.header("x-quote-id").starts_with("q-"), "listed reply headers are copied");

    let r = gw.post("/rpc", &[("x-want-status", "422")], "x").await;
    assert_eq!(r.status, 422);
    let r = gw.post("/rpc", &[("x-want-status", "not-a-status")], "x").await;
    assert_problem(&r, 502, "rpc");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_request_reply_total", &[("route", "rpc"), ("outcome", "invalid_reply")]), Some(1.0));
}

#[tokio::test]
async fn no_responder_is_a_504_after_the_timeout_and_a_late_reply_is_dropped_and_counted() {
    let _lock = RabbitLock::shared().await;
    // Someone consumes the queue, but answers each request after 1.5 s, when the gateway stopped waiting (0.5 s).
    let responder = Responder::start(1.5).await;
    let gw = gateway(&responder.queue, json!({ "timeout": "500ms" })).await;
    assert_late_reply_dropped(&gw, "rabbit", &[]).await;
}

/// A request the responder answers after the route's timeout: `504`, then the reply dropped and counted for
/// `broker`.
async fn assert_late_reply_dropped(gw: &Gateway, broker: &str, headers: &[(&str, &str)]) {
    let r = gw.post("/rpc", headers, "too slow").await;
    let problem = assert_problem(&r, 504, "rpc");
    assert_eq!(problem["title"], "No reply in time", "{problem}");
    eventually("the late reply to be counted", async || {
        metric(&gw.metrics().await, "sluice_request_reply_late_total", &[("broker", broker)]) == Some(1.0)
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_request_reply_total", &[("route", "rpc"), ("outcome", "no_reply")]), Some(1.0));
}

#[tokio::test]
async fn an_unroutable_request_is_a_502_at_once() {
    let _lock = RabbitLock::shared().await;
    // No queue has this name: RabbitMQ returns the (mandatory) message, long before the 60 s timeout.
    let gw = gateway(&random_name("rr-nobody"), json!({ "timeout": "60s" })).await;
    let started = std::time::Instant::now();
    let r = gw.post("/rpc", &[], "x").await;
    assert_problem(&r, 502, "rpc");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "answered without waiting for the timeout");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_request_reply_total", &[("route", "rpc"), ("outcome", "unroutable")]), Some(1.0));
}

#[tokio::test]
async fn the_request_carries_the_trace_and_the_reply_is_recorded_in_it() {
    use otel_support::{KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER, otlp_endpoint, wait_for_trace};
    let _lock = RabbitLock::shared().await;
    let responder = Responder::start(0.0).await;
    let gw = Gateway::start(json!({
        "telemetry": { "otlp_endpoint": otlp_endpoint(), "service_name": "sluice-test", "access_log": false },
        "brokers": { "rabbit": { "kind": "amqp", "url": amqp_url() } },
        "routes": [{ "name": "rpc", "match": { "path": "/rpc" }, "request_reply": {
            "broker": "rabbit", "exchange": "", "routing_key": responder.queue, "reply_headers": ["x-seen-traceparent"]
        } }]
    }))
    .await;
    eventually("the gateway to connect to RabbitMQ", async || gw.brokers_up().await).await;
    let trace = format!("{:032x}", fastrand::u128(1..));
    let r = gw.post("/rpc", &[("traceparent", &format!("00-{trace}-{:016x}-01", fastrand::u64(1..)))], "t").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let spans = wait_for_trace(&trace, 3, std::time::Duration::from_secs(30)).await;
    let of = |kind| spans.iter().find(|s| s.kind == kind).unwrap_or_else(|| panic!("kind {kind} in {spans:#?}"));
    let (server, producer, consumer) = (of(KIND_SERVER), of(KIND_PRODUCER), of(KIND_CONSUMER));
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(consumer.parent_span_id, producer.span_id, "the reply's handling follows the request it answers");
    assert_eq!(consumer.name, "process reply");
    assert_eq!(
        r.header("x-seen-traceparent"),
        format!("00-{trace}-{}-01", producer.span_id),
        "the responder saw the PRODUCER span as the request's parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_bounds_the_waiting_requests_and_a_gone_client_frees_its_place() {
    let _lock = RabbitLock::shared().await;
    let responder = Responder::start(30.0).await; // takes requests, answers none in time
    let gw = std::sync::Arc::new(gateway(&responder.queue, json!({ "timeout": "60s", "max_pending": 1 })).await);
    let waiting = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.post("/rpc", &[], "first").await })
    };
    eventually("the first request to wait", async || {
        metric(&gw.metrics().await, "sluice_request_reply_pending", &[("route", "rpc")]) == Some(1.0)
    })
    .await;
    let r = gw.post("/rpc", &[], "second").await;
    assert_problem(&r, 503, "rpc");
    assert_eq!(r.header("retry-after"), "1");
    // The first client goes away: its place is free again.
    waiting.abort();
    eventually("the abandoned request to stop waiting", async || {
        metric(&gw.metrics().await, "sluice_request_reply_pending", &[("route", "rpc")]) == Some(0.0)
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_request_reply_total", &[("route", "rpc"), ("outcome", "too_many_pending")]),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------------------- Kafka

/// The confluent-kafka responder on `topic`, answering each request after `delay` seconds; killed when dropped.
async fn kafka_responder(topic: &str, delay: f64) -> Responder {
    let args = [kafka_bootstrap(), topic.to_owned(), delay.to_string()];
    Responder::spawn("kafka_responder.py", &args, topic.to_owned()).await
}

/// A gateway with Kafka broker `events` and route `rpc` sending to `topic`, replies on `reply_topic`; returns once
/// the reply topic is consumed (`/readyz?verbose` says the route serves).
async fn kafka_gateway(topic: &str, reply_topic: &str, extra: Value) -> Gateway {
    let mut rr = json!({
        "broker": "events", "topic": topic, "key": "{header.x-id}", "reply_topic": reply_topic, "timeout": "10s",
        "headers": ["x-want-status"], "reply_headers": ["x-quote-id"]
    });
    if let (Value::Object(r), Value::Object(e)) = (&mut rr, extra) {
        r.extend(e);
    }
    let gw = Gateway::start(json!({
        "brokers": { "events": { "kind": "kafka", "bootstrap": kafka_bootstrap() } },
        "routes": [{ "name": "rpc", "match": { "path": "/rpc", "methods": ["POST"] }, "request_reply": rr }]
    }))
    .await;
    eventually("the gateway to consume its reply topic", async || {
        gw.admin_get("/readyz?verbose").await.json()["routes"]["rpc"] == "serving"
    })
    .await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_requests_each_get_their_own_reply_from_the_reply_topic() {
    let _kafka = KafkaLock::shared().await;
    let (topic, reply_topic) = (create_topic("rr-req", 3).await, create_topic("rr-rep", 2).await);
    let _responder = kafka_responder(&topic, 0.0).await;
    let gw = std::sync::Arc::new(kafka_gateway(&topic, &reply_topic, json!({})).await);
    let calls = (0..200).map(|i| {
        let gw = gw.clone();
        let body = format!("k{i}");
        tokio::spawn(async move {
            (i, gw.post("/rpc", &[("x-id", &format!("id-{i}")), ("content-type", "text/plain")], body).await)
        })
    });
    for call in calls {
        let (i, r) = call.await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), format!("reply:k{i}"), "request {i} got another request's reply");
        assert_eq!(r.header("content-type"), "text/plain");
        assert!(r.header("x-quote-id").starts_with("q-"));
    }
    let r = gw.post("/rpc", &[("x-id", "s"), ("x-want-status", "202")], "status").await;
    assert_eq!((r.status, r.text().as_str()), (202, "reply:status"));
    // Every request went to the request topic with the headers a responder needs.
    let records = kafka_read_all(&topic, 3).await;
    assert_eq!(records.len(), 201);
    for record in &records {
        assert_eq!(record.header("sluice-reply-to").as_deref(), Some(reply_topic.as_str()));
        assert_eq!(record.header("sluice-correlation-id"), record.header("sluice-id"));
    }
}

#[tokio::test]
async fn kafka_without_a_responder_is_a_504_and_an_unknown_topic_a_502() {
    let _kafka = KafkaLock::shared().await;
    let (topic, reply_topic) = (create_topic("rr-silent", 1).await, create_topic("rr-silent-rep", 1).await);
    let gw = kafka_gateway(&topic, &reply_topic, json!({ "timeout": "500ms" })).await;
    let r = gw.post("/rpc", &[("x-id", "1")], "anyone?").await;
    assert_problem(&r, 504, "rpc");

    let gw = kafka_gateway(&random_name("rr-no-such-topic"), &reply_topic, json!({ "timeout": "60s" })).await;
    let started = std::time::Instant::now();
    let r = gw.post("/rpc", &[("x-id", "1")], "x").await;
    assert_problem(&r, 502, "rpc");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "answered without waiting for the timeout");
}

#[tokio::test]
async fn kafka_a_late_reply_is_dropped_and_counted_after_the_504() {
    let _kafka = KafkaLock::shared().await;
    let (topic, reply_topic) = (create_topic("rr-late", 1).await, create_topic("rr-late-rep", 1).await);
    // Answers each request after 1.5 s, when the gateway stopped waiting (0.5 s).
    let _responder = kafka_responder(&topic, 1.5).await;
    let gw = kafka_gateway(&topic, &reply_topic, json!({ "timeout": "500ms" })).await;
    assert_late_reply_dropped(&gw, "events", &[("x-id", "1")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_answers_the_waiting_requests_at_once() {
    let _lock = RabbitLock::shared().await;
    let responder = Responder::start(30.0).await; // takes the request, answers long after
    // A broker name of this test's own: only its connection (`sluice-NAME`) is closed.
    let broker = random_name("rr-lost");
    let gw = std::sync::Arc::new(
        Gateway::start(json!({
            "brokers": { broker.clone(): { "kind": "amqp", "url": amqp_url() } },
            "routes": [{ "name": "rpc", "match": { "path": "/rpc" }, "request_reply": {
                "broker": broker, "exchange": "", "routing_key": responder.queue, "timeout": "60s"
            } }]
        }))
        .await,
    );
    eventually("the gateway to connect to RabbitMQ", async || gw.brokers_up().await).await;
    let waiting = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.post("/rpc", &[], "x").await })
    };
    eventually("the request to wait for its reply", async || {
        metric(&gw.metrics().await, "sluice_request_reply_pending", &[("route", "rpc")]) == Some(1.0)
    })
    .await;
    let name = format!("sluice-{broker}");
    let closed = tokio::task::spawn_blocking(move || close_connections_named(&name)).await.unwrap();
    assert_eq!(closed, 1, "the gateway's connection was found and closed");
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await.expect("answered at once").unwrap();
    assert_problem(&r, 503, "rpc");
}

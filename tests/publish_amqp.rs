//! End-to-end tests of publish routes on a real RabbitMQ (`SLUICE_TEST_AMQP_URL`): `sluice::run` on port 0, a real
//! HTTP client, and an independent AMQP connection that declares each test's own exchange and queue and checks what
//! arrived. A missing broker fails the tests. Each test holds the shared RabbitMQ lock, so the outage test
//! (`publish_amqp_outage.rs`, which stops the broker) never runs at the same time.

mod broker_support;

use std::collections::HashSet;

use broker_support::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

/// A test's own direct exchange with one queue bound to it under `binding_key`, and the checking connection.
struct Topology {
    exchange: String,
    queue: String,
    amqp: Amqp,
    _lock: RabbitLock,
}

async fn topology(binding_key: &str) -> Topology {
    let lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let exchange = random_name("e2e-x");
    let queue = random_name("e2e-q");
    amqp.exchange(&exchange, false).await;
    amqp.queue(&queue, &exchange, binding_key, false).await;
    Topology { exchange, queue, amqp, _lock: lock }
}

impl Topology {
    async fn drain(&self) -> Vec<Delivered> {
        self.amqp.drain(&self.queue).await
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let (channel, queue, exchange) = (self.amqp.channel.clone(), self.queue.clone(), self.exchange.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
                let _ = channel.exchange_delete(exchange.as_str().into(), Default::default()).await;
            });
        }
    }
}

/// A gateway with broker `rabbit` and the given routes.
async fn gateway(routes: Vec<Value>) -> Gateway {
    let gw = Gateway::start(json!({
        "brokers": { "rabbit": { "kind": "amqp", "url": amqp_url(), "confirm_timeout": "10s" } },
        "routes": routes
    }))
    .await;
    // The producer connects in the background; a publish before that is (correctly) a 503.
    eventually("the gateway to connect to RabbitMQ (/readyz 200)", async || gw.brokers_up().await).await;
    gw
}

/// Route `hooks` on `POST /hooks/{tenant}` publishing to `exchange` with routing key `orders.{path.tenant}`, plus
/// `extra` keys.
fn hooks_route(exchange: &str, extra: Value) -> Value {
    let mut publish = json!({ "broker": "rabbit", "exchange": exchange, "routing_key": "orders.{path.tenant}" });
    if let (Value::Object(p), Value::Object(e)) = (&mut publish, extra) {
        p.extend(e);
    }
    publish_route("hooks", "/hooks/{tenant}", publish)
}

/// Checks a confirmed AMQP 202 body and returns its id.
fn receipt(body: &Value, exchange: &str, routing_key: &str) -> String {
    assert_eq!(body["broker"], "rabbit", "{body}");
    assert_eq!(body["exchange"], exchange, "{body}");
    assert_eq!(body["routing_key"], routing_key, "{body}");
    assert!(body.get("confirmed").is_none(), "a confirmed publish does not say confirmed=false: {body}");
    let id = body["id"].as_str().unwrap_or_else(|| panic!("id: {body}")).to_owned();
    assert_uuid_v7(&id);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_is_the_body_byte_for_byte_with_properties_and_headers() {
    let t = topology("orders.acme").await;
    let gw = gateway(vec![hooks_route(&t.exchange, json!({ "headers": ["X-GitHub-Event", "x-absent"] }))]).await;
    let body = binary_body();
    let before = unix_now();
    let r = gw
        .post(
            "/hooks/acme",
            &[
                ("content-type", "application/octet-stream"),
                ("x-request-id", "req-amqp-1"),
                ("traceparent", CLIENT_TRACEPARENT),
                ("tracestate", "vendor=opaque"),
                ("x-github-event", "push"),
                ("x-not-listed", "secret"),
            ],
            body.clone(),
        )
        .await;
    let after = unix_now();
    let id = receipt(&assert_accepted(&r), &t.exchange, "orders.acme");

    let got = t.drain().await;
    assert_eq!(got.len(), 1, "exactly one message");
    let m = &got[0];
    assert_eq!(m.body, body, "the message is the request body, byte for byte");
    assert_eq!(m.exchange, t.exchange);
    assert_eq!(m.routing_key, "orders.acme", "routing key rendered from its template");
    let p = &m.properties;
    assert_eq!(m.message_id().as_deref(), Some(id.as_str()), "message_id is the 202's id");
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("sluice"));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent by default");
    assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/octet-stream"));
    let ts = p.timestamp().expect("timestamp property") as i64;
    assert!(before - 60 <= ts && ts <= after + 60, "timestamp {ts} is about now ({before}..{after})");
    assert_eq!(m.header("sluice-id").as_deref(), Some(id.as_str()));
    assert_eq!(m.header("sluice-route").as_deref(), Some("hooks"));
    assert_eq!(m.header("x-request-id").as_deref(), Some("req-amqp-1"));
    assert_continues_client_trace(&m.header("traceparent").expect("traceparent header"));
    assert_eq!(m.header("tracestate").as_deref(), Some("vendor=opaque"));
    assert_eq!(m.header("x-github-event").as_deref(), Some("push"), "listed header, lower-cased");
    let names = m.header_names();
    assert!(!names.iter().any(|n| n == "x-absent" || n == "x-not-listed"), "only listed, present headers: {names:?}");
    assert!(!names.iter().any(|n| n.starts_with("cloudEvents:")), "raw format: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_preflight_to_a_publish_route_publishes_nothing_and_credentials_are_allowed() {
    let t = topology("orders.acme").await;
    let mut route = hooks_route(&t.exchange, json!({}));
    route["cors"] = json!({ "allow_origins": ["https://app.example.com"], "allow_methods": ["POST"],
                            "allow_headers": ["content-type"], "allow_credentials": true });
    let gw = gateway(vec![route]).await;
    let origin = ("origin", "https://app.example.com");
    let preflight =
        [origin, ("access-control-request-method", "POST"), ("access-control-request-headers", "content-type")];
    let req = |method: &str| {
        let mut b = Request::builder().method(method).uri(format!("http://{}/hooks/acme", gw.addr));
        for (k, v) in preflight {
            b = b.header(k, v);
        }
        b.body(Full::default()).unwrap()
    };
    let r = gw.send(req("OPTIONS")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), "https://app.example.com");
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-allow-methods"), "POST");
    assert!(t.drain().await.is_empty(), "a preflight publishes nothing");

    let r = gw.post("/hooks/acme", &[origin, ("content-type", "text/plain")], "with cookies").await;
    receipt(&assert_accepted(&r), &t.exchange, "orders.acme");
    assert_eq!(r.header("access-control-allow-origin"), "https://app.example.com");
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    let got = t.drain().await;
    assert_eq!(got.len(), 1, "the actual request is published once");
    assert_eq!(got[0].body, b"with cookies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_false_publishes_delivery_mode_1() {
    let t = topology("orders.acme").await;
    let gw = gateway(vec![hooks_route(&t.exchange, json!({ "persistent": false }))]).await;
    let r = gw.post("/hooks/acme", &[("content-type", "text/plain")], "transient").await;
    let id = receipt(&assert_accepted(&r), &t.exchange, "orders.acme");
    let got = t.drain().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id().as_deref(), Some(id.as_str()));
    assert_eq!(*got[0].properties.delivery_mode(), Some(1));
    assert_eq!(got[0].body, b"transient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_mode_headers_decode_with_the_sdk_and_structured_passes_unchanged() {
    let t = topology("orders.acme").await;
    let gw = gateway(vec![hooks_route(
        &t.exchange,
        json!({ "format": "cloudevents", "ce_type": "com.example.{header.x-event}", "ce_source": "/tenants/{path.tenant}" }),
    )])
    .await;
    let body = br#"{"order":42}"#.to_vec();
    let before = unix_now();
    let r = gw.post("/hooks/acme", &[("content-type", "application/json"), ("x-event", "created")], body.clone()).await;
    let after = unix_now();
    let id = receipt(&assert_accepted(&r), &t.exchange, "orders.acme");

    let ce = json!({ "specversion": "1.0", "id": "client-1", "source": "/client", "type": "com.example.client" });
    let structured = serde_json::to_vec(&ce).unwrap();
    let r = gw
        .post("/hooks/acme", &[("content-type", "application/cloudevents+json"), ("x-event", "x")], structured.clone())
        .await;
    let structured_id = receipt(&assert_accepted(&r), &t.exchange, "orders.acme");

    let got = t.drain().await;
    assert_eq!(got.len(), 2);
    let binary = got.iter().find(|m| m.message_id().as_deref() == Some(id.as_str())).expect("binary-mode message");
    let names = binary.header_names();
    for attr in ["id", "source", "type", "specversion", "time"] {
        assert!(names.contains(&format!("cloudEvents:{attr}")), "cloudEvents:{attr} in {names:?}");
    }
    assert_eq!(binary.header("cloudEvents:specversion").as_deref(), Some("1.0"));
    let content_type = binary.properties.content_type().as_ref().map(|s| s.to_string());
    let event = decode_cloudevent("cloudEvents:", binary.header_pairs(), content_type, binary.body.clone());
    use cloudevents::AttributesReader as _;
    assert_eq!(event.specversion(), cloudevents::event::SpecVersion::V10);
    assert_eq!(event.id(), id, "cloudEvents:id is the sluice-id / message_id");
    assert_eq!(event.source().to_string(), "/tenants/acme");
    assert_eq!(event.ty(), "com.example.created");
    assert_eq!(event.datacontenttype(), Some("application/json"));
    let time = event.time().expect("cloudEvents:time").timestamp();
    assert!(before - 60 <= time && time <= after + 60, "time {time} is about now ({before}..{after})");
    assert_eq!(binary.body, body, "the body stays the data, byte for byte");

    let s = got.iter().find(|m| m.message_id().as_deref() == Some(structured_id.as_str())).expect("structured");
    assert_eq!(s.body, structured, "a structured event is published unchanged");
    assert!(
        !s.header_names().iter().any(|n| n.starts_with("cloudEvents:")),
        "no binary-mode attributes on a structured event: {:?}",
        s.header_names()
    );
    let ct = s.properties.content_type().as_ref().map(|s| s.to_string());
    assert_eq!(ct.as_deref(), Some("application/cloudevents+json"));
    let decoded = decode_cloudevent("cloudEvents:", vec![], ct, s.body.clone());
    assert_eq!(decoded.id(), "client-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_with_mandatory_is_502_and_no_message_is_anywhere() {
    let t = topology("orders.acme").await;
    // A second exchange with no binding at all.
    let lonely = random_name("e2e-x-unbound");
    t.amqp.exchange(&lonely, false).await;
    let gw = gateway(vec![
        hooks_route(&t.exchange, json!({})),
        publish_route("lonely", "/lonely", json!({ "broker": "rabbit", "exchange": lonely, "routing_key": "any" })),
    ])
    .await;

    let r = gw.post("/hooks/nobody", &[("content-type", "text/plain")], "no binding for orders.nobody").await;
    assert_problem(&r, 502, "hooks");
    let r = gw.post("/lonely", &[], "exchange without bindings").await;
    assert_problem(&r, 502, "lonely");
    assert!(t.drain().await.is_empty(), "the returned message is not in the bound queue");

    // The route (and the channel the return came back on) keeps working; exactly that one message is queued.
    for i in 0..5 {
        let r = gw.post("/hooks/acme", &[], format!("ok {i}")).await;
        receipt(&assert_accepted(&r), &t.exchange, "orders.acme");
    }
    let got = t.drain().await;
    assert_eq!(
        got.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        (0..5).map(|i| format!("ok {i}").into_bytes()).collect::<Vec<_>>()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_publish_total", &[("route", "hooks"), ("broker", "rabbit"), ("outcome", "unroutable")]),
        Some(1.0),
        "{m}"
    );
    let _ = t.amqp.channel.exchange_delete(lonely.as_str().into(), Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonexistent_exchange_is_502_and_the_gateway_keeps_publishing() {
    let t = topology("orders.acme").await;
    let missing = random_name("e2e-x-missing");
    let gw = gateway(vec![
        hooks_route(&t.exchange, json!({})),
        publish_route("missing", "/missing", json!({ "broker": "rabbit", "exchange": missing, "routing_key": "k" })),
    ])
    .await;
    for _ in 0..3 {
        let r = gw.post("/missing", &[], "to nowhere").await;
        let p = assert_problem(&r, 502, "missing");
        assert!(!p["detail"].as_str().unwrap().contains(&missing), "no broker message leaks: {p}");
    }
    // The broker closed the channel of each failed publish; the others (and new ones) still work.
    for i in 0..10 {
        let r = gw.post("/hooks/acme", &[], format!("ok {i}")).await;
        receipt(&assert_accepted(&r), &t.exchange, "orders.acme");
    }
    assert_eq!(t.drain().await.len(), 10);
    assert_eq!(gw.ready().await, 200, "a channel error is not a broker outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_template_value_is_400_naming_it_and_nothing_is_published() {
    let t = topology("github.push").await;
    let gw = gateway(vec![publish_route(
        "github",
        "/webhooks/github",
        json!({ "broker": "rabbit", "exchange": t.exchange, "routing_key": "github.{header.x-github-event}" }),
    )])
    .await;
    let r = gw.post("/webhooks/github", &[("content-type", "application/json")], "{}").await;
    let p = assert_problem(&r, 400, "github");
    assert!(p["detail"].as_str().unwrap().contains("x-github-event"), "the detail names what is missing: {p}");
    assert!(t.drain().await.is_empty());
    let r = gw.post("/webhooks/github", &[("x-github-event", "push")], "{}").await;
    receipt(&assert_accepted(&r), &t.exchange, "github.push");
    assert_eq!(t.drain().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_none_answers_202_unconfirmed_and_the_message_arrives() {
    let t = topology("orders.acme").await;
    let gw = gateway(vec![hooks_route(&t.exchange, json!({ "ack": "none" }))]).await;
    let r = gw.post("/hooks/acme", &[("content-type", "text/plain")], "fire and forget").await;
    let doc = assert_accepted(&r);
    assert_eq!(doc["confirmed"], false, "{doc}");
    assert_eq!(doc["exchange"], t.exchange.as_str(), "{doc}");
    assert_eq!(doc["routing_key"], "orders.acme", "{doc}");
    let id = doc["id"].as_str().unwrap().to_owned();
    assert_uuid_v7(&id);
    let mut got = Vec::new();
    eventually("the unconfirmed message to arrive", async || {
        got.extend(t.drain().await);
        !got.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id().as_deref(), Some(id.as_str()));
    assert_eq!(got[0].body, b"fire and forget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_publishes_once_and_replays_the_first_answer() {
    let t = topology("orders.acme").await;
    let gw = gateway(vec![hooks_route(&t.exchange, json!({}))]).await;
    let n = 20;
    let first = idempotent_repeats(&gw, "hooks", "/hooks/acme", &[("content-type", "text/plain")], n).await;
    let second = idempotent_repeats(&gw, "hooks", "/hooks/acme", &[], n).await;
    let first_id = receipt(&first, &t.exchange, "orders.acme");
    let second_id = receipt(&second, &t.exchange, "orders.acme");
    let mut distinct = HashSet::new();
    for i in 0..5 {
        let key = random_name("distinct");
        let r = gw.post("/hooks/acme", &[("idempotency-key", &key)], format!("distinct {i}")).await;
        assert!(!r.replayed());
        distinct.insert(receipt(&assert_accepted(&r), &t.exchange, "orders.acme"));
    }
    assert_eq!(distinct.len(), 5, "different keys are different messages");

    let got = t.drain().await;
    let ids: Vec<String> = got.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(got.len(), 2 + 5, "one message per key: {ids:?}");
    let unique: HashSet<String> = ids.into_iter().collect();
    assert_eq!(unique.len(), 7);
    assert!(unique.contains(&first_id) && unique.contains(&second_id));
    assert!(distinct.is_subset(&unique));
    let stored = got.iter().find(|m| m.message_id().as_deref() == Some(first_id.as_str())).unwrap();
    assert!(stored.body.starts_with(b"attempt "), "the stored message is one of the concurrent first requests");
}

/// A repeat of an `Idempotency-Key` while the first request with it is still in flight is a `409`, forced: a relay
/// between the gateway and RabbitMQ holds what the broker sends back, so the first publish reaches the queue but its
/// publisher confirm does not reach the gateway until the test releases it. Of two requests sent at once with one
/// key, exactly one claims it and waits for its confirm; the other must be the `409`. Once released, the claimant is
/// answered `202`, a repeat replays that answer, and the queue holds one message: the claimant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_repeated_while_the_first_is_in_flight_is_409_then_replayed() {
    let t = topology("orders.acme").await;
    let relay = Relay::start(&amqp_addr()).await;
    let gw = Gateway::start(json!({
        "brokers": { "rabbit": { "kind": "amqp", "url": amqp_url_via(relay.addr), "confirm_timeout": "60s" } },
        "routes": [hooks_route(&t.exchange, json!({}))]
    }))
    .await;
    eventually("the gateway to connect to RabbitMQ through the relay", async || gw.brokers_up().await).await;
    let key = random_name("in-flight");
    let send = |body: &'static str| {
        let (gw, key) = (&gw, &key);
        Box::pin(async move {
            let r = gw.post("/hooks/acme", &[("idempotency-key", key), ("content-type", "text/plain")], body).await;
            (body, r)
        })
    };

    relay.hold();
    let ((loser, conflict), claimant) = first_of(send("one"), send("two")).await;
    assert_problem(&conflict, 409, "hooks");
    assert!(!conflict.replayed(), "a 409 is not a replay");
    // The claimant's message is at the broker; only its confirm is held, so the key is still in flight.
    eventually("the claimant's message to reach the queue", async || t.amqp.len(&t.queue).await == 1).await;
    let again = gw.post("/hooks/acme", &[("idempotency-key", &key)], "three").await;
    assert_problem(&again, 409, "hooks");

    relay.release();
    let (body, first) = claimant.await;
    assert_ne!(body, loser);
    assert!(!first.replayed(), "the claimant's answer is the original");
    let id = receipt(&assert_accepted(&first), &t.exchange, "orders.acme");

    let repeat = gw.post("/hooks/acme", &[("idempotency-key", &key)], "four").await;
    assert_eq!(repeat.status, 202, "{}", repeat.text());
    assert!(repeat.replayed(), "a repeat after the first succeeded carries idempotent-replayed: true");
    assert_eq!(repeat.body, first.body, "a repeat answers the first receipt again, byte for byte");
    assert_eq!(repeat.header("content-type"), "application/json");

    let got = t.drain().await;
    assert_eq!(got.len(), 1, "one key, one message: {:?}", got.iter().map(|m| &m.body).collect::<Vec<_>>());
    assert_eq!(got[0].message_id().as_deref(), Some(id.as_str()));
    assert_eq!(got[0].body, body.as_bytes(), "the message is the claimant's body");
    let m = gw.metrics().await;
    let outcome = |o| metric(&m, "sluice_publish_total", &[("route", "hooks"), ("broker", "rabbit"), ("outcome", o)]);
    assert_eq!(outcome("confirmed"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_report_the_broker() {
    let t = topology("orders.acme").await;
    let gw = gateway(vec![hooks_route(&t.exchange, json!({}))]).await;
    assert_eq!(gw.ready().await, 200);
    for i in 0..3 {
        let r = gw.post("/hooks/acme", &[], format!("m{i}")).await;
        receipt(&assert_accepted(&r), &t.exchange, "orders.acme");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_publish_total", &[("route", "hooks"), ("broker", "rabbit"), ("outcome", "confirmed")]),
        Some(3.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sluice_broker_up", &[("broker", "rabbit")]), Some(1.0), "{m}");
    assert_eq!(metric(&m, "sluice_publish_duration_seconds_count", &[("broker", "rabbit")]), Some(3.0), "{m}");
    assert_eq!(t.drain().await.len(), 3);
}

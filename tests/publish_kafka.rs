//! End-to-end tests of publish routes on a real Apache Kafka (`SLUICE_TEST_KAFKA`, auto topic creation off):
//! `sluice::run` on port 0, a real HTTP client, and an independent rdkafka consumer that checks what was stored.
//! Every test uses its own topics; a missing broker fails the tests.

mod broker_support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;

use broker_support::*;
use serde_json::{Value, json};

/// The Kafka broker of the test gateways.
fn kafka_broker() -> Value {
    json!({ "kind": "kafka", "bootstrap": kafka_bootstrap(), "delivery_timeout": "20s" })
}

/// A gateway with broker `events` and the given routes.
async fn gateway(routes: Vec<Value>) -> Gateway {
    Gateway::start(json!({ "brokers": { "events": kafka_broker() }, "routes": routes })).await
}

/// Route `orders` on `POST /events/{tenant}/orders`: topic `e2e-orders-{path.tenant}` (the test creates
/// `e2e-orders-<uuid>` and posts to `/events/<uuid>/orders`), key `{header.x-order-id}`, plus `extra` keys.
fn orders_route(extra: Value) -> Value {
    let mut publish = json!({ "broker": "events", "topic": "e2e-orders-{path.tenant}", "key": "{header.x-order-id}" });
    if let (Value::Object(p), Value::Object(e)) = (&mut publish, extra) {
        p.extend(e);
    }
    publish_route("orders", "/events/{tenant}/orders", publish)
}

/// A topic for [`orders_route`] and the path that publishes to it.
async fn orders_topic(partitions: i32) -> (String, String) {
    let topic = create_topic("e2e-orders", partitions).await;
    let tenant = topic.strip_prefix("e2e-orders-").unwrap().to_owned();
    (topic, format!("/events/{tenant}/orders"))
}

/// The 202 body's partition and offset (and checks the rest of it).
fn receipt(body: &Value, topic: &str) -> (String, i32, i64) {
    assert_eq!(body["broker"], "events", "{body}");
    assert_eq!(body["topic"], topic, "{body}");
    assert!(body.get("confirmed").is_none(), "a confirmed publish does not say confirmed=false: {body}");
    let id = body["id"].as_str().unwrap_or_else(|| panic!("id: {body}")).to_owned();
    assert_uuid_v7(&id);
    let partition = body["partition"].as_i64().unwrap_or_else(|| panic!("partition: {body}")) as i32;
    let offset = body["offset"].as_i64().unwrap_or_else(|| panic!("offset: {body}"));
    (id, partition, offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_is_the_body_byte_for_byte_with_its_metadata_where_the_202_says() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(3).await;
    let gw = gateway(vec![orders_route(json!({ "headers": ["X-Tenant", "x-absent"] }))]).await;
    let body = binary_body();
    let r = gw
        .post(
            &path,
            &[
                ("content-type", "application/octet-stream"),
                ("x-order-id", "order-42"),
                ("x-request-id", "req-kafka-1"),
                ("traceparent", CLIENT_TRACEPARENT),
                ("tracestate", "vendor=opaque"),
                ("x-tenant", "acme"),
                ("x-not-listed", "secret"),
            ],
            body.clone(),
        )
        .await;
    let doc = assert_accepted(&r);
    let (id, partition, offset) = receipt(&doc, &topic);
    assert_eq!(r.header("x-request-id"), "req-kafka-1");

    let rec = kafka_read_at(&topic, partition, offset).await;
    assert_eq!((rec.partition, rec.offset), (partition, offset), "the record is where the 202 says");
    assert_eq!(rec.payload, body, "the record is the request body, byte for byte");
    assert_eq!(rec.key.as_deref(), Some(&b"order-42"[..]), "key rendered from {{header.x-order-id}}");
    assert_eq!(rec.header("content-type").as_deref(), Some("application/octet-stream"));
    assert_eq!(rec.header_count("content-type"), 1);
    assert_eq!(rec.header("sluice-id").as_deref(), Some(id.as_str()), "sluice-id is the 202's id");
    assert_eq!(rec.header("sluice-route").as_deref(), Some("orders"));
    assert_eq!(rec.header("x-request-id").as_deref(), Some("req-kafka-1"));
    assert_continues_client_trace(&rec.header("traceparent").expect("traceparent header"));
    assert_eq!(rec.header("tracestate").as_deref(), Some("vendor=opaque"));
    assert_eq!(rec.header("x-tenant").as_deref(), Some("acme"), "a header listed in publish.headers, lower-cased");
    assert_eq!(rec.header("x-absent"), None, "a listed header the request lacks is not invented");
    assert_eq!(rec.header("x-not-listed"), None, "unlisted request headers stay out of the record");
    assert!(rec.headers.iter().all(|(k, _)| !k.starts_with("ce_")), "no CloudEvents attributes in raw format");

    // Exactly one record was written.
    assert_eq!(kafka_read_all(&topic, 3).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_lands_on_the_same_partition_and_every_receipt_is_exact() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(3).await;
    let gw = gateway(vec![orders_route(json!({}))]).await;
    let keys = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    let per_key = 6;
    let sends = keys.iter().flat_map(|key| {
        let (gw, path) = (&gw, &path);
        (0..per_key).map(move |i| async move {
            let body = format!("{key}-{i}");
            let r = gw.post(path, &[("x-order-id", key), ("content-type", "text/plain")], body.clone()).await;
            (*key, body, r)
        })
    });
    let results = futures_util::future::join_all(sends).await;

    let mut partitions_by_key: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    let mut expected: BTreeMap<(i32, i64), (String, String, &str)> = BTreeMap::new();
    for (key, body, r) in &results {
        let (id, partition, offset) = receipt(&assert_accepted(r), &topic);
        partitions_by_key.entry(key).or_default().insert(partition);
        assert!(expected.insert((partition, offset), (id, body.clone(), key)).is_none(), "two 202s name one record");
    }
    for (key, partitions) in &partitions_by_key {
        assert_eq!(partitions.len(), 1, "key {key} spread over partitions {partitions:?}");
    }
    let used: BTreeSet<i32> = partitions_by_key.values().flatten().copied().collect();
    assert!(used.len() > 1, "{} keys all on one partition {used:?}: keys are not used", keys.len());

    let records = kafka_read_all(&topic, 3).await;
    assert_eq!(records.len(), keys.len() * per_key, "one record per 202, no duplicates");
    for rec in &records {
        let (id, body, key) =
            expected.get(&(rec.partition, rec.offset)).unwrap_or_else(|| panic!("record no 202 named: {rec:?}"));
        assert_eq!(rec.header("sluice-id").as_deref(), Some(id.as_str()), "the 202's partition/offset hold its record");
        assert_eq!(rec.payload, body.as_bytes());
        assert_eq!(rec.key.as_deref(), Some(key.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_mode_attributes_decode_with_the_sdk() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(1).await;
    let gw = gateway(vec![orders_route(json!({
        "format": "cloudevents",
        "ce_type": "com.example.order.{header.x-event}",
        "ce_source": "/tenants/{path.tenant}"
    }))])
    .await;
    let tenant = path.split('/').nth(2).unwrap().to_owned();
    let body = br#"{"order":42,"total":"9.99"}"#.to_vec();
    let before = unix_now();
    let r = gw
        .post(
            &path,
            &[("content-type", "application/json"), ("x-order-id", "o-1"), ("x-event", "created")],
            body.clone(),
        )
        .await;
    let after = unix_now();
    let (id, partition, offset) = receipt(&assert_accepted(&r), &topic);
    let rec = kafka_read_at(&topic, partition, offset).await;
    for attr in ["ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time"] {
        assert_eq!(rec.header_count(attr), 1, "{attr} once in {:?}", rec.headers);
    }
    assert_eq!(rec.header("ce_specversion").as_deref(), Some("1.0"));

    let headers = rec
        .headers
        .iter()
        .filter(|(k, _)| k != "content-type")
        .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
        .collect();
    let event = decode_cloudevent("ce_", headers, rec.header("content-type"), rec.payload.clone());
    use cloudevents::AttributesReader as _;
    assert_eq!(event.specversion(), cloudevents::event::SpecVersion::V10);
    assert_eq!(event.id(), id, "ce_id is the sluice-id");
    assert_eq!(event.source().to_string(), format!("/tenants/{tenant}"), "ce_source rendered from its template");
    assert_eq!(event.ty(), "com.example.order.created", "ce_type rendered from its template");
    assert_eq!(event.datacontenttype(), Some("application/json"));
    let time = event.time().expect("ce_time").timestamp();
    assert!(before - 60 <= time && time <= after + 60, "ce_time {time} is about now ({before}..{after})");
    match event.data() {
        Some(cloudevents::Data::Json(v)) => assert_eq!(v, &serde_json::from_slice::<Value>(&body).unwrap()),
        Some(cloudevents::Data::Binary(b)) => assert_eq!(b, &body),
        other => panic!("event data {other:?}"),
    }
    assert_eq!(rec.payload, body, "binary mode: the body stays the data, byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_cloudevents_pass_unchanged() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(1).await;
    let gw = gateway(vec![orders_route(json!({ "format": "cloudevents" }))]).await;
    let event = json!({
        "specversion": "1.0",
        "id": "client-event-7",
        "source": "/client",
        "type": "com.example.client",
        "datacontenttype": "application/json",
        "data": { "hello": "world" }
    });
    let body = serde_json::to_vec_pretty(&event).unwrap();
    let ct = "application/cloudevents+json; charset=utf-8";
    let r = gw.post(&path, &[("content-type", ct), ("x-order-id", "o-7")], body.clone()).await;
    let (id, partition, offset) = receipt(&assert_accepted(&r), &topic);
    let rec = kafka_read_at(&topic, partition, offset).await;
    assert_eq!(rec.payload, body, "a structured event is published unchanged");
    assert_eq!(rec.header("content-type").as_deref(), Some(ct));
    assert!(rec.headers.iter().all(|(k, _)| !k.starts_with("ce_")), "no binary-mode attributes: {:?}", rec.headers);
    assert_eq!(rec.header("sluice-id").as_deref(), Some(id.as_str()));

    let decoded = decode_cloudevent("ce_", vec![], rec.header("content-type"), rec.payload.clone());
    use cloudevents::AttributesReader as _;
    assert_eq!(decoded.id(), "client-event-7", "the client's event, not one made by the gateway");
    assert_eq!(decoded.ty(), "com.example.client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_502_and_nothing_is_produced() {
    let _kafka = KafkaLock::shared().await;
    let gw = gateway(vec![orders_route(json!({}))]).await;
    let tenant = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("e2e-orders-{tenant}");
    for attempt in 0..2 {
        let r = gw.post(&format!("/events/{tenant}/orders"), &[("x-order-id", "o-1")], "lost?").await;
        let p = assert_problem(&r, 502, "orders");
        let detail = p["detail"].as_str().unwrap();
        assert!(!detail.contains("127.0.0.1") && !detail.contains(&kafka_bootstrap()), "no internals leak: {detail}");
        assert_eq!(r.header("idempotent-replayed"), "", "attempt {attempt}");
    }
    assert!(!topic_exists(&topic).await, "the topic was not created and holds nothing");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_publish_total", &[("route", "orders"), ("broker", "events"), ("outcome", "unroutable")]),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sluice_publish_total", &[("route", "orders"), ("broker", "events"), ("outcome", "confirmed")])
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_template_value_is_400_naming_it_and_nothing_is_produced() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(1).await;
    let gw = gateway(vec![orders_route(json!({}))]).await;
    let r = gw.post(&path, &[("content-type", "text/plain")], "no key header").await;
    let p = assert_problem(&r, 400, "orders");
    assert!(p["detail"].as_str().unwrap().contains("x-order-id"), "the detail names what is missing: {p}");
    assert!(kafka_read_all(&topic, 1).await.is_empty(), "nothing was produced");

    // With the header the same request goes through, at the topic's first offset.
    let r = gw.post(&path, &[("content-type", "text/plain"), ("x-order-id", "o-1")], "with key").await;
    let (_, partition, offset) = receipt(&assert_accepted(&r), &topic);
    assert_eq!((partition, offset), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_none_answers_202_unconfirmed_and_the_record_arrives() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(1).await;
    let gw = gateway(vec![orders_route(json!({ "ack": "none" }))]).await;
    let r = gw.post(&path, &[("x-order-id", "o-1"), ("content-type", "text/plain")], "fire and forget").await;
    let doc = assert_accepted(&r);
    assert_eq!(doc["confirmed"], false, "{doc}");
    assert_eq!(doc["topic"], topic.as_str(), "{doc}");
    assert_eq!(doc["broker"], "events", "{doc}");
    assert!(doc.get("partition").is_none() && doc.get("offset").is_none(), "nothing confirmed, no position: {doc}");
    let id = doc["id"].as_str().unwrap().to_owned();
    assert_uuid_v7(&id);

    // At-most-once means "not confirmed to the client", not "lost": with the broker up the record arrives.
    let mut records = Vec::new();
    eventually("the unconfirmed record to arrive", async || {
        records = kafka_read_all(&topic, 1).await;
        !records.is_empty()
    })
    .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"fire and forget");
    assert_eq!(records[0].header("sluice-id").as_deref(), Some(id.as_str()));
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_publish_total", &[("route", "orders"), ("broker", "events"), ("outcome", "unconfirmed")]),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_publishes_once_and_replays_the_first_answer() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(3).await;
    let gw = gateway(vec![orders_route(json!({}))]).await;
    let headers = [("x-order-id", "o-1"), ("content-type", "text/plain")];
    let n = 20;
    let first = idempotent_repeats(&gw, "orders", &path, &headers, n).await;
    let second = idempotent_repeats(&gw, "orders", &path, &headers, n).await;
    let (first_id, p1, o1) = receipt(&first, &topic);
    let (second_id, p2, o2) = receipt(&second, &topic);
    assert_ne!(first_id, second_id, "two keys, two messages");

    // Different keys are different messages.
    let mut distinct = HashSet::new();
    for i in 0..5 {
        let key = format!("distinct-{i}-{}", uuid::Uuid::new_v4());
        let mut h = headers.to_vec();
        h.push(("idempotency-key", &key));
        let r = gw.post(&path, &h, format!("distinct {i}")).await;
        assert!(!r.replayed());
        distinct.insert(receipt(&assert_accepted(&r), &topic).0);
    }
    assert_eq!(distinct.len(), 5);

    let records = kafka_read_all(&topic, 3).await;
    let ids: Vec<String> = records.iter().map(|r| r.header("sluice-id").unwrap()).collect();
    assert_eq!(records.len(), 2 + 5, "one record per key: {ids:?}");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 7);
    assert!(unique.contains(&first_id) && unique.contains(&second_id));
    assert!(distinct.iter().all(|id| unique.contains(id)));
    let at = |p, o| records.iter().find(|r| (r.partition, r.offset) == (p, o)).unwrap();
    assert_eq!(at(p1, o1).header("sluice-id").as_deref(), Some(first_id.as_str()));
    assert!(at(p1, o1).payload.starts_with(b"attempt "), "the stored record is one of the concurrent first requests");
    assert_eq!(at(p2, o2).header("sluice-id").as_deref(), Some(second_id.as_str()));
}

/// Two requests sent at once with one `Idempotency-Key`, for `path` on `gw`: returns the `409` (checked to be a
/// problem of `route`) and the other request, still to be awaited, with the body each sent. Exactly one of the two
/// can claim the key; the caller makes sure the claimant stays in flight long enough for the other to find it so.
async fn conflicting_pair<'a>(
    gw: &'a Gateway,
    route: &str,
    path: &'a str,
    key: &'a str,
) -> (Resp, impl Future<Output = (&'static str, Resp)> + 'a) {
    let send = move |body: &'static str| {
        Box::pin(async move {
            let r = gw
                .post(path, &[("idempotency-key", key), ("x-order-id", "o-1"), ("content-type", "text/plain")], body)
                .await;
            (body, r)
        })
    };
    let ((_, conflict), claimant) = first_of(send("one"), send("two")).await;
    assert_problem(&conflict, 409, route);
    assert!(!conflict.replayed(), "a 409 is not a replay");
    (conflict, claimant)
}

/// A repeat of an `Idempotency-Key` while the first request with it is in flight is a `409`, forced on the success
/// path: with `linger.ms = 3000` librdkafka keeps each record in its local queue for three seconds before sending it,
/// so the claimant of the key stays in flight while the other request of a simultaneous pair finds the key taken.
/// The claimant is then answered `202`, a repeat replays that receipt, and the topic holds one record: the claimant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_repeated_while_the_first_is_in_flight_is_409_then_replayed() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(1).await;
    let mut broker = kafka_broker();
    broker["options"] = json!({ "linger.ms": "3000" });
    let gw = Gateway::start(json!({ "brokers": { "events": broker }, "routes": [orders_route(json!({}))] })).await;
    let key = random_name("in-flight");

    let (_, claimant) = conflicting_pair(&gw, "orders", &path, &key).await;
    let (body, first) = claimant.await;
    assert!(!first.replayed(), "the claimant's answer is the original");
    let (id, partition, offset) = receipt(&assert_accepted(&first), &topic);

    let repeat = gw.post(&path, &[("idempotency-key", &key), ("x-order-id", "o-1")], "three").await;
    assert_eq!(repeat.status, 202, "{}", repeat.text());
    assert!(repeat.replayed(), "a repeat after the first succeeded carries idempotent-replayed: true");
    assert_eq!(repeat.body, first.body, "a repeat answers the first receipt again, byte for byte");
    assert_eq!(repeat.header("content-type"), "application/json");

    let records = kafka_read_all(&topic, 1).await;
    assert_eq!(records.len(), 1, "one key, one record: {records:?}");
    assert_eq!((records[0].partition, records[0].offset), (partition, offset));
    assert_eq!(records[0].header("sluice-id").as_deref(), Some(id.as_str()));
    assert_eq!(records[0].payload, body.as_bytes(), "the record is the claimant's body");
}

/// The same conflict on the failure path, where only the gateway's bookkeeping is at work: the broker is a listener
/// that never answers, so the claimant's publish is in flight until the 3s delivery timeout and then fails (`503`);
/// nothing can have been stored. The failure releases the key: a retry with it is processed afresh (a `503` of its
/// own, neither a `409` nor a replay of the first failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_of_a_failed_first_request_is_released_for_a_retry() {
    let blackhole = Blackhole::start().await;
    let gw = Gateway::start(json!({
        "brokers": { "events": { "kind": "kafka", "bootstrap": blackhole.addr.to_string(), "delivery_timeout": "3s" } },
        "routes": [orders_route(json!({}))]
    }))
    .await;
    let key = random_name("in-flight");
    let path = "/events/acme/orders";

    let (_, claimant) = conflicting_pair(&gw, "orders", path, &key).await;
    let (_, first) = claimant.await;
    assert_unavailable(&first, "orders");
    assert!(!first.replayed());

    let retry = gw.post(path, &[("idempotency-key", &key), ("x-order-id", "o-1")], "retry").await;
    assert_unavailable(&retry, "orders");
    assert!(!retry.replayed(), "a failure is not stored for replay");

    let m = gw.metrics().await;
    let outcome = |o| metric(&m, "sluice_publish_total", &[("route", "orders"), ("broker", "events"), ("outcome", o)]);
    assert_eq!(
        outcome("unavailable"),
        Some(2.0),
        "the claimant and the retry each tried the broker, the 409 did not: {m}"
    );
    assert_eq!(outcome("confirmed").unwrap_or(0.0), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_report_the_broker() {
    let _kafka = KafkaLock::shared().await;
    let (topic, path) = orders_topic(1).await;
    let gw = gateway(vec![orders_route(json!({}))]).await;
    eventually("/readyz 200 with Kafka up", async || gw.brokers_up().await).await;
    for i in 0..3 {
        let r = gw.post(&path, &[("x-order-id", "o-1")], format!("m{i}")).await;
        receipt(&assert_accepted(&r), &topic);
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_publish_total", &[("route", "orders"), ("broker", "events"), ("outcome", "confirmed")]),
        Some(3.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sluice_broker_up", &[("broker", "events")]), Some(1.0), "{m}");
    assert_eq!(metric(&m, "sluice_publish_duration_seconds_count", &[("broker", "events")]), Some(3.0), "{m}");
}

/// A client that gives up (disconnects) while its request with an `Idempotency-Key` is still being published must be
/// able to retry with the same key: once the first attempt is over, a retry is answered (replay or a new attempt),
/// not `409 in flight` for the rest of the idempotency window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_is_released_when_the_client_goes_away() {
    let _kafka = KafkaLock::shared().await;
    use tokio::io::AsyncWriteExt as _;
    // A "broker" that accepts connections and never answers: every publish waits for its metadata lookup.
    let blackhole = Blackhole::start().await;
    let gw = Gateway::start(json!({
        "brokers": { "events": { "kind": "kafka", "bootstrap": blackhole.addr.to_string(), "delivery_timeout": "2s" } },
        "routes": [publish_route("slow", "/slow", json!({ "broker": "events", "topic": "t" }))]
    }))
    .await;
    let key = random_name("gone");

    // The client sends its request, then goes away while the gateway is still waiting for the broker.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request =
        format!("POST /slow HTTP/1.1\r\nhost: sluice\r\nidempotency-key: {key}\r\ncontent-length: 5\r\n\r\nhello");
    stream.write_all(request.as_bytes()).await.unwrap();
    eventually("the request to be in flight", async || {
        metric(&gw.metrics().await, "sluice_requests_in_flight", &[]).unwrap_or(0.0) >= 1.0
    })
    .await;
    drop(stream);

    // The first attempt ends (after at most the 2s delivery timeout); a retry with the same key must then get an
    // answer of its own (here 503: the broker is unreachable), not 409 forever.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = gw.post("/slow", &[("idempotency-key", &key)], "hello").await;
        if r.status != 409 {
            assert_unavailable(&r, "slow");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key of a request whose client went away stays `in flight`: every retry gets 409"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

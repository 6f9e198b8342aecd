//! The drop-in produce APIs (`publish.api`) end to end on the real brokers, with the request examples from each
//! project's docs: what the client is answered is the project's shape, and what an independent consumer reads is
//! what each record said (value, key, partition, headers).

mod broker_support;

use broker_support::*;
use serde_json::{Value, json};

async fn kafka_gateway(name: &str, path: &str, topic: &str, api: &str) -> Gateway {
    let broker = json!({ "kind": "kafka", "bootstrap": kafka_bootstrap(), "delivery_timeout": "20s" });
    let route = json!({
        "name": name,
        "match": { "path": path, "methods": ["POST"] },
        "publish": { "broker": "events", "topic": topic, "api": api },
    });
    Gateway::start(json!({ "brokers": { "events": broker }, "routes": [route] })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strimzi_records_become_records_and_the_answer_has_their_offsets() {
    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("dropin-strimzi", 3).await;
    let gw = kafka_gateway("bridge", "/topics/{topic}", "{path.topic}", "strimzi").await;
    let path = format!("/topics/{topic}");
    // The bridge's OpenAPI example.
    let body = r#"{"records":[{"key":"key1","value":"value1"},{"value":"value2","partition":1},{"value":"value3"}]}"#;
    let r = gw.post(&path, &[("content-type", "application/vnd.kafka.json.v2+json")], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/vnd.kafka.v2+json");
    let offsets = r.json()["offsets"].as_array().cloned().unwrap();
    assert_eq!(offsets.len(), 3, "one offset per record: {offsets:?}");
    assert_eq!(offsets[1]["partition"], 1, "the partition the record named");
    let first =
        kafka_read_at(&topic, offsets[0]["partition"].as_i64().unwrap() as i32, offsets[0]["offset"].as_i64().unwrap())
            .await;
    assert_eq!((first.key.as_deref(), &first.payload[..]), (Some(&br#""key1""#[..]), &br#""value1""#[..]), "JSON text");
    assert!(first.header("sluice-id").is_some(), "with the route's metadata");

    // Binary format with headers, to a partition named in the path (the spec's example), and async.
    let gw = kafka_gateway("bridge-p", "/topics/{topic}/partitions/{partition}", "{path.topic}", "strimzi").await;
    let body = r#"{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50","headers":[{"key":"key1","value":"dmFsdWUx"}]}]}"#;
    let r = gw
        .post(&format!("{path}/partitions/2"), &[("content-type", "application/vnd.kafka.binary.v2+json")], body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = &r.json()["offsets"][0];
    assert_eq!(o["partition"], 2);
    let rec = kafka_read_at(&topic, 2, o["offset"].as_i64().unwrap()).await;
    assert_eq!((rec.key.as_deref(), &rec.payload[..]), (Some(&b"key"[..]), &b"confluent"[..]));
    assert_eq!(rec.header("key1").as_deref(), Some("value1"));
    let r = gw
        .post(
            &format!("{path}/partitions/2?async=true"),
            &[("content-type", "application/vnd.kafka.text.v2+json")],
            r#"{"records":[{"value":"000123"}]}"#,
        )
        .await;
    assert_eq!(r.status, 204, "async: no offsets");

    // The bridge's error shapes.
    let r = gw
        .post(
            &format!("{path}/partitions/2"),
            &[("content-type", "application/vnd.kafka.text.v2+json")],
            r#"{"records":[{"value":1}]}"#,
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error_code"], 422, "{}", r.text());
    let r = gw
        .post(
            &format!("{path}/partitions/x"),
            &[("content-type", "application/vnd.kafka.json.v2+json")],
            r#"{"records":[]}"#,
        )
        .await;
    assert_eq!((r.status, r.json()["message"].as_str()), (422, Some("Specified partition is not a valid number")));
    let r = gw
        .post(
            &format!("/topics/{}-nope/partitions/0", topic),
            &[("content-type", "application/vnd.kafka.json.v2+json")],
            r#"{"records":[{"value":1}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "per-record errors, as the bridge: {}", r.text());
    assert_eq!(r.json()["offsets"][0]["error_code"], 404, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_v3_concatenated_records_get_one_delivery_report_each() {
    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("dropin-confluent", 2).await;
    let gw =
        kafka_gateway("rest", "/v3/clusters/{cluster}/topics/{topic}/records", "{path.topic}", "confluent-v3").await;
    let path = format!("/v3/clusters/cluster-1/topics/{topic}/records");
    // The spec's example (value type JSON instead of AVRO: no Schema Registry), then two more records in the same body.
    let body = r#"{"partition_id":1,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="},{"name":"Header-2","value":"SGVhZGVyLTI="}],"key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo":"bar"}},"timestamp":"2021-02-05T19:14:42Z"}
{"value":{"type":"STRING","data":"a"}}{"value":{"type":"AVRO","schema_id":1,"data":{}}}"#;
    let r = gw.post(&path, &[("content-type", "application/json")], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    let text = r.text();
    assert!(text.ends_with("\r\n"), "each report ends with CRLF");
    let reports: Vec<Value> =
        text.split("\r\n").filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reports.len(), 3, "{text}");
    let first = &reports[0];
    assert_eq!(
        (first["error_code"].as_i64(), first["cluster_id"].as_str(), first["topic_name"].as_str()),
        (Some(200), Some("cluster-1"), Some(topic.as_str()))
    );
    assert_eq!(
        (first["partition_id"].as_i64(), &first["key"], &first["value"]),
        (Some(1), &json!({"type":"BINARY","size":6}), &json!({"type":"JSON","size":13}))
    );
    assert_eq!(reports[1]["error_code"], 200);
    assert_eq!(reports[2]["error_code"], 400, "Schema Registry formats are refused in place: {}", reports[2]);
    let rec = kafka_read_at(&topic, 1, first["offset"].as_i64().unwrap()).await;
    assert_eq!((rec.key.as_deref(), &rec.payload[..]), (Some(&b"foobar"[..]), &br#"{"foo":"bar"}"#[..]));
    assert_eq!(rec.header("header-1").as_deref(), Some("Header-1"));
    let r = gw
        .post(&format!("/v3/clusters/c/topics/{topic}-nope/records"), &[], r#"{"value":{"type":"STRING","data":"x"}}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(r.text().trim_end()).unwrap()["error_code"],
        40403,
        "unknown topic: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_publishes_are_cloudevents_and_bulk_failures_name_their_entries() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let queue = random_name("dropin-dapr");
    amqp.queue(&queue, "amq.direct", &queue, false).await;
    let route = |name: &str, path: &str| {
        json!({
            "name": name,
            "match": { "path": path, "methods": ["POST"] },
            "publish": { "broker": "pubsub", "exchange": "amq.direct", "routing_key": "{path.topic}", "api": "dapr", "allowed_routing_keys": ["dropin-dapr-*", "nowhere"] },
        })
    };
    let broker = json!({ "kind": "amqp", "url": amqp_url() });
    let gw = Gateway::start(json!({ "brokers": { "pubsub": broker }, "routes": [
        route("dapr", "/v1.0/publish/{pubsub}/{topic}"),
        route("dapr-bulk", "/v1.0-alpha1/publish/bulk/{pubsub}/{topic}"),
    ] }))
    .await;
    eventually("connected", async || gw.brokers_up().await).await;

    // The docs' single publish: a CloudEvent around the JSON body, 204.
    let r = gw
        .post(
            &format!("/v1.0/publish/pubsub/{queue}"),
            &[("content-type", "application/json")],
            r#"{"status":"completed"}"#,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = gw
        .post(
            &format!("/v1.0/publish/pubsub/{queue}?metadata.rawPayload=true"),
            &[("content-type", "application/json")],
            r#"{"status":"raw"}"#,
        )
        .await;
    assert_eq!(r.status, 204);
    // The docs' bulk publish.
    let bulk = r#"[{"entryId":"ae6bf7c6-4af2-11ed-b878-0242ac120002","event":"first text message","contentType":"text/plain"},
                   {"entryId":"b1f40bd6-4af2-11ed-b878-0242ac120002","event":{"message":"second JSON message"},"contentType":"application/json"}]"#;
    let r = gw
        .post(&format!("/v1.0-alpha1/publish/bulk/pubsub/{queue}"), &[("content-type", "application/json")], bulk)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let mut got = Vec::new();
    eventually("four messages", async || {
        got.extend(amqp.drain(&queue).await);
        got.len() >= 4
    })
    .await;
    let event: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "com.dapr.event.sent");
    assert_eq!((event["topic"].as_str(), event["pubsubname"].as_str()), (Some(queue.as_str()), Some("pubsub")));
    assert_eq!(
        (event["datacontenttype"].as_str(), &event["data"]),
        (Some("application/json"), &json!({ "status": "completed" }))
    );
    assert_eq!(got[0].properties.content_type().as_ref().map(|c| c.as_str()), Some("application/cloudevents+json"));
    assert_eq!(got[1].body, br#"{"status":"raw"}"#, "rawPayload: the body as it is");
    // The entries of one bulk request are published at once: compared as a set.
    let mut texts: Vec<String> =
        got[2..].iter().map(|m| serde_json::from_slice::<Value>(&m.body).unwrap()["data"].to_string()).collect();
    texts.sort();
    assert_eq!(texts, [r#""first text message""#, r#"{"message":"second JSON message"}"#]);
    // Errors in Dapr's shapes.
    let r = gw.post(&format!("/v1.0/publish/other/{queue}"), &[], "x").await;
    assert_eq!((r.status, r.json()["errorCode"].as_str()), (404, Some("ERR_PUBSUB_NOT_FOUND")));
    let r = gw.post(&format!("/v1.0-alpha1/publish/bulk/pubsub/{queue}"), &[], r#"[{"event":1}]"#).await;
    assert_eq!((r.status, r.json()["errorCode"].as_str()), (400, Some("ERR_PUBSUB_EVENTS_SER")));
    let r = gw
        .post(
            "/v1.0-alpha1/publish/bulk/pubsub/nowhere",
            &[],
            r#"[{"entryId":"a","event":1,"contentType":"application/json"}]"#,
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text());
    let failed = r.json();
    assert_eq!(
        (failed["errorCode"].as_str(), failed["failedEntries"][0]["entryId"].as_str()),
        (Some("ERR_PUBSUB_PUBLISH_MESSAGE"), Some("a"))
    );
    let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_v3_streaming_mode_reports_each_record_while_the_client_keeps_sending() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("dropin-stream", 1).await;
    let gw =
        kafka_gateway("rest", "/v3/clusters/{cluster}/topics/{topic}/records", "{path.topic}", "confluent-v3").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream_of(rx));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/v3/clusters/c1/topics/{topic}/records", gw.addr))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(br#"{"value":{"type":"STRING","data":"one"}}"#)))).await.unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200, "the stream is open");
    let mut reports = res.into_body();
    let mut next_report = async || {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let frame = reports.frame().await.expect("a report").unwrap();
            line.extend_from_slice(&frame.into_data().unwrap());
        }
        serde_json::from_slice::<Value>(&line[..line.len() - 2]).unwrap()
    };
    // The first report comes while the request is still open: the client has not sent the second record yet.
    let first = next_report().await;
    assert_eq!((first["error_code"].as_i64(), first["offset"].as_i64()), (Some(200), Some(0)), "{first}");
    // A record split across two chunks.
    tx.send(Ok(Frame::data(Bytes::from_static(br#"{"value":{"type":"STRI"#)))).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(br#"NG","data":"two"}}"#)))).await.unwrap();
    let second = next_report().await;
    assert_eq!((second["error_code"].as_i64(), second["offset"].as_i64()), (Some(200), Some(1)), "{second}");
    drop(tx);
    assert!(reports.frame().await.is_none(), "the answer ends with the request");
    let records = kafka_read_all(&topic, 1).await;
    let values: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(values, [&b"one"[..], &b"two"[..]]);
}

/// A stream of what arrives on `rx`.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

//! `[[subscriptions]]` from the real RabbitMQ and the real Kafka to real HTTP upstreams, fed by independent producers
//! (Python's pika and confluent-kafka, `tests/bridge_support/produce.py`, or the test's own client): messages are
//! delivered after retries when the upstream fails for a while, in order per Kafka partition, a `4xx` is
//! dead-lettered at once with `sluice-error`, an upstream that always fails gets the message dead-lettered after
//! `max_retries + 1` attempts with `sluice-attempts`, without a dead letter a failing message is never dropped, and a
//! rebalance hands partitions over without the old owner delivering on.

mod broker_support;
mod process_support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use broker_support::common::{Upstream, reply};
use broker_support::*;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::{Value, json};

/// A work queue and a dead-letter queue of the test's own.
struct Queues {
    amqp: Amqp,
    work: String,
    dead: String,
    _lock: RabbitLock,
}

impl Queues {
    async fn new() -> Queues {
        let lock = RabbitLock::shared().await;
        let amqp = Amqp::connect().await;
        let (work, dead) = (random_name("sub-q"), random_name("sub-dlq"));
        for q in [&work, &dead] {
            amqp.queue(q, "amq.direct", q, false).await;
        }
        Queues { amqp, work, dead, _lock: lock }
    }

    /// Publishes `body` to the work queue with a `sluice-id` header and a message id, as a gateway would.
    async fn publish(&self, id: &str, body: &str) {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("sluice-id"), AMQPValue::LongString(id.into()));
        headers.insert(ShortString::from("x-tenant"), AMQPValue::LongString("acme".into()));
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("text/plain".into())
            .with_headers(headers);
        self.amqp
            .channel
            .basic_publish(
                "amq.direct".into(),
                self.work.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let (channel, queues) = (self.amqp.channel.clone(), [self.work.clone(), self.dead.clone()]);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for q in queues {
                    let _ = channel.queue_delete(q.as_str().into(), Default::default()).await;
                }
            });
        }
    }
}

/// A gateway with broker `rabbit`, upstream `app` at `url` and subscription `deliver` from `queue`, plus `extra`.
async fn gateway(url: &str, queue: &str, extra: Value) -> Gateway {
    let broker = ("rabbit", json!({ "kind": "amqp", "url": amqp_url() }));
    subscribed(url, broker, json!({ "broker": "rabbit", "queue": queue }), json!({ "concurrency": 4 }), extra).await
}

/// A gateway with broker `name` (`config`), upstream `app` at `url` and subscription `deliver` from `from`, with the
/// test defaults, `defaults` and `extra` on top; returns once it consumes.
async fn subscribed(url: &str, broker: (&str, Value), from: Value, defaults: Value, extra: Value) -> Gateway {
    let mut sub = json!({
        "name": "deliver",
        "from": from,
        "to": { "upstream": "app", "path": "/internal/orders", "timeout": "2s" },
        "retry": { "max_retries": 5, "backoff": "10ms", "max_backoff": "50ms" }
    });
    for more in [defaults, extra] {
        if let (Value::Object(s), Value::Object(e)) = (&mut sub, more) {
            s.extend(e);
        }
    }
    let gw = Gateway::start(json!({
        "brokers": { broker.0: broker.1 },
        "upstreams": { "app": { "endpoints": [url], "outlier": { "consecutive_failures": 1000 } } },
        "subscriptions": [sub]
    }))
    .await;
    eventually("the subscription to consume", async || {
        gw.admin_get("/readyz?verbose").await.json()["subscriptions"]["deliver"] == "consuming"
    })
    .await;
    gw
}

fn delivered(gw_metrics: &str, outcome: &str) -> f64 {
    metric(gw_metrics, "sluice_deliveries_total", &[("subscription", "deliver"), ("outcome", outcome)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_after_the_upstream_recovers() {
    let q = Queues::new().await;
    // Each message fails twice (503), then is taken.
    let tries: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let t = tries.clone();
    let app = Upstream::start(move |seen| {
        let t = t.clone();
        async move {
            let id = seen.headers.get("sluice-id").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let n = {
                let mut t = t.lock().unwrap();
                let n = t.entry(id).or_default();
                *n += 1;
                *n
            };
            if n <= 2 { reply(503, "busy") } else { reply(200, "taken") }
        }
    })
    .await;
    let gw = gateway(&app.url(), &q.work, json!({})).await;
    let messages: Vec<Value> = (0..20)
        .map(|i| {
            json!({ "body": format!("order {i}"), "message_id": format!("m-{i}"), "content_type": "text/plain",
                    "headers": { "sluice-id": format!("m-{i}"), "x-tenant": "acme" } })
        })
        .collect();
    process_support::produce_independently(&["amqp", &amqp_url(), &q.work], &messages).await;
    eventually("20 deliveries", async || delivered(&gw.metrics().await, "delivered") == 20.0).await;

    let taken: Vec<_> =
        app.requests().into_iter().filter(|s| s.headers.get("sluice-attempt").is_some_and(|a| a == "3")).collect();
    assert_eq!(taken.len(), 20, "each message taken on its third attempt");
    let ids: HashSet<String> = taken.iter().map(|s| s.headers["sluice-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 20, "every message, once");
    let sample = &taken[0];
    assert_eq!(sample.method, "POST");
    assert_eq!(sample.uri.path(), "/internal/orders");
    assert_eq!(sample.headers["content-type"], "text/plain");
    assert_eq!(sample.headers["x-tenant"], "acme", "message headers become request headers");
    assert_eq!(sample.headers["sluice-routing-key"], q.work.as_str());
    assert!(sample.headers.contains_key("traceparent"));
    let id = sample.headers["sluice-id"].to_str().unwrap();
    assert_eq!(sample.body, format!("order {}", id.trim_start_matches("m-")));
    assert_eq!(delivered(&gw.metrics().await, "retried"), 40.0);
    assert_eq!(q.amqp.len(&q.work).await, 0, "every message acknowledged");
}

#[tokio::test]
async fn a_4xx_is_dead_lettered_at_once_and_a_5xx_after_the_last_retry() {
    let q = Queues::new().await;
    let app = Upstream::start(|seen| async move {
        if seen.body == "bad" { reply(400, "no such order") } else { reply(503, "down") }
    })
    .await;
    let dl = json!({ "dead_letter": { "exchange": "amq.direct", "routing_key": q.dead }, "retry": {
        "max_retries": 2, "backoff": "10ms", "max_backoff": "20ms"
    } });
    let gw = gateway(&app.url(), &q.work, dl).await;
    q.publish("bad-1", "bad").await;
    q.publish("down-1", "never taken").await;
    eventually("two dead letters", async || delivered(&gw.metrics().await, "dead_lettered") == 2.0).await;

    let dead = q.amqp.drain(&q.dead).await;
    assert_eq!(dead.len(), 2);
    let by_id =
        |id: &str| dead.iter().find(|d| d.message_id().as_deref() == Some(id)).unwrap_or_else(|| panic!("{id}"));
    let bad = by_id("bad-1");
    assert_eq!(bad.body, b"bad");
    assert_eq!(bad.header("sluice-error").as_deref(), Some("upstream answered 400"));
    assert_eq!(bad.header("sluice-attempts").as_deref(), Some("1"), "a 4xx is not retried");
    assert_eq!(bad.header("x-tenant").as_deref(), Some("acme"), "the original headers stay");
    let down = by_id("down-1");
    assert_eq!(down.body, b"never taken");
    assert_eq!(down.header("sluice-error").as_deref(), Some("upstream answered 503"));
    assert_eq!(down.header("sluice-attempts").as_deref(), Some("3"), "max_retries + 1 attempts");
    assert_eq!(app.hits(), 4);
    assert_eq!(q.amqp.len(&q.work).await, 0, "both acknowledged once dead-lettered");
}

#[tokio::test]
async fn without_a_dead_letter_a_failing_message_is_never_dropped() {
    let q = Queues::new().await;
    let app = Upstream::status(503, "down").await;
    let retry = json!({ "retry": { "max_retries": 1, "backoff": "10ms", "max_backoff": "50ms" } });
    let gw = gateway(&app.url(), &q.work, retry).await;
    q.publish("stuck-1", "keep me").await;
    eventually("the message to be stuck", async || {
        metric(&gw.metrics().await, "sluice_subscription_stuck", &[("subscription", "deliver")]) == Some(1.0)
    })
    .await;
    eventually("more retries past max_retries", async || app.hits() >= 5).await;
    // The gateway stops: the message goes back to its queue, still there for the next consumer.
    drop(gw);
    eventually("the message back in its queue", async || q.amqp.len(&q.work).await == 1).await;
}

// ---------------------------------------------------------------------------------------------------------- Kafka

/// Produces `records` (key, value) to `topic` with the test's own producer, each with a `sluice-id` header.
async fn produce(topic: &str, records: &[(String, String)]) {
    let items: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| {
            json!({ "key": key, "value": value, "headers": { "sluice-id": format!("r-{i}"), "ce_type": "com.example.order" } })
        })
        .collect();
    process_support::produce_independently(&["kafka", &kafka_bootstrap(), topic], &items).await;
}

/// A gateway with Kafka broker `events`, upstream `app` at `url` and subscription `deliver` from `topic` in `group`.
async fn kafka_gateway(url: &str, topic: &str, group: &str, extra: Value) -> Gateway {
    let broker = ("events", json!({ "kind": "kafka", "bootstrap": kafka_bootstrap() }));
    let from = json!({ "broker": "events", "topic": topic, "group": group });
    subscribed(url, broker, from, json!({ "concurrency": 8 }), extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_are_delivered_in_partition_order_and_committed() {
    let _kafka = KafkaLock::shared().await;
    let (topic, group) = (create_topic("sub", 3).await, random_name("sub-group"));
    // Every third record fails once: it is retried before the next record of its partition goes out.
    let taken: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
    let seen_once: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (t, s) = (taken.clone(), seen_once.clone());
    let app = Upstream::start(move |seen| {
        let (t, s) = (t.clone(), s.clone());
        async move {
            let header = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let id = header("sluice-id");
            let n: usize = id.trim_start_matches("r-").parse().unwrap_or(0);
            if n.is_multiple_of(3) && s.lock().unwrap().insert(id) {
                return reply(503, "once");
            }
            t.lock()
                .unwrap()
                .push((header("sluice-partition").parse().unwrap(), header("sluice-offset").parse().unwrap()));
            reply(200, "taken")
        }
    })
    .await;
    let records: Vec<(String, String)> = (0..30).map(|i| (format!("k{}", i % 6), format!("v-{i}"))).collect();
    produce(&topic, &records).await;
    let gw = kafka_gateway(&app.url(), &topic, &group, json!({})).await;
    eventually("30 deliveries", async || delivered(&gw.metrics().await, "delivered") == 30.0).await;

    let taken = taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 30);
    for p in 0..3 {
        let offsets: Vec<i64> = taken.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p} delivered out of order: {offsets:?}");
    }
    let sample = app.requests().into_iter().find(|s| s.headers.contains_key("sluice-topic")).unwrap();
    assert_eq!(sample.headers["sluice-topic"], topic.as_str());
    assert_eq!(sample.headers["ce-type"], "com.example.order", "Kafka's ce_* headers become ce-*");
    assert_eq!(delivered(&gw.metrics().await, "retried"), 10.0);
    eventually("sluice_subscription_lag to reach 0 on every partition", async || {
        let m = gw.metrics().await;
        (0..3).all(|p| {
            let p = p.to_string();
            metric(&m, "sluice_subscription_lag", &[("subscription", "deliver"), ("partition", &p)]) == Some(0.0)
        })
    })
    .await;

    // The group's offsets reach the end of every partition.
    eventually("the group's offsets to be committed", async || committed_to_the_end(&topic, &group, 3).await).await;
}

#[tokio::test]
async fn a_kafka_record_the_upstream_refuses_is_dead_lettered_to_a_topic() {
    let _kafka = KafkaLock::shared().await;
    let (topic, dlq, group) = (create_topic("sub-dl", 1).await, create_topic("sub-dlq", 1).await, random_name("sub-g"));
    let app = Upstream::start(|seen| async move {
        if seen.body == "bad" { reply(422, "invalid order") } else { reply(200, "ok") }
    })
    .await;
    produce(&topic, &[("a".to_owned(), "bad".to_owned()), ("a".to_owned(), "good".to_owned())]).await;
    let gw = kafka_gateway(&app.url(), &topic, &group, json!({ "dead_letter": { "topic": dlq } })).await;
    eventually("one delivered, one dead-lettered", async || {
        let m = gw.metrics().await;
        delivered(&m, "delivered") == 1.0 && delivered(&m, "dead_lettered") == 1.0
    })
    .await;
    let dead = kafka_read_all(&dlq, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"bad");
    assert_eq!(dead[0].header("sluice-error").as_deref(), Some("upstream answered 422"));
    assert_eq!(dead[0].header("sluice-attempts").as_deref(), Some("1"));
    assert_eq!(dead[0].header("sluice-id").as_deref(), Some("r-0"), "the original headers stay");
}

#[tokio::test]
async fn a_kafka_record_the_upstream_keeps_failing_is_dead_lettered_after_max_retries_plus_one_attempts() {
    let _kafka = KafkaLock::shared().await;
    let (topic, dlq, group) =
        (create_topic("sub-dl5", 1).await, create_topic("sub-dlq5", 1).await, random_name("sub-g"));
    let app = Upstream::status(503, "down").await;
    produce(&topic, &[("a".to_owned(), "doomed".to_owned())]).await;
    let extra = json!({
        "dead_letter": { "topic": dlq },
        "retry": { "max_retries": 2, "backoff": "10ms", "max_backoff": "50ms" }
    });
    let gw = kafka_gateway(&app.url(), &topic, &group, extra).await;
    eventually("the record dead-lettered", async || delivered(&gw.metrics().await, "dead_lettered") == 1.0).await;
    assert_eq!(app.hits(), 3, "max_retries + 1 attempts");
    let attempts: Vec<String> =
        app.requests().iter().map(|s| s.headers["sluice-attempt"].to_str().unwrap().to_owned()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let dead = kafka_read_all(&dlq, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"doomed");
    assert_eq!(dead[0].header("sluice-error").as_deref(), Some("upstream answered 503"));
    assert_eq!(dead[0].header("sluice-attempts").as_deref(), Some("3"));
    assert_eq!(delivered(&gw.metrics().await, "retried"), 2.0);
}

#[tokio::test]
async fn a_stuck_kafka_partition_shows_its_lag_and_holds_its_later_records_back() {
    let _kafka = KafkaLock::shared().await;
    let (topic, group) = (create_topic("sub-lag", 1).await, random_name("sub-lag-g"));
    let app = Upstream::status(503, "down").await;
    let records: Vec<(String, String)> = (0..5).map(|i| ("k".to_owned(), format!("v-{i}"))).collect();
    produce(&topic, &records).await;
    let gw = kafka_gateway(
        &app.url(),
        &topic,
        &group,
        json!({ "retry": {
        "max_retries": 1, "backoff": "10ms", "max_backoff": "50ms"
    } }),
    )
    .await;
    eventually("the lag of the stuck partition", async || {
        metric(&gw.metrics().await, "sluice_subscription_lag", &[("subscription", "deliver"), ("partition", "0")])
            == Some(5.0)
    })
    .await;
    eventually("retries of the first record", async || app.hits() >= 4).await;
    let ids: HashSet<String> =
        app.requests().iter().map(|s| s.headers["sluice-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(ids, HashSet::from(["r-0".to_owned()]), "the later records of the partition wait for the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_kafka_partition_does_not_hold_the_other_partitions_back() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let _kafka = KafkaLock::shared().await;
    let (topic, group) = (create_topic("sub-hol", 2).await, random_name("sub-hol-g"));
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
    // More records on partition 0 than its worker's buffer holds (512), so that partition gets paused.
    let sends = (0..600).map(|i| (0, format!("p0-{i}"))).chain((0..10).map(|i| (1, format!("p1-{i}"))));
    let sends: Vec<_> = sends
        .map(|(partition, value)| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let record = FutureRecord::<str, str>::to(&topic).partition(partition).payload(&value);
                producer.send(record, std::time::Duration::from_secs(10)).await.unwrap();
            }
        })
        .collect();
    futures_util::future::join_all(sends).await;
    // Partition 0's records always fail (no dead letter: they are retried for ever), partition 1's are taken.
    let app = Upstream::start(|seen| async move {
        if seen.body.starts_with(b"p0-") { reply(503, "not now") } else { reply(200, "ok") }
    })
    .await;
    let gw = kafka_gateway(
        &app.url(),
        &topic,
        &group,
        json!({ "retry": {
        "max_retries": 1, "backoff": "10ms", "max_backoff": "50ms"
    } }),
    )
    .await;
    let p0 = || -> HashSet<_> {
        app.requests().into_iter().filter(|s| s.body.starts_with(b"p0-")).map(|s| s.body).collect()
    };
    eventually("all of partition 1 delivered while partition 0 is stuck", async || {
        delivered(&gw.metrics().await, "delivered") == 10.0 && !p0().is_empty()
    })
    .await;
    assert_eq!(p0().len(), 1, "partition 0 is held at its first record");
}

/// Two gateways in one consumer group: when the second joins, the first loses partitions in a rebalance. It commits
/// what it delivered and abandons the rest of those partitions — the records it had fetched and the delivery in
/// flight — so the new owner alone delivers them from the committed offset on. Every record is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_hands_partitions_over_without_the_old_owner_delivering_on() {
    let _kafka = KafkaLock::shared().await;
    let (topic, group) = (create_topic("sub-rebalance", 4).await, random_name("sub-rebalance-g"));
    type Log = Arc<Mutex<Vec<(i32, i64, std::time::Instant)>>>;
    let upstream = |log: Log, pause: u64| {
        Upstream::start(move |seen| {
            let log = log.clone();
            async move {
                let header = |n: &str| seen.headers[n].to_str().unwrap().parse::<i64>().unwrap();
                log.lock().unwrap().push((
                    header("sluice-partition") as i32,
                    header("sluice-offset"),
                    std::time::Instant::now(),
                ));
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                reply(200, "taken")
            }
        })
    };
    let (slow, fast): (Log, Log) = (Arc::default(), Arc::default());
    let app_a = upstream(slow.clone(), 100).await;
    let app_b = upstream(fast.clone(), 1).await;
    let records: Vec<(String, String)> = (0..240).map(|i| (format!("k{}", i % 16), format!("v-{i}"))).collect();
    produce(&topic, &records).await;

    let a = kafka_gateway(&app_a.url(), &topic, &group, json!({})).await;
    eventually("the first gateway to deliver", async || slow.lock().unwrap().len() >= 8).await;
    let b = kafka_gateway(&app_b.url(), &topic, &group, json!({})).await;
    eventually("the second gateway to get partitions", async || !fast.lock().unwrap().is_empty()).await;
    let all = || {
        let mut done: HashSet<(i32, i64)> = slow.lock().unwrap().iter().map(|(p, o, _)| (*p, *o)).collect();
        done.extend(fast.lock().unwrap().iter().map(|(p, o, _)| (*p, *o)));
        done.len()
    };
    eventually("every record to be delivered", async || all() == 240).await;

    let (slow, fast) = (slow.lock().unwrap().clone(), fast.lock().unwrap().clone());
    for p in 0..4 {
        let Some(taken_over) = fast.iter().filter(|(q, _, _)| *q == p).map(|(_, _, at)| *at).min() else { continue };
        let after: Vec<i64> =
            slow.iter().filter(|(q, _, at)| *q == p && *at > taken_over).map(|(_, o, _)| *o).collect();
        assert!(
            after.len() <= 1,
            "partition {p}: the old owner went on delivering after the new one began: offsets {after:?}"
        );
    }
    drop((a, b));
}

/// A record another producer wrote without Sluice's headers still reaches the upstream with a `sluice-id` and an
/// `x-request-id` (the same id, so that logs and de-duplication can use either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_kafka_record_is_delivered_with_an_id_and_a_request_id() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let _kafka = KafkaLock::shared().await;
    let (topic, group) = (create_topic("sub-bare", 1).await, random_name("sub-bare-g"));
    let app = Upstream::start(|_| async { reply(200, "taken") }).await;
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
    let record: FutureRecord<'_, [u8], str> = FutureRecord::to(&topic).payload("bare");
    producer.send(record, std::time::Duration::from_secs(10)).await.unwrap();
    let gw = kafka_gateway(&app.url(), &topic, &group, json!({})).await;
    eventually("the delivery", async || delivered(&gw.metrics().await, "delivered") == 1.0).await;
    let seen = app.requests().pop().unwrap();
    let id = seen.headers["sluice-id"].to_str().unwrap();
    assert_eq!(id, format!("{topic}-0-0"), "an id from where the record is: the same on every redelivery");
    assert_eq!(seen.headers["x-request-id"], id);
    assert_eq!(seen.headers["sluice-offset"], "0");
}

//! Lag-aware admission (`publish.max_backlog`) on the real brokers: while a RabbitMQ queue holds more ready messages
//! than the bound, or a Kafka consumer group lags further behind the topic, the route answers `503` with
//! `Retry-After` and publishes nothing; once consumers catch up, `202` again.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

/// Publishes until the route refuses (each refusal must be the backlog problem), and returns the refusal.
async fn publish_until_refused(gw: &Gateway, path: &str) -> Resp {
    let mut last = None;
    eventually("the route to refuse while the backlog is above max_backlog", async || {
        let r = gw.post(path, &[], "m").await;
        let refused = r.status == 503;
        if !refused {
            assert_eq!(r.status, 202, "{}", r.text());
        }
        last = Some(r);
        refused
    })
    .await;
    last.unwrap()
}

fn assert_backlogged(r: &Resp) {
    let problem = assert_problem(r, 503, "in");
    assert_eq!(problem["title"], "Destination backlogged", "{problem}");
    assert_eq!(r.header("retry-after"), "1");
}

#[tokio::test]
async fn a_full_rabbitmq_queue_holds_publishes_back_until_it_is_drained() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let (exchange, queue) = (random_name("backlog-x"), random_name("backlog-q"));
    amqp.exchange(&exchange, false).await;
    amqp.queue(&queue, &exchange, "k", false).await;
    let gw = Gateway::start(json!({
        "brokers": { "rabbit": { "kind": "amqp", "url": amqp_url() } },
        "routes": [publish_route("in", "/in", json!({
            "broker": "rabbit", "exchange": exchange, "routing_key": "k", "max_backlog": 3, "backlog_queue": queue
        }))]
    }))
    .await;
    eventually("the gateway to connect", async || gw.brokers_up().await).await;

    let refused = publish_until_refused(&gw, "/in").await;
    assert_backlogged(&refused);
    let held = amqp.len(&queue).await;
    assert!(held > 3, "refused only above the bound: {held} in the queue");
    let m = gw.metrics().await;
    assert!(metric(&m, "sluice_publish_backlog", &[("route", "in")]).is_some_and(|v| v > 3.0), "{m}");
    assert!(
        metric(&m, "sluice_publish_total", &[("route", "in"), ("broker", "rabbit"), ("outcome", "backlogged")])
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    assert_eq!(amqp.len(&queue).await, held, "a refused publish stores nothing");

    amqp.drain(&queue).await;
    eventually("publishes to be accepted again once the queue is drained", async || {
        gw.post("/in", &[], "again").await.status == 202
    })
    .await;
    amqp.delete(&queue, &exchange).await;
}

#[tokio::test]
async fn a_lagging_kafka_consumer_group_holds_publishes_back_until_it_commits() {
    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("backlog", 1).await;
    let group = random_name("backlog-group");
    let gw = Gateway::start(json!({
        "brokers": { "events": { "kind": "kafka", "bootstrap": kafka_bootstrap() } },
        "routes": [publish_route("in", "/in", json!({
            "broker": "events", "topic": topic, "max_backlog": 2, "backlog_group": group
        }))]
    }))
    .await;
    eventually("the gateway to reach Kafka", async || gw.brokers_up().await).await;

    // The group has committed nothing: every record of the topic is its lag.
    let refused = publish_until_refused(&gw, "/in").await;
    assert_backlogged(&refused);
    let stored = kafka_read_all(&topic, 1).await.len();
    assert!(stored > 2, "refused only above the bound: {stored} records");

    // The group's consumer catches up (commits the end).
    let (t, g) = (topic.clone(), group.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", &g)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) = consumer.fetch_watermarks(&t, 0, Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&t, 0, Offset::Offset(high)).unwrap();
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
    eventually("publishes to be accepted again once the group caught up", async || {
        gw.post("/in", &[], "again").await.status == 202
    })
    .await;
    assert_eq!(kafka_read_all(&topic, 1).await.len(), stored + 1, "refused publishes stored nothing");
}

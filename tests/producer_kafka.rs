//! Kafka publishing against a real broker (`SLUICE_TEST_KAFKA`), checked with an independent consumer.

mod producer_support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice::publish::{Ack, Destination, Message, PublishError, Publisher, Receipt};

use producer_support::{binary_body, eventually, kafka_bootstrap, random_name};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

async fn create_topic(partitions: i32) -> String {
    let topic = random_name("sluice-test");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics (is Kafka up? run integration/brokers.sh up)");
    for r in results {
        r.expect("topic created");
    }
    topic
}

async fn publisher() -> Publisher {
    Publisher::connect_kafka("events", &kafka_bootstrap(), DELIVERY_TIMEOUT, &BTreeMap::new())
        .await
        .expect("connect_kafka")
}

fn message(topic: &str, key: Option<&str>, body: Vec<u8>) -> Message {
    let id = Message::new_id();
    Message {
        headers: vec![
            ("sluice-id".into(), id.clone()),
            ("sluice-route".into(), "order-events".into()),
            ("x-request-id".into(), "req-1".into()),
            ("traceparent".into(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ],
        id,
        body: Bytes::from(body),
        content_type: Some("application/octet-stream".into()),
        destination: Destination::Kafka {
            topic: topic.to_owned(),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        },
    }
}

fn consumer() -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", random_name("sluice-test-group"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Read the record at exactly (partition, offset).
async fn read_at(
    topic: &str,
    partition: i32,
    offset: i64,
) -> (Vec<u8>, Option<Vec<u8>>, Vec<(String, String)>, i32, i64) {
    let consumer = consumer();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).unwrap();
    consumer.assign(&tpl).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
        .await
        .expect("record within 15s")
        .expect("consume");
    let headers = header_pairs(&m);
    (m.payload().unwrap_or_default().to_vec(), m.key().map(<[u8]>::to_vec), headers, m.partition(), m.offset())
}

fn header_pairs(m: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// Read every record of the topic's partitions from the start until `count` arrived (or 20s passed).
async fn read_all(topic: &str, partitions: i32, count: usize) -> Vec<(i32, i64, Vec<u8>)> {
    let consumer = consumer();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < count && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            out.push((m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    // Anything beyond `count` would be a duplicate: give it a moment to show up.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
        out.push((m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_lands_where_the_receipt_says_with_body_key_and_headers() {
    let topic = create_topic(3).await;
    let publisher = publisher().await;
    let body = binary_body();
    let msg = message(&topic, Some("order-42"), body.clone());
    let id = msg.id.clone();

    let receipt = publisher.publish(msg, Ack::Confirm).await.expect("publish");
    let Receipt::Kafka { partition, offset } = receipt else {
        panic!("expected a Kafka receipt, got {receipt:?}");
    };

    let (payload, key, headers, p, o) = read_at(&topic, partition, offset).await;
    assert_eq!((p, o), (partition, offset));
    assert_eq!(payload, body, "body must be byte-for-byte identical");
    assert_eq!(key.as_deref(), Some(&b"order-42"[..]));
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(get("content-type"), Some("application/octet-stream"));
    assert_eq!(get("sluice-id"), Some(id.as_str()));
    assert_eq!(get("sluice-route"), Some("order-events"));
    assert_eq!(get("x-request-id"), Some("req-1"));
    assert_eq!(get("traceparent"), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    assert_eq!(headers.iter().filter(|(k, _)| k == "content-type").count(), 1);
    assert!(publisher.is_up(), "a delivered record means the broker is up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_same_partition_and_concurrent_sends_all_arrive_once() {
    let topic = create_topic(3).await;
    let publisher = publisher().await;
    let keys = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let per_key = 50;
    let sends = keys.iter().flat_map(|key| {
        let (publisher, topic) = (&publisher, &topic);
        (0..per_key).map(move |i| {
            let msg = message(topic, Some(key), format!("{key}-{i}").into_bytes());
            async move { (*key, publisher.publish(msg, Ack::Confirm).await) }
        })
    });
    let started = Instant::now();
    let results = join_all(sends).await;
    let elapsed = started.elapsed();

    let mut partitions_by_key: BTreeMap<&str, HashSet<i32>> = BTreeMap::new();
    let mut positions = HashSet::new();
    for (key, result) in &results {
        let Ok(Receipt::Kafka { partition, offset }) = result else {
            panic!("publish failed: {result:?}");
        };
        partitions_by_key.entry(key).or_default().insert(*partition);
        assert!(positions.insert((*partition, *offset)), "duplicate position");
    }
    for (key, partitions) in &partitions_by_key {
        assert_eq!(partitions.len(), 1, "key {key} spread over {partitions:?}");
    }
    let used: HashSet<i32> = partitions_by_key.values().flatten().copied().collect();
    assert!(used.len() > 1, "6 keys all hashed to one partition: {used:?}");
    // 300 sends in flight together, not one after another (each would wait for linger + ack).
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    let total = keys.len() * per_key;
    let records = read_all(&topic, 3, total).await;
    assert_eq!(records.len(), total, "consumer saw each record exactly once");
    let found: HashSet<(i32, i64)> = records.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(found, positions, "receipts name where the records are");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_unroutable_quickly() {
    let publisher = publisher().await;
    let topic = random_name("sluice-missing");
    for _ in 0..2 {
        let started = Instant::now();
        let err = publisher
            .publish(message(&topic, None, b"x".to_vec()), Ack::Confirm)
            .await
            .expect_err("unknown topic must fail");
        assert!(err.is_unroutable(), "got {err:?}");
        assert_eq!(err.status_code(), 502);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?} (delivery timeout is {DELIVERY_TIMEOUT:?})",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_created_after_a_miss_is_published_to() {
    let publisher = publisher().await;
    let topic = random_name("sluice-late");
    let err = publisher
        .publish(message(&topic, None, b"early".to_vec()), Ack::Confirm)
        .await
        .expect_err("topic does not exist yet");
    assert!(err.is_unroutable());

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
    admin
        .create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    // The miss is remembered for at most a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let receipt = publisher
        .publish(message(&topic, None, b"late".to_vec()), Ack::Confirm)
        .await
        .expect("publish after the topic exists");
    assert!(matches!(receipt, Receipt::Kafka { partition: 0, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_none_returns_unconfirmed_and_the_record_arrives() {
    let topic = create_topic(1).await;
    let publisher = publisher().await;
    let receipt =
        publisher.publish(message(&topic, None, b"fire-and-forget".to_vec()), Ack::None).await.expect("publish");
    assert_eq!(receipt, Receipt::Unconfirmed);
    publisher.flush(Duration::from_secs(5)).await;
    let records = read_all(&topic, 1, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].2, b"fire-and-forget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_up_with_a_reachable_broker() {
    let publisher = publisher().await;
    assert!(eventually(Duration::from_secs(5), || publisher.is_up()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_a_broker_and_publish_is_unavailable() {
    // Nothing listens on port 1: the producer must still start, report down, and fail with 503.
    let publisher = Publisher::connect_kafka("down", "127.0.0.1:1", Duration::from_secs(1), &BTreeMap::new())
        .await
        .expect("connect_kafka must not fail while the broker is down");
    assert!(!publisher.is_up());
    let started = Instant::now();
    let err = publisher.publish(message("anything", None, b"x".to_vec()), Ack::Confirm).await.expect_err("no broker");
    assert!(err.is_retryable(), "got {err:?}");
    assert_eq!(err.status_code(), 503);
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert!(!publisher.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_options_are_passed_through() {
    let mut options = BTreeMap::new();
    options.insert("compression.type".to_owned(), "lz4".to_owned());
    let publisher =
        Publisher::connect_kafka("events", &kafka_bootstrap(), DELIVERY_TIMEOUT, &options).await.expect("valid option");
    let topic = create_topic(1).await;
    publisher.publish(message(&topic, None, b"compressed".to_vec()), Ack::Confirm).await.expect("publish with lz4");

    options.insert("no.such.option".to_owned(), "1".to_owned());
    let err = Publisher::connect_kafka("events", &kafka_bootstrap(), DELIVERY_TIMEOUT, &options)
        .await
        .expect_err("librdkafka rejects an unknown option");
    assert!(matches!(err, PublishError::Config { .. }), "got {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_record_is_rejected_not_retryable() {
    let topic = create_topic(1).await;
    let publisher = publisher().await;
    let err = publisher
        .publish(message(&topic, None, vec![7u8; 2 * 1024 * 1024]), Ack::Confirm)
        .await
        .expect_err("2 MiB is over message.max.bytes");
    assert!(matches!(err, PublishError::Rejected { .. }), "got {err:?}");
    assert!(!err.is_retryable());
}

/// The broker unreachable at start, reachable later: the producer starts anyway, reports down,
/// then up, and publishes without being recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_once_the_broker_becomes_reachable() {
    let topic = create_topic(1).await;
    let port = producer_support::free_port();
    let publisher = Publisher::connect_kafka("late", &format!("127.0.0.1:{port}"), DELIVERY_TIMEOUT, &BTreeMap::new())
        .await
        .expect("starts while the broker is unreachable");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!publisher.is_up());

    // Bootstrap through the relay; librdkafka then also reaches the advertised listener.
    let _proxy = producer_support::Proxy::start(port, kafka_bootstrap()).await;
    assert!(eventually(Duration::from_secs(10), || publisher.is_up()).await, "is_up never turned true");
    let receipt =
        publisher.publish(message(&topic, None, b"late".to_vec()), Ack::Confirm).await.expect("publish once reachable");
    assert!(matches!(receipt, Receipt::Kafka { partition: 0, offset: 0 }));
}

/// A tiny local queue fills up at once under concurrent sends: a full queue is back-pressure
/// (wait briefly and retry), so every send still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_local_queue_is_back_pressure_not_failure() {
    let topic = create_topic(1).await;
    let mut options = BTreeMap::new();
    options.insert("queue.buffering.max.messages".to_owned(), "5".to_owned());
    let publisher = Publisher::connect_kafka("small", &kafka_bootstrap(), DELIVERY_TIMEOUT, &options).await.unwrap();
    let sends = (0..100).map(|i| {
        let publisher = publisher.clone();
        let msg = message(&topic, None, format!("{i}").into_bytes());
        async move { publisher.publish(msg, Ack::Confirm).await }
    });
    let results = join_all(sends).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed[0]);
    assert_eq!(read_all(&topic, 1, 100).await.len(), 100);
}

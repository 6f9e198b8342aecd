//! Kafka publishing against a real broker (`SLUICE_TEST_KAFKA`), checked with an independent consumer.

mod producer_support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice::publish::{Ack, Destination, Message, PublishError, Publisher, Receipt};

use producer_support::{Door, binary_body, eventually, kafka_bootstrap, no_hang, poll_for, random_name};

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
            partition: None,
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
    let m = no_hang("reading the record the receipt names", consumer.recv()).await.expect("consume");
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

/// Every record now in the topic's `partitions`, as (partition, offset, payload): each partition is read up to its
/// high watermark, so the count is exact (a confirmed record is below the watermark) and a duplicate would show.
async fn read_all(topic: &str, partitions: i32) -> Vec<(i32, i64, Vec<u8>)> {
    let mut total = 0;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (t, c) = (topic.to_owned(), consumer());
        let (low, high) = tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, p, Duration::from_secs(15)))
            .await
            .unwrap()
            .expect("watermarks");
        assert_eq!(low, 0, "nothing was deleted from a fresh topic");
        total += high;
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    let mut out = Vec::new();
    if total == 0 {
        return out;
    }
    let consumer = consumer();
    consumer.assign(&tpl).unwrap();
    while (out.len() as i64) < total {
        let m = no_hang("reading every record below the watermarks", consumer.recv()).await.expect("consume");
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
    let results = join_all(sends).await;

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

    let total = keys.len() * per_key;
    let records = read_all(&topic, 3).await;
    assert_eq!(records.len(), total, "consumer saw each record exactly once");
    let found: HashSet<(i32, i64)> = records.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(found, positions, "receipts name where the records are");
}

/// Sends are in flight together, not one after another: librdkafka sends a partition's records only once
/// `batch.num.messages` of them are queued (or after `linger.ms`, here ten minutes). So the 100 confirmations below
/// can only arrive if all 100 sends were waiting at the same time; a publisher that awaited each send before the
/// next would get no confirmation at all for ten minutes, and the hang guard fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_in_flight_together_not_one_after_another() {
    let topic = create_topic(1).await;
    let n = 100;
    let options = BTreeMap::from(
        [
            ("batch.num.messages", n.to_string()),
            ("linger.ms", "600000".into()),
            ("message.timeout.ms", "900000".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let publisher = Publisher::connect_kafka("batched", &kafka_bootstrap(), DELIVERY_TIMEOUT, &options)
        .await
        .expect("valid options");
    let sends = (0..n).map(|i| publisher.publish(message(&topic, None, format!("{i}").into_bytes()), Ack::Confirm));
    let results = no_hang("100 concurrent sends, confirmed only as one full batch", join_all(sends)).await;
    let mut offsets: Vec<i64> = results
        .iter()
        .map(|r| match r {
            Ok(Receipt::Kafka { partition: 0, offset }) => *offset,
            other => panic!("publish failed: {other:?}"),
        })
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..n as i64).collect::<Vec<_>>(), "one record each, at the topic's first offsets");
    assert_eq!(read_all(&topic, 1).await.len(), n);
}

/// With automatic topic creation off, librdkafka would hold a record for an unknown topic until its delivery
/// timeout or its topic propagation time (both five minutes here). The publisher looks the topic up first and
/// fails at once as unroutable (502), also for a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_unroutable_without_waiting_for_the_delivery_timeout() {
    let options = BTreeMap::from([("topic.metadata.propagation.max.ms".to_owned(), "300000".to_owned())]);
    let publisher = Publisher::connect_kafka("events", &kafka_bootstrap(), Duration::from_secs(300), &options)
        .await
        .expect("connect_kafka");
    let topic = random_name("sluice-missing");
    for attempt in 0..2 {
        let result = no_hang(
            "a publish to an unknown topic (a wait for the 5-minute delivery timeout)",
            publisher.publish(message(&topic, None, b"x".to_vec()), Ack::Confirm),
        )
        .await;
        let err = result.expect_err("unknown topic must fail");
        assert!(err.is_unroutable(), "attempt {attempt}: got {err:?}");
        assert_eq!(err.status_code(), 502);
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
    // The miss is remembered for a short while: until then a publish is still unroutable (and stores nothing).
    let receipt = poll_for("a publish to the topic created after the miss", async || {
        match publisher.publish(message(&topic, None, b"late".to_vec()), Ack::Confirm).await {
            Ok(receipt) => Some(receipt),
            Err(e) => {
                assert!(e.is_unroutable(), "while the miss is remembered, publishes are unroutable: {e:?}");
                None
            }
        }
    })
    .await;
    assert_eq!(receipt, Receipt::Kafka { partition: 0, offset: 0 }, "the first record of the new topic");
    let records = read_all(&topic, 1).await;
    assert_eq!(records.len(), 1, "the refused publishes stored nothing");
    assert_eq!(records[0].2, b"late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_none_returns_unconfirmed_and_the_record_arrives() {
    let topic = create_topic(1).await;
    let publisher = publisher().await;
    let receipt =
        publisher.publish(message(&topic, None, b"fire-and-forget".to_vec()), Ack::None).await.expect("publish");
    assert_eq!(receipt, Receipt::Unconfirmed);
    publisher.flush(Duration::from_secs(5)).await;
    let records = read_all(&topic, 1).await;
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
    // The "broker" turns every connection away: the producer must still start, report down, and fail with 503
    // (by its 1s delivery timeout, not hang).
    let door = Door::closed().await;
    let publisher =
        Publisher::connect_kafka("down", &format!("127.0.0.1:{}", door.port), Duration::from_secs(1), &BTreeMap::new())
            .await
            .expect("connect_kafka must not fail while the broker is down");
    assert!(eventually(Duration::from_secs(20), || door.attempts() >= 2).await, "the producer never tried the broker");
    assert!(!publisher.is_up(), "turned away twice, yet reported up");
    let result =
        no_hang("a publish with no broker", publisher.publish(message("anything", None, b"x".to_vec()), Ack::Confirm))
            .await;
    let err = result.expect_err("no broker");
    assert!(err.is_retryable(), "got {err:?}");
    assert_eq!(err.status_code(), 503);
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
    let door = Door::closed().await;
    let publisher =
        Publisher::connect_kafka("late", &format!("127.0.0.1:{}", door.port), DELIVERY_TIMEOUT, &BTreeMap::new())
            .await
            .expect("starts while the broker is unreachable");
    assert!(eventually(Duration::from_secs(20), || door.attempts() >= 2).await, "the producer never tried the broker");
    assert!(!publisher.is_up(), "turned away twice, yet reported up");

    // Bootstrap through the door, now relaying; librdkafka then also reaches the advertised listener.
    door.open_to(kafka_bootstrap());
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
    // One confirmed send first, so the topic's leader is known and the connection is up: what is tested is a full
    // local queue, not the first metadata round trip (which, on a loaded broker, can outlast the queue-full wait).
    publisher.publish(message(&topic, None, b"warm-up".to_vec()), Ack::Confirm).await.unwrap();
    // Ten times the queue's size at once: each send waits its turn for room instead of failing.
    let sends = (0..50).map(|i| {
        let publisher = publisher.clone();
        let msg = message(&topic, None, format!("{i}").into_bytes());
        async move { publisher.publish(msg, Ack::Confirm).await }
    });
    let results = join_all(sends).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed[0]);
    assert_eq!(read_all(&topic, 1).await.len(), 51);
}

//! Raw Kafka producer with Sluice's producer settings (src/publish/kafka.rs): rdkafka `FutureProducer`,
//! `acks=all`, `enable.idempotence=true`, `linger.ms=2`, `message.timeout.ms=5000` (Sluice's default
//! `delivery_timeout`). `--concurrency N` tasks each send one record and await its delivery report before
//! sending the next, like N HTTP clients waiting for Sluice's 202. `RAW_LINGER_MS` sets another `linger.ms`
//! (`bench/brokers.sh` passes its `LINGER_MS`).
//!
//!   raw-kafka run --topic T [--bootstrap 127.0.0.1:9092] [--duration 10] [--warmup 2] [--concurrency 64]
//!                 [--size 1024] [--bare]
//!   raw-kafka create-topic --topic T [--partitions 3]   (waits until every partition has a leader)
//!   raw-kafka count --topic T                            (records in the topic: sum of high - low watermarks)
//!   raw-kafka delete-topic --topic T

#[path = "../common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Args, Counters, die};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const USAGE: &str = "usage: raw-kafka run|create-topic|count|delete-topic --topic T [--bootstrap H:P] \
[--duration S] [--warmup S] [--concurrency N] [--size BYTES] [--partitions N] [--bare]";

#[tokio::main]
async fn main() {
    let args = Args::parse(USAGE);
    let bootstrap = args.str("bootstrap", "127.0.0.1:9092");
    let topic = args.required("topic");
    match args.command.as_str() {
        "run" => run(&args, &bootstrap, &topic).await,
        "create-topic" => create_topic(&bootstrap, &topic, args.num("partitions", 3.0) as i32).await,
        "count" => println!("{}", count(&bootstrap, &topic)),
        "delete-topic" => delete_topic(&bootstrap, &topic).await,
        other => die(&format!("unknown command {other:?}\n{USAGE}")),
    }
}

async fn run(args: &Args, bootstrap: &str, topic: &str) {
    let duration = args.num("duration", 10.0);
    let warmup = args.num("warmup", 2.0);
    let concurrency = args.num("concurrency", 64.0) as usize;
    let size = args.num("size", 1024.0) as usize;
    let bare = args.flag("bare");

    // The same settings as KafkaPublisher::connect (minus its statistics callback, which only feeds
    // readiness once a second).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "raw-kafka-bench")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "5000")
        .set("linger.ms", std::env::var("RAW_LINGER_MS").unwrap_or_else(|_| "2".into()))
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .create()
        .unwrap_or_else(|e| die(&format!("producer: {e}")));
    let body: Arc<[u8]> = vec![b'x'; size].into();
    let topic: Arc<str> = topic.into();
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency as u64 {
        let (producer, body, topic, counters) = (producer.clone(), body.clone(), topic.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = worker << 32;
            while !counters.stop.load(Ordering::Relaxed) {
                n += 1;
                let meta = common::sluice_like_headers(n, bare);
                let mut headers = OwnedHeaders::new_with_capacity(meta.len() + 1);
                if !bare {
                    headers = headers.insert(Header { key: "content-type", value: Some("application/octet-stream") });
                }
                for (k, v) in &meta {
                    headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(&topic).payload(&body[..]).headers(headers);
                // Enqueue like Sluice: a full local queue is retried after 5 ms.
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(d) => break Some(d),
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(_) => break None,
                    }
                };
                let ok = match delivery {
                    Some(d) => matches!(tokio::time::timeout(Duration::from_secs(10), d).await, Ok(Ok(Ok(_)))),
                    None => false,
                };
                if ok {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    common::measure("raw-kafka", counters, tasks, warmup, duration, concurrency, size).await;
    let _ = producer.flush(Duration::from_secs(5));
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| die(&format!("admin client: {e}")))
}

fn metadata_client(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| die(&format!("client: {e}")))
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let results = admin(bootstrap)
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap_or_else(|e| die(&format!("create topic {topic}: {e}")));
    for r in results {
        if let Err((name, code)) = r {
            die(&format!("create topic {name}: {code}"));
        }
    }
    // Wait until the metadata shows every partition with a leader.
    let client = metadata_client(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = client.client().fetch_metadata(Some(topic), Duration::from_secs(5))
            && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && t.error().is_none()
            && t.partitions().len() == partitions as usize
            && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
        {
            return;
        }
        if Instant::now() > deadline {
            die(&format!("topic {topic}: partitions without a leader after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(bootstrap: &str, topic: &str) -> i64 {
    let client = metadata_client(bootstrap);
    let md = client
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| die(&format!("metadata {topic}: {e}")));
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { die(&format!("no topic {topic}")) };
    t.partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = client
                .client()
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap_or_else(|e| die(&format!("watermarks {topic}/{}: {e}", p.id())));
            hi - lo
        })
        .sum()
}

async fn delete_topic(bootstrap: &str, topic: &str) {
    let results = admin(bootstrap)
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap_or_else(|e| die(&format!("delete topic {topic}: {e}")));
    for r in results {
        if let Err((name, code)) = r {
            die(&format!("delete topic {name}: {code}"));
        }
    }
}

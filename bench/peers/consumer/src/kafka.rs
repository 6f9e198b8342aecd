//! The Kafka modes: a minimal Kafka → HTTP consumer (the peer of a Kafka `[[subscriptions]]` entry in
//! bench/subscribe.sh --kafka) and its helpers (fill, lag, delete, counting the upstream's requests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::error::KafkaError;
use tokio::sync::{Semaphore, mpsc};

use crate::die;

const USAGE: &str = "usage: consumer kafka BOOTSTRAP TOPIC GROUP TARGET_URL CONCURRENCY | kafka-fill BOOTSTRAP TOPIC N [SIZE [PARTITIONS]] \
                     | kafka-lag BOOTSTRAP TOPIC GROUP [WAIT_SECS] | kafka-delete BOOTSTRAP TOPIC [GROUP] | http-wait STATUS_URL N";
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn main(args: &[String]) {
    let num = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().unwrap_or_else(|_| die("bad number")));
    match (args[0].as_str(), args.len()) {
        ("kafka", 6) => consume(&args[1], &args[2], &args[3], &args[4], num(5, 64) as usize).await,
        ("kafka-fill", 4..=6) => fill(&args[1], &args[2], num(3, 0), num(4, 256) as usize, num(5, 3) as i32).await,
        ("kafka-lag", 4 | 5) => {
            let (bootstrap, topic, group) = (args[1].clone(), args[2].clone(), args[3].clone());
            let wait = args.get(4).map(|_| Duration::from_secs(num(4, 0)));
            let lag = tokio::task::spawn_blocking(move || lag_until_zero(&bootstrap, &topic, &group, wait))
                .await
                .expect("lag");
            println!("{lag}");
            if wait.is_some() && lag != 0 {
                std::process::exit(1);
            }
        }
        ("kafka-delete", 3 | 4) => delete(&args[1], &args[2], args.get(3).map(String::as_str)).await,
        ("http-wait", 3) => http_wait(&args[1], num(2, 0)).await,
        _ => die(USAGE),
    }
}

/// One task per partition (created when its first record arrives), POSTing that partition's records in order.
async fn consume(bootstrap: &str, topic: &str, group: &str, target: &str, concurrency: usize) {
    let target: Uri = target.parse().unwrap_or_else(|_| die("bad TARGET_URL"));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let consumer: StreamConsumer = with_options(ClientConfig::new())
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap_or_else(|e| die(&e.to_string()));
    consumer.subscribe(&[topic]).unwrap_or_else(|e| die(&e.to_string()));
    let consumer = Arc::new(consumer);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut partitions: HashMap<i32, mpsc::Sender<OwnedMessage>> = HashMap::new();
    loop {
        let message = match consumer.recv().await {
            Ok(m) => m.detach(),
            Err(e) => {
                eprintln!("consumer: {e}");
                continue;
            }
        };
        let partition = message.partition();
        let sender = partitions.entry(partition).or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<OwnedMessage>(512);
            let (consumer, client, target, permits) = (consumer.clone(), client.clone(), target.clone(), permits.clone());
            tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    let body = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                    let _permit = permits.acquire().await.expect("semaphore");
                    while !post(&client, &target, body.clone()).await {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // librdkafka stores offset + 1 (the next record to read); fails harmlessly after a revocation.
                    let _ = consumer.store_offset(message.topic(), message.partition(), message.offset());
                }
            });
            tx
        });
        if sender.send(message).await.is_err() {
            die("partition task gone");
        }
    }
}

async fn post(client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>, target: &Uri, body: Bytes) -> bool {
    let request = Request::post(target.clone())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(body))
        .expect("request");
    match client.request(request).await {
        // Read the whole answer so that the connection goes back to the pool.
        Ok(response) => response.status().is_success() && response.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// Extra librdkafka properties for the `kafka` consumer from `KAFKA_OPTIONS="key=value,key=value"` (bench/subscribe.sh
/// gives Sluice the same ones as `[brokers.events.options]`).
fn with_options(mut config: ClientConfig) -> ClientConfig {
    for pair in std::env::var("KAFKA_OPTIONS").unwrap_or_default().split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or_else(|| die("KAFKA_OPTIONS: key=value,..."));
        config.set(key.trim(), value.trim());
    }
    config
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap_or_else(|e| die(&e.to_string()))
}

async fn fill(bootstrap: &str, topic: &str, n: u64, size: usize, partitions: i32) {
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin(bootstrap)
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
        .await
        .unwrap_or_else(|e| die(&e.to_string()));
    for result in results {
        if let Err((name, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                die(&format!("create topic {name}: {code}"));
            }
        }
    }
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .unwrap_or_else(|e| die(&e.to_string()));
        let body = vec![b'x'; size];
        for i in 0..n {
            let mut record = BaseRecord::<(), [u8]>::to(&topic).payload(&body).partition((i % partitions as u64) as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => die(&e.to_string()),
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).unwrap_or_else(|e| die(&e.to_string()));
        let consumer = metadata_consumer(&bootstrap, None);
        let total: i64 = (0..partitions)
            .map(|p| consumer.fetch_watermarks(&topic, p, TIMEOUT).unwrap_or_else(|e| die(&e.to_string())).1)
            .sum();
        if total != n as i64 {
            die(&format!("{topic} holds {total} records after the fill, not {n}"));
        }
    })
    .await
    .expect("fill");
}

fn metadata_consumer(bootstrap: &str, group: Option<&str>) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("enable.auto.commit", "false");
    // Never subscribes: only reads the group's committed offsets (OffsetFetch), without joining it.
    config.set("group.id", group.unwrap_or("sluice-bench-metadata"));
    config.create().unwrap_or_else(|e| die(&e.to_string()))
}

/// The group's lag over all partitions of the topic; with `wait`, polled every 100 ms until it is 0.
fn lag_until_zero(bootstrap: &str, topic: &str, group: &str, wait: Option<Duration>) -> i64 {
    let consumer = metadata_consumer(bootstrap, Some(group));
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap_or_else(|e| die(&e.to_string()));
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, TIMEOUT).unwrap_or_else(|e| die(&e.to_string()));
        let mut lag = 0;
        for &p in &partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT).unwrap_or_else(|e| die(&e.to_string()));
            let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            lag += (high - at).max(0);
        }
        if lag == 0 || wait.is_none() || Instant::now() >= deadline {
            return lag;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn delete(bootstrap: &str, topic: &str, group: Option<&str>) {
    let admin = admin(bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    if let Some(group) = group {
        let _ = admin.delete_groups(&[group], &options).await;
    }
    let _ = admin.delete_topics(&[topic], &options).await;
}

/// nginx's stub_status `requests` counter counts every request, this poller's own included (each reading counts the
/// poll that reads it): requests other than the polls = reading - first reading - polls since the first.
async fn http_wait(url: &str, n: u64) {
    let url: Uri = url.parse().unwrap_or_else(|_| die("bad STATUS_URL"));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let read = || async {
        let response = client.get(url.clone()).await.unwrap_or_else(|e| die(&e.to_string()));
        let body = response.into_body().collect().await.unwrap_or_else(|e| die(&e.to_string())).to_bytes();
        let text = String::from_utf8_lossy(&body);
        // "Active connections: 1 \nserver accepts handled requests\n 1 1 1 \n..."
        let line = text.lines().nth(2).unwrap_or_else(|| die("not a stub_status page"));
        line.split_whitespace().nth(2).and_then(|r| r.parse::<u64>().ok()).unwrap_or_else(|| die("not a stub_status page"))
    };
    let first = read().await;
    let (mut polls, mut last, mut start, mut moved) = (0u64, 0u64, None, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let reading = read().await;
        polls += 1;
        let done = reading.saturating_sub(first + polls);
        if done != last {
            (last, moved) = (done, Instant::now());
            start.get_or_insert(moved);
        }
        match start {
            Some(t) if done >= n => break println!("{:.4}", t.elapsed().as_secs_f64()),
            _ if moved.elapsed() > Duration::from_secs(60) => die(&format!("stalled at {done} of {n} requests")),
            _ => {}
        }
    }
}

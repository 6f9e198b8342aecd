//! A minimal RabbitMQ → HTTP consumer (the peer of Sluice's `[[subscriptions]]` in bench/subscribe.sh), plus the
//! bench's helper modes.
//!
//!   consumer AMQP_URL QUEUE TARGET_URL PREFETCH   consume QUEUE (manual ack, prefetch PREFETCH), POST each body to
//!                                                 TARGET_URL (keep-alive pool); 2xx → ack, else nack + requeue
//!   consumer fill AMQP_URL QUEUE N [SIZE]         declare QUEUE (transient, classic) and publish N messages of SIZE
//!                                                 (default 256) bytes with confirms, as fast as possible
//!   consumer wait AMQP_URL QUEUE N                poll QUEUE's ready count (passive declare, every 2 ms); print the
//!                                                 seconds from its first drop below N until it is 0
//!   consumer count|delete AMQP_URL QUEUE          print the ready count / delete the queue
//!
//! Kafka (bench/subscribe.sh --kafka):
//!
//!   consumer kafka BOOTSTRAP TOPIC GROUP TARGET_URL CONCURRENCY
//!                                 consume TOPIC in consumer GROUP (from the earliest record), one task per partition
//!                                 POSTing its records one after another in offset order (at most CONCURRENCY in
//!                                 flight across partitions); a non-2xx or failed POST is tried again after 100 ms;
//!                                 a record's offset is stored once it was delivered and committed every second
//!                                 (enable.auto.offset.store = false, auto commit): Sluice's settings
//!   consumer kafka-fill BOOTSTRAP TOPIC N [SIZE [PARTITIONS]]
//!                                 create TOPIC (PARTITIONS, default 3, replication 1) and produce N records of SIZE
//!                                 (default 256) bytes, round robin over the partitions, acks=all; checks that the
//!                                 high watermarks add up to N
//!   consumer kafka-lag BOOTSTRAP TOPIC GROUP [WAIT_SECS]
//!                                 print the group's lag (high watermarks minus committed offsets); with WAIT_SECS,
//!                                 poll every 100 ms until it is 0 (exit 1 if it is not within WAIT_SECS)
//!   consumer kafka-delete BOOTSTRAP TOPIC [GROUP]   delete the topic (and the group)
//!   consumer http-wait STATUS_URL N
//!                                 poll an nginx stub_status page (keep-alive, every 2 ms) and print the seconds from
//!                                 the first request other than its own polls until N such requests were counted
//!
//! Request-reply (bench/request-reply.sh):
//!
//!   consumer responder AMQP_URL QUEUE
//!                                 declare QUEUE (transient, classic), consume it (auto ack) and publish each body
//!                                 back to its reply_to with its correlation_id and content_type

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    if mode.starts_with("kafka") || mode == "http-wait" {
        return kafka::main(&args).await;
    }
    if mode == "responder" && args.len() == 3 {
        return responder(&args[1], &args[2]).await;
    }
    let (url, queue) = match mode {
        "fill" | "wait" | "count" | "delete" if args.len() >= 3 => (&args[1], args[2].as_str()),
        _ if args.len() == 4 => (&args[0], args[1].as_str()),
        _ => die("usage: consumer AMQP_URL QUEUE TARGET_URL PREFETCH | fill|wait AMQP_URL QUEUE N | count|delete AMQP_URL QUEUE \
                  | responder AMQP_URL QUEUE | kafka… (see kafka-help)"),
    };
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap_or_else(|e| die(&e.to_string()));
    let ch = conn.create_channel().await.unwrap_or_else(|e| die(&e.to_string()));
    let num = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().unwrap_or_else(|_| die("bad number")));
    match mode {
        "fill" => fill(&ch, queue, num(3, 0), num(4, 256) as usize).await,
        "wait" => {
            // Gives up when the count has not moved for 30 s (the system under test is stuck or gone).
            let n = num(3, 0);
            let (mut first, mut last, mut moved) = (None, n, Instant::now());
            loop {
                let ready = count(&ch, queue).await;
                if ready != last {
                    (last, moved) = (ready, Instant::now());
                    first.get_or_insert(moved);
                }
                match first {
                    Some(t) if ready == 0 => break println!("{:.4}", t.elapsed().as_secs_f64()),
                    _ if moved.elapsed() > Duration::from_secs(30) => die(&format!("stalled at {ready} ready")),
                    _ => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
        "count" => println!("{}", count(&ch, queue).await),
        "delete" => drop(ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await),
        _ => consume(&ch, queue, &args[2], num(3, 64) as u16).await,
    }
}

async fn consume(ch: &Channel, queue: &str, target: &str, prefetch: u16) {
    let target: Uri = target.parse().unwrap_or_else(|_| die("bad TARGET_URL"));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ch.basic_qos(prefetch, BasicQosOptions::default()).await.unwrap_or_else(|e| die(&e.to_string()));
    let mut consumer = ch
        .basic_consume(queue.into(), "peer".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| die(&e.to_string()));
    while let Some(delivery) = consumer.next().await {
        let Ok(delivery) = delivery else { die("consumer failed") };
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            let request = Request::post(target)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(delivery.data)))
                .expect("request");
            let ok = match client.request(request).await {
                // Read the whole answer so that the connection goes back to the pool.
                Ok(response) => response.status().is_success() && response.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            let _ = if ok {
                delivery.acker.ack(BasicAckOptions::default()).await
            } else {
                delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
            };
        });
    }
}

async fn fill(ch: &Channel, queue: &str, n: u64, size: usize) {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| die(&e.to_string()));
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap_or_else(|e| die(&e.to_string()));
    let body = vec![b'x'; size];
    let mut window = VecDeque::with_capacity(2048);
    for _ in 0..n {
        if window.len() == 2048 {
            confirmed(window.pop_front().unwrap()).await;
        }
        let publish = ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, BasicProperties::default());
        window.push_back(publish.await.unwrap_or_else(|e| die(&e.to_string())));
    }
    for confirm in window {
        confirmed(confirm).await;
    }
}

async fn confirmed(confirm: PublisherConfirm) {
    if !matches!(confirm.await, Ok(Confirmation::Ack(_))) {
        die("publish not confirmed");
    }
}

async fn count(ch: &Channel, queue: &str) -> u64 {
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let q = ch.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap_or_else(|e| die(&e.to_string()));
    u64::from(q.message_count())
}

async fn responder(url: &str, queue: &str) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap_or_else(|e| die(&e.to_string()));
    let ch = conn.create_channel().await.unwrap_or_else(|e| die(&e.to_string()));
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| die(&e.to_string()));
    let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut consumer = ch
        .basic_consume(queue.into(), "responder".into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|e| die(&e.to_string()));
    eprintln!("responder: consuming {queue}");
    while let Some(delivery) = consumer.next().await {
        let Ok(delivery) = delivery else { die("consumer failed") };
        let Some(reply_to) = delivery.properties.reply_to().clone() else { continue };
        let mut properties = BasicProperties::default();
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        if let Some(ct) = delivery.properties.content_type() {
            properties = properties.with_content_type(ct.clone());
        }
        let ch = ch.clone();
        tokio::spawn(async move {
            let _ = ch
                .basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &delivery.data, properties)
                .await;
        });
    }
}

mod kafka;

fn die(msg: &str) -> ! {
    eprintln!("consumer: {msg}");
    std::process::exit(1)
}

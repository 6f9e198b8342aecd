//! Raw RabbitMQ publisher with Sluice's publisher settings (src/publish/amqp.rs): lapin, one connection,
//! publisher confirms, `delivery_mode = 2` (persistent), `mandatory = true`. `--concurrency N` tasks each
//! own one confirm-mode channel and publish one message, await its confirm, then publish the next, like
//! N HTTP clients waiting for Sluice's 202 (Sluice also carries one publish at a time per pooled channel).
//!
//!   raw-amqp run --queue Q [--url amqp://guest:guest@127.0.0.1:5672/%2f] [--duration 10] [--warmup 2]
//!                [--concurrency 64] [--size 1024] [--bare]       (default exchange, routing key = Q)
//!   raw-amqp declare --queue Q      (durable classic queue)
//!   raw-amqp count --queue Q        (messages ready in the queue)
//!   raw-amqp delete --queue Q

#[path = "../common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Args, Counters, die};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

const USAGE: &str = "usage: raw-amqp run|declare|count|delete --queue Q [--url URL] [--duration S] [--warmup S] \
[--concurrency N] [--size BYTES] [--bare]";

#[tokio::main]
async fn main() {
    let args = Args::parse(USAGE);
    let url = args.str("url", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let queue = args.required("queue");
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| die(&format!("connect {url}: {e}")));
    match args.command.as_str() {
        "run" => run(&args, &connection, &queue).await,
        "declare" | "count" => {
            let channel = connection.create_channel().await.unwrap_or_else(|e| die(&format!("channel: {e}")));
            let options = QueueDeclareOptions {
                durable: true,
                passive: args.command == "count",
                ..QueueDeclareOptions::default()
            };
            let q = channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default())
                .await
                .unwrap_or_else(|e| die(&format!("queue {queue}: {e}")));
            if args.command == "count" {
                println!("{}", q.message_count());
            }
        }
        "delete" => {
            let channel = connection.create_channel().await.unwrap_or_else(|e| die(&format!("channel: {e}")));
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap_or_else(|e| die(&format!("delete {queue}: {e}")));
        }
        other => die(&format!("unknown command {other:?}\n{USAGE}")),
    }
    let _ = connection.close(200, "bye".into()).await;
}

async fn run(args: &Args, connection: &Connection, queue: &str) {
    let duration = args.num("duration", 10.0);
    let warmup = args.num("warmup", 2.0);
    let concurrency = args.num("concurrency", 64.0) as usize;
    let size = args.num("size", 1024.0) as usize;
    let bare = args.flag("bare");

    let body: Arc<[u8]> = vec![b'x'; size].into();
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency as u64 {
        let channel = connection.create_channel().await.unwrap_or_else(|e| die(&format!("channel: {e}")));
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap_or_else(|e| die(&format!("confirm_select: {e}")));
        let (body, counters) = (body.clone(), counters.clone());
        let routing_key = ShortString::from(queue);
        tasks.push(tokio::spawn(async move {
            let mut n = worker << 32;
            let options = BasicPublishOptions { mandatory: true, immediate: false };
            while !counters.stop.load(Ordering::Relaxed) {
                n += 1;
                let properties = properties(n, bare);
                let ok = match channel
                    .basic_publish("".into(), routing_key.clone(), options, &body, properties)
                    .await
                {
                    Ok(confirm) => matches!(
                        tokio::time::timeout(Duration::from_secs(5), confirm).await,
                        Ok(Ok(Confirmation::Ack(None)))
                    ),
                    Err(_) => false,
                };
                if ok {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !channel.status().connected() {
                        return;
                    }
                }
            }
        }));
    }
    common::measure("raw-amqp", counters, tasks, warmup, duration, concurrency, size).await;
}

/// The properties Sluice sets (src/publish/amqp.rs `properties`): app_id, timestamp, delivery_mode 2,
/// message_id, content_type and the metadata headers as long strings.
fn properties(n: u64, bare: bool) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    if bare {
        return properties;
    }
    let meta = common::sluice_like_headers(n, false);
    let mut headers = FieldTable::default();
    for (k, v) in &meta {
        headers.insert(ShortString::from(*k), AMQPValue::LongString(LongString::from(v.as_str())));
    }
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    properties
        .with_app_id("sluice".into())
        .with_timestamp(timestamp)
        .with_headers(headers)
        .with_message_id(ShortString::from(meta[0].1.as_str()))
        .with_content_type("application/octet-stream".into())
}

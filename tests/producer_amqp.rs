//! RabbitMQ publishing against a real broker (`SLUICE_TEST_AMQP_URL`), checked with `basic_get`.

mod producer_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use sluice::publish::{Ack, Destination, Message, PublishError, Publisher, Receipt};

use producer_support::{Door, Proxy, amqp_url, binary_body, eventually, no_hang, random_name};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// A test's own exchange and a queue bound to it with routing key `bound`.
struct Topology {
    exchange: String,
    queue: String,
    /// Keeps the checking connection open.
    _connection: Connection,
    channel: Channel,
}

async fn topology() -> Topology {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ (is it up? run integration/brokers.sh up)");
    let channel = connection.create_channel().await.unwrap();
    let exchange = random_name("sluice-test-x");
    let queue = random_name("sluice-test-q");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions { auto_delete: false, durable: false, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    // Let RabbitMQ clean up after the test even if it fails half way.
    args.insert("x-expires".into(), AMQPValue::LongUInt(120_000));
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args).await.unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "bound".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    Topology { exchange, queue, _connection: connection, channel }
}

/// Every message now in the queue, as (body, properties).
async fn drain(channel: &Channel, queue: &str) -> Vec<(Vec<u8>, BasicProperties)> {
    let mut out = Vec::new();
    while let Some(m) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        out.push((m.delivery.data.clone(), m.delivery.properties.clone()));
    }
    out
}

/// The `message_id` of every message now in the queue, read with a consumer (faster than
/// `basic_get` for thousands of messages).
async fn drain_ids(channel: &Channel, queue: &str) -> Vec<String> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let count = declared.message_count() as usize;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "sluice-test-drain".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let delivery =
            no_hang("reading the queued messages", consumer.next()).await.expect("consumer open").expect("delivery");
        ids.push(delivery.properties.message_id().as_ref().unwrap().to_string());
    }
    ids
}

async fn publisher() -> Publisher {
    named_publisher("rabbit").await
}

async fn named_publisher(name: &str) -> Publisher {
    let publisher = Publisher::connect_amqp(name, &amqp_url(), CONFIRM_TIMEOUT, None).await.expect("connect_amqp");
    assert!(eventually(Duration::from_secs(10), || publisher.is_up()).await, "publisher did not connect");
    publisher
}

fn message(exchange: &str, routing_key: &str, persistent: bool, body: Vec<u8>) -> Message {
    let id = Message::new_id();
    Message {
        headers: vec![
            ("sluice-id".into(), id.clone()),
            ("sluice-route".into(), "github".into()),
            ("x-request-id".into(), "req-7".into()),
            ("cloudEvents:type".into(), "push".into()),
        ],
        id,
        body: Bytes::from(body),
        content_type: Some("application/json".into()),
        destination: Destination::Amqp {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            persistent,
        },
    }
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a [u8]> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_message_arrives_with_body_and_properties() {
    let t = topology().await;
    let publisher = publisher().await;
    let body = binary_body();
    let msg = message(&t.exchange, "bound", true, body.clone());
    let id = msg.id.clone();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();

    let receipt = publisher.publish(msg, Ack::Confirm).await.expect("publish");
    assert_eq!(receipt, Receipt::Amqp);

    let got = drain(&t.channel, &t.queue).await;
    assert_eq!(got.len(), 1);
    let (data, props) = &got[0];
    assert_eq!(data, &body, "body must be byte-for-byte identical");
    assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some(id.as_str()));
    assert_eq!(props.app_id().as_ref().map(|s| s.as_str()), Some("sluice"));
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
    let ts = props.timestamp().expect("timestamp");
    assert!(ts.abs_diff(now) <= 5, "timestamp {ts} vs now {now}");
    assert_eq!(header(props, "sluice-id"), Some(id.as_bytes()));
    assert_eq!(header(props, "sluice-route"), Some(&b"github"[..]));
    assert_eq!(header(props, "x-request-id"), Some(&b"req-7"[..]));
    assert_eq!(header(props, "cloudEvents:type"), Some(&b"push"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_message_has_delivery_mode_1() {
    let t = topology().await;
    let publisher = publisher().await;
    publisher.publish(message(&t.exchange, "bound", false, b"t".to_vec()), Ack::Confirm).await.expect("publish");
    let got = drain(&t.channel, &t.queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(*got[0].1.delivery_mode(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_is_an_error_and_nothing_is_delivered() {
    let t = topology().await;
    let publisher = publisher().await;
    let err = publisher
        .publish(message(&t.exchange, "no-binding", true, b"lost?".to_vec()), Ack::Confirm)
        .await
        .expect_err("a returned message must not be Ok");
    assert!(err.is_unroutable(), "got {err:?}");
    assert_eq!(err.status_code(), 502);
    assert!(drain(&t.channel, &t.queue).await.is_empty());

    // The channel that carried the returned message keeps working.
    for _ in 0..10 {
        publisher
            .publish(message(&t.exchange, "bound", true, b"ok".to_vec()), Ack::Confirm)
            .await
            .expect("routable publish after a return");
    }
    assert_eq!(drain(&t.channel, &t.queue).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_is_unroutable_and_the_publisher_recovers() {
    let t = topology().await;
    let publisher = publisher().await;
    let err = publisher
        .publish(message(&random_name("sluice-no-such-x"), "bound", true, b"x".to_vec()), Ack::Confirm)
        .await
        .expect_err("exchange does not exist");
    assert!(err.is_unroutable(), "got {err:?}");
    // The broker closed that channel; the next publishes use others.
    for _ in 0..10 {
        publisher
            .publish(message(&t.exchange, "bound", true, b"ok".to_vec()), Ack::Confirm)
            .await
            .expect("publish after a channel error");
    }
    assert!(publisher.is_up());
    assert_eq!(drain(&t.channel, &t.queue).await.len(), 10);
}

/// Routable and unroutable publishes interleaved at high concurrency: each result must belong to its
/// own message (a returned message must never be reported on another publish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_returns_are_reported_on_the_right_message() {
    let t = topology().await;
    let publisher = publisher().await;
    let n = 400;
    let sends = (0..n).map(|i| {
        let publisher = publisher.clone();
        let routable = i % 3 != 0;
        let key = if routable { "bound" } else { "nowhere" };
        let msg = message(&t.exchange, key, true, format!("m{i}").into_bytes());
        let id = msg.id.clone();
        async move { (routable, id, publisher.publish(msg, Ack::Confirm).await) }
    });
    let results = join_all(sends).await;
    let mut routed = HashSet::new();
    for (routable, id, result) in &results {
        if *routable {
            assert_eq!(result.as_ref().ok(), Some(&Receipt::Amqp), "routable {id}: {result:?}");
            routed.insert(id.clone());
        } else {
            assert!(result.as_ref().is_err_and(PublishError::is_unroutable), "unroutable {id}: {result:?}");
        }
    }
    let got: HashSet<String> = drain(&t.channel, &t.queue)
        .await
        .into_iter()
        .map(|(_, p)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(got, routed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_none_returns_unconfirmed_and_the_message_arrives() {
    let t = topology().await;
    let publisher = publisher().await;
    let receipt =
        publisher.publish(message(&t.exchange, "bound", true, b"ff".to_vec()), Ack::None).await.expect("publish");
    assert_eq!(receipt, Receipt::Unconfirmed);
    publisher.flush(Duration::from_secs(5)).await;
    let got = drain(&t.channel, &t.queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"ff");
}

/// The broker turns every connection away: the publisher still starts, keeps trying, reports down, and a publish
/// fails at once as unavailable (503). It does not wait for a connection: with a ten-minute confirm timeout, a
/// publish that waited would hang, and the hang guard fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_a_broker_and_publish_is_unavailable() {
    let door = Door::closed().await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", door.port);
    let publisher = Publisher::connect_amqp("down", &url, Duration::from_secs(600), None)
        .await
        .expect("connect_amqp must not fail while the broker is down");
    assert!(eventually(Duration::from_secs(20), || door.attempts() >= 2).await, "the publisher never tried the broker");
    assert!(!publisher.is_up(), "turned away twice, yet reported up");
    let result =
        no_hang("a publish with no broker", publisher.publish(message("x", "y", true, b"x".to_vec()), Ack::Confirm))
            .await;
    let err = result.expect_err("no broker");
    assert!(err.is_retryable(), "got {err:?}");
    assert_eq!(err.status_code(), 503);
    assert!(eventually(Duration::from_secs(20), || door.attempts() >= 3).await, "the publisher gave up retrying");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_url_is_a_config_error() {
    let err = Publisher::connect_amqp("bad", "http://nope", CONFIRM_TIMEOUT, None).await.expect_err("not an AMQP URL");
    assert!(matches!(err, PublishError::Config { .. }), "got {err:?}");
}

/// `rabbitmqctl` against the node `integration/brokers.sh` manages (right node name and cookie), or the program
/// named by `SLUICE_TEST_RABBITMQCTL`.
fn rabbitmqctl() -> tokio::process::Command {
    match std::env::var("SLUICE_TEST_RABBITMQCTL") {
        Ok(program) => tokio::process::Command::new(program),
        Err(_) => {
            let mut cmd = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/integration/brokers.sh"));
            cmd.arg("rabbitmqctl");
            cmd
        }
    }
}

/// Force-close (as `rabbitmqctl close_all_connections` would, but only this publisher's, so tests
/// running in parallel against the same broker are not disturbed) every connection whose
/// `connection_name` client property is `connection_name`. Returns how many were closed.
async fn close_connections_named(connection_name: &str) -> usize {
    let out = rabbitmqctl()
        .args(["-q", "list_connections", "--no-table-headers", "pid", "client_properties"])
        .output()
        .await
        .expect("run rabbitmqctl list_connections");
    assert!(out.status.success(), "rabbitmqctl: {out:?}");
    let needle = format!("{{\"connection_name\",<<\"{connection_name}\">>}}");
    let alt = format!("\"connection_name\",\"{connection_name}\"");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&needle) || line.contains(&alt))
        .filter_map(|line| line.split('\t').next())
        .collect();
    for pid in &pids {
        let out = rabbitmqctl()
            .args(["close_connection", pid, "test"])
            .output()
            .await
            .expect("run rabbitmqctl close_connection");
        assert!(out.status.success(), "rabbitmqctl: {out:?}");
    }
    pids.len()
}

/// The broker force-closes the publisher's connection (`rabbitmqctl close_connection`) while publishing: every publish is Ok (and then really in the
/// queue) or Unavailable, never an error of another kind; the publisher reports down, reconnects by
/// itself, and later publishes succeed on the same `Publisher`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_connections_being_closed_while_publishing() {
    let t = topology().await;
    let (exchange, queue) = (t.exchange.clone(), t.queue.clone());
    let name = random_name("outage");
    let publisher = named_publisher(&name).await;

    let stop = Arc::new(AtomicBool::new(false));
    let saw_down = Arc::new(AtomicBool::new(false));
    // Publishes confirmed and failed so far, across the workers.
    let (confirmed, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (publisher, exchange, stop, saw_down) =
                (publisher.clone(), exchange.clone(), stop.clone(), saw_down.clone());
            let (confirmed, failed) = (confirmed.clone(), failed.clone());
            tokio::spawn(async move {
                let (mut ok, mut unavailable) = (Vec::new(), 0usize);
                while !stop.load(Ordering::SeqCst) {
                    let msg = message(&exchange, "bound", true, b"outage".to_vec());
                    let id = msg.id.clone();
                    match publisher.publish(msg, Ack::Confirm).await {
                        Ok(receipt) => {
                            assert_eq!(receipt, Receipt::Amqp);
                            ok.push(id);
                            confirmed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            assert!(e.is_retryable(), "outage error must be Unavailable: {e:?}");
                            unavailable += 1;
                            failed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    if !publisher.is_up() {
                        saw_down.store(true, Ordering::SeqCst);
                    }
                }
                (ok, unavailable)
            })
        })
        .collect();

    // Publishes go through before each close, fail after it, and go through again after the last one.
    let more_confirmed = async |what: &str| {
        let before = confirmed.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(20), || confirmed.load(Ordering::SeqCst) >= before + 20).await,
            "{what}"
        );
    };
    for round in 0..2 {
        // Between rounds the publisher must have reconnected by itself.
        assert!(
            eventually(Duration::from_secs(10), || publisher.is_up()).await,
            "not reconnected before round {round}"
        );
        more_confirmed(&format!("round {round}: publishes are not confirmed")).await;
        let failed_before = failed.load(Ordering::SeqCst);
        let closed = close_connections_named(&format!("sluice-{name}")).await;
        assert_eq!(closed, 1, "round {round}: the publisher has one connection");
        assert!(
            eventually(Duration::from_secs(20), || failed.load(Ordering::SeqCst) > failed_before).await,
            "round {round}: closing the connection failed no publish"
        );
    }
    more_confirmed("publishes are not confirmed again after the last close").await;
    stop.store(true, Ordering::SeqCst);
    let mut ok_ids = Vec::new();
    let mut unavailable = 0;
    for w in workers {
        let (ok, u) = w.await.expect("worker");
        ok_ids.extend(ok);
        unavailable += u;
    }
    assert!(saw_down.load(Ordering::SeqCst), "is_up never turned false");
    assert!(unavailable > 0, "closing connections produced no failure");

    // Recovered without a new Publisher.
    assert!(eventually(Duration::from_secs(10), || publisher.is_up()).await);
    for _ in 0..5 {
        let msg = message(&exchange, "bound", true, b"after".to_vec());
        ok_ids.push(msg.id.clone());
        publisher.publish(msg, Ack::Confirm).await.expect("publish after recovery");
    }

    let found: HashSet<String> = drain_ids(&t.channel, &queue).await.into_iter().collect();
    let missing: Vec<_> = ok_ids.iter().filter(|id| !found.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} confirmed messages are not in the queue", missing.len(), ok_ids.len());
    assert!(ok_ids.len() > 50, "only {} publishes succeeded", ok_ids.len());
    eprintln!("outage test: {} confirmed and found, {unavailable} unavailable, {} in queue", ok_ids.len(), found.len());
}

/// The broker unreachable at start, then reachable, then gone, then back: the publisher starts
/// anyway, reports down/up as it goes, fails with Unavailable while down and publishes again after
/// each return, on the same `Publisher`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_late_and_reconnects_after_an_outage() {
    let t = topology().await;
    let broker = amqp_url();
    let broker_addr = broker
        .split('@')
        .next_back()
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in SLUICE_TEST_AMQP_URL")
        .to_owned();
    let door = Door::closed().await;
    let port = door.port;
    let via_proxy = broker.replace(&broker_addr, &format!("127.0.0.1:{port}"));
    // A confirm timeout far beyond the hang guard: a publish that waited for the broker to come back would hang.
    let publisher = Publisher::connect_amqp("flaky", &via_proxy, Duration::from_secs(600), None)
        .await
        .expect("starts while the broker is unreachable");
    let publish = |body: &'static [u8]| {
        let publisher = publisher.clone();
        let msg = message(&t.exchange, "bound", true, body.to_vec());
        no_hang("a publish", async move { publisher.publish(msg, Ack::Confirm).await })
    };

    assert!(eventually(Duration::from_secs(20), || door.attempts() >= 2).await, "the publisher never tried the broker");
    assert!(!publisher.is_up(), "turned away twice, yet reported up");
    assert!(publish(b"down").await.expect_err("down").is_retryable());

    door.open_to(broker_addr.clone());
    assert!(eventually(Duration::from_secs(10), || publisher.is_up()).await, "never connected");
    assert_eq!(publish(b"one").await.expect("up"), Receipt::Amqp);

    drop(door);
    assert!(eventually(Duration::from_secs(10), || !publisher.is_up()).await, "outage not seen");
    assert!(publish(b"during").await.expect_err("down").is_retryable());

    let _proxy = Proxy::start(port, broker_addr).await;
    assert!(eventually(Duration::from_secs(10), || publisher.is_up()).await, "never reconnected");
    assert_eq!(publish(b"two").await.expect("up again"), Receipt::Amqp);

    let bodies: Vec<Vec<u8>> = drain(&t.channel, &t.queue).await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
}

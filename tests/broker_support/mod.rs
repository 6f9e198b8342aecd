//! Shared harness for the end-to-end publish tests: a gateway started with `sluice::run` on port 0 in front of the
//! real brokers (`SLUICE_TEST_KAFKA`, `SLUICE_TEST_AMQP_URL`), a real HTTP client, independent Kafka and RabbitMQ
//! consumers, an independent CloudEvents decoder (the `cloudevents-sdk` crate), and locks that keep each broker's
//! outage test from overlapping the other tests of that broker.
//!
//! Brokers that are missing make the tests fail, never skip: start them with `integration/brokers.sh up`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cloudevents::event::SpecVersion;
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer, StructuredDeserializer,
    StructuredSerializer,
};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------------------------

/// The AMQP URL of the test RabbitMQ (`SLUICE_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("SLUICE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The host (and port, when given) of [`amqp_url`], as written there.
fn amqp_authority() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_owned()
}

/// `host:port` of the test RabbitMQ, from [`amqp_url`] (port 5672 when it names none).
pub fn amqp_addr() -> String {
    let authority = amqp_authority();
    if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        authority
    } else {
        format!("{authority}:5672")
    }
}

/// [`amqp_url`] with its host and port replaced by `addr` (a [`Relay`] in front of the broker).
pub fn amqp_url_via(addr: SocketAddr) -> String {
    let url = amqp_url();
    let at = url.find(&amqp_authority()).expect("the authority is in the URL");
    format!("{}{addr}{}", &url[..at], &url[at + amqp_authority().len()..])
}

/// The bootstrap address of the test Kafka (`SLUICE_TEST_KAFKA`).
pub fn kafka_bootstrap() -> String {
    std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other test (or run) uses: `prefix-<uuid>`.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A body that is not valid UTF-8 (and holds every byte value), so any lossy conversion shows.
pub fn binary_body() -> Vec<u8> {
    let mut body = vec![0x00, 0xff, 0xfe, 0x80, 0xc3, 0x28, b'\n', b'\r', b'{'];
    body.extend((0..=255u8).rev());
    body
}

/// A client `traceparent`; the gateway continues its trace.
pub const CLIENT_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Asserts that `tp` continues [`CLIENT_TRACEPARENT`]'s trace with a span id of its own.
pub fn assert_continues_client_trace(tp: &str) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00", "traceparent {tp:?}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "the client's trace id continues: {tp:?}");
    assert!(
        parts[2].len() == 16 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()) && parts[2] != "0000000000000000",
        "parent id {tp:?}"
    );
    assert_eq!(parts[3], "01", "sampled flag kept: {tp:?}");
}

/// Asserts `id` is a hyphenated UUIDv7.
pub fn assert_uuid_v7(id: &str) {
    let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("sluice-id {id:?} is not a UUID: {e}"));
    assert_eq!(parsed.get_version_num(), 7, "sluice-id {id:?} is a UUIDv7");
    assert_eq!(parsed.hyphenated().to_string(), id, "hyphenated lower-case");
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Polls `check` until it returns true, failing the test after a generous deadline. Never used to measure time.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP client side
// ---------------------------------------------------------------------------------------------------------------

/// The test client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Responses as a client sees them: the same type as the forwarding tests' harness.
#[path = "../common/mod.rs"]
pub mod common;
pub use common::Resp;

/// Asserts a `202 Accepted` with an `application/json` body and returns the body.
pub fn assert_accepted(r: &Resp) -> Value {
    assert_eq!(r.status, 202, "status; body: {}", r.text());
    assert_eq!(r.header("content-type"), "application/json", "content-type of a 202");
    r.json()
}

/// Asserts a gateway-made error: `status`, `application/problem+json` with the RFC 9457 members, the route, and a
/// `request_id` equal to the echoed `x-request-id`. Returns the document.
pub fn assert_problem(r: &Resp, status: u16, route: &str) -> Value {
    assert_eq!(r.status, status, "status; body: {}", r.text());
    assert_eq!(r.header("content-type"), "application/problem+json", "content-type; body: {}", r.text());
    let v = r.json();
    for key in ["type", "title", "detail", "request_id"] {
        assert!(v[key].as_str().is_some_and(|s| !s.is_empty()), "problem lacks `{key}`: {v}");
    }
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["route"], route, "{v}");
    assert_eq!(v["request_id"], r.header("x-request-id"), "{v}");
    v
}

/// Asserts a `503` problem with a `Retry-After` of whole seconds.
pub fn assert_unavailable(r: &Resp, route: &str) {
    assert_problem(r, 503, route);
    let after = r.header("retry-after");
    assert!(after.parse::<u64>().is_ok_and(|s| s >= 1), "503 needs Retry-After in seconds, got {after:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------------------------

/// Parses and validates a config written as JSON (the tree `routes.toml` becomes), failing on any problem.
pub fn config(tree: Value) -> sluice::config::Config {
    let (cfg, errors) = sluice::config::from_value(tree);
    assert!(errors.is_empty(), "config does not parse: {errors:#?}");
    let report = sluice::config::validate(&cfg);
    assert!(report.errors.is_empty(), "config does not validate: {:#?}", report.errors);
    cfg
}

/// A gateway running `sluice::run` on port 0; it shuts down when dropped.
pub struct Gateway {
    /// Public listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// A pooling HTTP/1.1 client.
    pub client: HttpClient,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
}

impl Gateway {
    /// Starts a gateway with the config `tree` (see [`config`]).
    pub async fn start(tree: Value) -> Gateway {
        let cfg = config(tree);
        let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            if let Err(e) = sluice::run(cfg, sluice::Listeners { main, admin }, shutdown).await {
                panic!("sluice::run failed: {e}");
            }
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Gateway { addr, admin: admin_addr, client, _stop: stop, _task: task }
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        let res = self.client.request(req).await.expect("the gateway answers");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("the response body arrives").to_bytes();
        Resp { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    /// `POST path` with `headers` and `body` on the public listener.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Resp {
        let mut b = Request::post(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(body.into())).unwrap()).await
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        self.send(Request::get(format!("http://{}{path}", self.admin)).body(Full::default()).unwrap()).await
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200, "/metrics");
        r.text()
    }

    /// `/readyz` status.
    pub async fn ready(&self) -> u16 {
        self.admin_get("/readyz").await.status
    }

    /// Whether every broker a route uses is connected (`/readyz?verbose`).
    pub async fn brokers_up(&self) -> bool {
        common::all_brokers_up(&self.admin_get("/readyz?verbose").await.json())
    }

    /// `/readyz?verbose` says broker `name` is down and the routes publishing to it answer 503, while the gateway
    /// stays ready (its other routes keep serving).
    pub async fn assert_broker_down_but_ready(&self, name: &str) {
        let r = self.admin_get("/readyz?verbose").await;
        let body = r.json();
        assert_eq!(r.status, 200, "a broker outage does not make the gateway unready: {body}");
        assert_eq!(body["brokers"][name], "down", "{body}");
        let routes = body["routes"].as_object().unwrap_or_else(|| panic!("routes: {body}"));
        assert!(routes.values().any(|s| s.as_str().is_some_and(|s| s.contains(name))), "{body}");
    }
}

/// The value of the series `name` whose labels are exactly `labels` (in any order), in a Prometheus exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (got, value) = if let Some(rest) = rest.strip_prefix('{') {
            let (inner, value) = rest.split_once("} ")?;
            let got: BTreeMap<String, String> = inner
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            (got, value)
        } else {
            (BTreeMap::new(), rest.strip_prefix(' ')?)
        };
        (got == want).then(|| value.split_whitespace().next()?.parse().ok()).flatten()
    })
}

/// A publish route (`publish` keys as JSON) named `name` on `POST path`.
pub fn publish_route(name: &str, path: &str, publish: Value) -> Value {
    serde_json::json!({ "name": name, "match": { "path": path, "methods": ["POST"] }, "publish": publish })
}

// ---------------------------------------------------------------------------------------------------------------
// Idempotency-Key checks (the same for both brokers)
// ---------------------------------------------------------------------------------------------------------------

/// Sends `n` requests with one new `Idempotency-Key` at once, then `n` more one after another, and checks what
/// the client sees: exactly one original `202`; every concurrent repeat is a `409` problem or a replay; every
/// sequential repeat is a replay. A replay carries `idempotent-replayed: true` and the original body. Returns the
/// original `202` body.
pub async fn idempotent_repeats(gw: &Gateway, route: &str, path: &str, headers: &[(&str, &str)], n: usize) -> Value {
    let key = random_name("idem");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("idempotency-key", key.as_str()));
    let concurrent =
        futures_util::future::join_all((0..n).map(|i| gw.post(path, &all, format!("attempt {i}").into_bytes()))).await;

    let originals: Vec<&Resp> = concurrent.iter().filter(|r| r.status == 202 && !r.replayed()).collect();
    assert_eq!(
        originals.len(),
        1,
        "exactly one of {n} concurrent requests with one key publishes: {:?}",
        concurrent.iter().map(|r| (r.status, r.replayed())).collect::<Vec<_>>()
    );
    let original = originals[0].clone();
    let body = assert_accepted(&original);
    let (mut conflicts, mut replays) = (0, 0);
    for r in &concurrent {
        match r.status {
            202 if r.replayed() => {
                replays += 1;
                assert_eq!(r.body, original.body, "a replay answers the first body again");
                assert_eq!(r.header("content-type"), "application/json");
            }
            202 => {}
            409 => {
                conflicts += 1;
                assert_problem(r, 409, route);
            }
            other => panic!("concurrent repeat got {other}: {}", r.text()),
        }
    }
    assert_eq!(conflicts + replays, n - 1);

    for i in 0..n {
        let r = gw.post(path, &all, format!("sequential {i}").into_bytes()).await;
        assert_eq!(r.status, 202, "sequential repeat {i}: {}", r.text());
        assert!(r.replayed(), "sequential repeat {i} is a replay (idempotent-replayed: true)");
        assert_eq!(r.body, original.body, "sequential repeat {i} answers the first body again");
    }
    body
}

/// Runs two requests at once and returns the one answered first, then the other still to be awaited. With one
/// `Idempotency-Key`, exactly one of the two can claim it; when the claimant cannot finish yet, the first answer is
/// the other one's. Fails the test when neither is answered for 30 s (a guard against hangs).
pub async fn first_of<F: Future + Unpin>(a: F, b: F) -> (F::Output, F) {
    let either = tokio::time::timeout(Duration::from_secs(30), futures_util::future::select(a, b))
        .await
        .expect("neither of two requests sent at once with one Idempotency-Key was answered (no 409?)");
    match either {
        futures_util::future::Either::Left((out, rest)) | futures_util::future::Either::Right((out, rest)) => {
            (out, rest)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Network stand-ins between the gateway and a broker
// ---------------------------------------------------------------------------------------------------------------

/// A TCP listener on `127.0.0.1:0` that accepts connections and never answers (nor closes them): a "broker" that
/// keeps every request of its clients waiting until their own timeouts. Nothing sent to it is stored anywhere.
pub struct Blackhole {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Blackhole {
    /// Starts listening.
    pub async fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        Blackhole { addr, task }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay from `127.0.0.1:0` to a real broker whose broker-to-client direction the test can hold. While held,
/// what the client sends still reaches the broker, but what the broker sends back (AMQP publisher confirms, say)
/// waits in the relay until [`Relay::release`]: the client's requests stay in flight for as long as the test wants.
/// Dropping the relay cuts every relayed connection.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    held: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `target` (`host:port`).
    pub async fn start(target: &str) -> Relay {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (held, watch) = tokio::sync::watch::channel(false);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            // Dropped (aborting every relayed connection) when the accept loop is aborted.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, mut watch) = (target.clone(), watch.clone());
                connections.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_broker, mut to_broker) = outbound.into_split();
                    let upstream = async {
                        let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
                        let _ = to_broker.shutdown().await;
                    };
                    let downstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n @ 1..) = from_broker.read(&mut buf).await {
                            if watch.wait_for(|held| !*held).await.is_err()
                                || to_client.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                        let _ = to_client.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Relay { addr, held, task }
    }

    /// From now on, keep what the broker sends from reaching the client.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Deliver what was held, and let everything through again.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------------------------

/// Creates a topic with a random name (`prefix-<uuid>`) and `partitions` partitions.
/// Whether consumer group `group` has committed offsets at the end of each of the `partitions` partitions of `topic`
/// (a partition no record went to has nothing to commit).
pub async fn committed_to_the_end(topic: &str, group: &str, partitions: i32) -> bool {
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).set("group.id", &group).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        committed.elements().iter().all(|e| {
            let (_, high) = c.fetch_watermarks(&topic, e.partition(), Duration::from_secs(10)).unwrap();
            e.offset() == rdkafka::Offset::Offset(high) || (high == 0 && e.offset() == rdkafka::Offset::Invalid)
        })
    })
    .await
    .unwrap()
}

pub async fn create_topic(prefix: &str, partitions: i32) -> String {
    let topic = random_name(prefix);
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics (is Kafka up? run integration/brokers.sh up)");
    for r in results {
        r.expect("topic created");
    }
    topic
}

/// Whether the broker knows `topic` (auto-creation is off, so a topic no one created stays unknown).
pub async fn topic_exists(topic: &str) -> bool {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().expect("metadata client");
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(15)).expect("metadata (is Kafka up?)");
        md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    })
    .await
    .unwrap()
}

/// One Kafka record as an independent consumer read it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers in order (a header may repeat).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of header `name` as text (None when absent).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v.clone()).expect("UTF-8 header"))
    }

    /// How often header `name` occurs.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }
}

fn kafka_consumer() -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", random_name("sluice-e2e"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers: m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default(),
    }
}

/// Reads the record at exactly (`partition`, `offset`).
pub async fn kafka_read_at(topic: &str, partition: i32, offset: i64) -> Record {
    let consumer = kafka_consumer();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).unwrap();
    consumer.assign(&tpl).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no record at {topic}/{partition}@{offset}"))
        .expect("consume");
    record_of(&m)
}

/// Every record in the topic's `partitions` now: reads each partition up to its high watermark, so the count is
/// exact (a confirmed record is below the watermark) without waiting for stragglers.
pub async fn kafka_read_all(topic: &str, partitions: i32) -> Vec<Record> {
    let consumer = kafka_consumer();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (low, high) = {
            let (t, c) = (topic.to_owned(), kafka_consumer());
            tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, p, Duration::from_secs(15)))
                .await
                .unwrap()
                .expect("watermarks")
        };
        assert_eq!(low, 0, "nothing was deleted from a fresh topic");
        if high > 0 {
            ends.insert(p, high);
        }
    }
    let total: i64 = ends.values().sum();
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    let mut out = Vec::new();
    if total == 0 {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    while (out.len() as i64) < total {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} records of {topic} arrived", out.len()))
            .expect("consume");
        out.push(record_of(&m));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------------------------

/// An independent AMQP connection for setting up and checking.
pub struct Amqp {
    /// Keeps the connection open.
    pub connection: Connection,
    /// A channel on it.
    pub channel: Channel,
}

impl Amqp {
    /// Connects to the test RabbitMQ.
    pub async fn connect() -> Amqp {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ (is it up? run integration/brokers.sh up)");
        let channel = connection.create_channel().await.unwrap();
        Amqp { connection, channel }
    }

    /// Declares a direct exchange.
    pub async fn exchange(&self, name: &str, durable: bool) {
        self.channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { durable, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("exchange_declare");
    }

    /// Declares a queue bound to `exchange` with `binding_key`. RabbitMQ deletes it after ten unused minutes, so a
    /// failed test leaves nothing behind for long.
    pub async fn queue(&self, name: &str, exchange: &str, binding_key: &str, durable: bool) {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        self.channel
            .queue_declare(name.into(), QueueDeclareOptions { durable, ..QueueDeclareOptions::default() }, args)
            .await
            .expect("queue_declare");
        self.channel
            .queue_bind(
                name.into(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue_bind");
    }

    /// Messages ready in `queue`.
    pub async fn len(&self, queue: &str) -> u32 {
        let q = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("passive queue_declare");
        q.message_count()
    }

    /// Takes every message now in `queue` (exact: a confirmed message is already in the queue).
    pub async fn drain(&self, queue: &str) -> Vec<Delivered> {
        let mut out = Vec::new();
        while let Some(m) = self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            out.push(Delivered {
                exchange: m.delivery.exchange.to_string(),
                routing_key: m.delivery.routing_key.to_string(),
                body: m.delivery.data.clone(),
                properties: m.delivery.properties.clone(),
            });
        }
        out
    }

    /// Deletes a queue and an exchange (best effort).
    pub async fn delete(&self, queue: &str, exchange: &str) {
        let _ = self.channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
        let _ = self.channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
    }
}

/// One AMQP message as a consumer got it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Properties and headers.
    pub properties: BasicProperties,
}

impl Delivered {
    /// Header `name` as text (None when absent or not a string).
    pub fn header(&self, name: &str) -> Option<String> {
        match self.properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8(s.as_bytes().to_vec()).expect("UTF-8 header")),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            other => panic!("header {name} is not a string: {other:?}"),
        }
    }

    /// Every header name.
    pub fn header_names(&self) -> Vec<String> {
        self.properties
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// The `message_id` property.
    pub fn message_id(&self) -> Option<String> {
        self.properties.message_id().as_ref().map(|s| s.to_string())
    }

    /// Headers and content type as (name, value) pairs, for [`decode_cloudevent`].
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.header_names().into_iter().map(|n| (n.clone(), self.header(&n).unwrap())).collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CloudEvents, decoded by the cloudevents-sdk crate
// ---------------------------------------------------------------------------------------------------------------

/// A binary-mode CloudEvent as a protocol binding carries it: attributes in headers with a `prefix` (`ce_` for
/// Kafka, `cloudEvents:` for AMQP), the data content type in the message's content type, the data as the body.
/// The same mapping as `cloudevents-sdk`'s own Kafka binding (which cannot be linked here: it pins an older
/// librdkafka); the attribute parsing and validation are the SDK's.
struct BindingMessage {
    prefix: &'static str,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> cloudevents::message::Error {
    cloudevents::message::Error::Other { source: Box::new(e) }
}

impl BinaryDeserializer for BindingMessage {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, mut visitor: V) -> cloudevents::message::Result<R> {
        let key = format!("{}specversion", self.prefix);
        let spec = self
            .headers
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .ok_or(cloudevents::message::Error::WrongEncoding {})?;
        let spec = SpecVersion::try_from(spec.as_str()).map_err(other)?;
        let names = spec.attribute_names();
        visitor = visitor.set_spec_version(spec)?;
        if let Some(ct) = self.content_type {
            visitor = visitor.set_attribute("datacontenttype", MessageAttributeValue::String(ct))?;
        }
        for (k, v) in self.headers {
            let Some(name) = k.strip_prefix(self.prefix) else { continue };
            if name == "specversion" {
                continue;
            }
            visitor = if names.contains(&name) {
                visitor.set_attribute(name, MessageAttributeValue::String(v))?
            } else {
                visitor.set_extension(name, MessageAttributeValue::String(v))?
            };
        }
        if self.body.is_empty() { visitor.end() } else { visitor.end_with_data(self.body) }
    }
}

impl StructuredDeserializer for BindingMessage {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> cloudevents::message::Result<R> {
        visitor.set_structured_event(self.body)
    }
}

impl MessageDeserializer for BindingMessage {
    fn encoding(&self) -> Encoding {
        let key = format!("{}specversion", self.prefix);
        if self.content_type.as_deref().is_some_and(|c| c.starts_with("application/cloudevents+json")) {
            Encoding::STRUCTURED
        } else if self.headers.iter().any(|(k, _)| *k == key) {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// Decodes a message with `cloudevents-sdk`: binary mode from `prefix`ed headers, or structured mode when the
/// content type is `application/cloudevents+json`. Fails the test when it is not a valid CloudEvent.
pub fn decode_cloudevent(
    prefix: &'static str,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
) -> cloudevents::Event {
    let msg = BindingMessage { prefix, headers, content_type, body };
    let encoding = msg.encoding();
    assert!(encoding != Encoding::UNKNOWN, "not a CloudEvent: no {prefix}specversion and not structured");
    MessageDeserializer::into_event(msg).unwrap_or_else(|e| panic!("cloudevents-sdk rejects the message: {e}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Keeping the outage tests apart from the other tests of their broker
// ---------------------------------------------------------------------------------------------------------------

/// Takes a lock on the file `name` in the temporary directory, shared or exclusive, waiting for it on a blocking
/// thread. The lock lasts as long as the returned file is open.
async fn lock_file(name: &'static str, exclusive: bool) -> File {
    tokio::task::spawn_blocking(move || {
        let path = std::env::temp_dir().join(name);
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).expect("lock file");
        if exclusive {
            f.lock().expect("exclusive lock");
        } else {
            f.lock_shared().expect("shared lock");
        }
        f
    })
    .await
    .unwrap()
}

/// A lock on a file shared by every test process: RabbitMQ tests hold it shared, the outage test (which stops the
/// broker) holds it exclusively, so the outage never overlaps another RabbitMQ test, whichever runner starts them.
pub struct RabbitLock(File);

impl RabbitLock {
    const FILE: &'static str = "sluice-e2e-rabbitmq.lock";

    /// Taken by every test that needs RabbitMQ up.
    pub async fn shared() -> RabbitLock {
        RabbitLock(lock_file(Self::FILE, false).await)
    }

    /// Taken by a test that stops or disturbs RabbitMQ.
    pub async fn exclusive() -> RabbitLock {
        RabbitLock(lock_file(Self::FILE, true).await)
    }
}

/// The same for Kafka (a lock file of its own): the Kafka tests hold it shared, the Kafka outage test (which stops
/// the broker with `brokers.sh kafka-stop`) exclusively.
pub struct KafkaLock(File);

impl KafkaLock {
    const FILE: &'static str = "sluice-e2e-kafka.lock";

    /// Taken by every test that needs Kafka up.
    pub async fn shared() -> KafkaLock {
        KafkaLock(lock_file(Self::FILE, false).await)
    }

    /// Taken by a test that stops or disturbs Kafka.
    pub async fn exclusive() -> KafkaLock {
        KafkaLock(lock_file(Self::FILE, true).await)
    }
}

/// Runs `integration/brokers.sh ARGS...`, failing the test when it fails. Returns its standard output.
pub fn brokers_sh(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/brokers.sh");
    let out = std::process::Command::new(&script).args(args).output().expect("run integration/brokers.sh");
    assert!(
        out.status.success(),
        "integration/brokers.sh {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Force-closes (as `rabbitmqctl close_all_connections` does, but only this gateway's, so that other users of the
/// shared broker are not disturbed) every connection named `name`. Returns how many were closed.
pub fn close_connections_named(name: &str) -> usize {
    let listing =
        brokers_sh(&["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"]);
    let pids: Vec<String> = listing
        .lines()
        .filter(|line| line.contains(&format!("<<\"{name}\">>")) || line.contains(&format!("\"{name}\"")))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    for pid in &pids {
        brokers_sh(&["rabbitmqctl", "close_connection", pid, "sluice outage test"]);
    }
    pids.len()
}

//! Brokers over TLS and SASL, through the real binary and the real brokers' TLS listeners (made by
//! `integration/brokers.sh`: amqps on 5671, Kafka SSL on 9094 and SASL_SSL on 9095, one test CA). Each test publishes
//! through the TLS listener and checks, with an independent plain-text consumer of the same broker, what was stored;
//! a certificate the gateway cannot verify is a `503` with the reason in its log, and nothing is stored.

mod broker_support;
mod process_support;

use std::path::PathBuf;
use std::time::Duration;

use broker_support::{Amqp, KafkaLock, RabbitLock, create_topic, eventually, kafka_read_at, random_name};
use http::Request;
use http_body_util::Full;
use process_support::{Launched, json_request};
use serde_json::Value;

/// The CA that signed the brokers' TLS listeners: `SLUICE_TEST_BROKER_CA` (integration/test.sh sets it), else where
/// `integration/brokers.sh` keeps it by default.
fn broker_ca() -> PathBuf {
    let path = std::env::var_os("SLUICE_TEST_BROKER_CA").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("SLUICE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
                .join("sluice")
        });
        std::env::var_os("SLUICE_STATE_DIR").map_or_else(|| cache.join("state"), PathBuf::from).join("tls/ca.pem")
    });
    assert!(
        path.is_file(),
        "no broker test CA at {path:?}: run integration/brokers.sh up (or set SLUICE_TEST_BROKER_CA)"
    );
    path
}

fn port(var: &str, default: u16) -> u16 {
    std::env::var(var).ok().and_then(|p| p.parse().ok()).unwrap_or(default)
}

fn amqps_url() -> String {
    format!("amqps://guest:guest@127.0.0.1:{}/%2f", port("SLUICE_TEST_AMQPS_PORT", 5671))
}

fn kafka_ssl() -> String {
    format!("127.0.0.1:{}", port("SLUICE_TEST_KAFKA_SSL_PORT", 9094))
}

fn kafka_sasl_ssl() -> String {
    format!("127.0.0.1:{}", port("SLUICE_TEST_KAFKA_SASL_SSL_PORT", 9095))
}

/// The gateway binary with broker `b` (the TOML table's body) and route `in` on `POST /in` publishing with `publish`
/// (an inline table's body), and `env`.
async fn gateway(test: &str, broker: &str, publish: &str, env: &[(&str, &str)]) -> Launched {
    let rest = format!(
        r#"
[telemetry]
log_format = "json"

[brokers.b]
{broker}

[[routes]]
name = "in"
match = {{ path = "/in", methods = ["POST"] }}
publish = {{ broker = "b", {publish} }}
"#
    );
    Launched::with_routes(&format!("broker-tls-{test}"), env, &rest).await
}

async fn request(url: String, post: Option<&str>) -> (u16, Value) {
    let req = match post {
        Some(body) => Request::post(url).body(Full::from(body.to_owned())),
        None => Request::get(url).body(Full::default()),
    };
    let (status, _, body) = json_request(req.unwrap()).await.expect("the gateway answers");
    (status, body)
}

/// Broker `b`'s state in `/readyz?verbose` (`up` or `down`).
async fn broker_state(gw: &Launched) -> Value {
    request(gw.admin_url("/readyz?verbose"), None).await.1["brokers"]["b"].clone()
}

/// Waits until the gateway says its broker is connected, then publishes `body`.
async fn publish_when_ready(gw: &Launched, body: &str) -> (u16, Value) {
    eventually("the gateway to connect to its broker over TLS", async || broker_state(gw).await == "up").await;
    request(gw.url("/in"), Some(body)).await
}

/// A refused certificate: the broker stays down, a `503` for the client, the reason in the log, and nothing stored.
async fn assert_refused(gw: &Launched, reason: &[&str]) {
    eventually("the TLS failure in the gateway's log", async || {
        let log = gw.stderr().to_lowercase();
        reason.iter().any(|r| log.contains(r))
    })
    .await;
    assert_eq!(broker_state(gw).await, "down", "no connection without a verified certificate");
    let (status, problem) = request(gw.url("/in"), Some("never stored")).await;
    assert_eq!(status, 503, "{problem}");
}

// ------------------------------------------------------------------------------------------------------- RabbitMQ

/// A queue bound to a new exchange under key `k`, on the plain listener.
async fn amqp_queue(amqp: &Amqp) -> (String, String) {
    let (exchange, queue) = (random_name("tls-x"), random_name("tls-q"));
    amqp.exchange(&exchange, false).await;
    amqp.queue(&queue, &exchange, "k", false).await;
    (exchange, queue)
}

#[tokio::test]
async fn amqps_with_ca_file_publishes_and_the_message_is_stored() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let (exchange, queue) = amqp_queue(&amqp).await;
    let broker = format!("kind = \"amqp\"\nurl = \"{}\"\nca_file = {:?}", amqps_url(), broker_ca());
    let gw = gateway("amqps", &broker, &format!("exchange = \"{exchange}\", routing_key = \"k\""), &[]).await;

    let (status, receipt) = publish_when_ready(&gw, "over amqps").await;
    assert_eq!(status, 202, "{receipt}\n{}", gw.stderr());
    let got = amqp.drain(&queue).await;
    assert_eq!(got.len(), 1, "one message stored");
    assert_eq!(got[0].body, b"over amqps");
    assert_eq!(got[0].message_id().as_deref(), receipt["id"].as_str());
    amqp.delete(&queue, &exchange).await;
}

#[tokio::test]
async fn amqps_without_the_ca_refuses_the_certificate_and_stores_nothing() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let (exchange, queue) = amqp_queue(&amqp).await;
    // The system's roots do not include the test CA.
    let broker = format!("kind = \"amqp\"\nurl = \"{}\"", amqps_url());
    let gw =
        gateway("amqps-unverified", &broker, &format!("exchange = \"{exchange}\", routing_key = \"k\""), &[]).await;

    assert_refused(&gw, &["unknownissuer", "unknown issuer"]).await;
    assert_eq!(amqp.len(&queue).await, 0, "nothing stored");
    amqp.delete(&queue, &exchange).await;
}

// ---------------------------------------------------------------------------------------------------------- Kafka

/// Publishes one record through broker `broker` (with `env`) to a new topic and checks the plain-text consumer
/// reads it at the offset the gateway answered.
async fn kafka_round_trip(test: &str, broker: &str, env: &[(&str, &str)]) {
    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("tls", 1).await;
    let gw = gateway(test, broker, &format!("topic = \"{topic}\""), env).await;

    let body = format!("over {test}");
    let (status, receipt) = publish_when_ready(&gw, &body).await;
    assert_eq!(status, 202, "{receipt}\n{}", gw.stderr());
    let offset = receipt["offset"].as_i64().unwrap_or_else(|| panic!("offset: {receipt}"));
    let record = kafka_read_at(&topic, 0, offset).await;
    assert_eq!(record.payload, body.as_bytes());
}

#[tokio::test]
async fn kafka_ssl_with_ca_file_publishes_and_the_record_is_stored() {
    let broker = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\nca_file = {:?}\noptions = {{ \"security.protocol\" = \"SSL\" }}",
        kafka_ssl(),
        broker_ca()
    );
    kafka_round_trip("kafka-ssl", &broker, &[]).await;
}

#[tokio::test]
async fn kafka_sasl_ssl_plain_with_the_password_from_the_environment() {
    let broker = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\nca_file = {:?}\n\
         options = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"PLAIN\", \"sasl.username\" = \"sluice\" }}\n\
         options_env = {{ \"sasl.password\" = \"KAFKA_PASSWORD\" }}",
        kafka_sasl_ssl(),
        broker_ca()
    );
    kafka_round_trip("kafka-sasl-plain", &broker, &[("KAFKA_PASSWORD", "sluice-plain-secret")]).await;
}

#[tokio::test]
async fn kafka_sasl_ssl_scram_sha_512() {
    let broker = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\nca_file = {:?}\n\
         options = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \
         \"sasl.username\" = \"sluice-scram\" }}\n\
         options_env = {{ \"sasl.password\" = \"KAFKA_PASSWORD\" }}",
        kafka_sasl_ssl(),
        broker_ca()
    );
    kafka_round_trip("kafka-sasl-scram", &broker, &[("KAFKA_PASSWORD", "sluice-scram-secret")]).await;
}

#[tokio::test]
async fn kafka_ssl_without_the_ca_refuses_the_certificate() {
    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("tls-unverified", 1).await;
    let broker = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\ndelivery_timeout = \"1s\"\noptions = {{ \"security.protocol\" = \"SSL\" }}",
        kafka_ssl()
    );
    let gw = gateway("kafka-ssl-unverified", &broker, &format!("topic = \"{topic}\""), &[]).await;
    assert_refused(&gw, &["certificate verify failed"]).await;
    let (low, high) = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", broker_support::kafka_bootstrap()).create().unwrap();
        consumer.fetch_watermarks(&topic, 0, Duration::from_secs(15)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!((low, high), (0, 0), "nothing stored");
}

#[tokio::test]
async fn kafka_sasl_with_a_wrong_password_is_refused() {
    let _kafka = KafkaLock::shared().await;
    let topic = create_topic("tls-badpass", 1).await;
    let broker = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\nca_file = {:?}\ndelivery_timeout = \"1s\"\n\
         options = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"PLAIN\", \"sasl.username\" = \"sluice\" }}\n\
         options_env = {{ \"sasl.password\" = \"KAFKA_PASSWORD\" }}",
        kafka_sasl_ssl(),
        broker_ca()
    );
    let gw =
        gateway("kafka-sasl-badpass", &broker, &format!("topic = \"{topic}\""), &[("KAFKA_PASSWORD", "wrong")]).await;
    assert_refused(&gw, &["authentication failed", "invalid username or password"]).await;
    assert!(!gw.stderr().contains("\"wrong\""), "the password is not logged");
}

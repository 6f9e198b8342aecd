//! State shared by two gateway processes through a real Redis (`[store] kind = "redis"`, started by
//! `integration/redis.sh up`): an `Idempotency-Key` sent to both publishes one message, a per-key rate limit holds
//! across both, and `on_error` decides what happens when Redis does not answer.

mod broker_support;
mod process_support;

use broker_support::common::{Upstream, reply};
use broker_support::{Amqp, Delivered, RabbitLock, amqp_url, eventually, random_name};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use process_support::{Launched, free_port, json_request};
use serde_json::Value;

/// The test Redis (`SLUICE_TEST_REDIS`, default as `integration/redis.sh url` prints).
fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

async fn gateway(test: &str, redis: &str, on_error: &str, routes: &str) -> Launched {
    let rest = format!(
        r#"
[store]
kind = "redis"
url_env = "REDIS_URL"
on_error = "{on_error}"

{routes}
"#
    );
    Launched::with_routes(test, &[("REDIS_URL", redis)], &rest).await
}

async fn send(url: String, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Value) {
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    json_request(req.body(Full::new(Bytes::from_static(b"{\"n\":1}"))).unwrap()).await.expect("the gateway answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_sent_to_two_replicas_publishes_one_message() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let queue = random_name("store-idem");
    amqp.queue(&queue, "amq.direct", &queue, false).await;
    let routes = format!(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "{}"

[[routes]]
name = "events"
match = {{ path = "/events", methods = ["POST"] }}
publish = {{ broker = "rabbit", exchange = "amq.direct", routing_key = "{queue}" }}
"#,
        amqp_url()
    );
    let (a, b) = (
        gateway("store-idem-a", &redis_url(), "fail_closed", &routes).await,
        gateway("store-idem-b", &redis_url(), "fail_closed", &routes).await,
    );
    for gw in [&a, &b] {
        eventually("the replica is connected to RabbitMQ", async || {
            let req = Request::get(gw.admin_url("/readyz?verbose")).body(Full::default()).unwrap();
            json_request(req).await.is_some_and(|(_, _, body)| body["brokers"]["rabbit"] == "up")
        })
        .await;
    }
    let key = random_name("key");
    let first = send(a.url("/events"), &[("idempotency-key", &key)]).await;
    assert_eq!(first.0, 202, "{}", first.2);
    let again = send(b.url("/events"), &[("idempotency-key", &key)]).await;
    assert_eq!(again.0, 202, "{}", again.2);
    assert_eq!(
        again.1.get("idempotent-replayed").map(|v| v.to_str().unwrap()),
        Some("true"),
        "replayed by the other replica"
    );
    assert_eq!(again.2["id"], first.2["id"], "the same answer");
    // A new key on the other replica publishes.
    let other = send(b.url("/events"), &[("idempotency-key", &random_name("key"))]).await;
    assert_eq!(other.0, 202);
    let mut ids = Vec::new();
    eventually("both messages are in the queue", async || {
        ids.extend(amqp.drain(&queue).await.iter().filter_map(Delivered::message_id));
        ids.len() >= 2
    })
    .await;
    assert_eq!(ids, [first.2["id"].as_str().unwrap(), other.2["id"].as_str().unwrap()], "the repeat published nothing");
    let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_rate_limit_holds_across_two_replicas() {
    let app = Upstream::start(|_| async { reply(200, "ok") }).await;
    // One request per 100 s after a burst of 5: nothing refills while the test runs.
    let route = random_name("limited");
    let routes = format!(
        r#"
[upstreams.app]
endpoints = ["{}"]

[[routes]]
name = "{route}"
match = {{ path = "/limited", methods = ["POST"] }}
forward = {{ upstream = "app" }}
rate_limit = {{ per_second = 0.01, burst = 5, key = "{{header.x-user}}" }}
"#,
        app.url()
    );
    let (a, b) = (
        gateway("store-rl-a", &redis_url(), "fail_closed", &routes).await,
        gateway("store-rl-b", &redis_url(), "fail_closed", &routes).await,
    );
    let user = random_name("user");
    let mut passed = 0;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, headers, body) = send(gw.url("/limited"), &[("x-user", &user)]).await;
        match status {
            200 => passed += 1,
            429 => assert!(headers.get("retry-after").is_some(), "429 says when: {body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(passed, 5, "a burst of 5 for the user across both replicas, not 5 each");
    let (status, _, _) = send(b.url("/limited"), &[("x-user", &random_name("user"))]).await;
    assert_eq!(status, 200, "another user has a bucket of their own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_fail_closed_answers_503_and_fail_open_serves() {
    let app = Upstream::start(|_| async { reply(200, "ok") }).await;
    let dead = format!("redis://127.0.0.1:{}/0", free_port().await);
    let routes = format!(
        r#"
[upstreams.app]
endpoints = ["{}"]

[[routes]]
name = "limited"
match = {{ path = "/limited", methods = ["POST"] }}
forward = {{ upstream = "app" }}
rate_limit = {{ per_second = 100 }}
"#,
        app.url()
    );
    let closed = gateway("store-closed", &dead, "fail_closed", &routes).await;
    let (status, headers, body) = send(closed.url("/limited"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:sluice:problem:store-unavailable", "{body}");
    assert!(headers.get("retry-after").is_some());
    let open = gateway("store-open", &dead, "fail_open", &routes).await;
    let (status, _, body) = send(open.url("/limited"), &[]).await;
    assert_eq!(status, 200, "served without the shared limit: {body}");
    let metrics = reqwest_metrics(&open).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_store_errors_total{op=\"rate_limit\"}") && !l.ends_with(" 0")),
        "the failure is counted:\n{metrics}"
    );
}

async fn reqwest_metrics(gw: &Launched) -> String {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client.request(Request::get(gw.admin_url("/metrics")).body(Full::default()).unwrap()).await.unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_key_in_flight_on_one_replica_is_a_conflict_on_the_other_until_answered_or_released() {
    use sluice::policy::idempotency::{Begin, Stored};
    use sluice::store::Store;
    let cfg: sluice::config::StoreConfig =
        serde_json::from_value(serde_json::json!({ "kind": "redis", "url_env": "REDIS_URL" })).unwrap();
    let counters = || [Default::default(), Default::default()];
    let one = Store::open(&redis_url(), &cfg, counters()).unwrap();
    let two = Store::open(&redis_url(), &cfg, counters()).unwrap();
    let key = random_name("k");
    assert_eq!(one.begin("r", &key, "t1").await.unwrap(), Begin::New);
    assert_eq!(two.begin("r", &key, "t2").await.unwrap(), Begin::InFlight, "claimed by the other replica");
    two.abort("r", &key, "t2").await.unwrap();
    assert_eq!(two.begin("r", &key, "t2").await.unwrap(), Begin::InFlight, "only the claim's owner releases it");
    one.abort("r", &key, "t1").await.unwrap();
    assert_eq!(two.begin("r", &key, "t2").await.unwrap(), Begin::New, "released: the retry goes ahead");
    let answer = Stored { status: 202, body: Bytes::from_static(b"{\"id\":\"1\"}"), content_type: None };
    two.complete("r", &key, "t2", &answer, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(one.begin("r", &key, "t3").await.unwrap(), Begin::Replay(answer.clone()));
    one.abort("r", &key, "t2").await.unwrap();
    assert_eq!(one.begin("r", &key, "t3").await.unwrap(), Begin::Replay(answer), "an answered key is not released");
}

//! Publishing to SQS through the real binary against a real SQS-compatible server (ElasticMQ, started by
//! `integration/sqs.sh up`; `SLUICE_TEST_SQS`), checked with an independent client (boto3,
//! `tests/sqs_support/sqs_tool.py`): the body and the metadata as message attributes, binary bodies in base64, FIFO
//! queues deduplicated on the `Idempotency-Key`, an unknown queue, and SQS unreachable with and without a spool.

mod common;
mod process_support;

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use process_support::{Launched, free_port, json_request, python};
use serde_json::Value;

/// The test SQS endpoint (`SLUICE_TEST_SQS`, default as `integration/sqs.sh url` prints).
fn endpoint() -> String {
    std::env::var("SLUICE_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:9324".to_owned())
}

/// Runs `sqs_tool.py ENDPOINT ARGS...` and returns what it printed.
fn tool(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sqs_support/sqs_tool.py");
    let out = Command::new(python()).arg(script).arg(endpoint()).args(args).output().expect("run sqs_tool.py");
    assert!(out.status.success(), "sqs_tool.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn queue(prefix: &str, fifo: bool) -> String {
    let name = format!("{prefix}-{}{}", uuid::Uuid::new_v4().simple(), if fifo { ".fifo" } else { "" });
    tool(&if fifo { vec!["create", &name, "fifo"] } else { vec!["create", &name] });
    name
}

fn received(name: &str, count: usize) -> Vec<Value> {
    serde_json::from_str(&tool(&["receive", name, &count.to_string()])).unwrap()
}

async fn gateway(test: &str, broker: &str, routes: &str) -> Launched {
    let env = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    Launched::with_routes(test, &env, &format!("[brokers.q]\n{broker}\n\n{routes}")).await
}

fn route(name: &str, path: &str, queue: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path = \"{path}\", methods = [\"POST\"] }}\npublish = {{ broker = \"q\", queue = \"{queue}\" }}\n"
    )
}

async fn post(gw: &Launched, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> (u16, Value) {
    let mut req = Request::post(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, _, body) = json_request(req.body(Full::new(body.into())).unwrap()).await.expect("the gateway answers");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_queue_with_their_metadata_and_fifo_queues_deduplicate() {
    let (standard, fifo) = (queue("sluice-e2e", false), queue("sluice-e2e", true));
    let broker = format!("kind = \"sqs\"\nendpoint = \"{}\"\nregion = \"us-east-1\"", endpoint());
    let routes = route("orders", "/orders", &standard)
        + &route("fifo", "/fifo", &fifo)
        + &route("gone", "/gone", "no-such-queue");
    let gw = gateway("sqs-publish", &broker, &routes).await;

    let (status, doc) =
        post(&gw, "/orders", &[("content-type", "application/json"), ("x-request-id", "req-sqs-1")], r#"{"n":1}"#)
            .await;
    assert_eq!(status, 202, "{doc}");
    assert_eq!((doc["broker"].as_str(), doc["queue"].as_str()), (Some("q"), Some(standard.as_str())), "{doc}");
    let (status, binary) =
        post(&gw, "/orders", &[("content-type", "application/octet-stream")], vec![0u8, 255, 1]).await;
    assert_eq!(status, 202, "{binary}");
    let got = received(&standard, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    let json_msg = got.iter().find(|m| m["body"] == r#"{"n":1}"#).expect("the JSON body, as it was sent");
    assert_eq!(json_msg["attributes"]["sluice-id"], doc["id"], "{json_msg}");
    assert_eq!(json_msg["attributes"]["content-type"], "application/json");
    assert_eq!(json_msg["attributes"]["x-request-id"], "req-sqs-1");
    assert_eq!(json_msg["attributes"]["sluice-route"], "orders");
    assert!(json_msg["attributes"]["traceparent"].as_str().is_some_and(|t| t.starts_with("00-")), "{json_msg}");
    let bin_msg = got.iter().find(|m| m["attributes"]["sluice-id"] == binary["id"]).unwrap();
    assert_eq!(
        (bin_msg["body"].as_str(), bin_msg["attributes"]["sluice-body-encoding"].as_str()),
        (Some("AP8B"), Some("base64"))
    );

    // FIFO: the same Idempotency-Key twice is one message (SQS deduplicates), in the route's group.
    for _ in 0..2 {
        let (status, doc) = post(&gw, "/fifo", &[("idempotency-key", "order-7")], "first").await;
        assert_eq!(status, 202, "{doc}");
    }
    let (status, _) = post(&gw, "/fifo", &[("idempotency-key", "order-8")], "second").await;
    assert_eq!(status, 202);
    let got = received(&fifo, 2);
    let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["first", "second"], "deduplicated, in order: {got:?}");
    assert_eq!(got[0]["group"], "fifo", "the route's name is the message group");

    let (status, doc) = post(&gw, "/gone", &[], "x").await;
    assert_eq!(status, 502, "an unknown queue: {doc}");
    tool(&["delete", &standard]);
    tool(&["delete", &fifo]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_unreachable_is_a_503_or_with_a_spool_a_202_delivered_once_it_is_back() {
    let dead = format!("http://127.0.0.1:{}", free_port().await);
    let broker = format!("kind = \"sqs\"\nendpoint = \"{dead}\"");
    let gw = gateway("sqs-down", &broker, &route("orders", "/orders", "any")).await;
    let (status, doc) = post(&gw, "/orders", &[], "x").await;
    assert_eq!(status, 503, "{doc}");
    drop(gw);

    // A spool takes the message while SQS is unreachable; the next process, with SQS back, delivers it.
    let q = queue("sluice-e2e-spool", false);
    let spool = std::env::temp_dir().join(format!("sluice-sqs-spool-{}", uuid::Uuid::new_v4().simple()));
    let with_spool = |endpoint: &str| {
        format!("kind = \"sqs\"\nendpoint = \"{endpoint}\"\n\n[brokers.q.spool]\ndir = \"{}\"", spool.display())
    };
    let mut down = gateway("sqs-spool-down", &with_spool(&dead), &route("orders", "/orders", &q)).await;
    let (status, doc) = post(&down, "/orders", &[], "kept").await;
    assert_eq!((status, &doc["spooled"]), (202, &Value::Bool(true)), "{doc}");
    down.child.kill().unwrap();
    down.child.wait().unwrap();
    let _up = gateway("sqs-spool-up", &with_spool(&endpoint()), &route("orders", "/orders", &q)).await;
    let got = received(&q, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0]["body"].as_str(), &got[0]["attributes"]["sluice-id"]), (Some("kept"), &doc["id"]));
    tool(&["delete", &q]);
    std::fs::remove_dir_all(&spool).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_delivers_an_sqs_queue_retries_and_dead_letters_to_another_queue() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let (source, dead) = (queue("sluice-e2e-sub", false), queue("sluice-e2e-dl", false));
    // The upstream: "bad" is refused for good (422, dead-lettered at once), "flaky" fails once (retried), the rest
    // are taken.
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let flaky = Arc::new(AtomicUsize::new(0));
    let app = {
        let (seen, flaky) = (seen.clone(), flaky.clone());
        common::Upstream::start(move |req| {
            let (seen, flaky) = (seen.clone(), flaky.clone());
            async move {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                let id = req.headers.get("sluice-id").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let queue = req.headers.get("sluice-queue").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                seen.lock().unwrap().push((body.clone(), id, queue));
                match body.as_str() {
                    "bad" => common::reply(422, "no"),
                    "flaky" if flaky.fetch_add(1, Ordering::SeqCst) == 0 => common::reply(503, "later"),
                    _ => common::reply(200, "ok"),
                }
            }
        })
        .await
    };
    let broker = format!("kind = \"sqs\"\nendpoint = \"{}\"", endpoint());
    let routes = format!(
        r#"{}
[upstreams.app]
endpoints = ["{}"]

[[subscriptions]]
name = "sqs-sub"
from = {{ broker = "q", queue = "{source}" }}
to = {{ upstream = "app", path = "/in" }}
retry = {{ max_retries = 3, backoff = "10ms", max_backoff = "50ms" }}
dead_letter = {{ queue = "{dead}" }}
"#,
        route("in", "/in", &source),
        app.url()
    );
    let gw = gateway("sqs-subscribe", &broker, &routes).await;
    // Published through the gateway itself, so that the messages carry its metadata.
    let mut ids = Vec::new();
    for body in ["one", "bad", "flaky", "two"] {
        let (status, doc) = post(&gw, "/in", &[("content-type", "text/plain")], body).await;
        assert_eq!(status, 202, "{doc}");
        ids.push(doc["id"].as_str().unwrap().to_owned());
    }
    for _ in 0..200 {
        let delivered: Vec<String> = seen.lock().unwrap().iter().map(|(b, _, _)| b.clone()).collect();
        if ["one", "two", "bad"].iter().all(|b| delivered.contains(&b.to_string()))
            && delivered.iter().filter(|b| *b == "flaky").count() >= 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let one = seen.iter().find(|(b, _, _)| b == "one").expect("delivered");
    assert_eq!((&one.1, one.2.as_str()), (&ids[0], source.as_str()), "with its sluice-id and queue");
    assert_eq!(seen.iter().filter(|(b, _, _)| b == "flaky").count(), 2, "retried once after the 503");
    let dead_letters = received(&dead, 1);
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert_eq!(dead_letters[0]["body"], "bad");
    assert_eq!(dead_letters[0]["attributes"]["sluice-error"], "upstream answered 422");
    assert_eq!(received(&source, 0).len(), 0, "every delivered or dead-lettered message was deleted");
    drop(gw);
    tool(&["delete", &source]);
    tool(&["delete", &dead]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_over_sqs_answers_with_the_responders_reply_from_a_reply_queue_of_its_own() {
    let requests = queue("sluice-e2e-rpc", false);
    let broker = format!("kind = \"sqs\"\nendpoint = \"{}\"", endpoint());
    let routes = format!(
        "[[routes]]\nname = \"rpc\"\nmatch = {{ path = \"/rpc\", methods = [\"POST\"] }}\nrequest_reply = {{ broker = \"q\", queue = \"{requests}\", reply_queue = \"sluice-e2e-replies\", timeout = \"20s\" }}\n"
    );
    let gw = gateway("sqs-rpc", &broker, &routes).await;
    // The gateway's reply queue exists once /readyz?verbose says the route serves.
    for _ in 0..200 {
        let req = Request::get(gw.admin_url("/readyz?verbose")).body(Full::default()).unwrap();
        if json_request(req).await.is_some_and(|(_, _, body)| body["routes"]["rpc"] == "serving") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let responder = std::thread::spawn({
        let requests = requests.clone();
        move || tool(&["respond", &requests, "1"])
    });
    let (status, body) = post(&gw, "/rpc", &[("content-type", "text/plain")], "ping").await;
    assert_eq!(status, 201, "the reply's sluice-status: {body}");
    assert_eq!(body, serde_json::json!({ "echo": "ping" }));
    assert_eq!(responder.join().unwrap().trim(), "1");
    drop(gw);
    tool(&["delete", &requests]);
}

//! End-to-end tests of `verify` (webhook signatures) through the real gateway, real brokers and a real upstream.
//! The signatures are made at test time by the providers' own libraries run in Python (`SLUICE_TEST_PYTHON`, else
//! the venv of `integration/pyenv.sh`): `standardwebhooks` signs Standard Webhooks; Stripe headers follow Stripe's
//! documented scheme and are accepted by `stripe.Webhook.construct_event` before they are sent (stripe-python has
//! no public test-header generator); GitHub's documented example is used as published; generic HMACs come from
//! Python's `hmac` module. Valid requests are published, and an independent consumer (Kafka or RabbitMQ) receives
//! them byte for byte; refused ones get `401` and publish (or forward) nothing.
//!
//! The secrets live in environment variables (`secret_env`). A test process must not change its own environment
//! while other threads run, so each gateway test (`e2e::NAME`, ignored by a plain run) runs in a child test
//! process started with the secrets in its environment by the test `NAME` of the same name. The tests of the
//! `sluice` binary set the environment of the process they start.

mod broker_support;
mod process_support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use broker_support::common::{Upstream, reply};
use broker_support::*;
use process_support::python;
use serde_json::{Value, json};

/// GitHub's documented test vector (docs.github.com, "Validating webhook deliveries").
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_BODY: &str = "Hello, World!";
const GITHUB_SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// The variables the child processes get: (name, comma-separated secrets).
const GITHUB_ENV: &str = "SLUICE_E2E_GITHUB_SECRET";
const GITHUB_ROTATED_ENV: &str = "SLUICE_E2E_GITHUB_SECRETS_ROTATED";
const STRIPE_ENV: &str = "SLUICE_E2E_STRIPE_SECRETS";
const STANDARD_ENV: &str = "SLUICE_E2E_STANDARD_SECRETS";
const HMAC_ENV: &str = "SLUICE_E2E_HMAC_SECRETS";

/// The one detail every refused signature gets, whatever failed.
const DETAIL: &str = "the request's webhook signature could not be verified";

/// Fresh secrets for one child process: GitHub's documented one, and two of each scheme (old, new) for rotation.
fn secrets() -> Vec<(&'static str, String)> {
    let whsec =
        || format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes()));
    let stripe = || format!("whsec_{}", uuid::Uuid::new_v4().simple());
    vec![
        (GITHUB_ENV, GITHUB_SECRET.to_owned()),
        (GITHUB_ROTATED_ENV, format!("{},{GITHUB_SECRET}", random_name("gh-new"))),
        (STRIPE_ENV, format!("{}, {}", stripe(), stripe())),
        (STANDARD_ENV, format!("{},{}", whsec(), whsec())),
        (HMAC_ENV, format!("{},{}", random_name("mac-old"), random_name("mac-new"))),
    ]
}

/// The secrets listed in variable `var` (in a child process).
fn listed(var: &str) -> Vec<String> {
    let value = std::env::var(var).unwrap_or_else(|_| panic!("{var} is unset: run this test through its wrapper"));
    value.split(',').map(|s| s.trim().to_owned()).collect()
}

/// Runs the ignored test `e2e::NAME` in a child process whose environment holds [`secrets`].
fn in_child(name: &str) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--include-ignored", "--nocapture", "--test-threads=1"]);
    for (k, v) in secrets() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("1 passed"), "{name} ran: {stdout}");
}

macro_rules! run_in_child {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            in_child(concat!("e2e::", stringify!($name)));
        }
    )*};
}

run_in_child!(
    github_documented_example_is_published_and_refused_requests_publish_nothing,
    github_rotation_accepts_either_secret,
    stripe_signatures_by_the_stripe_scheme_within_tolerance_are_published_to_kafka,
    standard_webhooks_signed_by_the_library_are_published_to_rabbitmq,
    generic_hmac_sha512_base64_over_a_binary_body_is_published_to_kafka,
    forward_route_upstream_never_sees_a_bad_signature,
);

// ---------------------------------------------------------------------------------------------------------------
// Python: the providers' libraries
// ---------------------------------------------------------------------------------------------------------------

/// Runs `script` with `jobs` as JSON on its standard input and returns what it prints as JSON.
fn py(script: &str, jobs: Value) -> Value {
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child.stdin.take().unwrap().write_all(jobs.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("python printed no JSON ({e})"))
}

/// Stripe: `t=<t>,v1=<hex>` per Stripe's documented scheme (HMAC-SHA256 of `{t}.{payload}`, keyed with the whole
/// secret), with one `v1` per secret listed. Stripe's own library checks every header: `verify_header` the
/// signatures, and `construct_event` (which also checks the timestamp) the fresh ones.
const STRIPE: &str = r#"
import hashlib, hmac, json, sys
import stripe
out = []
for job in json.load(sys.stdin):
    payload, t = job["payload"], job["t"]
    sigs = [hmac.new(s.encode(), ("%d.%s" % (t, payload)).encode(), hashlib.sha256).hexdigest() for s in job["secrets"]]
    header = "t=%d," % t + ",".join("v1=" + s for s in sigs)
    if job["stripe_accepts"]:
        stripe.WebhookSignature.verify_header(payload, header, job["stripe_secret"], tolerance=None)
        if job["fresh"]:
            event = stripe.Webhook.construct_event(payload, header, job["stripe_secret"])
            assert event.id == json.loads(payload)["id"]
        else:
            try:
                stripe.Webhook.construct_event(payload, header, job["stripe_secret"])
                raise SystemExit("stripe accepted a stale timestamp")
            except stripe.SignatureVerificationError:
                pass
    out.append(header)
print(json.dumps(out))
"#;

/// Standard Webhooks: `standardwebhooks.Webhook(secret).sign(id, timestamp, payload)`, one `v1,` entry per secret
/// (space-separated); the library's `verify` accepts the fresh ones.
const STANDARD: &str = r#"
import json, sys
from datetime import datetime, timezone
from standardwebhooks import Webhook
out = []
for job in json.load(sys.stdin):
    ts = datetime.fromtimestamp(job["t"], tz=timezone.utc)
    sigs = [Webhook(s).sign(job["id"], ts, job["payload"]) for s in job["secrets"]]
    headers = {"webhook-id": job["id"], "webhook-timestamp": str(job["t"]), "webhook-signature": " ".join(sigs)}
    if job["verify_with"]:
        Webhook(job["verify_with"]).verify(job["payload"], headers)
    out.append(headers)
print(json.dumps(out))
"#;

/// A generic HMAC with Python's `hmac` module: `algorithm` over the base64-given payload, `hex` or `base64`.
const HMAC: &str = r#"
import base64, hashlib, hmac, json, sys
out = []
for job in json.load(sys.stdin):
    mac = hmac.new(job["secret"].encode(), base64.b64decode(job["payload_b64"]), getattr(hashlib, job["algorithm"]))
    out.append(mac.hexdigest() if job["encoding"] == "hex" else base64.b64encode(mac.digest()).decode())
print(json.dumps(out))
"#;

/// `prefix` + the generic HMAC of `payload` under `secret`.
fn hmac_sig(secret: &str, payload: &[u8], algorithm: &str, encoding: &str, prefix: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
    let job = json!([{ "secret": secret, "payload_b64": b64, "algorithm": algorithm, "encoding": encoding }]);
    format!("{prefix}{}", py(HMAC, job)[0].as_str().unwrap())
}

// ---------------------------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------------------------

/// Asserts the `401` every refused signature gets: problem+json, the route, and one detail for every cause.
fn assert_refused(r: &Resp, route: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let v = assert_problem(r, 401, route);
    assert_eq!(v["detail"], DETAIL, "{what}: the detail never says which part failed");
    assert_eq!(v["type"], "urn:sluice:problem:bad-signature", "{what}");
}

/// A request that must be refused: what is wrong with it, its headers and its body.
struct Refused {
    what: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn refused<K: ToString, V: ToString>(what: &'static str, headers: Vec<(K, V)>, body: impl AsRef<[u8]>) -> Refused {
    let headers = headers.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Refused { what, headers, body: body.as_ref().to_vec() }
}

/// Sends every request of `cases` to `path` and asserts that each gets the one `401` of `route`.
async fn assert_all_refused(gw: &Gateway, path: &str, route: &str, cases: Vec<Refused>) {
    for case in cases {
        let headers: Vec<(&str, &str)> = case.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_refused(&post(gw, path, &headers, &case.body).await, route, case.what);
    }
}

/// Posts `body` with `headers` (pairs) to `path`.
async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    gw.post(path, headers, body.to_vec()).await
}

fn rabbit() -> Value {
    json!({ "kind": "amqp", "url": amqp_url(), "confirm_timeout": "10s" })
}

fn kafka() -> Value {
    json!({ "kind": "kafka", "bootstrap": kafka_bootstrap(), "delivery_timeout": "20s" })
}

/// A gateway with both brokers and `routes`, ready (RabbitMQ connected).
async fn gateway(routes: Vec<Value>) -> Gateway {
    let gw = Gateway::start(json!({ "brokers": { "rabbit": rabbit(), "events": kafka() }, "routes": routes })).await;
    eventually("the gateway to connect to its brokers (/readyz 200)", async || gw.brokers_up().await).await;
    gw
}

/// A test's own RabbitMQ exchange and queue (bound with `binding_key`).
struct Rabbit {
    exchange: String,
    queue: String,
    amqp: Amqp,
    _lock: RabbitLock,
}

impl Rabbit {
    async fn new(binding_key: &str) -> Rabbit {
        let lock = RabbitLock::shared().await;
        let amqp = Amqp::connect().await;
        let (exchange, queue) = (random_name("e2e-verify-x"), random_name("e2e-verify-q"));
        amqp.exchange(&exchange, false).await;
        amqp.queue(&queue, &exchange, binding_key, false).await;
        Rabbit { exchange, queue, amqp, _lock: lock }
    }

    /// The bodies of every message now in the queue (exact: a confirmed message is already there).
    async fn bodies(&self) -> Vec<Vec<u8>> {
        self.amqp.drain(&self.queue).await.into_iter().map(|m| m.body).collect()
    }
}

/// Every record body now in the one-partition `topic`.
async fn kafka_bodies(topic: &str) -> Vec<Vec<u8>> {
    kafka_read_all(topic, 1).await.into_iter().map(|r| r.payload).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The gateway tests, each run in a child process with the secrets in its environment
// ---------------------------------------------------------------------------------------------------------------

mod e2e {
    use super::*;

    fn github_route(name: &str, secret_env: &str, exchange: &str) -> Value {
        json!({
            "name": name,
            "match": { "path": format!("/webhooks/{name}"), "methods": ["POST"] },
            "verify": { "scheme": "github", "secret_env": secret_env },
            "publish": { "broker": "rabbit", "exchange": exchange, "routing_key": "github.{header.x-github-event}" }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by the test of the same name outside `e2e`, with the secrets in its environment"]
    async fn github_documented_example_is_published_and_refused_requests_publish_nothing() {
        let q = Rabbit::new("github.push").await;
        let gw = gateway(vec![github_route("github", GITHUB_ENV, &q.exchange)]).await;
        let path = "/webhooks/github";
        let other = hmac_sig("not the secret", GITHUB_BODY.as_bytes(), "sha256", "hex", "sha256=");
        let event = ("x-github-event", "push");
        let cases = vec![
            refused("tampered body", vec![event, ("x-hub-signature-256", GITHUB_SIGNATURE)], b"Hello, World?"),
            refused(
                "body with a byte more",
                vec![event, ("x-hub-signature-256", GITHUB_SIGNATURE)],
                b"Hello, World!\n",
            ),
            refused("missing header", vec![event], GITHUB_BODY.as_bytes()),
            refused(
                "no sha256= prefix",
                vec![event, ("x-hub-signature-256", &GITHUB_SIGNATURE[7..])],
                GITHUB_BODY.as_bytes(),
            ),
            refused("not hex", vec![event, ("x-hub-signature-256", "sha256=xyz")], GITHUB_BODY.as_bytes()),
            refused("another secret", vec![event, ("x-hub-signature-256", other.as_str())], GITHUB_BODY.as_bytes()),
            refused("SHA-1 header only", vec![event, ("x-hub-signature", "sha1=0000")], GITHUB_BODY.as_bytes()),
        ];
        assert_all_refused(&gw, path, "github", cases).await;
        assert!(q.bodies().await.is_empty(), "a refused request publishes nothing");

        let r = post(&gw, path, &[event, ("x-hub-signature-256", GITHUB_SIGNATURE)], GITHUB_BODY.as_bytes()).await;
        let receipt = assert_accepted(&r);
        assert_eq!(receipt["routing_key"], "github.push", "{receipt}");
        assert_eq!(q.bodies().await, vec![GITHUB_BODY.as_bytes().to_vec()], "the signed body, byte for byte");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by the test of the same name outside `e2e`, with the secrets in its environment"]
    async fn github_rotation_accepts_either_secret() {
        let q = Rabbit::new("github.push").await;
        let gw = gateway(vec![github_route("rotated", GITHUB_ROTATED_ENV, &q.exchange)]).await;
        let path = "/webhooks/rotated";
        let new_secret = listed(GITHUB_ROTATED_ENV)[0].clone();
        let event = ("x-github-event", "push");
        // The old secret (GitHub's documented example, listed second).
        let r = post(&gw, path, &[event, ("x-hub-signature-256", GITHUB_SIGNATURE)], GITHUB_BODY.as_bytes()).await;
        assert_accepted(&r);
        // The new secret, listed first.
        let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        let sig = hmac_sig(&new_secret, body, "sha256", "hex", "sha256=");
        assert_accepted(&post(&gw, path, &[event, ("x-hub-signature-256", &sig)], body).await);
        // A third secret is not one of them.
        let sig = hmac_sig("a third secret", body, "sha256", "hex", "sha256=");
        assert_refused(&post(&gw, path, &[event, ("x-hub-signature-256", &sig)], body).await, "rotated", "third");
        assert_eq!(q.bodies().await, vec![GITHUB_BODY.as_bytes().to_vec(), body.to_vec()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by the test of the same name outside `e2e`, with the secrets in its environment"]
    async fn stripe_signatures_by_the_stripe_scheme_within_tolerance_are_published_to_kafka() {
        let _kafka = KafkaLock::shared().await;
        let topic = create_topic("e2e-verify-stripe", 1).await;
        let gw = gateway(vec![json!({
            "name": "stripe",
            "match": { "path": "/webhooks/stripe", "methods": ["POST"] },
            "verify": { "scheme": "stripe", "secret_env": STRIPE_ENV },
            "publish": { "broker": "events", "topic": topic }
        })])
        .await;
        let [old, new] = <[String; 2]>::try_from(listed(STRIPE_ENV)).unwrap();
        let now = unix_now();
        let event =
            |id: &str| json!({ "id": id, "object": "event", "type": "invoice.paid", "note": "Zoë ✓" }).to_string();
        let (first, second, third) = (event("evt_1"), event("evt_2"), event("evt_3"));
        let job = |payload: &str, t: i64, secrets: &[&str], stripe_secret: Option<&str>| {
            json!({ "payload": payload, "t": t, "secrets": secrets, "fresh": (now - t).abs() < 60,
                    "stripe_accepts": stripe_secret.is_some(), "stripe_secret": stripe_secret })
        };
        let headers = py(
            STRIPE,
            json!([
                job(&first, now, &[&old], Some(&old)),
                // Two v1 entries, as Stripe sends while a secret is rolled: the second one is ours (the new secret).
                job(&second, now, &["whsec_someone_else", &new], Some(&new)),
                job(&third, now, &["whsec_someone_else"], None),
                job(&third, now - 600, &[&old], Some(&old)),
                job(&third, now + 600, &[&old], None),
                job(&third, now, &[&old], Some(&old)),
            ]),
        );
        let h = |i: usize| headers[i].as_str().unwrap().to_owned();
        let path = "/webhooks/stripe";
        let cases = vec![
            refused("another secret", vec![("stripe-signature", h(2))], third.clone()),
            refused("10 minutes old", vec![("stripe-signature", h(3))], third.clone()),
            refused("10 minutes ahead", vec![("stripe-signature", h(4))], third.clone()),
            refused("tampered body", vec![("stripe-signature", h(5))], third.replace("evt_3", "evt_4")),
            refused("missing header", Vec::<(&str, &str)>::new(), third.clone()),
            refused(
                "no timestamp",
                vec![("stripe-signature", h(5).split(',').nth(1).unwrap().to_owned())],
                third.clone(),
            ),
            refused("no v1", vec![("stripe-signature", h(5).replace("v1=", "v0="))], third.clone()),
        ];
        assert_all_refused(&gw, path, "stripe", cases).await;
        assert!(kafka_bodies(&topic).await.is_empty(), "a refused request publishes nothing");

        for (i, body) in [(0, &first), (1, &second)] {
            let sig = h(i);
            let headers = [("stripe-signature", sig.as_str()), ("content-type", "application/json")];
            let r = post(&gw, path, &headers, body.as_bytes()).await;
            assert_eq!(assert_accepted(&r)["topic"], topic.as_str());
        }
        let got = kafka_bodies(&topic).await;
        assert_eq!(got, vec![first.into_bytes(), second.into_bytes()], "the signed bodies, byte for byte");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by the test of the same name outside `e2e`, with the secrets in its environment"]
    async fn standard_webhooks_signed_by_the_library_are_published_to_rabbitmq() {
        let q = Rabbit::new("standard").await;
        let gw = gateway(vec![json!({
            "name": "standard",
            "match": { "path": "/webhooks/standard", "methods": ["POST"] },
            "verify": { "scheme": "standard", "secret_env": STANDARD_ENV },
            "publish": { "broker": "rabbit", "exchange": q.exchange, "routing_key": "standard" }
        })])
        .await;
        let [old, new] = <[String; 2]>::try_from(listed(STANDARD_ENV)).unwrap();
        let other = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b"someone else's key"));
        let now = unix_now();
        let payload = |n: u32| json!({ "type": "invoice.paid", "n": n, "name": "Zoë ✓" }).to_string();
        let (first, second, third) = (payload(1), payload(2), payload(3));
        let job = |id: &str, payload: &str, t: i64, secrets: &[&str], verify_with: Option<&str>| json!({ "id": id, "payload": payload, "t": t, "secrets": secrets, "verify_with": verify_with });
        let signed = py(
            STANDARD,
            json!([
                job("msg_1", &first, now, &[&old], Some(&old)),
                // Several signatures in one header, the matching one last (the new secret).
                job("msg_2", &second, now, &[&other, &new], Some(&new)),
                job("msg_3", &third, now, &[&other], None),
                job("msg_3", &third, now - 600, &[&old], None),
                job("msg_3", &third, now + 600, &[&old], None),
                job("msg_3", &third, now, &[&old], Some(&old)),
            ]),
        );
        let headers = |i: usize| -> Vec<(String, String)> {
            signed[i].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect()
        };
        let without = |i: usize, name: &str| headers(i).into_iter().filter(|(k, _)| k != name).collect::<Vec<_>>();
        let with = |i: usize, name: &str, value: &str| {
            let mut h = without(i, name);
            h.push((name.to_owned(), value.to_owned()));
            h
        };
        let path = "/webhooks/standard";
        let cases = vec![
            refused("another secret", headers(2), third.clone()),
            refused("10 minutes old", headers(3), third.clone()),
            refused("10 minutes ahead", headers(4), third.clone()),
            refused("tampered body", headers(5), third.replace("\"n\":3", "\"n\":4")),
            refused("another id", with(5, "webhook-id", "msg_4"), third.clone()),
            refused("missing webhook-id", without(5, "webhook-id"), third.clone()),
            refused("missing webhook-timestamp", without(5, "webhook-timestamp"), third.clone()),
            refused("missing webhook-signature", without(5, "webhook-signature"), third.clone()),
            refused("bad base64", with(5, "webhook-signature", "v1,!!not-base64!!"), third.clone()),
            refused("no v1", with(5, "webhook-signature", &headers(5)[2].1.replace("v1,", "v2,")), third.clone()),
        ];
        assert_all_refused(&gw, path, "standard", cases).await;
        assert!(q.bodies().await.is_empty(), "a refused request publishes nothing");

        for (i, body) in [(0, &first), (1, &second)] {
            let h = headers(i);
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_accepted(&post(&gw, path, &h, body.as_bytes()).await);
        }
        assert_eq!(q.bodies().await, vec![first.into_bytes(), second.into_bytes()], "the signed bodies, byte for byte");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by the test of the same name outside `e2e`, with the secrets in its environment"]
    async fn generic_hmac_sha512_base64_over_a_binary_body_is_published_to_kafka() {
        let _kafka = KafkaLock::shared().await;
        let topic = create_topic("e2e-verify-hmac", 1).await;
        let gw = gateway(vec![json!({
            "name": "mac",
            "match": { "path": "/webhooks/mac", "methods": ["POST"] },
            "verify": { "scheme": "hmac", "secret_env": HMAC_ENV, "header": "X-Signature", "prefix": "sha512=",
                        "encoding": "base64", "algorithm": "sha512" },
            "publish": { "broker": "events", "topic": topic }
        })])
        .await;
        let [old, new] = <[String; 2]>::try_from(listed(HMAC_ENV)).unwrap();
        let body = binary_body();
        let path = "/webhooks/mac";
        let sig = |secret: &str, payload: &[u8]| hmac_sig(secret, payload, "sha512", "base64", "sha512=");
        let good = sig(&old, &body);
        let mut tampered = body.clone();
        tampered[3] ^= 1;
        let cases = vec![
            refused("another secret", vec![("x-signature", sig("third", &body))], body.clone()),
            refused("tampered body", vec![("x-signature", good.clone())], tampered),
            refused("missing header", Vec::<(&str, &str)>::new(), body.clone()),
            refused("no prefix", vec![("x-signature", good["sha512=".len()..].to_owned())], body.clone()),
            refused(
                "sha256 instead",
                vec![("x-signature", hmac_sig(&old, &body, "sha256", "base64", "sha512="))],
                body.clone(),
            ),
            refused(
                "hex instead",
                vec![("x-signature", hmac_sig(&old, &body, "sha512", "hex", "sha512="))],
                body.clone(),
            ),
        ];
        assert_all_refused(&gw, path, "mac", cases).await;
        assert!(kafka_bodies(&topic).await.is_empty(), "a refused request publishes nothing");

        assert_accepted(&post(&gw, path, &[("x-signature", &good)], &body).await);
        let second = b"second, signed with the new secret".to_vec();
        assert_accepted(&post(&gw, path, &[("x-signature", &sig(&new, &second))], &second).await);
        assert_eq!(kafka_bodies(&topic).await, vec![body, second], "the signed bodies, byte for byte");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by the test of the same name outside `e2e`, with the secrets in its environment"]
    async fn forward_route_upstream_never_sees_a_bad_signature() {
        let up = Upstream::start(|_| async { reply(200, "hooked") }).await;
        let gw = Gateway::start(json!({
            "server": { "max_body": "1MiB" },
            "upstreams": { "hooks": { "endpoints": [up.url()] } },
            "routes": [{
                "name": "hooks",
                "match": { "path_prefix": "/hooks" },
                "verify": { "scheme": "github", "secret_env": GITHUB_ENV },
                "forward": { "upstream": "hooks" }
            }]
        }))
        .await;
        // 200 KiB: more than the 64 KiB a forward route buffers for retries; a verify route reads it whole.
        let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let good = hmac_sig(GITHUB_SECRET, &body, "sha256", "hex", "sha256=");
        let mut tampered = body.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let cases = vec![
            refused("tampered last byte", vec![("x-hub-signature-256", &good)], &tampered),
            refused("truncated body", vec![("x-hub-signature-256", &good)], &body[..body.len() - 1]),
            refused("missing header", Vec::<(&str, &str)>::new(), &body),
            refused("signature of another body", vec![("x-hub-signature-256", GITHUB_SIGNATURE)], &body),
        ];
        assert_all_refused(&gw, "/hooks/in", "hooks", cases).await;
        let get = http::Request::get(format!("http://{}/hooks/in", gw.addr)).body(Default::default()).unwrap();
        let r = gw.send(get).await;
        assert_refused(&r, "hooks", "GET without a signature");
        assert_eq!(up.hits(), 0, "no refused request reached the upstream");

        let r = post(&gw, "/hooks/in", &[("x-hub-signature-256", &good)], &body).await;
        assert_eq!((r.status, r.text().as_str()), (200, "hooked"));
        assert_eq!(up.hits(), 1);
        let seen = up.last();
        assert_eq!(seen.body.as_ref(), body.as_slice(), "the upstream got the signed body, byte for byte");
        assert_eq!(seen.header("x-hub-signature-256"), good, "the signature header is passed on");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The `sluice` binary: an unset secret refuses the config; the log says why a signature was refused
// ---------------------------------------------------------------------------------------------------------------

/// A `routes.toml` with one GitHub-verified forward route to `upstream`, its secret in `var`.
fn binary_config(port: u16, admin: u16, var: &str, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "1s"

[telemetry]
log_format = "json"
access_log = false

[upstreams.hooks]
endpoints = ["{upstream}"]

[[routes]]
name = "hooks"
match = {{ path = "/hooks", methods = ["POST"] }}
verify = {{ scheme = "github", secret_env = "{var}" }}
forward = {{ upstream = "hooks" }}
"#
    )
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-verify-{test}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `sluice ARGS` with `env` (and no `SLUICE_*` overrides from this process).
fn sluice(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).env_remove("SLUICE_CONFIG").stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE__") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test]
async fn an_unset_secret_variable_fails_strict_check_and_start() {
    let var = format!("SLUICE_E2E_UNSET_{}", uuid::Uuid::new_v4().simple());
    let dir = temp_dir("unset");
    let path = dir.join("routes.toml");
    let (port, admin) = process_support::free_ports().await;
    std::fs::write(&path, binary_config(port, admin, &var, "http://127.0.0.1:9")).unwrap();
    let path = path.to_str().unwrap();
    let want = format!(r#"routes[0] "hooks": verify.secret_env names "{var}", which is not set"#);

    // `sluice check` only warns (tests/cli.rs); `--strict` treats it as `run` does.
    let out = sluice(&["check", "--strict", path], &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "sluice check --strict exits 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == want), "check names the route and the variable:\n{stdout}");

    let out = sluice(&["run", "--config", path], &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the gateway refuses to start without the route's secret");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&want), "it says why:\n{stderr}");

    let out = sluice(&["check", path], &[(&var, "s3cret")]).output().unwrap();
    assert!(out.status.success(), "with the variable set the config is fine: {}", String::from_utf8_lossy(&out.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_why_a_signature_was_refused_never_the_secret_and_reload_needs_the_secret_too() {
    let up = Upstream::start(|_| async { reply(200, "hooked") }).await;
    let var = format!("SLUICE_E2E_SECRET_{}", uuid::Uuid::new_v4().simple());
    let secret = format!("s3cret-{}", uuid::Uuid::new_v4().simple());
    let dir = temp_dir("log");
    let (port, admin) = process_support::free_ports().await;
    let path = dir.join("routes.toml");
    std::fs::write(&path, binary_config(port, admin, &var, &up.url())).unwrap();
    let stderr_path = dir.join("stderr.log");
    let mut child = sluice(&["run", "--config", path.to_str().unwrap()], &[(&var, &secret)])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let client = broker_support::common::client();
    let get = |url: String| http::Request::get(url).body(broker_support::common::empty()).unwrap();
    let mut ready = false;
    for _ in 0..500 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "sluice exited:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap()
        );
        if matches!(client.request(get(format!("http://127.0.0.1:{admin}/healthz"))).await, Ok(r) if r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "sluice did not start");
    let post = |headers: &[(&str, &str)], body: &'static str| {
        let mut b = http::Request::post(format!("http://127.0.0.1:{port}/hooks"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        broker_support::common::send(&client, b.body(broker_support::common::full(body)).unwrap())
    };
    let missing = post(&[("x-request-id", "req-missing")], "{}").await;
    let wrong = post(&[("x-request-id", "req-wrong"), ("x-hub-signature-256", GITHUB_SIGNATURE)], "{}").await;
    for r in [&missing, &wrong] {
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["detail"], DETAIL);
    }
    assert_eq!(missing.json()["title"], wrong.json()["title"], "the client cannot tell the failures apart");
    let good = hmac_sig(&secret, b"{}", "sha256", "hex", "sha256=");
    assert_eq!(post(&[("x-hub-signature-256", &good)], "{}").await.status, 200);
    assert_eq!(up.hits(), 1, "only the signed request reached the upstream");

    // A reload to a config whose secret is unset is refused; the route keeps its secret and keeps verifying.
    let unset = format!("SLUICE_E2E_UNSET_{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&path, binary_config(port, admin, &unset, &up.url())).unwrap();
    let req = http::Request::post(format!("http://127.0.0.1:{admin}/reload")).body(broker_support::common::empty());
    let r = broker_support::common::send(&client, req.unwrap()).await;
    let outcome = r.json();
    assert_eq!(outcome["reloaded"], false, "{outcome}");
    assert!(outcome["problems"].to_string().contains(&format!("verify.secret_env names \\\"{unset}\\\"")), "{outcome}");
    assert_eq!(post(&[("x-hub-signature-256", &good)], "{}").await.status, 200, "the old config serves on");
    assert_eq!(post(&[], "{}").await.status, 401, "and still verifies");

    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!log.contains(&secret), "the secret is never logged:\n{log}");
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let refusal = |id: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "webhook signature refused" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no refusal logged for {id}:\n{log}"))
            .clone()
    };
    let m = refusal("req-missing");
    assert_eq!(m["reason"], "header x-hub-signature-256 is missing", "{m}");
    assert_eq!((m["route"].as_str(), m["scheme"].as_str()), (Some("hooks"), Some("github")), "{m}");
    let w = refusal("req-wrong");
    assert!(w["reason"].as_str().unwrap().starts_with("no signature matches the body"), "{w}");
    std::fs::remove_dir_all(&dir).unwrap();
}

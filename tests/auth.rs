//! End-to-end authentication through the gateway (`sluice::run` on port 0) in front of a real upstream that records
//! what reaches it. Tokens are minted at test time by PyJWT with keys made by `cryptography`
//! (`tests/auth_support/jwt_tool.py`, run with `SLUICE_TEST_PYTHON` or the venv of `integration/pyenv.sh`), so the
//! Rust verifier is checked against an independent implementation. Claims in a Kafka topic are checked with an
//! independent consumer; `sluice check` runs as the real binary. A missing Python, library or broker fails the
//! tests, never skips them.

mod broker_support;
mod process_support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use broker_support::common::{Gateway, Resp, Upstream, assert_problem};
use broker_support::{KafkaLock, create_topic, kafka_bootstrap, kafka_read_all, random_name, unix_now};
use process_support::{Scratch, python};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------------
// Keys, secrets and tokens
// ---------------------------------------------------------------------------------------------------------------

/// The variable holding the HMAC secret of the `secret_env` routes.
const HS_ENV: &str = "SLUICE_TEST_AUTH_HS_SECRET";
/// The variable holding the two API keys (as during a rotation).
const KEYS_ENV: &str = "SLUICE_TEST_AUTH_API_KEYS";

/// What every test of this process shares: the key directory Python filled, the secrets, the interpreter.
struct Fixture {
    python: PathBuf,
    /// Private keys `rsa-1`, `rsa-2`, `ec`, `ed` and the JWKS files `rsa.jwks.json` (both RSA keys),
    /// `rsa-1.jwks.json`, `ec.jwks.json`, `ed.jwks.json`, and `rsa-1.pub.pem`.
    dir: PathBuf,
    hs_secret: String,
    api_keys: [String; 2],
}

/// Made once per process, on the first call, which every test makes before it starts a gateway: the environment
/// is written only while no other test of the process runs anything.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let python = python();
        // Inside the target directory (a static is never dropped, so nothing would remove it from /tmp).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("auth-keys-{}", std::process::id()));
        let out = Command::new(&python).arg(tool()).arg("keys").arg(&dir).output().expect("run jwt_tool.py keys");
        assert!(out.status.success(), "jwt_tool.py keys failed: {}", String::from_utf8_lossy(&out.stderr));
        let hs_secret = format!("hs-{}-{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let api_keys = [random_name("key-old"), random_name("key-new")];
        // SAFETY: every test calls `fixture()` first, and the others wait here until this is done, so no thread of
        // this process reads the environment meanwhile.
        unsafe {
            std::env::set_var(HS_ENV, &hs_secret);
            std::env::set_var(KEYS_ENV, format!(" {} ,{}", api_keys[0], api_keys[1]));
        }
        Fixture { python, dir, hs_secret, api_keys }
    })
}

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/auth_support/jwt_tool.py")
}

/// Tokens for `specs` (see `jwt_tool.py`), minted by PyJWT in one run.
fn mint(specs: &[Value]) -> Vec<String> {
    let f = fixture();
    let mut child = Command::new(&f.python)
        .arg(tool())
        .arg("mint")
        .arg(&f.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jwt_tool.py mint");
    child.stdin.take().unwrap().write_all(Value::from(specs.to_vec()).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jwt_tool.py mint failed: {}", String::from_utf8_lossy(&out.stderr));
    let tokens: Vec<String> = serde_json::from_slice(&out.stdout).expect("a JSON array of tokens");
    assert_eq!(tokens.len(), specs.len());
    tokens
}

/// Claims that pass every check of [`jwt_route`] (exp in ten minutes), with `extra` added or replaced.
fn claims(extra: Value) -> Value {
    let mut c = json!({ "sub": "alice", "iss": "https://id.example.com", "exp": unix_now() + 600 });
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

/// A token spec signed with the HMAC secret of the process.
fn hs(alg: &str, claims: Value) -> Value {
    json!({ "secret": fixture().hs_secret, "alg": alg, "claims": claims })
}

/// A token spec signed with private key `key` (header `kid` = `kid`, if any).
fn signed(key: &str, alg: &str, kid: Option<&str>, claims: Value) -> Value {
    json!({ "key": key, "alg": alg, "kid": kid, "claims": claims })
}

fn jwks(name: &str) -> String {
    fixture().dir.join(format!("{name}.jwks.json")).display().to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// Gateway and requests
// ---------------------------------------------------------------------------------------------------------------

/// Route `name` on `GET /name/...` forwarding to upstream `app`, with `auth` and the keys in `extra`.
fn route(name: &str, auth: Value, extra: Value) -> Value {
    let mut r = json!({
        "name": name,
        "match": { "path_prefix": format!("/{name}") },
        "forward": { "upstream": "app" },
        "auth": auth,
    });
    r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    r
}

/// `auth.jwt` with `keys` (`secret_env` or `jwks_file`) and the `extra` checks.
fn jwt_auth(keys: Value, extra: Value) -> Value {
    let mut jwt = keys;
    jwt.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({ "jwt": jwt })
}

/// A gateway in front of `up` with `routes`.
async fn gateway(up: &Upstream, routes: Vec<Value>) -> Gateway {
    fixture();
    Gateway::start(json!({ "upstreams": { "app": { "endpoints": [up.url()] } }, "routes": routes })).await
}

async fn get_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    gw.call("GET", path, headers).await
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> Resp {
    get_with(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Asserts a 401 problem with `WWW-Authenticate: challenge` that does not quote `secret` (unless it is empty);
/// returns its detail.
fn assert_401(r: &Resp, route: &str, challenge: &str, secret: &str) -> String {
    let v = assert_problem(r, 401, Some(route));
    assert_eq!(r.header("www-authenticate"), challenge, "{v}");
    let leaked = !secret.is_empty() && (r.text().contains(secret) || r.header("www-authenticate").contains(secret));
    assert!(!leaked, "the credential leaked: {v}");
    v["detail"].as_str().unwrap().to_owned()
}

/// Asserts a 401 for a bearer token that was sent: `Bearer error="invalid_token"` with `reason` as its description.
fn assert_invalid_token(r: &Resp, route: &str, reason: &str, token: &str) {
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"");
    let detail = assert_401(r, route, &challenge, token);
    assert_eq!(detail, reason);
}

// ---------------------------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_keys_both_rotated_keys_pass_a_wrong_or_missing_key_is_401_with_a_challenge() {
    let f = fixture();
    let up = Upstream::named("app").await;
    let gw = gateway(
        &up,
        vec![
            route("default", json!({ "api_keys_env": KEYS_ENV }), json!({})),
            route("custom", json!({ "api_keys_env": KEYS_ENV, "header": "X-Token" }), json!({})),
        ],
    )
    .await;

    for key in &f.api_keys {
        let r = get_with(&gw, "/default/orders", &[("x-api-key", key)]).await;
        assert_eq!((r.status, r.text()), (200, "app".to_owned()), "both keys of a rotation pass");
        let r = get_with(&gw, "/custom", &[("x-token", key)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.hits(), 4);
    assert_eq!(up.last().header("x-token"), f.api_keys[1], "the key header is passed on");

    let challenge = "ApiKey header=\"x-api-key\"";
    let detail = assert_401(&get_with(&gw, "/default", &[]).await, "default", challenge, "");
    assert_eq!(detail, "missing API key (header x-api-key)");
    // Wrong keys: another key, a prefix and an extension of a right one, the whole list, the key elsewhere.
    let near = [
        "wrong".to_owned(),
        f.api_keys[0][..f.api_keys[0].len() - 1].to_owned(),
        format!("{}x", f.api_keys[0]),
        format!("{},{}", f.api_keys[0], f.api_keys[1]),
        String::new(),
    ];
    for key in &near {
        let r = get_with(&gw, "/default", &[("x-api-key", key)]).await;
        let detail = assert_401(&r, "default", challenge, key);
        assert_eq!(detail, "invalid API key");
    }
    let r = get_with(&gw, "/custom", &[("x-api-key", &f.api_keys[0])]).await;
    assert_401(&r, "custom", "ApiKey header=\"x-token\"", &f.api_keys[0]);
    assert_eq!(up.hits(), 4, "the upstream never sees an unauthenticated request");
}

#[tokio::test]
async fn a_cors_preflight_is_answered_without_credentials_and_goes_no_further() {
    let up = Upstream::named("app").await;
    let cors = json!({ "cors": { "allow_origins": ["https://app.example.com"], "allow_headers": ["x-api-key"] } });
    let gw = gateway(&up, vec![route("web", json!({ "api_keys_env": KEYS_ENV }), cors)]).await;
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "x-api-key"),
    ];
    let r = gw.call("OPTIONS", "/web", &preflight).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), "https://app.example.com");
    let r = get_with(&gw, "/web", &[("origin", "https://app.example.com")]).await;
    assert_401(&r, "web", "ApiKey header=\"x-api-key\"", "");
    let r =
        get_with(&gw, "/web", &[("origin", "https://app.example.com"), ("x-api-key", &fixture().api_keys[0])]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1, "neither the preflight nor the request without a key reached the upstream");
}

// ---------------------------------------------------------------------------------------------------------------
// JWT: keys and algorithms
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn hmac_tokens_pass_and_a_missing_foreign_or_garbage_token_is_401() {
    let up = Upstream::named("app").await;
    let gw = gateway(&up, vec![route("hs", jwt_auth(json!({ "secret_env": HS_ENV }), json!({})), json!({}))]).await;
    let other_secret = json!({ "secret": "another-secret-that-is-long-enough-for-hs256", "alg": "HS256", "claims": claims(json!({})) });
    let tokens = mint(&[
        hs("HS256", claims(json!({}))),
        hs("HS384", claims(json!({}))),
        hs("HS512", claims(json!({}))),
        other_secret,
    ]);
    for token in &tokens[..3] {
        let r = bearer(&gw, "/hs", token).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(up.last().header("authorization"), format!("Bearer {token}"));
    }
    let r = get_with(&gw, "/hs", &[("authorization", &format!("bearer {}", tokens[0]))]).await;
    assert_eq!(r.status, 200, "the scheme is case-insensitive");
    assert_eq!(up.hits(), 4);

    assert_invalid_token(
        &bearer(&gw, "/hs", &tokens[3]).await,
        "hs",
        "the token's signature does not verify",
        &tokens[3],
    );
    let detail = assert_401(&get_with(&gw, "/hs", &[]).await, "hs", "Bearer", "");
    assert_eq!(detail, "missing bearer token (Authorization: Bearer <token>)");
    let basic = get_with(&gw, "/hs", &[("authorization", "Basic YWxpY2U6c2VjcmV0")]).await;
    assert_401(&basic, "hs", "Bearer", "YWxpY2U6c2VjcmV0");
    for garbage in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", &tokens[0][..tokens[0].len() - 2]] {
        let r = bearer(&gw, "/hs", garbage).await;
        let v = assert_problem(&r, 401, Some("hs"));
        assert!(r.header("www-authenticate").starts_with("Bearer error=\"invalid_token\""), "{v}");
        assert!(!r.text().contains(garbage), "{v}");
    }
    assert_eq!(up.hits(), 4, "the upstream never sees an unauthenticated request");
}

#[tokio::test]
async fn jwks_keys_are_picked_by_kid_for_rsa_ec_and_eddsa() {
    let up = Upstream::named("app").await;
    let routes = ["rsa", "ec", "ed"]
        .iter()
        .map(|set| route(set, jwt_auth(json!({ "jwks_file": jwks(set) }), json!({})), json!({})))
        .collect();
    let gw = gateway(&up, routes).await;
    let c = || claims(json!({}));
    let tokens = mint(&[
        signed("rsa-1", "RS256", Some("rsa-1"), c()),
        signed("rsa-2", "RS256", Some("rsa-2"), c()),
        signed("rsa-2", "PS256", Some("rsa-2"), c()),
        signed("ec", "ES256", Some("ec"), c()),
        signed("ed", "EdDSA", Some("ed"), c()),
        // rsa-2's signature under rsa-1's kid; an unknown kid; no kid at all (every RSA key is tried).
        signed("rsa-2", "RS256", Some("rsa-1"), c()),
        signed("rsa-1", "RS256", Some("rsa-9"), c()),
        signed("rsa-2", "RS256", None, c()),
        // The EC key's token on the RSA route.
        signed("ec", "ES256", Some("rsa-1"), c()),
    ]);
    for (path, token) in [("/rsa", &tokens[0]), ("/rsa", &tokens[1]), ("/rsa", &tokens[2]), ("/ec", &tokens[3])]
        .into_iter()
        .chain([("/ed", &tokens[4]), ("/rsa", &tokens[7])])
    {
        let r = bearer(&gw, path, token).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(up.hits(), 6);
    assert_invalid_token(
        &bearer(&gw, "/rsa", &tokens[5]).await,
        "rsa",
        "the token's signature does not verify",
        &tokens[5],
    );
    assert_invalid_token(
        &bearer(&gw, "/rsa", &tokens[6]).await,
        "rsa",
        "the token's key id (kid) is not known",
        &tokens[6],
    );
    assert_invalid_token(
        &bearer(&gw, "/rsa", &tokens[8]).await,
        "rsa",
        "the token's algorithm is not accepted",
        &tokens[8],
    );
    assert_invalid_token(
        &bearer(&gw, "/ec", &tokens[4]).await,
        "ec",
        "the token's key id (kid) is not known",
        &tokens[4],
    );
    assert_eq!(up.hits(), 6, "the upstream never sees an unauthenticated request");
}

#[tokio::test]
async fn alg_none_and_an_hs256_token_signed_with_the_rsa_public_key_are_refused() {
    let up = Upstream::named("app").await;
    let gw =
        gateway(&up, vec![route("rsa", jwt_auth(json!({ "jwks_file": jwks("rsa-1") }), json!({})), json!({}))]).await;
    let tokens = mint(&[
        signed("rsa-1", "RS256", Some("rsa-1"), claims(json!({}))),
        json!({ "unsigned": true, "claims": claims(json!({})) }),
        json!({ "hmac_with_public_pem": "rsa-1", "claims": claims(json!({})) }),
    ]);
    assert_eq!(bearer(&gw, "/rsa", &tokens[0]).await.status, 200, "the route takes its own RS256 tokens");
    let none = bearer(&gw, "/rsa", &tokens[1]).await;
    assert_invalid_token(&none, "rsa", "the bearer token is malformed or its algorithm is not supported", &tokens[1]);
    let confused = bearer(&gw, "/rsa", &tokens[2]).await;
    assert_invalid_token(&confused, "rsa", "the token's algorithm is not accepted", &tokens[2]);
    assert_eq!(up.hits(), 1, "the upstream never sees an unauthenticated request");
}

// ---------------------------------------------------------------------------------------------------------------
// JWT: claims
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn exp_nbf_and_iss_are_checked_with_the_leeway() {
    let up = Upstream::named("app").await;
    let checks = json!({ "issuer": "https://id.example.com", "leeway": "60s" });
    let gw = gateway(&up, vec![route("jwt", jwt_auth(json!({ "secret_env": HS_ENV }), checks), json!({}))]).await;
    let now = unix_now();
    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_iss = claims(json!({}));
    no_iss.as_object_mut().unwrap().remove("iss");
    let tokens = mint(&[
        hs("HS256", claims(json!({ "exp": now - 20 }))), // expired, within the leeway
        hs("HS256", claims(json!({ "nbf": now + 20 }))), // not yet valid, within the leeway
        hs("HS256", claims(json!({ "exp": now - 300 }))), // expired
        hs("HS256", claims(json!({ "nbf": now + 300 }))), // not yet valid
        hs("HS256", no_exp),
        hs("HS256", claims(json!({ "iss": "https://evil.example.com" }))),
        hs("HS256", no_iss),
        hs("HS256", claims(json!({ "exp": "never" }))),
    ]);
    for token in &tokens[..2] {
        let r = bearer(&gw, "/jwt", token).await;
        assert_eq!(r.status, 200, "within the leeway: {}", r.text());
    }
    let refused = [
        (&tokens[2], "the token has expired"),
        (&tokens[3], "the token is not valid yet"),
        (&tokens[4], "the token has no exp claim"),
        (&tokens[5], "the token's issuer is not accepted"),
        (&tokens[6], "the token's issuer is not accepted"),
        (&tokens[7], "the token has no exp claim"),
    ];
    for (token, reason) in refused {
        assert_invalid_token(&bearer(&gw, "/jwt", token).await, "jwt", reason, token);
    }
    assert_eq!(up.hits(), 2, "the upstream never sees an unauthenticated request");
}

#[tokio::test]
async fn a_valid_token_without_the_audience_or_a_required_scope_is_403() {
    let up = Upstream::named("app").await;
    let checks = json!({ "audience": "orders-api", "required_scopes": ["orders:write"] });
    let gw = gateway(&up, vec![route("orders", jwt_auth(json!({ "secret_env": HS_ENV }), checks), json!({}))]).await;
    let tokens = mint(&[
        hs("HS256", claims(json!({ "aud": "orders-api", "scope": "orders:read orders:write" }))),
        hs("HS256", claims(json!({ "aud": ["billing", "orders-api"], "scp": ["orders:write"] }))),
        hs("HS256", claims(json!({ "aud": "billing", "scope": "orders:write" }))),
        hs("HS256", claims(json!({ "scope": "orders:write" }))),
        hs("HS256", claims(json!({ "aud": "orders-api", "scope": "orders:read" }))),
        hs("HS256", claims(json!({ "aud": "orders-api" }))),
    ]);
    for token in &tokens[..2] {
        let r = bearer(&gw, "/orders", token).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for token in &tokens[2..4] {
        let r = bearer(&gw, "/orders", token).await;
        let v = assert_problem(&r, 403, Some("orders"));
        assert_eq!(v["detail"], "the token was not issued for this audience");
        assert!(!r.text().contains(token.as_str()));
    }
    for token in &tokens[4..] {
        let r = bearer(&gw, "/orders", token).await;
        let v = assert_problem(&r, 403, Some("orders"));
        assert_eq!(v["detail"], "the token lacks the scope orders:write");
        assert_eq!(r.header("www-authenticate"), "Bearer error=\"insufficient_scope\", scope=\"orders:write\"");
    }
    assert_eq!(up.hits(), 2, "the upstream never sees a request the token does not grant");
}

#[tokio::test]
async fn jwt_sub_in_a_rate_limit_key_gives_each_caller_its_own_bucket() {
    let up = Upstream::named("app").await;
    let limit = json!({ "rate_limit": { "per_second": 0.001, "burst": 2, "key": "{jwt.sub}" } });
    let gw = gateway(&up, vec![route("limited", jwt_auth(json!({ "secret_env": HS_ENV }), json!({})), limit)]).await;
    let tokens = mint(&[hs("HS256", claims(json!({ "sub": "alice" }))), hs("HS256", claims(json!({ "sub": "bob" })))]);
    let (alice, bob) = (&tokens[0], &tokens[1]);
    for _ in 0..2 {
        assert_eq!(bearer(&gw, "/limited", alice).await.status, 200);
    }
    assert_problem(&bearer(&gw, "/limited", alice).await, 429, Some("limited"));
    for _ in 0..2 {
        let r = bearer(&gw, "/limited", bob).await;
        assert_eq!(r.status, 200, "bob has a bucket of his own: {}", r.text());
    }
    assert_problem(&bearer(&gw, "/limited", bob).await, 429, Some("limited"));
    // Refused before the rate limit: an unauthenticated request takes no token from anyone.
    assert_problem(&get_with(&gw, "/limited", &[]).await, 401, Some("limited"));
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn jwt_sub_in_a_hash_key_keeps_each_caller_on_one_endpoint() {
    let (one, two) = (Upstream::named("one").await, Upstream::named("two").await);
    fixture();
    let gw = Gateway::start(json!({
        "upstreams": { "app": { "endpoints": [one.url(), two.url()], "balance": "hash", "hash_key": "{jwt.sub}" } },
        "routes": [route("hashed", jwt_auth(json!({ "secret_env": HS_ENV }), json!({})), json!({}))]
    }))
    .await;
    // 20 callers: the chance that rendezvous hashing puts all of them on one endpoint is 2 in a million.
    let subs: Vec<String> = (0..20).map(|i| format!("caller-{i}")).collect();
    let mut specs: Vec<Value> = subs.iter().map(|s| hs("HS256", claims(json!({ "sub": s })))).collect();
    let mut anonymous = claims(json!({}));
    anonymous.as_object_mut().unwrap().remove("sub");
    specs.push(hs("HS256", anonymous));
    let tokens = mint(&specs);
    let mut served = std::collections::BTreeMap::new();
    for (sub, token) in subs.iter().zip(&tokens) {
        for _ in 0..2 {
            let r = bearer(&gw, "/hashed", token).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let by = served.entry(sub.clone()).or_insert_with(|| r.text());
            assert_eq!(*by, r.text(), "{sub} stays on one endpoint");
        }
    }
    let endpoints: std::collections::BTreeSet<&String> = served.values().collect();
    assert_eq!(endpoints.len(), 2, "the callers are spread over both endpoints: {served:?}");
    let r = bearer(&gw, "/hashed", &tokens[20]).await;
    assert_eq!(assert_problem(&r, 400, Some("hashed"))["detail"], "missing JWT claim sub");
    assert_eq!(one.hits() + two.hits(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tenant_in_a_kafka_topic_sends_each_caller_to_its_own_topic() {
    fixture();
    let _kafka = KafkaLock::shared().await;
    let acme = create_topic("auth-orders.acme", 1).await;
    let globex = create_topic("auth-orders.globex", 1).await;
    let tenant = |topic: &str| topic.strip_prefix("auth-orders.").unwrap().to_owned();
    let gw = broker_support::Gateway::start(json!({
        "brokers": { "events": { "kind": "kafka", "bootstrap": kafka_bootstrap(), "delivery_timeout": "20s" } },
        "routes": [{
            "name": "orders",
            "match": { "path": "/orders", "methods": ["POST"] },
            "auth": { "jwt": { "secret_env": HS_ENV } },
            "publish": { "broker": "events", "topic": "auth-orders.{jwt.tenant}", "key": "{jwt.sub}" }
        }]
    }))
    .await;
    let tokens = mint(&[
        hs("HS256", claims(json!({ "sub": "ann", "tenant": tenant(&acme) }))),
        hs("HS256", claims(json!({ "sub": "gus", "tenant": tenant(&globex) }))),
        hs("HS256", claims(json!({ "sub": "nobody" }))),
    ]);
    let auth = |t: &str| format!("Bearer {t}");
    for (token, body, topic) in
        [(&tokens[0], "acme-1", &acme), (&tokens[1], "globex-1", &globex), (&tokens[0], "acme-2", &acme)]
    {
        let r = gw.post("/orders", &[("authorization", &auth(token))], body).await;
        let receipt = broker_support::assert_accepted(&r);
        assert_eq!(receipt["topic"], topic.as_str(), "{receipt}");
    }
    let r = gw.post("/orders", &[("authorization", &auth(&tokens[2]))], "lost").await;
    let v = broker_support::assert_problem(&r, 400, "orders");
    assert_eq!(v["detail"], "missing JWT claim tenant");
    broker_support::assert_problem(&gw.post("/orders", &[], "anonymous").await, 401, "orders");

    let read = |records: Vec<broker_support::Record>| {
        records
            .into_iter()
            .map(|r| (String::from_utf8(r.payload).unwrap(), String::from_utf8(r.key.unwrap()).unwrap()))
            .collect::<Vec<_>>()
    };
    let acme_records = read(kafka_read_all(&acme, 1).await);
    assert_eq!(acme_records, [("acme-1".to_owned(), "ann".to_owned()), ("acme-2".to_owned(), "ann".to_owned())]);
    assert_eq!(read(kafka_read_all(&globex, 1).await), [("globex-1".to_owned(), "gus".to_owned())]);
}

// ---------------------------------------------------------------------------------------------------------------
// Reload and `sluice check`
// ---------------------------------------------------------------------------------------------------------------

/// A `routes.toml` in `dir` with route `jwt` (JWKS file `jwks`) in front of `upstream`.
fn write_config(dir: &Path, upstream: &str, jwks: &Path) -> PathBuf {
    let path = dir.join("routes.toml");
    let toml = format!(
        r#"
[upstreams.app]
endpoints = ["{upstream}"]

[[routes]]
name = "jwt"
match = {{ path_prefix = "/jwt" }}
forward = {{ upstream = "app" }}
auth = {{ jwt = {{ jwks_file = "{}" }} }}
"#,
        jwks.display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test]
async fn the_jwks_file_is_read_again_at_every_reload_and_a_broken_one_is_refused() {
    let f = fixture();
    let up = Upstream::named("app").await;
    let dir = Scratch::new("sluice-auth-reload");
    let jwks_path = dir.join("keys.json");
    std::fs::copy(f.dir.join("rsa-1.jwks.json"), &jwks_path).unwrap();
    let config_path = write_config(&dir, &up.url(), &jwks_path);
    let config = sluice::config::load(&config_path).unwrap_or_else(|p| panic!("{p:#?}")).config;
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reload = sluice::ReloadSource { path: config_path, hangup: None };
    tokio::spawn(sluice::run_with_reload(config, Some(reload), sluice::Listeners { main, admin }, async move {
        let _ = stopped.await;
    }));
    let client = broker_support::common::client();
    let get = |token: String| {
        let req = http::Request::get(format!("http://{addr}/jwt"))
            .header("authorization", format!("Bearer {token}"))
            .body(broker_support::common::empty())
            .unwrap();
        broker_support::common::send(&client, req)
    };
    let reload_now = || {
        let req =
            http::Request::post(format!("http://{admin_addr}/reload")).body(broker_support::common::empty()).unwrap();
        broker_support::common::send(&client, req)
    };
    let tokens = mint(&[
        signed("rsa-1", "RS256", Some("rsa-1"), claims(json!({}))),
        signed("rsa-2", "RS256", Some("rsa-2"), claims(json!({}))),
    ]);
    assert_eq!(get(tokens[0].clone()).await.status, 200);
    assert_eq!(get(tokens[1].clone()).await.status, 401, "rsa-2 is not in the JWKS yet");

    // Key rotation: the JWKS file gains rsa-2; the config file is unchanged.
    std::fs::copy(f.dir.join("rsa.jwks.json"), &jwks_path).unwrap();
    let r = reload_now().await;
    assert_eq!((r.status, r.json()["reloaded"].clone()), (200, json!(true)), "{}", r.text());
    assert_eq!(get(tokens[1].clone()).await.status, 200, "rsa-2 is accepted after the reload");

    // A broken JWKS is refused by the reload, naming the file, and the keys in effect keep serving.
    std::fs::write(&jwks_path, "{\"keys\": 42}").unwrap();
    let r = reload_now().await;
    let outcome = r.json();
    assert_eq!(outcome["reloaded"], false, "{outcome}");
    let problems: Vec<&str> = outcome["problems"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let problems = problems.join("\n");
    assert!(
        problems.contains(&format!("{:?}", jwks_path.display().to_string())) && problems.contains("is not a JWKS"),
        "{problems}"
    );
    assert_eq!(get(tokens[0].clone()).await.status, 200);
    assert_eq!(get(tokens[1].clone()).await.status, 200);
    assert_eq!(up.hits(), 4);

    // Rotation away from both RSA keys: their tokens, admitted (and kept in the route's cache of verified tokens)
    // a moment ago, are checked again with the new keys.
    std::fs::copy(f.dir.join("ec.jwks.json"), &jwks_path).unwrap();
    let r = reload_now().await;
    assert_eq!(r.json()["reloaded"], json!(true), "{}", r.text());
    assert_eq!(get(tokens[0].clone()).await.status, 401);
    assert_eq!(get(tokens[1].clone()).await.status, 401);
    assert_eq!(up.hits(), 4);
}

/// Runs `sluice check --strict PATH` (the real binary: unset variables are errors) with `env` set; returns (exit
/// code, stdout).
fn sluice_check(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env_remove(HS_ENV).env_remove(KEYS_ENV);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE__") {
            command.env_remove(k);
        }
    }
    command.envs(env.iter().copied());
    let out = command.args(["check", "--strict"]).arg(path).output().expect("run sluice check");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn sluice_check_refuses_unset_variables_missing_or_broken_jwks_files_and_jwt_claims_without_jwt() {
    let f = fixture();
    let dir = Scratch::new("sluice-auth-check");
    let not_jwks = dir.join("pub.pem");
    std::fs::copy(f.dir.join("rsa-1.pub.pem"), &not_jwks).unwrap();
    let missing = dir.join("missing.json");
    let toml = format!(
        r#"
[upstreams.app]
endpoints = ["http://127.0.0.1:9"]

[[routes]]
name = "keys"
match = {{ path = "/keys" }}
forward = {{ upstream = "app" }}
auth = {{ api_keys_env = "{KEYS_ENV}" }}
rate_limit = {{ per_second = 1, key = "{{jwt.sub}}" }}

[[routes]]
name = "hs"
match = {{ path = "/hs" }}
forward = {{ upstream = "app" }}
auth = {{ jwt = {{ secret_env = "{HS_ENV}" }} }}
rate_limit = {{ per_second = 1, key = "{{jwt.sub}}" }}

[[routes]]
name = "missing"
match = {{ path = "/missing" }}
forward = {{ upstream = "app" }}
auth = {{ jwt = {{ jwks_file = "{}" }} }}

[[routes]]
name = "pem"
match = {{ path = "/pem" }}
forward = {{ upstream = "app" }}
auth = {{ jwt = {{ jwks_file = "{}" }} }}

[[routes]]
name = "open"
match = {{ path = "/open" }}
forward = {{ upstream = "app" }}
"#,
        missing.display(),
        not_jwks.display()
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, &toml).unwrap();
    let (code, out) = sluice_check(&path, &[]);
    assert_eq!(code, 1, "{out}");
    let expected = [
        "routes[0] \"keys\": rate_limit.key refers to {jwt.sub} but the route has no JWT auth (auth.jwt)".to_owned(),
        format!("routes[0] \"keys\": auth.api_keys_env names \"{KEYS_ENV}\", which is not set"),
        format!("routes[1] \"hs\": auth.jwt.secret_env names \"{HS_ENV}\", which is not set"),
        format!("routes[2] \"missing\": auth.jwt.jwks_file {:?}: cannot be read", missing.display().to_string()),
        format!("routes[3] \"pem\": auth.jwt.jwks_file {:?}: is not a JWKS", not_jwks.display().to_string()),
    ];
    for line in &expected {
        assert!(out.lines().any(|l| l.starts_with(line.as_str())), "missing {line:?} in:\n{out}");
    }
    assert_eq!(out.lines().count(), expected.len(), "{out}");

    // With the variables set, a JWKS file in place and the {jwt.sub} key on a JWT route, the file is fine.
    let fixed = toml
        .replace(&missing.display().to_string(), &jwks("rsa"))
        .replace(&not_jwks.display().to_string(), &jwks("ed"))
        .replacen("rate_limit = { per_second = 1, key = \"{jwt.sub}\" }\n", "", 1);
    std::fs::write(&path, fixed).unwrap();
    let (code, out) = sluice_check(&path, &[(KEYS_ENV, "k1,k2"), (HS_ENV, &f.hs_secret)]);
    assert_eq!((code, out.trim()), (0, "ok: 5 routes, 1 upstreams, 0 brokers"));
    let (code, out) = sluice_check(&path, &[(KEYS_ENV, " , "), (HS_ENV, "short")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("auth.api_keys_env: \"{KEYS_ENV}\" holds no key")), "{out}");
    assert!(out.contains(&format!("auth.jwt.secret_env: the secret in \"{HS_ENV}\" is 5 bytes")), "{out}");
}

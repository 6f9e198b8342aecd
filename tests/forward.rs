//! End-to-end tests of synchronous forwarding: `sluice::run` (and the real binary) on port 0 in front of real HTTP
//! upstreams on port 0 whose behaviour each test controls. Every assertion is about what a client or an upstream
//! observes: statuses, bodies, headers, which endpoint served, how many attempts each endpoint received, metrics.

mod common;
mod process_support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt as _;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{Value, json};

/// A config with one upstream `svc` (endpoints `urls`, plus the keys in `upstream`) and one catch-all route `r`
/// forwarding to it (plus the keys in `route`, which replace the defaults key by key).
fn single(urls: &[String], upstream: Value, route: Value) -> Value {
    let mut up = json!({ "endpoints": urls });
    merge(&mut up, upstream);
    let mut r = json!({ "name": "r", "match": { "path_prefix": "/" }, "forward": { "upstream": "svc" } });
    merge(&mut r, route);
    json!({ "upstreams": { "svc": up }, "routes": [r] })
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// An upstream that answers only after a minute (longer than any test waits).
async fn stuck(name: &'static str) -> Upstream {
    Upstream::start(move |_| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        reply(200, name)
    })
    .await
}

// =============================================================================================================
// 1. Routing
// =============================================================================================================

#[tokio::test]
async fn routing_exact_path_captures_params() {
    let up = Upstream::named("users").await;
    let gw = Gateway::start(json!({
        "upstreams": { "users": { "endpoints": [up.url()] } },
        "routes": [{
            "name": "user",
            "match": { "path": "/users/{id}" },
            "forward": { "upstream": "users" },
            // One request per user id: the bucket key proves `{id}` was captured from the path.
            "rate_limit": { "per_second": 0.001, "burst": 1, "key": "{path.id}" }
        }]
    }))
    .await;
    let r = gw.get("/users/42").await;
    assert_eq!((r.status, r.text().as_str()), (200, "users"));
    assert_eq!(up.last().uri.path(), "/users/42");
    assert_problem(&gw.get("/users/42").await, 429, Some("user"));
    assert_eq!(gw.get("/users/7").await.status, 200, "another id has its own bucket");
    assert_problem(&gw.get("/users").await, 404, None);
    assert_problem(&gw.get("/users/42/orders").await, 404, None);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn routing_prefix_is_segment_aware_and_unmatched_is_404_problem() {
    let up = Upstream::named("api").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({ "match": { "path_prefix": "/api" } }))).await;
    for path in ["/api", "/api/", "/api/x/y?q=1"] {
        let r = gw.get(path).await;
        assert_eq!((r.status, r.text().as_str()), (200, "api"), "{path}");
    }
    for path in ["/apix", "/ap", "/", "/x/api"] {
        let r = gw.get(path).await;
        let p = assert_problem(&r, 404, None);
        assert!(p.get("route").is_none_or(Value::is_null), "no route matched, none named: {p}");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn routing_wrong_method_is_405_with_allow() {
    let up = Upstream::named("m").await;
    let gw = Gateway::start(json!({
        "upstreams": { "svc": { "endpoints": [up.url()] } },
        "routes": [
            { "name": "rw", "match": { "path_prefix": "/m", "methods": ["GET", "POST"] }, "forward": { "upstream": "svc" } },
            { "name": "other", "match": { "path": "/other", "methods": ["PUT"] }, "forward": { "upstream": "svc" } }
        ]
    }))
    .await;
    assert_eq!(gw.call("POST", "/m/1", &[]).await.status, 200);
    let r = gw.call("DELETE", "/m/1", &[]).await;
    assert_problem(&r, 405, None);
    let allow: Vec<String> = r.header("allow").split(',').map(|m| m.trim().to_owned()).collect();
    assert!(allow.contains(&"GET".to_owned()) && allow.contains(&"POST".to_owned()), "Allow: {allow:?}");
    assert!(!allow.contains(&"PUT".to_owned()) && !allow.contains(&"DELETE".to_owned()), "Allow: {allow:?}");
    assert_eq!(up.hits(), 1, "a 405 is not forwarded");
}

#[tokio::test]
async fn routing_by_exact_and_wildcard_host() {
    let (exact, wild) = (Upstream::named("exact").await, Upstream::named("wild").await);
    let gw = Gateway::start(json!({
        "upstreams": { "exact": { "endpoints": [exact.url()] }, "wild": { "endpoints": [wild.url()] } },
        "routes": [
            { "name": "api", "match": { "path_prefix": "/", "host": "api.example.com" }, "forward": { "upstream": "exact" } },
            { "name": "any", "match": { "path_prefix": "/", "host": "*.example.com" }, "forward": { "upstream": "wild" } }
        ]
    }))
    .await;
    let served = async |host: &str| {
        let r = gw.call("GET", "/", &[("host", host)]).await;
        (r.status, r.text())
    };
    assert_eq!(served("api.example.com").await, (200, "exact".into()));
    assert_eq!(served("API.Example.com:8080").await, (200, "exact".into()), "case-insensitive, port ignored");
    assert_eq!(served("shop.example.com").await, (200, "wild".into()));
    assert_eq!(served("a.b.example.com:443").await, (200, "wild".into()));
    assert_eq!(served("example.com").await.0, 404, "the wildcard needs a subdomain");
    assert_eq!(served("example.org").await.0, 404);
}

#[tokio::test]
async fn routing_by_header_value() {
    let (main, canary) = (Upstream::named("main").await, Upstream::named("canary").await);
    let gw = Gateway::start(json!({
        "upstreams": { "main": { "endpoints": [main.url()] }, "canary": { "endpoints": [canary.url()] } },
        "routes": [
            { "name": "canary", "match": { "path_prefix": "/", "headers": { "x-canary": "yes" } }, "forward": { "upstream": "canary" } },
            { "name": "main", "match": { "path_prefix": "/" }, "forward": { "upstream": "main" } }
        ]
    }))
    .await;
    assert_eq!(gw.call("GET", "/p", &[("x-canary", "yes")]).await.text(), "canary");
    assert_eq!(gw.call("GET", "/p", &[("x-canary", "no")]).await.text(), "main");
    assert_eq!(gw.call("GET", "/p", &[]).await.text(), "main");
    assert_eq!((main.hits(), canary.hits()), (2, 1));
}

#[tokio::test]
async fn routing_first_match_in_file_order_wins() {
    let (broad, narrow) = (Upstream::named("broad").await, Upstream::named("narrow").await);
    let ups = json!({ "broad": { "endpoints": [broad.url()] }, "narrow": { "endpoints": [narrow.url()] } });
    let broad_route =
        json!({ "name": "broad", "match": { "path_prefix": "/orders" }, "forward": { "upstream": "broad" } });
    let narrow_route =
        json!({ "name": "narrow", "match": { "path": "/orders/special" }, "forward": { "upstream": "narrow" } });

    let gw = Gateway::start(json!({ "upstreams": ups, "routes": [broad_route, narrow_route] })).await;
    assert_eq!(gw.get("/orders/special").await.text(), "broad", "the earlier route shadows the later one");

    let gw = Gateway::start(json!({ "upstreams": ups, "routes": [narrow_route, broad_route] })).await;
    assert_eq!(gw.get("/orders/special").await.text(), "narrow");
    assert_eq!(gw.get("/orders/other").await.text(), "broad");
}

// =============================================================================================================
// 2. Forwarding basics
// =============================================================================================================

#[tokio::test]
async fn forward_rewrites_prefix_and_keeps_query() {
    let up = Upstream::named("orders").await;
    let gw = Gateway::start(single(
        &[up.url()],
        json!({}),
        json!({
            "match": { "path_prefix": "/api/orders" },
            "forward": { "upstream": "svc", "rewrite_prefix": "/orders" }
        }),
    ))
    .await;
    for (sent, seen) in [
        ("/api/orders/7?x=1&y=a%20b", "/orders/7?x=1&y=a%20b"),
        ("/api/orders", "/orders"),
        ("/api/orders?only=query", "/orders?only=query"),
        ("/api/orders/a/b/", "/orders/a/b/"),
    ] {
        assert_eq!(gw.get(sent).await.status, 200, "{sent}");
        assert_eq!(up.last().uri.to_string(), seen, "{sent}");
    }
}

#[tokio::test]
async fn forward_generates_request_id_when_absent_and_echoes_it() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let first = gw.get("/a").await;
    let id = first.header("x-request-id").to_owned();
    assert!(!id.is_empty(), "a request id is generated");
    assert_eq!(up.last().header("x-request-id"), id, "the upstream sees the id the client gets back");
    let second = gw.get("/a").await;
    assert_ne!(second.header("x-request-id"), id, "each request gets its own id");
    assert_eq!(up.last().header("x-request-id"), second.header("x-request-id"));
}

#[tokio::test]
async fn forward_keeps_the_clients_request_id() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({ "match": { "path_prefix": "/in" } }))).await;
    let r = gw.call("GET", "/in", &[("x-request-id", "client-abc-123")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), "client-abc-123");
    assert_eq!(up.last().header("x-request-id"), "client-abc-123");
    let miss = gw.call("GET", "/out", &[("x-request-id", "client-abc-456")]).await;
    assert_eq!(assert_problem(&miss, 404, None)["request_id"], "client-abc-456");
}

#[tokio::test]
async fn forward_adds_x_forwarded_headers() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    assert_eq!(gw.call("GET", "/", &[("host", "shop.example.com")]).await.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto"), "http");
    assert_eq!(seen.header("x-forwarded-host"), "shop.example.com");
    assert_eq!(seen.header("host"), up.addr.to_string(), "Host names the endpoint");

    gw.call("GET", "/", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(up.last().header("x-forwarded-for"), "203.0.113.9, 127.0.0.1", "appended to the client's chain");

    // A client's own -proto, -host and traceparent are replaced, not sent beside the gateway's.
    let spoofed = [
        ("host", "shop.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ];
    assert_eq!(gw.call("GET", "/", &spoofed).await.status, 200);
    let seen = up.last();
    for (name, only) in
        [("x-forwarded-proto", "http"), ("x-forwarded-host", "shop.example.com"), ("x-forwarded-for", "127.0.0.1")]
    {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(values, [only], "{name}");
    }
    let parents: Vec<_> = seen.headers.get_all("traceparent").iter().collect();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_ne!(parents[0], spoofed[3].1, "the gateway's CLIENT span is the parent");
}

#[tokio::test]
async fn forward_removes_hop_by_hop_headers_both_ways() {
    let up = Upstream::start(|_| async {
        Reply::Http(
            Response::builder()
                .header("connection", "x-resp-hop")
                .header("x-resp-hop", "1")
                .header("keep-alive", "timeout=9")
                .header("x-resp-end-to-end", "kept")
                .body(full("ok"))
                .unwrap(),
        )
    })
    .await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let r = gw
        .call(
            "GET",
            "/",
            &[
                ("connection", "x-foo"),
                ("x-foo", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for hop in ["x-foo", "keep-alive", "proxy-connection"] {
        assert!(seen.headers.get(hop).is_none(), "upstream received hop-by-hop `{hop}`: {:?}", seen.headers);
    }
    assert!(!seen.header("connection").contains("x-foo"), "{:?}", seen.headers);
    assert_eq!(seen.header("x-end-to-end"), "kept");
    for hop in ["x-resp-hop", "keep-alive"] {
        assert!(r.headers.get(hop).is_none(), "client received hop-by-hop `{hop}`: {:?}", r.headers);
    }
    assert!(!r.header("connection").contains("x-resp-hop"), "{:?}", r.headers);
    assert_eq!(r.header("x-resp-end-to-end"), "kept");
}

#[tokio::test]
async fn forward_continues_the_clients_trace() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let client_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    gw.call("GET", "/", &[("traceparent", client_parent), ("tracestate", "congo=t61rcWkgMzE")]).await;
    let seen = up.last();
    let parts: Vec<&str> = seen.header("traceparent").split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent: {:?}", seen.header("traceparent"));
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace id");
    assert!(parts[2].len() == 16 && parts[2].chars().all(|c| c.is_ascii_hexdigit()), "span id {}", parts[2]);
    assert_ne!(parts[2], "00f067aa0ba902b7", "the gateway is a new span in the trace");
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "01");
    assert_eq!(seen.header("tracestate"), "congo=t61rcWkgMzE");

    gw.get("/").await;
    let parts: Vec<String> = up.last().header("traceparent").split('-').map(str::to_owned).collect();
    assert_eq!(parts.len(), 4, "a trace is started when the client sent none");
    assert!(parts[1].len() == 32 && parts[1] != "0".repeat(32), "trace id {}", parts[1]);
    assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test]
async fn forward_reuses_upstream_connections() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(up.hits(), 20);
    let conns = up.connections.load(Ordering::SeqCst);
    assert!(conns <= 5, "20 sequential requests opened {conns} upstream connections");
}

#[tokio::test]
async fn an_http_1_0_upstream_does_not_downgrade_the_clients_http_1_1_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that speaks HTTP/1.0 (like Python's http.server): one answer per connection, then it closes.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            });
        }
    });
    let gw = Gateway::start(single(&[url], json!({}), json!({}))).await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..2 {
        client.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "request {i}: the gateway closed the client's connection: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "request {i}: {text}");
    }
}

/// A client that closes its connection (or only its sending side) while its request waits for the upstream: the
/// request is abandoned (its future dropped, its upstream call with it: the in-flight gauge is back to 0) though
/// the upstream never answers.
#[tokio::test]
async fn a_client_that_goes_away_mid_request_abandons_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (once, gate) = gated("once").await;
    let gw = Gateway::start(single(&[once.url()], json!({}), json!({}))).await;
    let in_flight = async |gw: &Gateway| metric(&gw.metrics().await, "sluice_requests_in_flight");
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // A first request answered, so that the one abandoned is not the connection's first.
    gate.add_permits(1);
    client.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"once") {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    client.write_all(b"GET /y HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    eventually("the second request to reach the upstream", async || once.hits() == 2).await;
    assert_eq!(in_flight(&gw).await, Some(1.0));
    drop(client);
    eventually("the abandoned request to leave the in-flight gauge", async || in_flight(&gw).await == Some(0.0)).await;
    // A client that only shuts its sending side after its request is taken to be gone too, as hyper takes it.
    let mut half = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"GET /z HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    eventually("the third request to reach the upstream", async || once.hits() == 3).await;
    half.shutdown().await.unwrap();
    eventually("the half-closed client's request to be abandoned", async || in_flight(&gw).await == Some(0.0)).await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut rest)).await.unwrap();
    assert!(end.is_err() || rest.is_empty(), "no answer: {}", String::from_utf8_lossy(&rest));
}

/// A client that goes away while its answer streams (the upstream sent a first chunk, then nothing more): the
/// answer is abandoned, its upstream stream with it (the upstream sees its body dropped).
#[tokio::test]
async fn a_client_that_goes_away_while_its_answer_streams_abandons_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let up = Upstream::start(move |_| {
        let guard = SetOnDrop(flag.clone());
        async move {
            let first =
                futures_util::stream::once(async { Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"first"))) });
            let stall = futures_util::stream::poll_fn(move |_| {
                let _held = &guard;
                std::task::Poll::<Option<Result<Frame<Bytes>, BoxError>>>::Pending
            });
            Reply::Http(Response::new(BodyExt::boxed(http_body_util::StreamBody::new(first.chain(stall)))))
        }
    })
    .await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client.write_all(b"GET /s HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let (mut answer, mut buf) = (Vec::new(), [0u8; 1024]);
    while !answer.windows(5).any(|w| w == b"first") {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(!dropped.load(Ordering::SeqCst), "the upstream's body still streams");
    drop(client);
    eventually("the upstream's body to be dropped", async || dropped.load(Ordering::SeqCst)).await;
}

/// Pipelined requests (the next one's bytes arrive while the first waits for its upstream) are answered in order,
/// on the same connection: bytes waiting behind a request in flight are not a close.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (slow, gate) = gated("slow").await;
    let gw = Gateway::start(single(&[slow.url()], json!({}), json!({}))).await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client.write_all(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    eventually("the first request to reach the upstream", async || slow.hits() == 1).await;
    client.write_all(b"GET /second HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    // The second request's bytes wait in the socket; the gateway sees them while the first is in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.add_permits(2);
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    let complete =
        |a: &[u8]| a.windows(17).filter(|w| w == b"HTTP/1.1 200 OK\r\n").count() == 2 && a.ends_with(b"slow");
    while !complete(&answers) {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the gateway closed the connection: {}", String::from_utf8_lossy(&answers));
        answers.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answers);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    let paths: Vec<String> = slow.requests().iter().map(|s| s.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/first", "/second"]);
}

// =============================================================================================================
// 3. Streaming and body limits
// =============================================================================================================

const MIB: usize = 1024 * 1024;

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Byte `offset` of the generated 50 MiB body: the chunk number modulo 251, so misordered chunks are noticed.
fn pattern(offset: usize) -> u8 {
    ((offset / (64 * 1024)) % 251) as u8
}

#[test]
fn streams_a_50_mib_response_without_buffering_it() {
    // Run in a process of its own, so that other tests running in parallel cannot move its memory.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "streaming_50_mib_in_isolation", "--include-ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("1 passed"), "the isolated test ran: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in its own process by streams_a_50_mib_response_without_buffering_it"]
async fn streaming_50_mib_in_isolation() {
    let up = Upstream::start(|seen| async move {
        if seen.uri.path() == "/small" {
            return reply(200, "warm");
        }
        // Generated lazily, 64 KiB at a time: the upstream never holds the whole body.
        let chunks = futures_util::stream::iter(0..800usize)
            .map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![pattern(i * 64 * 1024); 64 * 1024]))));
        Reply::Http(
            Response::builder()
                .header("content-length", (50 * MIB).to_string())
                .body(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
                .unwrap(),
        )
    })
    .await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    assert_eq!(gw.get("/small").await.status, 200, "warm-up");
    let before = vm_rss_kib();
    let res = gw.client.request(gw.req("GET", "/big").body(empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let (mut received, mut peak) = (0usize, before);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        for (i, b) in data.iter().enumerate().step_by(997) {
            assert_eq!(*b, pattern(received + i), "byte {}", received + i);
        }
        received += data.len();
        peak = peak.max(vm_rss_kib());
    }
    assert_eq!(received, 50 * MIB);
    let growth_mib = (peak - before) as f64 / 1024.0;
    println!("RSS before {before} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB");
    assert!(growth_mib < 25.0, "streaming 50 MiB grew RSS by {growth_mib:.1} MiB");
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(n as u64);
    (0..n).map(|_| rng.u8(..)).collect()
}

#[tokio::test]
async fn large_request_body_arrives_byte_identical() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let body = random_bytes(900 * 1024);

    let r = gw.send(gw.req("POST", "/upload").body(full(body.clone())).unwrap()).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("content-length"), "921600");
    assert!(seen.body == body, "content-length body differs ({} bytes arrived)", seen.body.len());

    let chunks = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    let r = gw.send(gw.req("POST", "/upload").body(chunked(chunks)).unwrap()).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(seen.body == body, "chunked body differs ({} bytes arrived)", seen.body.len());
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn body_over_max_body_is_413_problem() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let r = gw.send(gw.req("POST", "/upload").body(full(vec![7u8; MIB + 1])).unwrap()).await;
    assert_problem(&r, 413, Some("r"));
    assert_eq!(up.hits(), 0, "not forwarded");
}

#[tokio::test]
async fn chunked_body_over_max_body_is_413_problem() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let chunks = vec![Bytes::from(vec![7u8; 64 * 1024]); 16].into_iter().chain([Bytes::from_static(b"!")]).collect();
    let r = gw.send(gw.req("POST", "/upload").body(chunked(chunks)).unwrap()).await;
    assert_problem(&r, 413, Some("r"));
    assert_eq!(up.hits(), 0, "the upstream never received a complete request");
}

#[tokio::test]
async fn body_of_exactly_max_body_is_forwarded() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(&[up.url()], json!({}), json!({}))).await;
    let body = random_bytes(MIB);
    let r = gw.send(gw.req("POST", "/upload").body(full(body.clone())).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(up.last().body == body);
    let chunks = body.chunks(100_000).map(Bytes::copy_from_slice).collect();
    let r = gw.send(gw.req("POST", "/upload").body(chunked(chunks)).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(up.last().body == body);
}

/// An upstream speaking raw HTTP/1.1: each request's path picks a scripted answer (`/close…` answers close the
/// connection after writing); counts the connections it accepted.
async fn scripted_upstream(script: fn(&str) -> &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    seen.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    if conn.write_all(script(&path).as_bytes()).await.is_err() || path.starts_with("/close") {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_answers_are_framed_as_http_1_1_says_and_only_clean_ones_reuse_the_connection() {
    let (url, accepted) = scripted_upstream(|path| match path {
        "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        "/both-lengths" => {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        }
        "/head" => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        "/continue" => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "/close-until-eof" => "HTTP/1.1 200 OK\r\n\r\nuntil close",
        "/close-bad-length" => "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        "/listed-length" => "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok",
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    })
    .await;
    let gw = Gateway::start(single(&[url], json!({}), json!({}))).await;
    let connections = || accepted.load(Ordering::SeqCst);
    let r = gw.get("/chunked").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(gw.get("/chunked").await.text(), "hello");
    assert_eq!(connections(), 1, "a chunked answer read to its end leaves the connection reusable");
    let r = gw.get("/continue").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "a 100 Continue is skipped");
    let r = gw.call("HEAD", "/head", &[]).await;
    assert_eq!((r.status, r.header("content-length"), r.body.len()), (200, "5", 0));
    assert_eq!(gw.get("/chunked").await.text(), "hello");
    assert_eq!(connections(), 1, "a HEAD answer has no body whatever its content-length says");
    assert_eq!(gw.get("/both-lengths").await.text(), "abc", "with both lengths, the chunks count");
    assert_eq!(gw.get("/chunked").await.text(), "hello");
    assert_eq!(connections(), 2, "an answer with both lengths is not trusted with another request");
    assert_eq!(gw.get("/close-until-eof").await.text(), "until close");
    assert_eq!(gw.get("/chunked").await.text(), "hello");
    assert_eq!(connections(), 3);
    let r = gw.get("/listed-length").await;
    assert_eq!((r.status, r.header("content-length"), r.text().as_str()), (200, "2", "ok"), "`2, 2` is `2`");
    assert_problem(&gw.get("/close-bad-length").await, 502, Some("r"));
}

/// Writes `request` on a new connection to `addr` and reads the answer until its body `ends`.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], ends: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(ends) {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// The header lines of a raw answer, names lowercased.
fn answer_lines(answer: &str) -> Vec<(String, String)> {
    let head = answer.split("\r\n\r\n").next().unwrap();
    head.lines()
        .skip(1)
        .map(|l| l.split_once(':').unwrap())
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn an_upstreams_header_lines_reach_the_client_the_same_whichever_way_the_gateway_serves_it() {
    // The fast lane writes the upstream's lines as they came (kept as bytes); hyper's server (HTTP/1.0 here, TLS and
    // HTTP/2 elsewhere) gets them in the map; a CORS route rewrites answer headers and gets the map too. Either way:
    // the upstream's lines, none of its connection's own, and one `x-request-id`, the request's.
    let (url, _) = scripted_upstream(|_| {
        "HTTP/1.1 200 OK\r\nServer: up\r\nX-Request-Id: upstream-id\r\nX-Mixed-Case:  A b\r\nKeep-Alive: timeout=5\r\n\
         Content-Length: 2\r\nAccess-Control-Allow-Origin: https://up.example\r\nConnection: keep-alive\r\n\r\nok"
    })
    .await;
    let cors = json!({ "allow_origins": ["https://app.example.com"] });
    let mut config = single(std::slice::from_ref(&url), json!({}), json!({ "match": { "path_prefix": "/plain" } }));
    config["routes"].as_array_mut().unwrap().push(json!({
        "name": "cors", "match": { "path_prefix": "/cors" }, "forward": { "upstream": "svc" }, "cors": cors,
    }));
    let gw = Gateway::start(config).await;
    let expected = |origin: &str| {
        let mut lines = vec![
            ("server", "up"),
            ("x-mixed-case", "A b"),
            ("access-control-allow-origin", origin),
            ("x-request-id", "client-id"),
            ("content-length", "2"),
        ];
        lines.sort();
        lines.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect::<Vec<_>>()
    };
    let requests: [(&[u8], &str); 5] = [
        (b"GET /plain HTTP/1.1\r\nhost: a\r\nx-request-id: client-id\r\n\r\n", "https://up.example"),
        (b"GET /plain HTTP/1.0\r\nhost: a\r\nx-request-id: client-id\r\n\r\n", "https://up.example"),
        // Handed to hyper by the lane: the lines were kept as bytes, and go into the map for hyper's server.
        (
            b"POST /plain HTTP/1.1\r\nhost: a\r\nx-request-id: client-id\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "https://up.example",
        ),
        (
            b"GET /cors HTTP/1.1\r\nhost: a\r\nx-request-id: client-id\r\norigin: https://app.example.com\r\n\r\n",
            "https://app.example.com",
        ),
        (
            b"GET /cors HTTP/1.0\r\nhost: a\r\nx-request-id: client-id\r\norigin: https://app.example.com\r\n\r\n",
            "https://app.example.com",
        ),
    ];
    for (request, origin) in requests {
        let answer = raw_exchange(gw.addr, request, b"ok").await;
        let mut lines = answer_lines(&answer);
        lines.retain(|(n, _)| !matches!(n.as_str(), "date" | "vary" | "connection"));
        lines.sort();
        assert_eq!(lines, expected(origin), "{}\n{answer}", String::from_utf8_lossy(request));
        assert_eq!(answer.matches("\r\n").count(), answer_lines(&answer).len() + 2, "CRLF lines only: {answer}");
        // The lane passes the lines on as the upstream wrote them.
        let lane = request.starts_with(b"GET /plain HTTP/1.1");
        assert_eq!(answer.contains("\r\nX-Mixed-Case:  A b\r\n"), lane, "{answer}");
    }
}

#[tokio::test]
async fn an_upstream_that_answers_an_upload_early_and_closes_has_its_answer_passed_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The upstream reads the request head only, answers 413 and closes with the body unread (its kernel resets the
    // connection, a small receive buffer keeping most of the 60 KiB body unread). On loopback Sluice's write has
    // gone into its socket by then; where it fails instead (a slow link), src/upstream/wire/tests.rs checks that the
    // answer is still read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            while !seen.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.is_ok_and(|n| n == 1) {
                seen.push(byte[0]);
            }
            let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!";
            if conn.write_all(answer).await.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
            // Let the answer leave before the reset.
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(conn);
        }
    });
    let gw = Gateway::start(single(&[url], json!({}), json!({}))).await;
    for _ in 0..3 {
        let req = gw.req("POST", "/upload").body(full(vec![b'x'; 60 << 10])).unwrap();
        let r = gw.send(req).await;
        assert_eq!((r.status, r.text().as_str()), (413, "too big!"), "{:?}", r.headers);
    }
    assert_eq!(answered.load(Ordering::SeqCst), 3, "one attempt each: the answer is final, not retried");
}

// =============================================================================================================
// 4. Balancing
// =============================================================================================================

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = [Upstream::named("a").await, Upstream::named("b").await, Upstream::named("c").await];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let gw = Gateway::start(single(&urls, json!({ "balance": "round_robin" }), json!({}))).await;
    for _ in 0..30 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(ups.iter().map(Upstream::hits).collect::<Vec<_>>(), [10, 10, 10]);
}

#[tokio::test]
async fn hash_balancing_keeps_a_user_on_one_endpoint() {
    let ups = [Upstream::named("a").await, Upstream::named("b").await, Upstream::named("c").await];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let gw =
        Gateway::start(single(&urls, json!({ "balance": "hash", "hash_key": "{header.x-user-id}" }), json!({}))).await;
    let mut used = std::collections::BTreeSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let first = gw.call("GET", "/", &[("x-user-id", &user)]).await.text();
        for _ in 0..4 {
            assert_eq!(gw.call("GET", "/", &[("x-user-id", &user)]).await.text(), first, "{user} moved");
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "20 users all hashed to {used:?}");
    let r = gw.get("/").await;
    let p = assert_problem(&r, 400, Some("r"));
    assert!(p["detail"].as_str().unwrap().contains("x-user-id"), "names the missing header: {p}");
}

#[tokio::test]
async fn p2c_serves_from_every_endpoint() {
    let ups = [Upstream::named("a").await, Upstream::named("b").await, Upstream::named("c").await];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let gw = Gateway::start(single(&urls, json!({ "balance": "p2c" }), json!({}))).await;
    for _ in 0..60 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    let hits: Vec<usize> = ups.iter().map(Upstream::hits).collect();
    assert!(hits.iter().all(|&h| h > 0), "hits {hits:?}");
    assert_eq!(hits.iter().sum::<usize>(), 60);
}

#[tokio::test]
async fn p2c_avoids_the_endpoint_with_most_outstanding_requests() {
    let (busy, gate) = gated("busy").await;
    let (b, c) = (Upstream::named("b").await, Upstream::named("c").await);
    let gw = Gateway::start(single(&[busy.url(), b.url(), c.url()], json!({}), json!({}))).await;
    // Park requests on `busy` (it never answers until the gate opens) until it holds three.
    let mut parked = Vec::new();
    for _ in 0..100 {
        if busy.hits() >= 3 {
            break;
        }
        for _ in 0..10 {
            let (client, req) = (gw.client.clone(), gw.req("GET", "/").body(empty()).unwrap());
            parked.push(tokio::spawn(async move { send(&client, req).await }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = busy.hits();
    assert!(held >= 3, "could not park requests on the busy endpoint");
    // Every parked request has either been answered by `b`/`c` or is held by `busy`: none is still on its way.
    eventually("parked requests settle", async || {
        parked.iter().filter(|p| p.is_finished()).count() + busy.hits() == parked.len()
    })
    .await;
    let held = busy.hits();
    for _ in 0..30 {
        let r = gw.get("/").await;
        assert_ne!(r.text(), "busy");
    }
    assert_eq!(busy.hits(), held, "p2c sent a request to the endpoint with {held} outstanding");
    gate.add_permits(1000);
    for p in parked {
        assert_eq!(p.await.unwrap().status, 200);
    }
}

// =============================================================================================================
// 5. Retries
// =============================================================================================================

#[tokio::test]
async fn one_refusing_endpoint_of_three_fails_no_request_of_any_method() {
    let (a, c) = (Upstream::named("a").await, Upstream::named("c").await);
    let urls = [a.url(), refused_url().await, c.url()];
    let gw = Gateway::start(single(&urls, json!({ "balance": "round_robin" }), json!({}))).await;
    let refused = "sluice_upstream_attempts_total{upstream=\"svc\",outcome=\"connect_failure\"}";
    for i in 0..15 {
        let req = gw.req("POST", "/orders").header("x-client-header", format!("v{i}")).body(full("{}")).unwrap();
        let r = gw.send(req).await;
        assert_eq!(r.status, 200, "POST: {}", r.text());
    }
    // A request resent after a connect failure arrives whole: headers and body as the client sent them.
    let mut seen: Vec<(String, bytes::Bytes)> = a
        .requests()
        .into_iter()
        .chain(c.requests())
        .map(|s| (s.header("x-client-header").to_owned(), s.body.clone()))
        .collect();
    seen.sort();
    let mut want: Vec<(String, bytes::Bytes)> =
        (0..15).map(|i| (format!("v{i}"), bytes::Bytes::from_static(b"{}"))).collect();
    want.sort();
    assert_eq!(seen, want);
    let after_posts = metric(&gw.metrics().await, refused).unwrap_or(0.0);
    assert!(after_posts >= 1.0, "the refusing endpoint was tried by a POST, and the POST retried");
    for _ in 0..15 {
        assert_eq!(gw.get("/orders").await.status, 200);
    }
    assert_eq!(a.hits() + c.hits(), 30);
}

#[tokio::test]
async fn post_5xx_is_not_retried_and_passes_through_unchanged() {
    let busy = Upstream::start(|_| async {
        Reply::Http(
            Response::builder()
                .status(503)
                .header("content-type", "text/plain")
                .header("x-upstream", "a")
                .body(full("a is overloaded"))
                .unwrap(),
        )
    })
    .await;
    let b = Upstream::named("b").await;
    let gw = Gateway::start(single(
        &[busy.url(), b.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["5xx"], "max_retries": 2 } }),
    ))
    .await;
    let r = gw.send(gw.req("POST", "/pay").body(full("payload")).unwrap()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "a is overloaded");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.header("x-upstream"), "a");
    assert_eq!((busy.hits(), b.hits()), (1, 0), "a POST that reached the upstream is not sent again");
    assert_eq!(busy.last().body, "payload");
    assert_eq!(metric(&gw.metrics().await, "sluice_retries_total{route=\"r\"}"), Some(0.0));
}

#[tokio::test]
async fn get_5xx_is_retried_on_a_different_endpoint() {
    let (busy, b) = (Upstream::status(503, "a is overloaded").await, Upstream::named("b").await);
    let gw = Gateway::start(single(
        &[busy.url(), b.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["5xx"], "max_retries": 2 } }),
    ))
    .await;
    let r = gw.get("/items").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
    assert_eq!((busy.hits(), b.hits()), (1, 1));
    assert_eq!(metric(&gw.metrics().await, "sluice_retries_total{route=\"r\"}"), Some(1.0));
}

#[tokio::test]
async fn post_with_idempotency_key_is_retried_with_its_body() {
    let (busy, b) = (Upstream::status(503, "a is overloaded").await, Upstream::named("b").await);
    let gw = Gateway::start(single(
        &[busy.url(), b.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["5xx"], "max_retries": 2 } }),
    ))
    .await;
    let req = gw.req("POST", "/pay").header("idempotency-key", "k-1").body(full("payload")).unwrap();
    let r = gw.send(req).await;
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
    assert_eq!((busy.hits(), b.hits()), (1, 1));
    assert_eq!(busy.last().body, "payload");
    assert_eq!(b.last().body, "payload", "the body is replayed on the retry");
}

#[tokio::test]
async fn retriable_status_is_retried_for_get_only() {
    let (conflict, b) = (Upstream::status(409, "conflict").await, Upstream::named("b").await);
    let gw = Gateway::start(single(
        &[conflict.url(), b.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["retriable-status:409"], "max_retries": 1 } }),
    ))
    .await;
    let r = gw.get("/x").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
    assert_eq!((conflict.hits(), b.hits()), (1, 1));
    // Round robin sends the next first attempt to `conflict` again; a POST is not retried.
    let r = gw.send(gw.req("POST", "/x").body(full("p")).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (409, "conflict"));
    assert_eq!((conflict.hits(), b.hits()), (2, 1));
}

#[tokio::test]
async fn exhausted_retries_pass_the_last_upstream_response_through() {
    let answers = [(503, "first-503"), (502, "second-502"), (500, "third-500")];
    let ups = [
        Upstream::status(answers[0].0, answers[0].1).await,
        Upstream::status(answers[1].0, answers[1].1).await,
        Upstream::status(answers[2].0, answers[2].1).await,
    ];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    // Hashing alone would send every attempt of one user to the same endpoint: retries must go elsewhere.
    let gw = Gateway::start(single(
        &urls,
        json!({ "balance": "hash", "hash_key": "{header.x-user-id}" }),
        json!({ "retry": { "on": ["5xx"], "max_retries": 2 } }),
    ))
    .await;
    let r = gw.call("GET", "/x", &[("x-user-id", "u-1")]).await;
    assert_eq!(ups.iter().map(Upstream::hits).collect::<Vec<_>>(), [1, 1, 1], "each retry on another endpoint");
    let last = (0..3).max_by_key(|&i| ups[i].last_seq()).unwrap();
    assert_eq!((r.status, r.text().as_str()), answers[last], "the last attempt's response");
    assert_eq!(r.header("x-served-by"), answers[last].1);
    assert_eq!(r.header("content-type"), "text/plain", "passed through, not a problem document");
    assert_eq!(metric(&gw.metrics().await, "sluice_retries_total{route=\"r\"}"), Some(2.0));
}

#[tokio::test]
async fn per_try_timeout_retries_on_another_endpoint() {
    let (slow, fast) = (stuck("slow").await, Upstream::named("fast").await);
    let gw = Gateway::start(single(
        &[slow.url(), fast.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["reset"], "max_retries": 1, "per_try_timeout": "200ms" } }),
    ))
    .await;
    let r = gw.get("/x").await;
    assert_eq!((r.status, r.text().as_str()), (200, "fast"));
    assert_eq!((slow.hits(), fast.hits()), (1, 1));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_upstream_attempts_total{upstream=\"svc\",outcome=\"timeout\"}"), Some(1.0));
}

#[tokio::test]
async fn overall_timeout_is_504_problem() {
    let slow = stuck("slow").await;
    let gw = Gateway::start(single(
        &[slow.url()],
        json!({}),
        json!({ "forward": { "upstream": "svc", "timeout": "300ms" } }),
    ))
    .await;
    assert_problem(&gw.get("/x").await, 504, Some("r"));
    assert_eq!(slow.hits(), 1);
}

#[tokio::test]
async fn the_overall_timeout_ends_an_attempt_with_a_longer_per_try_timeout_and_is_not_retried() {
    let (slow_a, slow_b) = (stuck("a").await, stuck("b").await);
    let gw = Gateway::start(single(
        &[slow_a.url(), slow_b.url()],
        json!({ "balance": "round_robin" }),
        json!({
            "forward": { "upstream": "svc", "timeout": "300ms" },
            "retry": { "on": ["reset"], "max_retries": 3, "per_try_timeout": "10s" },
        }),
    ))
    .await;
    assert_problem(&gw.get("/x").await, 504, Some("r"));
    assert_eq!(slow_a.hits() + slow_b.hits(), 1, "the route's timeout is not an attempt's: no retry");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_retries_total{route=\"r\"}").unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn reset_is_retried_for_get_but_not_for_post() {
    let reset = Upstream::start(|_| async { Reply::Reset }).await;
    let b = Upstream::named("b").await;
    let gw = Gateway::start(single(
        &[reset.url(), b.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["reset"], "max_retries": 1 } }),
    ))
    .await;
    let r = gw.get("/x").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
    assert_eq!((reset.hits(), b.hits()), (1, 1));
    // The next first attempt goes to `reset` again: a POST may have been processed, so it is not retried.
    let r = gw.send(gw.req("POST", "/x").body(full("p")).unwrap()).await;
    assert_problem(&r, 502, Some("r"));
    assert_eq!((reset.hits(), b.hits()), (2, 1));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_upstream_attempts_total{upstream=\"svc\",outcome=\"reset\"}"), Some(2.0));
}

#[tokio::test]
async fn every_endpoint_refusing_is_502_problem() {
    let urls = [refused_url().await, refused_url().await];
    let gw = Gateway::start(single(&urls, json!({}), json!({}))).await;
    let p = assert_problem(&gw.get("/x").await, 502, Some("r"));
    let text = p.to_string();
    assert!(!text.contains("127.0.0.1"), "no internal addresses leak: {text}");
    assert_problem(&gw.send(gw.req("POST", "/x").body(full("p")).unwrap()).await, 502, Some("r"));
    let m = gw.metrics().await;
    let failures = metric(&m, "sluice_upstream_attempts_total{upstream=\"svc\",outcome=\"connect_failure\"}");
    assert_eq!(failures, Some(4.0), "each request tried both endpoints");
}

#[tokio::test]
async fn large_body_survives_a_connect_failure_but_is_not_replayed_once_sent() {
    // Connect failure: the streamed body was never read, so the retry can still send it.
    let ok = Upstream::named("ok").await;
    let gw = Gateway::start(single(
        &[refused_url().await, ok.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["connect-failure", "5xx"], "max_retries": 2 } }),
    ))
    .await;
    let big = random_bytes(200 * 1024);
    let r = gw.send(gw.req("PUT", "/doc").body(full(big.clone())).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert!(ok.last().body == big, "the body arrives whole after the connect failure");

    // 5xx after the body was streamed: a body over 64 KiB cannot be replayed, even for an idempotent PUT.
    let (busy, ok) = (Upstream::status(503, "busy").await, Upstream::named("ok").await);
    let gw = Gateway::start(single(
        &[busy.url(), ok.url()],
        json!({ "balance": "round_robin" }),
        json!({ "retry": { "on": ["5xx"], "max_retries": 2 } }),
    ))
    .await;
    // A small body is replayed (round robin: `busy` first, then `ok`)...
    let r = gw.send(gw.req("PUT", "/doc").body(full(vec![1u8; 1024])).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!((busy.hits(), ok.hits()), (1, 1));
    // ...a large one is not (round robin: `busy` first again).
    let r = gw.send(gw.req("PUT", "/doc").body(full(big.clone())).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (503, "busy"));
    assert_eq!((busy.hits(), ok.hits()), (2, 1));
    assert!(busy.last().body == big);
}

#[tokio::test]
async fn endpoints_may_be_dns_names() {
    let up = Upstream::named("svc").await;
    let url = format!("http://localhost:{}", up.addr.port());
    let gw = Gateway::start(single(&[url], json!({}), json!({}))).await;
    let r = gw.get("/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "svc"));
    assert_eq!(up.last().header("host"), format!("localhost:{}", up.addr.port()), "Host as configured");
}

#[tokio::test]
async fn http2_upstreams_are_spoken_h2c() {
    let up = Upstream::named("h2").await;
    let gw = Gateway::start(single(&[up.url()], json!({ "http2": true }), json!({}))).await;
    let big = random_bytes(100 * 1024);
    let r = gw.send(gw.req("POST", "/h2").body(full(big.clone())).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "h2"));
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert!(seen.body == big);
}

// =============================================================================================================
// 6. Outlier ejection and health checks
// =============================================================================================================

#[tokio::test]
async fn failing_endpoint_is_ejected_and_counted() {
    let bad = Upstream::status(500, "bad").await;
    let (g1, g2) = (Upstream::named("g1").await, Upstream::named("g2").await);
    let gw = Gateway::start(single(
        &[bad.url(), g1.url(), g2.url()],
        json!({
            "balance": "round_robin",
            "outlier": { "consecutive_failures": 2, "ejection_time": "30s" }
        }),
        json!({ "retry": { "max_retries": 0 } }),
    ))
    .await;
    let ejections = "sluice_ejections_total{upstream=\"svc\"}";
    assert_eq!(metric(&gw.metrics().await, ejections), Some(0.0), "exposed at zero before any ejection");
    let mut errors = 0;
    for _ in 0..30 {
        let r = gw.get("/").await;
        if r.status == 500 {
            assert_eq!(r.text(), "bad");
            errors += 1;
        }
    }
    assert_eq!(bad.hits(), 2, "ejected after two failures in a row");
    assert_eq!(errors, 2);
    assert_eq!(g1.hits() + g2.hits(), 28);
    assert_eq!(metric(&gw.metrics().await, ejections), Some(1.0), "one ejection counted");
}

#[tokio::test]
async fn max_ejected_percent_keeps_endpoints_in_rotation() {
    let (a, b) = (Upstream::status(500, "a").await, Upstream::status(500, "b").await);
    let gw = Gateway::start(single(
        &[a.url(), b.url()],
        json!({
            "balance": "round_robin",
            "outlier": { "consecutive_failures": 1, "ejection_time": "30s", "max_ejected_percent": 50 }
        }),
        json!({ "retry": { "max_retries": 0 } }),
    ))
    .await;
    for _ in 0..10 {
        let r = gw.get("/").await;
        assert_eq!(r.status, 500, "the upstream's answer, not a gateway 503: {}", r.text());
    }
    let mut hits = [a.hits(), b.hits()];
    hits.sort();
    assert_eq!(hits, [1, 9], "only half of the endpoints may be ejected");
    assert_eq!(metric(&gw.metrics().await, "sluice_ejections_total{upstream=\"svc\"}"), Some(1.0));
}

#[tokio::test]
async fn every_endpoint_ejected_is_503_problem_with_retry_after() {
    let (a, b) = (Upstream::status(500, "a").await, Upstream::status(500, "b").await);
    let gw = Gateway::start(single(
        &[a.url(), b.url()],
        json!({
            "balance": "round_robin",
            "outlier": { "consecutive_failures": 1, "ejection_time": "30s", "max_ejected_percent": 100 }
        }),
        json!({ "retry": { "max_retries": 0 } }),
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 500);
    assert_eq!(gw.get("/").await.status, 500);
    let r = gw.get("/").await;
    assert_problem(&r, 503, Some("r"));
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After: {:?}", r.header("retry-after"));
    assert_eq!((a.hits(), b.hits()), (1, 1));
    assert_eq!(metric(&gw.metrics().await, "sluice_ejections_total{upstream=\"svc\"}"), Some(2.0));
}

#[tokio::test]
async fn ejected_endpoint_returns_after_ejection_time() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let flaky = Upstream::start(move |_| {
        let fail = flag.load(Ordering::SeqCst);
        async move { if fail { reply(500, "flaky") } else { reply(200, "flaky") } }
    })
    .await;
    let good = Upstream::named("good").await;
    let gw = Gateway::start(single(
        &[flaky.url(), good.url()],
        json!({
            "balance": "round_robin",
            "outlier": { "consecutive_failures": 1, "ejection_time": "3s" }
        }),
        json!({ "retry": { "max_retries": 0 } }),
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 500, "round robin starts with `flaky`");
    failing.store(false, Ordering::SeqCst);
    for _ in 0..4 {
        assert_eq!(gw.get("/").await.text(), "good", "`flaky` is ejected");
    }
    assert_eq!(flaky.hits(), 1);
    eventually("the ejected endpoint comes back", async || gw.get("/").await.text() == "flaky").await;
}

#[tokio::test]
async fn failing_health_checks_take_an_endpoint_out_and_passing_ones_bring_it_back() {
    let sick_flag = Arc::new(AtomicBool::new(false));
    let flag = sick_flag.clone();
    let flaky = Upstream::start(move |seen| {
        let sick = flag.load(Ordering::SeqCst);
        async move {
            match seen.uri.path() {
                "/healthz" if sick => reply(503, "unhealthy"),
                _ => reply(200, "flaky"),
            }
        }
    })
    .await;
    let well = Upstream::named("well").await;
    let gw = Gateway::start(single(
        &[flaky.url(), well.url()],
        json!({
            "balance": "round_robin",
            "health_check": {
                "path": "/healthz", "interval": "100ms", "timeout": "1s",
                "unhealthy_threshold": 2, "healthy_threshold": 1
            }
        }),
        json!({}),
    ))
    .await;
    eventually("the healthy flaky endpoint serves", async || gw.get("/").await.text() == "flaky").await;
    assert!(flaky.requests().iter().any(|s| s.uri.path() == "/healthz"), "health checks are sent");

    sick_flag.store(true, Ordering::SeqCst);
    let mut streak = 0;
    eventually("20 requests in a row avoid the sick endpoint", async || {
        streak = if gw.get("/").await.text() == "well" { streak + 1 } else { 0 };
        streak >= 20
    })
    .await;
    let before = flaky.hits();
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.text(), "well");
    }
    assert_eq!(flaky.hits(), before);

    sick_flag.store(false, Ordering::SeqCst);
    eventually("the recovered endpoint serves again", async || gw.get("/").await.text() == "flaky").await;
}

// =============================================================================================================
// 7. Load shedding and rate limits
// =============================================================================================================

#[tokio::test]
async fn max_concurrent_sheds_with_503_and_retry_after() {
    let (slow, gate) = gated("slow").await;
    let gw = Gateway::start(single(&[slow.url()], json!({ "max_concurrent": 1 }), json!({}))).await;
    let (client, req) = (gw.client.clone(), gw.req("GET", "/first").body(empty()).unwrap());
    let first = tokio::spawn(async move { send(&client, req).await });
    eventually("the first request reaches the upstream", async || slow.hits() == 1).await;

    let r = gw.get("/second").await;
    assert_problem(&r, 503, Some("r"));
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After: {:?}", r.header("retry-after"));
    assert_eq!(slow.hits(), 1, "the shed request was not forwarded");

    gate.add_permits(100);
    let r = first.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    eventually("capacity is released", async || gw.get("/third").await.status == 200).await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let up = Upstream::named("svc").await;
    let gw =
        Gateway::start(single(&[up.url()], json!({}), json!({ "rate_limit": { "per_second": 1, "burst": 2 } }))).await;
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(gw.get("/").await.status, 200);
    let r = gw.get("/").await;
    assert_problem(&r, 429, Some("r"));
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After: {:?}", r.header("retry-after"));
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn keyed_rate_limit_separates_keys_and_needs_the_key() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(
        &[up.url()],
        json!({}),
        json!({ "rate_limit": { "per_second": 0.01, "burst": 1, "key": "{header.x-api-key}" } }),
    ))
    .await;
    assert_eq!(gw.call("GET", "/", &[("x-api-key", "alice")]).await.status, 200);
    assert_problem(&gw.call("GET", "/", &[("x-api-key", "alice")]).await, 429, Some("r"));
    assert_eq!(gw.call("GET", "/", &[("x-api-key", "bob")]).await.status, 200, "bob has his own bucket");
    let r = gw.get("/").await;
    let p = assert_problem(&r, 400, Some("r"));
    assert!(p["detail"].as_str().unwrap().contains("x-api-key"), "names the missing header: {p}");
    assert_eq!(up.hits(), 2);
}

// =============================================================================================================
// 8. Faults
// =============================================================================================================

#[tokio::test]
async fn fault_abort_answers_the_configured_status() {
    let up = Upstream::named("svc").await;
    let gw = Gateway::start(single(
        &[up.url()],
        json!({}),
        json!({ "fault": { "abort_status": 418, "abort_percent": 100 } }),
    ))
    .await;
    for _ in 0..5 {
        assert_problem(&gw.get("/").await, 418, Some("r"));
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn fault_delay_holds_each_request_before_forwarding_it() {
    const DELAY: Duration = Duration::from_millis(300);
    // When each request reached the upstream: the delay must come before forwarding, not only before answering.
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = arrivals.clone();
    let up = Upstream::start(move |_| {
        log.lock().unwrap().push(Instant::now());
        async { reply(200, "svc") }
    })
    .await;
    let gw =
        Gateway::start(single(&[up.url()], json!({}), json!({ "fault": { "delay": "300ms", "delay_percent": 100 } })))
            .await;
    for i in 0..3 {
        let sent = Instant::now();
        let r = gw.get("/").await;
        let answered = sent.elapsed();
        assert_eq!((r.status, r.text().as_str()), (200, "svc"), "request {i} is still forwarded after its delay");
        assert_eq!(up.hits(), i + 1, "request {i} reached the upstream exactly once");
        // Lower bounds only: the gateway received the request after `sent`, so a delay it honoured makes both hold.
        let reached = arrivals.lock().unwrap()[i].duration_since(sent);
        assert!(
            reached >= DELAY,
            "request {i} reached the upstream {reached:?} after it was sent: not delayed by {DELAY:?}"
        );
        assert!(answered >= DELAY, "request {i} was answered {answered:?} after it was sent: not delayed by {DELAY:?}");
    }
}

// =============================================================================================================
// 9. Admin
// =============================================================================================================

#[tokio::test]
async fn admin_serves_health_readiness_metrics_and_routes() {
    let ok = Upstream::named("ok").await;
    let urls = [refused_url().await, ok.url()];
    let gw = Gateway::start(json!({
        "upstreams": { "svc": { "endpoints": urls, "balance": "round_robin" } },
        "routes": [
            { "name": "orders-api", "match": { "path_prefix": "/orders" }, "forward": { "upstream": "svc" } },
            { "name": "users-api", "match": { "path_prefix": "/users" }, "forward": { "upstream": "svc" } }
        ]
    }))
    .await;
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);

    // The first attempt goes to the refusing endpoint, the retry to `ok`.
    assert_eq!(gw.get("/orders/1").await.status, 200);
    assert_eq!(gw.get("/nowhere").await.status, 404);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_requests_total{route=\"orders-api\",code=\"200\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "sluice_request_duration_seconds_count{route=\"orders-api\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "sluice_upstream_attempts_total{upstream=\"svc\",outcome=\"success\"}"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "sluice_upstream_attempts_total{upstream=\"svc\",outcome=\"connect_failure\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sluice_retries_total{route=\"orders-api\"}"), Some(1.0), "{m}");
    // Exposed from start-up, and one connect failure (the threshold is five in a row) ejects nothing.
    assert_eq!(metric(&m, "sluice_ejections_total{upstream=\"svc\"}"), Some(0.0), "{m}");

    let routes = gw.admin_get("/routes").await;
    assert_eq!(routes.status, 200);
    let v = routes.json();
    let names: Vec<&str> = v["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders-api", "users-api"]);
    assert_eq!(v["upstreams"]["svc"]["endpoints"][1], ok.url());
}

#[tokio::test]
async fn a_broker_that_is_down_keeps_the_gateway_ready_and_its_forward_routes_in_service() {
    let ok = Upstream::named("ok").await;
    // Nothing listens there: the broker stays down (its producer keeps reconnecting in the background).
    let nowhere = refused_url().await.replace("http://", "amqp://guest:guest@");
    let gw = Gateway::start(json!({
        "upstreams": { "svc": { "endpoints": [ok.url()] } },
        "brokers": { "rabbit": { "kind": "amqp", "url": format!("{nowhere}/%2f") } },
        "routes": [
            { "name": "api", "match": { "path_prefix": "/api" }, "forward": { "upstream": "svc" } },
            { "name": "events", "match": { "path": "/events" },
              "publish": { "broker": "rabbit", "exchange": "x", "routing_key": "k" } }
        ]
    }))
    .await;

    let ready = gw.admin_get("/readyz").await;
    assert_eq!((ready.status, ready.json()), (200, json!({ "ready": true })));
    let verbose = gw.admin_get("/readyz?verbose").await;
    assert_eq!(verbose.status, 200);
    assert_eq!(
        verbose.json(),
        json!({
            "ready": true,
            "brokers": { "rabbit": "down" },
            "routes": { "api": "serving", "events": "broker rabbit down: answering 503" },
            "subscriptions": {}
        })
    );
    assert_eq!(gw.get("/api/x").await.status, 200, "forward routes keep serving");
    let published = gw.send(gw.req("POST", "/events").body(full("e")).unwrap()).await;
    assert_problem(&published, 503, Some("events"));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_broker_up{broker=\"rabbit\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "sluice_route_serving{route=\"api\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "sluice_route_serving{route=\"events\"}"), Some(0.0), "{m}");
}

// =============================================================================================================
// 10. Graceful shutdown
// =============================================================================================================

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let (slow, gate) = gated("slow").await;
    let mut gw = Gateway::start(single(&[slow.url()], json!({}), json!({}))).await;
    let (client, req) = (gw.client.clone(), gw.req("GET", "/slow").body(empty()).unwrap());
    let in_flight = tokio::spawn(async move { send(&client, req).await });
    eventually("the request reaches the upstream", async || slow.hits() == 1).await;

    gw.trigger_shutdown();
    let addr = gw.addr;
    eventually("new connections are refused", async || tokio::net::TcpStream::connect(addr).await.is_err()).await;
    eventually("readiness reports the drain", async || gw.admin_get("/readyz").await.status == 503).await;
    assert!(!gw.done.as_ref().unwrap().is_finished(), "run waits for the in-flight request");

    gate.add_permits(1);
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    tokio::time::timeout(Duration::from_secs(20), gw.done.take().unwrap())
        .await
        .expect("run returns once drained")
        .unwrap();
}

#[tokio::test]
async fn shutdown_with_a_drain_delay_reports_not_ready_but_keeps_serving_new_connections_first() {
    let ok = Upstream::named("ok").await;
    let mut tree = single(&[ok.url()], json!({}), json!({}));
    tree["server"] = json!({ "drain_delay": "5s" });
    let mut gw = Gateway::start(tree).await;
    gw.trigger_shutdown();
    eventually("readiness reports the shutdown", async || gw.admin_get("/readyz").await.status == 503).await;
    let body = gw.admin_get("/readyz").await.json();
    assert_eq!(body, json!({ "ready": false, "not_ready": ["shutting down"] }));
    // Not ready, yet a new client (a fresh connection) is still served during the delay.
    let fresh = client();
    let r = send(&fresh, gw.req("GET", "/late").body(empty()).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let addr = gw.addr;
    eventually("new connections are refused after the delay", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    tokio::time::timeout(Duration::from_secs(20), gw.done.take().unwrap())
        .await
        .expect("run returns once drained")
        .unwrap();
}

// =============================================================================================================
// The real binary
// =============================================================================================================

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{test}-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    path
}

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_CONFIG").stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE__") {
            c.env_remove(k);
        }
    }
    c
}

const BAD_CONFIG: &str = r#"
[upstreams.orders]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "typo-key"
match = { path_prefix = "/a" }
forward = { upstream = "orders", timout = "1s" }

[[routes]]
name = "missing-upstream"
match = { path_prefix = "/b" }
forward = { upstream = "ordrs" }

[[routes]]
name = "dup"
match = { path_prefix = "/c" }
forward = { upstream = "orders" }

[[routes]]
name = "dup"
match = { path_prefix = "/d" }
forward = { upstream = "orders" }

[[routes]]
name = "bad-duration"
match = { path_prefix = "/e" }
forward = { upstream = "orders", timeout = "soon" }

[[routes]]
name = "too-much"
match = { path_prefix = "/f" }
forward = { upstream = "orders" }
fault = { abort_status = 503, abort_percent = 150 }

[[routes]]
name = "both-paths"
match = { path = "/g", path_prefix = "/g" }
forward = { upstream = "orders" }

[[routes]]
name = "unknown-param"
match = { path = "/h/{id}" }
forward = { upstream = "orders" }
rate_limit = { per_second = 1, key = "{path.tenant}" }
"#;

#[test]
fn check_lists_every_problem_of_a_bad_file_naming_the_route() {
    let dir = temp_dir("check-bad");
    let path = write(&dir, "routes.toml", BAD_CONFIG);
    let out = sluice().arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    // (route label, a word the message must contain)
    let expected = [
        ("routes[0] \"typo-key\"", "timout"),
        ("routes[1] \"missing-upstream\"", "ordrs"),
        ("routes[3] \"dup\"", "dup"),
        ("routes[4] \"bad-duration\"", "soon"),
        ("routes[5] \"too-much\"", "abort_percent"),
        ("routes[6] \"both-paths\"", "path_prefix"),
        ("routes[7] \"unknown-param\"", "tenant"),
    ];
    for (label, word) in expected {
        assert!(
            lines.iter().any(|l| l.contains(label) && l.contains(word)),
            "no line names {label} and `{word}`:\n{stdout}"
        );
    }
    assert!(!lines.iter().any(|l| l.contains("routes[2]")), "the first `dup` is fine:\n{stdout}");
    assert!(!stdout.contains("ok:"), "{stdout}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_accepts_a_good_file_with_a_summary() {
    let dir = temp_dir("check-good");
    let path = write(
        &dir,
        "routes.toml",
        r#"
[upstreams.orders]
endpoints = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
balance = "round_robin"

[[routes]]
name = "orders-api"
match = { path_prefix = "/api/orders", methods = ["GET", "POST"] }
forward = { upstream = "orders", rewrite_prefix = "/orders", timeout = "2s" }
retry = { max_retries = 2, per_try_timeout = "500ms", on = ["connect-failure", "reset", "5xx"] }

[[routes]]
name = "order"
match = { path = "/orders/{id}" }
forward = { upstream = "orders" }
rate_limit = { per_second = 100, burst = 200, key = "{path.id}" }
"#,
    );
    let out = sluice().arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "ok: 2 routes, 1 upstreams, 0 brokers"), "{stdout}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn run_refuses_an_invalid_file() {
    let dir = temp_dir("run-bad");
    let path = write(&dir, "routes.toml", BAD_CONFIG);
    let out = sluice().arg("run").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes[1] \"missing-upstream\""), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

/// Kills the child on drop, so that a failed assertion does not leave a gateway running.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// How many times each of `pid`'s threads named `sluice-serve-*` went to sleep waiting (its voluntary context
/// switches), by name: a worker that served a connection has waited on its sockets; one that served none sleeps
/// untouched.
fn worker_waits(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut waits = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default().trim().to_owned();
        if name.starts_with("sluice-serve-") {
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let switches = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).unwrap();
            waits.insert(name, switches.trim().parse().unwrap());
        }
    }
    waits
}

/// An HTTP/1.1 connection of its own to the gateway on `port`.
async fn connection(port: u16) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` on `sender`'s connection: the body of a 200.
async fn get_on(sender: &mut hyper::client::conn::http1::SendRequest<TestBody>, path: &str) -> Bytes {
    let req = http::Request::get(path).header("host", "gw").body(empty()).unwrap();
    sender.ready().await.unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_each_connection_on_one_of_its_per_core_workers() {
    let upstream = Upstream::named("one").await;
    let dir = temp_dir("per-core");
    let start = |env: &[(&str, &str)], port: u16, admin_port: u16| {
        let path = write(
            &dir,
            &format!("routes-{port}.toml"),
            &format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\n\
                 [upstreams.one]\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nforward = {{ upstream = \"one\" }}\n",
                upstream.url()
            ),
        );
        let log = std::fs::File::create(dir.join(format!("stderr-{port}.log"))).unwrap();
        let mut command = sluice();
        command.env_remove("TOKIO_WORKER_THREADS").env_remove("SLUICE_RUNTIME").envs(env.iter().copied());
        ChildGuard(command.arg("run").arg("--config").arg(&path).stdout(Stdio::null()).stderr(log).spawn().unwrap())
    };
    let c = client();
    let healthy = async |admin_port: u16| {
        eventually("the binary's admin listener answers", async || {
            let req = http::Request::get(format!("http://127.0.0.1:{admin_port}/healthz")).body(empty()).unwrap();
            matches!(c.request(req).await, Ok(r) if r.status() == 200)
        })
        .await;
    };
    let upstream_connections = || upstream.connections.load(Ordering::SeqCst);

    // Three serving workers, each with its own thread.
    let (port, admin_port) = process_support::free_ports().await;
    let child = start(&[("TOKIO_WORKER_THREADS", "3")], port, admin_port);
    healthy(admin_port).await;
    let pid = child.0.id();
    assert_eq!(
        worker_waits(pid).keys().map(String::as_str).collect::<Vec<_>>(),
        ["sluice-serve-0", "sluice-serve-1", "sluice-serve-2"]
    );

    // Three connections kept open, one request each in turn: each connection went to a worker with none, and each
    // worker opened its own upstream connection (one shared pool would have reused the first for all three).
    let mut held = Vec::new();
    for i in 0..3 {
        let mut sender = connection(port).await;
        assert_eq!(get_on(&mut sender, &format!("/held/{i}")).await, "one");
        held.push(sender);
    }
    assert_eq!(upstream_connections(), 3);
    let req = http::Request::get(format!("http://127.0.0.1:{admin_port}/metrics")).body(empty()).unwrap();
    let metrics = send(&c, req).await.text();
    for worker in 0..3 {
        assert_eq!(
            metric(&metrics, &format!("sluice_worker_connections{{worker=\"{worker}\"}}")),
            Some(1.0),
            "{metrics}"
        );
    }
    // Each worker's own connection is reused by its next request.
    for sender in &mut held {
        assert_eq!(get_on(sender, "/again").await, "one");
    }
    assert_eq!(upstream_connections(), 3);
    drop(held);

    // Six keep-alive connections at once, 20 requests each: every answer comes back, each worker served some.
    let before = worker_waits(pid);
    let clients = (0..6).map(|n| async move {
        let mut sender = connection(port).await;
        let mut bodies = Vec::new();
        for i in 0..20 {
            bodies.push(get_on(&mut sender, &format!("/n/{n}/{i}")).await);
        }
        bodies
    });
    for bodies in futures_util::future::join_all(clients).await {
        assert!(bodies.iter().all(|b| b == "one"), "{bodies:?}");
    }
    assert_eq!(upstream.hits(), 126);
    assert!(upstream_connections() <= 9, "{} upstream connections for 6 clients", upstream_connections());
    let after = worker_waits(pid);
    for (name, waited) in &after {
        assert!(*waited > before[name], "{name} served no connection: {before:?} -> {after:?}");
    }
    drop(child);

    // The work-stealing runtime instead, on request: no serving workers, the same answers.
    let (port, admin_port) = process_support::free_ports().await;
    let child = start(&[("TOKIO_WORKER_THREADS", "2"), ("SLUICE_RUNTIME", "work-stealing")], port, admin_port);
    healthy(admin_port).await;
    assert!(worker_waits(child.0.id()).is_empty());
    let r = send(&c, http::Request::get(format!("http://127.0.0.1:{port}/x")).body(empty()).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
    drop(child);

    // A thread setting it cannot use is refused with its name, before anything starts.
    for env in [
        [("TOKIO_WORKER_THREADS", "0"), ("SLUICE_RUNTIME", "per-core")],
        [("TOKIO_WORKER_THREADS", "2"), ("SLUICE_RUNTIME", "fastest")],
    ] {
        let (port, admin_port) = process_support::free_ports().await;
        let mut child = start(&env, port, admin_port);
        let status = child.0.wait().unwrap();
        let log = std::fs::read_to_string(dir.join(format!("stderr-{port}.log"))).unwrap();
        let named = if env[0].1 == "0" { "TOKIO_WORKER_THREADS" } else { "SLUICE_RUNTIME" };
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains(named), "{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_drains_on_sigterm_then_exits_0() {
    let (slow, gate) = gated("slow").await;
    let (port, admin_port) = process_support::free_ports().await;
    let dir = temp_dir("run-sigterm");
    let path = write(
        &dir,
        "routes.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
shutdown_grace = "20s"

[telemetry]
access_log = true
log_format = "json"

[upstreams.slow]
endpoints = ["{}"]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
forward = {{ upstream = "slow" }}
"#,
            slow.url()
        ),
    );
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let child = sluice().arg("run").arg("--config").arg(&path).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let mut child = ChildGuard(child);
    let pid = child.0.id().to_string();
    let stderr = || std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();

    let c = client();
    let admin = format!("http://127.0.0.1:{admin_port}");
    eventually("the binary's admin listener answers", async || {
        let req = http::Request::get(format!("{admin}/healthz")).body(empty()).unwrap();
        matches!(c.request(req).await, Ok(r) if r.status() == 200)
    })
    .await;

    let req = http::Request::get(format!("http://127.0.0.1:{port}/slow")).body(empty()).unwrap();
    let c2 = c.clone();
    let in_flight = tokio::spawn(async move { send(&c2, req).await });
    eventually("the request reaches the upstream", async || slow.hits() == 1).await;

    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    eventually("the binary stops accepting", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
    assert!(matches!(child.0.try_wait(), Ok(None)), "the binary waits for the in-flight request:\n{}", stderr());

    gate.add_permits(1);
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow"), "{}", stderr());
    let mut status = None;
    eventually("the binary exits", async || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    })
    .await;
    assert_eq!(status.unwrap().code(), Some(0), "{}", stderr());

    // Exactly one structured access-log line for the one request, with what an operator needs.
    let log = stderr();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    let line = &access[0];
    assert_eq!(line["route"], "all", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/slow", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["backend"], "slow", "{line}");
    assert_eq!(line["request_id"], r.header("x-request-id"), "{line}");
    let trace_id = line["trace_id"].as_str().unwrap_or_default();
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    let span_id = line["span_id"].as_str().unwrap_or_default();
    assert!(span_id.len() == 16 && span_id.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    let sent = slow.last().header("traceparent").to_owned();
    assert_eq!(sent.get(3..35), Some(trace_id), "the log line names the trace the upstream joined: {sent}");
    assert_ne!(sent.get(36..52), Some(span_id), "the upstream's parent is the attempt's span, a child of {span_id}");
    assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{line}");
    std::fs::remove_dir_all(dir).ok();
}

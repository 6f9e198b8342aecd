//! Shared harness for end-to-end tests: a gateway started with `sluice::run` on port 0, upstream HTTP servers
//! whose behaviour each test controls (and which record what they received), and a real HTTP client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used by the test client and the test upstreams.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> TestBody {
    Empty::<Bytes>::new().map_err(|never: Infallible| match never {}).boxed()
}

/// A chunked body (no content-length) made of `chunks`.
pub fn chunked(chunks: Vec<Bytes>) -> TestBody {
    let stream = futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, BoxError>(hyper::body::Frame::data(c))));
    http_body_util::StreamBody::new(stream).boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------------------------------

/// Orders requests across every upstream of the process (to tell which attempt came last).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// One request as an upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Position in the process-wide order of received requests.
    pub seq: u64,
    /// Method.
    pub method: Method,
    /// HTTP version spoken by the gateway.
    pub version: http::Version,
    /// Path and query.
    pub uri: Uri,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Seen {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// What an upstream does with one request.
pub enum Reply {
    /// Answer with this response.
    Http(Response<TestBody>),
    /// Close the connection without answering (the gateway sees a reset).
    Reset,
}

/// `status` with a text body, and `x-served-by: body`.
pub fn reply(status: u16, body: &str) -> Reply {
    Reply::Http(
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .header("x-served-by", body)
            .body(full(body.to_owned()))
            .unwrap(),
    )
}

type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on purpose")
    }
}

impl std::error::Error for Closed {}

/// An HTTP/1.1 and h2c server on 127.0.0.1:0 that records every request and counts accepted connections.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts a server whose answers come from `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let listener = sluice::listen(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (conns, log) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Dropped (aborting every connection) when the accept loop is aborted.
            let mut open = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                while open.try_join_next().is_some() {}
                conns.fetch_add(1, Ordering::SeqCst);
                let (handler, log) = (handler.clone(), log.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (handler, log) = (handler.clone(), log.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map_err(|_| Closed)?.to_bytes();
                        let seen = Seen {
                            seq: SEQUENCE.fetch_add(1, Ordering::SeqCst),
                            method: parts.method,
                            version: parts.version,
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                        };
                        log.lock().unwrap().push(seen.clone());
                        match handler(seen).await {
                            Reply::Http(res) => Ok(res),
                            Reply::Reset => Err(Closed),
                        }
                    }
                });
                open.spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Upstream { addr, connections, seen, task }
    }

    /// A server answering every request with 200 and its `name` as the body (and `x-served-by`).
    pub async fn named(name: &'static str) -> Upstream {
        Upstream::start(move |_| async move { reply(200, name) }).await
    }

    /// A server answering every request with `status` and `body`.
    pub async fn status(status: u16, body: &'static str) -> Upstream {
        Upstream::start(move |_| async move { reply(status, body) }).await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received, health checks (`/healthz`) excluded.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.uri.path() != "/healthz").count()
    }

    /// Every request received, health checks included.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received (health checks excluded).
    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().iter().rev().find(|s| s.uri.path() != "/healthz").cloned().expect("a request")
    }

    /// Sequence number of the last request received, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.seen.lock().unwrap().iter().map(|s| s.seq).max()
    }
}

/// An upstream that holds every request until the test adds permits to the returned gate.
pub async fn gated(name: &'static str) -> (Upstream, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let up = Upstream::start(move |_| {
        let g = g.clone();
        async move {
            g.acquire().await.expect("gate open").forget();
            reply(200, name)
        }
    })
    .await;
    (up, gate)
}

/// The URL of a port on which nothing listens (connections are refused).
pub async fn refused_url() -> String {
    let listener = sluice::listen(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------------------------

/// A response as a client sees it, body read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// True when the gateway marked this answer as a replay of an earlier one (`idempotent-replayed: true`).
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == "true"
    }
}

/// Asserts a gateway-made error: `status`, `application/problem+json` with every RFC 9457 member Sluice promises,
/// and a `request_id` equal to the echoed `x-request-id`. Returns the document.
pub fn assert_problem(r: &Resp, status: u16, route: Option<&str>) -> Value {
    assert_eq!(r.status, status, "status; body: {}", r.text());
    assert_eq!(r.header("content-type"), "application/problem+json", "content-type; body: {}", r.text());
    let v = r.json();
    for key in ["type", "title", "status", "detail", "request_id"] {
        assert!(v.get(key).is_some(), "problem lacks `{key}`: {v}");
    }
    assert!(v["type"].as_str().is_some_and(|t| !t.is_empty()), "type: {v}");
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()), "title: {v}");
    assert!(v["detail"].as_str().is_some_and(|t| !t.is_empty()), "detail: {v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(!r.header("x-request-id").is_empty(), "x-request-id echoed on errors too");
    assert_eq!(v["request_id"], r.header("x-request-id"), "{v}");
    if let Some(route) = route {
        assert_eq!(v["route"], route, "{v}");
    }
    v
}

/// A pooling HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> Resp {
    let res = client.request(req).await.expect("the gateway answers");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("the response body arrives").to_bytes();
    Resp { status: parts.status.as_u16(), headers: parts.headers, body }
}

// ---------------------------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------------------------

/// Parses and validates a config written as JSON (the same tree `routes.toml` becomes), failing on any problem.
pub fn config(tree: Value) -> sluice::config::Config {
    let (cfg, errors) = sluice::config::from_value(tree);
    assert!(errors.is_empty(), "config does not parse: {errors:#?}");
    let report = sluice::config::validate(&cfg);
    assert!(report.errors.is_empty(), "config does not validate: {:#?}", report.errors);
    cfg
}

/// A gateway running `sluice::run` on port 0.
pub struct Gateway {
    /// Public listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// A client for it.
    pub client: Client<HttpConnector, TestBody>,
    stop: Option<oneshot::Sender<()>>,
    /// Resolves when `run` returns.
    pub done: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Starts a gateway with the config `tree` (see [`config`]).
    pub async fn start(tree: Value) -> Gateway {
        let cfg = config(tree);
        let main = sluice::listen(([127, 0, 0, 1], 0).into()).unwrap();
        let admin = sluice::listen(([127, 0, 0, 1], 0).into()).unwrap();
        let (addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let done = tokio::spawn(async move {
            if let Err(e) = sluice::run(cfg, sluice::Listeners { main, admin }, shutdown).await {
                panic!("sluice::run failed: {e}");
            }
        });
        Gateway { addr, admin: admin_addr, client: client(), stop: Some(stop), done: Some(done) }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request builder for `method` and `path` on the public listener.
    pub fn req(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(self.url(path))
    }

    /// Sends `req`, reading the whole response.
    pub async fn send(&self, req: Request<TestBody>) -> Resp {
        send(&self.client, req).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req("GET", path).body(empty()).unwrap()).await
    }

    /// `method path` with `headers`.
    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = self.req(method, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(empty()).unwrap()).await
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        let req = Request::get(format!("http://{}{path}", self.admin)).body(empty()).unwrap();
        self.send(req).await
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        r.text()
    }

    /// Whether every broker a route uses is connected (`/readyz?verbose`).
    pub async fn brokers_up(&self) -> bool {
        all_brokers_up(&self.admin_get("/readyz?verbose").await.json())
    }

    /// Begins graceful shutdown (`run` stops accepting and drains).
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether a `/readyz?verbose` body says every broker is `up`.
pub fn all_brokers_up(readyz: &Value) -> bool {
    readyz["brokers"].as_object().is_some_and(|b| b.values().all(|state| state == "up"))
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.split_whitespace().next()?.parse().ok()
    })
}

/// Polls `check` until it returns true, failing the test after a generous deadline. Never used to measure time.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream endpoint list in config form.
pub fn endpoints(urls: &[String]) -> Value {
    Value::from(urls.to_vec())
}

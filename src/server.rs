//! The public listener: accepts connections (HTTP/1.1 and h2c; or, with `server.tls`, TLS with HTTP/2 or HTTP/1.1
//! by ALPN), routes each request, runs the route's action, turns errors into problem responses, records metrics and
//! the access log, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::body::{Body, Inbound};
use crate::connection::{Finished, Limits, Slot, Tracked, Watch, Watched};
use crate::drain::{Drain, Draining};
use crate::layers::catch_panic::{CatchPanicFuture, guard};
use crate::park::{self, Parking};
use crate::problem::GatewayError;
use crate::request::Facts;
use crate::router::{RouteMatch, remove_dot_segments};
use crate::snapshot::{Shared, Snapshot};
use crate::stack::RouteService;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ConnectionTimeouts;
use crate::upstream;
use crate::workers::Workers;

/// Shared state of a running gateway.
pub struct Gateway {
    /// The active compiled config; each request takes the route's stack from it and keeps that until it ends.
    pub snapshot: ArcSwap<Snapshot>,
    /// What every snapshot is compiled with (metrics, tracer).
    pub shared: Shared,
    /// True once shutdown has begun: `/readyz` turns 503 (the listener stays open for `server.drain_delay`).
    pub draining: AtomicBool,
}

impl Gateway {
    /// A gateway serving `snapshot`.
    pub fn new(snapshot: Snapshot, shared: Shared) -> Gateway {
        Gateway { snapshot: ArcSwap::from_pointee(snapshot), shared, draining: AtomicBool::new(false) }
    }

    /// Metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }
}

/// How long a client may take to complete the TLS handshake before its connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves, then drains open requests for at most `grace`.
///
/// At most `server.max_connections` connections are open at once (read at start-up): a connection takes its slot
/// before it is accepted, so at the limit the listener stops accepting and new connections wait in the kernel's
/// backlog until one closes. Each connection is held to the header-read and idle timeouts and the request-head
/// limit of the config in effect when it was accepted.
///
/// The listener speaks TLS when the snapshot it starts with has `server.tls` (a reload changes the certificate,
/// not whether there is one). Each TLS handshake runs in the connection's own task, so a slow client delays no
/// other accept, within its own [`TLS_HANDSHAKE_TIMEOUT`]; the header-read timeout starts once it is done. It takes
/// the certificate of the snapshot current when the connection was accepted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>, grace: Duration) {
    let drain = Drain::new();
    let metrics = gateway.metrics().clone();
    let (max_connections, max_header_bytes, tls) = {
        let snapshot = gateway.snapshot.load();
        (snapshot.config.server.max_connections, snapshot.config.server.max_header_bytes.0, snapshot.tls.is_some())
    };
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut http = Http::new(max_header_bytes);
    let mut last_warned: Option<tokio::time::Instant> = None;
    // On the signal, report not ready at once but keep serving new connections for `server.drain_delay`, so load
    // balancers take the instance out before its listener closes.
    let shutdown = async {
        shutdown.await;
        gateway.draining.store(true, Ordering::Relaxed);
        // Subscriptions stop taking messages now; their deliveries in flight finish while requests drain.
        for subscription in gateway.snapshot.load().subscriptions.values() {
            subscription.signal_stop();
        }
        let delay = gateway.snapshot.load().config.server.drain_delay.0;
        if !delay.is_zero() {
            tracing::info!(?delay, "shutting down: not ready, still accepting for server.drain_delay");
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.connection_limit_reached.inc();
                if last_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_warned = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        max_connections,
                        "server.max_connections reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (accepted, acceptor) = {
            let snapshot = gateway.snapshot.load();
            let server = &snapshot.config.server;
            let limits = Limits {
                header_read_timeout: server.header_read_timeout.0,
                idle_timeout: server.idle_timeout.0,
                park_after: None,
            };
            let acceptor = tls
                .then(|| TlsAcceptor::from(snapshot.tls.clone().expect("a TLS listener's snapshots have server.tls")));
            let accepted = Accepted {
                gw: gateway.clone(),
                peer_ip: HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a header value"),
                slot: Slot::new(permit, metrics.open_connections.clone()),
                limits,
                max_header_bytes: server.max_header_bytes.0,
                builders: http.builders(server.max_header_bytes.0),
                draining: drain.watcher(),
                timeouts: metrics.connection_timeouts.clone(),
            };
            (accepted, acceptor)
        };
        let workers = crate::workers::installed();
        let Some(socket) = Socket::new(stream, workers.is_some()) else { continue };
        match acceptor {
            None => spawn_connection(workers, accepted, |accepted| async move {
                let Some(stream) = socket.register() else { return };
                accepted.serve(stream).await;
            }),
            Some(acceptor) => spawn_connection(workers, accepted, |accepted| async move {
                let Some(stream) = socket.register() else { return };
                let Some(stream) = handshake(acceptor, stream, peer).await else { return };
                accepted.serve(stream).await;
            }),
        }
    }
    drop(listener);
    tokio::select! {
        () = drain.drain() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed with requests still open"),
    }
}

/// Runs the task `task` makes of the `accepted` connection: on the serving worker with the fewest connections when
/// there are `workers` (see [`crate::workers`]), else on this runtime.
fn spawn_connection<F>(workers: Option<&Workers>, mut accepted: Accepted, task: impl FnOnce(Accepted) -> F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match workers {
        None => drop(tokio::spawn(task(accepted))),
        Some(workers) => workers.spawn(|open| {
            accepted.slot.on_worker(open);
            task(accepted)
        }),
    }
}

/// An accepted socket, registered with this runtime, or on its way to a serving worker's.
enum Socket {
    Here(TcpStream),
    Moving(std::net::TcpStream),
}

impl Socket {
    /// Taken out of this runtime when it goes to a serving worker (`None`, and the connection closed, if that fails).
    fn new(stream: TcpStream, to_worker: bool) -> Option<Socket> {
        if !to_worker {
            return Some(Socket::Here(stream));
        }
        match stream.into_std() {
            Ok(stream) => Some(Socket::Moving(stream)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a worker");
                None
            }
        }
    }

    /// The socket, registered with the runtime this is called on (`None`, and the connection closed, if that fails).
    fn register(self) -> Option<TcpStream> {
        match self {
            Socket::Here(stream) => Some(stream),
            Socket::Moving(stream) => match TcpStream::from_std(stream) {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "a worker cannot take an accepted connection");
                    None
                }
            },
        }
    }
}

/// hyper's connection builders for the `server.max_header_bytes` in effect, made again when a reload changes it.
struct Http {
    max_header_bytes: u64,
    builders: Arc<Builders>,
}

/// hyper's builders for one `server.max_header_bytes`.
struct Builders {
    /// HTTP/1 only: TLS connections that chose `http/1.1` by ALPN (see `park`).
    http1: http1::Builder,
    /// HTTP/1 only, for plain connections: the same, but hyper does not read the socket to see the client close
    /// while a request is in flight (`half_close`); the connection's I/O looks for it (see `connection::Watched`).
    http1_shows_close: http1::Builder,
    /// HTTP/1 or HTTP/2: TLS connections that chose `h2` or no protocol by ALPN, and plain ones that open with the
    /// HTTP/2 preface (see `park`).
    auto: auto::Builder<TokioExecutor>,
}

impl Http {
    fn new(max_header_bytes: u64) -> Http {
        Http { max_header_bytes, builders: Arc::new(Http::make(max_header_bytes)) }
    }

    fn builders(&mut self, max_header_bytes: u64) -> Arc<Builders> {
        if max_header_bytes != self.max_header_bytes {
            *self = Http::new(max_header_bytes);
        }
        self.builders.clone()
    }

    fn make(max_header_bytes: u64) -> Builders {
        // HTTP/1: the read buffer is the request-head limit (a head that does not fit is answered 431 and the
        // connection closed), so an unfinished head never holds more than this. Timeouts are `connection`'s.
        // `writev(false)`: a response's body is copied behind its head and both go out in one plain write, instead
        // of a queue of buffers and a vectored write — 2.2% less CPU per forwarded 1 KiB response (bench/README,
        // eleventh round). The copy buffer is bounded by the same limit and freed when the connection parks.
        let limit = usize::try_from(max_header_bytes).unwrap_or(usize::MAX).max(MIN_BUF);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1().max_buf_size(limit).header_read_timeout(None).writev(false);
        auto.http2().max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        let mut http1 = http1::Builder::new();
        // `max_header_size` makes the limit exact (the read buffer alone may overshoot it by one read).
        http1.max_buf_size(limit).max_header_size(limit).header_read_timeout(None).writev(false);
        let mut http1_shows_close = http1.clone();
        http1_shows_close.half_close(true);
        Builders { http1, http1_shows_close, auto }
    }
}

/// hyper's smallest `max_buf_size` (validation keeps `server.max_header_bytes` at or above it).
const MIN_BUF: usize = 8 * 1024;

/// One accepted connection, from before its TLS handshake (if any): what its task needs to serve it.
struct Accepted {
    gw: Arc<Gateway>,
    /// The client address as an `x-forwarded-for` value, made once per connection.
    peer_ip: HeaderValue,
    /// One of the `server.max_connections` slots, taken before the accept and held until the connection is gone.
    slot: Slot,
    limits: Limits,
    /// `server.max_header_bytes`, for the detail of a 431 answer.
    max_header_bytes: u64,
    builders: Arc<Builders>,
    /// Graceful shutdown waits for this connection.
    draining: Draining,
    timeouts: ConnectionTimeouts,
}

impl Accepted {
    /// Serves HTTP over `stream` (plain TCP, or TLS once its handshake is done), held to the connection's limits,
    /// HTTP/1 parked while idle (see `park`).
    async fn serve<T: park::Transport>(self, stream: T) {
        let watch = Watch::new(self.slot);
        let parked = self.gw.metrics().parked_connections.clone();
        let service = service(self.gw, self.peer_ip, T::SCHEME, watch.clone());
        let io = Watched::new(stream, watch.clone(), self.max_header_bytes);
        let with = park::Serving {
            http1: if T::SHOWS_CLOSE { &self.builders.http1_shows_close } else { &self.builders.http1 },
            auto: &self.builders.auto,
            limits: self.limits,
            timeouts: &self.timeouts,
            parked: &parked,
        };
        Parking { service, watch, with, draining: self.draining }.serve(io).await;
    }
}

/// The service of one connection from `peer_ip` over `scheme` (`http` or `https`), reporting its requests to
/// `watch`.
fn service(gw: Arc<Gateway>, peer_ip: HeaderValue, scheme: &'static str, watch: Arc<Watch>) -> Connection {
    Connection { gw, peer_ip, scheme, watch }
}

/// One connection's requests: each is routed and its route's stack called at once, so the future hyper keeps for
/// a request is the stack's own (no wrapping `async` block whose larger future would be moved again).
#[derive(Clone)]
struct Connection {
    gw: Arc<Gateway>,
    peer_ip: HeaderValue,
    scheme: &'static str,
    watch: Arc<Watch>,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response<Tracked<Body>>;
    type Error = Infallible;
    type Future = Answering;

    fn call(&self, req: Request<Incoming>) -> Answering {
        let mut answering = park::Answer::answer(self, req.map(Inbound::Hyper));
        answering.to_hyper = true;
        answering
    }
}

impl park::Answer for Connection {
    type Body = Tracked<Body>;
    type Future = Answering;

    /// Answers one request; never fails (errors become problem responses). The stack catches panics below its
    /// observe layer; this catches the rest, so no panic drops a connection.
    fn answer(&self, req: Request<Inbound>) -> Answering {
        let finished = Some(self.watch.request(req.version()));
        let answer = guard(|| handle(&self.gw, req, &self.peer_ip, self.scheme));
        Answering { answer, finished, watch: self.watch.clone(), to_hyper: false }
    }
}

pin_project! {
    /// A request's answer; its body tells the connection's watch when it has been sent (or dropped).
    struct Answering {
        #[pin]
        answer: CatchPanicFuture<<RouteService as Service<Request<Inbound>>>::Future>,
        finished: Option<Finished>,
        watch: Arc<Watch>,
        // For hyper's server, which sends only the map: an upstream's lines kept as bytes go into it.
        to_hyper: bool,
    }
}

impl Future for Answering {
    type Output = Result<Response<Tracked<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.answer.poll(cx));
        if *this.to_hyper {
            upstream::into_map(&mut response);
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            this.watch.upgraded();
        }
        let finished = this.finished.take().expect("an answer is not polled after it completed");
        Poll::Ready(Ok(response.map(|body| Tracked::new(body, finished))))
    }
}

/// The server side of a TLS handshake, within [`TLS_HANDSHAKE_TIMEOUT`]; `None` (logged) when it failed.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// Routes one request received over `scheme` (`http` or `https`) and calls its route's stack.
fn handle(
    gw: &Gateway,
    mut req: Request<Inbound>,
    peer_ip: &HeaderValue,
    scheme: &'static str,
) -> <RouteService as Service<Request<Inbound>>>::Future {
    normalize_path(&mut req);
    let bad_host = check_host(&mut req).err();
    let (mut service, facts) = {
        let snapshot = gw.snapshot.load();
        let client_ip = client_ip(peer_ip, req.headers(), &snapshot.trusted_proxies);
        let facts = |params| {
            let mut facts = Facts::new(peer_ip.clone(), scheme, params);
            if let Some(ip) = &client_ip {
                facts.client_ip = ip.clone();
            }
            facts
        };
        let found = match &bad_host {
            Some(_) => RouteMatch::NotFound,
            None => snapshot.router.route(req.method(), host_of(&req), req.uri().path(), req.headers()),
        };
        match found {
            RouteMatch::Found { index, params } => (snapshot.routes[index].service.clone(), facts(params)),
            RouteMatch::MethodNotAllowed { first, params, .. }
                if is_preflight(&req) && snapshot.routes[first].answers_preflight =>
            {
                (snapshot.routes[first].service.clone(), facts(params))
            }
            RouteMatch::MethodNotAllowed { allow, .. } => {
                let mut f = facts(Default::default());
                f.unmatched = Some(GatewayError::MethodNotAllowed { allow });
                (snapshot.unmatched.clone(), f)
            }
            RouteMatch::NotFound => {
                let mut f = facts(Default::default());
                f.unmatched = Some(bad_host.unwrap_or(GatewayError::NotFound));
                (snapshot.unmatched.clone(), f)
            }
        }
    };
    req.extensions_mut().insert(facts);
    // Every layer of a route's stack is always ready (their state is shared and immutable): call it at once.
    service.call(req)
}

/// Removes dot segments from the path before routing, so that what routes and `rewrite_prefix` see is what an
/// upstream would resolve (`/pub/../admin` is `/admin`).
fn normalize_path(req: &mut Request<Inbound>) {
    let uri = req.uri();
    let std::borrow::Cow::Owned(path) = remove_dot_segments(uri.path()) else { return };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(req: &Request<Inbound>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The client a trusted proxy names, when the peer is one (`None`: the client is the peer).
fn client_ip(peer_ip: &HeaderValue, headers: &http::HeaderMap, trusted: &[ipnet::IpNet]) -> Option<HeaderValue> {
    if trusted.is_empty() {
        return None;
    }
    let peer = peer_ip.to_str().ok()?.parse().ok()?;
    HeaderValue::try_from(crate::forwarded::client_ip(peer, headers, trusted).to_string()).ok()
}

/// The `Host` rules of RFC 9112 §3.2: an HTTP/1.1 request needs exactly one valid `Host`; an absolute-form target
/// (`GET http://api.example.com/x`) names the host itself, and its authority replaces any `Host` sent with it.
fn check_host(req: &mut Request<Inbound>) -> Result<(), GatewayError> {
    let bad = |why: &str| Err(GatewayError::BadRequest(why.to_owned()));
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return bad("more than one Host header");
    }
    let is_http1 = matches!(req.version(), http::Version::HTTP_10 | http::Version::HTTP_11);
    if let Some(host) = first {
        if !host.to_str().is_ok_and(valid_host) {
            return bad("the Host header is not a valid host[:port]");
        }
    } else if req.version() == http::Version::HTTP_11 {
        return bad("an HTTP/1.1 request needs a Host header");
    }
    if is_http1 && let Some(authority) = req.uri().authority() {
        let host = HeaderValue::try_from(authority.as_str().rsplit('@').next().unwrap_or_default());
        match host {
            Ok(host) => drop(req.headers_mut().insert(header::HOST, host)),
            Err(_) => return bad("the request target's host is not valid"),
        }
    }
    Ok(())
}

/// `host[:port]` as RFC 9110 §7.2 allows it in `Host`: a registered name or IPv4 address (unreserved and
/// sub-delims characters, percent escapes), or an IPv6 literal in brackets, then an optional numeric port.
fn valid_host(value: &str) -> bool {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port))
                if !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
            {
                (None, port)
            }
            _ => return false,
        },
        None => match last_colon(value) {
            Some(colon) => (Some(&value[..colon]), &value[colon..]),
            None => (Some(value), ""),
        },
    };
    let port_ok = match port.strip_prefix(':') {
        Some(digits) => digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    let reg_name =
        |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    port_ok && host.is_none_or(reg_name)
}

/// Where the last `:` of `s` is (a byte search: cheaper than a `char` pattern on every request).
fn last_colon(s: &str) -> Option<usize> {
    s.as_bytes().iter().rposition(|&b| b == b':')
}

/// The host a request is for, without port or trailing dot: the URI's authority (HTTP/2 `:authority`, an
/// absolute-form target), else the `Host` header.
fn host_of(req: &Request<Inbound>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or_default(),
        None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok())?,
    };
    let host = if raw.starts_with('[') {
        raw.split_once(']').map(|(h, _)| &h[1..])?
    } else {
        last_colon(raw).map_or(raw, |at| &raw[..at])
    };
    Some(host.strip_suffix('.').unwrap_or(host))
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_values() {
        for ok in
            ["a.example.com", "a.example.com:8080", "127.0.0.1:80", "[::1]:8080", "[2001:db8::1]", "x_y-z.~", "h:"]
        {
            assert!(super::valid_host(ok), "{ok}");
        }
        for bad in ["", "a b", "user@a.example.com", "a/b", "a:80:80", "[::1", "[]:80", "a:8o", ":80", "a:123456"] {
            assert!(!super::valid_host(bad), "{bad}");
        }
    }
}

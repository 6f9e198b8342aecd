//! HTTP/1 connections that hold nothing but their socket (and, over TLS, rustls' session) while idle.
//!
//! hyper keeps a connection's read buffer (8 KiB and more) and write buffer (8 KiB) for the connection's whole life,
//! so every idle kept-alive client cost ~25 KiB. Here a connection is served in *rounds*: a round starts when
//! bytes arrive, runs a hyper connection for as long as requests keep coming, and ends when the connection has been
//! idle for [`PARK_AFTER`]. Then hyper is asked to shut down gracefully — on an idle connection that writes nothing,
//! and its final shutdown of the I/O is skipped by [`Watched`] while the watch is parking — and the connection is
//! taken apart: the socket (and any bytes hyper read past its last request) is kept, hyper's state and buffers are
//! freed. The parked connection waits for readability, its idle deadline or the drain signal; the next bytes start
//! the next round. A busy connection never parks, so the request path is hyper's own.
//!
//! A connection that may speak HTTP/2 is served by hyper-util's auto builder instead, without parking: a plain one
//! whose first bytes are (or begin) the HTTP/2 preface, a TLS one that did not settle on `http/1.1` by ALPN (it chose
//! `h2`, or nothing and may send HTTP/2's preface by prior knowledge, which only the auto builder would see). A TLS
//! connection's session stays while it is parked (its keys and the few buffers rustls keeps); what is freed is
//! hyper's, as for a plain one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::body::Inbound;
use crate::connection::{self, H2_PREFACE, Limits, ShowsClose, Timeout, Watch, Watched};
use crate::drain::{self, Draining};
use crate::lane::{self, Left};
use crate::telemetry::metrics::ConnectionTimeouts;

/// How long an HTTP/1 connection may be idle before its hyper state is freed. Re-creating that state costs
/// about a microsecond, paid only when a client comes back after a pause; while a connection is busy, its deadline
/// check wakes its task once per this period.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What a connection is served with.
pub struct Serving<'a> {
    /// HTTP/1 with the connection's limits (upgrades allowed).
    pub http1: &'a http1::Builder,
    /// For a connection that may speak HTTP/2.
    pub auto: &'a auto::Builder<TokioExecutor>,
    /// The connection's deadlines (without `park_after`, which is [`PARK_AFTER`] here).
    pub limits: Limits,
    /// Counts the connections closed by a deadline.
    pub timeouts: &'a ConnectionTimeouts,
    /// `sluice_parked_connections`.
    pub parked: &'a Gauge,
}

/// A parkable connection's server: its request service, watch and drain handle.
pub struct Parking<'a, S> {
    /// Answers the connection's requests.
    pub service: S,
    /// What the connection is doing.
    pub watch: Arc<Watch>,
    /// How it is served.
    pub with: Serving<'a>,
    /// The server's drain signal.
    pub draining: Draining,
}

/// Counts a connection in `sluice_parked_connections` while it lives.
struct Parked<'a>(&'a Gauge);

impl Parked<'_> {
    fn new(gauge: &Gauge) -> Parked<'_> {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A transport whose connection can be parked: it tells when the client sent something, and whether the
/// connection may speak HTTP/2.
pub trait Transport: AsyncRead + AsyncWrite + ShowsClose + Unpin + Send + 'static {
    /// The scheme of its requests (`x-forwarded-proto`, `{scheme}`).
    const SCHEME: &'static str;

    /// Whether the client's first bytes may already have been read from the socket when the connection is handed
    /// over (TLS: application data that came with the end of the handshake is held by rustls), so that the first
    /// round must not wait for the socket to be readable.
    const READS_AHEAD: bool;

    /// Ready once the client sent bytes (or closed, or failed). Over TLS, readiness of the socket: the bytes may
    /// turn out to be no request (a TLS alert, a key update), and the round that starts then idles until it parks
    /// again.
    fn readable(&self) -> impl Future<Output = ()> + Send;

    /// Whether the connection, before its first request, may be about to speak HTTP/2.
    fn may_be_http2(&self) -> impl Future<Output = bool> + Send;
}

/// A connection's request service as the fast lane calls it (hyper calls it as a `hyper::service::Service`).
pub trait Answer {
    /// The response body.
    type Body;
    /// The answer.
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>>;

    /// Answers `req`.
    fn answer(&self, req: Request<Inbound>) -> Self::Future;
}

impl Transport for TcpStream {
    const SCHEME: &'static str = "http";
    const READS_AHEAD: bool = false;

    async fn readable(&self) {
        let _ = TcpStream::readable(self).await;
    }

    /// The first bytes the client sent are (or begin) the HTTP/2 preface, by a look that leaves them unread.
    async fn may_be_http2(&self) -> bool {
        let mut first = [0u8; H2_PREFACE.len()];
        match self.peek(&mut first).await {
            Ok(n) => n > 0 && first[..n] == H2_PREFACE[..n],
            Err(_) => false,
        }
    }
}

impl Transport for TlsStream<TcpStream> {
    const SCHEME: &'static str = "https";
    const READS_AHEAD: bool = true;

    async fn readable(&self) {
        let _ = self.get_ref().0.readable().await;
    }

    /// Unless the client settled on `http/1.1` by ALPN: it chose `h2`, or nothing (then it may send HTTP/2's preface
    /// by prior knowledge).
    async fn may_be_http2(&self) -> bool {
        self.get_ref().1.alpn_protocol() != Some(crate::tls::HTTP11)
    }
}

/// How long closing a parked connection may take (over TLS, sending `close_notify`) before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Closes a parked connection whose idle deadline passed or whose server drains: over TLS with `close_notify`, as
/// hyper closes a connection it serves, so that the client sees an orderly end rather than a truncation.
async fn close<T: Transport>(io: &mut Watched<T>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, io.shutdown()).await;
}

type Round<T, S> = http1::UpgradeableConnection<TokioIo<Watched<T>>, S>;
type Parts<T, S> = http1::Parts<TokioIo<Watched<T>>, S>;

impl<S, B> Parking<'_, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S: Answer<Body = B, Future = <S as hyper::service::Service<Request<Incoming>>>::Future>,
    S: Clone + Send + Unpin + 'static,
    <S as Answer>::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + crate::upstream::PassedLines + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Serves the connection `io` until it closes, parking it whenever it idles.
    pub async fn serve<T: Transport>(mut self, mut io: Watched<T>) {
        let limits = Limits { park_after: Some(PARK_AFTER), ..self.with.limits };
        let waiting = Limits { park_after: None, ..limits };
        let mut first = true;
        // The fast lane's read buffer (see `lane::serve`).
        let mut buf = BytesMut::new();
        loop {
            if !io.has_unread() && (!first || !T::READS_AHEAD) {
                // Parked (or new): nothing but the socket until the client sends something.
                let _parked = (!first).then(|| Parked::new(self.with.parked));
                let deadline = self.watch.deadline(&waiting);
                let expired = async {
                    match deadline {
                        Some((at, why)) => {
                            tokio::time::sleep_until(at).await;
                            why
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = io.get_ref().readable() => {}
                    why = expired => {
                        close(&mut io).await;
                        return why.report(&limits, self.with.timeouts);
                    }
                    () = self.draining.signalled() => return close(&mut io).await,
                }
            }
            if std::mem::take(&mut first) && io.get_ref().may_be_http2().await {
                let conn = self.with.auto.serve_connection_with_upgrades(TokioIo::new(io), self.service);
                let conn = Box::pin(drain::until_drained(conn, self.draining));
                return connection::drive(conn, self.watch, self.with.limits, self.with.timeouts).await;
            }
            // Plain HTTP/1.1 requests go through the fast lane where the socket shows the client's close (see `lane`).
            if T::SHOWS_CLOSE {
                let drain = self.draining.signalled();
                let lane = lane::serve(&mut io, &mut buf, &self.service, drain, limits.idle_timeout);
                let driven = connection::driving(lane, self.watch.clone(), limits).await;
                match driven {
                    Ok(Left::Closed) => return,
                    Ok(Left::Stalled) => return Timeout::Idle.report(&limits, self.with.timeouts),
                    Ok(Left::HandedOver) => {}
                    Err(Timeout::Park) => {
                        // Idle, perhaps with the start of a pipelined request read with the last one: kept for the
                        // next round (which reads it first), as hyper's unread bytes are.
                        lane::give_back(&mut io, &mut buf);
                        continue;
                    }
                    Err(timeout) => return timeout.report(&limits, self.with.timeouts),
                }
            }
            let conn = self.with.http1.serve_connection(TokioIo::new(io), self.service.clone()).with_upgrades();
            match self.round(Box::new(conn), limits).await {
                Some(parts) => {
                    io = parts.io.into_inner();
                    if !parts.read_buf.is_empty() {
                        io.unread(parts.read_buf);
                    }
                }
                None => return,
            }
        }
    }

    /// Runs one hyper connection until it ends (`None`) or parks (its parts).
    async fn round<T: Transport>(&mut self, mut conn: Box<Round<T, S>>, mut limits: Limits) -> Option<Parts<T, S>> {
        loop {
            let driven = tokio::select! {
                biased; // the connection first: the signal is rare, and a random start costs every poll
                driven = connection::driving(Pin::new(&mut *conn), self.watch.clone(), limits) => driven,
                () = self.draining.signalled() => {
                    // Finish the request in flight, still held to the header and idle timeouts (a half-sent head
                    // must not hold the drain for the whole grace period).
                    Pin::new(&mut *conn).graceful_shutdown();
                    let rest = Limits { park_after: None, ..limits };
                    let driven = connection::driving(Pin::new(&mut *conn), self.watch.clone(), rest).await;
                    connection::ended(driven, &rest, self.with.timeouts);
                    return None;
                }
            };
            match driven {
                Ok(Ok(())) => return None,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                    return None;
                }
                Err(Timeout::Park) => {
                    self.watch.set_parking(true);
                    Pin::new(&mut *conn).graceful_shutdown();
                    // An idle hyper connection closes at once, writing nothing; one that is not idle after all (a
                    // request began in the same instant) serves it and then closes, so it is driven to its end.
                    let now = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *conn).poll(cx))).await;
                    self.watch.set_parking(false);
                    match now {
                        Poll::Ready(Ok(())) => {
                            tracing::trace!("idle connection parked");
                            return conn.into_parts();
                        }
                        Poll::Ready(Err(e)) => {
                            tracing::debug!(error = %e, "connection ended with an error");
                            return None;
                        }
                        Poll::Pending => limits.park_after = None,
                    }
                }
                Err(timeout) => {
                    timeout.report(&limits, self.with.timeouts);
                    return None;
                }
            }
        }
    }
}

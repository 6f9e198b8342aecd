//! One client connection's limits: it holds one of `server.max_connections` slots while it is open, it is closed
//! when a request's headers take longer than `server.header_read_timeout` (slowloris) or when it carries no request
//! for `server.idle_timeout`. (`server.max_header_bytes` is hyper's read-buffer limit, set in `server.rs`.)
//!
//! hyper's own `header_read_timeout` is not used: it also runs between the requests of a kept-alive connection, so
//! it would close idle connections after the header timeout instead of `idle_timeout`. Instead a [`Watch`] tracks
//! what the connection is doing — waiting for a request's headers, serving requests, idle, or upgraded — from three
//! signals: bytes read ([`Watched`], the I/O wrapper), a request handed to the gateway ([`Watch::request`]), and
//! its response sent completely ([`Tracked`], the response-body wrapper). [`drive`] runs the connection and closes
//! it when the deadline of its current phase passes.
//!
//! hyper answers a request it cannot parse (400, 414, 431) by itself, with an empty body, before the gateway sees
//! it. [`Watched`] recognises that answer on its way out — written while a request head is awaited, none in
//! flight, in hyper's exact shape — and sends the gateway's `application/problem+json` for it instead, so every
//! gateway-made error looks the same to clients.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::problem::GatewayError;
use crate::telemetry::Held;
use crate::telemetry::metrics::ConnectionTimeouts;

/// The timeouts of one connection (taken from the config in effect when it was accepted).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `server.header_read_timeout`.
    pub header_read_timeout: Duration,
    /// `server.idle_timeout`.
    pub idle_timeout: Duration,
    /// How long a connection may be idle before it is parked (see `park`): `None` for connections that are never
    /// parked (HTTP/2, TLS without an ALPN protocol).
    pub park_after: Option<Duration>,
}

/// Waiting for a request's headers: the connection is new, or bytes of the next request have arrived.
const HEAD: u8 = 0;
/// No request in flight and no byte of the next one yet.
const IDLE: u8 = 1;
/// Serving at least one request.
const BUSY: u8 = 2;
/// Switched protocols (WebSocket): no longer HTTP, no timeouts from here.
const UPGRADED: u8 = 3;

/// One of the `server.max_connections` slots, held until the connection (also an upgraded one) is gone.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
    /// The connection's count on its serving worker, if it has one (see `workers`).
    worker: Option<Held>,
}

impl Slot {
    /// A slot counted in `open` (`sluice_open_connections`).
    pub fn new(permit: OwnedSemaphorePermit, open: Gauge) -> Slot {
        open.inc();
        Slot { _permit: permit, open, worker: None }
    }

    /// Counts the connection on its serving worker for as long as the slot is held.
    pub fn on_worker(&mut self, open: Held) {
        self.worker = Some(open);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What one connection is doing; shared by its I/O, its requests, their response bodies and [`drive`].
#[derive(Debug)]
pub struct Watch {
    start: Instant,
    /// Requests handed to the gateway whose response has not been sent completely.
    in_flight: AtomicUsize,
    /// `HEAD`, `IDLE`, `BUSY` or `UPGRADED`. A hint: `in_flight` decides whether the connection is busy.
    phase: AtomicU8,
    /// When the current phase began, in milliseconds since `start`.
    since_ms: AtomicU64,
    /// HTTP/2: frames between requests (pings, window updates) do not start a header timeout.
    h2: AtomicBool,
    /// Being parked: hyper's shutdown of the I/O must leave the socket open.
    parking: AtomicBool,
    /// The last write to the client could not complete (its socket buffer is full): hyper still holds response
    /// bytes, and its connection is not idle until they are out, so it must not be parked yet.
    write_blocked: AtomicBool,
    /// Released when the last reference (the I/O, for an upgraded connection) is gone.
    _slot: Slot,
}

impl Watch {
    /// A new connection: waiting for its first request's headers.
    pub fn new(slot: Slot) -> Arc<Watch> {
        Arc::new(Watch {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            _slot: slot,
        })
    }

    /// A request's headers arrived and it goes to the gateway; the connection is busy until the returned
    /// [`Finished`] (moved into the response body) is dropped.
    pub fn request(self: &Arc<Self>, version: Version) -> Finished {
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _ = self.phase.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |p| (p != UPGRADED).then_some(BUSY));
        Finished(self.clone())
    }

    /// The client opened with the HTTP/2 preface: no request head is awaited; until its first stream the
    /// connection is idle (HTTP/2 clients often connect ahead of their first request).
    fn http2_preface(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.since_ms.store(self.now_ms(), Ordering::Release);
        let _ = self.phase.compare_exchange(HEAD, IDLE, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Serving an HTTP/1 request (busy: one is in flight, its response not sent yet; not upgraded).
    fn serving_http1(&self) -> bool {
        self.phase.load(Ordering::Acquire) == BUSY && !self.h2.load(Ordering::Relaxed)
    }

    /// The connection switched protocols (`101`): its bytes are no longer HTTP requests.
    pub fn upgraded(&self) {
        self.phase.store(UPGRADED, Ordering::Release);
    }

    /// Bytes arrived: on an idle HTTP/1 connection they begin the next request, whose headers must now arrive
    /// within the header timeout.
    fn on_read(&self) {
        if self.phase.load(Ordering::Relaxed) != IDLE || self.h2.load(Ordering::Relaxed) {
            return;
        }
        self.since_ms.store(self.now_ms(), Ordering::Release);
        let _ = self.phase.compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// While `parking` is set, a shutdown of the connection's I/O (hyper's last step) leaves the socket open.
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Release);
    }

    /// A write to the client completed (`blocked` false) or has to wait for room in its socket buffer.
    fn wrote(&self, blocked: bool) {
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Release);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(crate::clock::now().saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// When the connection is to be closed unless something happens first, and why; `None` while it serves a
    /// request or after an upgrade.
    pub(crate) fn deadline(&self, limits: &Limits) -> Option<(Instant, Timeout)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let (limit, why) = match self.phase.load(Ordering::Acquire) {
            HEAD => (limits.header_read_timeout, Timeout::Header),
            IDLE => match limits.park_after {
                Some(park) if park < limits.idle_timeout && !self.write_blocked.load(Ordering::Acquire) => {
                    (park, Timeout::Park)
                }
                _ => (limits.idle_timeout, Timeout::Idle),
            },
            // BUSY with nothing in flight: the last response is being finished (its `Finished` sets IDLE).
            _ => return None,
        };
        let since = self.start + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        Some((since + limit, why))
    }
}

/// Which deadline of a connection passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// The request headers did not arrive within `server.header_read_timeout`: closed.
    Header,
    /// No request within `server.idle_timeout`: closed.
    Idle,
    /// Idle for `Limits::park_after`: to be parked.
    Park,
}

impl Timeout {
    /// Counts and logs the closing of a connection for this reason.
    pub(crate) fn report(self, limits: &Limits, timeouts: &ConnectionTimeouts) {
        match self {
            Timeout::Header => {
                timeouts.header.inc();
                tracing::debug!(timeout = ?limits.header_read_timeout, "request headers too slow: connection closed");
            }
            Timeout::Idle => {
                timeouts.idle.inc();
                tracing::debug!(timeout = ?limits.idle_timeout, "idle connection closed");
            }
            Timeout::Park => {}
        }
    }
}

/// Marks its request finished when dropped (the response body was sent, or abandoned).
#[derive(Debug)]
pub struct Finished(Arc<Watch>);

impl Drop for Finished {
    fn drop(&mut self) {
        let w = &self.0;
        if w.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            w.since_ms.store(w.now_ms(), Ordering::Release);
            let _ = w.phase.compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

pin_project! {
    /// A response body that marks its request finished when it is dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        finished: Finished,
    }
}

impl<B> Tracked<B> {
    /// `inner`, finishing `finished` when dropped.
    pub fn new(inner: B, finished: Finished) -> Tracked<B> {
        Tracked { inner, finished }
    }

    /// The body it wraps.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The body it wraps, to change.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's I/O, reporting reads to its [`Watch`] and replacing hyper's bare parse-error answers.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    watch: Arc<Watch>,
    /// `server.max_header_bytes`, for the 431 answer's detail.
    max_header_bytes: u64,
    /// A problem answer being written in place of hyper's, and the length of hyper's to report once it is out.
    rewrite: Option<Rewrite>,
    /// Bytes of the HTTP/2 preface matched so far by the first bytes read; `None` once decided.
    preface: Option<usize>,
    /// Bytes read from `io` by an earlier hyper connection but not used by it, read again before `io`'s.
    unread: Bytes,
    /// hyper's last read found nothing to read: it waits for bytes (the next request's, or more of a body), and
    /// sees the client's close itself (unless it stopped reading for good, when there is nothing left to see).
    hyper_waits: bool,
    /// The client's close was looked for and bytes are waiting instead (a pipelined request, more of a body): not
    /// looked for again until a read by hyper shows the socket drained (it found nothing, or less than it had room
    /// for), so that a body hyper reads slowly costs one look, not one per read.
    bytes_waiting: bool,
}

/// A client socket that can show that the client closed the connection without a read (see [`Watched`]).
pub trait ShowsClose {
    /// Whether [`ShowsClose::poll_closed`] tells, so that hyper's own look can be off (`half_close`, see
    /// `server.rs`).
    const SHOWS_CLOSE: bool = false;

    /// `Ready(true)`: the client closed the connection (or it failed); `Ready(false)`: bytes are waiting; `Pending`:
    /// neither yet, and the task is woken when either happens.
    fn poll_closed(&self, _cx: &mut Context<'_>) -> Poll<bool> {
        Poll::Pending
    }
}

/// Readiness, then a one-byte peek only when the socket is readable: an end of stream peeks as zero bytes.
impl ShowsClose for tokio::net::TcpStream {
    const SHOWS_CLOSE: bool = true;

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<bool> {
        if ready!(self.poll_read_ready(cx)).is_err() {
            return Poll::Ready(true);
        }
        let mut one = [0u8; 1];
        match ready!(self.poll_peek(cx, &mut ReadBuf::new(&mut one))) {
            Ok(n) => Poll::Ready(n == 0),
            Err(_) => Poll::Ready(true),
        }
    }
}

/// Not shown: rustls may already hold the client's `close_notify`, which the socket no longer shows; hyper reads
/// through the session instead.
impl ShowsClose for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4), enough to tell it from an HTTP/1 request line.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

#[derive(Debug)]
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    replaces: usize,
}

impl<T> Watched<T> {
    /// `io` reporting to `watch`.
    pub fn new(io: T, watch: Arc<Watch>, max_header_bytes: u64) -> Watched<T> {
        Watched {
            io,
            watch,
            max_header_bytes,
            rewrite: None,
            preface: Some(0),
            unread: Bytes::new(),
            hyper_waits: false,
            bytes_waiting: false,
        }
    }

    /// The wrapped I/O.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Whether bytes given back by [`Watched::unread`] are still to be read.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Gives back `bytes` read from the I/O but not used (by a hyper connection that ended, or the fast lane), to be
    /// read first (before bytes given back earlier and not read again yet).
    pub fn unread(&mut self, bytes: Bytes) {
        self.unread = if self.unread.is_empty() { bytes } else { [&bytes[..], &self.unread[..]].concat().into() };
    }

    /// Whether bytes written now can only be hyper's answer to a request it could not parse: HTTP/1, a head
    /// awaited, no request in flight.
    fn awaiting_head(&self) -> bool {
        let w = &self.watch;
        w.phase.load(Ordering::Acquire) == HEAD
            && w.in_flight.load(Ordering::Acquire) == 0
            && !w.h2.load(Ordering::Relaxed)
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Writes the pending rewrite; `Ready(Ok(n))` reports hyper's `n` bytes as written once all of it is out.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(rw) = &mut self.rewrite else { return Poll::Ready(Ok(0)) };
        while rw.written < rw.bytes.len() {
            match Pin::new(&mut self.io).poll_write(cx, &rw.bytes[rw.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => rw.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let replaces = rw.replaces;
        self.rewrite = None;
        Poll::Ready(Ok(replaces))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            self.hyper_waits = false;
            self.watch.on_read();
            return Poll::Ready(Ok(()));
        }
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.hyper_waits = polled.is_pending();
        if polled.is_pending() || buf.filled().len() - before < room {
            self.bytes_waiting = false;
        }
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if let Some(matched) = self.preface {
                let read = &buf.filled()[before..];
                let n = read.len().min(H2_PREFACE.len() - matched);
                self.preface = if read[..n] != H2_PREFACE[matched..matched + n] {
                    None
                } else if matched + n == H2_PREFACE.len() {
                    self.watch.http2_preface();
                    None
                } else {
                    Some(matched + n)
                };
            }
            self.watch.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ShowsClose> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none()
            && self.awaiting_head()
            && let Some(bytes) = problem_for_parse_error(buf, self.max_header_bytes)
        {
            self.rewrite = Some(Rewrite { bytes, written: 0, replaces: buf.len() });
        }
        if self.rewrite.is_some() {
            return self.poll_rewrite(cx);
        }
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch.wrote(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() && self.awaiting_head() {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if total <= MAX_PARSE_ERROR_ANSWER {
                let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
                if let Some(bytes) = problem_for_parse_error(&joined, self.max_header_bytes) {
                    self.rewrite = Some(Rewrite { bytes, written: 0, replaces: total });
                }
            }
        }
        if self.rewrite.is_some() {
            return self.poll_rewrite(cx);
        }
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch.wrote(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// A TLS stream may hold encrypted bytes its socket had no room for after the write that took them: until they
    /// are out the connection is not idle either.
    ///
    /// While an HTTP/1 request is in flight and hyper reads nothing, the client's close is looked for here (hyper
    /// flushes on each pass over the connection whose write is not blocked): it fails the flush, so hyper ends the
    /// connection and the request's future is dropped, its upstream call or publish with it. hyper's own look (off
    /// where the socket shows a close, see `server.rs`) reads the socket on every such pass into a read buffer it
    /// reserves first: a fresh 8 KiB allocation per request, while the request still holds the last one
    /// (bench/README.md's fourteenth round: 195 instructions per forwarded request more than this look).
    ///
    /// One difference from hyper's look: when a client sends pipelined requests and then shuts its side down, and
    /// hyper has read the later requests already, hyper answers the one in flight before it sees the end (and
    /// abandons the later ones); here the one in flight is abandoned too. Bytes hyper has not read yet (in the socket
    /// or in `unread`) are not an end.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if T::SHOWS_CLOSE
            && !self.hyper_waits
            && !self.bytes_waiting
            && self.unread.is_empty()
            && self.watch.serving_http1()
        {
            match self.io.poll_closed(cx) {
                Poll::Ready(true) => {
                    let closed = "the client closed the connection while its request was in flight";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, closed)));
                }
                Poll::Ready(false) => self.bytes_waiting = true,
                Poll::Pending => {}
            }
        }
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        self.watch.wrote(flushed.is_pending());
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.watch.parking.load(Ordering::Acquire) {
            // hyper's connection ends but the client's does not: the socket stays open, parked.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// hyper's parse-error answers are shorter than this.
const MAX_PARSE_ERROR_ANSWER: usize = 256;

/// When `written` is hyper's own answer to an unparsable request (`HTTP/1.1 400 Bad Request`, 414 or 431, with
/// `connection: close`, `content-length: 0` and nothing else but `date`), the gateway's problem answer for it.
fn problem_for_parse_error(written: &[u8], max_header_bytes: u64) -> Option<Vec<u8>> {
    if written.len() > MAX_PARSE_ERROR_ANSWER {
        return None;
    }
    let text = std::str::from_utf8(written).ok()?;
    let (status_line, rest) = text.split_once("\r\n")?;
    let headers = rest.strip_suffix("\r\n\r\n")?;
    let mut date = None;
    let (mut close, mut empty) = (false, false);
    for line in headers.split("\r\n") {
        match line.split_once(": ")? {
            ("connection", "close") => close = true,
            ("content-length", "0") => empty = true,
            ("date", d) => date = Some(d),
            _ => return None,
        }
    }
    if !(close && empty) {
        return None;
    }
    let error = match status_line {
        "HTTP/1.1 400 Bad Request" => GatewayError::BadRequest("the request is not valid HTTP/1.1".to_owned()),
        "HTTP/1.1 414 URI Too Long" => GatewayError::UriTooLong,
        "HTTP/1.1 431 Request Header Fields Too Large" => GatewayError::HeadersTooLarge { limit: max_header_bytes },
        _ => return None,
    };
    tracing::debug!(status = %error.status(), "unparsable request answered");
    let request_id = uuid::Uuid::new_v4().to_string();
    let response = error.into_response(None, &request_id);
    let body = response.body().bytes().cloned().unwrap_or_default();
    let mut out = format!("{status_line}\r\n");
    for (name, value) in response.headers() {
        out.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or_default()));
    }
    out.push_str(&format!("content-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n", body.len()));
    if let Some(date) = date {
        out.push_str(&format!("date: {date}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes)
}

/// Runs the connection `conn` until it ends, or closes it (drops it, which closes the socket) when the deadline
/// of its current phase passes: `limits.header_read_timeout` while a request's headers are awaited,
/// `limits.idle_timeout` while nothing is in flight. (`limits.park_after` must be `None`: nothing here parks.)
pub async fn drive<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    watch: Arc<Watch>,
    limits: Limits,
    timeouts: &ConnectionTimeouts,
) {
    debug_assert!(limits.park_after.is_none(), "drive() does not park");
    // The connection is dropped (its socket closed) when this function returns, after the timeout was counted: a
    // client that sees the close also sees it in the metrics.
    tokio::pin!(conn);
    ended(driving(conn.as_mut(), watch, limits).await, &limits, timeouts);
}

/// Logs how a driven connection ended, and counts it when a deadline closed it.
pub(crate) fn ended<E: std::fmt::Display>(
    driven: Result<Result<(), E>, Timeout>,
    limits: &Limits,
    timeouts: &ConnectionTimeouts,
) {
    match driven {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Err(timeout) => timeout.report(limits, timeouts),
    }
}

/// `conn` held to the deadline of its current phase (see [`Watch::deadline`]): its outcome, or the first deadline
/// that passed.
///
/// The deadline is checked lazily, so that no request pays for waking this task or re-arming a timer: a phase
/// change only stores the phase and its start. Every deadline lies at least `period` (the shortest limit) after
/// the change that set it, so a check at least every `period`, re-armed to a nearer deadline when there is one,
/// finds each deadline when it passes.
pub(crate) fn driving<C: Future>(conn: C, watch: Arc<Watch>, limits: Limits) -> Driving<C> {
    let shortest = limits.header_read_timeout.min(limits.idle_timeout);
    let period = limits.park_after.map_or(shortest, |park| park.min(shortest)).max(Duration::from_millis(1));
    let next = Instant::now() + period;
    let first = watch.deadline(&limits).map_or(next, |(at, _)| at.min(next));
    Driving { conn, check: tokio::time::sleep_until(first), armed: false, watch, limits, period }
}

pin_project! {
    /// A connection and its deadline check: the connection's outcome, or the deadline that passed.
    pub(crate) struct Driving<C> {
        #[pin]
        conn: C,
        #[pin]
        check: tokio::time::Sleep,
        // Whether `check` holds this task's waker for its current deadline: until it elapses, a wake-up of the
        // connection need not poll it.
        armed: bool,
        watch: Arc<Watch>,
        limits: Limits,
        period: Duration,
    }
}

impl<C: Future> Future for Driving<C> {
    type Output = Result<C::Output, Timeout>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(ended) = crate::clock::turn(|| this.conn.as_mut().poll(cx)) {
            return Poll::Ready(Ok(ended));
        }
        if *this.armed && !this.check.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if this.check.as_mut().poll(cx).is_pending() {
                *this.armed = true;
                return Poll::Pending;
            }
            let now = Instant::now();
            match this.watch.deadline(this.limits) {
                Some((at, why)) if at <= now => return Poll::Ready(Err(why)),
                Some((at, _)) => this.check.as_mut().reset(at.min(now + *this.period)),
                None => this.check.as_mut().reset(now + *this.period),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> Arc<Watch> {
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        Watch::new(Slot::new(permit, Gauge::default()))
    }

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        park_after: None,
    };

    #[tokio::test(start_paused = true)]
    async fn phases_set_the_deadline() {
        let w = watch();
        let t0 = Instant::now();
        assert_eq!(w.deadline(&LIMITS), Some((t0 + Duration::from_secs(10), Timeout::Header)), "new: header timeout");
        let finished = w.request(Version::HTTP_11);
        assert_eq!(w.deadline(&LIMITS), None, "serving: no deadline");
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(finished);
        let idle_from = Instant::now();
        assert_eq!(w.deadline(&LIMITS), Some((idle_from + Duration::from_secs(60), Timeout::Idle)));
        tokio::time::advance(Duration::from_secs(5)).await;
        w.on_read();
        let head_from = Instant::now();
        assert_eq!(w.deadline(&LIMITS), Some((head_from + Duration::from_secs(10), Timeout::Header)), "next request");
        let finished = w.request(Version::HTTP_11);
        w.upgraded();
        drop(finished);
        assert_eq!(w.deadline(&LIMITS), None, "upgraded: no deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_parked_before_its_idle_timeout() {
        let w = watch();
        let parking = Limits { park_after: Some(Duration::from_millis(250)), ..LIMITS };
        drop(w.request(Version::HTTP_11));
        let idle_from = Instant::now();
        assert_eq!(w.deadline(&parking), Some((idle_from + Duration::from_millis(250), Timeout::Park)));
        assert_eq!(w.deadline(&LIMITS), Some((idle_from + Duration::from_secs(60), Timeout::Idle)), "not parking");
        let short = Limits { idle_timeout: Duration::from_millis(100), ..parking };
        assert_eq!(
            w.deadline(&short),
            Some((idle_from + Duration::from_millis(100), Timeout::Idle)),
            "an idle timeout shorter than the park delay closes"
        );
        w.wrote(true);
        assert!(matches!(w.deadline(&parking), Some((_, Timeout::Idle))), "response bytes still queued: no parking");
        w.wrote(false);
        assert!(matches!(w.deadline(&parking), Some((_, Timeout::Park))));
        w.on_read();
        assert!(matches!(w.deadline(&parking), Some((_, Timeout::Header))), "a request begins: no parking");
    }

    #[test]
    fn hypers_parse_error_answers_become_problems() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\
                      date: Mon, 30 Nov 2026 03:07:40 GMT\r\n\r\n";
        let answer = String::from_utf8(problem_for_parse_error(hyper, 16384).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/problem+json\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n") && head.contains("\r\ndate: Mon, 30 Nov"), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
        assert!(problem["detail"].as_str().unwrap().contains("16384"));
        // Anything else passes untouched, e.g. a response body that merely looks like an answer.
        assert!(problem_for_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", 1).is_none());
        assert!(
            problem_for_parse_error(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", 1).is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_preface_ends_the_wait_for_a_request_head() {
        let w = watch();
        tokio::time::advance(Duration::from_secs(3)).await;
        w.http2_preface();
        let from = Instant::now();
        assert_eq!(w.deadline(&LIMITS), Some((from + Duration::from_secs(60), Timeout::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_keep_the_idle_deadline() {
        let w = watch();
        drop(w.request(Version::HTTP_2));
        let idle_from = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        w.on_read();
        assert_eq!(w.deadline(&LIMITS), Some((idle_from + Duration::from_secs(60), Timeout::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_keep_the_connection_busy_until_the_last_ends() {
        let w = watch();
        let (a, b) = (w.request(Version::HTTP_2), w.request(Version::HTTP_2));
        drop(a);
        assert_eq!(w.deadline(&LIMITS), None);
        drop(b);
        assert!(matches!(w.deadline(&LIMITS), Some((_, Timeout::Idle))));
    }
}

//! A small HTTP/1.1 client for pooled upstream connections, driven by the request's own task: the request head and
//! its buffered body go out in one write, the response head is parsed with `httparse` from the buffer the body's
//! first bytes arrive in, and a body that arrived with its head is handed on whole, the connection back in its pool
//! before the client is answered.
//!
//! Written here rather than taken from a crate: hyper's client always runs each connection in a task of its own
//! and hands every request, response head and body chunk across a channel to it (a wake-up and a task switch each
//! way per request, and a third of the gap to nginx in bench/README.md's profiles); no well-kept crate offers an
//! HTTP/1.1 client connection polled by its caller. It serves only what it can do simply: requests with no body or
//! a buffered one (at most [`REPLAY_LIMIT`]) that ask for no protocol upgrade ([`eligible`]). Streamed bodies and
//! upgrades go through hyper's client, whose connections are separate.
//!
//! Response framing (RFC 9112 §6.3), refusing what could desynchronise a reused connection:
//! - no body: answers to `HEAD`, `204`, `304`; `1xx` answers are skipped (`101` is refused: no upgrade was asked);
//! - `transfer-encoding` ending in `chunked`: chunked (with a `content-length` too, that header is dropped and the
//!   connection is not reused);
//!   another final coding: read until the upstream closes; in an HTTP/1.0 answer: refused;
//! - `content-length`: exactly that many bytes; an invalid value or differing values: refused;
//! - neither: read until the upstream closes.
//!
//! The answer's hop-by-hop lines that only this connection needed are not passed on (the forwarder would strip
//! them; nothing else reads them): `transfer-encoding` (the body is decoded here), `keep-alive`, and a `connection`
//! that lists nothing but `close` and `keep-alive` (nginx sends `connection: keep-alive` on every answer). A
//! `connection` naming other headers is passed on, for the forwarder to strip them. A forwarded answer's lines may
//! be kept as bytes instead of a `HeaderMap` (`upstream::lines`).
//!
//! A connection is reused only after an HTTP/1.1 answer without `connection: close` that was read to its end with
//! nothing after it, and only while it has nothing to read (checked without waiting when it is taken from the pool).
//! Chunked trailers are passed on as a trailers frame.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::added::Added;
use super::lines::{Kind, Lines, PassedLines};
use crate::body::{OutBody, REPLAY_LIMIT};
use crate::workers;

/// Most header lines in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
// A head's lines are marked in a `u128` (see `Head::parse_into`; `Lines::keep` shifts by up to their number).
const _: () = assert!(MAX_HEADERS < 128);
/// Longest header name `HeaderName` takes (the `http` crate's limit): a longer one is refused (`502`) on the map
/// path, so an answer with one is not kept as bytes.
const MAX_NAME: usize = u16::MAX as usize;
/// Header lines parsed for at first: most answers have fewer, and filling `MAX_HEADERS` empty lines for each answer
/// cost ~140 instructions (0.5% of a forwarded request); a head with more is parsed again with room for `MAX_HEADERS`.
const FEW_HEADERS: usize = 24;
/// Largest response head (hyper's default read buffer limit).
const MAX_HEAD: usize = 400 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4 * 1024;
/// Most trailer bytes after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange or a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before its answer ended.
    #[error("the upstream closed the connection before its answer ended")]
    Closed,
    /// The response head did not parse.
    #[error("malformed upstream response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response broke a framing rule.
    #[error("malformed upstream response: {0}")]
    Malformed(&'static str),
    /// The deadline passed before the response head was read (within an exchange only: it ends as
    /// [`Failure::TimedOut`]).
    #[error("no response head before the deadline")]
    TimedOut,
}

/// How an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// No write of the request succeeded: the idle connection had died, another one may take the request. (Over
    /// TLS, see [`crate::upstream::connect::ConnectError::Closed`] for the one way a record may have left.)
    Unsent(WireError),
    /// The request may have reached the upstream.
    Failed(WireError),
    /// The deadline passed before the response head was read (the connection is closed).
    TimedOut,
}

/// Where a connection goes back to once an answer was read to its end (the endpoint's pool).
pub trait Home<T>: Send + Sync {
    /// Keeps `conn` for the next request (or closes it, when enough are kept).
    fn put(&self, conn: Box<Conn<T>>);
}

/// An open HTTP/1.1 connection and the bytes read from it and not used yet. Kept boxed (in the pool, and in the
/// body reading from it), so that the bodies stay small.
#[derive(Debug)]
pub struct Conn<T> {
    io: T,
    buf: BytesMut,
    /// The [`workers::lane`] of the thread that opened it, whose runtime its socket is registered with.
    lane: usize,
    /// The deadline of the exchange under way, made on the first and moved to each next one's deadline. One timer
    /// per connection: moving a registered timer to a later deadline is one atomic write (the runtime's timer wheel
    /// finds the new deadline when the old one comes, and files it again), where a timer per request was registered
    /// in the wheel and taken out again under its lock, 2.7% of a forwarded request's instructions. Between exchanges
    /// it stays filed with the waker of the last task that waited on it: if that deadline comes while the connection
    /// is idle, that task is woken once for nothing (and its memory is held until then).
    timer: Option<Pin<Box<Sleep>>>,
}

/// A request ready for the wire.
#[derive(Debug)]
pub struct Encoded {
    head: Vec<u8>,
    body: Bytes,
    head_request: bool,
    /// The answer's lines are kept as bytes when they can be (see [`Lines`]).
    keep_lines: bool,
}

/// Whether this client sends `req`: no body or a buffered one of at most [`REPLAY_LIMIT`] bytes, and no upgrade.
pub fn eligible(req: &Request<OutBody>) -> bool {
    let small = match req.body() {
        OutBody::Empty | OutBody::Full(None) => true,
        OutBody::Full(Some(b)) => b.len() as u64 <= REPLAY_LIMIT,
        OutBody::Stream(_) => false,
    };
    small && req.method() != Method::CONNECT && !req.headers().contains_key(header::UPGRADE)
}

/// The request's head in origin form with the headers as they are, except that `content-length` is the body's own,
/// `transfer-encoding` is left out (the body is sent whole), and the lines `added` replace the request's own of
/// their names: `host` first, the others after the request's. With `keep_lines`, the answer's lines are kept as
/// bytes when they can be (see [`Lines`]).
pub fn encode(req: &Request<OutBody>, added: &Added<'_>, keep_lines: bool) -> Encoded {
    let body = match req.body() {
        OutBody::Full(Some(b)) => b.clone(),
        _ => Bytes::new(),
    };
    let method = req.method();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(256 + target.len() + 48 * req.headers().len());
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    added.write_host(&mut head);
    let mut had_length = false;
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            had_length |= name == header::CONTENT_LENGTH;
            continue;
        }
        if added.replaces(name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    added.write_rest(&mut head);
    // A method that defines a meaning for content says how much there is, even none (RFC 9110 §8.6).
    let with_content = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || had_length || with_content {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Encoded { head, body, head_request: method == Method::HEAD, keep_lines }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<T> {
    /// A connection on which nothing was sent yet.
    pub fn new(io: T) -> Box<Conn<T>> {
        Box::new(Conn { io, buf: BytesMut::new(), lane: workers::lane(), timer: None })
    }

    /// The [`workers::lane`] it belongs to: that of the thread that opened it.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Whether an idle connection can take a request: the upstream neither closed it nor sent anything unasked.
    /// Checked without waiting.
    /// Polled outside tokio's cooperative budget: with the task's budget spent, a read would say `Pending` whatever
    /// the socket's state, and a closed connection would look open.
    pub fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let probe = tokio::task::unconstrained(poll_fn(|cx| {
            let mut probe = ReadBuf::new(&mut byte);
            Pin::new(&mut self.io).poll_read(cx, &mut probe)
        }));
        std::pin::pin!(probe).poll(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    /// Sends `req` (written and flushed) and reads the response head, both before `deadline`; the body is read as the
    /// returned response's body is polled (with no deadline), and the connection goes `home` once it was read to its
    /// end.
    pub async fn exchange(
        mut self: Box<Self>,
        req: &Encoded,
        home: Arc<dyn Home<T>>,
        deadline: Instant,
    ) -> Result<Response<WireBody<T>>, Failure> {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        if let Err(failure) = self.write(req).await {
            // An upstream may answer before it has read the whole request (a 413, a 401) and close the connection,
            // which fails the rest of the write: its answer is still in the socket, and is the client's answer.
            let Failure::Failed(error) = failure else { return Err(failure) };
            return match self.read_head(req).await {
                Ok((mut head, data)) => {
                    head.reusable = false;
                    Ok(head.into_response(data, self, home))
                }
                Err(WireError::TimedOut) => Err(Failure::TimedOut),
                Err(_) => Err(Failure::Failed(error)),
            };
        }
        match self.read_head(req).await {
            Ok((head, data)) => Ok(head.into_response(data, self, home)),
            Err(WireError::TimedOut) => Err(Failure::TimedOut),
            Err(e) => Err(Failure::Failed(e)),
        }
    }

    /// `poll`'s result, or `None` once the deadline of the exchange under way passed while it waits. The timer is
    /// polled only then: a connection that has what it asks for needs no look at the clock.
    fn poll_until_deadline<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<Option<R>> {
        if let Poll::Ready(r) = poll(self, cx) {
            return Poll::Ready(Some(r));
        }
        let timer = self.timer.as_mut().expect("an exchange sets its deadline first");
        // Outside tokio's cooperative budget: once an upstream that never stops sending (1xx answers, say) has spent
        // it, the timer would say `Pending` too, and its deadline would never be seen.
        Pin::new(&mut tokio::task::unconstrained(timer.as_mut())).poll(cx).map(|()| None)
    }

    /// Writes the head and the body (one vectored write when the socket takes it all).
    async fn write(&mut self, req: &Encoded) -> Result<(), Failure> {
        let (head, body) = (&req.head[..], &req.body[..]);
        let total = head.len() + body.len();
        let mut written = 0;
        while written < total {
            let slices = if written < head.len() {
                [IoSlice::new(&head[written..]), IoSlice::new(body)]
            } else {
                [IoSlice::new(&body[written - head.len()..]), IoSlice::new(&[])]
            };
            let result = poll_fn(|cx| {
                self.poll_until_deadline(cx, |conn, cx| Pin::new(&mut conn.io).poll_write_vectored(cx, &slices))
            })
            .await
            .ok_or(Failure::TimedOut)?;
            match result {
                Ok(0) => return Err(unsent_or_failed(written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) => return Err(unsent_or_failed(written, e)),
            }
        }
        // Over TLS the write takes the bytes into the session's buffer; the flush waits for the socket to take them.
        poll_fn(|cx| self.poll_until_deadline(cx, |conn, cx| Pin::new(&mut conn.io).poll_flush(cx)))
            .await
            .ok_or(Failure::TimedOut)?
            .map_err(|e| Failure::Failed(e.into()))
    }

    /// Reads until a final response head is complete, skipping `1xx` answers. Returns the head and the bytes read
    /// (the head's own first), the connection's buffer left empty.
    ///
    /// The head is parsed only once the bytes read hold a blank line (the new bytes are scanned for it), so that a
    /// head trickling in a byte at a time is not parsed again from its start on every read.
    async fn read_head(&mut self, req: &Encoded) -> Result<(Head, Bytes), WireError> {
        let mut scanned = 0;
        loop {
            // The first bytes are parsed at once (most heads arrive whole); after that, only once a blank line came.
            if !self.buf.is_empty() && (scanned == 0 || ends_head(&self.buf, scanned)) {
                // The bytes read go to the response; the buffer keeps the room after them for the next response on
                // this connection, which is then read without a new allocation (see `WireBody::finish`).
                let data = self.buf.split().freeze();
                match Head::parse(&data, req.head_request, req.keep_lines)? {
                    Parsed::Final(head) => return Ok((head, data)),
                    Parsed::Informational(len) => {
                        self.give_back(data, len);
                        scanned = 0;
                        continue;
                    }
                    Parsed::Partial => self.give_back(data, 0),
                }
            }
            scanned = self.buf.len();
            if scanned >= MAX_HEAD {
                return Err(WireError::Malformed("response head larger than 400 KiB"));
            }
            if self.fill().await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }

    /// Makes what follows the first `used` bytes of `data` (split off the buffer) the buffer again: without a copy
    /// once the buffer's empty rest, which shares the allocation, is dropped, and nothing else holds `data`'s bytes.
    fn give_back(&mut self, mut data: Bytes, used: usize) {
        self.buf = BytesMut::new();
        data.advance(used);
        self.buf = data.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    }

    /// Reads what the socket has (at least one byte, or 0 at its end), unless the exchange's deadline passes first.
    async fn fill(&mut self) -> Result<usize, WireError> {
        let filled = poll_fn(|cx| self.poll_until_deadline(cx, Self::poll_fill)).await;
        Ok(filled.ok_or(WireError::TimedOut)??)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Whether `buf` holds a blank line (`\n\n` or `\n\r\n`) ending after its first `scanned` bytes.
fn ends_head(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(2);
    buf[from..]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && matches!(&buf[from + i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// A write failure: `Unsent` when not a byte went out.
fn unsent_or_failed(written: usize, e: io::Error) -> Failure {
    if written == 0 { Failure::Unsent(e.into()) } else { Failure::Failed(e.into()) }
}

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed final response head.
#[derive(Debug)]
struct Head {
    len: usize,
    status: StatusCode,
    /// A reason phrase other than the status code's usual one, passed on as hyper's client does.
    reason: Option<hyper::ext::ReasonPhrase>,
    version: Version,
    headers: HeaderMap,
    /// The lines passed on, kept as bytes (`headers` is then empty).
    lines: Option<Box<Lines>>,
    framing: Framing,
    reusable: bool,
}

enum Parsed {
    Final(Head),
    Informational(usize),
    Partial,
}

impl Head {
    /// Parses the head at the start of `data`; header values share `data`'s bytes.
    /// With `keep_lines`, the lines passed on are kept as bytes when they can be (see [`Lines`]).
    fn parse(data: &Bytes, head_request: bool, keep_lines: bool) -> Result<Parsed, WireError> {
        match Self::parse_into(data, head_request, keep_lines, &mut [httparse::EMPTY_HEADER; FEW_HEADERS]) {
            Err(WireError::Parse(httparse::Error::TooManyHeaders)) => {
                Self::parse_into(data, head_request, keep_lines, &mut [httparse::EMPTY_HEADER; MAX_HEADERS])
            }
            parsed => parsed,
        }
    }

    fn parse_into<'d>(
        data: &'d Bytes,
        head_request: bool,
        keep_lines: bool,
        slots: &mut [httparse::Header<'d>],
    ) -> Result<Parsed, WireError> {
        let mut res = httparse::Response::new(slots);
        let len = match res.parse(data)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(Parsed::Partial),
        };
        let status = StatusCode::from_u16(res.code.unwrap_or(0)).map_err(|_| WireError::Malformed("status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(WireError::Malformed("101 Switching Protocols to a request that asked for no upgrade"));
        }
        if status.is_informational() {
            return Ok(Parsed::Informational(len));
        }
        let version = if res.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        let reason = match res.reason {
            Some(r) if !r.is_empty() && status.canonical_reason() != Some(r) => unusual_reason(r),
            _ => None,
        };
        let (mut length, mut coded, mut chunked) = (None, false, false);
        // A list or repeated lines of `content-length`: passed on as the one number (RFC 9110 §8.6).
        let mut restate_length = false;
        let (mut close, mut keep_alive) = (false, false);
        // The lines passed on (bit i: `res.headers[i]`); those of them left out of kept lines (written from the
        // framing, or replaced by the observe layer); whether one needs the map (a hop-by-hop line the forwarder
        // strips from it, a name `HeaderName` refuses as too long); whether a `date` is among them.
        let (mut passed, mut not_kept, mut to_map, mut dated) = (0u128, 0u128, false, false);
        for (i, line) in res.headers.iter().enumerate() {
            to_map |= line.name.len() > MAX_NAME;
            match Kind::of(line.name.as_bytes()) {
                Kind::ContentLength => {
                    let (n, listed) = content_length(line.value)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(WireError::Malformed("differing content-length values"));
                    }
                    restate_length |= listed || length.is_some();
                    length = Some(n);
                    if restate_length {
                        continue;
                    }
                    not_kept |= 1 << i;
                }
                Kind::TransferEncoding => {
                    coded = true;
                    let last = line.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                    chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                    continue;
                }
                Kind::Connection => {
                    let mut names_headers = false;
                    for token in line.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        let (c, k) = (token.eq_ignore_ascii_case(b"close"), token.eq_ignore_ascii_case(b"keep-alive"));
                        (close, keep_alive) = (close || c, keep_alive || k);
                        names_headers |= !(c || k || token.is_empty());
                    }
                    if !names_headers {
                        continue;
                    }
                    to_map = true;
                }
                Kind::KeepAlive => continue,
                Kind::RequestId => not_kept |= 1 << i,
                Kind::OtherHop => to_map = true,
                Kind::Date => dated = true,
                Kind::Other => {}
            }
            passed |= 1 << i;
        }
        let no_body = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = match (no_body, coded, length) {
            (true, ..) => Framing::None,
            (false, true, _) if version == Version::HTTP_10 => {
                return Err(WireError::Malformed("transfer-encoding in an HTTP/1.0 answer"));
            }
            (false, true, _) if chunked => Framing::Chunked,
            (false, true, _) => Framing::UntilClose,
            (false, false, Some(n)) => Framing::Length(n),
            (false, false, None) => Framing::UntilClose,
        };
        // Both lengths given: the chunks count, the stale length is not passed on (it would cut the body short),
        // and the connection is not trusted with another request.
        let conflicting = coded && length.is_some() && !no_body;
        let lines = match keep_lines && !to_map && !no_body {
            true => Lines::keep(data, res.headers, len, passed & !not_kept, dated),
            false => None,
        };
        let mut headers = HeaderMap::new();
        if lines.is_none() {
            headers.reserve(passed.count_ones() as usize);
            let mut bits = passed;
            while bits != 0 {
                let line = &res.headers[bits.trailing_zeros() as usize];
                bits &= bits - 1;
                let name =
                    super::names::header_name(line.name.as_bytes()).map_err(|_| WireError::Malformed("header name"))?;
                let value = HeaderValue::from_maybe_shared(data.slice_ref(line.value))
                    .map_err(|_| WireError::Malformed("header value"))?;
                headers.append(name, value);
            }
            if conflicting {
                headers.remove(header::CONTENT_LENGTH);
            } else if let Some(n) = length.filter(|_| restate_length) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        // HTTP/1.0 keeps the connection only when asked to; `close` always wins.
        let persistent = !close && (version == Version::HTTP_11 || keep_alive);
        let reusable = persistent && !conflicting && framing != Framing::UntilClose;
        Ok(Parsed::Final(Head { len, status, reason, version, headers, lines, framing, reusable }))
    }

    /// The response, its body the rest of `data` (which starts with this head), then what `conn` reads.
    fn into_response<T>(self, data: Bytes, mut conn: Box<Conn<T>>, home: Arc<dyn Home<T>>) -> Response<WireBody<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let after = (data.len() - self.len) as u64;
        let state = match self.framing {
            // The whole body is here already (a small answer): handed on without a copy, the connection home now.
            Framing::Length(n) if n <= after => {
                let end = self.len + n as usize;
                // Bytes after the body (an upstream's error) stay, and keep the connection from being reused.
                if end < data.len() {
                    conn.buf = BytesMut::from(&data[end..]);
                }
                State::Whole((n > 0).then(|| data.slice(self.len..end)))
            }
            framing => {
                conn.give_back(data, self.len);
                match framing {
                    Framing::Length(n) => State::Length(n),
                    Framing::Chunked => State::Chunked(Chunked::default()),
                    Framing::UntilClose => State::UntilClose,
                    Framing::None => State::Whole(None),
                }
            }
        };
        let mut body =
            WireBody { state, conn: Some(conn), home: Some(home), reusable: self.reusable, lines: self.lines };
        if matches!(body.state, State::Whole(_)) {
            body.finish();
        }
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        *res.version_mut() = self.version;
        *res.headers_mut() = self.headers;
        if let Some(reason) = self.reason {
            res.extensions_mut().insert(reason);
        }
        res
    }
}

/// A `content-length` value: decimal digits, or a list of the same number (RFC 9110 §8.6, as hyper takes it), and
/// whether it was such a list.
fn content_length(value: &[u8]) -> Result<(u64, bool), WireError> {
    match decimal(value) {
        Some(n) => Ok((n, false)),
        None => listed_content_length(value).map(|n| (n, true)),
    }
}

/// A `content-length` list (`5, 5`): its one number.
#[cold]
fn listed_content_length(value: &[u8]) -> Result<u64, WireError> {
    let mut items = value.split(|&b| b == b',').map(decimal);
    let first = items.next().flatten().ok_or(WireError::Malformed("content-length is not a number"))?;
    for item in items {
        match item {
            Some(n) if n == first => {}
            Some(_) => return Err(WireError::Malformed("differing content-length values")),
            None => return Err(WireError::Malformed("content-length is not a number")),
        }
    }
    Ok(first)
}

/// A reason phrase other than the status code's usual one, for hyper's server to send on.
#[cold]
fn unusual_reason(reason: &str) -> Option<hyper::ext::ReasonPhrase> {
    hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok()
}

/// Decimal digits (surrounding whitespace allowed) that fit a `u64`.
pub(crate) fn decimal(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The body of an answer read by this client.
pub struct WireBody<T> {
    state: State,
    conn: Option<Box<Conn<T>>>,
    home: Option<Arc<dyn Home<T>>>,
    reusable: bool,
    /// The answer's header lines, when they were kept as bytes (boxed: the body, moved with its response several
    /// times per request, stays small).
    lines: Option<Box<Lines>>,
}

impl<T> std::fmt::Debug for WireBody<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBody").field("state", &self.state).field("reusable", &self.reusable).finish()
    }
}

/// Where a body is. In `Whole` the connection has been handed on; the other states read from it.
#[derive(Debug)]
enum State {
    /// What is left of the body, all of it read already (`None`: nothing left).
    Whole(Option<Bytes>),
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// What the reading states expect.
const READING: &str = "a body still reading holds its connection";

/// The answer's header lines, when they were kept as bytes (its map is then empty).
impl<T> PassedLines for WireBody<T> {
    fn lines(&self) -> Option<&Lines> {
        self.lines.as_deref()
    }

    fn take_lines(&mut self) -> Option<Box<Lines>> {
        self.lines.take()
    }
}

impl<T> WireBody<T> {
    /// The body was read to its end: the connection goes home when it may carry another request.
    fn finish(&mut self) {
        if !matches!(self.state, State::Whole(_)) {
            self.state = State::Whole(None);
        }
        let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) else { return };
        if self.reusable && conn.buf.is_empty() {
            // An idle connection keeps the room left in its read buffer (at most `READ_CHUNK`, shared with the
            // responses read into it until they are dropped), not a larger one a streamed body may have grown.
            if conn.buf.capacity() > READ_CHUNK {
                conn.buf = BytesMut::new();
            }
            home.put(conn);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> http_body::Body for WireBody<T> {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let this = self.get_mut();
        loop {
            if let State::Whole(b) = &mut this.state {
                return Poll::Ready(b.take().map(|b| Ok(Frame::data(b))));
            }
            let conn = this.conn.as_mut().expect(READING);
            let data = match &mut this.state {
                State::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    let data = conn.buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    data
                }
                State::Chunked(chunked) => match chunked.step(&mut conn.buf) {
                    Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
                    Ok(Step::Data(data)) => data,
                    Ok(Step::Done(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(*t))));
                    }
                    Ok(Step::More) => Bytes::new(),
                },
                State::UntilClose if !conn.buf.is_empty() => conn.buf.split().freeze(),
                // Nothing buffered: read more.
                _ => Bytes::new(),
            };
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match ready!(this.conn.as_mut().expect(READING).poll_fill(cx)) {
                Err(e) => return Poll::Ready(Some(Err(this.fail(e.into())))),
                // The end of a body read until close (such a connection is never reused).
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(this.fail(WireError::Closed)))),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            State::Length(n) => SizeHint::with_exact(*n),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}

impl<T> WireBody<T> {
    /// Ends the body with `e`; the connection is closed.
    fn fail(&mut self, e: WireError) -> WireError {
        self.state = State::Whole(None);
        self.conn = None;
        e
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Default)]
struct Chunked {
    phase: Phase,
    /// Trailer bytes read so far.
    trailer_bytes: usize,
    trailers: Option<Box<HeaderMap>>,
}

#[derive(Debug, Default, Clone, Copy)]
enum Phase {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

enum Step {
    Data(Bytes),
    More,
    /// The end, with the trailers if there were any.
    Done(Option<Box<HeaderMap>>),
}

impl Chunked {
    /// Decodes what `buf` holds: the next piece of data, the end, or a need for more bytes.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, WireError> {
        loop {
            match self.phase {
                Phase::Size => {
                    let Some(line) = take_line(buf)? else { return Ok(Step::More) };
                    let size = chunk_size(&line)?;
                    self.phase = if size == 0 { Phase::Trailers } else { Phase::Data(size) };
                }
                Phase::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = left.min(buf.len() as u64);
                    self.phase = if n == left { Phase::DataEnd } else { Phase::Data(left - n) };
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                Phase::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.phase = Phase::Size;
                }
                Phase::Trailers => {
                    let Some(line) = take_line(buf)? else { return Ok(Step::More) };
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(WireError::Malformed("trailers larger than 16 KiB"));
                    }
                    if line.is_empty() {
                        return Ok(Step::Done(self.trailers.take()));
                    }
                    let (name, value) = trailer(line)?;
                    self.trailers.get_or_insert_default().append(name, value);
                }
            }
        }
    }
}

/// The next CRLF-terminated line of `buf` (without its CRLF), or `None` until it is complete.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(end) if end > 0 && window[end - 1] == b'\r' => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(WireError::Malformed("bare LF in chunked framing")),
        None if buf.len() > MAX_LINE => Err(WireError::Malformed("chunk-size or trailer line longer than 4 KiB")),
        None => Ok(None),
    }
}

/// A trailer field line: `name: value`.
fn trailer(line: BytesMut) -> Result<(HeaderName, HeaderValue), WireError> {
    let colon = line.iter().position(|&b| b == b':').ok_or(WireError::Malformed("trailer line without a colon"))?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| WireError::Malformed("trailer name"))?;
    let value =
        HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| WireError::Malformed("trailer value"))?;
    Ok((name, value))
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(WireError::Malformed("chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || line.contains(&b'\r') {
        return Err(WireError::Malformed("chunk size"));
    }
    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
    Ok(u64::from_str_radix(hex, 16).expect("at most 15 hex digits"))
}

#[cfg(test)]
mod tests;

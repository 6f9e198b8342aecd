//! The fast lane: plain HTTP/1.1 requests whose head (and body, if any) is read whole are answered here, without
//! hyper's server; everything else is handed to hyper on the same connection.
//!
//! hyper's HTTP/1 server is a general machine — a dispatcher loop with a body channel per request, a read buffer
//! it reserves anew for every request, an encoder that weighs every response header — and it cost about a fifth of
//! a forwarded request's instructions (bench/README.md, fifteenth round). Most requests a gateway sees are small and
//! plain: a head that arrives in one segment, no body or a short one, keep-alive. Those are parsed here with
//! httparse (as hyper does), handed to the same service, and their responses written here, one write per response
//! when the body is ready at once.
//!
//! What goes to hyper instead, with the bytes read so far given back to the connection (`Watched::unread`), for
//! hyper to read first: a request that is not HTTP/1.1, that httparse rejects (hyper then answers 400/431, which
//! the connection rewrites as a problem), a head with more than [`MAX_HEADERS`] lines or that does not fit
//! [`READ_SIZE`], a `HEAD` or `CONNECT`, one with `transfer-encoding`, `expect`, `upgrade` or `te` (chunked
//! bodies, `100 Continue`, protocol switches, trailers), a `content-length` that is not one plain number, and a body
//! not read whole yet. hyper then serves the connection until it idles and parks (`park`); the next round starts
//! here again. TLS connections are hyper's throughout: the lane needs a socket that shows the client's close
//! ([`ShowsClose::SHOWS_CLOSE`]; a TLS session may hold it instead, which hyper's reads see).
//!
//! The connection's watch sees the same signals as under hyper: reads (through [`Watched`]), the request handed
//! to the service, its response body dropped once written; so its header and idle deadlines and parking work as
//! before (the lane runs under `connection::driving`). While a request is in flight the client's close is looked
//! for ([`ShowsClose`]) and abandons it, as under hyper with `half_close`. A drain signal closes an idle
//! connection and ends a busy one after its response (`connection: close`).
//!
//! Written here because hyper offers no cheaper server mode and no other well-kept crate serves HTTP/1 onto an
//! `http::Request` without its own dispatcher; the wire client (`upstream::wire`) is the same idea upstream.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::body::{BoxError, Inbound};
use crate::connection::{ShowsClose, Watched};
use crate::park::Answer;
use crate::upstream::PassedLines;
use crate::upstream::names::header_name;
// A `content-length` value: one plain decimal number (anything else goes to hyper, which refuses it).
use crate::upstream::decimal;

/// Room for a request's head and body, read at once: a head that does not fit goes to hyper (whose limit is
/// `server.max_header_bytes`).
pub const READ_SIZE: usize = 8 * 1024;
/// Heads with more lines go to hyper (which allows 100).
pub const MAX_HEADERS: usize = 32;
/// Response bytes gathered before they are written; a body frame this large is written on its own.
const WRITE_BATCH: usize = 16 * 1024;

/// How the lane left its connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// Closed (by the client, an error, `connection: close` or the drain).
    Closed,
    /// The bytes read so far are given back to the connection: hyper serves it now.
    HandedOver,
    /// Closed because the client read none of a response for `server.idle_timeout`.
    Stalled,
}

/// A request parsed from the read bytes, or why not. (Returned once per request and taken apart at once: boxing the
/// request would cost an allocation for nothing.)
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A whole request; `closing` when it asked to close the connection.
    Request { req: Request<Inbound>, closing: bool },
    /// More bytes are needed for the head.
    Partial,
    /// For hyper.
    Hyper,
}

/// Serves requests on `io` until the connection closes or a request is handed to hyper. `buf` holds bytes read
/// but not used yet (none when the lane starts or stops; the caller keeps it so that a deadline that ends the
/// lane's future loses no byte).
pub async fn serve<T, S>(
    io: &mut Watched<T>,
    buf: &mut BytesMut,
    service: &S,
    drain: impl Future<Output = ()>,
    idle_timeout: Duration,
) -> Left
where
    T: AsyncRead + AsyncWrite + ShowsClose + Unpin,
    S: Answer,
    S::Body: HttpBody<Data = Bytes> + PassedLines,
    <S::Body as HttpBody>::Error: Into<BoxError>,
{
    let mut drain = Drain { wait: pin!(drain), seen: false };
    // Kept from one request to the next, as hyper keeps them: the response head's buffer, and the last response's
    // header map (cleared) for the next request's headers.
    let (mut out, mut spare) = (Vec::new(), None);
    loop {
        let (req, mut closing) = loop {
            if !buf.is_empty() {
                match parse(buf, &mut spare) {
                    Parsed::Request { req, closing } => break (req, closing),
                    Parsed::Partial if buf.len() < READ_SIZE => {}
                    Parsed::Partial | Parsed::Hyper => {
                        give_back(io, buf);
                        return Left::HandedOver;
                    }
                }
            }
            match poll_fn(|cx| read(io, buf, &mut drain, cx)).await {
                Read::Bytes => {}
                Read::End => return Left::Closed,
                Read::Drained => {
                    let _ = io.shutdown().await;
                    return Left::Closed;
                }
            }
        };
        // Bytes of a next request (here or given back to the connection) are not an end: no look for one then.
        let mut look_for_close = T::SHOWS_CLOSE && buf.is_empty() && !io.has_unread();
        let answered = {
            // Made in place (a future passed to a helper `async fn` would be moved once more).
            let mut answering = pin!(service.answer(req));
            poll_fn(|cx| poll_answer(&*io, answering.as_mut(), &mut look_for_close, cx)).await
        };
        let Some(res) = answered else {
            return Left::Closed; // the client went away: the request is abandoned
        };
        closing |= poll_fn(|cx| Poll::Ready(drain.poll(cx))).await;
        let written = respond(io, res, closing, &mut look_for_close, &mut out, idle_timeout).await;
        if out.capacity() > READ_SIZE {
            out = Vec::new(); // a large response's buffer is not kept
        }
        match written {
            Ok((true, mut headers)) => {
                headers.clear();
                spare = Some(headers);
            }
            Ok((false, _)) => {
                let _ = io.shutdown().await;
                return Left::Closed;
            }
            Err(e) if e.get_ref().is_some_and(|e| e.is::<Stall>()) => return Left::Stalled,
            Err(e) => {
                tracing::debug!(error = %e, "writing a response failed: connection closed");
                return Left::Closed;
            }
        }
    }
}

/// The drain signal's wait, polled until it is seen (an `async fn`'s future must not be polled after it ended).
struct Drain<'a, F> {
    wait: Pin<&'a mut F>,
    seen: bool,
}

impl<F: Future<Output = ()>> Drain<'_, F> {
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.seen && self.wait.as_mut().poll(cx).is_ready() {
            self.seen = true;
        }
        self.seen
    }
}

enum Read {
    Bytes,
    /// The client closed, or the read failed.
    End,
    /// The drain signal came while no request was begun.
    Drained,
}

/// Reads into `buf` (which is short of [`READ_SIZE`]); waits for bytes, or for the drain while nothing is buffered.
fn read<T: AsyncRead + Unpin, F: Future<Output = ()>>(
    io: &mut Watched<T>,
    buf: &mut BytesMut,
    drain: &mut Drain<'_, F>,
    cx: &mut Context<'_>,
) -> Poll<Read> {
    let room = READ_SIZE - buf.len();
    buf.reserve(room);
    // At most `room`: `reserve` may make more (a head is held to READ_SIZE, and its offsets to `u16`).
    match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut bytes::BufMut::limit(&mut *buf, room)) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Read::End),
        Poll::Ready(Ok(_)) => Poll::Ready(Read::Bytes),
        Poll::Pending if buf.is_empty() && drain.poll(cx) => Poll::Ready(Read::Drained),
        Poll::Pending => Poll::Pending,
    }
}

/// Gives the bytes read so far (if any) back to the connection, to be read first by whoever reads next (hyper, or
/// the lane after a parking pause), and lets the buffer go.
pub fn give_back<T>(io: &mut Watched<T>, buf: &mut BytesMut) {
    if !buf.is_empty() {
        io.unread(buf.split().freeze());
    }
    *buf = BytesMut::new();
}

/// Parses the request at the start of `buf`; a whole one (head and body) is split off it. Its headers go into
/// `spare` when there is one.
fn parse(buf: &mut BytesMut, spare: &mut Option<HeaderMap>) -> Parsed {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut []);
    let len = match head.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    if head.version != Some(1) {
        return Parsed::Hyper;
    }
    let method = match head.method.map(str::as_bytes) {
        Some(b"GET") => Method::GET,
        Some(b"POST") => Method::POST,
        Some(b"PUT") => Method::PUT,
        Some(b"DELETE") => Method::DELETE,
        Some(b"HEAD" | b"CONNECT") | None => return Parsed::Hyper,
        Some(other) => match Method::from_bytes(other) {
            Ok(m) => m,
            Err(_) => return Parsed::Hyper,
        },
    };
    let (mut length, mut closing) = (None, false);
    for line in head.headers.iter() {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match decimal(line.value) {
                Some(n) if length.is_none() => length = Some(n),
                _ => return Parsed::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in line.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    closing = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Hyper;
                }
            }
        } else if [&b"transfer-encoding"[..], b"expect", b"upgrade", b"te"].iter().any(|h| name.eq_ignore_ascii_case(h))
        {
            return Parsed::Hyper;
        }
    }
    let body_len = usize::try_from(length.unwrap_or(0)).unwrap_or(usize::MAX);
    if buf.len() - len < body_len {
        // The body is still coming: hyper reads it (the head is complete, so the header timeout is over).
        return Parsed::Hyper;
    }
    debug_assert!(buf.len() <= READ_SIZE && READ_SIZE <= usize::from(u16::MAX));
    let path = head.path.unwrap_or_default();
    let (path_at, lines_len) = (path.as_ptr() as usize - buf.as_ptr() as usize, head.headers.len());
    let (path_len, path_is_origin) = (path.len(), path.starts_with('/'));
    // The lines as offsets into the head, so that the head can be split off and frozen (its bytes are then shared
    // by the header values without a copy).
    // (`u16`: a head is shorter than `READ_SIZE`; the array is small to clear.)
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    for (span, line) in spans.iter_mut().zip(head.headers.iter()) {
        let at = |s: &[u8]| (s.as_ptr() as usize - buf.as_ptr() as usize) as u16;
        *span = (at(line.name.as_bytes()), line.name.len() as u16, at(line.value), line.value.len() as u16);
    }
    let bytes = buf.split_to(len).freeze();
    let body = buf.split_to(body_len).freeze();
    let uri = if path_is_origin {
        Uri::from_maybe_shared(bytes.slice(path_at..path_at + path_len))
    } else {
        Uri::try_from(&bytes[path_at..path_at + path_len])
    };
    let Ok(uri) = uri else { return unparse(buf, bytes, body) };
    let mut headers = spare.take().unwrap_or_default();
    // Room for the lines the gateway adds (`x-request-id`, forwarding lines) too.
    headers.reserve(lines_len + 4);
    for &(name_at, name_len, value_at, value_len) in &spans[..lines_len] {
        let (name_at, name_len, value_at, value_len) =
            (usize::from(name_at), usize::from(name_len), usize::from(value_at), usize::from(value_len));
        let Ok(name) = header_name(&bytes[name_at..name_at + name_len]) else { return unparse(buf, bytes, body) };
        let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice(value_at..value_at + value_len)) else {
            return unparse(buf, bytes, body);
        };
        headers.append(name, value);
    }
    let mut req = Request::new(Inbound::read(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request { req, closing }
}

/// Puts a request split off `buf` back in front of the rest, for hyper (which will refuse it).
fn unparse(buf: &mut BytesMut, head: Bytes, body: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + body.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&body);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Hyper
}

/// The service's answer; `None` when the client closed the connection first (looked for while `look_for_close`,
/// i.e. nothing of a next request is buffered).
fn poll_answer<T, F, B>(
    io: &Watched<T>,
    answer: Pin<&mut F>,
    look_for_close: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Response<B>>>
where
    T: ShowsClose,
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    if let Poll::Ready(Ok(res)) = answer.poll(cx) {
        return Poll::Ready(Some(res));
    }
    if closed(io, look_for_close, cx) { Poll::Ready(None) } else { Poll::Pending }
}

/// Whether the client closed the connection, looked for while `look` (registering the task for it); bytes waiting
/// instead (a next request, not an end) turn the look off for the rest of the request.
fn closed<T: ShowsClose>(io: &Watched<T>, look: &mut bool, cx: &mut Context<'_>) -> bool {
    if !*look {
        return false;
    }
    match io.get_ref().poll_closed(cx) {
        Poll::Ready(true) => true,
        Poll::Ready(false) => {
            *look = false;
            false
        }
        Poll::Pending => false,
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes `res`, its head gathered in `out`; `Ok(true, …)` when the connection stays open for the next request,
/// with the response's header map (for the next request's headers). While it waits for body frames, the client's
/// close is looked for when `look_for_close` (nothing of a next request is buffered), as while it waited for `res`.
///
/// The body is dropped (which marks the request finished) as soon as its last frame is taken, before the last
/// write: a client that does not read its responses then meets the idle timeout (`connection::Watch`, with the
/// write blocked), as under hyper, rather than holding its connection for ever.
async fn respond<T, B>(
    io: &mut Watched<T>,
    res: Response<B>,
    mut closing: bool,
    look_for_close: &mut bool,
    out: &mut Vec<u8>,
    stall: Duration,
) -> std::io::Result<(bool, HeaderMap)>
where
    T: AsyncWrite + ShowsClose + Unpin,
    B: HttpBody<Data = Bytes> + PassedLines,
    B::Error: Into<BoxError>,
{
    let (parts, body) = res.into_parts();
    let mut body = pin!(Some(body));
    let mut status = parts.status;
    if status.is_informational() {
        // Not a final answer (hyper turns it into a 500 and closes, as here).
        (status, closing) = (StatusCode::INTERNAL_SERVER_ERROR, true);
        body.set(None);
    }
    let framing = match body.as_mut().as_pin_mut() {
        None => Framing::Length(0),
        Some(_) if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED => Framing::None,
        Some(b) => match b.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => match parts.headers.get(header::CONTENT_LENGTH).and_then(|v| decimal(v.as_bytes())) {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            },
        },
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) if status == parts.status => out.extend_from_slice(reason.as_bytes()),
        _ => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    // An upstream's lines kept as bytes (`upstream::Lines`): none of them is one written below from the framing.
    if let Some(lines) = body.as_ref().as_pin_ref().and_then(|b| b.get_ref().lines()) {
        lines.write_to(out);
        dated = lines.dated();
    }
    // A 204 carries no length; a 304 keeps the one it was given (that of the body it stands for).
    let keep_length = status == StatusCode::NOT_MODIFIED;
    for (name, value) in &parts.headers {
        if (name == header::CONTENT_LENGTH && !keep_length) || name == header::TRANSFER_ENCODING {
            continue; // written below, from the framing
        }
        if name == header::CONNECTION
            && value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            closing = true;
            continue; // written below
        }
        dated |= name == header::DATE;
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => line(out, b"content-length", itoa::Buffer::new().format(n).as_bytes()),
        Framing::Chunked => line(out, b"transfer-encoding", b"chunked"),
    }
    if closing {
        line(out, b"connection", b"close");
    }
    if !dated {
        DATE.with_borrow_mut(|date| line(out, b"date", date.now()));
    }
    out.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    while let Some(mut b) = body.as_mut().as_pin_mut() {
        if framing == Framing::None || b.is_end_stream() {
            body.set(None);
            break;
        }
        // A frame ready now joins what is gathered; before waiting for one, the gathered bytes go out.
        let frame = match poll_fn(|cx| Poll::Ready(b.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                write(io, out, stall).await?;
                out.clear();
                next_frame(io, b, &mut *look_for_close).await?
            }
        };
        let data = match frame {
            None => {
                body.set(None);
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: not sent (no request here asked for them with `te`)
            },
            Some(Err(e)) => return Err(std::io::Error::other(e.into())),
        };
        sent += data.len() as u64;
        if let Framing::Length(n) = framing
            && sent > n
        {
            return Err(std::io::Error::other("response body longer than its content-length"));
        }
        let chunked = framing == Framing::Chunked && !data.is_empty();
        if chunked {
            let mut hex = [0u8; 16];
            out.extend_from_slice(hex_len(data.len(), &mut hex));
            out.extend_from_slice(b"\r\n");
        }
        if data.len() >= WRITE_BATCH {
            write(io, out, stall).await?;
            out.clear();
            write(io, &data, stall).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_BATCH {
            write(io, out, stall).await?;
            out.clear();
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(n) if sent < n => {
            write(io, out, stall).await?;
            return Err(std::io::Error::other("response body shorter than its content-length"));
        }
        _ => {}
    }
    write(io, out, stall).await?;
    Ok((!closing, parts.headers))
}

/// Writes `bytes`; a write that makes no progress for `stall` (the idle timeout: the client reads nothing) fails with
/// `TimedOut`. A write that goes through at once, as nearly all do, arms no timer.
async fn write<T: AsyncWrite + ShowsClose + Unpin>(
    io: &mut Watched<T>,
    bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    let mut at = 0;
    let blocked = poll_fn(|cx| {
        while at < bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &bytes[at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Ready(Ok(true)),
            }
        }
        Poll::Ready(Ok(false))
    })
    .await?;
    if !blocked {
        return Ok(());
    }
    let mut rest = &bytes[at..];
    while !rest.is_empty() {
        match tokio::time::timeout(stall, io.write(rest)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, Stall)),
        }
    }
    Ok(())
}

/// A write that made no progress for the idle timeout (told apart from the socket's own `ETIMEDOUT`).
#[derive(Debug, thiserror::Error)]
#[error("the client read none of its answer for the idle timeout")]
struct Stall;

/// The body's next frame, waited for; with `look_for_close`, a client that closed meanwhile ends the wait with an
/// error (its upstream stream is dropped with the body).
async fn next_frame<T, B>(
    io: &Watched<T>,
    mut body: Pin<&mut B>,
    look_for_close: &mut bool,
) -> std::io::Result<Option<Result<http_body::Frame<Bytes>, B::Error>>>
where
    T: ShowsClose,
    B: HttpBody<Data = Bytes>,
{
    poll_fn(|cx| {
        if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
            return Poll::Ready(Ok(frame));
        }
        if closed(io, look_for_close, cx) {
            let gone = "the client closed the connection while its response was streaming";
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, gone)));
        }
        Poll::Pending
    })
    .await
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lowercase hex, without leading zeros.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

thread_local! {
    /// The `date` of responses that carry none, made once a second per thread (as hyper does).
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { text: [0; 29], next: None }) };
}

struct CachedDate {
    text: [u8; 29],
    /// When the text is to be made again: the next second.
    next: Option<Instant>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = crate::clock::now();
        if self.next.is_none_or(|next| now >= next) {
            let wall = SystemTime::now();
            let into_second = wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            self.text.copy_from_slice(httpdate::fmt_http_date(wall).as_bytes());
            self.next = Some(now + Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw);
        (parse(&mut buf, &mut None), buf)
    }

    #[test]
    fn a_plain_request_is_parsed_and_split_off() {
        let (p, rest) = parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Id: 7\r\n\r\nGET /next");
        let Parsed::Request { req, closing } = p else { panic!("not parsed") };
        assert!(!closing);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers()["x-id"], "7");
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn a_body_read_whole_goes_with_its_request() {
        let (p, rest) = parsed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloX");
        let Parsed::Request { req, closing } = p else { panic!("not parsed") };
        assert!(closing);
        assert!(matches!(req.body(), Inbound::Read(Some(b)) if b == "hello"));
        assert_eq!(&rest[..], b"X");
    }

    #[test]
    fn an_unfinished_head_waits_and_an_unfinished_body_goes_to_hyper() {
        assert!(matches!(parsed(b"GET / HTTP/1.1\r\nHost: x\r\n").0, Parsed::Partial));
        assert!(matches!(parsed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel").0, Parsed::Hyper));
    }

    #[test]
    fn what_hyper_handles_goes_to_hyper_untouched() {
        for raw in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET http://[::1 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            let (p, rest) = parsed(raw);
            assert!(matches!(p, Parsed::Hyper), "{}", String::from_utf8_lossy(raw));
            assert_eq!(&rest[..], raw, "bytes kept for hyper");
        }
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..], &b"X: y\r\n".repeat(MAX_HEADERS + 1), b"\r\n"].concat();
        assert!(matches!(parsed(&many).0, Parsed::Hyper));
        let big = [&b"POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n"[..], b"x"].concat();
        assert!(matches!(parsed(&big).0, Parsed::Hyper));
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut b = [0u8; 16];
        assert_eq!(hex_len(0, &mut b), b"0");
        assert_eq!(hex_len(255, &mut b), b"ff");
        assert_eq!(hex_len(0x1000, &mut b), b"1000");
    }

    #[test]
    fn the_date_is_an_http_date() {
        let text = DATE.with_borrow_mut(|d| d.now().to_vec());
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&text).unwrap()).unwrap();
        assert!(parsed.elapsed().unwrap_or_default() < Duration::from_secs(5));
    }
}

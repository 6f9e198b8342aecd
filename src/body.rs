//! The body types on both sides of the gateway: what is sent upstream (replayable when small, streamed when
//! large) and what is answered to the client (a gateway-made body or the upstream's, streamed through).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::upstream::{AnswerBody, InFlight, Reusable};

/// Boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies up to this size are buffered so that a retry can send them again.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A response body sent to the client.
#[derive(Debug, Default)]
pub enum Body {
    /// Nothing.
    #[default]
    Empty,
    /// Bytes made by the gateway (problem documents, admin answers, publish receipts).
    Full(Option<Bytes>),
    /// Chunks made by the gateway as they come (Confluent v3's streamed delivery reports); ends when the sender
    /// is dropped.
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
    /// The upstream's body, streamed; the guard keeps the request counted as in flight until it ends.
    Upstream {
        /// The upstream response body.
        inner: AnswerBody,
        /// Released when the body is finished or dropped.
        guard: InFlight,
        /// The connection, returned to its pool when the body ends (closed if the body is dropped early).
        conn: Option<Reusable>,
    },
}

impl Body {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }

    /// The bytes of a gateway-made body not yet sent.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Body::Full(b) => b.as_ref(),
            _ => None,
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Channel(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
            Body::Upstream { inner, conn, .. } => {
                let frame = Pin::new(&mut *inner).poll_frame(cx);
                if (matches!(frame, Poll::Ready(None)) || inner.is_end_stream())
                    && let Some(conn) = conn.take()
                {
                    conn.release();
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Channel(_) => false,
            Body::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Channel(_) => SizeHint::default(),
            Body::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A request body as it comes from the client: hyper's stream, or bytes the fast lane (`lane`) read whole with the
/// request's head.
#[derive(Debug)]
pub enum Inbound {
    /// Read by hyper as it arrives.
    Hyper(Incoming),
    /// Read whole already (`None` once taken, or for no body).
    Read(Option<Bytes>),
}

impl Inbound {
    /// A body read whole: its bytes, without a copy.
    pub fn read(bytes: Bytes) -> Inbound {
        Inbound::Read((!bytes.is_empty()).then_some(bytes))
    }
}

impl HttpBody for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inbound::Read(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(body) => body.is_end_stream(),
            Inbound::Read(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(body) => body.size_hint(),
            Inbound::Read(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The client's body, still unread, capped at `server.max_body`.
struct Source {
    prefix: Option<Bytes>,
    rest: Limited<Inbound>,
}

/// A request body sent upstream.
#[derive(Debug)]
pub enum OutBody {
    /// Nothing.
    Empty,
    /// A buffered body (replayable: each attempt gets a clone).
    Full(Option<Bytes>),
    /// A large body streamed from the client; it can be handed to another attempt only while unread.
    Stream(StreamBody),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source")
    }
}

/// A streamed request body. Attempts share a slot; the first poll takes the source out of it, so a connect
/// failure (nothing polled) leaves it for the next attempt.
#[derive(Debug)]
pub struct StreamBody {
    slot: Arc<Mutex<Option<SourceHandle>>>,
    taken: Option<Source>,
    hint: SizeHint,
}

/// A request body ready for forwarding.
#[derive(Debug)]
pub enum Prepared {
    /// Replayable bytes (possibly empty).
    Buffered(Bytes),
    /// A streamed body; replayable only until an attempt reads it.
    Streamed {
        /// Shared source.
        slot: Arc<Mutex<Option<SourceHandle>>>,
        /// Size hint (content-length when known).
        hint: SizeHint,
        /// `server.max_body`, enforced while the body streams.
        limit: u64,
    },
}

/// Opaque handle to the unread client body (kept private to this module).
#[derive(Debug)]
pub struct SourceHandle(Source);

impl Prepared {
    /// A body for one attempt, or `None` when a streamed body was already read by an earlier attempt.
    pub fn attempt(&self) -> Option<OutBody> {
        match self {
            Prepared::Buffered(b) if b.is_empty() => Some(OutBody::Empty),
            Prepared::Buffered(b) => Some(OutBody::Full(Some(b.clone()))),
            Prepared::Streamed { slot, hint, .. } => {
                if slot.lock().expect("body slot").is_none() {
                    return None;
                }
                Some(OutBody::Stream(StreamBody { slot: slot.clone(), taken: None, hint: *hint }))
            }
        }
    }

    /// Whether another attempt could send this body again.
    pub fn replayable(&self) -> bool {
        match self {
            Prepared::Buffered(_) => true,
            Prepared::Streamed { slot, .. } => slot.lock().expect("body slot").is_some(),
        }
    }

    /// The size limit a streamed body is held to (`u64::MAX` for a buffered one, which is read already).
    pub fn limit(&self) -> u64 {
        match self {
            Prepared::Buffered(_) => u64::MAX,
            Prepared::Streamed { limit, .. } => *limit,
        }
    }

    /// The buffered bytes, if the body was buffered.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Prepared::Buffered(b) => Some(b),
            Prepared::Streamed { .. } => None,
        }
    }
}

/// Why the request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadBodyError {
    /// Larger than `server.max_body`.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The client went away or sent garbage.
    #[error("reading the request body failed: {0}")]
    Broken(BoxError),
}

/// Reads the client's body: buffered when it is at most `REPLAY_LIMIT` (or `buffer_all`, up to `max_body`),
/// otherwise left to stream.
pub async fn prepare(body: Inbound, max_body: u64, buffer_all: bool, stream: bool) -> Result<Prepared, ReadBodyError> {
    let hint = body.size_hint();
    if hint.lower() > max_body {
        return Err(ReadBodyError::TooLarge(max_body));
    }
    if body.is_end_stream() || hint.upper() == Some(0) {
        return Ok(Prepared::Buffered(Bytes::new()));
    }
    let mut limited = Limited::new(body, max_body as usize);
    let buffer_limit = if buffer_all { max_body } else { REPLAY_LIMIT };
    if buffer_all || hint.upper().is_some_and(|n| n <= REPLAY_LIMIT) {
        return collect(limited, max_body).await;
    }
    if hint.upper().is_some() || stream {
        let slot = Arc::new(Mutex::new(Some(SourceHandle(Source { prefix: None, rest: limited }))));
        return Ok(Prepared::Streamed { slot, hint, limit: max_body });
    }
    // Unknown length (chunked): read up to the replay limit; a short body becomes replayable.
    let mut prefix = bytes::BytesMut::new();
    loop {
        match limited.frame().await {
            None => return Ok(Prepared::Buffered(prefix.freeze())),
            Some(Err(e)) => return Err(body_error(e, max_body)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    prefix.extend_from_slice(&data);
                }
                if prefix.len() as u64 > buffer_limit {
                    let source = Source { prefix: Some(prefix.freeze()), rest: limited };
                    let slot = Arc::new(Mutex::new(Some(SourceHandle(source))));
                    return Ok(Prepared::Streamed { slot, hint: SizeHint::default(), limit: max_body });
                }
            }
        }
    }
}

async fn collect(limited: Limited<Inbound>, max_body: u64) -> Result<Prepared, ReadBodyError> {
    limited.collect().await.map(|c| Prepared::Buffered(c.to_bytes())).map_err(|e| body_error(e, max_body))
}

fn body_error(e: BoxError, max_body: u64) -> ReadBodyError {
    if e.is::<http_body_util::LengthLimitError>() {
        ReadBodyError::TooLarge(max_body)
    } else {
        ReadBodyError::Broken(e)
    }
}

/// Whether an error from forwarding was the client's body exceeding `max_body`.
pub fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl HttpBody for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            OutBody::Empty => Poll::Ready(None),
            OutBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Stream(s) => {
                if s.taken.is_none() {
                    let taken = s.slot.lock().expect("body slot").take().map(|SourceHandle(src)| src);
                    match taken {
                        Some(src) => s.taken = Some(src),
                        None => {
                            return Poll::Ready(Some(Err("request body already consumed".into())));
                        }
                    }
                }
                let src = s.taken.as_mut().expect("taken above");
                if let Some(prefix) = src.prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(&mut src.rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Empty => true,
            OutBody::Full(b) => b.is_none(),
            OutBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Empty => SizeHint::with_exact(0),
            OutBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OutBody::Stream(s) => s.hint,
        }
    }
}

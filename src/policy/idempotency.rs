//! `Idempotency-Key` for publish routes: the first request with a key publishes; repeats within the window get
//! the first answer again (with `idempotent-replayed: true`) and publish nothing; a repeat while the first is
//! still in flight gets 409. A first request that fails, or whose client goes away, releases its key so that a
//! retry is processed. Bounded by a window and a capacity; time is tokio's so tests can pause it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::{Body, Prepared};
use crate::problem::{AnswerFuture, GatewayError};
use crate::request::IDEMPOTENCY_KEY;

static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Runs a route's action under its [`IdempotencyStore`].
#[derive(Clone, Debug)]
pub struct IdempotencyLayer(Arc<IdempotencyStore>);

impl IdempotencyLayer {
    /// A layer over `store`.
    pub fn new(store: Arc<IdempotencyStore>) -> IdempotencyLayer {
        IdempotencyLayer(store)
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;

    fn layer(&self, inner: S) -> Idempotent<S> {
        Idempotent { store: self.0.clone(), inner }
    }
}

/// An action behind an [`IdempotencyStore`].
#[derive(Clone, Debug)]
pub struct Idempotent<S> {
    store: Arc<IdempotencyStore>,
    inner: S,
}

impl<S> Service<Request<Prepared>> for Idempotent<S>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Prepared>) -> AnswerFuture {
        let key = match req.headers().get(&IDEMPOTENCY_KEY).map(HeaderValue::to_str) {
            None => return Box::pin(self.inner.call(req)),
            Some(Ok(key)) => key.to_owned(),
            Some(Err(_)) => {
                let e = GatewayError::BadRequest("Idempotency-Key must be text".into());
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        match self.store.begin(&key) {
            Begin::InFlight => Box::pin(std::future::ready(Err(GatewayError::IdempotencyConflict))),
            Begin::Replay(stored) => Box::pin(std::future::ready(Ok(replay(stored)))),
            Begin::New => {
                // Released if this future is dropped (client gone) or the action fails.
                let claim = Claim { store: self.store.clone(), key };
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let response = answer.await?;
                    if response.status().is_success()
                        && let Some(body) = response.body().bytes()
                    {
                        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
                        claim.complete(Stored { status: response.status().as_u16(), body: body.clone(), content_type });
                    }
                    Ok(response)
                })
            }
        }
    }
}

fn replay(stored: Stored) -> Response<Body> {
    let mut res = Response::new(Body::full(stored.body));
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    if let Some(ct) = stored.content_type {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    res.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    res
}

/// A key this request started: completed with the answer, or released when dropped unanswered.
struct Claim {
    store: Arc<IdempotencyStore>,
    key: String,
}

impl Claim {
    fn complete(self, answer: Stored) {
        self.store.complete(&self.key, answer);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // No-op after `complete`: `abort` only removes keys still in flight.
        self.store.abort(&self.key);
    }
}

/// A stored answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Status of the first answer.
    pub status: u16,
    /// Body of the first answer (JSON).
    pub body: Bytes,
    /// Its `content-type`.
    pub content_type: Option<HeaderValue>,
}

/// What to do with a request carrying a key.
#[derive(Debug, PartialEq)]
pub enum Begin {
    /// First time (or expired): go ahead, then `complete` or `abort`.
    New,
    /// Seen before: answer this again.
    Replay(Stored),
    /// The first request with this key has not been answered yet.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    started: Instant,
    answer: Option<(Instant, Stored)>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Keys in the order they were started, with the start time (stale records are skipped).
    order: VecDeque<(String, Instant)>,
}

/// One route's remembered keys.
#[derive(Debug)]
pub struct IdempotencyStore {
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl IdempotencyStore {
    /// A store remembering at most `capacity` keys for `window` each.
    pub fn new(window: Duration, capacity: usize) -> IdempotencyStore {
        IdempotencyStore { window, capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    /// `(window, capacity)`, to tell whether a reload changed them.
    pub fn settings(&self) -> (Duration, usize) {
        (self.window, self.capacity)
    }

    /// Looks `key` up and, when it is new, marks it in flight.
    pub fn begin(&self, key: &str) -> Begin {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("idempotency lock");
        self.evict(&mut inner, now);
        match inner.entries.get(key) {
            Some(Entry { answer: None, .. }) => return Begin::InFlight,
            Some(Entry { answer: Some((at, answer)), .. }) if now.duration_since(*at) < self.window => {
                return Begin::Replay(answer.clone());
            }
            _ => {}
        }
        inner.entries.insert(key.to_owned(), Entry { started: now, answer: None });
        inner.order.push_back((key.to_owned(), now));
        Begin::New
    }

    /// Records the answer to the first request with `key`.
    pub fn complete(&self, key: &str, answer: Stored) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if let Some(e) = inner.entries.get_mut(key) {
            e.answer = Some((Instant::now(), answer));
        }
    }

    /// Forgets `key` (the first request failed: nothing was published, the client may try again).
    pub fn abort(&self, key: &str) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if inner.entries.get(key).is_some_and(|e| e.answer.is_none()) {
            inner.entries.remove(key);
        }
    }

    /// Drops keys older than the window, then the oldest ones while over capacity. A key still in flight is
    /// kept (capacity may be exceeded by requests in flight only).
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((key, started)) = inner.order.front() {
            let expired = now.duration_since(*started) >= self.window;
            if !expired && inner.entries.len() < self.capacity {
                break;
            }
            let entry = inner.entries.get(key).filter(|e| e.started == *started);
            let current = entry.is_some();
            if entry.is_some_and(|e| e.answer.is_none()) && !expired {
                break;
            }
            let (key, _) = inner.order.pop_front().expect("front exists");
            if current {
                inner.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: u8) -> Stored {
        Stored { status: 202, body: Bytes::from(vec![n]), content_type: None }
    }

    #[tokio::test(start_paused = true)]
    async fn replays_within_the_window_and_forgets_after() {
        let s = IdempotencyStore::new(Duration::from_secs(60), 10);
        assert_eq!(s.begin("k"), Begin::New);
        assert_eq!(s.begin("k"), Begin::InFlight);
        s.complete("k", answer(1));
        assert_eq!(s.begin("k"), Begin::Replay(answer(1)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.begin("k"), Begin::New, "expired keys publish again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_request_can_be_retried_with_the_same_key() {
        let s = IdempotencyStore::new(Duration::from_secs(60), 10);
        assert_eq!(s.begin("k"), Begin::New);
        s.abort("k");
        assert_eq!(s.begin("k"), Begin::New);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_bounds_the_keys_remembered() {
        let s = IdempotencyStore::new(Duration::from_secs(60), 3);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(s.begin(k), Begin::New);
            s.complete(k, answer(0));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(s.begin("a"), Begin::New, "oldest key was evicted");
        assert_eq!(s.begin("d"), Begin::Replay(answer(0)));
        assert!(s.inner.lock().unwrap().entries.len() <= 3);
    }
}

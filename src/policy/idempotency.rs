//! `Idempotency-Key` for publish routes: the first request with a key publishes; repeats within the window get
//! the first answer again (with `idempotent-replayed: true`) and publish nothing; a repeat while the first is
//! still in flight gets 409. A first request that fails, or whose client goes away, releases its key so that a
//! retry is processed. Bounded by a window and a capacity; time is tokio's so tests can pause it.
//!
//! Memory is bounded whatever clients send: a key is at most [`MAX_KEY_LEN`] bytes (longer: 400), a failed
//! request's key leaves the store at once, and `capacity` bounds every entry, those in flight included (when every
//! slot holds a request still in flight, a new key is answered 503). Completed keys are evicted oldest first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::{Body, Prepared};
use crate::problem::{AnswerFuture, GatewayError};
use crate::request::IDEMPOTENCY_KEY;
use crate::store::Store;

static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest `Idempotency-Key` accepted, in bytes (the IETF draft's keys are UUIDs; Stripe allows 255).
pub const MAX_KEY_LEN: usize = 255;

/// Where a route's keys are remembered.
#[derive(Clone, Debug)]
pub enum Keys {
    /// In this process ([`IdempotencyStore`]).
    Local(Arc<IdempotencyStore>),
    /// In the store every replica shares (`[store] kind = "redis"`), answers kept for `window`.
    Shared {
        /// The shared store.
        store: Arc<Store>,
        /// The route's name (keys are per route).
        route: Arc<str>,
        /// How long an answer is kept.
        window: Duration,
    },
}

/// Runs a route's action under its [`Keys`].
#[derive(Clone, Debug)]
pub struct IdempotencyLayer(Keys);

impl IdempotencyLayer {
    /// A layer over `keys`.
    pub fn new(keys: Keys) -> IdempotencyLayer {
        IdempotencyLayer(keys)
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;

    fn layer(&self, inner: S) -> Idempotent<S> {
        Idempotent { keys: self.0.clone(), inner }
    }
}

/// An action behind its route's [`Keys`].
#[derive(Clone, Debug)]
pub struct Idempotent<S> {
    keys: Keys,
    inner: S,
}

impl<S> Service<Request<Prepared>> for Idempotent<S>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
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
            Some(Ok(key)) if key.len() <= MAX_KEY_LEN => key.to_owned(),
            Some(Ok(_)) => {
                let e = GatewayError::BadRequest(format!("Idempotency-Key must be at most {MAX_KEY_LEN} bytes"));
                return Box::pin(std::future::ready(Err(e)));
            }
            Some(Err(_)) => {
                let e = GatewayError::BadRequest("Idempotency-Key must be text".into());
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        let store = match &self.keys {
            Keys::Local(store) => store,
            Keys::Shared { store, route, window } => {
                let token = uuid::Uuid::new_v4().simple().to_string();
                let (store, route, window) = (store.clone(), route.clone(), *window);
                let shared = SharedClaim { store, route, key, token, window, done: false };
                // The store answers first, so the call happens in the future: on a clone of the (always ready) action.
                let inner = self.inner.clone();
                return Box::pin(shared.run(inner, req));
            }
        };
        match store.begin(&key) {
            Begin::InFlight => Box::pin(std::future::ready(Err(GatewayError::IdempotencyConflict))),
            Begin::Full => Box::pin(std::future::ready(Err(GatewayError::IdempotencyFull))),
            Begin::Replay(stored) => Box::pin(std::future::ready(Ok(replay(stored)))),
            Begin::New => {
                // Released if this future is dropped (client gone) or the action fails.
                let claim = Claim { store: store.clone(), key };
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let response = answer.await?;
                    if let Some(stored) = storable(&response) {
                        claim.complete(stored);
                    }
                    Ok(response)
                })
            }
        }
    }
}

/// Put in a response's extensions by an action whose `200` may report failures inside (the drop-in produce APIs'
/// per-record errors): such an answer is not kept for the key, so that a retry publishes what failed.
#[derive(Clone, Copy, Debug)]
pub struct DoNotStore;

/// The answer to keep for a key: a success with its whole body in memory.
fn storable(response: &Response<Body>) -> Option<Stored> {
    if !response.status().is_success() || response.extensions().get::<DoNotStore>().is_some() {
        return None;
    }
    let body = response.body().bytes()?.clone();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    Some(Stored { status: response.status().as_u16(), body, content_type })
}

/// A key in the shared store: claimed, then completed with the answer, or released (in the background) when dropped
/// unanswered.
struct SharedClaim {
    store: Arc<Store>,
    route: Arc<str>,
    key: String,
    /// This request's claim: only it may complete or release the key.
    token: String,
    window: Duration,
    done: bool,
}

impl SharedClaim {
    async fn run<S>(mut self, mut inner: S, req: Request<Prepared>) -> Result<Response<Body>, GatewayError>
    where
        S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError>,
    {
        let begin = self.store.begin(&self.route, &self.key, &self.token).await;
        // Only a key this request claimed is released if it goes away.
        self.done = !matches!(begin, Ok(Begin::New));
        match begin {
            Ok(Begin::New) => {}
            Ok(Begin::InFlight) => return Err(GatewayError::IdempotencyConflict),
            Ok(Begin::Full) => return Err(GatewayError::IdempotencyFull),
            Ok(Begin::Replay(stored)) => return Ok(replay(stored)),
            Err(_) if self.store.fail_closed => return Err(GatewayError::StoreUnavailable),
            // Fail open: served without the shared check (counted in sluice_store_errors_total).
            Err(_) => return inner.call(req).await,
        }
        let response = inner.call(req).await?;
        if let Some(stored) = storable(&response) {
            // Not answered as failed if only the store failed now: the message is published.
            let _ = self.store.complete(&self.route, &self.key, &self.token, &stored, self.window).await;
            self.done = true;
        }
        Ok(response)
    }
}

impl Drop for SharedClaim {
    fn drop(&mut self) {
        if !self.done {
            let (store, route, key) = (self.store.clone(), self.route.clone(), std::mem::take(&mut self.key));
            let token = std::mem::take(&mut self.token);
            tokio::spawn(async move {
                let _ = store.abort(&route, &key, &token).await;
            });
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
    /// Every slot of the store holds a request still in flight: nothing can be remembered now.
    Full,
}

#[derive(Debug)]
enum Entry {
    /// The first request with the key is being processed.
    InFlight,
    /// Its answer, with when it was given.
    Done { at: Instant, answer: Stored },
}

#[derive(Debug, Default)]
struct Inner {
    /// Every remembered key, in flight or answered.
    entries: HashMap<Arc<str>, Entry>,
    /// Answered keys, oldest answer first (the order of eviction). In-flight keys are not in it, so a key
    /// released by a failed request leaves nothing behind.
    completed: BTreeMap<u64, Arc<str>>,
    /// Numbers the answers, in time order.
    next_seq: u64,
}

/// One route's remembered keys.
#[derive(Debug)]
pub struct IdempotencyStore {
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
    /// `sluice_idempotency_keys{route}`: entries held now.
    keys: Gauge,
}

impl IdempotencyStore {
    /// A store remembering at most `capacity` keys for `window` each, reporting its size in `keys`.
    pub fn new(window: Duration, capacity: usize, keys: Gauge) -> IdempotencyStore {
        keys.set(0);
        IdempotencyStore { window, capacity: capacity.max(1), inner: Mutex::new(Inner::default()), keys }
    }

    /// `(window, capacity)`, to tell whether a reload changed them.
    pub fn settings(&self) -> (Duration, usize) {
        (self.window, self.capacity)
    }

    /// Looks `key` up and, when it is new, marks it in flight.
    pub fn begin(&self, key: &str) -> Begin {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("idempotency lock");
        self.expire(&mut inner, now);
        match inner.entries.get(key) {
            Some(Entry::InFlight) => return Begin::InFlight,
            Some(Entry::Done { answer, .. }) => return Begin::Replay(answer.clone()),
            None => {}
        }
        // Make room: the oldest answers go first; keys in flight cannot be dropped.
        while inner.entries.len() >= self.capacity {
            let Some((_, oldest)) = inner.completed.pop_first() else {
                return Begin::Full;
            };
            inner.entries.remove(&oldest);
        }
        inner.entries.insert(Arc::from(key), Entry::InFlight);
        self.keys.set(inner.entries.len() as i64);
        Begin::New
    }

    /// Records the answer to the first request with `key`.
    pub fn complete(&self, key: &str, answer: Stored) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        let Some((key, entry)) = inner.entries.get_key_value(key) else { return };
        if !matches!(entry, Entry::InFlight) {
            return;
        }
        let key = key.clone();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.completed.insert(seq, key.clone());
        inner.entries.insert(key, Entry::Done { at: Instant::now(), answer });
    }

    /// Forgets `key` (the first request failed: nothing was published, the client may try again).
    pub fn abort(&self, key: &str) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if matches!(inner.entries.get(key), Some(Entry::InFlight)) {
            inner.entries.remove(key);
            self.keys.set(inner.entries.len() as i64);
        }
    }

    /// Drops the answers older than the window.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((_, key)) = inner.completed.first_key_value() {
            match inner.entries.get(key) {
                Some(Entry::Done { at, .. }) if now.duration_since(*at) < self.window => break,
                _ => {}
            }
            let (_, key) = inner.completed.pop_first().expect("first exists");
            inner.entries.remove(&key);
        }
        self.keys.set(inner.entries.len() as i64);
    }

    /// Entries held, and answers in the eviction order (each answered entry appears there exactly once).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.entries.len(), inner.completed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: u8) -> Stored {
        Stored { status: 202, body: Bytes::from(vec![n]), content_type: None }
    }

    fn store(window_secs: u64, capacity: usize) -> IdempotencyStore {
        IdempotencyStore::new(Duration::from_secs(window_secs), capacity, Gauge::default())
    }

    #[tokio::test(start_paused = true)]
    async fn replays_within_the_window_and_forgets_after() {
        let s = store(60, 10);
        assert_eq!(s.begin("k"), Begin::New);
        assert_eq!(s.begin("k"), Begin::InFlight);
        s.complete("k", answer(1));
        assert_eq!(s.begin("k"), Begin::Replay(answer(1)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.begin("k"), Begin::New, "expired keys publish again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_request_can_be_retried_with_the_same_key() {
        let s = store(60, 10);
        assert_eq!(s.begin("k"), Begin::New);
        s.abort("k");
        assert_eq!(s.begin("k"), Begin::New);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_bounds_the_keys_remembered() {
        let s = store(60, 3);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(s.begin(k), Begin::New);
            s.complete(k, answer(0));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(s.begin("a"), Begin::New, "oldest key was evicted");
        assert_eq!(s.begin("d"), Begin::Replay(answer(0)));
        assert!(s.sizes().0 <= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_requests_leave_nothing_behind() {
        let s = store(60, 100);
        for i in 0..10_000 {
            let key = format!("{i:0>200}");
            assert_eq!(s.begin(&key), Begin::New);
            s.abort(&key);
        }
        assert_eq!(s.sizes(), (0, 0), "no entry and no eviction record survives a failed request");
        assert_eq!(s.keys.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_bounds_keys_in_flight_too() {
        let s = store(60, 3);
        for k in ["a", "b", "c"] {
            assert_eq!(s.begin(k), Begin::New);
        }
        assert_eq!(s.begin("d"), Begin::Full, "three requests in flight fill a store of three");
        s.complete("a", answer(1));
        assert_eq!(s.begin("d"), Begin::New, "an answered key makes room");
        assert_eq!(s.begin("e"), Begin::Full);
        s.complete("b", answer(2));
        assert_eq!(s.begin("a"), Begin::New, "a was evicted for d, b makes room for it");
        assert_eq!(s.sizes(), (3, 0));
        assert_eq!(s.keys.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_request_does_not_stop_eviction_behind_it() {
        let s = store(60, 10);
        assert_eq!(s.begin("slow"), Begin::New);
        for i in 0..1000 {
            let key = i.to_string();
            assert_eq!(s.begin(&key), Begin::New);
            s.complete(&key, answer(0));
        }
        assert_eq!(s.sizes(), (10, 9), "capacity holds with an old key still in flight");
        assert_eq!(s.begin("slow"), Begin::InFlight);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.begin("999"), Begin::New, "answers expire after the window");
        assert_eq!(s.sizes(), (2, 0), "only the two in flight remain");
    }
}

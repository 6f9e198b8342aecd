//! `Idempotency-Key` for publish routes: the first request with a key publishes; repeats within the window get
//! the first answer again and publish nothing; a repeat while the first is still in flight gets 409. Bounded by
//! a window and a capacity; time is tokio's so tests can pause it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// A stored answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Status of the first answer.
    pub status: u16,
    /// Body of the first answer (JSON).
    pub body: Bytes,
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
        Stored { status: 202, body: Bytes::from(vec![n]) }
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

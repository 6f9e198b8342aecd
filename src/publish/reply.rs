//! Replies to requests sent through a broker (request-reply routes): a request waits under its correlation id (its
//! `sluice-id`) for the reply the broker's consumer hands in; a reply that nobody waits for any more (the request
//! timed out, or its client went away) is late, dropped and counted.
//!
//! The table holds one entry per waiting request and no more: a [`Waiter`] removes its entry when it is dropped,
//! whatever ends it, and each route bounds its waiting requests (`request_reply.max_pending`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

/// A reply as the responder sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The body, byte for byte.
    pub body: Bytes,
    /// Its content type (AMQP `content_type` property, Kafka `content-type` header).
    pub content_type: Option<String>,
    /// Its headers, names lower-cased, values as text.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The requests of one broker waiting for their replies.
#[derive(Debug, Default)]
pub struct Replies {
    waiting: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    /// `sluice_request_reply_late_total{broker}`, once the snapshot attached it.
    late: OnceLock<Counter>,
}

impl Replies {
    /// Starts waiting for the reply correlated with `id` (register before sending the request, so that a fast reply
    /// cannot arrive before anyone waits for it).
    pub fn wait(self: &Arc<Self>, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_owned(), tx);
        Waiter { replies: self.clone(), id: id.to_owned(), rx }
    }

    /// Hands `reply` to the request waiting under `id`; counts it as late when there is none.
    pub fn deliver(&self, id: Option<&str>, reply: Reply) {
        let waiting = id.and_then(|id| self.lock().remove(id));
        if waiting.is_none_or(|tx| tx.send(reply).is_err())
            && let Some(late) = self.late.get()
        {
            late.inc();
        }
    }

    /// Stops every wait at once (their [`Waiter::reply`] returns `None`): the way replies come back is gone.
    pub fn abandon_all(&self) {
        self.lock().clear();
    }

    /// Counts late replies in `counter` from now on (the first counter given stays).
    pub fn count_late_in(&self, counter: Counter) {
        let _ = self.late.set(counter);
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Reply>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request waiting for its reply; dropping it stops waiting.
#[derive(Debug)]
pub struct Waiter {
    replies: Arc<Replies>,
    id: String,
    rx: oneshot::Receiver<Reply>,
}

impl Waiter {
    /// The reply, once it arrives; `None` when the broker's consumer went away first (the connection was lost).
    pub async fn reply(&mut self) -> Option<Reply> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: &'static str) -> Reply {
        Reply { body: Bytes::from_static(body.as_bytes()), content_type: None, headers: Vec::new() }
    }

    #[tokio::test]
    async fn a_reply_reaches_its_own_request_and_late_ones_are_counted() {
        let replies = Arc::new(Replies::default());
        let late = Counter::default();
        replies.count_late_in(late.clone());
        let (mut a, mut b) = (replies.wait("a"), replies.wait("b"));
        replies.deliver(Some("b"), reply("for b"));
        replies.deliver(Some("a"), reply("for a"));
        assert_eq!(a.reply().await.unwrap().body, "for a");
        assert_eq!(b.reply().await.unwrap().body, "for b");
        replies.deliver(Some("a"), reply("again"));
        replies.deliver(Some("nobody"), reply("stray"));
        replies.deliver(None, reply("no id"));
        assert_eq!(late.get(), 3);
    }

    #[tokio::test]
    async fn abandoned_waits_end_without_a_reply() {
        let replies = Arc::new(Replies::default());
        let mut waiter = replies.wait("lost");
        replies.abandon_all();
        assert_eq!(waiter.reply().await, None);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_table() {
        let replies = Arc::new(Replies::default());
        let waiter = replies.wait("gone");
        assert_eq!(replies.len(), 1);
        drop(waiter);
        assert!(replies.is_empty());
        replies.deliver(Some("gone"), reply("late"));
        assert!(replies.is_empty());
    }
}

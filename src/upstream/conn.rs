//! One HTTP/1.1 connection to an upstream endpoint, driven by the task that uses it, and the response body that
//! drives it while the body streams.
//!
//! hyper's low-level client splits a connection in two: a [`SendRequest`] handle and a future that does the
//! reading and writing. The usual way spawns that future as a task of its own, so each request crosses tasks twice
//! (the request through a channel to the connection's task, the response back through a oneshot): two wake-ups and
//! two scheduler passes per request, often across threads. Here the future stays with its handle and is polled by
//! whoever uses the connection: the request's task while it waits for the response head, then [`UpstreamBody`]
//! while the server streams the body to the client. No other task is involved.
//!
//! An idle pooled connection is polled by nobody. Its next checkout polls it first: that is when a connection the
//! upstream closed meanwhile is found closed (and skipped, with the request handed back unsent). A protocol upgrade
//! (`101`) hands the future to a task of its own, which gives the connection to the splice.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::SendRequest;

use super::pool::Pool;
use crate::body::OutBody;

/// The reading-and-writing half of a connection (hyper's connection future, with upgrades; its type is unnameable).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// A connection: the handle that sends requests and the future that moves bytes (`None` once it has ended).
pub struct Conn {
    sender: SendRequest<OutBody>,
    driver: Option<Driver>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("ended", &self.driver.is_none()).finish()
    }
}

impl Conn {
    /// A connection from hyper's handshake.
    pub fn new(sender: SendRequest<OutBody>, driver: impl Future<Output = hyper::Result<()>> + Send + 'static) -> Conn {
        Conn { sender, driver: Some(Box::pin(driver)) }
    }

    /// Moves the connection's bytes as far as they go without waiting.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(ended) = driver.as_mut().poll(cx)
        {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            self.driver = None;
        }
    }

    /// Whether the connection can take no more requests.
    pub fn is_closed(&self) -> bool {
        self.driver.is_none() || self.sender.is_closed()
    }

    /// Waits until the connection can take a request; an error means it is closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        poll_fn(|cx| {
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await
    }

    /// Sends `req` and waits for the response head, driving the connection meanwhile. A request the connection
    /// never took comes back in the error.
    pub async fn send(&mut self, req: Request<OutBody>) -> Result<Response<Incoming>, TrySendError<Request<OutBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Lets the connection run on its own task: after a `101` it must be polled once more to hand its socket to
    /// the upgrade, whoever holds the response.
    pub fn detach(mut self) {
        if let Some(driver) = self.driver.take() {
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
        }
    }
}

/// A connection in use; given back to its pool once the response body has been read to the end (dropping it
/// closes the connection instead).
#[derive(Debug)]
pub struct Reusable {
    conn: Conn,
    pool: Arc<Pool>,
}

impl Reusable {
    /// A connection of `pool`, in use.
    pub fn new(conn: Conn, pool: Arc<Pool>) -> Reusable {
        Reusable { conn, pool }
    }

    /// Returns the connection to its pool.
    pub fn release(self) {
        if !self.conn.is_closed() {
            self.pool.put(self.conn);
        }
    }
}

/// An upstream's response body. For an HTTP/1.1 upstream it also drives the connection (the bytes of the body
/// arrive only when it is polled) and returns it to its pool at the end of the body.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Reusable>,
}

impl UpstreamBody {
    /// `inner`, arriving over `conn` (`None` for HTTP/2, whose connection runs on its own task). An empty body
    /// releases the connection at once: the server does not poll a body that is already finished.
    pub fn new(inner: Incoming, conn: Option<Reusable>) -> UpstreamBody {
        let mut body = UpstreamBody { inner, conn };
        body.release_at_end();
        body
    }

    fn release_at_end(&mut self) {
        if self.inner.is_end_stream()
            && let Some(conn) = self.conn.take()
        {
            conn.release();
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = Pin::new(&mut this.inner).poll_frame(cx);
        if frame.is_pending()
            && let Some(reusable) = &mut this.conn
        {
            reusable.conn.drive(cx);
            frame = Pin::new(&mut this.inner).poll_frame(cx);
        }
        if matches!(frame, Poll::Ready(None)) {
            if let Some(conn) = this.conn.take() {
                conn.release();
            }
        } else {
            this.release_at_end();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

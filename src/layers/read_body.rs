//! Reads the request body once, before any policy, so that webhook verification, templates (`{body./…}` in a
//! rate-limit key, hash key, topic) and the action all see the same bytes. A forward route whose policies need
//! no body streams a large body through (only up to 64 KiB is buffered, for retries); a route that needs it
//! reads it whole, up to `server.max_body`.
//!
//! A request without a body (most GETs) goes straight on: no future is boxed and the inner service is not
//! cloned. Every service below this layer is always ready (their state is shared and immutable), so a request
//! whose body had to be read first is handed to a clone of the inner service without waiting for readiness.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{Body, Inbound, Prepared, ReadBodyError, prepare};
use crate::problem::{Answer, GatewayError};

/// Reads the body into a [`Prepared`] one.
#[derive(Clone, Copy, Debug)]
pub struct ReadBodyLayer {
    /// `server.max_body`: more is a 413.
    pub max_body: u64,
    /// Whether a policy or the action needs the whole body in memory.
    pub buffer_all: bool,
    /// Whether a body of unknown length (chunked) is handed on at once, unread, rather than after its first 64 KiB
    /// (the action reads it as it streams: Confluent v3's streaming mode).
    pub stream: bool,
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> ReadBody<S> {
        ReadBody { settings: *self, inner }
    }
}

/// A service that gets its request with the body read.
#[derive(Clone, Debug)]
pub struct ReadBody<S> {
    settings: ReadBodyLayer,
    inner: S,
}

type Reading = Pin<Box<dyn Future<Output = Result<Prepared, ReadBodyError>> + Send>>;

impl<S> Service<Request<Inbound>> for ReadBody<S>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError> + Clone,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ReadBodyFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Inbound>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let ReadBodyLayer { max_body, buffer_all, stream } = self.settings;
        let read = match body {
            Inbound::Read(bytes) if bytes.as_ref().is_none_or(|b| b.len() as u64 <= max_body) => bytes,
            _ if body.is_end_stream() => Some(Bytes::new()),
            body => {
                return ReadBodyFuture::Reading {
                    body: Box::pin(prepare(body, max_body, buffer_all, stream)),
                    rest: Some(Box::new((parts, self.inner.clone()))),
                };
            }
        };
        // Read whole already (by the fast lane, within the limit; its size is far below the replay limit), or none.
        let req = Request::from_parts(parts, Prepared::Buffered(read.unwrap_or_default()));
        ReadBodyFuture::Calling { future: self.inner.call(req) }
    }
}

pin_project! {
    /// Reading the body, then the inner service's answer.
    #[project = Projected]
    pub enum ReadBodyFuture<S, F> {
        /// Waiting for the body; the request's head and the service it goes to (boxed: a request with a body
        /// allocates already, and unboxed they would make every request's future larger).
        Reading { body: Reading, rest: Option<Box<(Parts, S)>> },
        /// The inner service's answer.
        Calling { #[pin] future: F },
    }
}

impl<S> Future for ReadBodyFuture<S, S::Future>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError>,
{
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        loop {
            match self.as_mut().project() {
                Projected::Calling { future } => return future.poll(cx),
                Projected::Reading { body, rest } => {
                    let prepared = match ready!(body.as_mut().poll(cx)) {
                        Ok(prepared) => prepared,
                        Err(e) => return Poll::Ready(Err(e.into())),
                    };
                    let (parts, mut inner) = *rest.take().expect("polled after completion");
                    let future = inner.call(Request::from_parts(parts, prepared));
                    self.set(ReadBodyFuture::Calling { future });
                }
            }
        }
    }
}

//! Reads the request body once, before any policy, so that webhook verification, templates (`{body./…}` in a
//! rate-limit key, hash key, topic) and the action all see the same bytes. A forward route whose policies need
//! no body streams a large body through (only up to 64 KiB is buffered, for retries); a route that needs it
//! reads it whole, up to `server.max_body`.

use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceExt};

use crate::body::{Body, Prepared, prepare};
use crate::problem::{AnswerFuture, GatewayError};

/// Reads the body into a [`Prepared`] one.
#[derive(Clone, Copy, Debug)]
pub struct ReadBodyLayer {
    /// `server.max_body`: more is a 413.
    pub max_body: u64,
    /// Whether a policy or the action needs the whole body in memory.
    pub buffer_all: bool,
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

impl<S> Service<Request<Incoming>> for ReadBody<S>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // The inner service is made ready once the body has been read.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> AnswerFuture {
        let ReadBodyLayer { max_body, buffer_all } = self.settings;
        let inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = prepare(body, max_body, buffer_all).await?;
            inner.oneshot(Request::from_parts(parts, body)).await
        })
    }
}

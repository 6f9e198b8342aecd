//! A [`Guard`] checks a request (with its body already read) before the action runs, and answers instead of it
//! when the check fails. Webhook verification, authentication and rate limiting plug in here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::{Body, Prepared};
use crate::problem::{Answer, GatewayError};

/// A check that runs before the action and may answer instead of it.
pub trait Guard: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` lets the request through (a guard may add what it learnt, e.g. JWT claims, to the request's
    /// extensions); `Err` is the answer.
    fn check(&self, req: &mut Request<Prepared>) -> Result<(), GatewayError>;
}

/// Wraps a service in a [`Guard`].
#[derive(Clone, Debug)]
pub struct GuardLayer(Arc<dyn Guard>);

impl GuardLayer {
    /// A layer running `guard`.
    pub fn new(guard: Arc<dyn Guard>) -> GuardLayer {
        GuardLayer(guard)
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { guard: self.0.clone(), inner }
    }
}

/// A service behind a [`Guard`].
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    guard: Arc<dyn Guard>,
    inner: S,
}

impl<S> Service<Request<Prepared>> for Guarded<S>
where
    S: Service<Request<Prepared>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<Refused, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Prepared>) -> Self::Future {
        match self.guard.check(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(Refused(Some(e))),
        }
    }
}

/// The answer of a guard that refused: only the error, not a whole `Result<Response, _>` (a route's future nests
/// one guard's future per policy, and every request's future is as large as the largest of them, moved at each
/// layer).
#[derive(Debug)]
pub struct Refused(Option<GatewayError>);

impl Future for Refused {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Answer> {
        Poll::Ready(Err(self.get_mut().0.take().expect("polled after completion")))
    }
}

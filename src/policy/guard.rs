//! A [`Guard`] checks a request (with its body already read) before the action runs, and answers instead of it
//! when the check fails. Webhook verification, authentication and rate limiting plug in here.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::{Body, Prepared};
use crate::problem::GatewayError;

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
    type Future = Either<Ready<Result<Response<Body>, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Prepared>) -> Self::Future {
        match self.guard.check(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}

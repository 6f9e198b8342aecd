//! A panic anywhere below this layer becomes `GatewayError::Internal` (a 500 problem+json, counted and logged by
//! the observe layer above) and the process keeps serving.
//!
//! Written here instead of using tower-http's `CatchPanicLayer`: that one boxes every response body into its own
//! body type, which would cost every request an allocation and dynamic dispatch per frame to guard the rare
//! panic; this one only wraps the future.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::Body;
use crate::problem::{Answer, GatewayError};

/// Turns panics into 500s.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// A service whose panics become 500s.
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        guard(|| self.inner.call(req))
    }
}

/// Runs `make` and then the future it returns; a panic in either becomes the output's [`FromPanic`] answer.
pub fn guard<F>(make: impl FnOnce() -> F) -> CatchPanicFuture<F>
where
    F: Future<Output: FromPanic>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(future) => CatchPanicFuture::Running { inner: AssertUnwindSafe(future).catch_unwind() },
        Err(panic) => CatchPanicFuture::Panicked { answer: Some(FromPanic::from_panic(panic)) },
    }
}

/// What a panic becomes: an [`Answer`] is `GatewayError::Internal`; a finished response is a 500 problem+json
/// (for the server's last-resort guard above the observe layer, where no route or request id is known).
pub trait FromPanic {
    /// The 500 for `panic` (logged).
    fn from_panic(panic: Box<dyn Any + Send>) -> Self;
}

impl FromPanic for Answer {
    fn from_panic(panic: Box<dyn Any + Send>) -> Answer {
        panicked(panic)
    }
}

impl FromPanic for Result<Response<Body>, Infallible> {
    fn from_panic(panic: Box<dyn Any + Send>) -> Self {
        let Err(e) = panicked::<Infallible>(panic);
        Ok(e.into_response(None, ""))
    }
}

pin_project! {
    /// The inner answer, or a 500 if producing it panicked.
    #[project = Projected]
    pub enum CatchPanicFuture<F: Future> {
        /// The inner future, watched for panics.
        Running { #[pin] inner: CatchUnwind<AssertUnwindSafe<F>> },
        /// The inner service panicked before returning a future.
        Panicked { answer: Option<F::Output> },
    }
}

impl<F> Future for CatchPanicFuture<F>
where
    F: Future<Output: FromPanic>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            Projected::Running { inner } => inner.poll(cx).map(|r| r.unwrap_or_else(FromPanic::from_panic)),
            Projected::Panicked { answer } => Poll::Ready(answer.take().expect("polled after completion")),
        }
    }
}

/// Logs the panic and answers 500.
pub fn panicked<T>(panic: Box<dyn Any + Send>) -> Result<T, GatewayError> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    tracing::error!(panic = %message, "request handling panicked; answered 500");
    Err(GatewayError::Internal)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::layers::{Observe, ObserveLayer, RouteSpans};
    use crate::telemetry::{Metrics, Tracer};

    fn observed() -> ObserveLayer {
        let metrics = Metrics::new();
        ObserveLayer(Arc::new(Observe {
            route: Some(Arc::from("boom")),
            http_route: Some("/boom".into()),
            backend: String::new(),
            metrics: metrics.route("boom"),
            in_flight: metrics.in_flight.clone(),
            tracer: Tracer::default(),
            access_log: false,
            spans: RouteSpans::new("boom", Some("/boom")),
        }))
    }

    async fn problem(res: Response<Body>) -> serde_json::Value {
        assert_eq!(res.status(), 500);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn a_panic_while_answering_is_a_500_problem() {
        let svc = ServiceBuilder::new().layer(observed()).layer(CatchPanicLayer).service(service_fn(
            |_req: Request<()>| async move {
                if true {
                    panic!("boom in a future");
                }
                Ok::<Response<Body>, GatewayError>(Response::new(Body::Empty))
            },
        ));
        let req = Request::builder().header("x-request-id", "rid-1").body(()).unwrap();
        let doc = problem(svc.oneshot(req).await.unwrap()).await;
        assert_eq!(doc["route"], "boom");
        assert_eq!(doc["request_id"], "rid-1");
        assert!(!doc.to_string().contains("boom in a future"), "the panic message stays in the logs: {doc}");
    }

    #[tokio::test]
    async fn a_panic_before_the_future_exists_is_a_500_problem_too() {
        let svc = ServiceBuilder::new().layer(observed()).layer(CatchPanicLayer).service(service_fn(
            |_req: Request<()>| -> std::future::Ready<Result<Response<Body>, GatewayError>> { panic!("boom in call") },
        ));
        problem(svc.oneshot(Request::new(())).await.unwrap()).await;
    }
}

//! The innermost service of a route's stack: what the route does (`forward`, `publish` or `request_reply`), and the
//! answer for requests no route takes.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use crate::body::{Body, Prepared};
use crate::boxed::in_place;
use crate::bridge::{RequestReplyRoute, request_reply};
use crate::forward::{ForwardRoute, forward};
use crate::problem::{AnswerFuture, GatewayError};
use crate::publish::{PublishRoute, publish};
use crate::request::Facts;

/// A route's action.
#[derive(Clone, Debug)]
pub enum Action {
    /// Synchronous forwarding.
    Forward(Arc<ForwardRoute>),
    /// Asynchronous publishing.
    Publish(Arc<PublishRoute>),
    /// Request-reply over a broker.
    RequestReply(Arc<RequestReplyRoute>),
    /// No route takes the request: the router's verdict (404, or 405 with `Allow`) from its facts.
    Unmatched,
}

impl Action {
    /// The upstream or broker the action talks to (for the access log).
    pub fn target(&self) -> &str {
        match self {
            Action::Forward(f) => &f.upstream.name,
            Action::Publish(p) => &p.broker_name,
            Action::RequestReply(r) => &r.broker_name,
            Action::Unmatched => "",
        }
    }
}

impl Service<Request<Prepared>> for Action {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Prepared>) -> AnswerFuture {
        match self {
            // The action's own future, boxed as it is: no wrapping block, whose larger future would be moved again.
            Action::Forward(route) => in_place(|| forward(route.clone(), req)),
            Action::Publish(route) => in_place(|| publish(route.clone(), req)),
            Action::RequestReply(route) => in_place(|| request_reply(route.clone(), req)),
            Action::Unmatched => {
                let verdict = req.extensions().get::<Facts>().and_then(|f| f.unmatched.clone());
                Box::pin(std::future::ready(Err(verdict.unwrap_or(GatewayError::NotFound))))
            }
        }
    }
}

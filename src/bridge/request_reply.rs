//! The action of a `request_reply` route: the request becomes a message with a correlation id (its `sluice-id`) and
//! a reply address, published with confirms; the route waits up to its `timeout` for the reply and answers with it:
//! the reply's body byte for byte, its content type, the status its `sluice-status` header names (200 without one)
//! and the reply headers the route lists. No reply in time is a `504`; a request the broker cannot route is a `502`
//! at once. At most `max_pending` requests of the route wait at once (`503` with `Retry-After` beyond); a client
//! that goes away stops its request's wait and frees its place.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::body::{Body, Prepared};
use crate::problem::GatewayError;
use crate::publish::Publisher;
use crate::publish::destination::NameRules;
use crate::publish::encoder::{Encoder, Envelope};
use crate::publish::reply::Reply;
use crate::publish::route::producer_span;
use crate::request::{context, facts, request_id};
use crate::telemetry::{Held, RequestReplyMetrics, Tracer};

/// The reply header that carries the HTTP status.
pub const STATUS_HEADER: &str = "sluice-status";

/// A compiled `request_reply` route.
#[derive(Debug)]
pub struct RequestReplyRoute {
    /// Route name.
    pub name: Arc<str>,
    /// Broker name (logs).
    pub broker_name: String,
    /// The broker's producer.
    pub publisher: Publisher,
    /// Request → message.
    pub encoder: Encoder,
    /// What the rendered routing key must look like.
    pub names: NameRules,
    /// Kafka: the topic replies come back on (`""` for AMQP, whose replies use direct reply-to).
    pub reply_topic: String,
    /// Longest wait for the reply, from the start of the action.
    pub timeout: Duration,
    /// Reply headers copied onto the answer.
    pub reply_headers: Vec<HeaderName>,
    /// One permit per request that may wait at once (`max_pending`).
    pub pending: Arc<Semaphore>,
    /// Makes the PRODUCER and CONSUMER spans.
    pub tracer: Tracer,
    /// Metric handles.
    pub metrics: RequestReplyMetrics,
}

/// Sends one request and answers with its reply.
pub async fn request_reply(
    route: Arc<RequestReplyRoute>,
    req: Request<Prepared>,
) -> Result<Response<Body>, GatewayError> {
    let deadline = Instant::now() + route.timeout;
    let Ok(_place) = route.pending.clone().try_acquire_owned() else {
        route.metrics.outcome("too_many_pending").inc();
        return Err(GatewayError::TooManyPending);
    };
    let _waiting = Held::new(&route.metrics.pending);
    let body = req.body().bytes().cloned().unwrap_or_default();
    let env = Envelope { route: &route.name, request_id: request_id(&req) };
    let mut message = route.encoder.encode(req.headers(), &context(&req, &route.name), body, &env)?;
    route.names.check(&message.destination)?;
    let mut span = producer_span(&route.tracer, &facts(&req).trace, &route.broker_name, &message);
    let producer = span.cx.clone();
    let traceparent = span.cx.traceparent();
    let tracestate = span.cx.tracestate.as_ref().and_then(|v| v.to_str().ok());
    message.set_trace(traceparent.to_str().unwrap_or_default(), tracestate);
    let start = Instant::now();
    let sent = tokio::time::timeout_at(deadline, route.publisher.request(message, &route.reply_topic)).await;
    let Ok(sent) = sent else {
        // The broker did not even confirm the request within the route's timeout.
        route.metrics.outcome("no_reply").inc();
        span.error("timeout");
        return Err(GatewayError::NoReply);
    };
    let mut waiter = match sent {
        Ok(waiter) => waiter,
        Err(e) => {
            route.metrics.outcome(e.outcome()).inc();
            span.set(|| KeyValue::new("error.type", e.outcome()));
            span.error(e.outcome());
            tracing::warn!(route = %route.name, broker = %route.broker_name, error = %e, "request not sent");
            return Err(GatewayError::from(&e));
        }
    };
    drop(span);
    let reply = match tokio::time::timeout_at(deadline, waiter.reply()).await {
        Ok(Some(reply)) => reply,
        Ok(None) => {
            route.metrics.outcome("unavailable").inc();
            return Err(GatewayError::BrokerUnavailable);
        }
        Err(_elapsed) => {
            route.metrics.outcome("no_reply").inc();
            return Err(GatewayError::NoReply);
        }
    };
    route.metrics.duration.observe(start.elapsed().as_secs_f64());
    // The reply's handling, in the request's trace.
    drop(route.tracer.child(&producer, SpanKind::Consumer, None, &["process reply"], |a| {
        a.str("messaging.operation.type", "process");
        a.str("sluice.broker", &route.broker_name);
    }));
    let answer = answer(reply, &route.reply_headers);
    route.metrics.outcome(if answer.is_ok() { "replied" } else { "invalid_reply" }).inc();
    answer
}

/// The HTTP answer a reply makes.
fn answer(reply: Reply, copied: &[HeaderName]) -> Result<Response<Body>, GatewayError> {
    let status = match reply.header(STATUS_HEADER) {
        None => StatusCode::OK,
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| (200..600).contains(&c.as_u16()))
            .ok_or(GatewayError::InvalidReply("its sluice-status is not a status code from 200 to 599"))?,
    };
    let mut res = Response::new(Body::full(reply.body.clone()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    for name in copied {
        if let Some(v) = reply.header(name.as_str()).and_then(|v| HeaderValue::try_from(v).ok()) {
            headers.insert(name.clone(), v);
        }
    }
    if let Some(v) = reply.content_type.as_deref().and_then(|v| HeaderValue::try_from(v).ok()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    fn reply(headers: &[(&str, &str)]) -> Reply {
        Reply {
            body: Bytes::from_static(b"\x00quote\xff"),
            content_type: Some("application/octet-stream".to_owned()),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[tokio::test]
    async fn a_reply_becomes_the_answer_with_its_status_type_and_listed_headers() {
        let copied = [HeaderName::from_static("x-quote-id")];
        let res =
            answer(reply(&[("sluice-status", "201"), ("x-quote-id", "q-7"), ("x-other", "no")]), &copied).unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["content-type"], "application/octet-stream");
        assert_eq!(res.headers()["x-quote-id"], "q-7");
        assert!(res.headers().get("x-other").is_none(), "only listed headers are copied");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"\x00quote\xff", "the body byte for byte");
        assert_eq!(answer(reply(&[]), &[]).unwrap().status(), 200, "no sluice-status: 200");
    }

    #[test]
    fn a_status_that_is_not_one_is_an_invalid_reply() {
        for bad in ["abc", "99", "103", "600", "2000", ""] {
            let err = answer(reply(&[("sluice-status", bad)]), &[]).unwrap_err();
            assert_eq!(err.status(), 502, "{bad:?}");
        }
    }
}

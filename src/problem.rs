//! The one place where gateway-made errors become HTTP responses: RFC 9457 `application/problem+json` with
//! `type`, `title`, `status`, `detail`, `route` and `request_id`. Internals (addresses, library messages) never
//! reach the client; callers log them before converting.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::{Body, ReadBodyError};
use crate::publish::PublishError;
use crate::template::Missing;
use crate::upstream::CallError;

/// What every layer below the observe layer answers: a response, or an error that layer turns into one.
pub type Answer = Result<Response<Body>, GatewayError>;

/// A boxed future of an [`Answer`] (the future type of the gateway's own layers).
pub type AnswerFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Everything the gateway itself may answer with instead of an upstream or broker response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// No route matches the path.
    #[error("no route matches this request")]
    NotFound,
    /// A route has the path, but not the method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: String,
    },
    /// Body larger than `server.max_body`.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A template needs a value the request does not carry, or the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request's webhook signature could not be verified (the same answer whatever failed; the log says what).
    #[error("the request's webhook signature could not be verified")]
    BadSignature,
    /// No valid credentials (API key or bearer token): 401 with a `WWW-Authenticate` challenge. The reason never
    /// quotes the credentials.
    #[error("{reason}")]
    Unauthorized {
        /// Value of the `WWW-Authenticate` header (`Bearer error="invalid_token"`, `ApiKey header="x-api-key"`).
        challenge: String,
        /// What was wrong, for the problem's `detail`.
        reason: String,
    },
    /// Valid credentials that do not grant this route (audience, scope): 403.
    #[error("{reason}")]
    Forbidden {
        /// Value of the `WWW-Authenticate` header, if any (`Bearer error="insufficient_scope", scope="…"`).
        challenge: Option<String>,
        /// What is missing, for the problem's `detail`.
        reason: String,
    },
    /// The request target is longer than the HTTP parser accepts.
    #[error("the request URI is too long")]
    UriTooLong,
    /// The request line and headers are larger than `server.max_header_bytes`.
    #[error("the request line and headers are larger than {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The route's rate limit is exhausted.
    #[error("rate limit exceeded")]
    RateLimited {
        /// When a token will be available.
        retry_after: Duration,
    },
    /// The upstream already has `max_concurrent` requests in flight.
    #[error("upstream is at its concurrency limit")]
    Overloaded,
    /// Every endpoint is ejected or failing health checks.
    #[error("no healthy endpoint is available")]
    NoHealthyEndpoint,
    /// No endpoint could be reached (refused, reset, no address).
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    /// The route's timeout elapsed.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// A fault injected by the route's `fault` table.
    #[error("fault injected by the route")]
    FaultAbort(StatusCode),
    /// The client's request could not be read.
    #[error("the request body could not be read")]
    BodyRead,
    /// A request with the same `Idempotency-Key` is still being processed.
    #[error("a request with this Idempotency-Key is still in flight")]
    IdempotencyConflict,
    /// Every slot of the route's `Idempotency-Key` store holds a request still in flight.
    #[error("too many requests with an Idempotency-Key are in flight; retry later")]
    IdempotencyFull,
    /// The broker did not confirm the message (down, nack, confirm or delivery timeout). Usually nothing was stored,
    /// but a message whose confirm was lost may have been: a retry should carry the same `Idempotency-Key`.
    #[error("the broker did not confirm the message; retry later with the same Idempotency-Key")]
    BrokerUnavailable,
    /// The shared store (Redis) did not answer and `store.on_error = "fail_closed"`.
    #[error("the gateway's shared state is unavailable, retry later")]
    StoreUnavailable,
    /// The broker cannot deliver the message where the route sends it (unroutable, unknown topic, rejected).
    #[error("the broker cannot deliver the message to its destination")]
    Unroutable,
    /// The publish route's destination has more than `max_backlog` messages waiting: nothing was published.
    #[error("the destination's backlog is above its bound; nothing was published, retry later")]
    Backlogged,
    /// A request-reply route's request was sent, but no reply came within its `timeout`.
    #[error("no reply arrived in time")]
    NoReply,
    /// The reply of a request-reply route cannot be an HTTP answer (e.g. its `sluice-status` is not a status code).
    #[error("the reply cannot be answered: {0}")]
    InvalidReply(&'static str),
    /// A request-reply route already has `max_pending` requests waiting for replies.
    #[error("too many requests are waiting for replies; retry later")]
    TooManyPending,
    /// A bug or a misconfiguration inside the gateway (details are in the logs).
    #[error("internal error")]
    Internal,
}

impl From<CallError> for GatewayError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Overloaded => GatewayError::Overloaded,
            CallError::NoHealthyEndpoint => GatewayError::NoHealthyEndpoint,
            CallError::Unreachable => GatewayError::UpstreamUnreachable,
            CallError::Timeout => GatewayError::Timeout,
            CallError::BodyTooLarge { limit } => GatewayError::PayloadTooLarge { limit },
        }
    }
}

impl From<&PublishError> for GatewayError {
    fn from(e: &PublishError) -> Self {
        match e {
            PublishError::Unavailable { .. } | PublishError::Nacked { .. } => GatewayError::BrokerUnavailable,
            PublishError::Unroutable { .. } | PublishError::Rejected { .. } => GatewayError::Unroutable,
            PublishError::Config { .. } => GatewayError::Internal,
        }
    }
}

impl From<ReadBodyError> for GatewayError {
    fn from(e: ReadBodyError) -> Self {
        match e {
            ReadBodyError::TooLarge(limit) => GatewayError::PayloadTooLarge { limit },
            ReadBodyError::Broken(_) => GatewayError::BodyRead,
        }
    }
}

impl From<Missing> for GatewayError {
    fn from(m: Missing) -> Self {
        GatewayError::BadRequest(format!("missing {m}"))
    }
}

/// The problem document.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    request_id: &'a str,
}

impl GatewayError {
    /// The status code a client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadRequest(_) | GatewayError::BodyRead => StatusCode::BAD_REQUEST,
            GatewayError::BadSignature => StatusCode::UNAUTHORIZED,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Overloaded | GatewayError::NoHealthyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            GatewayError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::FaultAbort(s) => *s,
            GatewayError::IdempotencyConflict => StatusCode::CONFLICT,
            GatewayError::IdempotencyFull => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Unroutable => StatusCode::BAD_GATEWAY,
            GatewayError::NoReply => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Backlogged => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::InvalidReply(_) => StatusCode::BAD_GATEWAY,
            GatewayError::TooManyPending => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind_and_title(&self) -> (&'static str, &'static str) {
        match self {
            GatewayError::NotFound => ("urn:sluice:problem:no-route", "No route"),
            GatewayError::MethodNotAllowed { .. } => ("urn:sluice:problem:method-not-allowed", "Method not allowed"),
            GatewayError::PayloadTooLarge { .. } => ("urn:sluice:problem:body-too-large", "Request body too large"),
            GatewayError::BadRequest(_) => ("urn:sluice:problem:bad-request", "Bad request"),
            GatewayError::BodyRead => ("urn:sluice:problem:bad-request", "Bad request"),
            GatewayError::BadSignature => ("urn:sluice:problem:bad-signature", "Invalid webhook signature"),
            GatewayError::Unauthorized { .. } => ("urn:sluice:problem:unauthorized", "Unauthorized"),
            GatewayError::Forbidden { .. } => ("urn:sluice:problem:forbidden", "Forbidden"),
            GatewayError::UriTooLong => ("urn:sluice:problem:uri-too-long", "URI too long"),
            GatewayError::HeadersTooLarge { .. } => {
                ("urn:sluice:problem:headers-too-large", "Request headers too large")
            }
            GatewayError::RateLimited { .. } => ("urn:sluice:problem:rate-limited", "Rate limit exceeded"),
            GatewayError::Overloaded => ("urn:sluice:problem:overloaded", "Upstream overloaded"),
            GatewayError::NoHealthyEndpoint => ("urn:sluice:problem:no-healthy-endpoint", "No healthy endpoint"),
            GatewayError::UpstreamUnreachable => ("urn:sluice:problem:upstream-unreachable", "Upstream unreachable"),
            GatewayError::Timeout => ("urn:sluice:problem:timeout", "Upstream timeout"),
            GatewayError::FaultAbort(_) => ("urn:sluice:problem:fault-injected", "Fault injected"),
            GatewayError::IdempotencyConflict => ("urn:sluice:problem:idempotency-conflict", "Request in flight"),
            GatewayError::IdempotencyFull => ("urn:sluice:problem:idempotency-full", "Too many keys in flight"),
            GatewayError::BrokerUnavailable => ("urn:sluice:problem:broker-unavailable", "Broker unavailable"),
            GatewayError::StoreUnavailable => ("urn:sluice:problem:store-unavailable", "Shared state unavailable"),
            GatewayError::Unroutable => ("urn:sluice:problem:unroutable", "Message unroutable"),
            GatewayError::NoReply => ("urn:sluice:problem:no-reply", "No reply in time"),
            GatewayError::Backlogged => ("urn:sluice:problem:backlogged", "Destination backlogged"),
            GatewayError::InvalidReply(_) => ("urn:sluice:problem:invalid-reply", "Invalid reply"),
            GatewayError::TooManyPending => ("urn:sluice:problem:too-many-pending", "Too many requests waiting"),
            GatewayError::Internal => ("urn:sluice:problem:internal", "Internal error"),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after } => Some(*retry_after),
            GatewayError::Overloaded
            | GatewayError::NoHealthyEndpoint
            | GatewayError::BrokerUnavailable
            | GatewayError::IdempotencyFull
            | GatewayError::StoreUnavailable
            | GatewayError::TooManyPending
            | GatewayError::Backlogged => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Renders the problem response for `route` (if one matched) and the request id.
    pub fn into_response(self, route: Option<&str>, request_id: &str) -> Response<Body> {
        let status = self.status();
        let (kind, title) = self.kind_and_title();
        let problem = Problem { kind, title, status: status.as_u16(), detail: self.to_string(), route, request_id };
        let body = serde_json::to_vec(&problem).expect("a problem serializes");
        let mut res = Response::new(Body::full(body));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        let challenge = match &self {
            GatewayError::Unauthorized { challenge, .. } => Some(challenge),
            GatewayError::Forbidden { challenge, .. } => challenge.as_ref(),
            _ => None,
        };
        if let Some(v) = challenge.and_then(|c| HeaderValue::try_from(c.as_str()).ok()) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        if let GatewayError::MethodNotAllowed { allow } = &self
            && let Ok(v) = HeaderValue::try_from(allow.as_str())
        {
            h.insert(header::ALLOW, v);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn renders_problem_json_with_retry_after() {
        let res =
            GatewayError::RateLimited { retry_after: Duration::from_millis(1500) }.into_response(Some("r"), "id-1");
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["retry-after"], "2");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["route"], "r");
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["title"], "Rate limit exceeded");
        assert!(v["type"].as_str().unwrap().starts_with("urn:sluice:problem:"));
    }

    #[test]
    fn auth_errors_carry_their_challenge() {
        let res = GatewayError::Unauthorized { challenge: "Bearer".into(), reason: "missing bearer token".into() }
            .into_response(Some("r"), "x");
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let res = GatewayError::Forbidden { challenge: None, reason: "wrong audience".into() }.into_response(None, "x");
        assert_eq!(res.status(), 403);
        assert!(res.headers().get("www-authenticate").is_none());
    }

    /// The README's block of example answers (after the test's name) is what `into_response` renders: status line,
    /// headers and body, field for field. A README example no error here renders fails the test, and so does a
    /// header the gateway sends that the example leaves out.
    #[tokio::test]
    async fn the_readmes_example_answers_are_what_the_gateway_sends() {
        let readme = include_str!("../README.md");
        let at = readme.find("the_readmes_example_answers_are_what_the_gateway_sends").expect("the README names me");
        let block = &readme[at..];
        let block = &block[block.find("```\n").expect("a block follows") + 4..];
        let block = &block[..block.find("```").expect("the block ends")];
        let errors = [
            GatewayError::BadSignature,
            GatewayError::Unauthorized {
                challenge: "ApiKey header=\"x-api-key\"".into(),
                reason: "missing API key (header x-api-key)".into(),
            },
            GatewayError::Unauthorized {
                challenge: "Bearer error=\"invalid_token\", error_description=\"the token has expired\"".into(),
                reason: "the token has expired".into(),
            },
            GatewayError::Forbidden { challenge: None, reason: "the token was not issued for this audience".into() },
            GatewayError::IdempotencyConflict,
            GatewayError::RateLimited { retry_after: Duration::from_millis(300) },
            GatewayError::BrokerUnavailable,
            GatewayError::Timeout,
        ];
        let examples: Vec<&str> = block.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
        assert_eq!(examples.len(), errors.len(), "one README example per error:\n{block}");
        for (example, error) in examples.iter().zip(errors) {
            let lines: Vec<&str> = example.trim().lines().collect();
            let status_line = lines[0].split('#').next().unwrap().trim();
            let documented: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
            let route = documented["route"].as_str().unwrap();
            let res = error.into_response(Some(route), "…");
            let status = res.status();
            assert_eq!(status_line, format!("HTTP/1.1 {} {}", status.as_u16(), status.canonical_reason().unwrap()));
            let shown: Vec<(String, String)> = lines[1..lines.len() - 1]
                .iter()
                .map(|l| l.split_once(": ").map(|(k, v)| (k.to_owned(), v.to_owned())).expect("a header line"))
                .collect();
            let sent: Vec<(String, String)> = res
                .headers()
                .iter()
                .filter(|(k, _)| *k != header::CONTENT_TYPE)
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            assert_eq!(shown, sent, "{status_line}");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let rendered: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(documented, rendered, "{status_line}");
        }
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let res = GatewayError::MethodNotAllowed { allow: "GET, POST".into() }.into_response(None, "x");
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()["allow"], "GET, POST");
    }
}

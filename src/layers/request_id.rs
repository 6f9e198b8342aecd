//! `x-request-id`: tower-http's `SetRequestIdLayer` keeps the client's value and asks [`NewRequestId`] for one
//! when there is none; `PropagateRequestIdLayer` echoes it on the response.

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// A random UUID (v4), formatted without allocating a `String` first.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        Some(RequestId::new(HeaderValue::from_str(id).expect("a UUID is a header value")))
    }
}

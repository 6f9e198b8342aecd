//! The body of an upstream's answer: read by hyper's client (HTTP/2, streamed request bodies, upgrades) or by the
//! request's own task through [`wire`](super::wire) (every other HTTP/1.1 request).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::connect::Stream;
use super::wire::WireBody;
use crate::body::BoxError;

/// An upstream response body, streamed.
#[derive(Debug)]
pub enum AnswerBody {
    /// Read by hyper's client.
    Hyper(Incoming),
    /// Read by the request's task from a pooled HTTP/1.1 connection.
    Wire(WireBody<Stream>),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AnswerBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            AnswerBody::Wire(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Hyper(b) => b.is_end_stream(),
            AnswerBody::Wire(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Hyper(b) => b.size_hint(),
            AnswerBody::Wire(b) => b.size_hint(),
        }
    }
}

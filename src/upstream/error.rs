//! Why a call to an upstream produced no response, and whether trying again later may help.

/// A call that ended without an upstream response to pass on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// `max_concurrent` requests are already in flight to the upstream.
    #[error("upstream is at its concurrency limit")]
    Overloaded,
    /// Every endpoint is ejected or failing its health checks.
    #[error("no healthy endpoint is available")]
    NoHealthyEndpoint,
    /// No endpoint could be reached (refused, reset, no address), or a streamed body could not be sent again.
    #[error("the upstream could not be reached")]
    Unreachable,
    /// The call's timeout (or the last attempt's `per_try_timeout`) elapsed.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The request body grew past its limit while it was streamed upstream.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

impl CallError {
    /// Whether the same request may succeed if it is sent again later (everything but a body that is too large).
    pub fn is_retryable(self) -> bool {
        !matches!(self, CallError::BodyTooLarge { .. })
    }

    /// A short label for metrics, logs and span attributes.
    pub fn label(self) -> &'static str {
        match self {
            CallError::Overloaded => "overloaded",
            CallError::NoHealthyEndpoint => "no_healthy_endpoint",
            CallError::Unreachable => "unreachable",
            CallError::Timeout => "timeout",
            CallError::BodyTooLarge { .. } => "body_too_large",
        }
    }
}

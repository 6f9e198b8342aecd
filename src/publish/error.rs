//! Why a publish failed, and what that means for the HTTP answer: retryable (503) or not (502).

/// A boxed source error from a broker client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed publish or a broker that could not be set up.
///
/// The messages are for logs only: they may name addresses and broker internals, so they must not be
/// sent to clients. Map to HTTP with [`PublishError::status_code`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker did not take the message: it is down or unreachable, it nacked the message, the
    /// confirm or delivery timed out, or the local queue stayed full. Nothing was stored, so the
    /// client may retry (HTTP 503 with `Retry-After`).
    #[error("broker unavailable: {reason}")]
    Unavailable {
        /// What happened, for logs.
        reason: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The broker was reached and refused to take the message now (an AMQP nack, e.g. a full queue with
    /// `reject-publish`). Nothing was stored; the client may retry (HTTP 503), but a spool does not take it.
    #[error("broker refused the message: {reason}")]
    Nacked {
        /// What happened, for logs.
        reason: String,
    },
    /// The broker cannot deliver the message where it was sent: an AMQP message returned as
    /// unroutable (`mandatory`), an AMQP exchange that does not exist, an unknown or invalid Kafka
    /// topic or partition (HTTP 502). Retrying the same message will fail the same way.
    #[error("message unroutable: {reason}")]
    Unroutable {
        /// What happened, for logs.
        reason: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The broker or client library refused this message for good: too large, invalid, not
    /// authorized (HTTP 502). Retrying the same message will fail the same way.
    #[error("message rejected: {reason}")]
    Rejected {
        /// What happened, for logs.
        reason: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The broker settings are invalid (bad URL, unknown client option), or a message was sent to a
    /// publisher of the other kind. A configuration or programming error (HTTP 500).
    #[error("invalid broker configuration: {reason}")]
    Config {
        /// What is wrong, for logs.
        reason: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl PublishError {
    /// An [`PublishError::Unavailable`] error.
    pub fn unavailable(reason: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Unavailable { reason: reason.into(), source }
    }

    /// A [`PublishError::Nacked`] error.
    pub fn nacked(reason: impl Into<String>) -> Self {
        Self::Nacked { reason: reason.into() }
    }

    /// An [`PublishError::Unroutable`] error.
    pub fn unroutable(reason: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Unroutable { reason: reason.into(), source }
    }

    /// A [`PublishError::Rejected`] error.
    pub fn rejected(reason: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Rejected { reason: reason.into(), source }
    }

    /// A [`PublishError::Config`] error.
    pub fn config(reason: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Config { reason: reason.into(), source }
    }

    /// True when the broker could not route the message (returned, unknown exchange or topic).
    #[must_use]
    pub fn is_unroutable(&self) -> bool {
        matches!(self, Self::Unroutable { .. })
    }

    /// True when nothing was stored and the same message may succeed later: the client may retry.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Nacked { .. })
    }

    /// True when the broker could not be reached in time (down, connection lost, timed out): a spool takes the
    /// message. Not for a nack, an unroutable message or an unknown topic.
    #[must_use]
    pub fn is_spoolable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// A short label for metrics and logs: `unavailable`, `nacked`, `unroutable`, `rejected` or `config`.
    #[must_use]
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::Nacked { .. } => "nacked",
            Self::Unroutable { .. } => "unroutable",
            Self::Rejected { .. } => "rejected",
            Self::Config { .. } => "config",
        }
    }

    /// The HTTP status this error becomes: 503 (unavailable, retry later), 502 (unroutable or
    /// rejected by the broker), 500 (configuration). The mapping itself lives in `problem.rs`.
    #[must_use]
    pub fn status_code(&self) -> u16 {
        crate::problem::GatewayError::from(self).status().as_u16()
    }
}

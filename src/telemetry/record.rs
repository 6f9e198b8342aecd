//! A span as Sluice records it: ids, parent, kind, name, times, attributes and status in one compact struct,
//! made when a sampled span starts and encoded (`otlp`) when it ends.
//!
//! Written here instead of using `opentelemetry_sdk`'s span: the SDK's lifecycle — a `SpanBuilder`, a `Context`
//! holding the parent for the sampler, the `SpanData` moved to the processor with its links, events and
//! instrumentation scope — cost about 3,000 instructions a span on the request path (bench/README.md), most of it
//! for parts Sluice never uses. This record holds only what Sluice's spans carry; the SDK's rules that matter are
//! kept as they were: the attribute limit (128, later ones dropped and counted) and the status order
//! (`Unset < Error < Ok`, a lower one does not replace a higher one).

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status};

use super::otlp::{encode_attribute, encode_int_attribute, encode_str_attribute};

/// Most attributes kept per span (the SDK's default `max_attributes_per_span`); more are counted as dropped.
const MAX_ATTRIBUTES: usize = 128;

/// A sampled span, from its start until it is encoded.
#[derive(Debug)]
pub struct Recording {
    /// Trace id (never 0).
    pub trace_id: u128,
    /// This span's id (never 0).
    pub span_id: u64,
    /// The parent's span id; 0 for a root span.
    pub parent_span_id: u64,
    /// Whether the parent came from another process (an incoming `traceparent`).
    pub parent_is_remote: bool,
    /// W3C trace flags of this span.
    pub flags: u8,
    /// The parent's `tracestate`, as received; validated and normalised only when the span is encoded.
    pub trace_state: Option<HeaderValue>,
    /// SERVER, CLIENT, …
    pub kind: SpanKind,
    /// The span's name.
    pub name: Cow<'static, str>,
    /// Start, in nanoseconds since the Unix epoch.
    pub start: u64,
    /// Attributes, at most [`MAX_ATTRIBUTES`], encoded as they are set (the OTLP `Span.attributes` fields): no
    /// `KeyValue`s to keep and drop, and no copy of text the request still holds.
    pub attributes: Vec<u8>,
    /// How many attributes `attributes` holds.
    pub attribute_count: u32,
    /// Attributes beyond the limit.
    pub dropped_attributes: u32,
    /// The span's status.
    pub status: Status,
}

impl Recording {
    /// Adds an attribute, or counts it as dropped past the limit.
    pub fn set(&mut self, attribute: KeyValue) {
        self.add(|buf| encode_attribute(buf, attribute.key.as_str(), &attribute.value));
    }

    /// Adds a string attribute from borrowed text.
    pub fn set_str(&mut self, key: &str, value: &str) {
        self.add(|buf| encode_str_attribute(buf, key, value));
    }

    /// Adds an integer attribute.
    pub fn set_int(&mut self, key: &str, value: i64) {
        self.add(|buf| encode_int_attribute(buf, key, value));
    }

    fn add(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        if (self.attribute_count as usize) < MAX_ATTRIBUTES {
            encode(&mut self.attributes);
            self.attribute_count += 1;
        } else {
            self.dropped_attributes = self.dropped_attributes.saturating_add(1);
        }
    }

    /// Sets the status unless the current one ranks higher (`Unset < Error < Ok`, as the SDK orders them).
    pub fn set_status(&mut self, status: Status) {
        if status > self.status {
            self.status = status;
        }
    }
}

/// Now, in nanoseconds since the Unix epoch (0 before it, saturating far after it).
pub fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A sampled SERVER span `GET /` with no attributes, for tests.
#[cfg(test)]
pub(crate) fn test_recording() -> Recording {
    Recording {
        trace_id: 1,
        span_id: 2,
        parent_span_id: 0,
        parent_is_remote: false,
        flags: 1,
        trace_state: None,
        kind: SpanKind::Server,
        name: "GET /".into(),
        start: now_nanos(),
        attributes: Vec::new(),
        attribute_count: 0,
        dropped_attributes: 0,
        status: Status::Unset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording() -> Recording {
        test_recording()
    }

    #[test]
    fn attributes_past_the_limit_are_counted_not_kept() {
        let mut r = recording();
        (0..130).for_each(|i| r.set(KeyValue::new("k", i64::from(i))));
        assert_eq!((r.attribute_count, r.dropped_attributes), (128, 2));
        r.set_str("late", "x");
        r.set_int("later", 1);
        assert_eq!((r.attribute_count, r.dropped_attributes), (128, 4));
    }

    #[test]
    fn borrowed_and_value_attributes_encode_alike() {
        let (mut a, mut b) = (recording(), recording());
        a.set(KeyValue::new("url.path", "/x"));
        a.set(KeyValue::new("server.port", 8080_i64));
        b.set_str("url.path", "/x");
        b.set_int("server.port", 8080);
        assert_eq!(a.attributes, b.attributes);
        assert_eq!(a.attribute_count, 2);
    }

    #[test]
    fn a_status_is_replaced_only_by_a_higher_one() {
        let mut r = recording();
        r.set_status(Status::error("b"));
        r.set_status(Status::Unset);
        assert_eq!(r.status, Status::error("b"));
        r.set_status(Status::Ok);
        r.set_status(Status::error("z"));
        assert_eq!(r.status, Status::Ok);
    }
}

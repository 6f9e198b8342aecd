//! A span as Sluice records it: ids, parent, kind, start, status in one compact struct, and its name and
//! attributes already encoded; made when a sampled span starts and encoded (`otlp`) when it ends.
//!
//! Written here instead of using `opentelemetry_sdk`'s span: the SDK's lifecycle — a `SpanBuilder`, a `Context`
//! holding the parent for the sampler, the `SpanData` moved to the processor with its links, events and
//! instrumentation scope — cost about 3,000 instructions a span on the request path (bench/README.md), most of it
//! for parts Sluice never uses. This record holds only what Sluice's spans carry; the SDK's rules that matter are
//! kept as they were: the attribute limit (128, later ones dropped and counted) and the status order
//! (`Unset < Error < Ok`, a lower one does not replace a higher one).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status};

use super::otlp::{encode_attribute, encode_int_attribute, encode_name, encode_str_attribute};

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
    /// Start, in nanoseconds since the Unix epoch.
    pub start: u64,
    /// The span's name, then its attributes (at most [`MAX_ATTRIBUTES`]), encoded as they are set: the OTLP
    /// `Span.name` and `Span.attributes` fields, which a protobuf reader takes in any order. No name string or
    /// `KeyValue`s to keep and drop, and no copy of text the request still holds.
    pub fields: Vec<u8>,
    /// How many attributes `fields` holds.
    pub attribute_count: u32,
    /// Attributes beyond the limit.
    pub dropped_attributes: u32,
    /// The span's status.
    pub status: Status,
}

impl Recording {
    /// An empty recording, to [`begin`](Self::begin) spans in.
    pub fn new() -> Recording {
        Recording {
            trace_id: 0,
            span_id: 0,
            parent_span_id: 0,
            parent_is_remote: false,
            flags: 0,
            trace_state: None,
            kind: SpanKind::Internal,
            start: 0,
            // Room for the name and the attributes a request's spans carry, encoded (about 100–400 bytes).
            fields: Vec::with_capacity(512),
            attribute_count: 0,
            dropped_attributes: 0,
            status: Status::Unset,
        }
    }

    /// Starts recording a sampled span that started at `start` (nanoseconds since the Unix epoch), named by the
    /// concatenation of `name`, with no attributes yet; what was recorded before is gone (the buffer is kept).
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &mut self,
        trace_id: u128,
        span_id: u64,
        parent: (u64, bool),
        flags: u8,
        trace_state: Option<HeaderValue>,
        kind: SpanKind,
        start: u64,
        name: &[&str],
    ) {
        self.clear();
        self.trace_id = trace_id;
        self.span_id = span_id;
        (self.parent_span_id, self.parent_is_remote) = parent;
        self.flags = flags;
        self.trace_state = trace_state;
        self.kind = kind;
        self.start = start;
        encode_name(&mut self.fields, name);
    }

    /// Forgets the name, the attributes, the state and the status (keeping the buffer's room).
    pub fn clear(&mut self) {
        self.fields.clear();
        self.attribute_count = 0;
        self.dropped_attributes = 0;
        self.trace_state = None;
        self.status = Status::Unset;
    }

    /// Adds an attribute, or counts it as dropped past the limit.
    pub fn set(&mut self, attribute: KeyValue) {
        if self.room() {
            encode_attribute(&mut self.fields, attribute.key.as_str(), &attribute.value);
        }
    }

    /// Adds a string attribute from borrowed text.
    #[inline(always)]
    pub fn set_str(&mut self, key: &str, value: &str) {
        if self.room() {
            encode_str_attribute(&mut self.fields, key, value);
        }
    }

    /// Adds an integer attribute.
    #[inline(always)]
    pub fn set_int(&mut self, key: &str, value: i64) {
        if self.room() {
            encode_int_attribute(&mut self.fields, key, value);
        }
    }

    /// Adds `count` attributes already encoded as `fields`; past the limit, all of them are counted as dropped.
    pub fn set_encoded(&mut self, fields: &[u8], count: u32) {
        if self.attribute_count as usize + count as usize <= MAX_ATTRIBUTES {
            self.fields.extend_from_slice(fields);
            self.attribute_count += count;
        } else {
            self.dropped_attributes = self.dropped_attributes.saturating_add(count);
        }
    }

    /// Whether one more attribute fits (counted as added), else counts it as dropped.
    #[inline(always)]
    fn room(&mut self) -> bool {
        if (self.attribute_count as usize) < MAX_ATTRIBUTES {
            self.attribute_count += 1;
            true
        } else {
            self.dropped_attributes = self.dropped_attributes.saturating_add(1);
            false
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

/// How long a thread's anchor (see [`nanos_at`]) is used before the wall clock is read again: a step of the
/// system clock (NTP, a resumed VM) shows in spans within this time.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

thread_local! {
    /// The monotonic clock and the wall clock read together, at most [`ANCHOR_FOR`] ago.
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// `at`, a reading of the monotonic clock that the caller already took (for a timeout or a duration metric), in
/// nanoseconds since the Unix epoch: the wall clock read at the thread's anchor plus the monotonic time since.
/// A clock read costs about 45 ns here, this about 6, and a traced request would otherwise read the wall clock
/// four times (OpenTelemetry's Java SDK anchors span times to one wall-clock reading the same way). The two
/// clocks advance at the same rate (NTP slews both); the anchor is renewed every [`ANCHOR_FOR`], so a step of the
/// wall clock is followed within that time.
#[inline]
pub fn nanos_at(at: Instant) -> u64 {
    if let Some((base, base_nanos)) = ANCHOR.get()
        && let Some(since) = at.checked_duration_since(base)
        && since < ANCHOR_FOR
    {
        return base_nanos + u64::from(since.subsec_nanos());
    }
    anchor_again(at)
}

/// [`nanos_at`] for a reading the anchor does not cover (none yet, too old, or taken before it): a new anchor.
#[cold]
#[inline(never)]
fn anchor_again(at: Instant) -> u64 {
    // The two clocks are read back to back; a thread descheduled between the reads would shift every span of the
    // next second by the pause, so the pair is read again when the monotonic clock moved more than 20 µs around
    // the wall-clock read (a few tries, then the last pair is kept).
    let mut anchor = (Instant::now(), now_nanos());
    for _ in 0..3 {
        let after = Instant::now();
        if after.saturating_duration_since(anchor.0) <= Duration::from_micros(20) {
            break;
        }
        anchor = (after, now_nanos());
    }
    let (base, base_nanos) = anchor;
    ANCHOR.set(Some((base, base_nanos)));
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match at.checked_duration_since(base) {
        Some(since) => base_nanos.saturating_add(nanos(since)),
        None => base_nanos.saturating_sub(nanos(base - at)),
    }
}

/// A sampled SERVER span `GET /` with no attributes, for tests.
#[cfg(test)]
pub(crate) fn test_recording() -> Recording {
    let mut r = Recording::new();
    r.begin(1, 2, (0, false), 1, None, SpanKind::Server, now_nanos(), &["GET /"]);
    r
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
        assert_eq!(a.fields, b.fields);
        assert_eq!(a.attribute_count, 2);
    }

    #[test]
    fn a_monotonic_reading_becomes_wall_clock_time() {
        let (before, at, after) = (now_nanos(), Instant::now(), now_nanos());
        let nanos = nanos_at(at);
        // The anchor was read after `at`, in the same microseconds.
        assert!(nanos + 1_000_000 >= before && nanos <= after + 1_000_000, "{before} {nanos} {after}");
        let later = at + Duration::from_millis(250);
        assert_eq!(nanos_at(later) - nanos, 250_000_000, "one anchor, exact differences");
        let long_ago = at.checked_sub(Duration::from_secs(5)).unwrap_or(at);
        let then = nanos_at(long_ago);
        assert!(then + 5_000_000_000 <= after + 1_000_000, "an old reading gets a fresh anchor");
        assert!(then + 5_000_000_000 + 1_000_000 >= before, "{before} {then}");
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

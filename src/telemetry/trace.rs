//! Traces: W3C trace context in and out of every request and message, and OpenTelemetry spans — SERVER per
//! request, CLIENT per upstream attempt, PRODUCER per publish — exported over OTLP/gRPC when
//! `telemetry.otlp_endpoint` is set. Without an endpoint nothing is recorded: ids are made and propagated only.
//!
//! A sampled span is a compact [`Recording`] while it runs; when it ends it is encoded and queued (`export`), and
//! one task sends batches to the collector (`otlp`). The spans follow the OpenTelemetry SDK's rules — parent-based
//! sampling with `telemetry.sample_ratio` for new traces (the SDK's `ParentBased(TraceIdRatioBased)`, computed
//! here: the test below checks it against the SDK's sampler), random non-zero ids, the parent's `tracestate`
//! carried — without the SDK's span objects, whose lifecycle cost more than the rest of tracing together
//! (`record`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::export::{self, Queue};
use super::otlp::OtlpExporter;
use super::record::{Recording, nanos_at};
use crate::config::TelemetryConfig;
use crate::request::{TRACEPARENT, TRACESTATE};

pub use super::export::Export;

/// Time allowed for one export request.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// W3C trace context of one span: ids as integers, so that a request pays for no string formatting unless a
/// header or a log line needs it. The default (all zero) stands for "no span yet".
#[derive(Clone, Debug, Default)]
pub struct TraceContext {
    /// Trace id (never 0).
    pub trace_id: u128,
    /// This span's id (never 0).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// `tracestate`, passed through.
    pub tracestate: Option<HeaderValue>,
}

/// A new span id, never zero, from the SDK's id generator: a per-thread generator seeded from the operating system,
/// so that ids seen in one `traceparent` do not predict the next ones.
fn new_span_id() -> u64 {
    loop {
        let id = u64::from_be_bytes(RandomIdGenerator::default().new_span_id().to_bytes());
        if id != 0 {
            return id;
        }
    }
}

/// A new trace id, never zero (see [`new_span_id`]).
fn new_trace_id() -> u128 {
    loop {
        let id = u128::from_be_bytes(RandomIdGenerator::default().new_trace_id().to_bytes());
        if id != 0 {
            return id;
        }
    }
}

impl TraceContext {
    /// Reads `traceparent`/`tracestate` from a request, or starts a new sampled trace; the span id is new.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = new_span_id();
        match incoming(headers) {
            Some((trace_id, _, flags)) => {
                TraceContext { trace_id, span_id, flags, tracestate: headers.get(&TRACESTATE).cloned() }
            }
            None => TraceContext { trace_id: new_trace_id(), span_id, flags: 1, tracestate: None },
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The `traceparent` to send onwards (this span as the parent).
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = [0u8; 55];
        self.write_traceparent(&mut buf);
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }

    /// Writes [`TraceContext::traceparent`]'s 55 bytes into `out`, for a request head that needs no value made.
    pub fn write_traceparent(&self, out: &mut [u8]) {
        out[..3].copy_from_slice(b"00-");
        hex_into(&mut out[3..35], &self.trace_id.to_be_bytes());
        out[35] = b'-';
        hex_into(&mut out[36..52], &self.span_id.to_be_bytes());
        out[52] = b'-';
        hex_into(&mut out[53..55], &[self.flags]);
    }
}

/// One span of this gateway: its context (always) and the recording (when exporting and sampled). Dropping it
/// ends the span.
#[derive(Debug)]
pub struct Span {
    /// The context sent onwards while this span is the current one.
    pub cx: TraceContext,
    /// Boxed: a request that records nothing should not carry (and move) the recording's space.
    recording: Option<Box<Recorded>>,
}

/// A span being recorded and the queue it goes to when it ends.
#[derive(Debug)]
struct Recorded {
    span: Recording,
    queue: Arc<Queue>,
}

impl Drop for Span {
    fn drop(&mut self) {
        // The clock is read only for a span that records (once per turn of a connection: see `clock`).
        if self.recording.is_some() {
            self.end_at(crate::clock::now());
        }
    }
}

/// Most recordings of ended spans a thread keeps for its next spans.
const KEPT_RECORDINGS: usize = 32;
/// A recording whose buffer grew past this (a huge path or user agent) is freed, not kept.
const KEPT_CAPACITY: usize = 4096;

thread_local! {
    /// Recordings of ended spans, reused by the next spans the thread starts: a recorded span then allocates
    /// nothing (neither its box nor its buffer), about 200 instructions a span less than allocating and freeing
    /// both (bench/instructions.sh). A small free list rather than a pool crate: the spans of one thread are taken
    /// and given back by that thread, so a `RefCell` is all the locking needed.
    // Boxes: the box of an ended span is what the next span reuses.
    #[allow(clippy::vec_box)]
    static RECORDINGS: RefCell<Vec<Box<Recorded>>> = const { RefCell::new(Vec::new()) };
}

/// A recording to start a span in: one kept by this thread, or a new one.
fn reuse(queue: &Arc<Queue>) -> Box<Recorded> {
    let kept = RECORDINGS.try_with(|kept| kept.try_borrow_mut().ok().and_then(|mut kept| kept.pop()));
    match kept {
        Ok(Some(mut recorded)) => {
            if !Arc::ptr_eq(&recorded.queue, queue) {
                recorded.queue = queue.clone();
            }
            recorded
        }
        _ => Box::new(Recorded { span: Recording::new(), queue: queue.clone() }),
    }
}

/// Keeps an ended span's recording for a later span of this thread, unless enough are kept.
fn recycle(mut recorded: Box<Recorded>) {
    if recorded.span.fields.capacity() > KEPT_CAPACITY {
        return;
    }
    recorded.span.clear();
    let _ = RECORDINGS.try_with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut()
            && kept.len() < KEPT_RECORDINGS
        {
            kept.push(recorded);
        }
    });
}

impl Span {
    /// Ends the span at `at` (a clock reading the caller took anyway), rather than when it is dropped; its context
    /// stays readable. Span times are read from tokio's clock, at the start and at the end, so that tests that
    /// pause time see them in order. A span never ends before it started: a turn's reading (see `clock`) may be a
    /// little older than the start of a span another thread began meanwhile.
    pub fn end_at(&mut self, at: Instant) {
        if let Some(recorded) = self.recording.take() {
            let end = nanos_at(at.into_std()).max(recorded.span.start);
            recorded.queue.push(&recorded.span, end);
            recycle(recorded);
        }
    }

    /// Whether attributes set on it are recorded (callers skip building costly values otherwise).
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Sets an attribute (built only when the span records).
    pub fn set(&mut self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(r) = &mut self.recording {
            r.span.set(attribute());
        }
    }

    /// Sets a string attribute from borrowed text (inlined, as `set_int`: the key is a constant).
    #[inline]
    pub fn set_str(&mut self, key: &str, value: &str) {
        if let Some(r) = &mut self.recording {
            r.span.set_str(key, value);
        }
    }

    /// Sets an integer attribute.
    #[inline]
    pub fn set_int(&mut self, key: &str, value: i64) {
        if let Some(r) = &mut self.recording {
            r.span.set_int(key, value);
        }
    }

    /// Marks the span as failed.
    pub fn error(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(r) = &mut self.recording {
            r.span.set_status(Status::error(description));
        }
    }
}

/// The attributes of a span being started; only called for a span that records. Text is encoded from where it
/// is (the request's path, a header), not copied into a `KeyValue` first.
pub struct Attributes<'a>(&'a mut Recording);

impl Attributes<'_> {
    /// A string attribute.
    #[inline(always)]
    pub fn str(&mut self, key: &str, value: &str) {
        self.0.set_str(key, value);
    }

    /// An integer attribute.
    #[inline(always)]
    pub fn int(&mut self, key: &str, value: i64) {
        self.0.set_int(key, value);
    }

    /// Attributes encoded beforehand.
    #[inline]
    pub fn fixed(&mut self, fixed: &FixedAttributes) {
        self.0.set_encoded(&fixed.fields, fixed.count);
    }
}

/// Attributes that are the same for every span of a route or an endpoint (its name, its address), encoded once
/// when the config is compiled and copied into each span as one piece.
#[derive(Clone, Debug, Default)]
pub struct FixedAttributes {
    fields: Vec<u8>,
    count: u32,
}

impl FixedAttributes {
    /// Adds a string attribute.
    pub fn str(mut self, key: &str, value: &str) -> FixedAttributes {
        super::otlp::encode_str_attribute(&mut self.fields, key, value);
        self.count += 1;
        self
    }

    /// Adds an integer attribute.
    pub fn int(mut self, key: &str, value: i64) -> FixedAttributes {
        super::otlp::encode_int_attribute(&mut self.fields, key, value);
        self.count += 1;
        self
    }
}

/// Makes spans; cheap to clone. The default records nothing.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    export: Option<Arc<Exporting>>,
}

/// What a tracer that exports needs.
#[derive(Debug)]
struct Exporting {
    sampler: RatioSampler,
    queue: Arc<Queue>,
}

impl Tracer {
    /// The SERVER span of a request that arrived at `start`, continuing the client's `traceparent` when it has a
    /// valid one.
    pub fn server(
        &self,
        headers: &HeaderMap,
        start: Instant,
        name: &[&str],
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Span {
        self.continuing(headers, SpanKind::Server, Some(start), name, attributes)
    }

    /// The CONSUMER span of a delivered message, continuing the `traceparent` it carries when it has a valid one.
    pub fn consumer(&self, headers: &HeaderMap, name: &[&str], attributes: impl FnOnce(&mut Attributes<'_>)) -> Span {
        self.continuing(headers, SpanKind::Consumer, None, name, attributes)
    }

    #[inline]
    fn continuing(
        &self,
        headers: &HeaderMap,
        kind: SpanKind,
        start: Option<Instant>,
        name: &[&str],
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Span {
        let Some(export) = &self.export else {
            return Span { cx: TraceContext::from_headers(headers), recording: None };
        };
        // W3C Trace Context: a `tracestate` counts only beside a valid `traceparent` (as the untraced path and the
        // SDK's propagator read them).
        let parent = incoming(headers).map(|(trace_id, span_id, flags)| Parent {
            trace_id,
            span_id,
            flags,
            remote: true,
            tracestate: headers.get(&TRACESTATE).cloned(),
        });
        let tracestate = parent.as_ref().and_then(|p| p.tracestate.clone());
        export.start(parent, tracestate, kind, start, name, attributes)
    }

    /// A child of `parent` (a CLIENT span per upstream attempt, a PRODUCER span per publish) that started at
    /// `start`, a clock reading the caller took anyway, or (`None`) now, read only if the span records.
    pub fn child(
        &self,
        parent: &TraceContext,
        kind: SpanKind,
        start: Option<Instant>,
        name: &[&str],
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Span {
        let Some(export) = &self.export else {
            return Span { cx: TraceContext { span_id: new_span_id(), ..parent.clone() }, recording: None };
        };
        let within = Parent {
            trace_id: parent.trace_id,
            span_id: parent.span_id,
            flags: parent.flags,
            remote: false,
            tracestate: parent.tracestate.clone(),
        };
        export.start(Some(within), parent.tracestate.clone(), kind, start, name, attributes)
    }
}

/// The parent a span is started in: an incoming `traceparent` (remote) or a span of this gateway.
struct Parent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    remote: bool,
    tracestate: Option<HeaderValue>,
}

impl Exporting {
    /// Starts a span the way the SDK's tracer does: a new span id; the parent's trace id when the parent is valid,
    /// else a new one; the sampler's decision; when sampled, the parent's flags with the sampled bit, else no
    /// flags at all. `tracestate` is what the span's context passes on (the request's header, whether or not
    /// its `traceparent` was valid).
    #[inline]
    fn start(
        &self,
        parent: Option<Parent>,
        tracestate: Option<HeaderValue>,
        kind: SpanKind,
        start: Option<Instant>,
        name: &[&str],
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Span {
        let span_id = new_span_id();
        let valid = parent.as_ref().filter(|p| p.trace_id != 0 && p.span_id != 0);
        let trace_id = valid.map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = self.sampler.should_sample(parent.as_ref().map(|p| p.flags), trace_id);
        let flags = if sampled { valid.map_or(0, |p| p.flags) | SAMPLED } else { 0 };
        let cx = TraceContext { trace_id, span_id, flags, tracestate };
        if !sampled {
            return Span { cx, recording: None };
        }
        let (parent_span_id, parent_is_remote) = valid.map_or((0, false), |p| (p.span_id, p.remote));
        // The SDK takes the state from the parent context even when the parent is not a valid one.
        let trace_state = parent.and_then(|p| p.tracestate);
        let mut recorded = reuse(&self.queue);
        let span = &mut recorded.span;
        // `None`: now, read only for a span that records.
        let start = nanos_at(start.unwrap_or_else(crate::clock::now).into_std());
        span.begin(trace_id, span_id, (parent_span_id, parent_is_remote), flags, trace_state, kind, start, name);
        attributes(&mut Attributes(span));
        Span { cx, recording: Some(recorded) }
    }
}

/// The W3C "sampled" trace flag.
const SAMPLED: u8 = 1;

/// The SDK's `Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))`, computed here because asking
/// the SDK's sampler needs the parent in an OpenTelemetry `Context` (an allocation and a `TraceState` copy per
/// span). A span with a parent — any parent, even an invalid one, as in the SDK — keeps the parent's decision; a
/// new trace is sampled, as `opentelemetry_sdk` 0.33 computes it, when the trace id's low 64 bits shifted right by
/// one are below `ratio × 2⁶³`, and always at a ratio of 1 or more. A test checks it against the SDK's sampler.
#[derive(Debug)]
struct RatioSampler {
    /// `ratio × 2⁶³`; 2⁶³ (above every 63-bit value) samples everything.
    threshold: u64,
}

impl RatioSampler {
    fn new(ratio: f64) -> RatioSampler {
        let threshold = if ratio >= 1.0 { 1 << 63 } else { (ratio.max(0.0) * (1u64 << 63) as f64) as u64 };
        RatioSampler { threshold }
    }

    /// Whether a span is sampled: `parent_flags` are the parent's trace flags, if it has a parent.
    fn should_sample(&self, parent_flags: Option<u8>, trace_id: u128) -> bool {
        match parent_flags {
            Some(flags) => flags & SAMPLED != 0,
            None => ((trace_id as u64) >> 1) < self.threshold,
        }
    }
}

/// Starts OTLP/gRPC export when `telemetry.otlp_endpoint` is set (must run inside the tokio runtime); otherwise a
/// tracer that records nothing.
pub fn start(cfg: &TelemetryConfig, dropped: Counter) -> Result<(Tracer, Option<Export>), String> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok((Tracer::default(), None));
    };
    let resource = Resource::builder().with_service_name(cfg.service_name.clone()).build();
    let exporter = OtlpExporter::new(endpoint, &resource, EXPORT_TIMEOUT)?;
    let (queue, export) = export::spawn(exporter, dropped);
    let shown = crate::redact::url(endpoint);
    tracing::info!(endpoint = %shown, sample_ratio = cfg.sample_ratio, "exporting traces over OTLP/gRPC");
    let exporting = Exporting { sampler: RatioSampler::new(cfg.sample_ratio), queue };
    Ok((Tracer { export: Some(Arc::new(exporting)) }, Some(export)))
}

/// `(trace id, parent span id, flags)` of a valid incoming `traceparent`.
fn incoming(headers: &HeaderMap) -> Option<(u128, u64, u8)> {
    headers.get(&TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()))
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Each byte's two lower-case hex digits: one load per byte instead of two (a `traceparent` per upstream request).
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, u8)> {
    // version(2) - trace-id(32) - parent-id(16) - flags(2); future versions may append fields.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let hex = |s: &[u8]| -> Option<u128> {
        s.iter().try_fold(0u128, |acc, b| {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u128::from(d))
        })
    };
    let version = hex(&v[..2])?;
    let trace = hex(&v[3..35])?;
    let parent = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    (version != 0xff && trace != 0 && parent != 0 && (version != 0 || v.len() == 55)).then_some((
        trace,
        parent as u64,
        flags as u8,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_and_starts_one_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        h.insert("tracestate", "vendor=1".parse().unwrap());
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        let sent = t.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(sent.ends_with("-01") && sent.len() == 55, "{sent}");
        assert_eq!(t.tracestate.unwrap(), "vendor=1");
        let bad = HeaderMap::from_iter([(
            http::header::HeaderName::from_static("traceparent"),
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        )]);
        let fresh = TraceContext::from_headers(&bad);
        assert_eq!(fresh.trace_id_hex().len(), 32);
        assert_ne!(fresh.trace_id, 0);
        assert!(fresh.traceparent().to_str().unwrap().starts_with("00-"));
    }

    fn tracer(ratio: f64) -> Tracer {
        let queue = Arc::new(Queue::new(0, 64, Counter::default()));
        Tracer { export: Some(Arc::new(Exporting { sampler: RatioSampler::new(ratio), queue })) }
    }

    fn recorded(span: &Span) -> &Recording {
        &span.recording.as_ref().expect("a recording span").span
    }

    #[test]
    fn the_ratio_sampler_decides_as_the_sdks() {
        use opentelemetry::Context;
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
        use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
        for ratio in [-1.0, 0.0, 1e-9, 0.25, 0.5, 0.75, 0.999_999, 1.0, 2.0] {
            let sdk = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
            let ours = RatioSampler::new(ratio);
            let special = [1, u128::from(u64::MAX), 1 << 64, u128::from(u64::MAX >> 1), u128::from(u64::MAX >> 2)];
            let ids = special.into_iter().chain((0..2000).map(|_| fastrand::u128(1..)));
            for trace_id in ids {
                for parent in [None, Some(0u8), Some(1), Some(3), Some(2)] {
                    let cx = match parent {
                        None => Context::new(),
                        Some(flags) => Context::new().with_remote_span_context(SpanContext::new(
                            TraceId::from(trace_id),
                            SpanId::from(5u64),
                            TraceFlags::new(flags),
                            true,
                            Default::default(),
                        )),
                    };
                    let decision =
                        sdk.should_sample(Some(&cx), TraceId::from(trace_id), "n", &SpanKind::Server, &[], &[]);
                    let expected = decision.decision == SamplingDecision::RecordAndSample;
                    assert_eq!(ours.should_sample(parent, trace_id), expected, "{ratio} {trace_id:x} {parent:?}");
                }
            }
        }
    }

    #[test]
    fn spans_start_as_the_sdk_starts_them() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02".parse().unwrap());
        h.insert("tracestate", "vendor=1".parse().unwrap());
        // A remote parent not sampled: its decision is kept, and the flags are cleared.
        let server = tracer(1.0).server(&h, Instant::now(), &["GET r"], |_| {});
        assert!(!server.is_recording());
        assert_eq!((server.cx.trace_id, server.cx.flags), (0x4bf92f3577b34da6a3ce929d0e0e4736, 0));
        assert_eq!(server.cx.tracestate.as_ref().unwrap(), "vendor=1");

        // A sampled remote parent: sampled whatever the ratio, its other flags kept.
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".parse().unwrap());
        let tracer = tracer(0.0);
        let mut server = tracer.server(&h, Instant::now(), &["GET r"], |a| a.str("k", "v"));
        server.set(|| KeyValue::new("late", 1));
        server.error("answered 503");
        let r = recorded(&server);
        assert_eq!((r.trace_id, r.span_id, r.flags), (server.cx.trace_id, server.cx.span_id, 3));
        assert_eq!(
            (r.parent_span_id, r.parent_is_remote, r.kind.clone()),
            (0x00f067aa0ba902b7, true, SpanKind::Server)
        );
        assert_eq!(r.trace_state.as_ref().unwrap(), "vendor=1");
        assert!(r.fields.starts_with(&[0x2a, 5, b'G', b'E', b'T', b' ', b'r']), "the name comes first");
        assert_eq!((r.attribute_count, &r.status), (2, &Status::error("answered 503")));
        assert!(r.start > 0);

        // Its child: same trace, the server span as a local parent.
        let child = tracer.child(&server.cx, SpanKind::Client, None, &["GET"], |_| {});
        let c = recorded(&child);
        assert_eq!((c.trace_id, c.parent_span_id, c.parent_is_remote, c.flags), (r.trace_id, r.span_id, false, 3));
        assert_eq!(c.trace_state.as_ref().unwrap(), "vendor=1");
        assert_ne!(c.span_id, r.span_id);

        // No valid parent: a new trace, sampled by ratio; the `tracestate` beside the invalid parent is dropped.
        h.insert("traceparent", "garbage".parse().unwrap());
        let root = tracer.server(&h, Instant::now(), &["GET r"], |_| {});
        assert!(!root.is_recording());
        assert_eq!(root.cx.flags, 0);
        assert_ne!(root.cx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        let root = super::tests::tracer(1.0).server(&h, Instant::now(), &["GET r"], |_| {});
        let r = recorded(&root);
        assert_eq!((r.parent_span_id, r.parent_is_remote, r.flags, r.trace_state.is_none()), (0, false, 1, true));
        assert_eq!(root.cx.tracestate, None);

        // A child of "no span yet" (all zero): a new trace, not sampled (the SDK's parent-based rule).
        let orphan = tracer.child(&TraceContext::default(), SpanKind::Producer, None, &["send"], |_| {});
        assert!(!orphan.is_recording());
        assert_ne!(orphan.cx.trace_id, 0);
    }

    #[test]
    fn an_ended_spans_recording_is_reused_with_nothing_left_of_it() {
        let tracer = tracer(1.0);
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        h.insert("tracestate", "vendor=1".parse().unwrap());
        let mut first = tracer.server(&h, Instant::now(), &["GET /a"], |a| a.str("k", "v"));
        first.error("answered 502");
        let at: *const Recording = recorded(&first);
        drop(first);
        let second = tracer.server(&HeaderMap::new(), Instant::now(), &["GET /b"], |_| {});
        let r = recorded(&second);
        assert!(std::ptr::eq(r, at), "the ended span's box is reused");
        assert_eq!((r.fields.as_slice(), r.attribute_count), (&[0x2a, 6, b'G', b'E', b'T', b' ', b'/', b'b'][..], 0));
        assert_eq!((&r.status, r.trace_state.is_none(), r.parent_span_id), (&Status::Unset, true, 0));
    }

    #[test]
    fn attributes_encoded_beforehand_are_the_same_bytes() {
        let (mut a, mut b) = (super::super::record::test_recording(), super::super::record::test_recording());
        a.set_str("sluice.route", "orders");
        a.set_int("server.port", 8080);
        let fixed = FixedAttributes::default().str("sluice.route", "orders").int("server.port", 8080);
        Attributes(&mut b).fixed(&fixed);
        assert_eq!((a.fields, a.attribute_count), (b.fields, b.attribute_count));
        let mut full = super::super::record::test_recording();
        (0..127).for_each(|_| full.set_int("k", 1));
        Attributes(&mut full).fixed(&fixed);
        assert_eq!((full.attribute_count, full.dropped_attributes), (127, 2), "all or none");
    }

    #[test]
    fn a_tracer_without_export_makes_children_of_the_same_trace() {
        let tracer = Tracer::default();
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap());
        let server = tracer.server(&h, Instant::now(), &["GET r"], |_| {});
        let child = tracer.child(&server.cx, SpanKind::Client, None, &["GET"], |_| {});
        assert_eq!(child.cx.trace_id, server.cx.trace_id);
        assert_ne!(child.cx.span_id, server.cx.span_id);
        assert_eq!(child.cx.flags, 0, "the caller's sampling decision is kept");
        assert!(!server.is_recording());
    }
}

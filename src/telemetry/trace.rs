//! Traces: W3C trace context in and out of every request and message, and OpenTelemetry spans — SERVER per
//! request, CLIENT per upstream attempt, PRODUCER per publish — exported over OTLP/gRPC when
//! `telemetry.otlp_endpoint` is set. Without an endpoint nothing is recorded: ids are made and propagated only.
//!
//! Export runs off the request path: a finished span is handed to a bounded queue (a full queue drops it and
//! counts `sluice_trace_spans_dropped_total`), and one task encodes and sends batches to the collector (`otlp`).
//! A collector that is down slows no request. The queue is written here rather than using the SDK's `BatchSpanProcessor` because
//! that processor does not expose how many spans it dropped, and it runs a thread of its own outside tokio.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::otlp::OtlpExporter;
use crate::config::TelemetryConfig;
use crate::request::{TRACEPARENT, TRACESTATE};

/// Finished spans waiting for export; more are dropped (and counted).
const QUEUE_CAPACITY: usize = 8192;
/// Most spans sent in one export request.
const MAX_BATCH: usize = 512;
/// How long a batch waits for more spans before it is sent.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Time allowed for one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

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

impl TraceContext {
    /// Reads `traceparent`/`tracestate` from a request, or starts a new sampled trace; the span id is new.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = fastrand::u64(1..);
        match incoming(headers) {
            Some((trace_id, _, flags)) => {
                TraceContext { trace_id, span_id, flags, tracestate: headers.get(&TRACESTATE).cloned() }
            }
            None => TraceContext { trace_id: fastrand::u128(1..), span_id, flags: 1, tracestate: None },
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
        buf[..3].copy_from_slice(b"00-");
        hex_into(&mut buf[3..35], &self.trace_id.to_be_bytes());
        buf[35] = b'-';
        hex_into(&mut buf[36..52], &self.span_id.to_be_bytes());
        buf[52] = b'-';
        hex_into(&mut buf[53..55], &[self.flags]);
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }

    fn of(span: &opentelemetry_sdk::trace::Span, tracestate: Option<HeaderValue>) -> TraceContext {
        let sc = span.span_context();
        TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
            tracestate,
        }
    }

    fn as_parent(&self, remote: bool) -> Context {
        let state = self
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let sc = SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            TraceFlags::new(self.flags),
            remote,
            state,
        );
        Context::new().with_remote_span_context(sc)
    }
}

/// One span of this gateway: its context (always) and the recording OpenTelemetry span (when exporting and
/// sampled). Dropping it ends the span.
#[derive(Debug)]
pub struct Span {
    /// The context sent onwards while this span is the current one.
    pub cx: TraceContext,
    /// Boxed: a request that records nothing should not carry (and move) the SDK span's space.
    otel: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl Span {
    /// Whether attributes set on it are recorded (callers skip building costly values otherwise).
    pub fn is_recording(&self) -> bool {
        self.otel.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Sets an attribute (built only when the span records).
    pub fn set(&mut self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(s) = self.otel.as_mut().filter(|s| s.is_recording()) {
            s.set_attribute(attribute());
        }
    }

    /// Marks the span as failed.
    pub fn error(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(s) = self.otel.as_mut() {
            s.set_status(Status::error(description));
        }
    }
}

/// Makes spans; cheap to clone. The default records nothing.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    sdk: Option<SdkTracer>,
}

impl Tracer {
    /// The SERVER span of a request, continuing the client's `traceparent` when it has a valid one.
    pub fn server(
        &self,
        headers: &HeaderMap,
        name: impl FnOnce() -> Cow<'static, str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        self.continuing(headers, SpanKind::Server, name, attributes)
    }

    /// The CONSUMER span of a delivered message, continuing the `traceparent` it carries when it has a valid one.
    pub fn consumer(
        &self,
        headers: &HeaderMap,
        name: impl FnOnce() -> Cow<'static, str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        self.continuing(headers, SpanKind::Consumer, name, attributes)
    }

    #[inline]
    fn continuing(
        &self,
        headers: &HeaderMap,
        kind: SpanKind,
        name: impl FnOnce() -> Cow<'static, str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(tracer) = &self.sdk else {
            return Span { cx: TraceContext::from_headers(headers), otel: None };
        };
        let tracestate = headers.get(&TRACESTATE).cloned();
        let parent = match incoming(headers) {
            Some((trace_id, span_id, flags)) => {
                TraceContext { trace_id, span_id, flags, tracestate: tracestate.clone() }.as_parent(true)
            }
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name())
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, &parent);
        Span { cx: TraceContext::of(&span, tracestate), otel: Some(Box::new(span)) }
    }

    /// A child of `parent` (a CLIENT span per upstream attempt, a PRODUCER span per publish).
    pub fn child(
        &self,
        parent: &TraceContext,
        kind: SpanKind,
        name: impl FnOnce() -> Cow<'static, str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(tracer) = &self.sdk else {
            return Span { cx: TraceContext { span_id: fastrand::u64(1..), ..parent.clone() }, otel: None };
        };
        let span = tracer
            .span_builder(name())
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, &parent.as_parent(false));
        Span { cx: TraceContext::of(&span, parent.tracestate.clone()), otel: Some(Box::new(span)) }
    }
}

/// A method's name: the standard methods are static strings (no copy per span).
pub fn method_name(method: &Method) -> Cow<'static, str> {
    match *method {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::DELETE => "DELETE".into(),
        Method::HEAD => "HEAD".into(),
        Method::OPTIONS => "OPTIONS".into(),
        Method::PATCH => "PATCH".into(),
        Method::CONNECT => "CONNECT".into(),
        Method::TRACE => "TRACE".into(),
        _ => method.as_str().to_owned().into(),
    }
}

/// A method as an attribute value (see [`method_name`]).
pub fn method_value(method: &Method) -> Value {
    Value::from(method_name(method))
}

/// The running OTLP export: flushes what is queued on shutdown.
#[derive(Debug)]
pub struct Export {
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    _provider: SdkTracerProvider,
}

impl Export {
    /// Sends every span queued so far, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        let flushed = tokio::time::timeout(timeout, async {
            if self.flushes.send(done).await.is_ok() {
                let _ = wait.await;
            }
        });
        if flushed.await.is_err() {
            tracing::warn!(?timeout, "trace export did not flush in time");
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
    let queue = Arc::new(Queue::new(QUEUE_CAPACITY, dropped));
    let (flushes, flush_requests) = mpsc::channel(4);
    tokio::spawn(export_loop(exporter, queue.clone(), flush_requests));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(QueueProcessor(queue))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("sluice");
    let shown = crate::redact::url(endpoint);
    tracing::info!(endpoint = %shown, sample_ratio = cfg.sample_ratio, "exporting traces over OTLP/gRPC");
    Ok((Tracer { sdk: Some(tracer) }, Some(Export { flushes, _provider: provider })))
}

/// Finished spans waiting for export. A plain vector under a lock: a request's thread pushes a span and, once a
/// batch is full, wakes the export task — cheaper than a channel send (and a box) per span.
#[derive(Debug)]
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    /// Most spans waiting; more are dropped.
    capacity: usize,
    /// Notified when a full batch is waiting.
    full: Notify,
    /// `sluice_trace_spans_dropped_total`.
    dropped: Counter,
}

impl Queue {
    fn new(capacity: usize, dropped: Counter) -> Queue {
        Queue { spans: Mutex::new(Vec::with_capacity(MAX_BATCH)), capacity, full: Notify::new(), dropped }
    }
}

/// Hands finished spans to the export task without ever waiting.
#[derive(Debug)]
struct QueueProcessor(Arc<Queue>);

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queue = &self.0;
        let mut spans = queue.spans.lock().expect("span queue lock");
        if spans.len() >= queue.capacity {
            drop(spans);
            queue.dropped.inc();
            return;
        }
        spans.push(span);
        if spans.len() == MAX_BATCH {
            queue.full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing is asynchronous (`Export::flush`); the SDK never needs to call this.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends what is queued when a batch is full, every `BATCH_DELAY`, and on a flush request; one batch (at most
/// `MAX_BATCH` spans) at a time, encoded into one reused buffer. Failures are logged at most once a minute: an
/// absent collector must not flood the log.
async fn export_loop(
    mut exporter: OtlpExporter,
    queue: Arc<Queue>,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut frame: Vec<u8> = Vec::new();
    let mut last_warning: Option<Instant> = None;
    loop {
        let flush = tokio::select! {
            () = queue.full.notified() => None,
            () = tokio::time::sleep(BATCH_DELAY) => None,
            request = flush_requests.recv() => match request {
                Some(done) => Some(done),
                None => return,
            },
        };
        // Everything queued, sent in batches of at most `MAX_BATCH`: the queue's vector is swapped for the empty
        // one of the previous round, so no span is moved twice.
        std::mem::swap(&mut *queue.spans.lock().expect("span queue lock"), &mut batch);
        for chunk in batch.chunks(MAX_BATCH) {
            let start = exporter.encode(chunk, &mut frame);
            let capacity = frame.capacity();
            let sent = Bytes::from(std::mem::replace(&mut frame, Vec::with_capacity(capacity))).slice(start..);
            if let Err(e) = exporter.send(sent).await
                && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                last_warning = Some(Instant::now());
                let spans = chunk.len();
                tracing::warn!(error = %e, spans, "trace export failed (repeats are not logged for a minute)");
            }
        }
        batch.clear();
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// `(trace id, parent span id, flags)` of a valid incoming `traceparent`.
fn incoming(headers: &HeaderMap) -> Option<(u128, u64, u8)> {
    headers.get(&TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()))
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

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

    fn finished(sampled: bool) -> SpanData {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanData {
            span_context: SpanContext::new(TraceId::from(7u128), SpanId::from(9u64), flags, false, TraceState::NONE),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET /".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_full_export_queue_drops_and_counts_instead_of_waiting() {
        let dropped = Counter::default();
        let queue = Arc::new(Queue::new(2, dropped.clone()));
        let processor = QueueProcessor(queue.clone());
        for _ in 0..5 {
            processor.on_end(finished(true));
        }
        processor.on_end(finished(false));
        assert_eq!(dropped.get(), 3, "two fit in the queue, three were dropped, the unsampled one was never queued");
        assert_eq!(queue.spans.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_tracer_without_export_makes_children_of_the_same_trace() {
        let tracer = Tracer::default();
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap());
        let server = tracer.server(&h, || "GET r".into(), Vec::new);
        let child = tracer.child(&server.cx, SpanKind::Client, || "GET".into(), Vec::new);
        assert_eq!(child.cx.trace_id, server.cx.trace_id);
        assert_ne!(child.cx.span_id, server.cx.span_id);
        assert_eq!(child.cx.flags, 0, "the caller's sampling decision is kept");
        assert!(!server.is_recording());
    }
}

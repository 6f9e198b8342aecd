//! OTLP/gRPC export of finished spans: each span is encoded when it ends, straight from Sluice's [`Recording`]
//! into the protobuf of a `ScopeSpans.spans` entry appended to a batch; a batch is then made one
//! `ExportTraceServiceRequest` (its enclosing headers written in front of the spans) and sent as a unary gRPC call
//! (`TraceService/Export`) over HTTP/2 — h2c for an `http://` endpoint, TLS with ALPN `h2` and the system's
//! roots for `https://`.
//!
//! Written here instead of using `opentelemetry-otlp`'s exporter: that one converts every span into
//! `opentelemetry-proto`'s owned structs (a copy of each string, a map to group spans by resource and scope) and
//! prost then encodes the nested messages; measured with callgrind on a forward route traced at ratio 1.0, that
//! export cost about 30,000 instructions per request (two spans) — more than 70% of the whole untraced request
//! path (bench/README.md). This encoder writes each field once. The wire format is the stable OTLP 1.x protobuf
//! (`opentelemetry/proto/trace/v1/trace.proto`); the tests in `tests/tracing.rs` check what a real OpenTelemetry
//! Collector decoded from it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanKind, Status, TraceState};
use opentelemetry::{Array, Value};
use opentelemetry_sdk::Resource;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::record::Recording;
use crate::upstream::{Connector, EndpointUrl, authority_host};

/// The gRPC method of the OTLP trace service.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The instrumentation scope of Sluice's spans.
const SCOPE_NAME: &str = "sluice";

/// Sends batches of spans to one OTLP/gRPC collector.
#[derive(Debug)]
pub struct OtlpExporter {
    endpoint: String,
    target: EndpointUrl,
    uri: Uri,
    /// For an `https://` collector: its roots and the name its certificate must carry.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// The HTTP/2 connection's client, made on first use and again after a failure (which resolves the host anew).
    client: Option<Client<Connector, Full<Bytes>>>,
    /// The `Resource` message (field 1 of `ResourceSpans`), encoded once.
    resource: Vec<u8>,
    /// The `InstrumentationScope` message (field 1 of `ScopeSpans`): its name, no version, no attributes.
    scope: Vec<u8>,
    timeout: Duration,
}

impl OtlpExporter {
    /// An exporter to `endpoint` (`http://host:port` or `https://host:port`); `timeout` covers connecting and
    /// each export call.
    pub fn new(endpoint: &str, resource: &Resource, timeout: Duration) -> Result<Self, String> {
        let shown = crate::redact::url(endpoint);
        let bad = |why: &str| format!("telemetry.otlp_endpoint {shown:?}: {why}");
        let given: Uri = endpoint.parse().map_err(|_| bad("is not a URL"))?;
        let https = match given.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        let host = given.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("has no host"))?;
        // A path, if any, is not used: the OTLP/gRPC method's path is fixed.
        let target = EndpointUrl {
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: given.port_u16().unwrap_or(if https { 443 } else { 80 }),
        };
        let uri: Uri = format!("{}://{}:{}{EXPORT_PATH}", target.scheme, authority_host(&target.host), target.port)
            .parse()
            .map_err(|_| bad("is not a URL"))?;
        let tls = match https {
            true => {
                let config = crate::tls::collector().map_err(|e| e.to_string())?;
                let name = crate::tls::server_name(None, &target.host)
                    .map_err(|e| format!("telemetry.otlp_endpoint {shown:?}: {e}"))?;
                Some((config, name))
            }
            false => None,
        };
        let mut w = Writer::default();
        w.message(1, |w| {
            for (key, value) in resource.iter() {
                attribute(w, 1, key.as_str(), value);
            }
        });
        let mut scope = Writer::default();
        scope.message(1, |w| w.string(1, SCOPE_NAME));
        Ok(OtlpExporter { endpoint: shown, target, uri, tls, client: None, resource: w.buf, scope: scope.buf, timeout })
    }

    /// The client, resolving the collector's host first when there is none.
    async fn client(&mut self) -> Result<&Client<Connector, Full<Bytes>>, String> {
        if self.client.is_none() {
            let addr = tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| format!("{}: the host does not resolve", self.endpoint))?;
            let connector = Connector::new(addr, self.timeout, self.tls.clone());
            self.client = Some(Client::builder(TokioExecutor::new()).http2_only(true).build(connector));
        }
        Ok(self.client.as_ref().expect("made above"))
    }

    /// Bytes to leave free at the start of a batch for [`frame`](Self::frame): the gRPC frame header, the
    /// `ResourceSpans` and `ScopeSpans` headers (a key and a length of at most 10 bytes each), the resource and
    /// the scope.
    pub fn room(&self) -> usize {
        5 + 11 + self.resource.len() + 11 + self.scope.len()
    }

    /// Makes a batch — [`room`](Self::room) bytes, then spans appended by [`encode_span`] — one gRPC message
    /// (the 5-byte frame header, then an `ExportTraceServiceRequest` with one `ResourceSpans` and one
    /// `ScopeSpans`) and returns where in `buf` the message starts.
    ///
    /// The lengths of the enclosing messages are only known once the spans are written, and a length comes before
    /// its message: rather than moving the whole batch to make room for them, the spans were written after enough
    /// room for the headers, which are now written backwards in front of them.
    pub fn frame(&self, buf: &mut [u8]) -> usize {
        let room = self.room();
        // `ScopeSpans.schema_url` (field 3) would follow the spans; Sluice's scope has none.
        let scope_spans = self.scope.len() + (buf.len() - room);
        let mut at = put(buf, room, &self.scope);
        at = put(buf, at, &length_prefixed(2, scope_spans));
        at = put(buf, at, &self.resource);
        let resource_spans = buf.len() - at;
        at = put(buf, at, &length_prefixed(1, resource_spans));
        let message = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
        at = put(buf, at, &message.to_be_bytes());
        put(buf, at, &[0])
    }

    /// Sends one batch (made by [`frame`](Self::frame)) and waits for the collector's answer.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), String> {
        let req = Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(frame))
            .map_err(|e| e.to_string())?;
        let (endpoint, timeout) = (self.endpoint.clone(), self.timeout);
        let call = async {
            let client = self.client().await?;
            let res = client.request(req).await.map_err(|e| format!("{endpoint}: {e}"))?;
            let status = res.status();
            // A "trailers-only" answer carries grpc-status in its headers.
            let mut grpc = grpc_status(res.headers());
            let collected = res.into_body().collect().await.map_err(|e| format!("{endpoint}: {e}"))?;
            if let Some(trailers) = collected.trailers() {
                grpc = grpc.or_else(|| grpc_status(trailers));
            }
            match grpc {
                _ if !status.is_success() => Err(format!("{endpoint}: HTTP status {status}")),
                Some((0, _)) => Ok(()),
                Some((code, message)) => Err(format!("{endpoint}: gRPC status {code}: {message}")),
                None => Err(format!("{endpoint}: the answer has no grpc-status")),
            }
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("{endpoint}: no answer within {timeout:?}")),
        };
        if result.is_err() {
            // The next batch connects (and resolves) again.
            self.client = None;
        }
        result
    }
}

/// `grpc-status` and `grpc-message` of a header map, when it has a status.
fn grpc_status(headers: &http::HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    Some((code, message))
}

/// The key of length-delimited field `field` (< 16) and `len` as a varint.
fn length_prefixed(field: u32, len: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.key(field, 2);
    w.varint(len as u64);
    w.buf
}

/// Writes `bytes` to end at `end` in `buf` and returns where they start.
fn put(buf: &mut [u8], end: usize, bytes: &[u8]) -> usize {
    let start = end - bytes.len();
    buf[start..end].copy_from_slice(bytes);
    start
}

/// Appends one finished span to a batch: a `ScopeSpans.spans` entry (field 2) holding an
/// `opentelemetry.proto.trace.v1.Span`. Its length is known before it is written: the fields every span has take
/// a constant 54 bytes, written as one block; the name and attributes were encoded as they were set; the rare
/// parts (a `tracestate`, dropped attributes, a status) are measured aside. A protobuf reader takes fields in any
/// order. A span has no events and no links (Sluice records none): their fields and dropped counts (11 to 14) are
/// left out, as proto3 leaves out empty and zero fields.
pub fn encode_span(buf: &mut Vec<u8>, s: &Recording, end: u64) {
    // `trace_id` (1), `span_id` (2), `kind` (6), `start_time_unix_nano` (7), `end_time_unix_nano` (8) and
    // `flags` (16): keys and lengths that are constants.
    // The start and the end may come from two anchors of the clock (`record::nanos_at`): an end is never written
    // before its start.
    let end = end.max(s.start);
    let mut head = [0u8; 54];
    head[..2].copy_from_slice(&[0x0a, 16]);
    head[2..18].copy_from_slice(&s.trace_id.to_be_bytes());
    head[18..20].copy_from_slice(&[0x12, 8]);
    head[20..28].copy_from_slice(&s.span_id.to_be_bytes());
    head[28..31].copy_from_slice(&[0x30, kind(&s.kind), 0x39]);
    head[31..39].copy_from_slice(&s.start.to_le_bytes());
    head[39] = 0x41;
    head[40..48].copy_from_slice(&end.to_le_bytes());
    head[48..50].copy_from_slice(&[0x85, 0x01]);
    head[50..54].copy_from_slice(&flags(s.parent_is_remote, s.flags).to_le_bytes());
    // `parent_span_id` (4), for all but root spans.
    let mut parent = [0u8; 10];
    parent[..2].copy_from_slice(&[0x22, 8]);
    parent[2..].copy_from_slice(&s.parent_span_id.to_be_bytes());
    let parent_len = if s.parent_span_id != 0 { parent.len() } else { 0 };
    let mut rare = Writer::default();
    // The SDK's `TraceState`: an invalid `tracestate` counts as none, a valid one is written normalised.
    if let Some(state) = s.trace_state.as_ref().and_then(|v| v.to_str().ok()).and_then(|v| TraceState::from_str(v).ok())
    {
        rare.string(3, &state.header());
    }
    rare.uint(10, u64::from(s.dropped_attributes));
    let (code, message) = match &s.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    if code != 0 {
        rare.message(15, |w| {
            w.string(2, message);
            w.uint(3, code);
        });
    }
    let len = head.len() + parent_len + s.fields.len() + rare.buf.len();
    buf.reserve(11 + len);
    key_and_length(buf, 0x12, len);
    buf.extend_from_slice(&head);
    if parent_len != 0 {
        buf.extend_from_slice(&parent);
    }
    buf.extend_from_slice(&s.fields);
    if !rare.buf.is_empty() {
        buf.extend_from_slice(&rare.buf);
    }
}

/// The span's W3C trace flags plus the "is the parent remote" bits of OTLP's `SpanFlags`.
fn flags(remote: bool, trace_flags: u8) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// `Span.SpanKind` (0 is "unspecified").
fn kind(kind: &SpanKind) -> u8 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// An attribute: a `common.v1.KeyValue` (`key` = 1, `value` = 2, an `AnyValue`) as field `field` (< 16). Strings
/// and numbers — nearly every attribute — have lengths known up front (a `KeyValue`'s length follows from its
/// key's and value's): the attribute's tags and lengths are written straight into the output, around its key and
/// value, with no nested message to measure afterwards and no temporary copy.
fn attribute(w: &mut Writer, field: u32, key: &str, value: &Value) {
    let any = match value {
        Value::String(s) => Any::Str(s.as_str().as_bytes()),
        // int64 as a varint of its two's complement.
        Value::I64(i) => Any::Int(*i as u64),
        Value::Bool(b) => Any::Bool(u8::from(*b)),
        Value::F64(f) => Any::Float(f.to_bits()),
        _ => return w.message(field, |w| key_value(w, key, value)),
    };
    simple_attribute(&mut w.buf, field, key, any);
}

/// The span's name (`Span.name`, field 5), the concatenation of `parts`, appended to `buf`: a name made of a
/// method and a route's pattern is written from where they are, not formatted into a `String` first.
pub fn encode_name(buf: &mut Vec<u8>, parts: &[&str]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(11 + len);
    key_and_length(buf, 0x2a, len);
    parts.iter().for_each(|p| buf.extend_from_slice(p.as_bytes()));
}

/// A span attribute (`Span.attributes`, field 9) appended to `buf` as it is sent.
pub fn encode_attribute(buf: &mut Vec<u8>, key: &str, value: &Value) {
    Writer::append(buf, |w| attribute(w, 9, key, value));
}

/// A string span attribute appended to `buf`, from borrowed text (no `Value` made). Inlined, as the two below:
/// the key is nearly always a constant, and its length and copy then fold into the caller.
#[inline(always)]
pub fn encode_str_attribute(buf: &mut Vec<u8>, key: &str, value: &str) {
    simple_attribute(buf, 9, key, Any::Str(value.as_bytes()));
}

/// An integer span attribute appended to `buf`.
#[inline(always)]
pub fn encode_int_attribute(buf: &mut Vec<u8>, key: &str, value: i64) {
    simple_attribute(buf, 9, key, Any::Int(value as u64));
}

/// [`attribute`] of a string or a number, appended to `buf`.
#[inline(always)]
fn simple_attribute(buf: &mut Vec<u8>, field: u32, key: &str, any: Any<'_>) {
    let k = key.as_bytes();
    let any_len = match any {
        Any::Str(v) => 1 + len_delimited(v.len()),
        Any::Int(i) => 1 + varint_len(i),
        Any::Bool(_) => 2,
        Any::Float(_) => 9,
    };
    let kv_len = 1 + len_delimited(k.len()) + 1 + len_delimited(any_len);
    if kv_len >= 0x80 {
        return Writer::append(buf, |w| long_attribute(w, field, k, kv_len, any_len, any));
    }
    // Every length inside is shorter still: one byte each.
    buf.reserve(2 + kv_len);
    buf.extend_from_slice(&[(field << 3 | 2) as u8, kv_len as u8, 0x0a, k.len() as u8]);
    buf.extend_from_slice(k);
    match any {
        Any::Str(v) => {
            buf.extend_from_slice(&[0x12, any_len as u8, 0x0a, v.len() as u8]);
            buf.extend_from_slice(v);
        }
        Any::Int(i) => {
            buf.extend_from_slice(&[0x12, any_len as u8, 0x18]);
            let mut w = [0; 10];
            let n = varint_into(&mut w, i);
            buf.extend_from_slice(&w[..n]);
        }
        Any::Bool(b) => buf.extend_from_slice(&[0x12, 2, 0x10, b]),
        Any::Float(f) => {
            buf.extend_from_slice(&[0x12, 9, 0x21]);
            buf.extend_from_slice(&f.to_le_bytes());
        }
    }
}

/// [`simple_attribute`] of 128 bytes or more: lengths of more than one byte.
#[inline(never)]
fn long_attribute(w: &mut Writer, field: u32, k: &[u8], kv_len: usize, any_len: usize, any: Any<'_>) {
    w.key(field, 2);
    w.varint(kv_len as u64);
    w.bytes(1, k);
    w.key(2, 2);
    w.varint(any_len as u64);
    match any {
        Any::Str(v) => w.bytes(1, v),
        Any::Int(i) => w.varint_field(3, i),
        Any::Bool(b) => w.varint_field(2, u64::from(b)),
        Any::Float(f) => w.fixed64(4, f),
    }
}

/// Appends a field's key (one byte) and a length: for lengths under 16,384 (every span but a huge one), as copies
/// of a constant size, which compile to a few stores instead of a `memcpy` call.
#[inline(always)]
fn key_and_length(buf: &mut Vec<u8>, key: u8, len: usize) {
    if len < 0x80 {
        buf.extend_from_slice(&[key, len as u8]);
    } else if len < 0x4000 {
        buf.extend_from_slice(&[key, (len as u8) | 0x80, (len >> 7) as u8]);
    } else {
        let mut b = [0u8; 11];
        b[0] = key;
        let n = 1 + varint_into(&mut b[1..], len as u64);
        buf.extend_from_slice(&b[..n]);
    }
}

/// Writes `v` as a varint at the start of `out` (10 bytes or more); returns its length.
#[inline(always)]
fn varint_into(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// An `AnyValue` whose length is known before it is written: a string's bytes, or a number's bits.
#[derive(Clone, Copy)]
enum Any<'a> {
    Str(&'a [u8]),
    Int(u64),
    Bool(u8),
    Float(u64),
}

/// Bytes taken by a length-delimited value of `len` bytes after its key: the length's varint and the value.
#[inline]
fn len_delimited(len: usize) -> usize {
    varint_len(len as u64) + len
}

#[inline(always)]
fn varint_len(v: u64) -> usize {
    // Nearly every length is one byte.
    if v < 0x80 { 1 } else { (64 - v.leading_zeros() as usize).div_ceil(7) }
}

/// `common.v1.KeyValue`: `key` = 1, `value` (an `AnyValue`) = 2.
fn key_value(w: &mut Writer, key: &str, value: &Value) {
    w.string(1, key);
    w.message(2, |w| any_value(w, value));
}

/// `common.v1.AnyValue`: a oneof, so the member is written even when it holds its default.
fn any_value(w: &mut Writer, value: &Value) {
    match value {
        Value::String(s) => w.string_always(1, s.as_str()),
        Value::Bool(b) => w.varint_field(2, u64::from(*b)),
        // int64 as a varint of its two's complement.
        Value::I64(i) => w.varint_field(3, *i as u64),
        Value::F64(f) => w.fixed64(4, f.to_bits()),
        Value::Array(array) => w.message(5, |w| match array {
            Array::Bool(v) => v.iter().for_each(|b| w.message(1, |w| w.varint_field(2, u64::from(*b)))),
            Array::I64(v) => v.iter().for_each(|i| w.message(1, |w| w.varint_field(3, *i as u64))),
            Array::F64(v) => v.iter().for_each(|f| w.message(1, |w| w.fixed64(4, f.to_bits()))),
            Array::String(v) => v.iter().for_each(|s| w.message(1, |w| w.string_always(1, s.as_str()))),
            // Kinds a later `opentelemetry` may add are sent as their text.
            other => w.message(1, |w| w.string_always(1, &other.to_string())),
        }),
        other => w.string_always(1, other.as_str().as_ref()),
    }
}

/// Protobuf wire-format writer. A nested message's length is only known once it is written: one byte is reserved
/// for it, and the rare message of 128 bytes or more moves up by the extra length bytes.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Runs `write` on a writer appending to `buf`.
    #[inline(always)]
    fn append(buf: &mut Vec<u8>, write: impl FnOnce(&mut Writer)) {
        let mut w = Writer { buf: std::mem::take(buf) };
        write(&mut w);
        *buf = w.buf;
    }

    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    #[inline]
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    #[inline]
    fn varint_field(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }

    /// A scalar field, left out when 0 (proto3 default).
    #[inline]
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.varint_field(field, v);
        }
    }

    #[inline]
    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, 1);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// A string field, left out when empty (proto3 default).
    #[inline]
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    /// A string that is a oneof member: written even when empty.
    #[inline]
    fn string_always(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A nested message: one byte is left for its length (most are under 128 bytes), and the message is moved only
    /// when its length needs more.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Writer)) {
        self.key(field, 2);
        let at = self.buf.len();
        self.buf.push(0);
        body(self);
        let end = self.buf.len();
        let len = end - at - 1;
        let n = varint_len(len as u64);
        if n > 1 {
            self.buf.resize(end + n - 1, 0);
            self.buf.copy_within(at + 1..end, at + n);
        }
        // The length's varint, in place.
        let (mut v, mut i) = (len as u64, at);
        while v >= 0x80 {
            self.buf[i] = (v as u8) | 0x80;
            v >>= 7;
            i += 1;
        }
        self.buf[i] = v as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_messages_get_their_length_also_past_one_byte() {
        let mut w = Writer::default();
        w.message(2, |w| w.string(1, "x"));
        assert_eq!(w.buf, [0x12, 3, 0x0a, 1, b'x']);
        let long = "y".repeat(300);
        let mut w = Writer::default();
        w.message(2, |w| w.string(1, &long));
        // 1 (key) + 2 (300 as a varint) + 300 = 303 bytes of body.
        assert_eq!(&w.buf[..5], &[0x12, 0xaf, 0x02, 0x0a, 0xac]);
        assert_eq!(w.buf.len(), 1 + 2 + 303);
        assert!(w.buf.ends_with(long.as_bytes()));
    }

    #[test]
    fn attributes_written_in_one_go_equal_the_nested_form() {
        let long = "z".repeat(200);
        for value in [
            Value::from("v"),
            Value::from(long.clone()),
            Value::I64(-7),
            Value::I64(300),
            Value::Bool(true),
            Value::F64(1.5),
        ] {
            let mut direct = Writer::default();
            attribute(&mut direct, 9, "http.request.method", &value);
            let mut nested = Writer::default();
            nested.message(9, |w| key_value(w, "http.request.method", &value));
            assert_eq!(direct.buf, nested.buf, "{value:?}");
        }
        assert_eq!((varint_len(0), varint_len(127), varint_len(128), varint_len(u64::MAX)), (1, 1, 2, 10));
    }

    fn span(name: &'static str, attributes: Vec<opentelemetry::KeyValue>) -> Recording {
        let mut s = Recording::new();
        s.begin(7, 9, (3, true), 1, None, SpanKind::Client, super::super::record::now_nanos(), &[name]);
        s.start = 1;
        s.status = Status::error("boom");
        attributes.into_iter().for_each(|kv| s.set(kv));
        s
    }

    #[test]
    fn a_span_is_its_protobuf_fields() {
        let mut s = span("n", vec![opentelemetry::KeyValue::new("k", "v")]);
        s.trace_state = Some(http::HeaderValue::from_static("b=2 , a=1"));
        s.status = Status::error("e");
        let mut buf = Vec::new();
        encode_span(&mut buf, &s, 2);
        // The fields every span has, in one block.
        let mut expected = vec![0x0a, 16];
        expected.extend_from_slice(&7u128.to_be_bytes());
        expected.extend_from_slice(&[0x12, 8]);
        expected.extend_from_slice(&9u64.to_be_bytes());
        expected.extend_from_slice(&[0x30, 3, 0x39]);
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.push(0x41);
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&[0x85, 0x01, 0x01, 0x03, 0, 0]);
        // The parent; the name and the attributes as they were set; the rare parts.
        expected.extend_from_slice(&[0x22, 8]);
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&[0x2a, 1, b'n', 0x4a, 8, 0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']);
        expected.extend_from_slice(&[0x1a, 7]);
        expected.extend_from_slice(b"b=2,a=1");
        expected.extend_from_slice(&[0x7a, 5, 0x12, 1, b'e', 0x18, 2]);
        assert_eq!(buf[..2], [0x12, expected.len() as u8]);
        assert_eq!(buf[2..], expected[..]);
        // An invalid `tracestate` is left out, as the SDK drops it.
        s.trace_state = Some(http::HeaderValue::from_static("no equals sign"));
        let mut without = Vec::new();
        encode_span(&mut without, &s, 2);
        assert_eq!(without.len(), buf.len() - 9);
        // A root span has no parent field; a span of 128 bytes or more, a two-byte length.
        let mut root = span("n", vec![opentelemetry::KeyValue::new("k", "v".repeat(100))]);
        root.parent_span_id = 0;
        let mut long = Vec::new();
        encode_span(&mut long, &root, 2);
        let len = long.len() - 3;
        assert_eq!(long[..3], [0x12, (len as u8) | 0x80, (len >> 7) as u8]);
        assert!(len >= 128 && !long.windows(2).any(|w| w == [0x22, 8]), "{len}");
    }

    #[test]
    fn a_name_is_its_parts_in_one_field() {
        let mut one = Vec::new();
        encode_name(&mut one, &["GET /orders/{id}"]);
        let mut parts = Vec::new();
        encode_name(&mut parts, &["GET", " ", "/orders/{id}"]);
        assert_eq!(one, parts);
        assert_eq!(one[..2], [0x2a, 16]);
        let long = "n".repeat(200);
        let mut w = Writer::default();
        w.string(5, &long);
        let mut parts = Vec::new();
        encode_name(&mut parts, &[&long[..100], &long[100..]]);
        assert_eq!(parts, w.buf, "a length past one byte");
    }

    #[test]
    fn endpoints_are_http_or_https_urls_whose_path_is_not_used() {
        let resource = Resource::builder().build();
        let timeout = Duration::from_secs(1);
        let e = OtlpExporter::new("http://otel:pw@collector.internal:4317/ignored", &resource, timeout).unwrap();
        assert_eq!(e.uri.to_string(), format!("http://collector.internal:4317{EXPORT_PATH}"));
        assert!(!e.endpoint.contains("pw"), "{}", e.endpoint);
        let e = OtlpExporter::new("https://[::1]", &resource, timeout).unwrap();
        assert_eq!((e.target.port, e.tls.is_some()), (443, true));
        assert!(OtlpExporter::new("ftp://collector", &resource, timeout).unwrap_err().contains("http://"));
    }

    #[test]
    fn a_batch_written_backwards_equals_the_nested_encoding() {
        let resource = Resource::builder().with_service_name("svc").build();
        let exporter = OtlpExporter::new("http://127.0.0.1:4317", &resource, Duration::from_secs(1)).unwrap();
        let long = "p".repeat(20_000);
        let spans = vec![
            span("small", vec![]),
            span("GET /", vec![opentelemetry::KeyValue::new("url.path", "/x".repeat(100))]),
            span("huge", vec![opentelemetry::KeyValue::new("url.path", long)]),
        ];
        let mut fast = vec![0; exporter.room()];
        for s in &spans {
            encode_span(&mut fast, s, 2);
        }
        let start = exporter.frame(&mut fast);
        // The same request written front to front, every length after its message.
        let mut w = Writer::default();
        w.message(1, |w| {
            w.buf.extend_from_slice(&exporter.resource);
            w.message(2, |w| {
                w.message(1, |w| w.string(1, SCOPE_NAME));
                for s in &spans {
                    encode_span(&mut w.buf, s, 2);
                }
            });
        });
        let mut nested = vec![0];
        nested.extend_from_slice(&(w.buf.len() as u32).to_be_bytes());
        nested.extend_from_slice(&w.buf);
        assert_eq!(&fast[start..], &nested[..]);
    }

    #[test]
    fn any_values_are_their_oneof_members() {
        let mut w = Writer::default();
        any_value(&mut w, &Value::I64(-1));
        assert_eq!(w.buf, [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut w = Writer::default();
        any_value(&mut w, &Value::Bool(false));
        assert_eq!(w.buf, [0x10, 0]);
        let mut w = Writer::default();
        any_value(&mut w, &Value::from(""));
        assert_eq!(w.buf, [0x0a, 0]);
    }
}

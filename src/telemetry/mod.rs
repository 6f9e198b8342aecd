//! Telemetry: logs, metrics and traces.
//!
//! - [`logging`]: the log subscriber (JSON or text) and its filter.
//! - [`metrics`]: the Prometheus registry and the handles the request path uses.
//! - [`trace`]: W3C trace context and OpenTelemetry spans, queued for export.
//! - `otlp`: the spans encoded as OTLP protobuf and sent over gRPC.

pub mod logging;
pub mod metrics;
mod otlp;
pub mod trace;

pub use logging::init_logging;
pub use metrics::{
    Held, Metrics, PublishMetrics, RequestReplyMetrics, RouteMetrics, SpoolMetrics, SubscriptionMetrics,
    UpstreamMetrics,
};
pub use trace::{Export, Span, TraceContext, Tracer, method_name, method_value};

//! Telemetry: logs, metrics and traces.
//!
//! - [`logging`]: the log subscriber (JSON or text) and its filter.
//! - [`metrics`]: the Prometheus registry and the handles the request path uses.
//! - [`trace`]: W3C trace context and OpenTelemetry spans, sampled and recorded.
//! - `record`: a span as recorded, from its start to its end.
//! - `export`: finished spans queued (encoded) and sent in batches by one task.
//! - `otlp`: the spans encoded as OTLP protobuf and sent over gRPC.

mod export;
pub mod logging;
pub mod metrics;
mod otlp;
mod record;
pub mod trace;

pub use logging::init_logging;
pub use metrics::{
    Held, Metrics, PublishMetrics, RequestReplyMetrics, RouteMetrics, SpoolMetrics, SubscriptionMetrics,
    UpstreamMetrics,
};
pub use trace::{Attributes, Export, FixedAttributes, Span, TraceContext, Tracer};

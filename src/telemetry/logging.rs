//! The log subscriber: JSON (default) or text lines on stderr, filtered by `RUST_LOG` (default `info`).

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global log subscriber (`RUST_LOG` filters, default `info`).
pub fn init_logging(cfg: &TelemetryConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

//! Lag-aware admission (`publish.max_backlog`): a publish route refuses new messages (`503` with `Retry-After`, nothing
//! published) while its destination's backlog is above the bound, so producers slow down before consumers drown.
//! The backlog is sampled once a second off the request path — the depth of a RabbitMQ queue (`backlog_queue`) or the
//! lag of a Kafka consumer group on the route's topic (`backlog_group`) — and a request only reads the last sample.
//! A sample that fails (broker down, queue or group unknown) admits: the publish itself then says what is wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::task::AbortHandle;

use super::publisher::Publisher;

/// How often the backlog is measured.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What a route's backlog is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BacklogSource {
    /// The number of messages ready in a RabbitMQ queue.
    Queue(String),
    /// The records of `topic` a Kafka consumer group has not committed yet.
    Group {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
    },
}

/// The sampled backlog of one route; sampling stops when it is dropped.
#[derive(Debug)]
pub struct Backlog {
    max: u64,
    current: Arc<AtomicU64>,
    task: AbortHandle,
}

impl Backlog {
    /// Starts sampling `source` through `publisher` every [`SAMPLE_INTERVAL`], publishing the value in `gauge`.
    pub fn start(route: &str, publisher: Publisher, source: BacklogSource, max: u64, gauge: Gauge) -> Backlog {
        let current = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(sample(route.to_owned(), publisher, source, current.clone(), gauge));
        Backlog { max, current, task: task.abort_handle() }
    }

    /// Whether the last sample is above the bound.
    pub fn over(&self) -> bool {
        self.current.load(Ordering::Relaxed) > self.max
    }

    /// The bound.
    pub fn max(&self) -> u64 {
        self.max
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn sample(route: String, publisher: Publisher, source: BacklogSource, current: Arc<AtomicU64>, gauge: Gauge) {
    let mut failing = false;
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let value = match publisher.backlog(&source).await {
            Ok(n) => {
                failing = false;
                n
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(route = %route, source = ?source, error = %e, "backlog unknown; admitting publishes");
                }
                failing = true;
                0
            }
        };
        current.store(value, Ordering::Relaxed);
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

//! The durable spool (`[brokers.NAME.spool]`, DESIGN.md §4): a [`Producer`] around a broker's producer that, while
//! the broker is unreachable, appends each message to a local fsync'd log and answers it as stored
//! ([`Receipt::Spooled`], a `202` with `"spooled": true`), then replays the log in order once the broker is back.
//!
//! - A message is spooled when the broker is down, or when its publish failed for a reason that says the broker
//!   could not be reached in time ([`PublishError::is_spoolable`]: not a nack, not an unroutable message, not an
//!   unknown topic, which answer as without a spool).
//! - While anything is spooled, new messages go behind it, so each destination gets its messages in the order
//!   they were accepted; once the replay has caught up, messages go straight to the broker again.
//! - [`record`]: a frame on disk; [`log`]: segments, ledger, writer thread, recovery; [`replay`]: the replayer.

pub mod log;
pub mod record;
pub mod replay;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, SpoolConfig};
use crate::publish::backlog::BacklogSource;
use crate::publish::error::PublishError;
use crate::publish::message::{Ack, Message, Receipt};
use crate::publish::publisher::{Producer, ProducerFuture, Publisher};
use crate::publish::reply::{Replies, Waiter};
use crate::publish::{amqp::AmqpPublisher, kafka::KafkaPublisher};
use crate::telemetry::SpoolMetrics;
pub use log::Depth;

/// An open spool: its log and its replayer. Kept across reloads that keep the directory.
pub struct Spool {
    log: log::Log,
    target: replay::Target,
    stop: watch::Sender<bool>,
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl Spool {
    /// Opens the spool of broker `broker` (recovering what a previous run left) and starts replaying it through
    /// `target`.
    pub fn open(broker: &str, cfg: &SpoolConfig, target: Publisher, metrics: SpoolMetrics) -> Result<Spool, String> {
        let log = log::Log::open(broker, cfg, metrics)?;
        let target = Arc::new(Mutex::new(target));
        let (stop, stopped) = watch::channel(false);
        let busy = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(replay::run(log.shared().clone(), target.clone(), stopped, busy.clone()));
        Ok(Spool { log, target, stop, busy })
    }

    /// The spool's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.log.shared().dir
    }

    /// Takes a reload's settings for the same directory: new limits, and the broker's new producer.
    pub fn retarget(&self, cfg: &SpoolConfig, target: Publisher) {
        self.log.configure(cfg);
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// How full the spool is.
    #[must_use]
    pub fn depth(&self) -> Depth {
        self.log.depth()
    }

    /// On shutdown: no new replay batch; waits up to `timeout` for the one in flight (so its cursor is saved) and
    /// for the frames being written.
    pub async fn stop(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        let settled = async {
            let _batch = self.busy.lock().await;
            self.log.settle(timeout).await;
        };
        let _ = tokio::time::timeout(timeout, settled).await;
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A broker's producer with a spool in front.
pub struct Spooled {
    inner: Publisher,
    spool: Arc<Spool>,
}

impl Spooled {
    /// Wraps `inner`; `spool` replays through it from now on.
    #[must_use]
    pub fn new(inner: Publisher, spool: Arc<Spool>) -> Spooled {
        Spooled { inner, spool }
    }

    async fn publish(&self, msg: Message, ack: Ack) -> Result<Receipt, PublishError> {
        if self.spool.log.spooling() || !self.inner.is_up() {
            return self.spool.log.append(&msg).await.map(|()| Receipt::Spooled);
        }
        let copy = msg.clone();
        match self.inner.publish(msg, ack).await {
            Err(e) if e.is_spoolable() => {
                tracing::debug!(broker = %self.inner.name(), error = %e, "publish failed: spooled");
                self.spool.log.append(&copy).await.map(|()| Receipt::Spooled)
            }
            result => result,
        }
    }
}

impl Producer for Spooled {
    fn publish(&self, msg: Message, ack: Ack) -> ProducerFuture<'_, Result<Receipt, PublishError>> {
        Box::pin(Spooled::publish(self, msg, ack))
    }
    fn publish_ordered(&self, msgs: Vec<Message>) -> ProducerFuture<'_, Vec<Result<Receipt, PublishError>>> {
        Box::pin(self.inner.publish_ordered(msgs))
    }
    fn is_up(&self) -> bool {
        self.inner.is_up()
    }
    fn flush(&self, timeout: Duration) -> ProducerFuture<'_, ()> {
        Box::pin(async move {
            tokio::join!(self.inner.flush(timeout), self.spool.stop(timeout));
        })
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn request<'a>(&'a self, msg: Message, reply_topic: &'a str) -> ProducerFuture<'a, Result<Waiter, PublishError>> {
        Box::pin(self.inner.request(msg, reply_topic))
    }
    fn replies(&self) -> Option<&Arc<Replies>> {
        self.inner.replies()
    }
    fn listen(&self, reply_topic: &str) {
        self.inner.listen(reply_topic);
    }
    fn backlog<'a>(&'a self, source: &'a BacklogSource) -> ProducerFuture<'a, Result<u64, PublishError>> {
        Box::pin(self.inner.backlog(source))
    }
    fn as_amqp(&self) -> Option<&AmqpPublisher> {
        self.inner.as_amqp()
    }
    fn as_kafka(&self) -> Option<&KafkaPublisher> {
        self.inner.as_kafka()
    }
    fn listening(&self, reply_topic: &str) -> bool {
        self.inner.listening(reply_topic)
    }
    fn spool(&self) -> Option<&Arc<Spool>> {
        Some(&self.spool)
    }
}

/// `sluice check`: every spool directory can be created and written to. Creates nothing.
#[must_use]
pub fn check_dirs(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, broker) in &config.brokers {
        let Some(spool) = &broker.spool else { continue };
        let dir = &spool.dir;
        let at = format!("brokers.{name}.spool.dir {:?}", dir.display().to_string());
        let Some(existing) = dir.ancestors().find(|p| !p.as_os_str().is_empty() && p.exists()).or(Some(Path::new(".")))
        else {
            continue;
        };
        if !existing.is_dir() {
            errors.push(format!("{at}: {} is not a directory", existing.display()));
            continue;
        }
        let probe = existing.join(format!(".sluice-check-{}", std::process::id()));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => errors.push(format!("{at}: cannot write in {}: {e}", existing.display())),
        }
    }
    errors
}

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

use crate::boxed::in_place;
use crate::config::{Config, SpoolConfig};
use crate::publish::backlog::BacklogSource;
use crate::publish::error::PublishError;
use crate::publish::message::{Ack, Message, Receipt};
use crate::publish::publisher::{Producer, ProducerFuture, Publisher};
use crate::publish::reply::{Replies, Waiter};
use crate::publish::{amqp::AmqpPublisher, kafka::KafkaPublisher};
use crate::telemetry::SpoolMetrics;
pub use log::{Depth, Route};

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

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir()).finish_non_exhaustive()
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
        let mut waited = false;
        loop {
            match self.spool.log.route(self.inner.is_up()) {
                Route::Direct => break,
                Route::Wait if !waited => {
                    // The replay is writing out the spool's last messages: this one goes straight after them.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.spool.log.reopened()).await;
                    waited = true;
                }
                Route::Spool | Route::Wait => return self.spool.log.append(&msg).await.map(|()| Receipt::Spooled),
            }
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
        in_place(|| Spooled::publish(self, msg, ack))
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
    fn as_sqs(&self) -> Option<&crate::publish::sqs::SqsPublisher> {
        self.inner.as_sqs()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::config::FsyncPolicy;
    use crate::config::units::Size;
    use crate::publish::Destination;

    /// A broker that takes everything while up, recording the ids in the order they arrive.
    #[derive(Default)]
    struct Recorder {
        up: AtomicBool,
        got: Mutex<Vec<String>>,
    }

    impl Producer for Arc<Recorder> {
        fn publish(&self, msg: Message, _ack: Ack) -> ProducerFuture<'_, Result<Receipt, PublishError>> {
            Box::pin(async move {
                if !self.up.load(Ordering::SeqCst) {
                    return Err(PublishError::unavailable("down", None));
                }
                self.got.lock().unwrap().push(msg.id);
                Ok(Receipt::Amqp)
            })
        }
        fn is_up(&self) -> bool {
            self.up.load(Ordering::SeqCst)
        }
        fn flush(&self, _timeout: Duration) -> ProducerFuture<'_, ()> {
            Box::pin(std::future::ready(()))
        }
        fn name(&self) -> &str {
            "recorder"
        }
        fn kind(&self) -> &'static str {
            "amqp"
        }
    }

    fn message(client: usize, n: usize) -> Message {
        Message {
            id: format!("{client}-{n:05}"),
            body: Bytes::from_static(b"x"),
            content_type: None,
            headers: Vec::new(),
            destination: Destination::Amqp { exchange: String::new(), routing_key: "q".into(), persistent: true },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_spool_drains_while_clients_keep_publishing_and_each_clients_order_holds() {
        let dir = std::env::temp_dir().join(format!("sluice-spool-drain-{}", uuid::Uuid::new_v4().simple()));
        let cfg = SpoolConfig { dir: dir.clone(), max_bytes: Size(64 << 20), fsync: FsyncPolicy::Always };
        let broker = Arc::new(Recorder::default());
        let inner = Publisher::new(broker.clone());
        let spool = Arc::new(Spool::open("b", &cfg, inner.clone(), SpoolMetrics::default()).unwrap());
        let spooled = Arc::new(Spooled::new(inner, spool));
        for n in 0..200 {
            assert_eq!(Producer::publish(&*spooled, message(0, n), Ack::Confirm).await.unwrap(), Receipt::Spooled);
        }
        broker.up.store(true, Ordering::SeqCst);
        // 32 clients publish one message after another until each has had a direct confirm: without a drain that
        // works under load, new messages would keep going behind the spool's last ones.
        let clients: Vec<_> = (1..=32)
            .map(|client| {
                let spooled = spooled.clone();
                tokio::spawn(async move {
                    for n in 0..20_000 {
                        let receipt = Producer::publish(&*spooled, message(client, n), Ack::Confirm).await.unwrap();
                        if receipt == Receipt::Amqp {
                            return n;
                        }
                    }
                    panic!("client {client}: still spooled after 20,000 messages");
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        let got = broker.got.lock().unwrap().clone();
        for client in 0..=32 {
            let mine: Vec<&String> = got.iter().filter(|id| id.starts_with(&format!("{client}-"))).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "client {client}'s messages in order");
        }
        assert_eq!(got.iter().filter(|id| id.starts_with("0-")).count(), 200, "every spooled message replayed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

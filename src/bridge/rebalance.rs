//! The consumer-group side of a Kafka subscription: what a rebalance does to the partitions this gateway delivers.
//!
//! librdkafka calls the context from inside the consumer's poll (`StreamConsumer::recv`), so nothing here waits for
//! a delivery: when partitions are taken away (incrementally: the consumer uses the `cooperative-sticky` assignor
//! unless the broker's options name another), the offsets stored so far (every record delivered or dead-lettered)
//! are committed at once, and the subscription is told which partitions it lost. It then abandons their work — the
//! records it had fetched but not delivered, and the delivery in flight — so that the new owner, which starts from
//! the committed offset, is the only one delivering them (a delivery cut short is delivered again there:
//! at-least-once, as after a crash). Partitions given back are resumed, in case one was paused while it was ours.

use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use tokio::sync::mpsc;

/// The consumer of a Kafka subscription.
pub type SubscriptionConsumer = StreamConsumer<Rebalances>;

/// Tells the subscription which partitions a rebalance revoked.
pub struct Rebalances {
    subscription: String,
    revoked: mpsc::UnboundedSender<Vec<i32>>,
}

impl Rebalances {
    /// The context for subscription `subscription`, and where its revoked partitions arrive.
    pub fn new(subscription: &str) -> (Rebalances, mpsc::UnboundedReceiver<Vec<i32>>) {
        let (revoked, receiver) = mpsc::unbounded_channel();
        (Rebalances { subscription: subscription.to_owned(), revoked }, receiver)
    }
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Revoke(revoked) => partitions(revoked),
            // librdkafka gives up the whole assignment after a rebalance error.
            Rebalance::Error(e) => {
                tracing::warn!(subscription = %self.subscription, error = %e, "rebalance failed");
                consumer.assignment().map(|a| partitions(&a)).unwrap_or_default()
            }
            Rebalance::Assign(_) => return,
        };
        if partitions.is_empty() {
            return;
        }
        // Committed while the partitions are still ours. Asynchronously: this runs on a runtime thread, which a
        // synchronous commit would hold for a round trip to the group coordinator (or much longer while it is
        // unreachable). The commit request goes out before the consumer rejoins the group on the same coordinator
        // connection, so the next owner starts after what was done here; a commit that fails means redeliveries
        // (at-least-once), never a skipped record.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(subscription = %self.subscription, error = %e, "offset commit before a rebalance");
        }
        tracing::info!(subscription = %self.subscription, ?partitions, "partitions revoked by a rebalance");
        let _ = self.revoked.send(partitions);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance
            && assigned.count() > 0
        {
            tracing::info!(subscription = %self.subscription, partitions = ?partitions(assigned), "partitions assigned");
            let _ = consumer.resume(assigned);
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

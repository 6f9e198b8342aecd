//! The replayer: one task per spool that, while the broker is up, reads the spooled messages in order and
//! publishes them through the broker's normal confirm path, moving the cursor past each confirmed one.
//!
//! - Batches of up to [`BATCH`] messages go out with [`Publisher::publish_ordered`], so a destination receives
//!   them in the order they were spooled; the cursor moves over the confirmed prefix of a batch.
//! - A broker that is down again (or a retryable failure) pauses the replay with a backoff (250 ms doubling to
//!   5 s); the message is tried again, as are those after it (at-least-once: some may arrive twice).
//! - A message the broker refuses for good (unroutable, rejected) is tried [`REFUSED_ATTEMPTS`] times, then given
//!   up with an error log naming its `sluice-id` and counted in `sluice_spool_dropped_total`: one poisoned
//!   message must not hold every later one back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::log::{Batch, Shared};
use crate::publish::publisher::Publisher;

/// Most messages replayed at once.
const BATCH: usize = 256;
/// Attempts at a message the broker refuses for good before it is dropped.
const REFUSED_ATTEMPTS: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Which producer the replayer publishes through (a reload that changes the broker's settings swaps it).
pub type Target = Arc<Mutex<Publisher>>;

/// Replays until `stop` is closed (or says true). `busy` is held while a batch is out, so that a shutdown can
/// wait for the batch in flight.
pub async fn run(log: Arc<Shared>, target: Target, mut stop: watch::Receiver<bool>, busy: Arc<tokio::sync::Mutex<()>>) {
    let mut backoff = BACKOFF_MIN;
    let mut refused = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let publisher = target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let wait = if log.try_drain() {
            None
        } else if !publisher.is_up() {
            log.reopen();
            Some(Duration::from_millis(200))
        } else {
            let guard = busy.lock().await;
            let reader = log.clone();
            // After a refusal, one message at a time until it is settled: the messages after it in a batch would
            // be published again at each attempt.
            let size = if refused > 0 { 1 } else { BATCH };
            match tokio::task::spawn_blocking(move || reader.read_batch(size)).await {
                Ok(Ok(Some(batch))) => {
                    let paused = replay(&log, &publisher, batch, &mut refused).await;
                    drop(guard);
                    if paused {
                        log.reopen();
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        Some(backoff / 2)
                    } else {
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                }
                // Frames handed to the writer but not synced yet: the writer wakes us.
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    tracing::error!(broker = %log.broker, dir = %log.dir.display(), error = %e, "spool read failed");
                    Some(BACKOFF_MAX)
                }
                Err(e) => {
                    tracing::error!(broker = %log.broker, error = %e, "spool read panicked");
                    Some(BACKOFF_MAX)
                }
            }
        };
        let woken = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => log.written.notified().await,
            }
        };
        tokio::select! {
            () = woken => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// Publishes one batch and moves the cursor over what the broker took. Returns true when the replay must pause.
async fn replay(log: &Shared, publisher: &Publisher, batch: Batch, refused: &mut u32) -> bool {
    let Batch { records, lost } = batch;
    let (positions, messages): (Vec<_>, Vec<_>) =
        records.into_iter().map(|(m, size, next)| ((m.id.clone(), size, next), m)).unzip();
    let count = messages.len();
    let results = if messages.is_empty() { Vec::new() } else { publisher.publish_ordered(messages).await };
    let (mut done, mut bytes, mut cursor) = (0u64, 0u64, None);
    let mut paused = false;
    for ((id, size, next), result) in positions.iter().zip(results.iter().map(Some).chain(std::iter::repeat(None))) {
        match result {
            Some(Ok(_)) => {
                *refused = 0;
                log.replayed(1);
            }
            Some(Err(e)) if !e.is_retryable() && *refused + 1 >= REFUSED_ATTEMPTS => {
                *refused = 0;
                log.dropped(1);
                tracing::error!(broker = %log.broker, sluice_id = %id, error = %e, attempts = REFUSED_ATTEMPTS, "spooled message refused by the broker: dropped");
            }
            Some(Err(e)) => {
                if !e.is_retryable() {
                    *refused += 1;
                }
                tracing::warn!(broker = %log.broker, sluice_id = %id, error = %e, "spool replay paused");
                paused = true;
                break;
            }
            None => {
                paused = true;
                break;
            }
        }
        done += 1;
        bytes += size;
        cursor = Some(*next);
    }
    if done as usize == count
        && let Some((past, size)) = lost
    {
        log.dropped(1);
        log.advance(past, done, bytes + size);
        return paused;
    }
    if let Some(to) = cursor {
        log.advance(to, done, bytes);
    }
    paused
}

//! The bounded queue of finished spans and the task that sends them: a span is encoded (`otlp`) when it ends, on
//! the thread that ends it, straight into the batch being filled; a full queue drops it and counts
//! `sluice_trace_spans_dropped_total`. One task sends full batches, whatever is queued every `BATCH_DELAY`, and
//! everything on a flush (shutdown). A collector that is down slows no request.
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` because that processor does not expose how many
//! spans it dropped, and it runs a thread of its own outside tokio; and spans are queued encoded, not as objects:
//! a span's strings are read once, while still in cache, and freed by the thread that made them, and a batch is
//! already its export request's body but for the headers in front.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::otlp::{OtlpExporter, encode_span};
use super::record::Recording;

/// Finished spans waiting for export; more are dropped (and counted).
const QUEUE_CAPACITY: usize = 8192;
/// Most spans sent in one export request.
const MAX_BATCH: usize = 512;
/// A batch is closed once it holds this many bytes, even with fewer than `MAX_BATCH` spans, so that it stays under
/// 1 MiB plus one span: collectors refuse gRPC messages over 4 MiB by default (`max_recv_msg_size_mib`), and 512
/// spans with long paths or user agents could reach that.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long a batch waits for more spans before it is sent.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Most bytes a new batch reserves up front: one burst of large spans must not make every later batch (one every
/// `BATCH_DELAY`) reserve as much.
const MAX_PREALLOC: usize = 1 << 20;

/// Encoded spans of one export request: `room` bytes left for its headers, then the spans.
#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    spans: usize,
}

impl Batch {
    /// A batch reserving `capacity` bytes and a sixteenth more: batches of the same spans differ by a few bytes,
    /// and one that outgrows its buffer is copied whole into one twice as large.
    fn new(room: usize, capacity: usize) -> Batch {
        let mut buf = Vec::with_capacity((capacity + capacity / 16).min(MAX_PREALLOC).max(room));
        buf.resize(room, 0);
        Batch { buf, spans: 0 }
    }
}

/// What waits for the export task.
#[derive(Debug)]
struct Pending {
    /// The batch spans are appended to.
    filling: Batch,
    /// Full batches: `MAX_BATCH` spans, or `MAX_BATCH_BYTES`.
    full: Vec<Batch>,
    /// Spans in `filling` and `full`.
    queued: usize,
    /// The size of the last full batch: new batches start with that capacity (up to `MAX_PREALLOC`), so that one
    /// grows no more.
    size: usize,
}

/// Finished spans waiting for export, encoded. A plain structure under a lock: a request's thread appends a span
/// and, once a batch is full, wakes the export task — cheaper than a channel send (and a box) per span.
#[derive(Debug)]
pub struct Queue {
    pending: Mutex<Pending>,
    /// Bytes at the start of a batch for its headers (`OtlpExporter::room`).
    room: usize,
    /// Most spans waiting; more are dropped.
    capacity: usize,
    /// Notified when a full batch is waiting.
    full: Notify,
    /// `sluice_trace_spans_dropped_total`.
    dropped: Counter,
}

impl Queue {
    pub(super) fn new(room: usize, capacity: usize, dropped: Counter) -> Queue {
        let pending = Pending { filling: Batch::new(room, 0), full: Vec::new(), queued: 0, size: 0 };
        Queue { pending: Mutex::new(pending), room, capacity, full: Notify::new(), dropped }
    }

    /// Queues `span`, ended at `end`, without ever waiting for the export; drops (and counts) it when the queue
    /// is full. The span is encoded under the lock, into the batch: its name and attributes are already encoded,
    /// what is left is a few fixed fields and one copy — less than encoding it aside and copying the result.
    pub fn push(&self, span: &Recording, end: u64) {
        let mut pending = self.pending.lock().expect("span queue lock");
        if pending.queued >= self.capacity {
            drop(pending);
            self.dropped.inc();
            return;
        }
        let p = &mut *pending;
        p.queued += 1;
        encode_span(&mut p.filling.buf, span, end);
        p.filling.spans += 1;
        if p.filling.spans == MAX_BATCH || p.filling.buf.len() >= MAX_BATCH_BYTES {
            p.size = p.filling.buf.len();
            let fresh = Batch::new(self.room, p.size);
            p.full.push(std::mem::replace(&mut p.filling, fresh));
            drop(pending);
            self.full.notify_one();
        }
    }

    /// Everything queued, in the order it was queued (the export task's side).
    fn take(&self) -> Vec<Batch> {
        let mut pending = self.pending.lock().expect("span queue lock");
        if pending.queued == 0 {
            return Vec::new();
        }
        let mut batches = std::mem::take(&mut pending.full);
        if pending.filling.spans > 0 {
            let fresh = Batch::new(self.room, pending.size);
            batches.push(std::mem::replace(&mut pending.filling, fresh));
        }
        pending.queued = 0;
        batches
    }
}

/// The running OTLP export: flushes what is queued on shutdown.
#[derive(Debug)]
pub struct Export {
    flushes: mpsc::Sender<oneshot::Sender<()>>,
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

/// Starts the export task (inside the tokio runtime): the queue to push finished spans to, and the handle that
/// flushes it.
pub fn spawn(exporter: OtlpExporter, dropped: Counter) -> (Arc<Queue>, Export) {
    let queue = Arc::new(Queue::new(exporter.room(), QUEUE_CAPACITY, dropped));
    let (flushes, flush_requests) = mpsc::channel(4);
    tokio::spawn(export_loop(exporter, queue.clone(), flush_requests));
    (queue, Export { flushes })
}

/// Sends what is queued when a batch is full, every `BATCH_DELAY`, and on a flush request; one batch (at most
/// `MAX_BATCH` spans or `MAX_BATCH_BYTES`) at a time. Failures are logged at most once a minute: an absent collector
/// must not flood the log.
async fn export_loop(
    mut exporter: OtlpExporter,
    queue: Arc<Queue>,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
) {
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
        for mut batch in queue.take() {
            let start = exporter.frame(&mut batch.buf);
            let sent = Bytes::from(batch.buf).slice(start..);
            if let Err(e) = exporter.send(sent).await
                && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                last_warning = Some(Instant::now());
                let spans = batch.spans;
                tracing::warn!(error = %e, spans, "trace export failed (repeats are not logged for a minute)");
            }
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Recording {
        super::super::record::test_recording()
    }

    #[test]
    fn a_full_export_queue_drops_and_counts_instead_of_waiting() {
        let dropped = Counter::default();
        let queue = Queue::new(4, 2, dropped.clone());
        for _ in 0..5 {
            queue.push(&finished(), 2);
        }
        assert_eq!(dropped.get(), 3, "two fit in the queue, three were dropped");
        let batches = queue.take();
        assert_eq!(batches.iter().map(|b| b.spans).collect::<Vec<_>>(), [2]);
        let mut one = Vec::new();
        encode_span(&mut one, &finished(), 2);
        assert_eq!(batches[0].buf.len(), 4 + 2 * one.len(), "the headers' room, then the two spans");
        assert!(queue.take().is_empty());
        queue.push(&finished(), 2);
        assert_eq!(dropped.get(), 3, "taking the batches made room");
    }

    #[test]
    fn a_batch_of_large_spans_is_closed_at_max_batch_bytes() {
        let queue = Queue::new(0, QUEUE_CAPACITY, Counter::default());
        let mut large = finished();
        large.set_str("url.path", &"/x".repeat(50_000));
        for _ in 0..25 {
            queue.push(&large, 2);
        }
        let batches = queue.take();
        assert_eq!(batches.iter().map(|b| b.spans).collect::<Vec<_>>(), [11, 11, 3]);
        assert!(batches.iter().all(|b| b.buf.len() < MAX_BATCH_BYTES + 100_100), "one span past the limit at most");
    }

    #[test]
    fn spans_are_batched_by_max_batch() {
        let queue = Queue::new(0, QUEUE_CAPACITY, Counter::default());
        for _ in 0..MAX_BATCH * 2 + 3 {
            queue.push(&finished(), 2);
        }
        let batches = queue.take();
        assert_eq!(batches.iter().map(|b| b.spans).collect::<Vec<_>>(), [MAX_BATCH, MAX_BATCH, 3]);
        assert_eq!(batches[0].buf.len(), batches[1].buf.len());
    }
}

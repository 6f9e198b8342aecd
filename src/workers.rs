//! Thread-per-core serving: client connections run on serving workers, each a thread with its own single-threaded
//! tokio runtime, the way nginx's and Envoy's workers each own their connections.
//!
//! tokio's work-stealing scheduler lets any thread run any task, which costs every wake-up and spawn cross-thread
//! bookkeeping (bench/README.md measured ~13% more CPU per forwarded request with 2 threads than with the
//! single-threaded scheduler). Here a connection stays on the worker that took it: its task, its timers, its
//! socket's readiness and the upstream connections it uses (each worker has its own lane of every upstream pool and
//! its own HTTP/2 client per endpoint, see [`lane`]) never leave that thread.
//!
//! The main runtime keeps the listener and what is not a client connection (admin, Kafka and RabbitMQ publishers,
//! subscriptions, health checks, reload); each accepted connection is handed to the worker with the fewest open
//! ones (an upgraded connection counts until it closes). A connection's work is not shared when its worker is busy:
//! a CPU-heavy request delays only the connections on the same worker, as with nginx. Clients opened lazily by a
//! first request (the Redis store's connection, SQS's HTTPS connections, RabbitMQ direct reply-to consumers) are
//! driven by the worker that opened them and shared by every worker, as they would be on a work-stealing runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::telemetry::Held;

/// The serving workers of this process, once [`start`]ed.
static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// This thread's lane: `1 + i` on serving worker `i`, 0 everywhere else.
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The serving workers.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    /// Connections open on each worker (`sluice_worker_connections`; the metrics registry takes this family).
    connections: Family<WorkerLabel, Gauge>,
    /// Where the search for the least busy worker starts next (so ties go round).
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The `worker` label of `sluice_worker_connections`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    worker: String,
}

/// One serving worker.
#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections open on it (its series of `sluice_worker_connections`).
    open: Gauge,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// Starts `count` serving workers (threads `sluice-serve-0`…) and installs them for [`installed`]. Call once,
/// before the gateway is built: upstream pools size their lanes from it.
pub fn start(count: usize) -> std::io::Result<&'static Workers> {
    WORKERS.set(Workers::new(count)?).map_err(|workers| {
        workers.stop();
        std::io::Error::other("serving workers are already started")
    })?;
    Ok(WORKERS.get().expect("just set"))
}

/// The serving workers, when this process has them.
pub fn installed() -> Option<&'static Workers> {
    WORKERS.get()
}

/// The number of lanes a per-worker structure needs: one per serving worker, and one for every other thread.
pub fn lanes() -> usize {
    installed().map_or(1, |w| w.workers.len() + 1)
}

/// The calling thread's lane, below [`lanes`]: its serving worker's, or 0.
pub fn lane() -> usize {
    LANE.get()
}

impl Workers {
    /// `count` running workers, not installed.
    fn new(count: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let connections = Family::<WorkerLabel, Gauge>::default();
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            let handle = runtime.handle().clone();
            let open = connections.get_or_create(&WorkerLabel { worker: i.to_string() }).clone();
            workers.push(Worker { handle, open, stop: Mutex::new(Some(stop)) });
            // Named to fit the 15 bytes of a Linux thread name up to worker 99.
            threads.push(std::thread::Builder::new().name(format!("sluice-serve-{i}")).spawn(move || {
                LANE.set(i + 1);
                // Until told to stop; the connections still open then are dropped with the runtime.
                let _ = runtime.block_on(stopped);
            })?);
        }
        Ok(Workers { workers, connections, next: AtomicUsize::new(0), threads: Mutex::new(threads) })
    }

    /// Runs a connection's task, made by `task`, on the worker with the fewest open connections. The task is first
    /// polled on that worker, so it registers its socket with that worker's runtime. It counts on that worker as
    /// long as it keeps the [`Held`] count it is given (a connection keeps it with its I/O, upgraded or not).
    pub fn spawn<F>(&self, task: impl FnOnce(Held) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self.least_busy();
        let task = task(Held::new(&worker.open));
        drop(worker.handle.spawn(task));
    }

    fn least_busy(&self) -> &Worker {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|k| &self.workers[(start + k) % n]).min_by_key(|w| w.open.get()).expect("at least one worker")
    }

    /// Stops every worker (dropping the connections still open on it) and waits for its thread.
    pub fn stop(&self) {
        for worker in &self.workers {
            if let Some(stop) = worker.stop.lock().expect("worker lock").take() {
                let _ = stop.send(());
            }
        }
        for thread in std::mem::take(&mut *self.threads.lock().expect("workers lock")) {
            let _ = thread.join();
        }
    }

    /// The connections open on each worker, for the metrics registry.
    pub fn connections(&self) -> &Family<WorkerLabel, Gauge> {
        &self.connections
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn connections_are_spread_over_the_workers_and_stay_on_their_thread() {
        let workers = Workers::new(2).unwrap();
        assert_eq!(lane(), 0, "the calling thread is no worker");
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, hold) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let (tx, mut hold) = (tx.clone(), hold.clone());
            workers.spawn(|open| async move {
                let _open = open;
                let before = (std::thread::current().name().unwrap().to_owned(), lane());
                tokio::time::sleep(Duration::from_millis(1)).await; // timers work on a worker
                let _ = hold.wait_for(|go| *go).await;
                let after = (std::thread::current().name().unwrap().to_owned(), lane());
                tx.send((before, after)).unwrap();
            });
        }
        // Four long connections: two on each worker, whichever order they arrive in.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers.workers.iter().map(|w| w.open.get()).sum::<i64>() < 4 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        let open: Vec<i64> = workers.workers.iter().map(|w| w.open.get()).collect();
        assert_eq!(open, vec![2, 2]);
        release.send(true).unwrap();
        let mut threads = HashSet::new();
        for _ in 0..4 {
            let ((name, lane), after) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!((name.clone(), lane), after, "a connection never moves");
            assert_eq!(name, format!("sluice-serve-{}", lane - 1));
            threads.insert(name);
        }
        assert_eq!(threads.len(), 2);
        while workers.workers.iter().any(|w| w.open.get() > 0) {
            assert!(std::time::Instant::now() < deadline, "finished connections are no longer counted");
            std::thread::yield_now();
        }
        workers.stop();
    }
}

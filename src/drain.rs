//! Graceful drain of client connections: on shutdown every connection is told to finish the request it is serving
//! and close, and the server waits until all of them are gone.
//!
//! hyper-util's `GracefulShutdown` does the same for a connection future it takes over; a parked connection (see
//! `park`) takes its hyper connection apart between requests, which that future does not allow, so connections
//! hold a [`Draining`] instead and [`until_drained`] gives hyper's connections the same treatment.

use std::task::Poll;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

/// The server's side: signals the drain and waits for it.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    /// No connection yet, no signal.
    pub fn new() -> Drain {
        Drain { tx: watch::Sender::new(()) }
    }

    /// A connection's handle: held until the connection is gone.
    pub fn watcher(&self) -> Draining {
        let rx = self.tx.subscribe();
        Draining { probe: rx.clone(), rx }
    }

    /// Tells every connection to finish and close, and resolves once all of their handles are dropped.
    pub async fn drain(&self) {
        self.tx.send_replace(());
        self.tx.closed().await;
    }
}

/// A connection's handle on the drain signal.
#[derive(Debug)]
pub struct Draining {
    rx: watch::Receiver<()>,
    /// A second receiver of the same signal, to look at without waiting while `rx` is borrowed by its wait.
    probe: watch::Receiver<()>,
}

impl Draining {
    /// Resolves when the drain is signalled.
    ///
    /// A connection's task is polled a few times per request, and each poll of the watch's wait takes its waiter
    /// lock (~350 instructions a request, with `select!`'s random start). So the wait is polled once, which
    /// registers the task for the signal, and after that only when the signal came: a version check without a lock.
    /// (A task's waker stays the same from poll to poll, so the first registration holds.)
    pub async fn signalled(&mut self) {
        let Draining { rx, probe } = self;
        let changed = rx.changed();
        tokio::pin!(changed);
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if registered && matches!(probe.has_changed(), Ok(false)) {
                return Poll::Pending;
            }
            registered = true;
            // An error means the server is gone, which is a drain too.
            changed.as_mut().poll(cx).map(|_| ())
        })
        .await;
    }
}

/// Runs hyper's connection `conn`; on the drain signal it finishes the request in flight (if any) and closes.
pub async fn until_drained<C: GracefulConnection>(conn: C, mut draining: Draining) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        biased; // the connection first: the signal is rare, and a random start costs every poll
        ended = conn.as_mut() => return ended,
        () = draining.signalled() => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_every_watcher() {
        let drain = Drain::new();
        let mut a = drain.watcher();
        let b = drain.watcher();
        let closer = tokio::spawn(async move {
            a.signalled().await;
            drop(a);
        });
        let waiting = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(b);
        });
        drain.drain().await;
        closer.await.unwrap();
        waiting.await.unwrap();
    }

    #[tokio::test]
    async fn a_wait_polled_before_the_signal_wakes_and_ends_on_it() {
        let drain = Drain::new();
        let mut w = drain.watcher();
        let waiting = tokio::spawn(async move {
            let signal = w.signalled();
            tokio::pin!(signal);
            // Polled several times before the signal (as a connection's task is), then woken by it.
            for _ in 0..3 {
                let pending = std::future::poll_fn(|cx| Poll::Ready(signal.as_mut().poll(cx).is_pending())).await;
                assert!(pending);
            }
            signal.await;
        });
        tokio::task::yield_now().await;
        drain.tx.send_replace(());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("signalled").unwrap();
    }

    #[tokio::test]
    async fn a_watcher_made_before_the_signal_sees_it() {
        let drain = Drain::new();
        let mut w = drain.watcher();
        drain.tx.send_replace(());
        tokio::time::timeout(std::time::Duration::from_secs(5), w.signalled()).await.expect("signalled");
    }
}

//! Shared helpers for the broker integration tests: broker addresses from the environment, random names.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The AMQP URL of the test RabbitMQ (`SLUICE_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("SLUICE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The bootstrap address of the test Kafka (`SLUICE_TEST_KAFKA`).
pub fn kafka_bootstrap() -> String {
    std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other test (or run) uses.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// A body that is not valid UTF-8, so any lossy conversion shows.
pub fn binary_body() -> Vec<u8> {
    let mut body = vec![0x00, 0xff, 0xfe, 0x80, 0xc3, 0x28, b'\n', b'\r'];
    body.extend((0..=255u8).rev());
    body
}

/// Poll `check` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// Polls `check` until it gives a value, failing the test with `what` after a generous deadline. Never used to
/// measure time.
pub async fn poll_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long [`no_hang`] waits: far longer than anything it guards takes, even on a slow machine.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it has no result after [`HANG_GUARD`]: a guard against hangs, not an
/// assertion about speed.
pub async fn no_hang<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, fut).await.unwrap_or_else(|_| panic!("{what}: no result after {HANG_GUARD:?}"))
}

/// A local port that turns clients away (accepts each connection and closes it at once, counting it) until
/// [`Door::open_to`] a broker, then relays to it like [`Proxy`]. The count shows that a client really tried to reach
/// the broker. Dropping it cuts every relayed connection and refuses new ones.
pub struct Door {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    attempts: Arc<AtomicUsize>,
    target: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Door {
    /// A closed door on a free port.
    pub async fn closed() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let port = listener.local_addr().unwrap().port();
        let attempts = Arc::new(AtomicUsize::new(0));
        let target: Arc<Mutex<Option<String>>> = Arc::default();
        let (count, to) = (attempts.clone(), target.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(target) = to.lock().unwrap().clone() else {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, attempts, target, task }
    }

    /// Connections turned away so far.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// From now on, relay new connections to `target` (`host:port`).
    pub fn open_to(&self, target: String) {
        *self.target.lock().unwrap() = Some(target);
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free local port (bound, then released for a [`Proxy`] to take later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind port 0").port()
}

/// A TCP relay from `127.0.0.1:port` to a broker. While it runs the broker is reachable through
/// the port; dropping it cuts every relayed connection and refuses new ones, like a broker outage.
pub struct Proxy {
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Start relaying `127.0.0.1:port` to `target`.
    pub async fn start(port: u16, target: String) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind proxy port");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every relayed connection.
        self.task.abort();
    }
}

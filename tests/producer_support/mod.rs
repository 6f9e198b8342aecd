//! Shared helpers for the broker integration tests: broker addresses from the environment, random names.

#![allow(dead_code)]

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

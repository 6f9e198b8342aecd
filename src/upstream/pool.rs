//! Per-endpoint pool of HTTP/1.1 connections (plain or TLS, opened by the endpoint's [`Connector`]), on hyper's
//! low-level client connections.
//!
//! Written here instead of using hyper-util's pooled `Client` because the request path of a proxy pays for every
//! layer: a pool per endpoint needs no pool-key hashing and no shared map, and `try_send_request` hands back a
//! request that a dead idle connection could not take, so it can go out on a fresh one untouched (bench/README.md
//! has the measurements). HTTP/2 upstreams still use hyper-util's client, which multiplexes on one connection.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::connect::{ConnectError, Connector};
use crate::body::{BoxError, OutBody};

/// Most idle connections kept per endpoint.
const MAX_IDLE: usize = 512;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP or TLS): the request was not sent.
    #[error("{error}")]
    Connect {
        /// What failed.
        #[source]
        error: ConnectError,
        /// The request, untouched, when the pool can hand it back (so a retry need not have copied it).
        unsent: Option<Box<Request<OutBody>>>,
    },
    /// The connection failed after the request may have been sent.
    #[error("request failed: {0}")]
    Failed(#[source] BoxError),
}

impl SendError {
    /// Whether nothing was sent (a connect failure).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }

    /// The request of a connect failure, when the pool kept it.
    pub fn take_unsent(&mut self) -> Option<Request<OutBody>> {
        match self {
            SendError::Connect { unsent, .. } => unsent.take().map(|r| *r),
            SendError::Failed(_) => None,
        }
    }

    /// Whether the TLS handshake failed (e.g. the endpoint's certificate did not verify).
    pub fn is_tls(&self) -> bool {
        matches!(self, SendError::Connect { error, .. } if error.is_tls())
    }
}

/// Idle HTTP/1.1 connections to one endpoint.
#[derive(Debug)]
pub struct Pool {
    connector: Connector,
    idle: Mutex<Vec<SendRequest<OutBody>>>,
}

/// A connection in use; given back to its pool once the response body has been read to the end.
#[derive(Debug)]
pub struct Reusable {
    sender: SendRequest<OutBody>,
    pool: Arc<Pool>,
}

impl Reusable {
    /// Returns the connection to the pool (dropping it closes it instead).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(self.sender);
        }
    }
}

impl Pool {
    /// An empty pool whose connections `connector` opens.
    pub fn new(connector: Connector) -> Arc<Pool> {
        Arc::new(Pool { connector, idle: Mutex::new(Vec::new()) })
    }

    /// Sends `req` on an idle connection, or on a new one.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<OutBody>,
    ) -> Result<(Response<Incoming>, Reusable), SendError> {
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, Reusable { sender, pool: self.clone() })),
                Err(mut e) => match e.take_message() {
                    // The connection died while idle and never took the request: try the next one.
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Failed(e.into_error().into())),
                },
            }
        }
        // Boxed: opening a connection (TCP, maybe TLS) is the rare path, and its large future would otherwise make
        // every request's future larger, which is moved at each level of the request path.
        Box::pin(self.send_on_new(req)).await
    }

    /// Sends `req` on a new connection.
    async fn send_on_new(self: &Arc<Self>, req: Request<OutBody>) -> Result<(Response<Incoming>, Reusable), SendError> {
        let mut sender = match self.connect().await {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::Connect { error, unsent: Some(Box::new(req)) }),
        };
        match sender.send_request(req).await {
            Ok(res) => Ok((res, Reusable { sender, pool: self.clone() })),
            Err(e) => Err(SendError::Failed(e.into())),
        }
    }

    fn checkout(&self) -> Option<SendRequest<OutBody>> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// A new connection, or why none could be made.
    async fn connect(&self) -> Result<SendRequest<OutBody>, ConnectError> {
        let stream = self.connector.connect().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Http { addr: self.connector.addr(), reason: e.to_string() })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

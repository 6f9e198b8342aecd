//! Per-endpoint pool of HTTP/1.1 connections (plain or TLS, opened by the endpoint's [`Connector`]), on hyper's
//! low-level client connections, each driven by the task that uses it ([`Conn`]).
//!
//! Written here instead of using hyper-util's pooled `Client` because the request path of a proxy pays for every
//! layer: a pool per endpoint needs no pool-key hashing and no shared map, and `try_send_request` hands back a
//! request that a dead idle connection could not take, so it can go out on a fresh one untouched (bench/README.md
//! has the measurements). HTTP/2 upstreams still use hyper-util's client, which multiplexes on one connection.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::conn::{Conn, Reusable, UpstreamBody};
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
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// An empty pool whose connections `connector` opens.
    pub fn new(connector: Connector) -> Arc<Pool> {
        Arc::new(Pool { connector, idle: Mutex::new(Vec::new()) })
    }

    /// Sends `req` on an idle connection, or on a new one. The body of the response drives the connection and
    /// gives it back to the pool at its end.
    pub async fn send(self: &Arc<Self>, mut req: Request<OutBody>) -> Result<Response<UpstreamBody>, SendError> {
        while let Some(mut conn) = self.checkout() {
            if conn.ready().await.is_err() {
                continue;
            }
            match conn.send(req).await {
                Ok(res) => return Ok(self.response(res, conn)),
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
    async fn send_on_new(self: &Arc<Self>, req: Request<OutBody>) -> Result<Response<UpstreamBody>, SendError> {
        let mut conn = match self.connect().await {
            Ok(conn) => conn,
            Err(error) => return Err(SendError::Connect { error, unsent: Some(Box::new(req)) }),
        };
        match conn.send(req).await {
            Ok(res) => Ok(self.response(res, conn)),
            Err(e) => Err(SendError::Failed(e.into_error().into())),
        }
    }

    fn response(self: &Arc<Self>, res: Response<hyper::body::Incoming>, conn: Conn) -> Response<UpstreamBody> {
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is no longer HTTP: it goes to whoever takes the upgrade, never back to the pool.
            conn.detach();
            return res.map(|inner| UpstreamBody::new(inner, None));
        }
        let reusable = Reusable::new(conn, self.clone());
        res.map(|inner| UpstreamBody::new(inner, Some(reusable)))
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(conn) = idle.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for a later request (or closes it when the pool is full).
    pub(super) fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// A new connection, or why none could be made.
    async fn connect(&self) -> Result<Conn, ConnectError> {
        let stream = self.connector.connect().await?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Http { addr: self.connector.addr(), reason: e.to_string() })?;
        Ok(Conn::new(sender, driver.with_upgrades()))
    }
}

//! Per-endpoint pool of HTTP/1.1 connections (plain or TLS, opened by the endpoint's [`Connector`]): those of the
//! [`wire`] client, which most requests take, and hyper's low-level client connections for the rest (streamed
//! bodies, upgrades; [`wire::eligible`] says which).
//!
//! Written here instead of using hyper-util's pooled `Client` because the request path of a proxy pays for every
//! layer: a pool per endpoint needs no pool-key hashing and no shared map, and `try_send_request` hands back a
//! request that a dead idle connection could not take, so it can go out on a fresh one untouched (bench/README.md
//! has the measurements). HTTP/2 upstreams still use hyper-util's client, which multiplexes on one connection.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::Either;
use futures_util::{FutureExt as _, TryFutureExt as _};
use http::{Request, Response};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::added::Added;
use super::connect::{ConnectError, Connector, Stream};
use super::wire::{self, Failure, Home, WireBody};
use crate::body::{BoxError, OutBody};
use crate::workers;

/// Most idle connections kept per endpoint, in each lane.
const MAX_IDLE: usize = 512;
/// How often a pool's idle wire connections are checked for a close by the upstream, and aged. Nothing else
/// watches them: a connection the upstream closed would hold its socket until taken.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Sweeps an idle wire connection stays unused before it is closed (90 s, Go's `IdleConnTimeout`): the upstream may
/// be about to close it.
const MAX_IDLE_SWEEPS: u64 = 90;

/// An upstream response body: read by hyper's client (`Left`: HTTP/2, streamed request bodies, upgrades) or by the
/// request's own task through the [`wire`] client (`Right`: every other HTTP/1.1 request).
pub type AnswerBody = http_body_util::Either<hyper::body::Incoming, WireBody<Stream>>;

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
    /// The deadline passed before the response head arrived (or before a new connection was made).
    #[error("no response before the deadline")]
    Timeout,
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
            SendError::Failed(_) | SendError::Timeout => None,
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
    /// One lane per serving worker and one for the other threads ([`workers::lane`]): a connection is driven by
    /// the runtime that opened it, so it is taken from the lane of the thread that asks and goes back to its own.
    lanes: Box<[Lane]>,
    /// The pool itself, for its sweeper tasks.
    me: Weak<Pool>,
}

/// One thread's idle connections.
#[derive(Debug, Default)]
struct Lane {
    idle: Mutex<Vec<SendRequest<OutBody>>>,
    wire: Mutex<IdleWire>,
}

/// Idle wire connections, each with the sweep count when it was returned (most recent last).
#[derive(Debug, Default)]
struct IdleWire {
    conns: Vec<(u64, Box<wire::Conn<Stream>>)>,
    sweeps: u64,
    /// Whether a sweeper task runs (it stops once no connection is idle).
    sweeping: bool,
}

/// A connection in use; given back to its pool once the response body has been read to the end.
#[derive(Debug)]
pub struct Reusable {
    sender: SendRequest<OutBody>,
    pool: Arc<Pool>,
    /// The lane of the thread that opened it (whose runtime drives it).
    lane: usize,
}

impl Reusable {
    /// Returns the connection to the pool (dropping it closes it instead).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.lanes[self.lane].idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(self.sender);
        }
    }
}

impl Pool {
    /// An empty pool whose connections `connector` opens.
    pub fn new(connector: Connector) -> Arc<Pool> {
        let lanes = (0..workers::lanes()).map(|_| Lane::default()).collect();
        Arc::new_cyclic(|me| Pool { connector, lanes, me: me.clone() })
    }

    /// The calling thread's lane.
    fn lane(&self) -> &Lane {
        &self.lanes[self.lane_index()]
    }

    fn lane_index(&self) -> usize {
        workers::lane() % self.lanes.len()
    }

    /// Sends `req` on an idle connection, or on a new one, and waits for the response head until `deadline`. The
    /// `Reusable` of hyper's connections goes back to the pool once the body was read; the wire client's connections
    /// go back by themselves.
    ///
    /// Not an `async fn`, like the others on the request path: an `async fn` keeps each argument twice in its future
    /// (where it was passed, and the local rustc moves it into), and these futures nest into every request's future,
    /// which is moved whole when it is boxed. An `async move` block uses its captures in place: a forward route's
    /// future went from 4,144 to 2,320 bytes (`-Zprint-type-sizes`), that much less memory per request in flight.
    /// Clippy's `manual_async_fn` is allowed on each of them for that reason.
    pub fn send(
        self: &Arc<Self>,
        mut req: Request<OutBody>,
        added: Added<'_>,
        deadline: Instant,
        keep_lines: bool,
    ) -> impl Future<Output = Result<(Response<AnswerBody>, Option<Reusable>), SendError>> + Send + '_ {
        if wire::eligible(&req) {
            let encoded = wire::encode(&req, &added, keep_lines);
            Either::Left(self.send_wire(req, encoded, deadline).map_ok(|res| (res.map(AnswerBody::Right), None)))
        } else {
            added.insert_into(req.headers_mut());
            let sent = within(deadline, self.send_hyper(req));
            Either::Right(sent.map_ok(|(res, conn)| (res.map(AnswerBody::Left), Some(conn))))
        }
    }

    /// Sends `req`, `encoded`, with the wire client: on an idle connection that is still open, else on a new one.
    /// (`req` is kept for handing back unsent.) The connection's own timer keeps the deadline (see [`wire::Conn`]); a
    /// new connection is made under a timer of its own.
    #[allow(clippy::manual_async_fn)] // on purpose: see `Pool::send`
    fn send_wire(
        self: &Arc<Self>,
        req: Request<OutBody>,
        encoded: wire::Encoded,
        deadline: Instant,
    ) -> impl Future<Output = Result<Response<WireBody<Stream>>, SendError>> + Send + '_ {
        async move {
            let home: Arc<dyn Home<Stream>> = self.clone();
            while let Some(conn) = self.checkout_wire() {
                match conn.exchange(&encoded, home.clone(), deadline).await {
                    Ok(res) => return Ok(res),
                    // The connection died while idle and never took a byte: try the next one.
                    Err(Failure::Unsent(_)) => continue,
                    Err(Failure::Failed(e)) => return Err(SendError::Failed(e.into())),
                    Err(Failure::TimedOut) => return Err(SendError::Timeout),
                }
            }
            // Boxed, as in `send_hyper`.
            Box::pin(async move {
                let stream = match tokio::time::timeout_at(deadline, self.connector.connect()).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return Err(SendError::Connect { error, unsent: Some(Box::new(req)) }),
                    Err(_) => return Err(SendError::Timeout),
                };
                match wire::Conn::new(stream).exchange(&encoded, home, deadline).await {
                    Ok(res) => Ok(res),
                    // Not a byte taken by a fresh connection (the upstream closed it at once): as good as not
                    // connected, so a retry on `connect-failure` may send the request elsewhere.
                    Err(Failure::Unsent(e)) => Err(SendError::Connect {
                        error: ConnectError::Closed { addr: self.connector.addr(), reason: e.to_string() },
                        unsent: Some(Box::new(req)),
                    }),
                    Err(Failure::Failed(e)) => Err(SendError::Failed(e.into())),
                    Err(Failure::TimedOut) => Err(SendError::Timeout),
                }
            })
            .await
        }
    }

    /// An idle wire connection that is still open (the others are closed on the way).
    fn checkout_wire(&self) -> Option<Box<wire::Conn<Stream>>> {
        loop {
            let (_, mut conn) = self.lane().wire.lock().expect("pool lock").conns.pop()?;
            if conn.is_open() {
                return Some(conn);
            }
        }
    }

    /// Sends `req` with hyper's client on an idle connection, or on a new one.
    #[allow(clippy::manual_async_fn)] // on purpose: see `Pool::send`
    fn send_hyper(
        self: &Arc<Self>,
        mut req: Request<OutBody>,
    ) -> impl Future<Output = Result<(hyper::Response<hyper::body::Incoming>, Reusable), SendError>> + Send + '_ {
        async move {
            while let Some(mut sender) = self.checkout() {
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(res) => return Ok((res, Reusable { sender, pool: self.clone(), lane: self.lane_index() })),
                    Err(mut e) => match e.take_message() {
                        // The connection died while idle and never took the request: try the next one.
                        Some(unsent) => req = unsent,
                        None => return Err(SendError::Failed(e.into_error().into())),
                    },
                }
            }
            // Boxed: opening a connection (TCP, maybe TLS) is the rare path, and its large future would otherwise
            // make every request's future larger, which is moved at each level of the request path.
            Box::pin(self.send_on_new(req)).await
        }
    }

    /// Sends `req` on a new connection.
    async fn send_on_new(
        self: &Arc<Self>,
        req: Request<OutBody>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Reusable), SendError> {
        let mut sender = match self.connect().await {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::Connect { error, unsent: Some(Box::new(req)) }),
        };
        match sender.send_request(req).await {
            Ok(res) => Ok((res, Reusable { sender, pool: self.clone(), lane: self.lane_index() })),
            Err(e) => Err(SendError::Failed(e.into())),
        }
    }

    fn checkout(&self) -> Option<SendRequest<OutBody>> {
        let mut idle = self.lane().idle.lock().expect("pool lock");
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// A new hyper connection, or why none could be made.
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

/// `fut`'s output, or [`SendError::Timeout`] once `deadline` passed (with a timer of its own: the paths that are not
/// the wire client's, where each connection keeps one). Not an `async fn`, which would keep `fut` twice (see
/// [`Pool::send`]).
pub(super) fn within<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, SendError>>,
) -> impl Future<Output = Result<T, SendError>> {
    tokio::time::timeout_at(deadline, fut).map(|timed| timed.unwrap_or(Err(SendError::Timeout)))
}

impl Home<Stream> for Pool {
    fn put(&self, conn: Box<wire::Conn<Stream>>) {
        let lane = conn.lane() % self.lanes.len();
        if self.lanes[lane].wire.lock().expect("pool lock").put(conn) {
            tokio::spawn(sweep_loop(self.me.clone(), lane));
        }
    }
}

/// Sweeps the idle wire connections of `pool`'s lane `lane` every `SWEEP_EVERY` (on that lane's thread), until none
/// is idle or the pool is gone.
async fn sweep_loop(pool: Weak<Pool>, lane: usize) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.lanes[lane].wire.lock().expect("pool lock").sweep() {
            return;
        }
    }
}

impl IdleWire {
    /// Keeps `conn` unless `MAX_IDLE` are kept. Returns whether a sweeper task must be started.
    fn put(&mut self, conn: Box<wire::Conn<Stream>>) -> bool {
        if self.conns.len() < MAX_IDLE {
            self.conns.push((self.sweeps, conn));
        }
        !std::mem::replace(&mut self.sweeping, true)
    }

    /// Closes the connections the upstream closed (or sent unasked bytes on) and those idle for
    /// `MAX_IDLE_SWEEPS` sweeps. Returns whether any is left (else the sweeper stops).
    fn sweep(&mut self) -> bool {
        self.sweeps += 1;
        let now = self.sweeps;
        self.conns.retain_mut(|(since, conn)| now - *since < MAX_IDLE_SWEEPS && conn.is_open());
        self.sweeping = !self.conns.is_empty();
        self.sweeping
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected pair: the pool's side as a wire connection, and the upstream's socket.
    async fn pair() -> (Box<wire::Conn<Stream>>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (wire::Conn::new(Stream::Plain(ours)), theirs)
    }

    #[tokio::test]
    async fn sweeps_close_connections_the_upstream_closed_and_those_idle_too_long() {
        let mut idle = IdleWire::default();
        let (a, a_upstream) = pair().await;
        let (b, _b_upstream) = pair().await;
        assert!(idle.put(a), "the first connection starts a sweeper");
        assert!(!idle.put(b), "one sweeper at a time");
        drop(a_upstream);
        tokio::time::sleep(Duration::from_millis(50)).await; // the FIN reaches our socket
        assert!(idle.sweep());
        assert_eq!(idle.conns.len(), 1, "the closed connection is swept out, the open one stays");
        let (c, _c_upstream) = pair().await;
        idle.put(c);
        while idle.sweeps < MAX_IDLE_SWEEPS - 1 {
            idle.sweep();
        }
        assert_eq!(idle.conns.len(), 2, "b is not idle for MAX_IDLE_SWEEPS yet");
        assert!(idle.sweep());
        assert_eq!(idle.conns.len(), 1, "b was idle for MAX_IDLE_SWEEPS sweeps; c, returned one sweep later, stays");
        while idle.sweep() {}
        assert!(idle.conns.is_empty() && !idle.sweeping, "the sweeper stops once no connection is idle");
        let (d, _d_upstream) = pair().await;
        assert!(idle.put(d), "and the next return starts one again");
    }
}

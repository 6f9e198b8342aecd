//! Opening a connection to one endpoint: TCP, then for `https://` endpoints a TLS handshake that verifies the
//! endpoint's certificate against the upstream's roots (`ca_file`, else the system's) and the name from
//! `tls_server_name`, else the endpoint's host (also sent as SNI); `connect_timeout` covers both. The HTTP/1.1 pool
//! calls [`Connector::connect`]; the HTTP/2 client uses the same connector as a `tower::Service<Uri>`.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::UpstreamTls;

/// What the connections of one upstream share: how long connecting may take, HTTP/2 or not, TLS settings.
#[derive(Clone, Debug)]
pub struct Transport {
    /// Covers the TCP connect and the TLS handshake.
    pub connect_timeout: Duration,
    /// Speak HTTP/2 (h2c, or ALPN `h2` over TLS).
    pub http2: bool,
    /// Roots and ALPN for `https://` endpoints (`None` when the upstream has none).
    pub tls: Option<UpstreamTls>,
    /// The name `https://` endpoints' certificates must carry instead of their host.
    pub tls_server_name: Option<String>,
}

impl Transport {
    /// Whether connections made with `self` and with `other` are interchangeable.
    pub fn same_as(&self, other: &Transport) -> bool {
        self.connect_timeout == other.connect_timeout
            && self.http2 == other.http2
            && self.tls_server_name == other.tls_server_name
            && same_tls(&self.tls, &other.tls)
    }
}

/// Whether two TLS settings (or their absence) verify and speak the same way.
pub fn same_tls(a: &Option<UpstreamTls>, b: &Option<UpstreamTls>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    }
}

/// Opens connections to one endpoint address.
#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.tls.as_ref().map(|(_, n)| n.to_str());
        f.debug_struct("Connector").field("addr", &self.addr).field("tls", &name).finish()
    }
}

/// Why no connection could be made (nothing was sent).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable, ...).
    #[error("connect to {addr} failed: {reason}")]
    Tcp {
        /// Endpoint address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// TCP connect and TLS handshake took longer than `connect_timeout`.
    #[error("connect to {addr}: no connection within {timeout:?}")]
    Timeout {
        /// Endpoint address.
        addr: SocketAddr,
        /// The `connect_timeout`.
        timeout: Duration,
    },
    /// The TLS handshake failed, e.g. the certificate is not trusted or does not carry the expected name.
    #[error("TLS handshake with {addr} (server name {name:?}) failed: {reason}")]
    Tls {
        /// Endpoint address.
        addr: SocketAddr,
        /// The name the certificate had to carry.
        name: String,
        /// rustls' reason (`invalid peer certificate: UnknownIssuer`, ...).
        reason: String,
    },
    /// The HTTP client could not take the new connection.
    #[error("connection to {addr} could not be set up: {reason}")]
    Http {
        /// Endpoint address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The new connection failed before any write of the request succeeded (the upstream closed it at once). Over
    /// TLS, a first write that fails after one record of the head left can land here too (tokio-rustls reports the
    /// error of a later `writev` within the same write); that needs a reset between two syscalls of one write.
    #[error("connection to {addr} closed before the request was sent: {reason}")]
    Closed {
        /// Endpoint address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
}

impl ConnectError {
    /// Whether the TLS handshake (certificate verification included) is what failed.
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls { .. })
    }

    /// The `ConnectError` somewhere in the source chain of `error` (how the HTTP/2 client reports it).
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<ConnectError> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(found) = e.downcast_ref::<ConnectError>() {
                return Some(found.clone());
            }
            cause = e.source();
        }
        None
    }
}

impl Connector {
    /// Connects to `addr`; over TLS when `tls` gives the client settings and the name to verify.
    pub fn new(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    ) -> Connector {
        Connector { addr, timeout, tls: tls.map(|(config, name)| (TlsConnector::from(config), name)) }
    }

    /// The endpoint address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens a connection (TCP, then TLS for `https://` endpoints) within the connect timeout.
    pub async fn connect(&self) -> Result<Stream, ConnectError> {
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { addr: self.addr, timeout: self.timeout }),
        }
    }

    async fn open(&self) -> Result<Stream, ConnectError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ConnectError::Tcp { addr: self.addr, reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else { return Ok(Stream::Plain(tcp)) };
        match connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(e) => {
                Err(ConnectError::Tls { addr: self.addr, name: name.to_str().into_owned(), reason: e.to_string() })
            }
        }
    }
}

/// The HTTP/2 client's connector: every URI leads to this connector's endpoint.
impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { me.connect().await.map(TokioIo::new) })
    }
}

/// A connection to an endpoint: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// `http://`
    Plain(TcpStream),
    /// `https://`
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(_) => Connected::new(),
            Stream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => Connected::new().negotiated_h2(),
            Stream::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

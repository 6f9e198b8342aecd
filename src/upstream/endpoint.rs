//! One upstream endpoint: its address, the Host header it expects, how to connect to it (plain or TLS, HTTP/1.1
//! pool or HTTP/2 client), and its live state (load, ejection, health).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connect::{Connector, Transport};
use crate::body::OutBody;
use crate::telemetry::FixedAttributes;
use crate::workers;

/// A configured endpoint URL, split into what connecting and the Host header need.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP literal, as written.
    pub host: String,
    /// Port (default 80 for `http`, 443 for `https`).
    pub port: u16,
}

/// A host as written in a URI's authority or a Host header: IPv6 literals in brackets.
pub fn authority_host(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// A resolved endpoint and its state.
#[derive(Debug)]
pub struct Endpoint {
    /// The URL it was resolved from, as configured (used in logs, never in client responses).
    pub url: String,
    /// `http` or `https` (the scheme of HTTP/2 requests).
    pub scheme: Scheme,
    /// Address connected to.
    pub addr: SocketAddr,
    /// `server.address` (its IP address) and `server.port` of CLIENT spans, encoded once.
    pub span_attributes: FixedAttributes,
    /// `ip:port`, the authority of the request URI handed to the HTTP client.
    pub authority: Authority,
    /// Value of the Host header sent upstream (`host[:port]` as configured).
    pub host_header: HeaderValue,
    /// Requests in flight to this endpoint (p2c picks the smaller).
    pub outstanding: AtomicUsize,
    /// Failures in a row (connect errors, resets, timeouts, 5xx).
    pub consecutive_failures: AtomicU32,
    /// While ejected: end of the ejection in milliseconds since the upstream's clock origin; 0 when not ejected.
    pub ejected_until_ms: AtomicU64,
    /// How many times in a row it has been ejected (drives the doubling).
    pub times_ejected: AtomicU32,
    /// Active health-check verdict (true when checks are off).
    pub healthy: AtomicBool,
    /// Active health-check streak: positive = successes in a row, negative = failures in a row.
    pub check_streak: std::sync::atomic::AtomicI32,
    /// Idle HTTP/1.1 connections to this address.
    pub pool: std::sync::Arc<super::pool::Pool>,
    /// HTTP/2 upstreams: the clients multiplexing requests on a connection to this address, one per
    /// [`workers::lane`] so that each serving worker drives its own (then `pool` is unused).
    h2: Option<Box<[Client<Connector, OutBody>]>>,
}

impl Endpoint {
    /// Parses an endpoint URL (`http://host:port` or `https://host:port`, no path).
    pub fn parse_url(url: &str) -> Result<EndpointUrl, String> {
        let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
        let scheme = uri.scheme().cloned().ok_or("must start with http:// or https://")?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err("must start with http:// or https://".to_owned());
        }
        let authority = uri.authority().ok_or("has no host")?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err("must not have a path (use forward.rewrite_prefix)".to_owned());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        Ok(EndpointUrl { port: authority.port_u16().unwrap_or(default_port), scheme, host })
    }

    /// A fresh endpoint for `addr`, resolved from `url`, connected to as `transport` says. `None` for an `https://`
    /// endpoint of a transport without TLS settings (the snapshot always makes them; see `tls::upstream`).
    pub fn new(url: &str, parsed: &EndpointUrl, addr: SocketAddr, transport: &Transport) -> Option<Endpoint> {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is an authority");
        let host = authority_host(&parsed.host);
        let https = parsed.scheme == Scheme::HTTPS;
        let default_port = if https { 443 } else { 80 };
        let host_header = if parsed.port == default_port { host } else { format!("{host}:{}", parsed.port) };
        let tls = match (https, &transport.tls) {
            (false, _) => None,
            (true, None) => return None,
            (true, Some(tls)) => {
                let name = crate::tls::server_name(transport.tls_server_name.as_deref(), &parsed.host).ok()?;
                Some((tls.config.clone(), name))
            }
        };
        let connector = Connector::new(addr, transport.connect_timeout, tls);
        let h2 = transport.http2.then(|| {
            (0..workers::lanes())
                .map(|_| {
                    Client::builder(TokioExecutor::new())
                        .pool_timer(TokioTimer::new())
                        .pool_idle_timeout(Duration::from_secs(60))
                        .http2_only(true)
                        .build(connector.clone())
                })
                .collect()
        });
        Some(Endpoint {
            url: url.to_owned(),
            scheme: parsed.scheme.clone(),
            addr,
            span_attributes: FixedAttributes::default()
                .str("server.address", &addr.ip().to_string())
                .int("server.port", i64::from(addr.port())),
            authority,
            host_header: HeaderValue::try_from(host_header).expect("validated host"),
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            check_streak: std::sync::atomic::AtomicI32::new(0),
            pool: super::pool::Pool::new(connector),
            h2,
        })
    }

    /// HTTP/2 upstreams: the calling thread's client.
    pub fn h2(&self) -> Option<&Client<Connector, OutBody>> {
        self.h2.as_ref().map(|clients| &clients[workers::lane() % clients.len()])
    }

    /// Whether the balancer may send to it at `now_ms` (not ejected, not failing its health checks).
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.is_ejected(now_ms)
    }

    /// Whether it is ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Requests in flight.
    pub fn load(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// HTTP/1.1 without TLS, for unit tests.
#[cfg(test)]
pub fn test_transport() -> Transport {
    Transport { connect_timeout: Duration::from_secs(1), http2: false, tls: None, tls_server_name: None }
}

/// `n` endpoints at 127.0.0.1:9000.. for unit tests.
#[cfg(test)]
pub fn test_endpoints(n: usize) -> Vec<std::sync::Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 9000 + i);
            let addr = format!("127.0.0.1:{}", 9000 + i).parse().expect("a socket address");
            let parsed = Endpoint::parse_url(&url).expect("a valid URL");
            std::sync::Arc::new(Endpoint::new(&url, &parsed, addr, &test_transport()).expect("plain HTTP"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_urls() {
        let u = Endpoint::parse_url("http://orders.internal:8080").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("orders.internal", 8080));
        assert_eq!(Endpoint::parse_url("http://127.0.0.1").unwrap().port, 80);
        assert!(Endpoint::parse_url("ftp://x").is_err());
        let https = Endpoint::parse_url("https://orders.internal").unwrap();
        assert_eq!((https.scheme, https.port), (Scheme::HTTPS, 443));
        assert!(Endpoint::parse_url("http://x/path").is_err());
        assert!(Endpoint::parse_url("nonsense url").is_err());
        let e = Endpoint::new(
            "http://a:81",
            &Endpoint::parse_url("http://a:81").unwrap(),
            "127.0.0.1:81".parse().unwrap(),
            &test_transport(),
        )
        .unwrap();
        assert_eq!(e.host_header, "a:81");
        assert_eq!(e.authority.as_str(), "127.0.0.1:81");
    }
}

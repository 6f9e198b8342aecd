//! One upstream endpoint: its address, the Host header it expects, and its live state (load, ejection, health).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use http::HeaderValue;
use http::uri::{Authority, Scheme};

/// A configured endpoint URL, split into what connecting and the Host header need.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointUrl {
    /// `http` (`https` is refused by validation for now).
    pub scheme: Scheme,
    /// Host name or IP literal, as written.
    pub host: String,
    /// Port (default 80).
    pub port: u16,
}

/// A resolved endpoint and its state.
#[derive(Debug)]
pub struct Endpoint {
    /// The URL it was resolved from, as configured (used in logs, never in client responses).
    pub url: String,
    /// Address connected to.
    pub addr: SocketAddr,
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
}

impl Endpoint {
    /// Parses an endpoint URL (`http://host:port`, no path).
    pub fn parse_url(url: &str) -> Result<EndpointUrl, String> {
        let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
        let scheme = uri.scheme().cloned().ok_or("must start with http://")?;
        if scheme == Scheme::HTTPS {
            return Err("uses https, which upstreams do not support yet (use http://)".to_owned());
        }
        if scheme != Scheme::HTTP {
            return Err("must start with http://".to_owned());
        }
        let authority = uri.authority().ok_or("has no host")?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err("must not have a path (use forward.rewrite_prefix)".to_owned());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(EndpointUrl { scheme, host, port: authority.port_u16().unwrap_or(80) })
    }

    /// A fresh endpoint for `addr`, resolved from `url`.
    pub fn new(url: &str, parsed: &EndpointUrl, addr: SocketAddr, connect_timeout: std::time::Duration) -> Endpoint {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is an authority");
        let host = if parsed.host.contains(':') { format!("[{}]", parsed.host) } else { parsed.host.clone() };
        let host_header = if parsed.port == 80 { host } else { format!("{host}:{}", parsed.port) };
        Endpoint {
            url: url.to_owned(),
            addr,
            authority,
            host_header: HeaderValue::try_from(host_header).expect("validated host"),
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            check_streak: std::sync::atomic::AtomicI32::new(0),
            pool: super::pool::Pool::new(addr, connect_timeout),
        }
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

/// `n` endpoints at 127.0.0.1:9000.. for unit tests.
#[cfg(test)]
pub fn test_endpoints(n: usize) -> Vec<std::sync::Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 9000 + i);
            let addr = format!("127.0.0.1:{}", 9000 + i).parse().expect("a socket address");
            let parsed = Endpoint::parse_url(&url).expect("a valid URL");
            std::sync::Arc::new(Endpoint::new(&url, &parsed, addr, std::time::Duration::from_secs(1)))
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
        assert!(Endpoint::parse_url("http://x/path").is_err());
        assert!(Endpoint::parse_url("nonsense url").is_err());
        let e = Endpoint::new(
            "http://a:81",
            &Endpoint::parse_url("http://a:81").unwrap(),
            "127.0.0.1:81".parse().unwrap(),
            std::time::Duration::from_secs(1),
        );
        assert_eq!(e.host_header, "a:81");
        assert_eq!(e.authority.as_str(), "127.0.0.1:81");
    }
}

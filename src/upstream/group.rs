//! An upstream: its endpoints (re-resolved from DNS) with their connections (plain or TLS), load shedding,
//! outlier ejection and optional active health checks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use tokio::time::Instant;

use super::added::Added;
use super::balance::{self, Pick};
use super::connect::{ConnectError, Transport};
use super::endpoint::{Endpoint, EndpointUrl};
use super::health::health_loop;
use super::outlier::OutlierDetector;
use super::pool::{self, AnswerBody, Reusable, SendError};
use crate::body::OutBody;
use crate::config::{Balance, UpstreamConfig};
use crate::telemetry::{Metrics, UpstreamMetrics};
use crate::template::Template;
use crate::tls::UpstreamTls;

/// A named group of endpoints and everything needed to send to them.
pub struct Upstream {
    /// Name from `[upstreams.NAME]`.
    pub name: String,
    /// The name as a span attribute value (shared, not copied per request).
    pub label: Arc<str>,
    balance: Balance,
    /// Template for `balance = "hash"`.
    pub hash_key: Option<Template>,
    targets: Vec<(String, EndpointUrl)>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// How endpoints are connected to (timeout, HTTP/2, TLS); each endpoint holds its own connections.
    transport: Transport,
    in_flight: Arc<AtomicUsize>,
    max_concurrent: usize,
    cursor: AtomicUsize,
    /// Passive ejection.
    pub outlier: OutlierDetector,
    /// This upstream's metric handles.
    pub metrics: UpstreamMetrics,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).finish()
    }
}

/// Counts a request as in flight to an upstream (and an endpoint) until dropped.
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<AtomicUsize>,
    endpoint: Option<Arc<Endpoint>>,
}

impl InFlight {
    /// Charges the request to `endpoint` too (p2c reads the per-endpoint count).
    pub fn assign(&mut self, endpoint: Arc<Endpoint>) {
        if let Some(old) = self.endpoint.replace(endpoint) {
            old.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(e) = &self.endpoint {
            e.outstanding.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = &self.endpoint {
            e.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Upstream {
    /// Builds the upstream, resolves its endpoints once, and starts its resolver and health-check tasks (they
    /// end when the upstream is dropped, e.g. after a config reload).
    ///
    /// `tls` verifies its `https://` endpoints ([`crate::tls::upstream`] makes it from the config).
    ///
    /// With `previous` (the upstream of the same name before a reload whose settings changed), endpoints that are
    /// still configured at the same address keep their state: ejection, health verdict and idle connections (when
    /// they are still connected to the same way).
    pub async fn start(
        name: &str,
        cfg: &UpstreamConfig,
        tls: Option<UpstreamTls>,
        metrics: &Metrics,
        previous: Option<&Upstream>,
    ) -> Arc<Upstream> {
        let transport = Transport {
            connect_timeout: cfg.connect_timeout.0,
            http2: cfg.http2,
            tls,
            tls_server_name: cfg.tls_server_name.clone(),
        };
        let targets =
            cfg.endpoints.iter().filter_map(|u| Endpoint::parse_url(u).ok().map(|p| (u.clone(), p))).collect();
        let upstream = Arc::new(Upstream {
            name: name.to_owned(),
            label: Arc::from(name),
            balance: cfg.balance,
            hash_key: cfg.hash_key.as_deref().and_then(|k| Template::parse(k).ok()),
            targets,
            endpoints: ArcSwap::from_pointee(match previous {
                Some(p) if p.transport.same_as(&transport) => p.endpoints().to_vec(),
                _ => Vec::new(),
            }),
            transport,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_concurrent: cfg.max_concurrent,
            cursor: AtomicUsize::new(0),
            outlier: OutlierDetector::new(&cfg.outlier, previous.map(|p| &p.outlier)),
            metrics: metrics.upstream(name),
        });
        upstream.resolve().await;
        if upstream.targets.iter().any(|(_, t)| t.host.parse::<IpAddr>().is_err()) {
            tokio::spawn(resolve_loop(Arc::downgrade(&upstream), cfg.resolve_interval.0));
        }
        if let Some(hc) = &cfg.health_check {
            tokio::spawn(health_loop(Arc::downgrade(&upstream), hc.clone()));
        }
        upstream
    }

    /// Whether the endpoints speak HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.transport.http2
    }

    /// Whether the snapshot being built may keep this upstream as it is: its settings did not change (the caller
    /// compares the config) and `tls` (just read again) verifies the same way.
    pub fn same_tls(&self, tls: &Option<UpstreamTls>) -> bool {
        super::connect::same_tls(&self.transport.tls, tls)
    }

    /// The URI of a request for `path` to `endpoint`: HTTP/1.1 connections take the origin form; the HTTP/2
    /// client needs the absolute form (its scheme becomes `:scheme`).
    pub fn uri(&self, endpoint: &Endpoint, path: &PathAndQuery) -> Uri {
        if !self.is_h2() {
            return Uri::from(path.clone());
        }
        let mut u = http::uri::Parts::default();
        u.scheme = Some(if endpoint.scheme == Scheme::HTTPS { Scheme::HTTPS } else { Scheme::HTTP });
        u.authority = Some(endpoint.authority.clone());
        u.path_and_query = Some(path.clone());
        Uri::from_parts(u).expect("scheme, authority and path make a URI")
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    /// Admits one more request, or `None` when `max_concurrent` are already in flight (shed with 503).
    pub fn admit(&self) -> Option<InFlight> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight { upstream: self.in_flight.clone(), endpoint: None };
        (now < self.max_concurrent).then_some(guard)
    }

    /// Picks an endpoint for an attempt.
    pub fn pick(&self, tried: &[Arc<Endpoint>], hash: Option<u64>) -> Pick {
        balance::pick(self.balance, &self.endpoints(), self.outlier.now_ms(), tried, hash, &self.cursor)
    }

    /// Sends one request to `endpoint` (its URI made by [`Upstream::uri`]) with the lines `added` to its headers,
    /// waiting for the response head until `deadline` ([`SendError::Timeout`]). With `keep_lines`, the wire client
    /// may keep the answer's header lines as bytes (`upstream::Lines`).
    /// The `Reusable` goes back to the endpoint's pool once the response body has been read.
    ///
    /// Not an `async fn` (see `Pool::send`): the pool's future is returned as it is, not wrapped in one more.
    pub fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<OutBody>,
        added: Added<'_>,
        deadline: Instant,
        keep_lines: bool,
    ) -> impl Future<Output = Result<(Response<AnswerBody>, Option<Reusable>), SendError>> + Send {
        let Some(client) = endpoint.h2() else {
            return Either::Left(endpoint.pool.send(req, added, deadline, keep_lines));
        };
        added.insert_into(req.headers_mut());
        let (response, addr) = (client.request(req), endpoint.addr);
        Either::Right(pool::within(deadline, async move {
            match response.await {
                Ok(res) => Ok((res.map(AnswerBody::Left), None)),
                Err(e) if e.is_connect() => Err(SendError::Connect {
                    error: ConnectError::find(&e).unwrap_or_else(|| ConnectError::Http { addr, reason: e.to_string() }),
                    unsent: None,
                }),
                Err(e) => Err(SendError::Failed(e.into())),
            }
        }))
    }

    /// Resolves every configured endpoint again, keeping the state of endpoints whose address did not change.
    /// A name that fails to resolve keeps its previous addresses.
    async fn resolve(&self) {
        let current = self.endpoints.load_full();
        let mut by_key: HashMap<(&str, SocketAddr), &Arc<Endpoint>> =
            current.iter().map(|e| ((e.url.as_str(), e.addr), e)).collect();
        let mut next = Vec::new();
        for (url, target) in &self.targets {
            let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, target.port)],
                Err(_) => match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                    Ok(addrs) => addrs.collect(),
                    Err(e) => {
                        tracing::warn!(upstream = %self.name, endpoint = %url, error = %e, "DNS resolution failed");
                        current.iter().filter(|e| &e.url == url).map(|e| e.addr).collect()
                    }
                },
            };
            for addr in addrs {
                match by_key.remove(&(url.as_str(), addr)) {
                    Some(existing) => next.push(existing.clone()),
                    None => match Endpoint::new(url, target, addr, &self.transport) {
                        Some(endpoint) => next.push(Arc::new(endpoint)),
                        None => {
                            tracing::error!(upstream = %self.name, endpoint = %url, "https endpoint without TLS settings")
                        }
                    },
                }
            }
        }
        self.endpoints.store(Arc::new(next));
    }
}

async fn resolve_loop(upstream: Weak<Upstream>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(up) = upstream.upgrade() else { return };
        up.resolve().await;
    }
}

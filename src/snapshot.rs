//! A config compiled for serving: the router, every route's stack, the upstreams and the broker producers.
//! Immutable once built; requests read it through an `Arc` without locks, and a reload swaps in a new one.
//! [`Snapshot::build`] reuses, from the snapshot it replaces, every upstream, broker, idempotency store and rate
//! limiter whose settings did not change, so their state (ejections, health, idle connections, producer
//! connections, remembered keys, rate-limit buckets) survives a reload. TLS files (the listener's certificate and
//! key, upstreams' `ca_file`) are read again by every build, so a reload picks up replaced files.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::action::Action;
use crate::bridge::{DeadLetter, RequestReplyRoute, Subscription, Wiring};
use crate::config::{
    AckMode, BrokerConfig, BrokerKind, Config, PublishApi, PublishConfig, PublishFormat, RequestReplyConfig,
    RetryConfig, SpoolConfig, StoreKind,
};
use crate::forward::{Fault, ForwardRoute};
use crate::layers::{Observe, ObserveLayer, ReadBodyLayer, RouteSpans};
use crate::policy::{
    Auth, AuthError, GuardLayer, IdempotencyLayer, IdempotencyStore, Keys, RateLimit, RateLimiter, SharedRateLimit,
    SharedRateLimitLayer, Verify,
};
use crate::publish::backlog::{Backlog, BacklogSource};
use crate::publish::destination::NameRules;
use crate::publish::encoder::{CloudEvents, Encoder, Target};
use crate::publish::spool::{Spool, Spooled};
use crate::publish::{Ack, Destination, PublishError, PublishRoute, Publisher};
use crate::router::{Matcher, Router};
use crate::stack::{self, Layers, RouteService};
use crate::store::Store;
use crate::telemetry::{Metrics, Tracer};
use crate::template::Template;
use crate::tls::TlsError;
use crate::upstream::{RetryPolicy, Upstream};

/// Why a validated config could not be compiled (the running config, if any, keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A broker's settings were refused by its client library.
    #[error("a broker could not be set up: {0}")]
    Broker(#[from] PublishError),
    /// A route's `auth` keys could not be loaded (an unset variable, a JWKS file that is gone or broken).
    #[error("{route}: {error}")]
    Auth {
        /// The route's label (`routes[2] "orders-api"`).
        route: String,
        /// What is wrong.
        error: AuthError,
    },
    /// A TLS file is missing, unreadable or wrong.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The shared store cannot be set up (its variable is unset, its URL is refused).
    #[error("{0}")]
    Store(String),
    /// A broker's spool directory cannot be used (not writable, in use by another process, unreadable).
    #[error("{0}")]
    Spool(String),
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name.
    pub name: Arc<str>,
    /// The route's stack.
    pub service: RouteService,
    /// Whether the route answers CORS preflights itself (so an `OPTIONS` its methods do not list reaches it).
    pub answers_preflight: bool,
    /// The route's remembered `Idempotency-Key`s (kept across reloads that leave the route's window alone).
    idempotency: Option<Arc<IdempotencyStore>>,
    /// The route's rate-limit buckets (kept across reloads that leave the route's `rate_limit` alone, so that a
    /// reload does not hand every client a full burst again).
    rate_limit: Option<Arc<RateLimit>>,
}

/// A broker's producer and the settings it was made with.
#[derive(Debug)]
pub struct Broker {
    /// The producer.
    pub publisher: Publisher,
    settings: serde_json::Value,
}

/// What a snapshot is compiled with that outlives every snapshot.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Makes spans.
    pub tracer: Tracer,
}

/// The compiled config.
#[derive(Debug)]
pub struct Snapshot {
    /// The config as loaded (served on /routes).
    pub config: Arc<Config>,
    /// Route table.
    pub router: Router,
    /// Routes by index.
    pub routes: Vec<Route>,
    /// The stack of requests no route takes.
    pub unmatched: RouteService,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Broker producers by name.
    pub brokers: BTreeMap<String, Broker>,
    /// Names of the brokers some route publishes to.
    used_brokers: Vec<String>,
    /// Running subscriptions by name (kept across reloads that leave them, their upstream and broker alone).
    pub subscriptions: BTreeMap<String, Arc<Subscription>>,
    /// `server.tls`: the listener's rustls settings, with the certificate and key read by this build (each new
    /// connection takes them from the current snapshot).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The shared store (`[store] kind = "redis"`), kept across reloads that leave `[store]` alone.
    pub store: Option<Arc<Store>>,
    /// Spools taken over from the previous snapshot, to be handed this snapshot's settings and producer once it is
    /// serving ([`Snapshot::activate`]): a reload that is rejected after all must leave them as they were.
    retargets: Mutex<Vec<(Arc<Spool>, SpoolConfig, Publisher)>>,
}

impl Snapshot {
    /// Compiles a validated config. Upstreams and brokers whose settings equal those in `previous` are taken
    /// over as they are; the others are started (a broker that is down does not stop this: its producer keeps
    /// reconnecting).
    pub async fn build(config: Config, previous: Option<&Snapshot>, shared: &Shared) -> Result<Snapshot, BuildError> {
        let metrics = &shared.metrics;
        let tls = config.server.tls.as_ref().map(crate::tls::server_config).transpose()?;
        let mut upstreams = BTreeMap::new();
        for (name, cfg) in &config.upstreams {
            let before = previous.and_then(|p| Some((p.upstreams.get(name)?, p.config.upstreams.get(name)?)));
            let client_tls = crate::tls::upstream(name, cfg)?;
            let upstream = match before {
                Some((up, old)) if same(old, cfg) && up.same_tls(&client_tls) => up.clone(),
                Some((up, _)) => Upstream::start(name, cfg, client_tls, metrics, Some(up)).await,
                None => Upstream::start(name, cfg, client_tls, metrics, None).await,
            };
            upstreams.insert(name.clone(), upstream);
        }
        let store = match config.store.kind {
            StoreKind::Memory => None,
            StoreKind::Redis => Some(match previous.and_then(|p| p.store.clone()).filter(|s| s.is(&config.store)) {
                Some(kept) => kept,
                None => Arc::new(Store::connect(&config.store, metrics.store_errors()).map_err(BuildError::Store)?),
            }),
        };
        let mut brokers = BTreeMap::new();
        let mut retargets = Vec::new();
        for (name, cfg) in &config.brokers {
            let settings = serde_json::to_value(cfg).unwrap_or_default();
            let before = previous.and_then(|p| p.brokers.get(name));
            let publisher = match before {
                Some(b) if b.settings == settings => b.publisher.clone(),
                _ => {
                    let producer = connect(name, cfg).await?;
                    match &cfg.spool {
                        Some(spool) => {
                            spooled(name, spool, producer, before.map(|b| &b.publisher), metrics, &mut retargets)?
                        }
                        None => producer,
                    }
                }
            };
            brokers.insert(name.clone(), Broker { publisher, settings });
        }
        let mut matchers = Vec::with_capacity(config.routes.len());
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut used_brokers = Vec::new();
        for r in &config.routes {
            let matcher = Matcher::compile(&r.matcher).expect("validated match");
            let name: Arc<str> = Arc::from(r.name.as_str());
            let route_metrics = metrics.route(&r.name);
            // The route of the same name in the snapshot this one replaces, with its config.
            let before = previous.and_then(|p| {
                let i = p.config.routes.iter().position(|old| old.name == r.name)?;
                Some((&p.config.routes[i], &p.routes[i]))
            });
            let shared_rate_limit = store.as_ref().zip(r.rate_limit.as_ref()).map(|(store, cfg)| {
                SharedRateLimitLayer(Arc::new(SharedRateLimit::new(cfg, store.clone(), name.clone())))
            });
            let rate_limit = r.rate_limit.as_ref().filter(|_| store.is_none()).map(|cfg| {
                before
                    .filter(|(old, _)| old.rate_limit.as_ref().is_some_and(|old| same(old, cfg)))
                    .and_then(|(_, old)| old.rate_limit.clone())
                    .unwrap_or_else(|| {
                        let limiter = RateLimiter::new(cfg, metrics.rate_limit_keys(&r.name));
                        Arc::new(RateLimit { limiter, route: name.clone() })
                    })
            });
            // A signature covers the raw body: it is read whole before the check.
            let mut needs_body = r.verify.is_some()
                || rate_limit.as_ref().is_some_and(|l| l.limiter.key.as_ref().is_some_and(Template::needs_body))
                || shared_rate_limit.as_ref().is_some_and(|l| l.0.key.as_ref().is_some_and(Template::needs_body));
            let mut streams = false;
            let (action, idempotency) = match (&r.forward, &r.publish, &r.request_reply) {
                (Some(forward), _, _) => {
                    let upstream = upstreams[&forward.upstream].clone();
                    needs_body |= upstream.hash_key.as_ref().is_some_and(Template::needs_body);
                    let route = ForwardRoute {
                        name: name.clone(),
                        upstream,
                        prefix: matcher.prefix().map(str::to_owned),
                        rewrite: forward.rewrite_prefix.clone(),
                        timeout: forward.timeout.unwrap_or(config.server.request_timeout).0,
                        retry: RetryPolicy::new(r.retry.as_ref().unwrap_or(&RetryConfig::default())),
                        fault: r.fault.as_ref().map(Fault::new),
                        tracer: shared.tracer.clone(),
                        retries: route_metrics.retries.clone(),
                        keep_lines: r.cors.is_none(),
                    };
                    (Action::Forward(Arc::new(route)), None)
                }
                (None, Some(publish), _) => {
                    // Confluent v3 reads a chunked body as it streams (one delivery report per record, at once).
                    streams = publish.api == Some(PublishApi::ConfluentV3);
                    needs_body |= !streams;
                    used_brokers.push(publish.broker.clone());
                    let (window, capacity) = (publish.idempotency_window.0, publish.idempotency_capacity);
                    let keys = match &store {
                        Some(store) => Keys::Shared { store: store.clone(), route: name.clone(), window },
                        None => Keys::Local(
                            before
                                .and_then(|(_, old)| old.idempotency.clone())
                                .filter(|s| s.settings() == (window, capacity))
                                .unwrap_or_else(|| {
                                    let keys = metrics.idempotency_keys(&r.name);
                                    Arc::new(IdempotencyStore::new(window, capacity, keys))
                                }),
                        ),
                    };
                    let route = publish_route(name.clone(), publish, &brokers, &config, shared);
                    (Action::Publish(Arc::new(route)), Some(keys))
                }
                (None, None, Some(rr)) => {
                    needs_body = true;
                    used_brokers.push(rr.broker.clone());
                    let route = request_reply_route(name.clone(), rr, &brokers, &config, shared);
                    (Action::RequestReply(Arc::new(route)), None)
                }
                (None, None, None) => unreachable!("validated: a route has an action"),
            };
            // Keys are read now, at every (re)load: a rotated JWKS file takes effect with the next reload.
            let auth = match &r.auth {
                Some(cfg) => Some(Auth::compile(cfg, name.clone(), r.cors.is_some()).map_err(|error| {
                    BuildError::Auth { route: crate::config::route_label(r.index, Some(&r.name)), error }
                })?),
                None => None,
            };
            let http_route = r.matcher.path.as_deref().or(r.matcher.path_prefix.as_deref());
            let observe = Observe {
                route: Some(name.clone()),
                http_route: http_route.map(Arc::from),
                spans: RouteSpans::new(&name, http_route),
                backend: action.target().to_owned(),
                metrics: route_metrics,
                in_flight: metrics.in_flight.clone(),
                tracer: shared.tracer.clone(),
                access_log: config.telemetry.access_log,
            };
            let layers = Layers {
                observe: ObserveLayer(Arc::new(observe)),
                read_body: ReadBodyLayer {
                    max_body: config.server.max_body.0,
                    buffer_all: needs_body,
                    stream: streams,
                },
                verify: r.verify.as_ref().map(|v| GuardLayer::new(Arc::new(Verify::new(name.clone(), v)))),
                auth: auth.map(|a| GuardLayer::new(Arc::new(a))),
                cors: r.cors.as_ref().map(|c| crate::policy::cors::layer(c, r.matcher.methods.as_deref())),
                rate_limit: rate_limit.clone().map(|l| GuardLayer::new(l)),
                shared_rate_limit,
                idempotency: idempotency.clone().map(IdempotencyLayer::new),
                action,
            };
            let answers_preflight = layers.cors.is_some();
            matchers.push(matcher);
            let idempotency = match idempotency {
                Some(Keys::Local(store)) => Some(store),
                _ => None,
            };
            routes.push(Route { name, service: stack::route(layers), answers_preflight, idempotency, rate_limit });
        }
        let unmatched = stack::route(Layers {
            observe: ObserveLayer(Arc::new(Observe {
                route: None,
                http_route: None,
                spans: RouteSpans::default(),
                backend: String::new(),
                metrics: metrics.route(""),
                in_flight: metrics.in_flight.clone(),
                tracer: shared.tracer.clone(),
                access_log: config.telemetry.access_log,
            })),
            // Nothing reads the body of a request no route takes, and its size does not matter: it gets 404/405.
            read_body: ReadBodyLayer { max_body: u64::MAX, buffer_all: false, stream: false },
            verify: None,
            auth: None,
            cors: None,
            rate_limit: None,
            shared_rate_limit: None,
            idempotency: None,
            action: Action::Unmatched,
        });
        let mut subscriptions = BTreeMap::new();
        for cfg in &config.subscriptions {
            let upstream = upstreams[&cfg.to.upstream].clone();
            let source = brokers[&cfg.from.broker].publisher.clone();
            used_brokers.push(cfg.from.broker.clone());
            let dead_letter_broker =
                cfg.dead_letter.as_ref().map(|dl| dl.broker.as_deref().unwrap_or(&cfg.from.broker));
            let kept = previous.and_then(|p| p.subscriptions.get(&cfg.name)).filter(|old| {
                let same_dead_letter = match (&old.dead_letter, dead_letter_broker) {
                    (Some(old), Some(name)) => old.same(&brokers[name].publisher),
                    (None, None) => true,
                    _ => false,
                };
                same(&old.config, cfg)
                    && Arc::ptr_eq(&old.upstream, &upstream)
                    && old.source.same(&source)
                    && same_dead_letter
            });
            let subscription = match kept {
                Some(old) => old.clone(),
                None => {
                    let dead_letter = cfg.dead_letter.as_ref().map(|dl| {
                        let broker = dl.broker.as_deref().unwrap_or(&cfg.from.broker);
                        let destination = match config.brokers[broker].kind {
                            BrokerKind::Kafka => Destination::Kafka {
                                topic: dl.topic.clone().unwrap_or_default(),
                                key: None,
                                partition: None,
                            },
                            BrokerKind::Sqs => Destination::Sqs {
                                queue: dl.queue.clone().unwrap_or_default(),
                                group_id: Some(cfg.name.clone()),
                                dedup_id: None,
                            },
                            BrokerKind::Amqp => Destination::Amqp {
                                exchange: dl.exchange.clone().unwrap_or_default(),
                                routing_key: dl.routing_key.clone().unwrap_or_default(),
                                persistent: true,
                            },
                        };
                        DeadLetter { publisher: brokers[broker].publisher.clone(), destination }
                    });
                    let wiring = Wiring {
                        source,
                        upstream,
                        dead_letter,
                        tracer: shared.tracer.clone(),
                        metrics: metrics.subscription(&cfg.name),
                    };
                    Arc::new(Subscription::start(cfg.clone(), wiring))
                }
            };
            subscriptions.insert(cfg.name.clone(), subscription);
        }
        used_brokers.sort();
        used_brokers.dedup();
        let trusted_proxies =
            config.server.trusted_proxies.iter().filter_map(|p| crate::forwarded::parse_proxy(p)).collect();
        Ok(Snapshot {
            trusted_proxies,
            store,
            retargets: Mutex::new(retargets),
            router: Router::new(matchers),
            routes,
            unmatched,
            upstreams,
            brokers,
            used_brokers,
            subscriptions,
            tls,
            config: Arc::new(config),
        })
    }

    /// Called once this snapshot serves: spools taken over from the one it replaced replay through its producers
    /// and keep its limits from now on.
    pub fn activate(&self) {
        for (spool, cfg, producer) in self.retargets.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            spool.retarget(&cfg, producer);
        }
    }

    /// Brokers used by at least one route, with whether each is connected.
    pub fn broker_status(&self) -> Vec<(&str, bool)> {
        self.used_brokers.iter().filter_map(|n| Some((n.as_str(), self.brokers.get(n)?.publisher.is_up()))).collect()
    }
}

/// Whether two settings tables are the same (compared as their serialized form: every key counts).
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// `producer` behind a spool: the one `before` had in the same directory (taken over, with the new settings), else
/// the spool in `cfg.dir` opened (and recovered).
fn spooled(
    name: &str,
    cfg: &SpoolConfig,
    producer: Publisher,
    before: Option<&Publisher>,
    metrics: &Metrics,
    retargets: &mut Vec<(Arc<Spool>, SpoolConfig, Publisher)>,
) -> Result<Publisher, BuildError> {
    let spool = match before.and_then(Publisher::spool).filter(|s| s.dir() == cfg.dir) {
        Some(kept) => {
            retargets.push((kept.clone(), cfg.clone(), producer.clone()));
            kept.clone()
        }
        None => Arc::new(Spool::open(name, cfg, producer.clone(), metrics.spool(name)).map_err(BuildError::Spool)?),
    };
    Ok(Publisher::new(Spooled::new(producer, spool)))
}

async fn connect(name: &str, cfg: &BrokerConfig) -> Result<Publisher, PublishError> {
    match cfg.kind {
        BrokerKind::Kafka => {
            let from_env = cfg.options_env.iter().map(|(k, var)| (k.clone(), std::env::var(var).unwrap_or_default()));
            // `ca_file` is librdkafka's `ssl.ca.location` (validation refuses both).
            let ca = cfg.ca_file.iter().map(|path| ("ssl.ca.location".to_owned(), path.display().to_string()));
            let options = cfg
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .chain(from_env)
                .chain(ca)
                .collect();
            let bootstrap = cfg.bootstrap.as_deref().unwrap_or_default();
            Publisher::connect_kafka(name, bootstrap, cfg.delivery_timeout.0, &options).await
        }
        BrokerKind::Sqs => {
            Publisher::connect_sqs(name, cfg.endpoint.as_deref(), cfg.region.as_deref().unwrap_or("us-east-1"))
        }
        BrokerKind::Amqp => {
            let url = match (&cfg.url, &cfg.url_env) {
                (Some(u), _) => u.clone(),
                (None, Some(var)) => std::env::var(var).unwrap_or_default(),
                (None, None) => String::new(),
            };
            Publisher::connect_amqp(name, &url, cfg.confirm_timeout.0, cfg.ca_file.clone()).await
        }
    }
}

fn request_reply_route(
    name: Arc<str>,
    rr: &RequestReplyConfig,
    brokers: &BTreeMap<String, Broker>,
    config: &Config,
    shared: &Shared,
) -> RequestReplyRoute {
    let template = |s: &str| Template::parse(s).expect("validated template");
    let target = match config.brokers[&rr.broker].kind {
        BrokerKind::Kafka => Target::Kafka {
            topic: template(rr.topic.as_deref().unwrap_or_default()),
            key: rr.key.as_deref().map(template),
        },
        BrokerKind::Sqs => {
            Target::Sqs { queue: rr.queue.clone().unwrap_or_default(), group: template("{route}"), dedup: None }
        }
        BrokerKind::Amqp => Target::Amqp {
            exchange: rr.exchange.clone().unwrap_or_default(),
            routing_key: template(rr.routing_key.as_deref().unwrap_or_default()),
            persistent: false,
        },
    };
    let header = |h: &String| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok();
    let publisher = brokers[&rr.broker].publisher.clone();
    // Where replies come back: a Kafka topic, or the prefix of this process' SQS reply queue.
    let reply_topic = rr.reply_topic.clone().or_else(|| rr.reply_queue.clone()).unwrap_or_default();
    if !reply_topic.is_empty() {
        publisher.listen(&reply_topic);
    }
    if let Some(replies) = publisher.replies() {
        replies.count_late_in(shared.metrics.late_replies(&rr.broker));
    }
    RequestReplyRoute {
        metrics: shared.metrics.request_reply(&name),
        name,
        broker_name: rr.broker.clone(),
        publisher,
        encoder: Encoder { target, cloudevents: None, headers: rr.headers.iter().filter_map(header).collect() },
        names: NameRules { allowed: Vec::new() },
        reply_topic,
        timeout: rr.timeout.unwrap_or(config.server.request_timeout).0,
        reply_headers: rr.reply_headers.iter().filter_map(header).collect(),
        pending: Arc::new(tokio::sync::Semaphore::new(rr.max_pending)),
        tracer: shared.tracer.clone(),
    }
}

fn publish_route(
    name: Arc<str>,
    p: &PublishConfig,
    brokers: &BTreeMap<String, Broker>,
    config: &Config,
    shared: &Shared,
) -> PublishRoute {
    let template = |s: &str| Template::parse(s).expect("validated template");
    let target = match config.brokers[&p.broker].kind {
        BrokerKind::Kafka => Target::Kafka {
            topic: template(p.topic.as_deref().unwrap_or_default()),
            key: p.key.as_deref().map(template),
        },
        BrokerKind::Amqp => Target::Amqp {
            exchange: p.exchange.clone().unwrap_or_default(),
            routing_key: template(p.routing_key.as_deref().unwrap_or_default()),
            persistent: p.persistent,
        },
        BrokerKind::Sqs => Target::Sqs {
            queue: p.queue.clone().unwrap_or_default(),
            group: template(p.message_group_id.as_deref().unwrap_or("{route}")),
            dedup: p.deduplication_id.as_deref().map(template),
        },
    };
    let cloudevents = (p.format == PublishFormat::Cloudevents).then(|| CloudEvents {
        ce_type: template(p.ce_type.as_deref().unwrap_or("{route}")),
        ce_source: template(p.ce_source.as_deref().unwrap_or("/sluice")),
    });
    let headers = p.headers.iter().filter_map(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok());
    let allowed = match config.brokers[&p.broker].kind {
        BrokerKind::Kafka => p.allowed_topics.clone(),
        BrokerKind::Amqp => p.allowed_routing_keys.clone(),
        BrokerKind::Sqs => Vec::new(),
    };
    let publisher = brokers[&p.broker].publisher.clone();
    let source = match (&p.backlog_queue, &p.backlog_group) {
        (Some(queue), _) => Some(BacklogSource::Queue(queue.clone())),
        (None, Some(group)) => {
            Some(BacklogSource::Group { group: group.clone(), topic: p.topic.clone().unwrap_or_default() })
        }
        (None, None) => None,
    };
    let backlog = p
        .max_backlog
        .zip(source)
        .map(|(max, source)| Backlog::start(&name, publisher.clone(), source, max, shared.metrics.backlog(&name)));
    PublishRoute {
        backlog,
        metrics: shared.metrics.publish(&name, &p.broker),
        name,
        broker_name: p.broker.clone(),
        publisher,
        encoder: Encoder { target, cloudevents, headers: headers.collect() },
        names: NameRules { allowed },
        ack: match p.ack {
            AckMode::Confirm => Ack::Confirm,
            AckMode::None => Ack::None,
        },
        tracer: shared.tracer.clone(),
        api: p.api,
    }
}

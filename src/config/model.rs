//! The serde model of `routes.toml`: one struct per table, unknown keys rejected, defaults as named functions.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::units::{Dur, Percent, Size};

/// The whole configuration file, after environment overrides.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Config {
    /// Listeners, limits and timeouts of the gateway itself.
    pub server: ServerConfig,
    /// Logging, tracing and metrics.
    pub telemetry: TelemetryConfig,
    /// Where state shared by several replicas lives (idempotency keys, rate-limit buckets).
    pub store: StoreConfig,
    /// Named groups of HTTP endpoints that `forward` routes send to.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Named message brokers that `publish` routes send to.
    pub brokers: BTreeMap<String, BrokerConfig>,
    /// Routes in file order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// Queue → HTTP deliveries.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Brokers that are present but failed to parse.
    #[serde(skip)]
    pub broken_brokers: std::collections::BTreeSet<String>,
    /// Upstreams that are present but failed to parse (their own errors are reported; references to them are not
    /// reported again).
    #[serde(skip)]
    pub broken_upstreams: std::collections::BTreeSet<String>,
    /// Route keys that are present but were left out because their value is bad, as (route index, key): their own
    /// errors are reported, so `validate` does not report them again as missing.
    #[serde(skip)]
    pub broken_route_keys: std::collections::BTreeSet<(usize, String)>,
}

/// `[store]`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (each process its own) or `redis` (shared by every replica).
    #[serde(default)]
    pub kind: StoreKind,
    /// redis: the environment variable holding the Redis URL (`redis://host:6379/0`).
    #[serde(default)]
    pub url_env: Option<String>,
    /// redis: when Redis does not answer, let requests through (`fail_open`) or answer 503 (`fail_closed`).
    #[serde(default)]
    pub on_error: OnStoreError,
}

/// `store.kind`
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In the process: each replica has its own keys and buckets.
    #[default]
    Memory,
    /// In Redis, shared by every replica.
    Redis,
}

/// `store.on_error`
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Serve without the shared check (no idempotency, no rate limit) while Redis does not answer.
    #[default]
    FailOpen,
    /// Answer 503 while Redis does not answer.
    FailClosed,
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the public listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/healthz /readyz /metrics /routes).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Largest accepted request body; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    /// Default route timeout (covers every attempt, until the response headers arrive).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// After SIGTERM, how long the gateway keeps accepting and serving while `/readyz` already says not ready, so
    /// that load balancers stop sending before the listener closes (Kubernetes: a few seconds). 0: close at once.
    #[serde(default)]
    pub drain_delay: Dur,
    /// HTTPS on the public listener (HTTP/2 chosen by ALPN); plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Time a client has to send a request's headers, from its first byte (from the connection's start for the
    /// first request); a slower connection is closed (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// A kept-alive connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Most client connections open at once; beyond it new connections wait in the listen backlog until one
    /// closes (read at start-up).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and headers) read from a client; a larger one is answered 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Size,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` / `Forwarded` is believed when deciding `{client_ip}`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `server.tls = { cert = "...", key = "..." }`: PEM files, read again on every reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// Certificate chain (PEM), the server's own certificate first.
    pub cert: std::path::PathBuf,
    /// Its private key (PEM: PKCS#8, RSA or EC).
    pub key: std::path::PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_max_body() -> Size {
    Size::mib(1)
}
fn default_request_timeout() -> Dur {
    Dur::secs(30)
}
fn default_shutdown_grace() -> Dur {
    Dur::secs(30)
}
fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_idle_timeout() -> Dur {
    Dur::secs(60)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> Size {
    Size::kib(64)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            max_body: default_max_body(),
            request_timeout: default_request_timeout(),
            shutdown_grace: default_shutdown_grace(),
            drain_delay: Dur::default(),
            tls: None,
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[telemetry]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (default) or `text`.
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for traces (`http://` or `https://` URL); no export when absent.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Service name reported in traces.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// One structured line per request (default true; benchmarks turn it off).
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Parent-based sampling ratio of new traces, 0.0 to 1.0: a request whose `traceparent` carries a sampling
    /// decision keeps it; a trace that starts here is sampled with this probability.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

fn default_log_format() -> LogFormat {
    LogFormat::Json
}
fn default_service_name() -> String {
    "sluice".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_sample_ratio() -> f64 {
    1.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: default_log_format(),
            otlp_endpoint: None,
            service_name: default_service_name(),
            access_log: true,
            sample_ratio: default_sample_ratio(),
        }
    }
}

/// `[upstreams.NAME]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` URLs; DNS names are re-resolved every `resolve_interval`.
    pub endpoints: Vec<String>,
    /// How often DNS names are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Dur,
    /// Load-balancing policy.
    #[serde(default)]
    pub balance: Balance,
    /// Template whose value picks the endpoint when `balance = "hash"`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// TCP connect timeout per attempt.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// In-flight requests beyond this are shed with 503.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Speak HTTP/2 to the endpoints (h2c; ALPN `h2` over TLS).
    #[serde(default)]
    pub http2: bool,
    /// `https://` endpoints: trust the roots in this PEM file instead of the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// `https://` endpoints: the name sent as SNI and required in their certificate, when it differs from the
    /// endpoint's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Passive ejection of failing endpoints.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Optional active health checks.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

fn default_resolve_interval() -> Dur {
    Dur::secs(10)
}
fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_max_concurrent() -> usize {
    1024
}

/// Load-balancing policy of an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two random choices, fewest outstanding requests.
    #[default]
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Rendezvous hashing of `hash_key`.
    Hash,
}

/// `[upstreams.NAME.outlier]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Base ejection time; doubles on each repeated ejection, capped at 10x.
    #[serde(default = "default_ejection_time")]
    pub ejection_time: Dur,
    /// Never eject more than this share of the endpoints.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: Percent,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_ejection_time() -> Dur {
    Dur::secs(30)
}
fn default_max_ejected_percent() -> Percent {
    Percent(50.0)
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive_failures(),
            ejection_time: default_ejection_time(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}

/// `[upstreams.NAME.health_check]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested with GET; any 2xx is healthy.
    pub path: String,
    /// Time between checks of one endpoint.
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    /// Time allowed for one check.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    /// Failed checks in a row that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that mark it healthy again.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

fn default_hc_interval() -> Dur {
    Dur::secs(5)
}
fn default_hc_timeout() -> Dur {
    Dur::secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}

/// One `[[routes]]` entry.
///
/// `name` and `match` are required, yet default here so that a route without them still gets every other check:
/// `validate` reports an empty name, and a default `match` has neither `path` nor `path_prefix`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Position in the file (for messages, also when earlier routes failed to parse); set by the loader.
    #[serde(skip)]
    pub index: usize,
    /// Unique name, used in metrics, logs and problem responses.
    #[serde(default)]
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// Synchronous forwarding to an upstream.
    #[serde(default)]
    pub forward: Option<ForwardConfig>,
    /// Asynchronous publishing to a broker.
    #[serde(default)]
    pub publish: Option<PublishConfig>,
    /// Request-reply over a broker: publish the request, answer with the reply.
    #[serde(default)]
    pub request_reply: Option<RequestReplyConfig>,
    /// Retry policy (forward only).
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Fault injection (forward only).
    #[serde(default)]
    pub fault: Option<FaultConfig>,
    /// Token-bucket rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Cross-origin resource sharing; preflights are answered by the gateway.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Inbound webhook signature verification (`401` on mismatch).
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// Authentication: API keys or JWT bearer tokens.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// `auth = { ... }`: exactly one of `api_keys_env` and `jwt`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Name of the environment variable holding the accepted API keys, comma-separated (two keys while rotating).
    #[serde(default)]
    pub api_keys_env: Option<String>,
    /// Header that carries the API key (default `x-api-key`; API keys only).
    #[serde(default)]
    pub header: Option<String>,
    /// JWT bearer tokens (`Authorization: Bearer <token>`).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// `auth.jwt = { ... }`: where the verification keys come from (exactly one of `secret_env` and `jwks_file`) and
/// which claims a token must carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Name of the environment variable holding the HMAC secret (HS256, HS384, HS512).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A JWKS file (RS256…, PS256…, ES256, ES384, EdDSA), read at start and at every reload; keys picked by `kid`.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Required `iss` claim, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required member of the `aud` claim, when set (a token without it gets 403).
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_jwt_leeway")]
    pub leeway: Dur,
    /// Scopes the token must grant (`scope` space-separated string or `scp` array); 403 when one is missing.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

fn default_jwt_leeway() -> Dur {
    Dur::secs(60)
}

/// `verify = { ... }`: the request must carry a valid webhook signature over its raw body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Whose signature format: `github`, `stripe`, `standard` (Standard Webhooks / Svix) or `hmac` (generic).
    pub scheme: VerifyScheme,
    /// Environment variable holding the secret; a comma-separated list allows rotation (any one matches).
    pub secret_env: String,
    /// stripe, standard: how far the signed timestamp may be from now, either way (default `5m`).
    #[serde(default)]
    pub tolerance: Option<Dur>,
    /// hmac: the header carrying the signature (required for hmac).
    #[serde(default)]
    pub header: Option<String>,
    /// hmac: text before the signature in the header (e.g. `sha256=`), stripped before decoding.
    #[serde(default)]
    pub prefix: Option<String>,
    /// hmac: how the signature is written (default `hex`).
    #[serde(default)]
    pub encoding: Option<SignatureEncoding>,
    /// hmac: the hash of the HMAC (default `sha256`).
    #[serde(default)]
    pub algorithm: Option<HmacAlgorithm>,
}

/// Webhook signature formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyScheme {
    /// `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex>`, HMAC-SHA256 of `{t}.{body}`.
    Stripe,
    /// Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`, HMAC-SHA256
    /// of `{id}.{timestamp}.{body}` with the base64-decoded `whsec_` secret.
    Standard,
    /// Any HMAC of the body in a header of choice.
    Hmac,
}

/// How a generic HMAC signature is written in its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Standard base64, padding optional.
    Base64,
}

/// The hash function of a generic HMAC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA1 (legacy senders only).
    Sha1,
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// `cors = { ... }` (tower-http's `CorsLayer`)
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call the route (`https://app.example.com`), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows; the route's `match.methods` when absent, `["*"]` for any.
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight allows, or `["*"]` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<Dur>,
    /// Allow cookies and `Authorization` (not with a `*` in any list).
    #[serde(default)]
    pub allow_credentials: bool,
}

/// `match = { ... }`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact path, `{name}` segments captured.
    #[serde(default)]
    pub path: Option<String>,
    /// Segment-aware path prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Allowed methods; all when absent.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Exact host or `*.example.com`.
    #[serde(default)]
    pub host: Option<String>,
    /// Exact header values that must be present.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `forward = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Name of an `[upstreams.NAME]` table.
    pub upstream: String,
    /// Replaces the matched `path_prefix`.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    /// Overall timeout (all attempts); `server.request_timeout` when absent.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// `retry = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt; 0 disables.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Timeout of one attempt.
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// Outcome classes that are retried.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Base of the exponential backoff.
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
    /// Cap of the backoff.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
    /// Retries may be at most this share of recent requests (plus 10/s).
    #[serde(default = "default_budget_percent")]
    pub budget_percent: Percent,
}

fn default_max_retries() -> u32 {
    1
}
fn default_retry_on() -> Vec<String> {
    vec!["connect-failure".to_owned()]
}
fn default_backoff() -> Dur {
    Dur::ms(25)
}
fn default_max_backoff() -> Dur {
    Dur::ms(250)
}
fn default_budget_percent() -> Percent {
    Percent(20.0)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: default_max_retries(),
            per_try_timeout: None,
            on: default_retry_on(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            budget_percent: default_budget_percent(),
        }
    }
}

/// `fault = { ... }`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Delay added to a share of requests.
    #[serde(default)]
    pub delay: Option<Dur>,
    /// Share of requests delayed.
    #[serde(default)]
    pub delay_percent: Option<Percent>,
    /// Status returned to aborted requests.
    #[serde(default)]
    pub abort_status: Option<u16>,
    /// Share of requests aborted.
    #[serde(default)]
    pub abort_percent: Option<Percent>,
}

/// `rate_limit = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate of each bucket.
    pub per_second: f64,
    /// Bucket size; `per_second` when absent.
    #[serde(default)]
    pub burst: Option<f64>,
    /// Template: one bucket per distinct value; one bucket per route when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// Most buckets (distinct keys) remembered; the least recently used are forgotten beyond it.
    #[serde(default = "default_rate_limit_max_keys")]
    pub max_keys: usize,
}

fn default_rate_limit_max_keys() -> usize {
    100_000
}

/// `[brokers.NAME]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `amqp` (RabbitMQ), `kafka` or `sqs`.
    pub kind: BrokerKind,
    /// amqp: connection URL (may hold credentials: prefer `url_env`).
    #[serde(default)]
    pub url: Option<String>,
    /// amqp: name of the environment variable holding the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The roots a TLS connection to the broker is verified against: for `amqps://`, these and the system's; for
    /// Kafka's `security.protocol` SSL / SASL_SSL, librdkafka's `ssl.ca.location`. PEM.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// amqp: how long to wait for a publisher confirm.
    #[serde(default = "default_broker_timeout")]
    pub confirm_timeout: Dur,
    /// kafka: bootstrap servers, `host:port[,host:port]`.
    #[serde(default)]
    pub bootstrap: Option<String>,
    /// kafka: how long librdkafka may try to deliver (`message.timeout.ms`).
    #[serde(default = "default_broker_timeout")]
    pub delivery_timeout: Dur,
    /// kafka: librdkafka properties passed as-is (they win over Sluice's).
    #[serde(default)]
    pub options: BTreeMap<String, serde_json::Value>,
    /// kafka: librdkafka properties whose values are read from environment variables (property → variable), for
    /// secrets such as `sasl.password`.
    #[serde(default)]
    pub options_env: BTreeMap<String, String>,
    /// A durable local spool for messages while the broker is unreachable.
    #[serde(default)]
    pub spool: Option<SpoolConfig>,
    /// sqs: the endpoint of an SQS-compatible server (default: AWS's endpoint for `region`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// sqs: the AWS region (default `us-east-1`). Credentials come from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub region: Option<String>,
}

/// `[brokers.NAME.spool]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The directory of the spool's files (created if missing; one broker, one process).
    pub dir: std::path::PathBuf,
    /// Most bytes held; a full spool answers 503.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: Size,
    /// When appended messages are fsync'd: `always` (before each answer, sharing syncs with messages arriving
    /// meanwhile) or `interval:10ms` (at most once per interval; each answer still waits for its sync).
    #[serde(default)]
    pub fsync: FsyncPolicy,
}

fn default_spool_max_bytes() -> Size {
    Size(1 << 30)
}

/// `spool.fsync`: `"always"` or `"interval:DURATION"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FsyncPolicy {
    /// Sync before answering.
    #[default]
    Always,
    /// Sync at most once per interval (group commit).
    Interval(Dur),
}

impl TryFrom<String> for FsyncPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("bad fsync {s:?}: write \"always\" or \"interval:10ms\"");
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            other => {
                let d = other.strip_prefix("interval:").ok_or_else(bad)?;
                let d = humantime::parse_duration(d.trim()).map_err(|_| bad())?;
                if d.is_zero() || d > std::time::Duration::from_secs(1) {
                    return Err(format!("bad fsync {s:?}: the interval must be more than 0 and at most 1s"));
                }
                Ok(FsyncPolicy::Interval(Dur(d)))
            }
        }
    }
}

impl From<FsyncPolicy> for String {
    fn from(p: FsyncPolicy) -> String {
        match p {
            FsyncPolicy::Always => "always".to_owned(),
            FsyncPolicy::Interval(d) => format!("interval:{d}"),
        }
    }
}

fn default_broker_timeout() -> Dur {
    Dur::secs(5)
}

/// Kind of broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// AMQP 0-9-1 (RabbitMQ).
    Amqp,
    /// Apache Kafka.
    Kafka,
    /// Amazon SQS, or an SQS-compatible server (`endpoint`).
    Sqs,
}

/// `[[subscriptions]]`: consume a queue (or topic) and deliver each message to an upstream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Unique name (metrics, logs).
    pub name: String,
    /// Where messages come from.
    pub from: SubscriptionSource,
    /// Where each message is delivered.
    pub to: SubscriptionTarget,
    /// Redelivery of failed deliveries.
    #[serde(default)]
    pub retry: SubscriptionRetry,
    /// Where a message goes when it cannot be delivered; without it, a message is never dropped.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Deliveries in flight at once (AMQP prefetch).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    16
}

/// `from = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSource {
    /// Name of a `[brokers.NAME]` table.
    pub broker: String,
    /// amqp: the queue to consume.
    #[serde(default)]
    pub queue: Option<String>,
    /// kafka: the topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// kafka: the consumer group.
    #[serde(default)]
    pub group: Option<String>,
}

/// `to = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionTarget {
    /// Name of an `[upstreams.NAME]` table.
    pub upstream: String,
    /// Path (and query) each message is sent to.
    pub path: String,
    /// Method.
    #[serde(default = "default_delivery_method")]
    pub method: String,
    /// One delivery attempt's timeout, until the response headers.
    #[serde(default = "default_delivery_timeout")]
    pub timeout: Dur,
}

fn default_delivery_method() -> String {
    "POST".to_owned()
}
fn default_delivery_timeout() -> Dur {
    Dur::secs(5)
}

/// A subscription's `retry = { ... }`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRetry {
    /// Redeliveries after the first attempt before the message is dead-lettered.
    #[serde(default = "default_delivery_retries")]
    pub max_retries: u32,
    /// Base of the exponential backoff (full jitter).
    #[serde(default = "default_delivery_backoff")]
    pub backoff: Dur,
    /// Cap of the backoff (and of an honoured `Retry-After`).
    #[serde(default = "default_delivery_max_backoff")]
    pub max_backoff: Dur,
}

impl Default for SubscriptionRetry {
    fn default() -> Self {
        SubscriptionRetry {
            max_retries: default_delivery_retries(),
            backoff: default_delivery_backoff(),
            max_backoff: default_delivery_max_backoff(),
        }
    }
}

fn default_delivery_retries() -> u32 {
    5
}
fn default_delivery_backoff() -> Dur {
    Dur::ms(100)
}
fn default_delivery_max_backoff() -> Dur {
    Dur::secs(10)
}

/// `dead_letter = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Name of a `[brokers.NAME]` table; the subscription's own broker when absent.
    #[serde(default)]
    pub broker: Option<String>,
    /// amqp: exchange (`""`: the default exchange).
    #[serde(default)]
    pub exchange: Option<String>,
    /// amqp: routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// kafka: topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// sqs: the queue (name or URL).
    #[serde(default)]
    pub queue: Option<String>,
}

/// `request_reply = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestReplyConfig {
    /// Name of a `[brokers.NAME]` table.
    pub broker: String,
    /// amqp: exchange (`""`, the default, is the default exchange: the routing key names the queue).
    #[serde(default)]
    pub exchange: Option<String>,
    /// amqp: routing key template.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// kafka: request topic template.
    #[serde(default)]
    pub topic: Option<String>,
    /// kafka: record key template.
    #[serde(default)]
    pub key: Option<String>,
    /// kafka: the topic replies come back on.
    #[serde(default)]
    pub reply_topic: Option<String>,
    /// sqs: the queue requests go to (name or URL).
    #[serde(default)]
    pub queue: Option<String>,
    /// sqs: the prefix of the reply queue each gateway process creates for itself (`{reply_queue}-{instance}`).
    #[serde(default)]
    pub reply_queue: Option<String>,
    /// Longest wait for the reply (sending the request included), from the start of the action (the body read);
    /// `server.request_timeout` when absent.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Reply headers copied onto the HTTP answer.
    #[serde(default)]
    pub reply_headers: Vec<String>,
    /// Most requests of this route waiting for replies at once; beyond it, `503` with `Retry-After`.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Request headers copied into the request message's metadata.
    #[serde(default)]
    pub headers: Vec<String>,
}

fn default_max_pending() -> usize {
    10_000
}

/// `publish = { ... }`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Name of a `[brokers.NAME]` table.
    pub broker: String,
    /// kafka: topic template.
    #[serde(default)]
    pub topic: Option<String>,
    /// kafka: record key template.
    #[serde(default)]
    pub key: Option<String>,
    /// amqp: exchange (`""` is the default exchange).
    #[serde(default)]
    pub exchange: Option<String>,
    /// amqp: routing key template.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// `confirm` (answer after the broker confirmed) or `none` (at-most-once).
    #[serde(default)]
    pub ack: AckMode,
    /// `raw` (the body as-is) or `cloudevents` (binary-mode CloudEvents attributes).
    #[serde(default)]
    pub format: PublishFormat,
    /// Request headers copied into the message metadata.
    #[serde(default)]
    pub headers: Vec<String>,
    /// amqp: delivery_mode 2 (persistent) when true.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// CloudEvents `type` template (default `{route}`).
    #[serde(default)]
    pub ce_type: Option<String>,
    /// CloudEvents `source` template (default `/sluice`).
    #[serde(default)]
    pub ce_source: Option<String>,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(default = "default_idempotency_window")]
    pub idempotency_window: Dur,
    /// Most keys remembered per route.
    #[serde(default = "default_idempotency_capacity")]
    pub idempotency_capacity: usize,
    /// kafka: globs (`*` = any characters) a rendered topic must match; any valid topic when empty.
    #[serde(default)]
    pub allowed_topics: Vec<String>,
    /// amqp: globs a rendered routing key must match; any routing key when empty.
    #[serde(default)]
    pub allowed_routing_keys: Vec<String>,
    /// Lag-aware admission: `503` (nothing published) while the backlog is above this many messages.
    #[serde(default)]
    pub max_backlog: Option<u64>,
    /// amqp: the queue whose ready messages are the backlog.
    #[serde(default)]
    pub backlog_queue: Option<String>,
    /// kafka: the consumer group whose lag on the route's topic is the backlog.
    #[serde(default)]
    pub backlog_group: Option<String>,
    /// sqs: the queue (its name, or its URL).
    #[serde(default)]
    pub queue: Option<String>,
    /// sqs FIFO queues: the message group (template; default the route's name).
    #[serde(default)]
    pub message_group_id: Option<String>,
    /// sqs FIFO queues: the deduplication id (template; default the `Idempotency-Key`, else the `sluice-id`).
    #[serde(default)]
    pub deduplication_id: Option<String>,
    /// Accept the request (and answer) in the shape of another produce API instead of one message per request:
    /// `strimzi` (Strimzi Kafka Bridge), `confluent-v3` (Confluent REST Proxy v3), `dapr` (Dapr publish and bulk
    /// publish).
    #[serde(default)]
    pub api: Option<PublishApi>,
}

fn default_idempotency_window() -> Dur {
    Dur::secs(24 * 3600)
}
fn default_idempotency_capacity() -> usize {
    100_000
}

/// `publish.api`: the produce API a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishApi {
    /// Strimzi Kafka Bridge: `POST /topics/{topic}` (and `/partitions/{partition}`), `records` → `offsets`.
    #[serde(rename = "strimzi")]
    Strimzi,
    /// Confluent REST Proxy v3: `POST /v3/clusters/{cluster}/topics/{topic}/records`, concatenated records → one
    /// delivery report per record.
    #[serde(rename = "confluent-v3")]
    ConfluentV3,
    /// Dapr: `POST /v1.0/publish/{pubsub}/{topic}` (a CloudEvent, `204`) and
    /// `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}` (`failedEntries`).
    #[serde(rename = "dapr")]
    Dapr,
}

/// When a publish is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the broker confirmed (at-least-once).
    #[default]
    Confirm,
    /// Once handed to the client library (at-most-once).
    None,
}

/// How the request becomes a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishFormat {
    /// Body and metadata as they are.
    #[default]
    Raw,
    /// CloudEvents 1.0 binary mode (structured events pass unchanged).
    Cloudevents,
}

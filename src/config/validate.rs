//! `validate()`: every semantic check of a parsed config, pure, returning all problems at once.

use std::collections::{BTreeMap, HashSet};

use http::StatusCode;

use super::UNSET_VARIABLE;
use super::load::{names, route_label};
use super::model::{
    AuthConfig, Balance, BrokerConfig, BrokerKind, Config, CorsConfig, PublishApi, PublishConfig, PublishFormat,
    RequestReplyConfig, RouteConfig, ServerConfig, StoreConfig, StoreKind, SubscriptionConfig, TelemetryConfig,
    UpstreamConfig, VerifyConfig, VerifyScheme,
};
use crate::router::Matcher;
use crate::template::Template;
use crate::upstream::RetryOn;

/// The outcome of validation: errors refuse the config, warnings are printed.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems that make the config unusable.
    pub errors: Vec<String>,
    /// Suspicious but valid settings (e.g. a shadowed route).
    pub warnings: Vec<String>,
}

/// Checks everything `serde` cannot: references, ranges, templates, route shadowing.
pub fn validate(config: &Config) -> Report {
    let mut report = Report::default();
    let errors = &mut report.errors;
    check_server(&config.server, errors);
    check_telemetry(&config.telemetry, errors);
    check_store(&config.store, errors);
    for (name, upstream) in &config.upstreams {
        check_upstream(name, upstream, errors);
    }
    for (name, broker) in &config.brokers {
        check_broker(name, broker, errors);
    }
    let mut spool_dirs = BTreeMap::new();
    for (name, spool) in config.brokers.iter().filter_map(|(n, b)| Some((n, b.spool.as_ref()?))) {
        if let Some(other) = spool_dirs.insert(spool.dir.clone(), name) {
            errors.push(format!("brokers.{name}.spool: dir is also the spool of broker {other:?}; give each its own"));
        }
    }
    let mut seen = HashSet::new();
    let mut compiled: Vec<(String, Option<Matcher>)> = Vec::new();
    for route in &config.routes {
        let label = route_label(route.index, Some(route.name.as_str()).filter(|n| !n.is_empty()));
        let broken = |key: &str| config.broken_route_keys.contains(&(route.index, key.to_owned()));
        if route.name.is_empty() {
            if !broken("name") {
                errors.push(format!("{label}: name is required (a non-empty string)"));
            }
        } else if !seen.insert(route.name.as_str()) {
            errors.push(format!("{label}: name {:?} is used by an earlier route", route.name));
        }
        let matcher = match Matcher::compile(&route.matcher) {
            Ok(m) => Some(m),
            // A `match` that failed to parse has its own errors; its default would only add confusing ones.
            Err(_) if broken("match") => None,
            Err(es) => {
                errors.extend(es.into_iter().map(|e| format!("{label}: {e}")));
                None
            }
        };
        check_route(&label, route, matcher.as_ref(), config, errors);
        check_destination(&label, route, config, errors, &mut report.warnings);
        compiled.push((label, matcher));
    }
    let mut names = HashSet::new();
    for (index, s) in config.subscriptions.iter().enumerate() {
        let label = super::load::subscription_label(index, Some(s.name.as_str()).filter(|n| !n.is_empty()));
        if s.name.is_empty() {
            errors.push(format!("{label}: name is required (a non-empty string)"));
        } else if !names.insert(s.name.as_str()) {
            errors.push(format!("{label}: name {:?} is used by an earlier subscription", s.name));
        }
        check_subscription(&label, s, config, errors);
    }
    for (i, (label, later)) in compiled.iter().enumerate() {
        let Some(later) = later else { continue };
        if let Some((earlier, _)) = compiled[..i].iter().find(|(_, m)| m.as_ref().is_some_and(|m| m.covers(later))) {
            report.warnings.push(format!("{label}: never matches, every request it takes is taken by {earlier} first"));
        }
    }
    report
}

/// hyper's smallest read buffer: a request head limit below it cannot be enforced.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

fn check_server(s: &ServerConfig, errors: &mut Vec<String>) {
    let (main, admin) = (s.listen, s.admin_listen);
    let same_ip = main.ip() == admin.ip() || main.ip().is_unspecified() || admin.ip().is_unspecified();
    if main.port() != 0 && main.port() == admin.port() && same_ip {
        errors.push(format!(
            "server: admin_listen {admin} takes the same address as listen {main}; give the admin listener a port of its own"
        ));
    }
    for (key, d) in [("header_read_timeout", s.header_read_timeout), ("idle_timeout", s.idle_timeout)] {
        if d.0.is_zero() {
            errors.push(format!("server: {key} must be more than 0"));
        }
    }
    if s.max_connections == 0 {
        errors.push("server: max_connections must be at least 1".to_owned());
    }
    if s.max_header_bytes.0 < MIN_HEADER_BYTES {
        errors.push(format!("server: max_header_bytes must be at least 8KiB, not {} bytes", s.max_header_bytes.0));
    }
    if s.max_header_bytes.0 > u64::from(u32::MAX) {
        errors.push("server: max_header_bytes must be less than 4GiB".to_owned());
    }
    for p in &s.trusted_proxies {
        if crate::forwarded::parse_proxy(p).is_none() {
            errors.push(format!(
                "server: trusted_proxies: {p:?} is not a CIDR or an IP address (e.g. \"10.0.0.0/8\", \"127.0.0.1\")"
            ));
        }
    }
}

fn check_telemetry(t: &TelemetryConfig, errors: &mut Vec<String>) {
    if let Some(endpoint) = &t.otlp_endpoint {
        let valid = endpoint
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
        if !valid {
            errors.push(format!(
                "telemetry: otlp_endpoint {:?} must be an http:// or https:// URL with a host, \
                 e.g. \"http://127.0.0.1:4317\"",
                crate::redact::url(endpoint)
            ));
        }
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errors.push(format!("telemetry: sample_ratio must be between 0.0 and 1.0, not {}", t.sample_ratio));
    }
}

fn check_upstream(name: &str, u: &UpstreamConfig, errors: &mut Vec<String>) {
    let at = format!("upstreams.{name}");
    if u.endpoints.is_empty() {
        errors.push(format!("{at}: endpoints must list at least one URL"));
    }
    for e in &u.endpoints {
        let shown = crate::redact::url(e);
        if shown != *e {
            errors.push(format!(
                "{at}: endpoints: {shown:?} holds credentials (user:password@), which Sluice does not send to \
                 upstreams and would show in logs; remove them from the URL"
            ));
        } else if let Err(why) = crate::upstream::Endpoint::parse_url(e) {
            errors.push(format!("{at}: endpoints: {shown:?} {why}"));
        }
    }
    match (&u.balance, &u.hash_key) {
        (Balance::Hash, None) => errors.push(format!("{at}: balance = \"hash\" needs hash_key")),
        (Balance::Hash, Some(k)) => {
            if let Err(e) = Template::parse(k) {
                errors.push(format!("{at}: hash_key: {e}"));
            }
        }
        (_, Some(_)) => errors.push(format!("{at}: hash_key is only used with balance = \"hash\"")),
        (_, None) => {}
    }
    let https = u.endpoints.iter().any(|e| e.starts_with("https://"));
    for (key, set) in [("ca_file", u.ca_file.is_some()), ("tls_server_name", u.tls_server_name.is_some())] {
        if set && !https {
            errors.push(format!("{at}: {key} is only used with https:// endpoints"));
        }
    }
    if let Some(name) = &u.tls_server_name
        && let Err(why) = crate::tls::server_name(Some(name), "")
    {
        errors.push(format!("{at}: tls_server_name {why}"));
    }
    if u.max_concurrent == 0 {
        errors.push(format!("{at}: max_concurrent must be at least 1"));
    }
    if u.connect_timeout.0.is_zero() {
        errors.push(format!("{at}: connect_timeout must be more than 0"));
    }
    if u.resolve_interval.0.is_zero() {
        errors.push(format!("{at}: resolve_interval must be more than 0"));
    }
    if u.outlier.consecutive_failures == 0 {
        errors.push(format!("{at}.outlier: consecutive_failures must be at least 1"));
    }
    if !u.outlier.max_ejected_percent.in_range() {
        errors.push(format!("{at}.outlier: max_ejected_percent must be between 0 and 100"));
    }
    if u.outlier.ejection_time.0.is_zero() {
        errors.push(format!("{at}.outlier: ejection_time must be more than 0"));
    }
    if let Some(hc) = &u.health_check {
        if !hc.path.starts_with('/') {
            errors.push(format!("{at}.health_check: path {:?} must start with '/'", hc.path));
        }
        if hc.unhealthy_threshold == 0 || hc.healthy_threshold == 0 {
            errors.push(format!("{at}.health_check: thresholds must be at least 1"));
        }
        if hc.interval.0.is_zero() || hc.timeout.0.is_zero() {
            errors.push(format!("{at}.health_check: interval and timeout must be more than 0"));
        }
    }
}

fn check_cors(label: &str, c: &CorsConfig, errors: &mut Vec<String>) {
    let star = |list: &[String]| list.iter().any(|v| v == "*");
    if c.allow_origins.is_empty() {
        errors.push(format!("{label}: cors.allow_origins must list at least one origin (or \"*\")"));
    }
    for o in c.allow_origins.iter().filter(|o| *o != "*") {
        let ok = o.parse::<http::Uri>().is_ok_and(|u| u.scheme().is_some() && u.host().is_some() && u.path() == "/");
        if !ok || o.ends_with('/') {
            errors
                .push(format!("{label}: cors.allow_origins: {o:?} is not an origin like \"https://app.example.com\""));
        }
    }
    for m in c.allow_methods.iter().flatten().filter(|m| *m != "*") {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            errors.push(format!("{label}: cors.allow_methods: {m:?} is not a method"));
        }
    }
    for (key, list) in [("allow_headers", &c.allow_headers), ("expose_headers", &c.expose_headers)] {
        for h in list.iter().filter(|h| *h != "*") {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errors.push(format!("{label}: cors.{key}: {h:?} is not a header name"));
            }
        }
    }
    let wildcard = star(&c.allow_origins)
        || c.allow_methods.as_deref().is_some_and(star)
        || star(&c.allow_headers)
        || star(&c.expose_headers);
    if c.allow_credentials && wildcard {
        errors.push(format!(
            "{label}: cors.allow_credentials = true cannot be combined with \"*\" (browsers refuse it): list the values"
        ));
    }
}

fn check_verify(label: &str, v: &VerifyConfig, errors: &mut Vec<String>) {
    let name = match v.scheme {
        VerifyScheme::Github => "github",
        VerifyScheme::Stripe => "stripe",
        VerifyScheme::Standard => "standard",
        VerifyScheme::Hmac => "hmac",
    };
    let timed = matches!(v.scheme, VerifyScheme::Stripe | VerifyScheme::Standard);
    let hmac = v.scheme == VerifyScheme::Hmac;
    for (key, set, applies, to) in [
        ("tolerance", v.tolerance.is_some(), timed, "\"stripe\" and \"standard\""),
        ("header", v.header.is_some(), hmac, "\"hmac\""),
        ("prefix", v.prefix.is_some(), hmac, "\"hmac\""),
        ("encoding", v.encoding.is_some(), hmac, "\"hmac\""),
        ("algorithm", v.algorithm.is_some(), hmac, "\"hmac\""),
    ] {
        if set && !applies {
            errors.push(format!("{label}: verify.{key} applies to scheme {to} only, not \"{name}\""));
        }
    }
    if hmac {
        match &v.header {
            None => errors.push(format!("{label}: verify.header is required for scheme = \"hmac\"")),
            Some(h) if http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() => {
                errors.push(format!("{label}: verify.header: {h:?} is not a header name"))
            }
            Some(_) => {}
        }
    }
    if v.tolerance.is_some_and(|t| t.0.is_zero()) {
        errors.push(format!("{label}: verify.tolerance must be more than 0"));
    }
    if v.secret_env.trim().is_empty() {
        errors.push(format!("{label}: verify.secret_env must name an environment variable"));
    } else if let Err(e) = crate::policy::verify::secrets_from_env(v.scheme, &v.secret_env) {
        // A route must not run without its secret: unset at start or reload refuses the config.
        errors.push(format!("{label}: verify.{e}"));
    }
}

fn check_route(label: &str, r: &RouteConfig, matcher: Option<&Matcher>, config: &Config, errors: &mut Vec<String>) {
    let params: Vec<&str> = matcher.map(|m| m.param_names()).unwrap_or_default();
    // Claims exist only past JWT auth (an `auth` that failed to parse has its own errors).
    let has_jwt = r.auth.as_ref().is_some_and(|a| a.jwt.is_some())
        || config.broken_route_keys.contains(&(r.index, "auth".to_owned()));
    let check_template = |key: &str, source: &str, errors: &mut Vec<String>| match Template::parse(source) {
        Err(e) => errors.push(format!("{label}: {key}: {e}")),
        Ok(t) => {
            for p in t.path_params() {
                if matcher.is_some() && !params.contains(&p) {
                    errors.push(format!("{label}: {key} refers to {{path.{p}}} but match.path has no {{{p}}} segment"));
                }
            }
            if let Some(c) = t.jwt_claims().next().filter(|_| !has_jwt) {
                errors.push(format!("{label}: {key} refers to {{jwt.{c}}} but the route has no JWT auth (auth.jwt)"));
            }
        }
    };
    // Written keys, also those left out because their value is bad (reported already).
    let written = |key: &str, set: bool| set || config.broken_route_keys.contains(&(r.index, key.to_owned()));
    let actions = [
        written("forward", r.forward.is_some()),
        written("publish", r.publish.is_some()),
        written("request_reply", r.request_reply.is_some()),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        errors.push(format!("{label}: needs exactly one action: forward, publish or request_reply"));
    }
    if let Some(rl) = &r.rate_limit {
        if !(rl.per_second > 0.0 && rl.per_second.is_finite()) {
            errors.push(format!("{label}: rate_limit.per_second must be more than 0"));
        }
        if rl.burst.is_some_and(|b| !(b >= 1.0 && b.is_finite())) {
            errors.push(format!("{label}: rate_limit.burst must be at least 1"));
        }
        if let Some(k) = &rl.key {
            check_template("rate_limit.key", k, errors);
        }
        if rl.max_keys == 0 {
            errors.push(format!("{label}: rate_limit.max_keys must be at least 1"));
        }
    }
    if let Some(c) = &r.cors {
        check_cors(label, c, errors);
    }
    if let Some(v) = &r.verify {
        check_verify(label, v, errors);
    }
    if let Some(a) = &r.auth {
        check_auth(label, a, errors);
    }
    if let Some(rr) = &r.request_reply {
        check_request_reply(label, rr, config, &check_template, errors);
    }
    if r.publish.is_some() || r.request_reply.is_some() {
        if let Some(p) = &r.publish {
            check_publish(label, p, config, &check_template, errors);
        }
        for (key, set) in [("retry", r.retry.is_some()), ("fault", r.fault.is_some())] {
            if written(key, set) {
                errors.push(format!("{label}: {key} applies to forward routes only"));
            }
        }
    }
    let Some(forward) = &r.forward else { return };
    match config.upstreams.get(&forward.upstream) {
        None if config.broken_upstreams.contains(&forward.upstream) => {}
        None => errors.push(format!(
            "{label}: forward.upstream {:?} is not defined ({})",
            forward.upstream,
            if config.upstreams.is_empty() {
                "no upstreams are defined".to_owned()
            } else {
                format!("upstreams: {}", names(&config.upstreams))
            }
        )),
        Some(u) => {
            if let Some(k) = &u.hash_key {
                check_template(&format!("upstreams.{}.hash_key", forward.upstream), k, errors);
            }
        }
    }
    if let Some(p) = &forward.rewrite_prefix {
        if r.matcher.path_prefix.is_none() {
            errors.push(format!("{label}: forward.rewrite_prefix needs match.path_prefix"));
        }
        if !p.starts_with('/') {
            errors.push(format!("{label}: forward.rewrite_prefix {p:?} must start with '/'"));
        }
    }
    if forward.timeout.is_some_and(|t| t.0.is_zero()) {
        errors.push(format!("{label}: forward.timeout must be more than 0"));
    }
    if let Some(retry) = &r.retry {
        for on in &retry.on {
            if let Err(e) = on.parse::<RetryOn>() {
                errors.push(format!("{label}: retry.on: {e}"));
            }
        }
        if retry.max_backoff < retry.backoff {
            errors.push(format!("{label}: retry.max_backoff must not be less than retry.backoff"));
        }
        if !retry.budget_percent.in_range() {
            errors.push(format!("{label}: retry.budget_percent must be between 0 and 100"));
        }
        if retry.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
            errors.push(format!("{label}: retry.per_try_timeout must be more than 0"));
        }
    }
    if let Some(f) = &r.fault {
        for (key, pct) in [("delay_percent", f.delay_percent), ("abort_percent", f.abort_percent)] {
            if pct.is_some_and(|p| !p.in_range()) {
                errors.push(format!("{label}: fault.{key} must be between 0 and 100"));
            }
        }
        if f.delay.is_some() != f.delay_percent.is_some() {
            errors.push(format!("{label}: fault.delay and fault.delay_percent go together"));
        }
        if f.abort_status.is_some() != f.abort_percent.is_some() {
            errors.push(format!("{label}: fault.abort_status and fault.abort_percent go together"));
        }
        if let Some(s) = f.abort_status
            && (!(200..=599).contains(&s) || StatusCode::from_u16(s).is_err())
        {
            errors.push(format!("{label}: fault.abort_status {s} must be an HTTP status from 200 to 599"));
        }
    }
}

fn check_auth(label: &str, a: &AuthConfig, errors: &mut Vec<String>) {
    let Some(jwt) = (match (&a.api_keys_env, &a.jwt) {
        (Some(_), None) => None,
        (None, Some(jwt)) => Some(jwt),
        _ => {
            errors.push(format!("{label}: auth needs exactly one of api_keys_env and jwt"));
            return;
        }
    }) else {
        return check_auth_keys(label, a, errors);
    };
    let before = errors.len();
    if a.header.is_some() {
        errors.push(format!("{label}: auth.header is for api_keys_env (a JWT comes in Authorization: Bearer)"));
    }
    if jwt.secret_env.is_some() == jwt.jwks_file.is_some() {
        errors.push(format!("{label}: auth.jwt needs exactly one of secret_env and jwks_file"));
    }
    for (key, value) in [("issuer", &jwt.issuer), ("audience", &jwt.audience)] {
        if value.as_deref().is_some_and(str::is_empty) {
            errors.push(format!("{label}: auth.jwt.{key} must not be empty"));
        }
    }
    // RFC 6749 §3.3 scope-token: also what makes `scope="…"` in WWW-Authenticate safe.
    let scope_char = |c: char| c == '\x21' || ('\x23'..='\x5b').contains(&c) || ('\x5d'..='\x7e').contains(&c);
    for s in &jwt.required_scopes {
        if s.is_empty() || !s.chars().all(scope_char) {
            errors.push(format!(
                "{label}: auth.jwt.required_scopes: {s:?} is not a scope (printable ASCII without spaces, '\"' or '\\')"
            ));
        }
    }
    if errors.len() == before {
        check_auth_keys(label, a, errors);
    }
}

/// Loads the keys the way the gateway does at start and reload: an unset variable or a missing or broken JWKS file
/// is an error (the route must not run open).
fn check_auth_keys(label: &str, a: &AuthConfig, errors: &mut Vec<String>) {
    if let Err(e) = crate::policy::Auth::compile(a, std::sync::Arc::from(""), false) {
        errors.push(format!("{label}: {e}"));
    }
}

/// The topic or routing key a publish route renders: a literal name must be valid (and allowed), literal text in a
/// template must be able to appear in a name, allow-list patterns must be able to match; a name a client chooses
/// without an allow-list is a warning.
fn check_destination(
    label: &str,
    r: &RouteConfig,
    config: &Config,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    use crate::publish::destination::{MAX_ROUTING_KEY_LEN, MAX_TOPIC_LEN, glob_matches, is_topic_byte, topic_problem};
    let Some(p) = &r.publish else { return };
    let Some(kind) = config.brokers.get(&p.broker).map(|b| b.kind).filter(|k| *k != BrokerKind::Sqs) else { return };
    let (key, source, list_key, list, noun) = match kind {
        BrokerKind::Kafka => ("topic", &p.topic, "allowed_topics", &p.allowed_topics, "topic"),
        BrokerKind::Amqp | BrokerKind::Sqs => {
            ("routing_key", &p.routing_key, "allowed_routing_keys", &p.allowed_routing_keys, "routing key")
        }
    };
    let (other_key, other, other_kind, this_kind) = match kind {
        BrokerKind::Kafka => ("allowed_routing_keys", &p.allowed_routing_keys, "amqp", "kafka"),
        BrokerKind::Amqp | BrokerKind::Sqs => ("allowed_topics", &p.allowed_topics, "kafka", "amqp"),
    };
    if !other.is_empty() {
        errors.push(format!(
            "{label}: publish.{other_key} is for {other_kind} brokers; {:?} is {this_kind} (use publish.{list_key})",
            p.broker
        ));
    }
    for pattern in list {
        let never = match kind {
            BrokerKind::Kafka => pattern.is_empty() || !pattern.bytes().all(|b| is_topic_byte(b) || b == b'*'),
            BrokerKind::Amqp | BrokerKind::Sqs => pattern.len() > MAX_ROUTING_KEY_LEN,
        };
        if never {
            errors.push(format!("{label}: publish.{list_key}: {pattern:?} can never match a {noun}"));
        }
    }
    let Some(template) = source.as_deref().and_then(|s| Template::parse(s).ok()) else { return };
    let source = template.source();
    if let Some(name) = template.as_literal() {
        let problem = match kind {
            BrokerKind::Kafka if !name.is_empty() => topic_problem(name),
            BrokerKind::Amqp if name.len() > MAX_ROUTING_KEY_LEN => Some("it is longer than 255 bytes"),
            _ => None,
        };
        if let Some(why) = problem {
            errors.push(format!("{label}: publish.{key} {name:?} is not a valid {noun}: {why}"));
        } else if !list.is_empty() && !list.iter().any(|p| glob_matches(p, name)) {
            errors.push(format!("{label}: publish.{key} {name:?} matches none of publish.{list_key}"));
        }
        return;
    }
    let literal_len: usize = template.literals().map(str::len).sum();
    match kind {
        BrokerKind::Sqs => {}
        BrokerKind::Kafka => {
            if let Some(bad) = template.literals().find(|l| !l.bytes().all(is_topic_byte)) {
                errors.push(format!(
                    "{label}: publish.topic {source:?}: its text {bad:?} can never be part of a Kafka topic \
                     (only letters, digits, '.', '_' and '-')"
                ));
            } else if source.starts_with("__") {
                errors.push(format!("{label}: publish.topic {source:?} names Kafka's internal topics (\"__\")"));
            } else if literal_len > MAX_TOPIC_LEN {
                errors.push(format!("{label}: publish.topic {source:?} is longer than 249 characters"));
            }
        }
        BrokerKind::Amqp if literal_len > MAX_ROUTING_KEY_LEN => {
            errors.push(format!("{label}: publish.routing_key {source:?} is longer than 255 bytes"));
        }
        BrokerKind::Amqp => {}
    }
    let inputs = template.client_inputs();
    if !inputs.is_empty() && list.is_empty() {
        warnings.push(format!(
            "{label}: publish.{key} {source:?} is rendered from client input ({}): a client can publish to any {noun} \
             it can name this way; list the allowed ones in publish.{list_key} (globs, e.g. \"orders.*\")",
            inputs.join(", ")
        ));
    }
}

fn check_store(store: &StoreConfig, errors: &mut Vec<String>) {
    match (store.kind, &store.url_env) {
        (StoreKind::Redis, None) => errors.push("store: kind = \"redis\" needs url_env".to_owned()),
        (StoreKind::Redis, Some(var)) if std::env::var_os(var).is_none() => {
            errors.push(format!("store: url_env names {var:?}, {UNSET_VARIABLE}"))
        }
        (StoreKind::Memory, Some(_)) => errors.push("store: url_env is for kind = \"redis\"".to_owned()),
        _ => {}
    }
}

fn check_broker(name: &str, b: &BrokerConfig, errors: &mut Vec<String>) {
    let at = format!("brokers.{name}");
    match b.kind {
        BrokerKind::Amqp => {
            match (&b.url, &b.url_env) {
                (Some(_), Some(_)) => errors.push(format!("{at}: set url or url_env, not both")),
                (None, None) => errors.push(format!("{at}: kind = \"amqp\" needs url or url_env")),
                (Some(u), None) if !u.starts_with("amqp://") && !u.starts_with("amqps://") => {
                    errors.push(format!("{at}: url must start with amqp:// or amqps://"))
                }
                (None, Some(var)) if std::env::var_os(var).is_none() => {
                    errors.push(format!("{at}: url_env names {var:?}, {UNSET_VARIABLE}"))
                }
                _ => {}
            }
            let url = b.url.clone().or_else(|| std::env::var(b.url_env.as_deref()?).ok());
            if b.ca_file.is_some() && url.is_some_and(|u| !u.starts_with("amqps://")) {
                errors.push(format!("{at}: ca_file is for amqps:// (TLS) URLs; this broker's URL is amqp://"));
            }
            for (key, set) in [
                ("bootstrap", b.bootstrap.is_some()),
                ("options", !b.options.is_empty()),
                ("options_env", !b.options_env.is_empty()),
            ] {
                if set {
                    errors.push(format!("{at}: {key} is a kafka key; this broker is amqp"));
                }
            }
        }
        BrokerKind::Sqs => {
            if let Some(endpoint) = &b.endpoint
                && !endpoint.starts_with("http://")
                && !endpoint.starts_with("https://")
            {
                errors.push(format!("{at}: endpoint must start with http:// or https://"));
            }
            for (key, set) in [
                ("url", b.url.is_some()),
                ("url_env", b.url_env.is_some()),
                ("bootstrap", b.bootstrap.is_some()),
                ("ca_file", b.ca_file.is_some()),
                ("options", !b.options.is_empty()),
                ("options_env", !b.options_env.is_empty()),
            ] {
                if set {
                    errors.push(format!("{at}: {key} is not an sqs key"));
                }
            }
        }
        BrokerKind::Kafka => {
            if b.bootstrap.as_deref().is_none_or(str::is_empty) {
                errors.push(format!("{at}: kind = \"kafka\" needs bootstrap"));
            }
            for (key, set) in [("url", b.url.is_some()), ("url_env", b.url_env.is_some())] {
                if set {
                    errors.push(format!("{at}: {key} is an amqp key; this broker is kafka"));
                }
            }
            if b.ca_file.is_some()
                && (b.options.contains_key("ssl.ca.location") || b.options_env.contains_key("ssl.ca.location"))
            {
                errors.push(format!("{at}: ca_file and the option \"ssl.ca.location\" say the same; keep one"));
            }
            for (key, value) in &b.options {
                if value.is_object() || value.is_array() || value.is_null() {
                    errors.push(format!("{at}.options: {key:?} must be a string, number or boolean"));
                }
            }
            for (key, var) in &b.options_env {
                if b.options.contains_key(key) {
                    errors.push(format!("{at}: {key:?} is set in both options and options_env; keep one"));
                }
                if std::env::var_os(var).is_none() {
                    errors.push(format!("{at}.options_env: {key:?} names {var:?}, {UNSET_VARIABLE}"));
                }
            }
        }
    }
    if let Some(spool) = &b.spool {
        if spool.dir.as_os_str().is_empty() {
            errors.push(format!("{at}.spool: dir must not be empty"));
        }
        if spool.max_bytes.0 < 64 * 1024 {
            errors.push(format!("{at}.spool: max_bytes must be at least 64KiB"));
        }
    }
    if b.kind != BrokerKind::Sqs {
        for (key, set) in [("endpoint", b.endpoint.is_some()), ("region", b.region.is_some())] {
            if set {
                errors.push(format!("{at}: {key} is an sqs key"));
            }
        }
    }
    for (key, d) in [("confirm_timeout", b.confirm_timeout), ("delivery_timeout", b.delivery_timeout)] {
        if d.0.is_zero() {
            errors.push(format!("{at}: {key} must be more than 0"));
        }
    }
}

/// The kind of broker `name` that `{action}.broker` names; `None` (and an error unless the broker's own table was
/// broken) when there is no such broker.
fn broker_kind(label: &str, action: &str, name: &str, config: &Config, errors: &mut Vec<String>) -> Option<BrokerKind> {
    match config.brokers.get(name) {
        Some(b) => Some(b.kind),
        None if config.broken_brokers.contains(name) => None,
        None => {
            let known = if config.brokers.is_empty() {
                "no brokers are defined".to_owned()
            } else {
                format!("brokers: {}", names(&config.brokers))
            };
            errors.push(format!("{label}: {action}.broker {name:?} is not defined ({known})"));
            None
        }
    }
}

fn check_subscription(label: &str, s: &SubscriptionConfig, config: &Config, errors: &mut Vec<String>) {
    match broker_kind(label, "from", &s.from.broker, config, errors) {
        Some(BrokerKind::Sqs) => {
            if s.from.queue.as_deref().is_none_or(str::is_empty) {
                errors.push(format!("{label}: from.queue is required for sqs broker {:?}", s.from.broker));
            }
            for (key, set) in [("topic", s.from.topic.is_some()), ("group", s.from.group.is_some())] {
                if set {
                    errors.push(format!("{label}: from.{key} is for kafka brokers; {:?} is sqs", s.from.broker));
                }
            }
        }
        Some(BrokerKind::Kafka) => {
            for (key, set) in [("topic", s.from.topic.is_some()), ("group", s.from.group.is_some())] {
                if !set {
                    errors.push(format!("{label}: from.{key} is required for kafka broker {:?}", s.from.broker));
                }
            }
            if let Some(why) = s.from.topic.as_deref().and_then(crate::publish::destination::topic_problem) {
                errors.push(format!("{label}: from.topic is not a valid Kafka topic: {why}"));
            }
            if s.from.queue.is_some() {
                errors.push(format!("{label}: from.queue is for amqp brokers; {:?} is kafka", s.from.broker));
            }
        }
        Some(BrokerKind::Amqp) => {
            if s.from.queue.as_deref().is_none_or(str::is_empty) {
                errors.push(format!("{label}: from.queue is required for amqp broker {:?}", s.from.broker));
            }
            for (key, set) in [("topic", s.from.topic.is_some()), ("group", s.from.group.is_some())] {
                if set {
                    errors.push(format!("{label}: from.{key} is for kafka brokers; {:?} is amqp", s.from.broker));
                }
            }
        }
        None => {}
    }
    if !config.upstreams.contains_key(&s.to.upstream) && !config.broken_upstreams.contains(&s.to.upstream) {
        errors.push(format!("{label}: to.upstream {:?} is not defined", s.to.upstream));
    }
    if !s.to.path.starts_with('/') || s.to.path.parse::<http::uri::PathAndQuery>().is_err() {
        errors.push(format!("{label}: to.path must be a path starting with /"));
    }
    if s.to.method.parse::<http::Method>().is_err() {
        errors.push(format!("{label}: to.method {:?} is not an HTTP method", s.to.method));
    }
    if s.to.timeout.0.is_zero() {
        errors.push(format!("{label}: to.timeout must be more than 0"));
    }
    if s.retry.backoff.0.is_zero() || s.retry.max_backoff < s.retry.backoff {
        errors.push(format!("{label}: retry.backoff must be more than 0 and at most retry.max_backoff"));
    }
    if !(1..=usize::from(u16::MAX)).contains(&s.concurrency) {
        errors.push(format!("{label}: concurrency must be from 1 to 65535"));
    }
    let Some(dl) = &s.dead_letter else { return };
    let broker = dl.broker.as_deref().unwrap_or(&s.from.broker);
    if dl.queue.is_some() && config.brokers.get(broker).is_some_and(|b| b.kind != BrokerKind::Sqs) {
        errors.push(format!("{label}: dead_letter.queue is for sqs brokers"));
    }
    match broker_kind(label, "dead_letter", broker, config, errors) {
        Some(BrokerKind::Sqs) => {
            if dl.queue.as_deref().is_none_or(str::is_empty) {
                errors.push(format!("{label}: dead_letter.queue is required for sqs broker {broker:?}"));
            }
            for (key, set) in [
                ("topic", dl.topic.is_some()),
                ("exchange", dl.exchange.is_some()),
                ("routing_key", dl.routing_key.is_some()),
            ] {
                if set {
                    errors.push(format!("{label}: dead_letter.{key} is not for sqs broker {broker:?}"));
                }
            }
        }
        Some(BrokerKind::Amqp) => {
            if dl.routing_key.is_none() {
                errors.push(format!("{label}: dead_letter.routing_key is required for amqp broker {broker:?}"));
            }
            if dl.topic.is_some() {
                errors.push(format!("{label}: dead_letter.topic is for kafka brokers; {broker:?} is amqp"));
            }
        }
        Some(BrokerKind::Kafka) => {
            match dl.topic.as_deref().map(crate::publish::destination::topic_problem) {
                None => errors.push(format!("{label}: dead_letter.topic is required for kafka broker {broker:?}")),
                Some(Some(why)) => errors.push(format!("{label}: dead_letter.topic is not a valid Kafka topic: {why}")),
                Some(None) => {}
            }
            for (key, set) in [("exchange", dl.exchange.is_some()), ("routing_key", dl.routing_key.is_some())] {
                if set {
                    errors.push(format!("{label}: dead_letter.{key} is for amqp brokers; {broker:?} is kafka"));
                }
            }
        }
        None => {}
    }
}

/// The largest `request_reply.max_pending` (each waiting request holds a little memory; this bounds it).
const MAX_PENDING: usize = 10_000_000;

fn check_request_reply(
    label: &str,
    rr: &RequestReplyConfig,
    config: &Config,
    check_template: &dyn Fn(&str, &str, &mut Vec<String>),
    errors: &mut Vec<String>,
) {
    let kind = broker_kind(label, "request_reply", &rr.broker, config, errors);
    if kind.is_some_and(|k| k != BrokerKind::Sqs) {
        for (key, set) in [("queue", rr.queue.is_some()), ("reply_queue", rr.reply_queue.is_some())] {
            if set {
                errors.push(format!("{label}: request_reply.{key} is for sqs brokers"));
            }
        }
    }
    match kind {
        Some(BrokerKind::Sqs) => {
            for (key, value) in [("queue", &rr.queue), ("reply_queue", &rr.reply_queue)] {
                match value.as_deref() {
                    None | Some("") => {
                        errors.push(format!("{label}: request_reply.{key} is required for sqs broker {:?}", rr.broker))
                    }
                    Some(v) if v.contains('{') => errors.push(format!("{label}: request_reply.{key} is a fixed name")),
                    Some(_) => {}
                }
            }
            for (key, set) in [
                ("topic", rr.topic.is_some()),
                ("reply_topic", rr.reply_topic.is_some()),
                ("exchange", rr.exchange.is_some()),
                ("routing_key", rr.routing_key.is_some()),
            ] {
                if set {
                    errors.push(format!("{label}: request_reply.{key} is not for sqs broker {:?}", rr.broker));
                }
            }
        }
        Some(BrokerKind::Kafka) => {
            for (key, set) in [("topic", rr.topic.is_some()), ("reply_topic", rr.reply_topic.is_some())] {
                if !set {
                    errors.push(format!("{label}: request_reply.{key} is required for kafka broker {:?}", rr.broker));
                }
            }
            if let Some(why) = rr.reply_topic.as_deref().and_then(crate::publish::destination::topic_problem) {
                errors.push(format!("{label}: request_reply.reply_topic is not a valid Kafka topic: {why}"));
            }
            for (key, set) in [("exchange", rr.exchange.is_some()), ("routing_key", rr.routing_key.is_some())] {
                if set {
                    errors.push(format!("{label}: request_reply.{key} is for amqp brokers; {:?} is kafka", rr.broker));
                }
            }
        }
        Some(BrokerKind::Amqp) => {
            if rr.routing_key.is_none() {
                errors.push(format!("{label}: request_reply.routing_key is required for amqp broker {:?}", rr.broker));
            }
            for (key, set) in
                [("topic", rr.topic.is_some()), ("key", rr.key.is_some()), ("reply_topic", rr.reply_topic.is_some())]
            {
                if set {
                    errors.push(format!("{label}: request_reply.{key} is for kafka brokers; {:?} is amqp", rr.broker));
                }
            }
        }
        None => {}
    }
    for (key, t) in [("routing_key", &rr.routing_key), ("topic", &rr.topic), ("key", &rr.key)] {
        if let Some(t) = t {
            check_template(&format!("request_reply.{key}"), t, errors);
        }
    }
    if rr.routing_key.as_deref().is_some_and(|k| k.len() > crate::publish::destination::MAX_ROUTING_KEY_LEN) {
        errors.push(format!("{label}: request_reply.routing_key is longer than an AMQP routing key can be"));
    }
    if rr.timeout.is_some_and(|t| t.0.is_zero()) {
        errors.push(format!("{label}: request_reply.timeout must be more than 0"));
    }
    if !(1..=MAX_PENDING).contains(&rr.max_pending) {
        errors.push(format!("{label}: request_reply.max_pending must be from 1 to {MAX_PENDING}"));
    }
    for (key, list) in [("headers", &rr.headers), ("reply_headers", &rr.reply_headers)] {
        for h in list {
            if http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
                errors.push(format!("{label}: request_reply.{key}: {h:?} is not a header name"));
            }
        }
    }
}

fn check_publish(
    label: &str,
    p: &PublishConfig,
    config: &Config,
    check_template: &dyn Fn(&str, &str, &mut Vec<String>),
    errors: &mut Vec<String>,
) {
    let kind = broker_kind(label, "publish", &p.broker, config, errors);
    if let Some(api) = p.api {
        let name = match api {
            PublishApi::Strimzi => "strimzi",
            PublishApi::ConfluentV3 => "confluent-v3",
            PublishApi::Dapr => "dapr",
        };
        if api != PublishApi::Dapr && kind == Some(BrokerKind::Amqp) {
            errors.push(format!("{label}: publish.api = {name:?} is a Kafka API; {:?} is amqp", p.broker));
        }
        if p.format != PublishFormat::Raw {
            errors.push(format!("{label}: publish.api = {name:?} makes its own messages; leave publish.format out"));
        }
    }
    match kind {
        Some(BrokerKind::Kafka) => {
            if p.topic.is_none() {
                errors.push(format!("{label}: publish.topic is required for kafka broker {:?}", p.broker));
            }
            for (key, set) in [("exchange", p.exchange.is_some()), ("routing_key", p.routing_key.is_some())] {
                if set {
                    errors.push(format!(
                        "{label}: publish.{key} is for amqp brokers; {:?} is kafka (use topic)",
                        p.broker
                    ));
                }
            }
        }
        Some(BrokerKind::Amqp) => {
            if p.exchange.is_none() || p.routing_key.is_none() {
                errors.push(format!(
                    "{label}: publish.exchange and publish.routing_key are required for amqp broker {:?}",
                    p.broker
                ));
            }
            for (key, set) in [("topic", p.topic.is_some()), ("key", p.key.is_some())] {
                if set {
                    errors.push(format!("{label}: publish.{key} is for kafka brokers; {:?} is amqp", p.broker));
                }
            }
        }
        Some(BrokerKind::Sqs) => {
            match p.queue.as_deref() {
                None | Some("") => {
                    errors.push(format!("{label}: publish.queue is required for sqs broker {:?}", p.broker))
                }
                Some(q) if q.contains('{') => {
                    errors.push(format!("{label}: publish.queue must be a queue name or URL (no template)"))
                }
                Some(_) => {}
            }
            for (key, set) in [
                ("topic", p.topic.is_some()),
                ("key", p.key.is_some()),
                ("exchange", p.exchange.is_some()),
                ("routing_key", p.routing_key.is_some()),
                ("api", p.api.is_some()),
                ("max_backlog", p.max_backlog.is_some()),
            ] {
                if set {
                    errors.push(format!("{label}: publish.{key} is not for sqs broker {:?}", p.broker));
                }
            }
        }
        None => {}
    }
    if kind.is_some_and(|k| k != BrokerKind::Sqs) {
        for (key, set) in [
            ("queue", p.queue.is_some()),
            ("message_group_id", p.message_group_id.is_some()),
            ("deduplication_id", p.deduplication_id.is_some()),
        ] {
            if set {
                errors.push(format!("{label}: publish.{key} is for sqs brokers"));
            }
        }
    }
    for (key, t) in [
        ("topic", &p.topic),
        ("key", &p.key),
        ("message_group_id", &p.message_group_id),
        ("deduplication_id", &p.deduplication_id),
        ("routing_key", &p.routing_key),
        ("ce_type", &p.ce_type),
        ("ce_source", &p.ce_source),
    ] {
        if let Some(t) = t {
            check_template(&format!("publish.{key}"), t, errors);
        }
    }
    if p.topic.as_deref().is_some_and(str::is_empty) {
        errors.push(format!("{label}: publish.topic must not be empty"));
    }
    if p.format != PublishFormat::Cloudevents && (p.ce_type.is_some() || p.ce_source.is_some()) {
        errors.push(format!("{label}: publish.ce_type and ce_source need format = \"cloudevents\""));
    }
    for h in &p.headers {
        if http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
            errors.push(format!("{label}: publish.headers: {h:?} is not a header name"));
        }
    }
    if p.idempotency_capacity == 0 {
        errors.push(format!("{label}: publish.idempotency_capacity must be at least 1"));
    }
    if p.idempotency_window.0.is_zero() {
        errors.push(format!("{label}: publish.idempotency_window must be more than 0"));
    }
    check_backlog(label, p, kind, errors);
}

/// `max_backlog` needs its source: `backlog_queue` (amqp) or `backlog_group` on a literal topic (kafka).
fn check_backlog(label: &str, p: &PublishConfig, kind: Option<BrokerKind>, errors: &mut Vec<String>) {
    let (queue, group) = (p.backlog_queue.is_some(), p.backlog_group.is_some());
    if p.max_backlog.is_none() {
        for (key, set) in [("backlog_queue", queue), ("backlog_group", group)] {
            if set {
                errors.push(format!("{label}: publish.{key} is only read with publish.max_backlog"));
            }
        }
        return;
    }
    match kind {
        Some(BrokerKind::Amqp) if !queue => {
            errors.push(format!("{label}: publish.max_backlog needs publish.backlog_queue (the queue to watch)"))
        }
        Some(BrokerKind::Kafka) if !group => {
            errors.push(format!("{label}: publish.max_backlog needs publish.backlog_group (the consumer group)"))
        }
        Some(BrokerKind::Kafka) if p.topic.as_deref().is_some_and(|t| t.contains('{')) => errors.push(format!(
            "{label}: publish.backlog_group needs a literal publish.topic (the lag is measured on one topic)"
        )),
        _ => {}
    }
    match kind {
        Some(BrokerKind::Amqp) if group => {
            errors.push(format!("{label}: publish.backlog_group is for kafka brokers; use backlog_queue"))
        }
        Some(BrokerKind::Kafka) if queue => {
            errors.push(format!("{label}: publish.backlog_queue is for amqp brokers; use backlog_group"))
        }
        _ => {}
    }
}

//! Reads `routes.toml` plus `SLUICE__…` environment overrides (through the `config` crate) and deserializes it
//! entry by entry, so that one bad route does not hide the problems of the others.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::{Config, RouteConfig};

/// Top-level tables that `routes.toml` may contain.
const TOP_LEVEL: &[&str] = &["server", "telemetry", "upstreams", "brokers", "routes"];

/// Reads the file at `path` and applies environment overrides (`SLUICE__SERVER__LISTEN=…`).
pub fn read_value(path: &Path) -> Result<Value, String> {
    if !path.is_file() {
        return Err(format!("{}: no such config file", path.display()));
    }
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(config::Environment::with_prefix("SLUICE").separator("__").try_parsing(true))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Deserializes the whole tree, collecting one message per broken entry instead of stopping at the first.
pub fn from_value(root: Value) -> (Config, Vec<String>) {
    let mut errors = Vec::new();
    let mut config = Config::default();
    let Value::Object(map) = root else {
        errors.push("the configuration must be a table".to_owned());
        return (config, errors);
    };
    for key in map.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
        errors.push(format!("unknown top-level key `{key}`, expected one of {}", TOP_LEVEL.join(", ")));
    }
    if let Some(v) = map.get("server")
        && let Some(s) = typed(v, "server", &mut errors)
    {
        config.server = s;
    }
    if let Some(v) = map.get("telemetry")
        && let Some(t) = typed(v, "telemetry", &mut errors)
    {
        config.telemetry = t;
    }
    for (name, v) in table(map.get("upstreams"), "upstreams", &mut errors) {
        match typed(v, &format!("upstreams.{name}"), &mut errors) {
            Some(u) => drop(config.upstreams.insert(name.clone(), u)),
            None => drop(config.broken_upstreams.insert(name.clone())),
        }
    }
    for (name, v) in table(map.get("brokers"), "brokers", &mut errors) {
        match typed(v, &format!("brokers.{name}"), &mut errors) {
            Some(b) => drop(config.brokers.insert(name.clone(), b)),
            None => drop(config.broken_brokers.insert(name.clone())),
        }
    }
    match map.get("routes") {
        None => {}
        Some(Value::Array(routes)) => {
            for (i, v) in routes.iter().enumerate() {
                if let Some(r) = route(i, v, &mut errors) {
                    config.routes.push(r);
                }
            }
        }
        Some(_) => errors.push("routes: must be an array of tables ([[routes]])".to_owned()),
    }
    (config, errors)
}

/// Label of a route in messages: `routes[2] "orders-api"`.
pub fn route_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("routes[{index}] {n:?}"),
        None => format!("routes[{index}]"),
    }
}

/// A route's keys, each kept raw so each can be checked on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<Value>,
    #[serde(rename = "match")]
    matcher: Option<Value>,
    forward: Option<Value>,
    publish: Option<Value>,
    retry: Option<Value>,
    fault: Option<Value>,
    rate_limit: Option<Value>,
}

fn route(index: usize, v: &Value, errors: &mut Vec<String>) -> Option<RouteConfig> {
    let name = v.get("name").and_then(Value::as_str);
    let label = route_label(index, name);
    let raw: RawRoute = typed(v, &label, errors)?;
    let before = errors.len();
    let name = match raw.name {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => {
            errors.push(format!("{label}: name must be a non-empty string"));
            String::new()
        }
        None => {
            errors.push(format!("{label}: name is required"));
            String::new()
        }
    };
    let matcher = match &raw.matcher {
        Some(m) => typed(m, &format!("{label}: match"), errors),
        None => {
            errors.push(format!("{label}: match is required"));
            None
        }
    };
    let route = RouteConfig {
        index,
        name,
        matcher: matcher.unwrap_or_default(),
        forward: section(&raw.forward, &label, "forward", errors),
        publish: section(&raw.publish, &label, "publish", errors),
        retry: section(&raw.retry, &label, "retry", errors),
        fault: section(&raw.fault, &label, "fault", errors),
        rate_limit: section(&raw.rate_limit, &label, "rate_limit", errors),
    };
    (errors.len() == before).then_some(route)
}

fn section<T: DeserializeOwned>(v: &Option<Value>, label: &str, key: &str, errors: &mut Vec<String>) -> Option<T> {
    v.as_ref().and_then(|v| typed(v, &format!("{label}: {key}"), errors))
}

fn table<'a>(v: Option<&'a Value>, key: &str, errors: &mut Vec<String>) -> Vec<(&'a String, &'a Value)> {
    match v {
        None => Vec::new(),
        Some(Value::Object(m)) => m.iter().collect(),
        Some(_) => {
            errors.push(format!("{key}: must be a table"));
            Vec::new()
        }
    }
}

/// Deserializes `v`, recording `"{at}: {serde message}"` on failure.
fn typed<T: DeserializeOwned>(v: &Value, at: &str, errors: &mut Vec<String>) -> Option<T> {
    T::deserialize(v).map_err(|e| errors.push(format!("{at}: {e}"))).ok()
}

/// Turns `BTreeMap` keys into a sorted list for messages.
pub fn names<V>(m: &BTreeMap<String, V>) -> String {
    m.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
}

//! Reads `routes.toml` plus `SLUICE__…` environment overrides (through the `config` crate) and deserializes it
//! table by table and key by key, so that one bad key does not hide the problems of the others.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::keys;
use super::model::{Config, RouteConfig, SubscriptionConfig};

/// Top-level tables that `routes.toml` may contain.
const TOP_LEVEL: &[&str] = &["server", "telemetry", "store", "upstreams", "brokers", "routes", "subscriptions"];

/// The list keys an environment override may set, as comma-separated values (`SLUICE__SERVER__TRUSTED_PROXIES=
/// 10.0.0.0/8,192.168.0.0/16`, `SLUICE__UPSTREAMS__ORDERS__ENDPOINTS=http://a:80,http://b:80`): the last segment of
/// the variable's name.
const LIST_KEYS: [&str; 2] = ["TRUSTED_PROXIES", "ENDPOINTS"];

/// Reads the file at `path` and applies environment overrides (`SLUICE__SERVER__LISTEN=…`; lists comma-separated,
/// see [`LIST_KEYS`]).
pub fn read_value(path: &Path) -> Result<Value, String> {
    if !path.is_file() {
        return Err(format!("{}: no such config file", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    refuse_path_keys(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // Environment overrides' names are path expressions too (see `refuse_path_keys`).
    if let Some(odd) = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .find(|name| name.starts_with("SLUICE__") && !plain_key(name))
    {
        return Err(format!(
            "environment variable {odd:?}: an override's name may hold only letters, digits, `_` and `-`"
        ));
    }
    let mut env = config::Environment::with_prefix("SLUICE").separator("__").try_parsing(true);
    // The config crate splits only the keys named here once a separator is set (every value, if none is named).
    let lists: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("SLUICE__") && LIST_KEYS.iter().any(|k| name.ends_with(&format!("__{k}"))))
        .map(|name| name["SLUICE__".len()..].replace("__", ".").to_lowercase())
        .collect();
    if !lists.is_empty() {
        env = env.list_separator(",");
        for key in &lists {
            env = env.with_list_parse_key(key);
        }
    }
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses `routes.toml` text without environment overrides (the fuzz targets' way in; `read_value` reads files).
pub fn read_str(toml: &str) -> Result<Value, String> {
    refuse_path_keys(toml)?;
    config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| e.to_string())
}

/// Refuses a top-level key the config crate would read as a path expression. It parses each top-level key of a file
/// as one (`a.b`, `a[3]`), and `"x[99999999999]" = 1` makes it grow an array to that length: the process aborts for
/// want of memory (found by fuzzing `read_str`), which a hot reload must never do. No key Sluice knows has anything
/// but letters, digits, `_` and `-`, so a key with other characters is an error before the config crate sees the
/// text. A file that is not valid TOML is left to the config crate, whose message names the line.
fn refuse_path_keys(text: &str) -> Result<(), String> {
    let Ok(table) = toml::de::DeTable::parse(text) else { return Ok(()) };
    let odd: Vec<String> = table
        .get_ref()
        .keys()
        .map(|k| k.get_ref().to_string())
        .filter(|k| !plain_key(k))
        .map(|k| format!("{k:?}"))
        .collect();
    match odd.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "unknown top-level key {}, expected one of {} (a quoted top-level key may not contain `.`, `[` or `]`)",
            odd.join(", "),
            TOP_LEVEL.join(", ")
        )),
    }
}

/// Whether `key` holds only letters, digits, `_` and `-`: nothing the config crate reads as a path expression.
fn plain_key(key: &str) -> bool {
    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Deserializes the whole tree, collecting every unknown key and bad value instead of stopping at the first: each
/// table is parsed key by key ([`keys::parse`]), and what is fine in it still takes effect so `validate` can check it.
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
        && let Some(s) = keys::parse(v, "server", &mut errors).value
    {
        config.server = s;
    }
    if let Some(v) = map.get("telemetry")
        && let Some(t) = keys::parse(v, "telemetry", &mut errors).value
    {
        config.telemetry = t;
    }
    if let Some(v) = map.get("store")
        && let Some(s) = keys::parse(v, "store", &mut errors).value
    {
        config.store = s;
    }
    for (name, v) in table(map.get("upstreams"), "upstreams", &mut errors) {
        match keys::parse(v, &format!("upstreams.{name}"), &mut errors).value {
            Some(u) => drop(config.upstreams.insert(name.clone(), u)),
            None => drop(config.broken_upstreams.insert(name.clone())),
        }
    }
    for (name, v) in table(map.get("brokers"), "brokers", &mut errors) {
        match keys::parse(v, &format!("brokers.{name}"), &mut errors).value {
            Some(b) => drop(config.brokers.insert(name.clone(), b)),
            None => drop(config.broken_brokers.insert(name.clone())),
        }
    }
    match map.get("routes") {
        None => {}
        Some(Value::Array(routes)) => {
            for (index, v) in routes.iter().enumerate() {
                let label = route_label(index, v.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()));
                let parsed = keys::parse::<RouteConfig>(v, &label, &mut errors);
                if let Some(route) = parsed.value {
                    config.routes.push(RouteConfig { index, ..route });
                    config.broken_route_keys.extend(parsed.dropped.into_iter().map(|key| (index, key)));
                }
            }
        }
        Some(_) => errors.push("routes: must be an array of tables ([[routes]])".to_owned()),
    }
    match map.get("subscriptions") {
        None => {}
        Some(Value::Array(subscriptions)) => {
            for (index, v) in subscriptions.iter().enumerate() {
                let label = subscription_label(index, v.get("name").and_then(Value::as_str));
                if let Some(s) = keys::parse::<SubscriptionConfig>(v, &label, &mut errors).value {
                    config.subscriptions.push(s);
                }
            }
        }
        Some(_) => errors.push("subscriptions: must be an array of tables ([[subscriptions]])".to_owned()),
    }
    (config, errors)
}

/// Label of a subscription in messages: `subscriptions[0] "deliver-orders"`.
pub fn subscription_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("subscriptions[{index}] {n:?}"),
        None => format!("subscriptions[{index}]"),
    }
}

/// Label of a route in messages: `routes[2] "orders-api"`.
pub fn route_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("routes[{index}] {n:?}"),
        None => format!("routes[{index}]"),
    }
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

/// Turns `BTreeMap` keys into a sorted list for messages.
pub fn names<V>(m: &BTreeMap<String, V>) -> String {
    m.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
}

//! Secrets out of everything Sluice shows (`/routes`, `sluice check` messages): the password in any URL's userinfo
//! (also one containing `@` or `:`), and broker options whose name says they hold a secret. Pure.

use serde_json::Value;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// `url` with the password of its userinfo masked: `amqp://user:secret@host/` → `amqp://user:***@host/`; a
/// userinfo without a password (`https://token@host`) is masked whole. The userinfo ends at the last `@` before
/// the query, so a password containing `@` is masked whole too. Anything else is returned as it is.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let before_query = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..before_query].rfind('@') else { return url.to_owned() };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}"),
        None => format!("{scheme}://{MASK}@{host}"),
    }
}

/// Whether a broker option (a librdkafka or Java client property) holds a secret: `sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, `sasl.jaas.config`, `sasl.oauthbearer.client.secret`,
/// `ssl.key.pem`, …
pub fn is_secret_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "jaas.config", "token", "credentials"].iter().any(|s| n.contains(s))
        || n.ends_with("key")
        || n.ends_with("key.pem")
}

/// Masks every secret in a serialized config: every URL's password, wherever it is, and the values of secret
/// options in `brokers.*.options`.
pub fn config(doc: &mut Value) {
    urls(doc);
    let Some(brokers) = doc.get_mut("brokers").and_then(Value::as_object_mut) else { return };
    for broker in brokers.values_mut() {
        let Some(options) = broker.get_mut("options").and_then(Value::as_object_mut) else { continue };
        for (name, value) in options.iter_mut() {
            if is_secret_option(name) {
                *value = Value::from(MASK);
            }
        }
    }
}

fn urls(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("://") => *s = url(s),
        Value::Array(items) => items.iter_mut().for_each(urls),
        Value::Object(map) => map.values_mut().for_each(urls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn masks_url_passwords_also_with_at_signs() {
        assert_eq!(url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(url("amqp://guest:p@ss:w@rd@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(url("https://token@api.example.com/x"), "https://***@api.example.com/x");
        assert_eq!(url("http://127.0.0.1:9000/a?email=x@y"), "http://127.0.0.1:9000/a?email=x@y");
        assert_eq!(url("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn secret_options_are_recognised_by_name() {
        for secret in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.jaas.config",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_option(secret), "{secret}");
        }
        for plain in ["compression.type", "sasl.username", "ssl.key.location", "security.protocol", "acks"] {
            assert!(!is_secret_option(plain), "{plain}");
        }
    }

    #[test]
    fn masks_a_whole_config_document() {
        let mut doc = json!({
            "telemetry": { "otlp_endpoint": "http://otel:pw@127.0.0.1:4317" },
            "upstreams": { "u": { "endpoints": ["http://a:b@127.0.0.1:1"] } },
            "brokers": {
                "k": { "options": { "sasl.password": "s1", "sasl.jaas.config": "x password=\"s2\"", "acks": "all" },
                       "options_env": { "sasl.password": "KAFKA_PASSWORD" } },
                "r": { "url": "amqp://u:s3@host/%2f" },
            },
        });
        config(&mut doc);
        let text = doc.to_string();
        for secret in ["pw@", "a:b", "s1", "s2", "s3"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(doc["brokers"]["k"]["options"]["acks"], "all");
        assert_eq!(doc["brokers"]["k"]["options_env"]["sasl.password"], "KAFKA_PASSWORD", "variable names stay");
        assert_eq!(doc["brokers"]["r"]["url"], "amqp://u:***@host/%2f");
    }
}

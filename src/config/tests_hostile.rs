//! Unit tests of the checks that keep hostile clients and secrets in bounds: connection limits, client addresses,
//! broker names, credentials in URLs.

use super::*;

fn check(toml: &str) -> Result<Loaded, Vec<String>> {
    let dir = std::env::temp_dir().join(format!("sluice-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routes.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = load(&path);
    std::fs::remove_dir_all(dir).ok();
    loaded
}

fn problems(toml: &str) -> Vec<String> {
    check(toml).expect_err("config should be refused")
}

#[test]
fn connection_limits_have_defaults_and_are_checked() {
    let loaded = check("").unwrap();
    let s = &loaded.config.server;
    assert_eq!(s.header_read_timeout.0, std::time::Duration::from_secs(10));
    assert_eq!(s.idle_timeout.0, std::time::Duration::from_secs(60));
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.max_header_bytes.0, 64 * 1024);
    let p = problems(
        "[server]\nheader_read_timeout = \"0s\"\nidle_timeout = \"0s\"\nmax_connections = 0\nmax_header_bytes = \"1KiB\"\n",
    );
    for key in ["header_read_timeout", "idle_timeout", "max_connections", "max_header_bytes"] {
        assert!(p.iter().any(|l| l.starts_with("server: ") && l.contains(key)), "{key} not reported: {p:#?}");
    }
}

#[test]
fn trusted_proxies_must_be_cidrs_or_addresses() {
    let loaded = check("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\", \"fd00::/8\"]\n").unwrap();
    assert_eq!(loaded.config.server.trusted_proxies.len(), 4);
    let p = problems("[server]\ntrusted_proxies = [\"10.0.0.0/33\", \"proxy.internal\"]\n");
    assert_eq!(p.iter().filter(|l| l.starts_with("server: trusted_proxies:")).count(), 2, "{p:#?}");
}

const BROKERS: &str = r#"
[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[brokers.rabbit]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"
"#;

/// A config with the two brokers and one publish route per `publish` table.
fn publish_routes(publishes: &[&str]) -> String {
    let mut toml = BROKERS.to_owned();
    for (i, p) in publishes.iter().enumerate() {
        toml.push_str(&format!("\n[[routes]]\nname = \"r{i}\"\nmatch = {{ path = \"/r{i}/{{x}}\" }}\npublish = {p}\n"));
    }
    toml
}

#[test]
fn broker_names_that_can_never_be_valid_are_errors() {
    let long_key = "k".repeat(300);
    let p = problems(&publish_routes(&[
        r#"{ broker = "events", topic = "orders/acme" }"#,
        r#"{ broker = "events", topic = "__consumer_offsets" }"#,
        r#"{ broker = "events", topic = "a/{path.x}" }"#,
        &format!(r#"{{ broker = "rabbit", exchange = "x", routing_key = "{long_key}" }}"#),
        r#"{ broker = "events", topic = "orders.{path.x}", allowed_topics = ["orders/*"] }"#,
        r#"{ broker = "events", topic = "billing", allowed_topics = ["orders.*"] }"#,
        r#"{ broker = "rabbit", exchange = "x", routing_key = "k", allowed_topics = ["k"] }"#,
        r#"{ broker = "events", topic = "__{path.x}" }"#,
    ]));
    let expect = [
        ("routes[0] \"r0\": publish.topic \"orders/acme\" is not a valid topic", "letters"),
        ("routes[1] \"r1\": publish.topic \"__consumer_offsets\"", "internal"),
        ("routes[2] \"r2\": publish.topic \"a/{path.x}\"", "can never be part"),
        ("routes[3] \"r3\": publish.routing_key", "255"),
        ("routes[4] \"r4\": publish.allowed_topics: \"orders/*\"", "never match"),
        ("routes[5] \"r5\": publish.topic \"billing\"", "allowed_topics"),
        ("routes[6] \"r6\": publish.allowed_topics is for kafka brokers", "allowed_routing_keys"),
        ("routes[7] \"r7\": publish.topic \"__{path.x}\"", "internal"),
    ];
    for (start, word) in expect {
        assert!(p.iter().any(|l| l.starts_with(start) && l.contains(word)), "no `{start}` … `{word}` in {p:#?}");
    }
}

#[test]
fn destinations_chosen_by_clients_without_an_allow_list_are_warned_about() {
    let loaded = check(&publish_routes(&[
        r#"{ broker = "events", topic = "rt-{path.x}" }"#,
        r#"{ broker = "events", topic = "rt-{path.x}", allowed_topics = ["rt-public.*"] }"#,
        r#"{ broker = "rabbit", exchange = "x", routing_key = "{header.x-event}" }"#,
        r#"{ broker = "events", topic = "{route}.events" }"#,
    ]))
    .unwrap();
    let w = &loaded.warnings;
    assert!(
        w.iter()
            .any(|l| l.starts_with("routes[0] \"r0\": publish.topic \"rt-{path.x}\" is rendered from client input")
                && l.contains("publish.allowed_topics")),
        "{w:#?}"
    );
    assert!(w.iter().any(|l| l.starts_with("routes[2] \"r2\": publish.routing_key")), "{w:#?}");
    assert!(!w.iter().any(|l| l.starts_with("routes[1]") || l.starts_with("routes[3]")), "{w:#?}");
}

#[test]
fn the_admin_listener_needs_an_address_of_its_own() {
    for server in [
        "listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"",
        "listen = \"0.0.0.0:9000\"\nadmin_listen = \"127.0.0.1:9000\"",
    ] {
        let p = problems(&format!("[server]\n{server}\n"));
        assert!(p.iter().any(|l| l.starts_with("server: admin_listen") && l.contains("same address")), "{p:#?}");
    }
    assert!(check("[server]\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9001\"\n").is_ok());
}

#[test]
fn a_top_level_key_the_config_crate_would_read_as_a_huge_index_is_refused_not_allocated() {
    // Found by fuzzing: the config crate read `"x[122222222211]"` as an index and grew an array to that length.
    let found = problems("\"x[122222222211]\" = \"0\"\n[server]\nlisten = \"127.0.0.1:8080\"\n");
    assert!(found.iter().any(|p| p.contains("\"x[122222222211]\"") && p.contains("may not contain")), "{found:?}");
    let found = problems("\"server.listen\" = \"127.0.0.1:1\"\n");
    assert!(found.iter().any(|p| p.contains("\"server.listen\"")), "{found:?}");
    assert!(crate::config::load::read_str("\"a[99999999999]\" = 1").is_err());
    // Quoted dotted keys inside tables are fine (librdkafka option names).
    assert!(crate::config::load::read_str("[brokers.k]\noptions = { \"sasl.password\" = \"x\" }\n").is_ok());
}

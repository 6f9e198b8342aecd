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

//! Routing: method, host and path from the input (split at the first two NUL bytes) against a fixed set of
//! routes with parameters, prefixes, hosts and methods; dot segments are removed first, as the server does.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use sluice::config::MatchConfig;
use sluice::router::{Matcher, Router, remove_dot_segments};

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let configs = [
            serde_json::json!({ "path": "/events/{tenant}/orders/{id}", "methods": ["POST"] }),
            serde_json::json!({ "path": "/users/{id}", "host": "api.example.com" }),
            serde_json::json!({ "path_prefix": "/api/" }),
            serde_json::json!({ "path_prefix": "/", "headers": { "x-canary": "1" } }),
            serde_json::json!({ "path_prefix": "/" }),
        ];
        let matchers = configs
            .into_iter()
            .map(|c| Matcher::compile(&serde_json::from_value::<MatchConfig>(c).unwrap()).unwrap())
            .collect();
        Router::new(matchers)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(method), Some(host), Some(path)) = (parts.next(), parts.next(), parts.next()) else { return };
    let Ok(method) = Method::from_bytes(method) else { return };
    let (Ok(host), Ok(path)) = (std::str::from_utf8(host), std::str::from_utf8(path)) else { return };
    let path = remove_dot_segments(path);
    let _ = router().route(&method, Some(host), &path, &HeaderMap::new());
});

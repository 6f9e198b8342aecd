//! `cors = { … }` compiled into tower-http's `CorsLayer`: simple requests get the `Access-Control-*` headers,
//! preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered here and reach no upstream or broker.

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, Any, CorsLayer, ExposeHeaders};

use crate::config::CorsConfig;

/// The layer for a validated `cors` table; `route_methods` (the route's `match.methods`) are what a preflight
/// allows when `allow_methods` is absent.
pub fn layer(cfg: &CorsConfig, route_methods: Option<&[String]>) -> CorsLayer {
    let star = |list: &[String]| list.iter().any(|v| v == "*");
    let mut layer = CorsLayer::new().allow_credentials(cfg.allow_credentials);
    layer = if star(&cfg.allow_origins) {
        layer.allow_origin(AllowOrigin::any())
    } else {
        layer.allow_origin(cfg.allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect::<Vec<_>>())
    };
    let methods = cfg.allow_methods.as_deref().or(route_methods);
    layer = match methods {
        Some(m) if star(m) => layer.allow_methods(AllowMethods::any()),
        Some(m) => {
            layer.allow_methods(m.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect::<Vec<_>>())
        }
        // A route that takes every method allows what the browser asks for (credentials-safe, unlike `*`).
        None => layer.allow_methods(AllowMethods::mirror_request()),
    };
    layer = if star(&cfg.allow_headers) {
        layer.allow_headers(AllowHeaders::any())
    } else {
        layer.allow_headers(names(&cfg.allow_headers))
    };
    layer = if star(&cfg.expose_headers) {
        layer.expose_headers(ExposeHeaders::from(Any))
    } else {
        layer.expose_headers(names(&cfg.expose_headers))
    };
    if let Some(age) = cfg.max_age {
        layer = layer.max_age(age.0);
    }
    layer
}

fn names(list: &[String]) -> Vec<HeaderName> {
    list.iter().filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()).collect()
}

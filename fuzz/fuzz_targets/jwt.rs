//! JWT bearer tokens (header, claims, signature) against an HS256 `auth` policy with issuer, audience and scopes:
//! any token is a 401/403 or lets the request through, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use sluice::body::Prepared;
use sluice::config::AuthConfig;
use sluice::policy::auth::Auth;
use sluice::policy::guard::Guard;

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        // SAFETY: set once, before any other thread of this process reads the environment.
        unsafe { std::env::set_var("FUZZ_JWT_SECRET", "a-secret-of-at-least-thirty-two-bytes!") };
        let cfg: AuthConfig = serde_json::from_value(serde_json::json!({
            "jwt": { "secret_env": "FUZZ_JWT_SECRET", "issuer": "https://issuer.example", "audience": "sluice",
                     "required_scopes": ["orders:write"] }
        }))
        .unwrap();
        Auth::compile(&cfg, Arc::from("fuzz"), false).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let Ok(value) = HeaderValue::try_from(format!("Bearer {token}")) else { return };
    let mut req = Request::new(Prepared::Buffered(Bytes::new()));
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let _ = auth().check(&mut req);
});

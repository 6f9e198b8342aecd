//! Webhook signature verification (`github`, `stripe`, `standard`, `hmac`): the first byte picks the scheme, then
//! `name: value` header lines up to an empty line, then the body. Any input is refused or accepted, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::config::VerifyConfig;
use sluice::policy::verify::Verify;

fn verifiers() -> &'static [Verify; 4] {
    static VERIFIERS: OnceLock<[Verify; 4]> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        // SAFETY: set once, before any other thread of this process reads the environment.
        unsafe {
            std::env::set_var("FUZZ_SECRET", "It's a Secret to Everybody");
            std::env::set_var("FUZZ_WHSEC", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        }
        let make = |cfg: serde_json::Value| {
            Verify::new(Arc::from("fuzz"), &serde_json::from_value::<VerifyConfig>(cfg).unwrap())
        };
        [
            make(serde_json::json!({ "scheme": "github", "secret_env": "FUZZ_SECRET" })),
            make(serde_json::json!({ "scheme": "stripe", "secret_env": "FUZZ_SECRET" })),
            make(serde_json::json!({ "scheme": "standard", "secret_env": "FUZZ_WHSEC" })),
            make(serde_json::json!({ "scheme": "hmac", "secret_env": "FUZZ_SECRET", "header": "x-signature",
                                     "prefix": "sha1=", "encoding": "base64", "algorithm": "sha1" })),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let verify = &verifiers()[usize::from(which % 4)];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = verify.verify(&headers, body, 1_700_000_000);
});

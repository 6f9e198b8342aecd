//! `verify = {…}`: inbound webhook signatures, checked before anything reads the body. The HMAC is computed over
//! the raw body bytes as received and compared in constant time (`hmac`'s `verify_slice`) with every signature
//! the header carries, for every secret of the route (a comma-separated list in `secret_env` allows rotation).
//!
//! Schemes, as their senders document them:
//! - `github`: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
//! - `stripe`: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 of `{t}.{body}` keyed with the whole
//!   secret (`whsec_…` as text); `t` must be within `tolerance` of now, either way.
//! - `standard` (Standard Webhooks, Svix): `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>
//!   [v1,<base64>…]` (or the same `svix-*` headers), HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the
//!   base64-decoded part of `whsec_<base64>`; the timestamp must be within `tolerance` of now, either way.
//! - `hmac`: the signature in `header`, after `prefix`, `hex` or `base64`, HMAC-`algorithm` of the body.
//!
//! Every failure is the same `401` for the client, whatever failed (a missing header, a malformed one, a stale
//! timestamp, a wrong signature): the log line says which, never the secret.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, Request};

use super::guard::Guard;
use crate::body::Prepared;
use crate::config::{HmacAlgorithm, SignatureEncoding, VerifyConfig, VerifyScheme};
use crate::problem::GatewayError;
use crate::request::request_id;

/// Default `tolerance` of `stripe` and `standard`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Most signatures one header may carry (senders list one per active secret, so a few): each costs an HMAC
/// finalization, and a client must not make a request cost more than that.
const MAX_SIGNATURES: usize = 16;

/// Standard base64 that takes signatures and secrets with or without their `=` padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A route's signature check, compiled from its `verify` table.
#[derive(Debug)]
pub struct Verify {
    route: Arc<str>,
    scheme: Scheme,
    /// HMAC keys; empty only if the variable vanished after validation (then nothing is let through).
    keys: Vec<Vec<u8>>,
}

/// A scheme with its settings.
#[derive(Debug)]
enum Scheme {
    Github,
    Stripe { tolerance: Duration },
    Standard { tolerance: Duration },
    Hmac { header: HeaderName, prefix: String, encoding: SignatureEncoding, algorithm: HmacAlgorithm },
}

/// Why a request's signature was refused (for the log; the client only learns that it was).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A header the scheme needs is absent.
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// A header is present more than once (which one was signed is ambiguous).
    #[error("header {0} is repeated")]
    Repeated(&'static str),
    /// A header is not in the scheme's format.
    #[error("header {0} is malformed: {1}")]
    Malformed(&'static str, &'static str),
    /// The signed timestamp is further from now than the tolerance.
    #[error("timestamp {timestamp} is {skew}s away from now, more than the tolerance of {tolerance}s")]
    Stale {
        /// The signed timestamp (Unix seconds).
        timestamp: i64,
        /// Now minus the timestamp (negative: from the future).
        skew: i64,
        /// The tolerance in seconds.
        tolerance: u64,
    },
    /// The header carries no signature of a version this gateway checks.
    #[error("no {0} signature in the header")]
    NoSignature(&'static str),
    /// No signature matches the body under any of the route's secrets.
    #[error("no signature matches the body (checked {signatures} signature(s) against {secrets} secret(s))")]
    Mismatch {
        /// Signatures in the header.
        signatures: usize,
        /// Secrets of the route.
        secrets: usize,
    },
    /// The body was not buffered (a bug: `verify` routes always buffer it).
    #[error("the body was not buffered")]
    Unbuffered,
}

impl Verify {
    /// Compiles a validated `verify` table, reading the secrets from its variable now. A variable that is unset or
    /// unusable here (validation saw it fine a moment ago) leaves the route with no secret: every request is
    /// refused, and an error is logged.
    pub fn new(route: Arc<str>, cfg: &VerifyConfig) -> Verify {
        let tolerance = cfg.tolerance.map_or(DEFAULT_TOLERANCE, |t| t.0);
        let scheme = match cfg.scheme {
            VerifyScheme::Github => Scheme::Github,
            VerifyScheme::Stripe => Scheme::Stripe { tolerance },
            VerifyScheme::Standard => Scheme::Standard { tolerance },
            VerifyScheme::Hmac => Scheme::Hmac {
                header: cfg
                    .header
                    .as_deref()
                    .and_then(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                    .expect("validated: hmac has a valid header"),
                prefix: cfg.prefix.clone().unwrap_or_default(),
                encoding: cfg.encoding.unwrap_or_default(),
                algorithm: cfg.algorithm.unwrap_or_default(),
            },
        };
        let keys = secrets_from_env(cfg.scheme, &cfg.secret_env).unwrap_or_else(|why| {
            tracing::error!(route = %route, problem = %why, "verify: no usable secret; every request will be refused");
            Vec::new()
        });
        Verify { route, scheme, keys }
    }

    /// Checks the signature of a request with `headers` and raw `body` at Unix time `now`.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Failure> {
        match &self.scheme {
            Scheme::Github => {
                const NAME: &str = "x-hub-signature-256";
                let value = single(headers, NAME)?;
                let hex = value.strip_prefix("sha256=").ok_or(Failure::Malformed(NAME, "no sha256= prefix"))?;
                let signature = hex::decode(hex).map_err(|_| Failure::Malformed(NAME, "not hexadecimal"))?;
                self.matches(HmacAlgorithm::Sha256, &[body], &[signature])
            }
            Scheme::Stripe { tolerance } => {
                let header = parse_stripe(single(headers, "stripe-signature")?)?;
                check_time(header.timestamp, now, *tolerance)?;
                let t = header.timestamp.to_string();
                self.matches(HmacAlgorithm::Sha256, &[t.as_bytes(), b".", body], &header.signatures)
            }
            Scheme::Standard { tolerance } => {
                let id = either(headers, "webhook-id", "svix-id")?;
                let ts = either(headers, "webhook-timestamp", "svix-timestamp")?;
                let signatures = parse_standard(either(headers, "webhook-signature", "svix-signature")?)?;
                let timestamp =
                    parse_timestamp(ts).ok_or(Failure::Malformed("webhook-timestamp", "not Unix seconds"))?;
                check_time(timestamp, now, *tolerance)?;
                let t = timestamp.to_string();
                self.matches(HmacAlgorithm::Sha256, &[id.as_bytes(), b".", t.as_bytes(), b".", body], &signatures)
            }
            Scheme::Hmac { header, prefix, encoding, algorithm } => {
                const NAME: &str = "signature header";
                let mut values = headers.get_all(header).iter();
                let value = match (values.next(), values.next()) {
                    (None, _) => return Err(Failure::Missing(NAME)),
                    (Some(_), Some(_)) => return Err(Failure::Repeated(NAME)),
                    (Some(v), None) => v.to_str().map_err(|_| Failure::Malformed(NAME, "not visible ASCII"))?,
                };
                let encoded = value.strip_prefix(prefix.as_str()).ok_or(Failure::Malformed(NAME, "no prefix"))?;
                let signature = match encoding {
                    SignatureEncoding::Hex => hex::decode(encoded).map_err(|_| Failure::Malformed(NAME, "not hex"))?,
                    SignatureEncoding::Base64 => {
                        BASE64.decode(encoded).map_err(|_| Failure::Malformed(NAME, "not base64"))?
                    }
                };
                self.matches(*algorithm, &[body], &[signature])
            }
        }
    }

    /// Whether one of `signatures` is the HMAC of the concatenated `message` under one of the route's keys, each
    /// comparison in constant time.
    fn matches(&self, algorithm: HmacAlgorithm, message: &[&[u8]], signatures: &[Vec<u8>]) -> Result<(), Failure> {
        let found = self.keys.iter().any(|key| match algorithm {
            HmacAlgorithm::Sha1 => any_matches::<Hmac<sha1::Sha1>>(key, message, signatures),
            HmacAlgorithm::Sha256 => any_matches::<Hmac<sha2::Sha256>>(key, message, signatures),
            HmacAlgorithm::Sha512 => any_matches::<Hmac<sha2::Sha512>>(key, message, signatures),
        });
        if found { Ok(()) } else { Err(Failure::Mismatch { signatures: signatures.len(), secrets: self.keys.len() }) }
    }
}

impl Guard for Verify {
    fn check(&self, req: &mut Request<Prepared>) -> Result<(), GatewayError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let outcome = match req.body().bytes() {
            Some(body) => self.verify(req.headers(), body, now),
            None => Err(Failure::Unbuffered),
        };
        outcome.map_err(|why| {
            tracing::warn!(
                route = %self.route,
                request_id = request_id(req),
                scheme = self.scheme.name(),
                reason = %why,
                "webhook signature refused"
            );
            GatewayError::BadSignature
        })
    }
}

impl Scheme {
    fn name(&self) -> &'static str {
        match self {
            Scheme::Github => "github",
            Scheme::Stripe { .. } => "stripe",
            Scheme::Standard { .. } => "standard",
            Scheme::Hmac { .. } => "hmac",
        }
    }
}

fn any_matches<M: Mac + KeyInit + Clone>(key: &[u8], message: &[&[u8]], signatures: &[Vec<u8>]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else { return false };
    for part in message {
        mac.update(part);
    }
    signatures.iter().any(|s| mac.clone().verify_slice(s).is_ok())
}

/// The one value of header `name`, as text.
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, Failure> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(Failure::Missing(name)),
        (Some(_), Some(_)) => Err(Failure::Repeated(name)),
        (Some(v), None) => v.to_str().map_err(|_| Failure::Malformed(name, "not visible ASCII")),
    }
}

/// Header `name`, else its Svix-branded twin `alias`.
fn either<'h>(headers: &'h HeaderMap, name: &'static str, alias: &'static str) -> Result<&'h str, Failure> {
    match single(headers, name) {
        Err(Failure::Missing(_)) if headers.contains_key(alias) => single(headers, alias),
        other => other,
    }
}

/// Unix seconds written as ASCII digits (no sign, no fraction).
fn parse_timestamp(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn check_time(timestamp: i64, now: i64, tolerance: Duration) -> Result<(), Failure> {
    let skew = now.saturating_sub(timestamp);
    let limit = tolerance.as_secs();
    if skew.unsigned_abs() > limit { Err(Failure::Stale { timestamp, skew, tolerance: limit }) } else { Ok(()) }
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, PartialEq, Eq)]
struct StripeHeader {
    timestamp: i64,
    /// The decoded `v1` signatures (entries that are not hexadecimal cannot match and are left out).
    signatures: Vec<Vec<u8>>,
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]`, items in any order, other items (`v0=`, future schemes) ignored, whitespace
/// around items allowed. Exactly one `t`.
fn parse_stripe(value: &str) -> Result<StripeHeader, Failure> {
    const NAME: &str = "stripe-signature";
    let (mut timestamp, mut signatures, mut v1) = (None, Vec::new(), 0);
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, val)) = item.split_once('=') else { continue };
        match key.trim() {
            "t" if timestamp.is_some() => return Err(Failure::Malformed(NAME, "more than one t")),
            "t" => {
                timestamp = Some(parse_timestamp(val.trim()).ok_or(Failure::Malformed(NAME, "t is not Unix seconds"))?)
            }
            "v1" if v1 == MAX_SIGNATURES => return Err(Failure::Malformed(NAME, "too many signatures")),
            "v1" => {
                v1 += 1;
                signatures.extend(hex::decode(val.trim()).ok());
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Failure::Malformed(NAME, "no t"))?;
    if v1 == 0 {
        return Err(Failure::NoSignature("v1"));
    }
    Ok(StripeHeader { timestamp, signatures })
}

/// `v1,<base64>[ v1,<base64>…]`: space-separated; other versions (`v1a`, future ones) ignored; entries that are not
/// base64 cannot match and are left out.
fn parse_standard(value: &str) -> Result<Vec<Vec<u8>>, Failure> {
    let mut v1 = 0;
    let mut signatures = Vec::new();
    for entry in value.split_ascii_whitespace() {
        if let Some(("v1", sig)) = entry.split_once(',') {
            if v1 == MAX_SIGNATURES {
                return Err(Failure::Malformed("webhook-signature", "too many signatures"));
            }
            v1 += 1;
            signatures.extend(BASE64.decode(sig).ok());
        }
    }
    if v1 == 0 {
        return Err(Failure::NoSignature("v1"));
    }
    Ok(signatures)
}

/// Why a `secret_env` variable cannot serve as the route's secrets (never says the value).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set (or not UTF-8).
    #[error("secret_env names {0:?}, {unset}", unset = crate::config::UNSET_VARIABLE)]
    Unset(String),
    /// The variable holds no secret (empty, or only commas and spaces).
    #[error("secret_env {0:?} is empty")]
    Empty(String),
    /// A `standard` secret that is not `whsec_<base64>`.
    #[error("secret_env {0:?}: secret {1} of the list is not whsec_<base64> (a Standard Webhooks secret)")]
    NotBase64(String, usize),
}

/// The HMAC keys in the environment variable `var` for `scheme` (see [`parse_secrets`]).
pub fn secrets_from_env(scheme: VerifyScheme, var: &str) -> Result<Vec<Vec<u8>>, SecretError> {
    let value = std::env::var(var).map_err(|_| SecretError::Unset(var.to_owned()))?;
    parse_secrets(scheme, var, &value)
}

/// The HMAC keys in `value`, the content of variable `var`: comma-separated secrets (rotation: any may sign), each
/// trimmed, empty ones skipped. A `standard` secret is `whsec_<base64>` (the prefix is optional) and its key is
/// the decoded base64; the other schemes use the secret's bytes as they are.
pub fn parse_secrets(scheme: VerifyScheme, var: &str, value: &str) -> Result<Vec<Vec<u8>>, SecretError> {
    let mut keys = Vec::new();
    for (i, secret) in value.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
        keys.push(match scheme {
            VerifyScheme::Standard => {
                let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
                match BASE64.decode(encoded) {
                    Ok(key) if !key.is_empty() => key,
                    _ => return Err(SecretError::NotBase64(var.to_owned(), i + 1)),
                }
            }
            _ => secret.as_bytes().to_vec(),
        });
    }
    if keys.is_empty() { Err(SecretError::Empty(var.to_owned())) } else { Ok(keys) }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::config::units::Dur;

    const NOW: i64 = 1_700_000_000;

    /// Base64 as Standard Webhooks writes it (padded).
    fn base64_encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn verify(scheme: VerifyScheme, secrets: &str, extra: impl FnOnce(&mut VerifyConfig)) -> Verify {
        let mut cfg = VerifyConfig {
            scheme,
            secret_env: "UNUSED".into(),
            tolerance: None,
            header: None,
            prefix: None,
            encoding: None,
            algorithm: None,
        };
        extra(&mut cfg);
        let mut v = Verify::new("r".into(), &cfg);
        v.keys = parse_secrets(scheme, "UNUSED", secrets).unwrap();
        v
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn hmac256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }

    #[test]
    fn github_accepts_its_documented_example_and_nothing_else() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
        let v = verify(VerifyScheme::Github, "It's a Secret to Everybody", |_| {});
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(v.verify(&headers(&[("x-hub-signature-256", good)]), b"Hello, World!", NOW), Ok(()));
        let upper = good.to_ascii_uppercase().replace("SHA256=", "sha256=");
        assert_eq!(v.verify(&headers(&[("x-hub-signature-256", &upper)]), b"Hello, World!", NOW), Ok(()));
        assert!(matches!(
            v.verify(&headers(&[("x-hub-signature-256", good)]), b"Hello, World?", NOW),
            Err(Failure::Mismatch { .. })
        ));
        assert_eq!(v.verify(&headers(&[]), b"Hello, World!", NOW), Err(Failure::Missing("x-hub-signature-256")));
        let bare = &good["sha256=".len()..];
        assert!(matches!(
            v.verify(&headers(&[("x-hub-signature-256", bare)]), b"Hello, World!", NOW),
            Err(Failure::Malformed(..))
        ));
        assert!(matches!(
            v.verify(&headers(&[("x-hub-signature-256", "sha256=zz")]), b"Hello, World!", NOW),
            Err(Failure::Malformed(..))
        ));
        let twice = headers(&[("x-hub-signature-256", good), ("x-hub-signature-256", good)]);
        assert_eq!(v.verify(&twice, b"Hello, World!", NOW), Err(Failure::Repeated("x-hub-signature-256")));
    }

    #[test]
    fn rotation_lets_any_listed_secret_sign() {
        let v = verify(VerifyScheme::Github, " old-secret , new-secret ,", |_| {});
        assert_eq!(v.keys.len(), 2);
        for key in ["old-secret", "new-secret"] {
            let sig = format!("sha256={}", hex::encode(hmac256(key.as_bytes(), b"{}")));
            assert_eq!(v.verify(&headers(&[("x-hub-signature-256", &sig)]), b"{}", NOW), Ok(()), "{key}");
        }
        let sig = format!("sha256={}", hex::encode(hmac256(b"other", b"{}")));
        assert!(v.verify(&headers(&[("x-hub-signature-256", &sig)]), b"{}", NOW).is_err());
    }

    #[test]
    fn stripe_header_parsing() {
        let h = parse_stripe("t=1492774577,v1=5257a869,v0=6ffbb59b,v1=00ff").unwrap();
        assert_eq!(h.timestamp, 1492774577);
        assert_eq!(h.signatures, vec![vec![0x52, 0x57, 0xa8, 0x69], vec![0x00, 0xff]]);
        // Whitespace around items, any order, a v1 that is not hex left out.
        let h = parse_stripe(" v1=zz , t = 5 ,v1= 0a ").unwrap();
        assert_eq!(h, StripeHeader { timestamp: 5, signatures: vec![vec![0x0a]] });
        assert_eq!(parse_stripe("v1=00").unwrap_err(), Failure::Malformed("stripe-signature", "no t"));
        assert_eq!(parse_stripe("t=1,v0=00").unwrap_err(), Failure::NoSignature("v1"));
        assert!(matches!(parse_stripe("t=1,t=2,v1=00"), Err(Failure::Malformed(_, "more than one t"))));
        let many = |n: usize| format!("t=1{}", ",v1=00".repeat(n));
        assert_eq!(parse_stripe(&many(MAX_SIGNATURES)).unwrap().signatures.len(), MAX_SIGNATURES);
        assert!(matches!(parse_stripe(&many(MAX_SIGNATURES + 1)), Err(Failure::Malformed(_, "too many signatures"))));
        for bad in ["t=-1,v1=00", "t=1.5,v1=00", "t=,v1=00", "t=abc,v1=00"] {
            assert!(matches!(parse_stripe(bad), Err(Failure::Malformed(..))), "{bad}");
        }
    }

    #[test]
    fn stripe_signs_t_dot_body_and_any_v1_may_match_within_tolerance() {
        let secret = "whsec_test_secret";
        let v = verify(VerifyScheme::Stripe, secret, |_| {});
        let body = br#"{"id":"evt_1"}"#;
        let sign = |t: i64| hex::encode(hmac256(secret.as_bytes(), &[format!("{t}.").as_bytes(), body].concat()));
        let ok = format!("t={NOW},v1={},v1={}", "00".repeat(32), sign(NOW));
        assert_eq!(v.verify(&headers(&[("stripe-signature", &ok)]), body, NOW), Ok(()));
        // 5 minutes either way is fine; a second more is not.
        for t in [NOW - 300, NOW + 300] {
            let h = format!("t={t},v1={}", sign(t));
            assert_eq!(v.verify(&headers(&[("stripe-signature", &h)]), body, NOW), Ok(()), "t={t}");
        }
        for t in [NOW - 301, NOW + 301] {
            let h = format!("t={t},v1={}", sign(t));
            assert!(matches!(v.verify(&headers(&[("stripe-signature", &h)]), body, NOW), Err(Failure::Stale { .. })));
        }
        // The signature binds the timestamp.
        let moved = format!("t={},v1={}", NOW + 1, sign(NOW));
        assert!(matches!(
            v.verify(&headers(&[("stripe-signature", &moved)]), body, NOW),
            Err(Failure::Mismatch { signatures: 1, secrets: 1 })
        ));
        let tight = verify(VerifyScheme::Stripe, secret, |c| c.tolerance = Some(Dur::secs(10)));
        let h = format!("t={},v1={}", NOW - 11, sign(NOW - 11));
        assert!(tight.verify(&headers(&[("stripe-signature", &h)]), body, NOW).is_err());
    }

    #[test]
    fn standard_signature_header_parsing() {
        let a = base64_encode(&[1, 2, 3]);
        let b = base64_encode(&[4, 5, 6, 7]);
        // Several entries, extra spaces, other versions ignored, padding optional.
        let parsed = parse_standard(&format!("  v1,{a}   v1a,xyz= v2,{a} v1,{} ", b.trim_end_matches('='))).unwrap();
        assert_eq!(parsed, vec![vec![1, 2, 3], vec![4, 5, 6, 7]]);
        // Bad base64 cannot match and is left out; the other entries still count.
        assert_eq!(parse_standard(&format!("v1,!!notbase64!! v1,{a}")).unwrap(), vec![vec![1, 2, 3]]);
        assert_eq!(parse_standard("v1,!!notbase64!!").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(parse_standard("v1a,abc v2,abc").unwrap_err(), Failure::NoSignature("v1"));
        let many = |n: usize| format!("v1,{a} ").repeat(n);
        assert_eq!(parse_standard(&many(MAX_SIGNATURES)).unwrap().len(), MAX_SIGNATURES);
        assert!(matches!(parse_standard(&many(MAX_SIGNATURES + 1)), Err(Failure::Malformed(_, "too many signatures"))));
        assert_eq!(parse_standard("").unwrap_err(), Failure::NoSignature("v1"));
    }

    #[test]
    fn standard_signs_id_timestamp_body_with_the_decoded_whsec_secret() {
        let key = b"a standard webhooks key";
        let secret = format!("whsec_{}", base64_encode(key));
        let v = verify(VerifyScheme::Standard, &secret, |_| {});
        let body = br#"{"type":"invoice.paid"}"#;
        let sign = |id: &str, t: i64| {
            base64_encode(&hmac256(key, &[format!("{id}.{t}.").as_bytes(), body.as_slice()].concat()))
        };
        let good = |id: &str, t: i64, sig: &str| {
            headers(&[("webhook-id", id), ("webhook-timestamp", &t.to_string()), ("webhook-signature", sig)])
        };
        let sig = format!("v1,{} v1,{}", base64_encode(&[0; 32]), sign("msg_1", NOW));
        assert_eq!(v.verify(&good("msg_1", NOW, &sig), body, NOW), Ok(()));
        // Svix's own header names work too.
        let svix = headers(&[
            ("svix-id", "msg_1"),
            ("svix-timestamp", &NOW.to_string()),
            ("svix-signature", &format!("v1,{}", sign("msg_1", NOW))),
        ]);
        assert_eq!(v.verify(&svix, body, NOW), Ok(()));
        // The id is signed.
        assert!(matches!(v.verify(&good("msg_2", NOW, &sig), body, NOW), Err(Failure::Mismatch { .. })));
        // Five minutes either way.
        let old = format!("v1,{}", sign("m", NOW - 301));
        assert!(matches!(v.verify(&good("m", NOW - 301, &old), body, NOW), Err(Failure::Stale { skew: 301, .. })));
        let new = format!("v1,{}", sign("m", NOW + 301));
        assert!(matches!(v.verify(&good("m", NOW + 301, &new), body, NOW), Err(Failure::Stale { skew: -301, .. })));
        // Each header is needed.
        for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut h = good("msg_1", NOW, &sig);
            h.remove(missing);
            assert_eq!(v.verify(&h, body, NOW), Err(Failure::Missing(missing)));
        }
        let h = good("msg_1", NOW, "v1,%%%");
        assert!(matches!(v.verify(&h, body, NOW), Err(Failure::Mismatch { signatures: 0, .. })));
        let mut h = good("msg_1", NOW, &sig);
        h.insert("webhook-timestamp", HeaderValue::from_static("17e8"));
        assert!(matches!(v.verify(&h, body, NOW), Err(Failure::Malformed("webhook-timestamp", _))));
    }

    #[test]
    fn standard_secrets_must_be_base64() {
        let key = base64_encode(b"k1");
        assert_eq!(parse_secrets(VerifyScheme::Standard, "V", &format!("whsec_{key}")).unwrap(), vec![b"k1".to_vec()]);
        assert_eq!(parse_secrets(VerifyScheme::Standard, "V", &key).unwrap(), vec![b"k1".to_vec()]);
        assert_eq!(
            parse_secrets(VerifyScheme::Standard, "V", &format!("whsec_{key},whsec_not base64!")).unwrap_err(),
            SecretError::NotBase64("V".into(), 2)
        );
        assert_eq!(parse_secrets(VerifyScheme::Github, "V", " , ").unwrap_err(), SecretError::Empty("V".into()));
        // The message names the variable, never the value.
        let e = parse_secrets(VerifyScheme::Standard, "V", "whsec_sup3r$ecret").unwrap_err().to_string();
        assert!(!e.contains("sup3r"), "{e}");
    }

    #[test]
    fn generic_hmac_takes_header_prefix_encoding_and_algorithm() {
        let body = b"payload";
        let v = verify(VerifyScheme::Hmac, "k", |c| {
            c.header = Some("X-Signature".into());
            c.prefix = Some("sha512=".into());
            c.encoding = Some(SignatureEncoding::Base64);
            c.algorithm = Some(HmacAlgorithm::Sha512);
        });
        let mut mac = <Hmac<sha2::Sha512> as KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(body);
        let sig = base64_encode(&mac.finalize().into_bytes());
        let value = format!("sha512={sig}");
        assert_eq!(v.verify(&headers(&[("x-signature", &value)]), body, NOW), Ok(()));
        assert_eq!(
            v.verify(&headers(&[("x-signature", sig.trim_end_matches('='))]), body, NOW).unwrap_err(),
            Failure::Malformed("signature header", "no prefix")
        );
        let unpadded = format!("sha512={}", sig.trim_end_matches('='));
        assert_eq!(v.verify(&headers(&[("x-signature", &unpadded)]), body, NOW), Ok(()));
        assert!(matches!(
            v.verify(&headers(&[("x-signature", "sha512=***")]), body, NOW),
            Err(Failure::Malformed(_, "not base64"))
        ));
        assert!(v.verify(&headers(&[("x-signature", &value)]), b"payloaD", NOW).is_err());

        // Defaults: hex, sha256, no prefix. SHA-1 when asked.
        let v = verify(VerifyScheme::Hmac, "k", |c| c.header = Some("x-sig".into()));
        let sig = hex::encode(hmac256(b"k", body));
        assert_eq!(v.verify(&headers(&[("x-sig", &sig)]), body, NOW), Ok(()));
        let v = verify(VerifyScheme::Hmac, "k", |c| {
            c.header = Some("x-sig".into());
            c.algorithm = Some(HmacAlgorithm::Sha1);
        });
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(body);
        let sha1 = hex::encode(mac.finalize().into_bytes());
        assert_eq!(v.verify(&headers(&[("x-sig", &sha1)]), body, NOW), Ok(()));
        assert!(v.verify(&headers(&[("x-sig", &sig)]), body, NOW).is_err(), "a SHA-256 signature is not SHA-1's");
    }

    #[test]
    fn a_route_without_secrets_refuses_everything() {
        let mut v = verify(VerifyScheme::Github, "s", |_| {});
        v.keys.clear();
        let sig = format!("sha256={}", hex::encode(hmac256(b"", b"x")));
        assert!(v.verify(&headers(&[("x-hub-signature-256", &sig)]), b"x", NOW).is_err());
    }
}

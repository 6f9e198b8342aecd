//! Authentication at the edge, as the [`Guard`] in a route's `auth` slot: API keys (`api_keys_env`) or JWT bearer
//! tokens (`jwt`). Compiled once per config load: the keys come from the environment and the JWKS file then, so a
//! reload picks up a rotated JWKS, and a variable or file that is missing refuses the config (the route never runs
//! open). A verified token's claims go into the request's extensions ([`Claims`]), where every later template
//! (`{jwt.CLAIM}` in a rate-limit key, hash key, topic…) reads them.
//!
//! Refusals: no credential or a wrong one → `401` with `WWW-Authenticate`; a valid token without the route's
//! audience or a required scope → `403`. The reason goes to the problem document and to the log; the credential
//! itself never does.
//!
//! JWT: the algorithms a key accepts come from the key (an HMAC secret: HS256/384/512; a JWK: its type and curve,
//! narrowed by its `alg`), never from the token's header, so `alg: none` and an HS256 token "signed" with an RSA
//! public key are refused. `exp` is required; `nbf`, `iss` (when `issuer` is set) and `aud` (when `audience` is set)
//! are checked.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Request, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::guard::Guard;
use super::verified::Verified;
use crate::body::Prepared;
use crate::config::{AuthConfig, JwtConfig};
use crate::problem::GatewayError;
use crate::request::{Claims, request_id};

/// The API-key header when `header` is not set.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash (256 bits for HS256).
const MIN_SECRET_BYTES: usize = 32;

/// Why an `auth` table cannot be compiled: a `sluice check` error, and at start or reload a refused config. The
/// message names the key, the variable or the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

/// A route's authentication.
#[derive(Debug)]
pub struct Auth {
    route: Arc<str>,
    /// The route has CORS: its layer answers every `OPTIONS` itself (nothing reaches the action), so preflights,
    /// which browsers send without credentials, pass.
    preflights_pass: bool,
    scheme: Scheme,
}

#[derive(Debug)]
enum Scheme {
    ApiKeys(ApiKeys),
    Jwt(Jwt),
}

impl Auth {
    /// Compiles `auth = {…}` of `route`, reading its keys (environment variable, JWKS file) now.
    pub fn compile(cfg: &AuthConfig, route: Arc<str>, has_cors: bool) -> Result<Auth, AuthError> {
        let scheme = match (&cfg.api_keys_env, &cfg.jwt) {
            (Some(var), None) => Scheme::ApiKeys(ApiKeys::load(var, cfg.header.as_deref())?),
            (None, Some(jwt)) => Scheme::Jwt(Jwt::load(jwt)?),
            _ => return Err(AuthError("auth needs exactly one of api_keys_env and jwt".into())),
        };
        Ok(Auth { route, preflights_pass: has_cors, scheme })
    }
}

impl Guard for Auth {
    fn check(&self, req: &mut Request<Prepared>) -> Result<(), GatewayError> {
        if self.preflights_pass && req.method() == Method::OPTIONS {
            return Ok(());
        }
        let refused = match &self.scheme {
            Scheme::ApiKeys(keys) => keys.check(req.headers()).err(),
            Scheme::Jwt(jwt) => match jwt.check(req.headers()) {
                Ok(claims) => {
                    req.extensions_mut().insert(Claims(claims));
                    None
                }
                Err(refusal) => Some(refusal),
            },
        };
        let Some(Refusal { error, cause }) = refused else { return Ok(()) };
        tracing::info!(
            route = &*self.route,
            request_id = request_id(req),
            status = error.status().as_u16(),
            reason = %error,
            cause,
            "auth refused the request"
        );
        Err(error)
    }
}

/// A refused request: the answer, and what the log says besides.
struct Refusal {
    error: GatewayError,
    /// Detail for the log only (the library's error, an unknown `kid`); never the credential.
    cause: String,
}

// ---------------------------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------------------------

/// Accepted API keys, as SHA-256 digests: every presented key is hashed and compared with every accepted one in
/// constant time, so the time taken tells neither which key nearly matched nor how long the keys are.
struct ApiKeys {
    header: HeaderName,
    digests: Vec<[u8; 32]>,
    challenge: String,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("header", &self.header).field("keys", &self.digests.len()).finish()
    }
}

impl ApiKeys {
    fn load(var: &str, header: Option<&str>) -> Result<ApiKeys, AuthError> {
        let header = header.unwrap_or(DEFAULT_API_KEY_HEADER);
        let name = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
            .map_err(|_| AuthError(format!("auth.header {header:?} is not a header name")))?;
        let value = env(var, "auth.api_keys_env")?;
        let digests: Vec<[u8; 32]> =
            value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| Sha256::digest(k).into()).collect();
        if digests.is_empty() {
            return Err(AuthError(format!("auth.api_keys_env: {var:?} holds no key (a comma-separated list)")));
        }
        Ok(ApiKeys { challenge: format!("ApiKey header=\"{name}\""), header: name, digests })
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let refuse = |reason: String, cause: &str| Refusal {
            error: GatewayError::Unauthorized { challenge: self.challenge.clone(), reason },
            cause: cause.to_owned(),
        };
        let Some(presented) = headers.get(&self.header) else {
            return Err(refuse(format!("missing API key (header {})", self.header), "no key"));
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // No early exit: every accepted key is compared.
        let matched = self.digests.iter().fold(subtle::Choice::from(0), |m, k| m | k[..].ct_eq(&digest[..]));
        if bool::from(matched) { Ok(()) } else { Err(refuse("invalid API key".to_owned(), "wrong key")) }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------------------------------------

/// A verification key and what it accepts.
struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    /// The route's checks with this key's algorithms.
    validation: Validation,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("algorithms", &self.validation.algorithms).finish()
    }
}

#[derive(Debug)]
struct Jwt {
    keys: Vec<VerifyingKey>,
    /// Keys are picked by the token's `kid` (a JWKS whose keys have ids); otherwise every key that accepts the
    /// token's algorithm is tried.
    by_kid: bool,
    audience: Option<String>,
    scopes: Vec<String>,
    /// `WWW-Authenticate` of a 403 for a missing scope.
    scope_challenge: String,
    /// Tokens that passed every check, admitted again without one until they expire.
    verified: Verified,
}

impl Jwt {
    fn load(cfg: &JwtConfig) -> Result<Jwt, AuthError> {
        let mut base = Validation::new(Algorithm::HS256);
        base.leeway = cfg.leeway.0.as_secs();
        base.validate_nbf = true;
        // The audience is checked here, after the signature, so that a wrong one is a 403, not a 401.
        base.validate_aud = false;
        base.required_spec_claims = ["exp".to_owned()].into();
        if let Some(issuer) = &cfg.issuer {
            base.set_issuer(&[issuer]);
            base.required_spec_claims.insert("iss".to_owned());
        }
        let with_algorithms = |algorithms: &[Algorithm]| Validation { algorithms: algorithms.to_vec(), ..base.clone() };
        let (keys, by_kid) = match (&cfg.secret_env, &cfg.jwks_file) {
            (Some(var), None) => {
                let secret = env(var, "auth.jwt.secret_env")?;
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(AuthError(format!(
                        "auth.jwt.secret_env: the secret in {var:?} is {} bytes; HMAC needs at least {MIN_SECRET_BYTES}",
                        secret.len()
                    )));
                }
                let key = DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| AuthError(format!("auth.jwt.secret_env: {var:?}: {e}")))?;
                let validation = with_algorithms(AlgorithmFamily::Hmac.algorithms());
                (vec![VerifyingKey { kid: None, key, validation }], false)
            }
            (None, Some(path)) => {
                let keys = load_jwks(path, with_algorithms)?;
                let by_kid = keys.iter().any(|k| k.kid.is_some());
                (keys, by_kid)
            }
            _ => return Err(AuthError("auth.jwt needs exactly one of secret_env and jwks_file".into())),
        };
        Ok(Jwt {
            keys,
            by_kid,
            audience: cfg.audience.clone(),
            scope_challenge: format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                cfg.required_scopes.join(" ")
            ),
            scopes: cfg.required_scopes.clone(),
            verified: Verified::new(cfg.leeway.0.as_secs()),
        })
    }

    /// Verifies the bearer token of `headers` (unless it passed every check before and has not expired) and
    /// returns its claims.
    fn check(&self, headers: &HeaderMap) -> Result<Arc<Map<String, Value>>, Refusal> {
        let Some(token) = bearer(headers) else {
            return Err(Refusal {
                error: GatewayError::Unauthorized {
                    challenge: "Bearer".to_owned(),
                    reason: "missing bearer token (Authorization: Bearer <token>)".to_owned(),
                },
                cause: "no token".to_owned(),
            });
        };
        if let Some(claims) = self.verified.get(token, jsonwebtoken::get_current_timestamp()) {
            return Ok(claims);
        }
        let claims = self.verify(token)?;
        if let Some(audience) = &self.audience {
            let listed = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !listed {
                return Err(Refusal {
                    error: GatewayError::Forbidden {
                        challenge: None,
                        reason: "the token was not issued for this audience".to_owned(),
                    },
                    cause: format!("aud is {}", claims.get("aud").map_or("absent".to_owned(), Value::to_string)),
                });
            }
        }
        let granted = granted_scopes(&claims);
        let missing: Vec<&str> =
            self.scopes.iter().map(String::as_str).filter(|s| !granted.contains(s)).collect::<Vec<_>>();
        if !missing.is_empty() {
            return Err(Refusal {
                error: GatewayError::Forbidden {
                    challenge: Some(self.scope_challenge.clone()),
                    reason: format!("the token lacks the scope {}", missing.join(" ")),
                },
                cause: format!("granted scopes: {granted:?}"),
            });
        }
        let claims = Arc::new(claims);
        self.verified.insert(token, &claims);
        Ok(claims)
    }

    /// Checks the token's signature, `exp`, `nbf` and `iss` with the key it names (or every key of its algorithm).
    fn verify(&self, token: &str) -> Result<Map<String, Value>, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(InvalidToken::Malformed, e.to_string()))?;
        let candidates: Vec<&VerifyingKey> = match (&header.kid, self.by_kid) {
            (Some(kid), true) => {
                let key = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str()));
                vec![key.ok_or_else(|| invalid(InvalidToken::UnknownKey, format!("kid {kid:?} is not in the JWKS")))?]
            }
            _ => self.keys.iter().filter(|k| k.validation.algorithms.contains(&header.alg)).collect(),
        };
        if candidates.is_empty() {
            return Err(invalid(InvalidToken::Algorithm, format!("{:?} is not accepted", header.alg)));
        }
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(data.claims),
                // Not this key (only when several are tried): the next one may have signed it.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => last = Some(e),
                Err(e) => return Err(refusal_of(&e)),
            }
        }
        Err(last.map_or_else(|| invalid(InvalidToken::Signature, String::new()), |e| refusal_of(&e)))
    }
}

/// Why a token is refused with 401, as the client is told (RFC 6750 `error_description`: no quotes, no token).
#[derive(Clone, Copy)]
enum InvalidToken {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    NoExpiry,
    Issuer,
    Claims,
}

impl InvalidToken {
    fn reason(self) -> &'static str {
        match self {
            InvalidToken::Malformed => "the bearer token is malformed or its algorithm is not supported",
            InvalidToken::Algorithm => "the token's algorithm is not accepted",
            InvalidToken::UnknownKey => "the token's key id (kid) is not known",
            InvalidToken::Signature => "the token's signature does not verify",
            InvalidToken::Expired => "the token has expired",
            InvalidToken::NotYetValid => "the token is not valid yet",
            InvalidToken::NoExpiry => "the token has no exp claim",
            InvalidToken::Issuer => "the token's issuer is not accepted",
            InvalidToken::Claims => "the token's claims are malformed",
        }
    }
}

fn invalid(kind: InvalidToken, cause: String) -> Refusal {
    let reason = kind.reason();
    Refusal {
        error: GatewayError::Unauthorized {
            challenge: format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
            reason: reason.to_owned(),
        },
        cause,
    }
}

fn refusal_of(e: &jsonwebtoken::errors::Error) -> Refusal {
    let kind = match e.kind() {
        ErrorKind::InvalidSignature => InvalidToken::Signature,
        ErrorKind::ExpiredSignature => InvalidToken::Expired,
        ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => InvalidToken::Algorithm,
        ErrorKind::InvalidIssuer => InvalidToken::Issuer,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => InvalidToken::Issuer,
        ErrorKind::MissingRequiredClaim(_) => InvalidToken::NoExpiry,
        ErrorKind::InvalidClaimFormat(_) => InvalidToken::Claims,
        _ => InvalidToken::Malformed,
    };
    invalid(kind, e.to_string())
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Scopes a token grants: its `scope` (space-separated, RFC 8693) and `scp` (array, or space-separated string).
fn granted_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut scopes = Vec::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Some(Value::String(s)) => scopes.extend(s.split_whitespace()),
            Some(Value::Array(list)) => scopes.extend(list.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    scopes
}

/// Reads the JWKS at `path`: every signing key with its `kid` and the algorithms its type, curve and `alg` allow.
/// Encryption keys (`use = "enc"`) are left out; symmetric keys are refused (a secret has no place in a key set
/// file: use `secret_env`).
/// `validation` makes a key's checks from its algorithms.
fn load_jwks(path: &str, validation: impl Fn(&[Algorithm]) -> Validation) -> Result<Vec<VerifyingKey>, AuthError> {
    let at = |why: String| AuthError(format!("auth.jwt.jwks_file {path:?}: {why}"));
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot be read: {e}")))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| at(format!("is not a JWKS (a JSON object with a \"keys\" array of JWKs): {e}")))?;
    let mut keys: Vec<VerifyingKey> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let name = match &kid {
            Some(kid) => format!("key {i} (kid {kid:?})"),
            None => format!("key {i}"),
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let algorithms = jwk_algorithms(jwk).map_err(|why| at(format!("{name}: {why}")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| at(format!("{name}: {e}")))?;
        // Builds the verifier once (a bad modulus, point or length fails here rather than on the first request).
        jsonwebtoken::crypto::verify("AA", b"probe", &key, algorithms[0])
            .map_err(|e| at(format!("{name} is not a usable {:?} key: {e}", algorithms[0])))?;
        if kid.is_some() && keys.iter().any(|k| k.kid == kid) {
            return Err(at(format!("{name}: the kid is used by an earlier key")));
        }
        keys.push(VerifyingKey { kid, key, validation: validation(&algorithms) });
    }
    if keys.is_empty() {
        return Err(at("holds no signature key".to_owned()));
    }
    Ok(keys)
}

/// The algorithms a JWK may verify: from its key type and curve, narrowed to its `alg` when it names one.
fn jwk_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    let fitting: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref other => return Err(format!("curve {other:?} is not supported (P-256, P-384)")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            ref other => return Err(format!("curve {other:?} is not supported (Ed25519)")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys (kty \"oct\") do not belong in a JWKS file: use secret_env".to_owned());
        }
        _ => return Err("key type is not supported (RSA, EC, OKP)".to_owned()),
    };
    match jwk.common.key_algorithm {
        None => Ok(fitting.to_vec()),
        Some(alg) => match Algorithm::try_from(alg) {
            Ok(alg) if fitting.contains(&alg) => Ok(vec![alg]),
            _ => Err(format!("alg {alg} does not fit the key type")),
        },
    }
}

/// The value of environment variable `var`, named by `key`.
fn env(var: &str, key: &str) -> Result<String, AuthError> {
    match std::env::var(var) {
        Ok(v) => Ok(v),
        Err(std::env::VarError::NotPresent) => {
            Err(AuthError(format!("{key} names {var:?}, {}", crate::config::UNSET_VARIABLE)))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(AuthError(format!("{key}: {var:?} is not UTF-8"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bEaReR  abc.def.ghi ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc.def.ghi"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn scopes_come_from_scope_and_scp() {
        let claims = serde_json::json!({"scope": "a b", "scp": ["c"]});
        assert_eq!(granted_scopes(claims.as_object().unwrap()), vec!["a", "b", "c"]);
        let claims = serde_json::json!({"scp": "d e"});
        assert_eq!(granted_scopes(claims.as_object().unwrap()), vec!["d", "e"]);
    }
}

//! Templates such as `orders.{path.tenant}` or `{header.x-api-key}`: parsed once, rendered against a request.

use std::fmt;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, Method};

use crate::router::Params;

/// A parsed template: literal text and placeholders.
#[derive(Clone, Debug)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Header(HeaderName),
    Path(String),
    Query(String),
    Body(String),
    /// A top-level claim of the request's verified JWT.
    Jwt(String),
    Method,
    Route,
    ClientIp,
}

/// Why a template string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' in template {0:?}")]
    Unclosed(String),
    /// A placeholder that is not one of the known kinds.
    #[error(
        "unknown placeholder {{{0}}}: use header.NAME, path.NAME, query.NAME, body./json/pointer, jwt.CLAIM, method, route or client_ip"
    )]
    Unknown(String),
}

/// A value the template needs that the request does not carry (answered with 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Missing(pub String);

/// What a template is rendered against.
pub struct RenderContext<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Path parameters captured by the route.
    pub params: &'a Params,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
    /// Raw request body, when the template needs it.
    pub body: Option<&'a [u8]>,
    /// Route name.
    pub route: &'a str,
    /// The claims of the request's verified JWT (routes with JWT auth).
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The client's address (`{client_ip}`).
    pub client_ip: Option<&'a str>,
    json: OnceLock<Option<serde_json::Value>>,
}

impl<'a> RenderContext<'a> {
    /// A context without a body.
    pub fn new(
        method: &'a Method,
        headers: &'a HeaderMap,
        params: &'a Params,
        query: Option<&'a str>,
        route: &'a str,
    ) -> Self {
        RenderContext {
            method,
            headers,
            params,
            query,
            body: None,
            route,
            claims: None,
            client_ip: None,
            json: OnceLock::new(),
        }
    }

    /// The same context with the client's address available to `{client_ip}`.
    pub fn with_client_ip(mut self, client_ip: &'a str) -> Self {
        self.client_ip = Some(client_ip);
        self
    }

    /// The same context with the raw body available to `{body./pointer}`.
    pub fn with_body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    /// The same context with the verified JWT claims available to `{jwt.CLAIM}`.
    pub fn with_claims(mut self, claims: &'a serde_json::Map<String, serde_json::Value>) -> Self {
        self.claims = Some(claims);
        self
    }

    fn json(&self) -> Option<&serde_json::Value> {
        self.json.get_or_init(|| self.body.and_then(|b| serde_json::from_slice(b).ok())).as_ref()
    }
}

impl Template {
    /// Parses `source`; `{` opens a placeholder, `{{` is a literal `{`.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            rest = &rest[open + 1..];
            if let Some(after) = rest.strip_prefix('{') {
                literal.push('{');
                rest = after;
                continue;
            }
            let close = rest.find('}').ok_or_else(|| TemplateError::Unclosed(source.to_owned()))?;
            let placeholder = &rest[..close];
            rest = &rest[close + 1..];
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(parse_placeholder(placeholder)?);
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { source: source.to_owned(), parts })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the path parameters the template refers to.
    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Path(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Names of the JWT claims the template refers to (`{jwt.CLAIM}`): only routes with JWT auth have them.
    pub fn jwt_claims(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Jwt(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The whole template when it has no placeholder.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// The literal pieces of the template.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The placeholders whose value a client chooses freely (header, path, query, body), as written.
    pub fn client_inputs(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Header(name) => Some(format!("{{header.{name}}}")),
                Part::Path(name) => Some(format!("{{path.{name}}}")),
                Part::Query(name) => Some(format!("{{query.{name}}}")),
                Part::Body(pointer) => Some(format!("{{body.{pointer}}}")),
                _ => None,
            })
            .collect()
    }

    /// Whether rendering needs the request body.
    pub fn needs_body(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Body(_)))
    }

    /// Renders the template; a value absent from the request is a [`Missing`].
    pub fn render(&self, cx: &RenderContext<'_>) -> Result<String, Missing> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Method => out.push_str(cx.method.as_str()),
                Part::Route => out.push_str(cx.route),
                Part::ClientIp => out.push_str(cx.client_ip.ok_or_else(|| Missing("client address".to_owned()))?),
                Part::Header(name) => {
                    let value = cx
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| Missing(format!("header {name}")))?;
                    out.push_str(value);
                }
                Part::Path(name) => {
                    let value = cx.params.get(name).ok_or_else(|| Missing(format!("path parameter {name}")))?;
                    out.push_str(value);
                }
                Part::Query(name) => {
                    let value = cx
                        .query
                        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v))
                        .ok_or_else(|| Missing(format!("query parameter {name}")))?;
                    out.push_str(&value);
                }
                Part::Body(pointer) => {
                    let value = cx.json().and_then(|j| j.pointer(pointer));
                    push_json(&mut out, value).ok_or_else(|| Missing(format!("JSON body field {pointer}")))?;
                }
                Part::Jwt(claim) => {
                    let value = cx.claims.and_then(|c| c.get(claim));
                    push_json(&mut out, value).ok_or_else(|| Missing(format!("JWT claim {claim}")))?;
                }
            }
        }
        Ok(out)
    }
}

/// Appends a JSON value: a string as it is, a number, boolean, array or object as JSON text. `None` for an absent
/// value or `null`.
fn push_json(out: &mut String, value: Option<&serde_json::Value>) -> Option<()> {
    match value? {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Null => return None,
        other => out.push_str(&other.to_string()),
    }
    Some(())
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_placeholder(p: &str) -> Result<Part, TemplateError> {
    let unknown = || TemplateError::Unknown(p.to_owned());
    match p {
        "method" => return Ok(Part::Method),
        "route" => return Ok(Part::Route),
        "client_ip" => return Ok(Part::ClientIp),
        _ => {}
    }
    let (kind, name) = p.split_once('.').ok_or_else(unknown)?;
    if name.is_empty() {
        return Err(unknown());
    }
    match kind {
        "header" => {
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map(Part::Header).map_err(|_| unknown())
        }
        "path" => Ok(Part::Path(name.to_owned())),
        "query" => Ok(Part::Query(name.to_owned())),
        "body" if name.starts_with('/') => Ok(Part::Body(name.to_owned())),
        "jwt" => Ok(Part::Jwt(name.to_owned())),
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (k, v) in pairs {
            p.push(k, v);
        }
        p
    }

    #[test]
    fn renders_every_placeholder_kind() {
        let t = Template::parse("{method}:{route}:{path.tenant}:{header.X-User}:{query.page}:{body./order/id}:{{x}")
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "ann".parse().unwrap());
        let p = params(&[("tenant", "acme")]);
        let body = br#"{"order":{"id":42}}"#;
        let cx = RenderContext::new(&Method::POST, &headers, &p, Some("a=1&page=7"), "r1").with_body(body);
        assert_eq!(t.render(&cx).unwrap(), "POST:r1:acme:ann:7:42:{x}");
        assert!(t.needs_body());
        assert_eq!(t.path_params().collect::<Vec<_>>(), vec!["tenant"]);
    }

    #[test]
    fn missing_values_are_named() {
        let headers = HeaderMap::new();
        let p = Params::default();
        let cx = RenderContext::new(&Method::GET, &headers, &p, None, "r");
        let t = Template::parse("k-{header.x-api-key}").unwrap();
        assert_eq!(t.render(&cx).unwrap_err().0, "header x-api-key");
        let t = Template::parse("{body./id}").unwrap();
        assert_eq!(t.render(&cx).unwrap_err().0, "JSON body field /id");
        let t = Template::parse("{query.q}").unwrap();
        assert_eq!(t.render(&cx).unwrap_err().0, "query parameter q");
    }

    #[test]
    fn renders_jwt_claims() {
        let t = Template::parse("{jwt.tenant}.{jwt.n}.{jwt.admin}").unwrap();
        assert_eq!(t.jwt_claims().collect::<Vec<_>>(), vec!["tenant", "n", "admin"]);
        let claims = serde_json::json!({"tenant": "acme", "n": 42, "admin": false, "none": null});
        let claims = claims.as_object().unwrap();
        let (headers, p) = (HeaderMap::new(), Params::default());
        let cx = RenderContext::new(&Method::GET, &headers, &p, None, "r").with_claims(claims);
        assert_eq!(t.render(&cx).unwrap(), "acme.42.false");
        let missing = Template::parse("{jwt.sub}").unwrap();
        assert_eq!(missing.render(&cx).unwrap_err().0, "JWT claim sub");
        assert_eq!(Template::parse("{jwt.none}").unwrap().render(&cx).unwrap_err().0, "JWT claim none");
        let no_token = RenderContext::new(&Method::GET, &headers, &p, None, "r");
        assert_eq!(missing.render(&no_token).unwrap_err().0, "JWT claim sub");
        assert!(matches!(Template::parse("{jwt.}"), Err(TemplateError::Unknown(_))));
    }

    #[test]
    fn client_ip_renders_the_clients_address() {
        let (headers, p) = (HeaderMap::new(), Params::default());
        let t = Template::parse("ip:{client_ip}").unwrap();
        let cx = RenderContext::new(&Method::GET, &headers, &p, None, "r");
        assert_eq!(t.render(&cx).unwrap_err().0, "client address");
        assert_eq!(t.render(&cx.with_client_ip("192.0.2.7")).unwrap(), "ip:192.0.2.7");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(matches!(Template::parse("a{header.x"), Err(TemplateError::Unclosed(_))));
        assert!(matches!(Template::parse("{cookie.x}"), Err(TemplateError::Unknown(_))));
        assert!(matches!(Template::parse("{header.}"), Err(TemplateError::Unknown(_))));
        assert!(matches!(Template::parse("{body.id}"), Err(TemplateError::Unknown(_))));
        assert_eq!(
            Template::parse("plain")
                .unwrap()
                .render(&RenderContext::new(&Method::GET, &HeaderMap::new(), &Params::default(), None, "r"))
                .unwrap(),
            "plain"
        );
    }
}

//! The compiled route table: (method, host, path, headers) → route index and path parameters. Pure.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use percent_encoding::percent_decode_str;

use crate::config::MatchConfig;

/// Path parameters captured by a `{name}` segment, in path order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(Vec<(Arc<str>, String)>);

impl Params {
    /// The value captured for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| &**k == name).map(|(_, v)| v.as_str())
    }

    /// Adds a captured value.
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((Arc::from(name), value.to_owned()));
    }
}

/// What the router decided for one request.
#[derive(Debug, PartialEq)]
pub enum RouteMatch {
    /// Route `index` (file order) takes the request.
    Found {
        /// Index of the route in the config.
        index: usize,
        /// Captured path parameters.
        params: Params,
    },
    /// Some route has this path but none allows the method: 405 with this `Allow` value, unless the first such
    /// route answers the request itself (a CORS preflight).
    MethodNotAllowed {
        /// Comma-separated allowed methods.
        allow: String,
        /// The first route whose host, path and headers matched.
        first: usize,
        /// Its captured path parameters.
        params: Params,
    },
    /// No route has this path: 404.
    NotFound,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    Param(Arc<str>),
}

#[derive(Clone, Debug)]
enum PathMatch {
    Exact(Vec<Segment>),
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

/// One route's compiled `match`.
#[derive(Clone, Debug)]
pub struct Matcher {
    path: PathMatch,
    methods: Option<Vec<Method>>,
    host: Option<HostMatch>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    /// Compiles a `match` table; errors name the key at fault.
    pub fn compile(m: &MatchConfig) -> Result<Matcher, Vec<String>> {
        let mut errors = Vec::new();
        let path = match (&m.path, &m.path_prefix) {
            (Some(p), None) => compile_exact(p).map_err(|e| errors.push(e)).ok(),
            (None, Some(p)) => compile_prefix(p).map_err(|e| errors.push(e)).ok(),
            (Some(_), Some(_)) => {
                errors.push("match: set exactly one of path and path_prefix, not both".to_owned());
                None
            }
            (None, None) => {
                errors.push("match: set exactly one of path and path_prefix".to_owned());
                None
            }
        };
        let methods: Option<Vec<Method>> = m.methods.as_ref().map(|ms| {
            ms.iter()
                .filter_map(|s| match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        errors.push(format!("match.methods: {s:?} is not an HTTP method"));
                        None
                    }
                })
                .collect()
        });
        if matches!(&methods, Some(v) if v.is_empty()) && m.methods.as_ref().is_some_and(|v| v.is_empty()) {
            errors.push("match.methods: empty list matches nothing (omit the key to allow every method)".to_owned());
        }
        let host = m.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => HostMatch::Suffix(suffix.to_owned()),
                Some(_) => {
                    errors.push(format!("match.host: {h:?} must be exact or look like \"*.example.com\""));
                    HostMatch::Exact(h)
                }
                None => HostMatch::Exact(h),
            }
        });
        let mut headers = Vec::new();
        for (name, value) in &m.headers {
            match (HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()), HeaderValue::from_str(value)) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => errors.push(format!("match.headers: {name:?} is not a valid header name")),
                (_, Err(_)) => errors.push(format!("match.headers.{name}: {value:?} is not a valid header value")),
            }
        }
        match path {
            Some(path) if errors.is_empty() => Ok(Matcher { path, methods, host, headers }),
            _ => Err(errors),
        }
    }

    /// Names of the `{param}` segments of an exact path.
    pub fn param_names(&self) -> Vec<&str> {
        match &self.path {
            PathMatch::Exact(segs) => segs
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) => Some(&**n),
                    Segment::Literal(_) => None,
                })
                .collect(),
            PathMatch::Prefix(_) => Vec::new(),
        }
    }

    /// The prefix of a `path_prefix` route.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            PathMatch::Exact(_) => None,
        }
    }

    /// Whether every request this route can take is taken by `self` first (used to warn about shadowed routes).
    pub fn covers(&self, later: &Matcher) -> bool {
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(a), Some(b)) if a == b => true,
            (Some(HostMatch::Suffix(s)), Some(HostMatch::Exact(h))) => h.ends_with(s.as_str()),
            _ => false,
        };
        let headers = self.headers.iter().all(|h| later.headers.contains(h));
        let path = match (&self.path, &later.path) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => prefix_matches(a, b),
            (PathMatch::Prefix(a), PathMatch::Exact(segs)) => {
                // Literal segments up to the first parameter must lie under the prefix.
                let literal: Vec<&str> = segs
                    .iter()
                    .map_while(|s| match s {
                        Segment::Literal(l) => Some(l.as_str()),
                        Segment::Param(_) => None,
                    })
                    .collect();
                let covers_all = literal.len() == segs.len();
                let joined = format!("/{}", literal.join("/"));
                if covers_all {
                    prefix_matches(a, &joined)
                } else {
                    a == "/" || (prefix_matches(a, &joined) && joined.len() > a.len())
                }
            }
            (PathMatch::Exact(a), PathMatch::Exact(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| match (x, y) {
                        (Segment::Param(_), _) => true,
                        (Segment::Literal(l), Segment::Literal(m)) => l == m,
                        (Segment::Literal(_), Segment::Param(_)) => false,
                    })
            }
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        };
        methods && host && headers && path
    }

    fn matches_request(&self, host: Option<&str>, path: &str, headers: &HeaderMap, params: &mut Params) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s),
            };
            if !ok {
                return false;
            }
        }
        if !self.headers.iter().all(|(n, v)| headers.get_all(n).iter().any(|got| got == v)) {
            return false;
        }
        match &self.path {
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Exact(segs) => match_exact(segs, path, params),
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
}

fn compile_exact(p: &str) -> Result<PathMatch, String> {
    if !p.starts_with('/') {
        return Err(format!("match.path: {p:?} must start with '/'"));
    }
    let mut segs = Vec::new();
    for seg in p[1..].split('/') {
        if let Some(inner) = seg.strip_prefix('{') {
            let name = inner
                .strip_suffix('}')
                .filter(|n| !n.is_empty() && !n.contains(['{', '}']))
                .ok_or_else(|| format!("match.path: segment {seg:?} of {p:?} must be literal or {{name}}"))?;
            if segs.iter().any(|s| matches!(s, Segment::Param(n) if &**n == name)) {
                return Err(format!("match.path: parameter {{{name}}} appears twice in {p:?}"));
            }
            segs.push(Segment::Param(Arc::from(name)));
        } else if seg.contains(['{', '}']) {
            return Err(format!("match.path: segment {seg:?} of {p:?} must be literal or {{name}}"));
        } else {
            segs.push(Segment::Literal(seg.to_owned()));
        }
    }
    Ok(PathMatch::Exact(segs))
}

fn compile_prefix(p: &str) -> Result<PathMatch, String> {
    if !p.starts_with('/') {
        return Err(format!("match.path_prefix: {p:?} must start with '/'"));
    }
    let trimmed = p.trim_end_matches('/');
    Ok(PathMatch::Prefix(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }))
}

/// Segment-aware prefix test: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

fn match_exact(segs: &[Segment], path: &str, params: &mut Params) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    for seg in segs {
        let Some(part) = parts.next() else {
            return false;
        };
        match seg {
            Segment::Literal(l) => {
                if l != part {
                    return false;
                }
            }
            Segment::Param(name) => {
                if part.is_empty() {
                    return false;
                }
                // `%2F` stays encoded: a captured value never holds a path separator (it may become a broker name).
                let value = percent_decode_str(part).decode_utf8_lossy().replace('/', "%2F");
                params.0.push((name.clone(), value));
            }
        }
    }
    parts.next().is_none()
}

/// `path` with its dot segments removed (RFC 3986 §5.2.4), `.` and `..` also when written percent-encoded
/// (`%2e%2e`): what the router and `rewrite_prefix` see, so `/pub/../admin` is `/admin` and cannot stay under
/// `/pub`. `%2F` is not a separator and is left alone. A path not starting with `/` is returned as it is.
pub fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    // Most paths hold neither a dot nor a percent escape: one byte scan answers for them.
    let maybe_dots = path.bytes().any(|b| b == b'.' || b == b'%');
    if !maybe_dots || !path.starts_with('/') || !path.split('/').any(|s| dots(s) > 0) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dots(seg) {
            0 => out.push(seg),
            n => {
                if n == 2 {
                    out.pop();
                }
                // `/a/.` and `/a/b/..` end in a directory: `/a/`.
                if last {
                    out.push("");
                }
            }
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

/// 1 for a `.` segment, 2 for `..`, 0 for any other (`%2e` counts as a dot).
fn dots(segment: &str) -> usize {
    let b = segment.as_bytes();
    let dot = |s: &[u8]| s == b"." || s.eq_ignore_ascii_case(b"%2e");
    match b.len() {
        1 | 3 if dot(b) => 1,
        2 if dot(&b[..1]) && dot(&b[1..]) => 2,
        4 if (dot(&b[..1]) && dot(&b[1..])) || (dot(&b[..3]) && dot(&b[3..])) => 2,
        6 if dot(&b[..3]) && dot(&b[3..]) => 2,
        _ => 0,
    }
}

/// All routes' matchers, in file order.
#[derive(Clone, Debug, Default)]
pub struct Router {
    matchers: Vec<Matcher>,
}

impl Router {
    /// A router over the given matchers (index = route index).
    pub fn new(matchers: Vec<Matcher>) -> Router {
        Router { matchers }
    }

    /// Finds the first route that takes the request.
    pub fn route(&self, method: &Method, host: Option<&str>, path: &str, headers: &HeaderMap) -> RouteMatch {
        let mut allow: Vec<&Method> = Vec::new();
        let mut first: Option<(usize, Params)> = None;
        let mut params = Params::default();
        for (index, m) in self.matchers.iter().enumerate() {
            params.0.clear();
            if !m.matches_request(host, path, headers, &mut params) {
                continue;
            }
            if m.allows(method) {
                return RouteMatch::Found { index, params };
            }
            if first.is_none() {
                first = Some((index, params.clone()));
            }
            for method in m.methods.iter().flatten() {
                if !allow.contains(&method) {
                    allow.push(method);
                }
            }
        }
        match first {
            Some((first, params)) if !allow.is_empty() => {
                let allow = allow.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
                RouteMatch::MethodNotAllowed { allow, first, params }
            }
            _ => RouteMatch::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(path: Option<&str>, prefix: Option<&str>, methods: Option<&[&str]>) -> Matcher {
        Matcher::compile(&MatchConfig {
            path: path.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        })
        .unwrap()
    }

    fn found(r: &Router, method: Method, path: &str) -> Option<usize> {
        match r.route(&method, None, path, &HeaderMap::new()) {
            RouteMatch::Found { index, .. } => Some(index),
            _ => None,
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let r = Router::new(vec![matcher(None, Some("/api"), None)]);
        assert_eq!(found(&r, Method::GET, "/api"), Some(0));
        assert_eq!(found(&r, Method::GET, "/api/x/y"), Some(0));
        assert_eq!(found(&r, Method::GET, "/apix"), None);
        let root = Router::new(vec![matcher(None, Some("/"), None)]);
        assert_eq!(found(&root, Method::GET, "/anything"), Some(0));
    }

    #[test]
    fn first_match_in_file_order_wins_and_params_are_captured() {
        let r = Router::new(vec![
            matcher(Some("/events/{tenant}/orders"), None, Some(&["POST"])),
            matcher(None, Some("/events"), None),
        ]);
        match r.route(&Method::POST, None, "/events/acme%20co/orders", &HeaderMap::new()) {
            RouteMatch::Found { index: 0, params } => {
                assert_eq!(params.get("tenant"), Some("acme co"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(found(&r, Method::GET, "/events/acme/orders"), Some(1));
        assert_eq!(found(&r, Method::POST, "/events/acme/orders/x"), Some(1));
        assert_eq!(found(&r, Method::POST, "/events//orders"), Some(1));
    }

    #[test]
    fn dot_segments_are_removed_also_when_percent_encoded() {
        for (raw, clean) in [
            ("/pub/../admin", "/admin"),
            ("/pub/%2e%2e/admin", "/admin"),
            ("/pub/%2E./admin", "/admin"),
            ("/pub/.%2e/admin", "/admin"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/%2e%2e%2fb", "/a/%2e%2e%2fb"),
            ("/a/...", "/a/..."),
            ("/plain/path", "/plain/path"),
            ("*", "*"),
        ] {
            assert_eq!(remove_dot_segments(raw), clean, "{raw}");
        }
        assert!(matches!(remove_dot_segments("/a/b"), Cow::Borrowed(_)), "clean paths are not copied");
    }

    #[test]
    fn an_encoded_slash_in_a_path_parameter_stays_encoded() {
        let r = Router::new(vec![matcher(Some("/t/{x}"), None, None)]);
        match r.route(&Method::GET, None, "/t/a%2Fb%20c", &HeaderMap::new()) {
            RouteMatch::Found { params, .. } => assert_eq!(params.get("x"), Some("a%2Fb c")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let r = Router::new(vec![
            matcher(Some("/a"), None, Some(&["POST"])),
            matcher(None, Some("/a"), Some(&["PUT", "POST"])),
        ]);
        assert_eq!(
            r.route(&Method::GET, None, "/a", &HeaderMap::new()),
            RouteMatch::MethodNotAllowed { allow: "POST, PUT".into(), first: 0, params: Params::default() }
        );
        assert_eq!(r.route(&Method::GET, None, "/b", &HeaderMap::new()), RouteMatch::NotFound);
    }

    #[test]
    fn host_and_headers() {
        let mut m =
            MatchConfig { path_prefix: Some("/".into()), host: Some("*.example.com".into()), ..Default::default() };
        m.headers.insert("X-Tenant".into(), "acme".into());
        let r = Router::new(vec![Matcher::compile(&m).unwrap()]);
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        let hit = |host, h: &HeaderMap| matches!(r.route(&Method::GET, host, "/", h), RouteMatch::Found { .. });
        assert!(hit(Some("api.Example.com"), &h));
        assert!(!hit(Some("example.com"), &h));
        assert!(!hit(None, &h));
        assert!(!hit(Some("api.example.com"), &HeaderMap::new()));
    }

    #[test]
    fn detects_shadowing() {
        let broad = matcher(None, Some("/api"), None);
        assert!(broad.covers(&matcher(Some("/api/orders/{id}"), None, Some(&["GET"]))));
        assert!(broad.covers(&matcher(None, Some("/api/x"), None)));
        assert!(!broad.covers(&matcher(None, Some("/apix"), None)));
        let post_only = matcher(None, Some("/api"), Some(&["POST"]));
        assert!(!post_only.covers(&matcher(None, Some("/api/x"), None)));
        assert!(matcher(Some("/a/{x}"), None, None).covers(&matcher(Some("/a/b"), None, None)));
        assert!(!matcher(Some("/a/b"), None, None).covers(&matcher(Some("/a/{x}"), None, None)));
    }

    #[test]
    fn rejects_bad_matches() {
        let both = MatchConfig { path: Some("/a".into()), path_prefix: Some("/a".into()), ..Default::default() };
        assert!(Matcher::compile(&both).is_err());
        assert!(Matcher::compile(&MatchConfig::default()).is_err());
        let bad = MatchConfig { path: Some("/a/{x".into()), ..Default::default() };
        assert!(Matcher::compile(&bad).is_err());
        let dup = MatchConfig { path: Some("/{x}/{x}".into()), ..Default::default() };
        assert!(Matcher::compile(&dup).is_err());
    }
}

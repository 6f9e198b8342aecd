//! The header lines the gateway adds to each request it sends upstream — `host` (the endpoint's), `traceparent`
//! (the attempt's CLIENT span; not on health checks) and, for a forwarded request, `x-forwarded-for`, `-proto` and `-host` — kept beside
//! the request's own headers instead of inserted into them.
//!
//! The wire client writes them straight into the request head, leaving out the request's own lines of the same
//! names: no map insert, no hashing of their names, no `traceparent` value allocated. Inserting and then encoding
//! them was 7.8% of a forwarded request's instructions (bench/README, eleventh round). hyper's clients (HTTP/2,
//! streamed bodies, upgrades) get them inserted into the map, as before: the upstream sees the same request either
//! way, but for the order of the lines (`host` first from the wire client, as RFC 9112 §3.2 recommends).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::request::{TRACEPARENT, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::telemetry::TraceContext;

/// The `x-forwarded-*` lines of a forwarded request, made once for all its attempts.
#[derive(Clone, Debug)]
pub struct Forwarded {
    /// `x-forwarded-for`, when the client sent none (the client's lines and the peer, joined, stay in the map).
    pub forwarded_for: Option<HeaderValue>,
    /// `x-forwarded-proto`: `http` or `https`.
    pub proto: &'static str,
    /// `x-forwarded-host`: the client's `Host`, if it sent one.
    pub host: Option<HeaderValue>,
}

/// What one attempt adds to the request's own headers; each line replaces the request's lines of its name.
#[derive(Clone, Copy, Debug)]
pub struct Added<'a> {
    /// `host`: the endpoint's authority.
    pub host: &'a HeaderValue,
    /// Sent as `traceparent` (this span as the parent); none for a health check.
    pub trace: Option<&'a TraceContext>,
    /// A forwarded request's `x-forwarded-*`.
    pub forwarded: Option<&'a Forwarded>,
}

impl Added<'_> {
    /// Whether `name`, a line of the request's own headers, is one these lines replace.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        match name.as_str() {
            "host" => true,
            "traceparent" => self.trace.is_some(),
            "x-forwarded-proto" => self.forwarded.is_some(),
            "x-forwarded-for" => self.forwarded.is_some_and(|f| f.forwarded_for.is_some()),
            "x-forwarded-host" => self.forwarded.is_some_and(|f| f.host.is_some()),
            _ => false,
        }
    }

    /// Writes `host` into a request head (the line right after the request line).
    pub fn write_host(&self, head: &mut Vec<u8>) {
        line(head, b"host: ", self.host.as_bytes());
    }

    /// Writes the other lines into a request head.
    pub fn write_rest(&self, head: &mut Vec<u8>) {
        if let Some(f) = self.forwarded {
            if let Some(v) = &f.forwarded_for {
                line(head, b"x-forwarded-for: ", v.as_bytes());
            }
            line(head, b"x-forwarded-proto: ", f.proto.as_bytes());
            if let Some(v) = &f.host {
                line(head, b"x-forwarded-host: ", v.as_bytes());
            }
        }
        if let Some(trace) = self.trace {
            // One copy of a fixed length (the compiler inlines it), the value made in place.
            let mut l = *b"traceparent: 0000000000000000000000000000000000000000000000000000000\r\n";
            trace.write_traceparent(&mut l[13..68]);
            head.extend_from_slice(&l);
        }
    }

    /// Inserts the lines into `headers` (for hyper's clients).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(header::HOST, self.host.clone());
        if let Some(f) = self.forwarded {
            if let Some(v) = &f.forwarded_for {
                headers.insert(X_FORWARDED_FOR.clone(), v.clone());
            }
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
            if let Some(v) = &f.host {
                headers.insert(X_FORWARDED_HOST.clone(), v.clone());
            }
        }
        if let Some(trace) = self.trace {
            headers.insert(TRACEPARENT.clone(), trace.traceparent());
        }
    }
}

/// `name: value\r\n`, from the name with its `: ` (a constant: its copy is inlined).
fn line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(forwarded_for: Option<&'static str>, host: Option<&'static str>) -> Forwarded {
        Forwarded {
            forwarded_for: forwarded_for.map(HeaderValue::from_static),
            proto: "https",
            host: host.map(HeaderValue::from_static),
        }
    }

    /// The lines the wire client writes, as a map, for comparing with what hyper's clients get.
    fn written(added: &Added<'_>) -> HeaderMap {
        let mut head = Vec::new();
        added.write_host(&mut head);
        added.write_rest(&mut head);
        let mut lines = [httparse::EMPTY_HEADER; 8];
        head.extend_from_slice(b"\r\n");
        let httparse::Status::Complete(_) = httparse::parse_headers(&head, &mut lines).unwrap() else {
            panic!("a complete head")
        };
        let mut map = HeaderMap::new();
        for l in lines.iter().take_while(|l| !l.name.is_empty()) {
            map.append(HeaderName::from_bytes(l.name.as_bytes()).unwrap(), HeaderValue::from_bytes(l.value).unwrap());
        }
        map
    }

    #[test]
    fn the_written_lines_are_the_inserted_ones_and_replace_the_requests_own() {
        let trace = TraceContext { trace_id: 0xabc, span_id: 0x12, flags: 1, tracestate: None };
        let host = HeaderValue::from_static("up.internal:8080");
        for fwd in [None, Some(forwarded(None, None)), Some(forwarded(Some("10.0.0.1"), Some("api.example")))] {
            let added = Added { host: &host, trace: Some(&trace), forwarded: fwd.as_ref() };
            let mut own = HeaderMap::new();
            for name in ["host", "traceparent", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "accept"] {
                own.append(HeaderName::from_static(name), HeaderValue::from_static("client"));
            }
            let mut inserted = own.clone();
            added.insert_into(&mut inserted);
            // The wire client: the request's own lines but those replaced, then the added ones.
            let mut wire = written(&added);
            for (name, value) in own.iter().filter(|(name, _)| !added.replaces(name)) {
                wire.append(name.clone(), value.clone());
            }
            let sorted = |m: &HeaderMap| {
                let mut v: Vec<_> = m.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
                v.sort();
                v
            };
            assert_eq!(sorted(&wire), sorted(&inserted), "{fwd:?}");
            assert_eq!(wire["traceparent"], "00-00000000000000000000000000000abc-0000000000000012-01");
            assert_eq!(wire["host"], "up.internal:8080");
        }
    }
}

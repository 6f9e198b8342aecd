//! Headers that belong to one connection and must not travel to the next hop: stripped by the forwarder (both ways)
//! and by subscriptions (from a message's metadata) before anything is sent to an upstream.

use http::header::{self, HeaderMap, HeaderName};

/// How many names [`HOP_BY_HOP`] has.
const HOPS: usize = 8;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub(super) const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers (those of [`HOP_BY_HOP`], those `Connection` names, and `te` unless it is
/// `te: trailers`) before a message is sent on another connection.
///
/// Most messages carry none of them, and most of the rest only `connection: keep-alive` (nginx sends it on every
/// response): one pass comparing names finds which are present, and only those are looked up and removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names the `Connection` header lists (`te` too, even `te: trailers`); those of the fixed list are removed
        // below when present. Tokens are compared without case and without a copy (`HeaderName::from_bytes`
        // lowercases the others): nginx sends `connection: keep-alive` on every answer.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|n| !n.is_empty() && listed_hop(n).is_none_or(|i| i >= HOPS))
            .filter_map(|n| HeaderName::from_bytes(n).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // `te` is hop-by-hop too, except `te: trailers`, which gRPC needs.
    if present & TE_BIT != 0 && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// `te`'s bit in [`strip_hop_by_hop`]'s set (after [`HOP_BY_HOP`]'s).
const TE_BIT: u16 = 1 << HOPS;

/// The position in [`HOP_BY_HOP`] of the (lowercase) header name `name`, [`HOPS`] for `te`, or `None`.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        "te" => HOPS,
        _ => return None,
    })
}

/// [`hop_by_hop_index`] for a name in any case (a token of the `Connection` header).
fn listed_hop(name: &[u8]) -> Option<usize> {
    let is = |hop: &str| name.eq_ignore_ascii_case(hop.as_bytes());
    HOP_BY_HOP.iter().position(|h| is(h.as_str())).or_else(|| is("te").then_some(HOPS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("te"), Some(HOPS));
        assert_eq!(hop_by_hop_index("content-type"), None);
        for name in HOP_BY_HOP.iter().map(HeaderName::as_str).chain(["te", "content-type"]) {
            assert_eq!(listed_hop(name.to_ascii_uppercase().as_bytes()), hop_by_hop_index(name), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive, X-Conn-Private, close".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-conn-private", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["content-type"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["te"], "te: trailers stays");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "TE".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "a te that Connection names goes, trailers or not: {h:?}");
    }
}

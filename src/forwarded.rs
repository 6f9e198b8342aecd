//! Who the client is: the peer address, or — when the peer is one of `server.trusted_proxies` — the address its
//! `X-Forwarded-For` (else `Forwarded: for=`) chain names: the right-most address that is not itself a trusted
//! proxy. Addresses a client wrote further left cannot change it, and a peer that is not trusted is never
//! believed, so `{client_ip}` is safe to key a rate limit on. Pure.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

use crate::request::X_FORWARDED_FOR;

/// Parses a `trusted_proxies` entry: a CIDR (`10.0.0.0/8`) or a single address (`10.0.0.1`).
pub fn parse_proxy(entry: &str) -> Option<IpNet> {
    entry.parse::<IpNet>().ok().or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The client's address for a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain = list(headers, &X_FORWARDED_FOR);
    if chain.is_empty() {
        chain = list(headers, &FORWARDED).into_iter().filter_map(forwarded_for).collect();
    }
    let mut client = peer;
    for entry in chain.iter().rev() {
        // A trusted proxy wrote this entry; one that is no address ends what can be believed.
        let Some(ip) = parse_node(entry) else { return client };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// The comma-separated elements of every line of `name`, in order.
fn list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

/// The `for=` value of one `Forwarded` element (RFC 7239): `for=192.0.2.60;proto=http`.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })
}

/// An address as proxies write it: `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::1`, `"[2001:db8::1]:4711"`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let host = match node.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => node.rsplit_once(':')?.0,
    };
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=198.51.100.1")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
        let trusted = [parse_proxy("10.0.0.0/8").unwrap()];
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn a_trusted_chain_names_its_right_most_untrusted_address() {
        let trusted = [parse_proxy("10.0.0.0/8").unwrap(), parse_proxy("127.0.0.1").unwrap()];
        let peer = ip("127.0.0.1");
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9"), ("x-forwarded-for", "10.1.2.3")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"), "lines are joined; trusted hops skipped");
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.1"), "all trusted: the left-most");
        let h = headers(&[("x-forwarded-for", "unknown, 10.0.0.2")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.2"), "garbage ends the chain");
        let h = headers(&[("forwarded", "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8:cafe::17"));
        let h = headers(&[("x-forwarded-for", "192.0.2.1:5555")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("::ffff:127.0.0.1"), &headers(&[]), &trusted), ip("127.0.0.1"));
    }
}

//! Header names of upstream answers and of requests read by the fast lane (`lane`), matched against the few that
//! nearly every answer or request carries before `HeaderName::from_bytes` is asked.
//!
//! `from_bytes` lowercases every name into a scratch buffer through a table and then searches the whole list of
//! standard names: ~150 instructions a name, five or more names an answer (callgrind, bench/README.md's fourteenth
//! round). A name the wire client parsed is already a valid token (httparse checks), so a comparison of its bytes
//! with the lowercase name, each byte's case bit set, decides equality (below) in a few word compares; the known
//! name is then a clone of a constant, which costs nothing. Written here because the `http` crate has no cheaper
//! lookup and a whole-map cache of names per connection would hold state for a smaller gain.

use http::header::{self, HeaderName, InvalidHeaderName};

/// `raw` (a header name httparse accepted) as a `HeaderName`: a known one without a lookup, others through
/// `HeaderName::from_bytes`.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let known: &[HeaderName] = match raw.len() {
        3 => &LEN_3,
        4 => &LEN_4,
        6 => &LEN_6,
        7 => &LEN_7,
        8 => &LEN_8,
        10 => &LEN_10,
        12 => &LEN_12,
        13 => &LEN_13,
        14 => &LEN_14,
        15 => &LEN_15,
        16 => &LEN_16,
        17 => &LEN_17,
        _ => &[],
    };
    match known.iter().find(|name| folded_eq(raw, name.as_str().as_bytes())) {
        Some(name) => Ok(name.clone()),
        None => HeaderName::from_bytes(raw),
    }
}

// By length, most frequent first. Statics, not consts: a `HeaderName` has drop glue, so `&[CONST]` is not promoted.
static LEN_3: [HeaderName; 1] = [header::AGE];
static LEN_4: [HeaderName; 4] = [header::DATE, header::HOST, header::VARY, header::ETAG];
static LEN_6: [HeaderName; 4] = [header::SERVER, header::ACCEPT, header::COOKIE, header::ORIGIN];
static LEN_7: [HeaderName; 1] = [header::EXPIRES];
static LEN_8: [HeaderName; 1] = [header::LOCATION];
static LEN_10: [HeaderName; 3] = [header::CONNECTION, header::SET_COOKIE, header::USER_AGENT];
static LEN_12: [HeaderName; 1] = [header::CONTENT_TYPE];
static LEN_13: [HeaderName; 4] =
    [header::CACHE_CONTROL, header::LAST_MODIFIED, header::ACCEPT_RANGES, header::AUTHORIZATION];
static LEN_14: [HeaderName; 1] = [header::CONTENT_LENGTH];
static LEN_15: [HeaderName; 2] = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];
static LEN_16: [HeaderName; 1] = [header::CONTENT_ENCODING];
static LEN_17: [HeaderName; 1] = [header::TRANSFER_ENCODING];

/// Whether the token `raw` equals `lower` (lowercase letters and `-`, of the same length) ignoring case.
///
/// Setting bit 0x20 maps `A`–`Z` onto `a`–`z` and leaves `a`–`z` and `-` as they are; of the bytes a token may
/// hold (RFC 9110 §5.6.2), no other lands on a lowercase letter or on `-` (only the CR byte 0x0D would, and a
/// token has none). Eight bytes at a time; the last eight overlap the ones before when the length is not a
/// multiple of eight.
pub(super) fn folded_eq(raw: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let word = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    let n = raw.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return raw.iter().zip(lower).all(|(r, l)| r | 0x20 == *l);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(raw, at) | CASE != word(lower, at) {
            return false;
        }
        at += 8;
    }
    word(raw, n - 8) | CASE == word(lower, n - 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> impl Iterator<Item = &'static HeaderName> {
        let short = LEN_3.iter().chain(&LEN_4).chain(&LEN_6).chain(&LEN_7).chain(&LEN_8).chain(&LEN_10);
        short.chain(&LEN_12).chain(&LEN_13).chain(&LEN_14).chain(&LEN_15).chain(&LEN_16).chain(&LEN_17)
    }

    #[test]
    fn known_names_in_any_case_are_the_standard_ones() {
        for name in known() {
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(header_name(upper.as_bytes()).unwrap(), *name);
            assert_eq!(header_name(name.as_str().as_bytes()).unwrap(), *name);
        }
        for raw in ["Content-Length", "CONTENT-length", "Transfer-Encoding", "Cache-Control", "Last-Modified"] {
            assert_eq!(header_name(raw.as_bytes()).unwrap(), HeaderName::from_bytes(raw.as_bytes()).unwrap());
        }
    }

    #[test]
    fn every_token_byte_in_every_place_agrees_with_from_bytes() {
        // Each known name with one byte replaced by each token byte: the same answer as the http crate's, so no
        // byte that is not the right letter (in either case) passes for it.
        let tokens: Vec<u8> =
            (0u8..=127).filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b)).collect();
        for name in known() {
            for at in 0..name.as_str().len() {
                for &b in &tokens {
                    let mut raw = name.as_str().as_bytes().to_vec();
                    raw[at] = b;
                    assert_eq!(header_name(&raw).unwrap(), HeaderName::from_bytes(&raw).unwrap(), "{raw:?}");
                }
            }
        }
    }

    #[test]
    fn other_names_go_through_from_bytes() {
        assert_eq!(header_name(b"X-Powered-By").unwrap(), HeaderName::from_static("x-powered-by"));
        assert_eq!(header_name(b"Dates").unwrap(), HeaderName::from_static("dates"));
        assert!(header_name(b"bad name").is_err());
    }
}

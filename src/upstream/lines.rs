//! An upstream answer's header lines passed on as the bytes they came in, for the fast lane (`lane`) to write
//! without a `HeaderMap` in between.
//!
//! A forwarded answer's headers were parsed into a `HeaderMap` (a name lookup, a value check and a hashed insert
//! per line) only for the lane to walk the map and write the same lines out again: ~2k instructions of a forwarded
//! request's ~23.5k for nginx's five lines (bench/README.md, seventeenth round). When the forwarder asks for it
//! (`Call::keep_lines`: a plain HTTP/1.1 request, on a route without CORS), the wire client keeps the lines that would go into the map as spans of the bytes read
//! (which the answer holds anyway) and leaves the map empty; the lane writes the spans after the status line, and
//! the map's own lines (the `x-request-id` the observe layer sets) after them.
//!
//! Kept only when nothing downstream needs them in the map (see `wire::Head::parse_into`): an answer whose kept
//! lines and blank line end with CRLF, with no hop-by-hop line the forwarder would strip but for `connection: keep-alive`/`close`,
//! `keep-alive` and `transfer-encoding` (which the wire client consumes), a body (not `HEAD`, `204`, `304`), and few
//! enough runs of lines. The lines are written as the upstream spelled them (case, spacing): httparse has checked
//! each name and value, and each ends with its CRLF. Answers that go to hyper's server (TLS, HTTP/2, requests the
//! lane hands over) get their lines put into the map first ([`PassedLines::take_lines`], `server::Answering`).
//! Written here because neither `http` nor hyper has a way to carry a head as bytes.

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderValue;

use super::names::{folded_eq, header_name};
use super::pool::AnswerBody;
use crate::body::Body;
use crate::connection::Tracked;

/// Most runs of consecutive kept lines: an answer whose kept lines are split into more (by several lines left out
/// between them) goes into the map instead.
const RUNS: usize = 4;

/// Header lines of an answer, as spans of its bytes (each run ends with its last line's CRLF).
#[derive(Debug)]
pub struct Lines {
    data: Bytes,
    runs: [(u32, u32); RUNS],
    count: u8,
    dated: bool,
}

/// What a header line is to the wire client and the forwarder (its name compared without case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    /// `x-request-id`: the observe layer sets the request's own on every answer it passes.
    RequestId,
    Date,
    /// Another hop-by-hop name (`te`, `trailer`, `upgrade`, `proxy-*`): the forwarder strips it from a map.
    OtherHop,
    Other,
}

impl Kind {
    /// The kind of the header name `raw` (a token httparse accepted).
    pub fn of(raw: &[u8]) -> Kind {
        let is = |name: &str| folded_eq(raw, name.as_bytes());
        match raw.len() {
            2 if is("te") => Kind::OtherHop,
            4 if is("date") => Kind::Date,
            7 if is("trailer") || is("upgrade") => Kind::OtherHop,
            10 if is("connection") => Kind::Connection,
            10 if is("keep-alive") => Kind::KeepAlive,
            12 if is("x-request-id") => Kind::RequestId,
            14 if is("content-length") => Kind::ContentLength,
            16 if is("proxy-connection") => Kind::OtherHop,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            18 if is("proxy-authenticate") => Kind::OtherHop,
            19 if is("proxy-authorization") => Kind::OtherHop,
            _ => Kind::Other,
        }
    }
}

impl Lines {
    /// The lines of `headers` (httparse's, parsed from `data`, whose head is `head_len` bytes) whose bits are set in
    /// `kept`, or `None` when one of them does not end with CRLF or they fall into more than [`RUNS`] runs.
    pub fn keep(
        data: &Bytes,
        headers: &[httparse::Header<'_>],
        head_len: usize,
        kept: u128,
        dated: bool,
    ) -> Option<Box<Lines>> {
        let base = data.as_ptr() as usize;
        let start = |i: usize| match headers.get(i) {
            Some(h) => h.name.as_ptr() as usize - base,
            // The blank line's start.
            None => head_len - 2,
        };
        // The blank line too must be a CRLF (its start is found from the end).
        if data.get(head_len - 4..head_len)? != b"\r\n\r\n" {
            return None;
        }
        let mut lines = Lines { data: data.clone(), runs: [(0, 0); RUNS], count: 0, dated };
        let mut bits = kept;
        while bits != 0 {
            let first = bits.trailing_zeros() as usize;
            let len = (bits >> first).trailing_ones() as usize;
            bits &= !(((1u128 << len) - 1) << first);
            if usize::from(lines.count) == RUNS {
                return None;
            }
            let (from, to) = (start(first), start(first + len));
            // Each line of the run ends where the next begins: with CRLF, not a bare LF.
            if (first + 1..=first + len).any(|i| data.get(start(i) - 2..start(i)) != Some(b"\r\n")) {
                return None;
            }
            lines.runs[usize::from(lines.count)] = (from as u32, to as u32);
            lines.count += 1;
        }
        Some(Box::new(lines))
    }

    /// Whether a `date` line is among them.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// Appends the lines, CRLFs included, to a head being written.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for &(from, to) in &self.runs[..usize::from(self.count)] {
            out.extend_from_slice(&self.data[from as usize..to as usize]);
        }
    }

    /// Puts the lines into `headers` (appended, in order), for an answer that goes to hyper's server.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for &(from, to) in &self.runs[..usize::from(self.count)] {
            let run = &self.data[from as usize..to as usize];
            for line in run.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
                let value = self.data.slice_ref(line[colon + 1..].trim_ascii());
                // httparse accepted both when the answer was read.
                if let (Ok(name), Ok(value)) = (header_name(&line[..colon]), HeaderValue::from_maybe_shared(value)) {
                    headers.append(name, value);
                }
            }
        }
    }
}

/// A response body that may carry its answer's header lines as [`Lines`].
pub trait PassedLines {
    /// The lines, if they were kept as bytes.
    fn lines(&self) -> Option<&Lines>;
    /// Takes the lines out (for them to go into the map).
    fn take_lines(&mut self) -> Option<Box<Lines>>;
}

impl PassedLines for AnswerBody {
    fn lines(&self) -> Option<&Lines> {
        match self {
            AnswerBody::Left(_) => None,
            AnswerBody::Right(wire) => wire.lines(),
        }
    }

    fn take_lines(&mut self) -> Option<Box<Lines>> {
        match self {
            AnswerBody::Left(_) => None,
            AnswerBody::Right(wire) => wire.take_lines(),
        }
    }
}

impl PassedLines for Body {
    fn lines(&self) -> Option<&Lines> {
        match self {
            Body::Upstream { inner, .. } => inner.lines(),
            _ => None,
        }
    }

    fn take_lines(&mut self) -> Option<Box<Lines>> {
        match self {
            Body::Upstream { inner, .. } => inner.take_lines(),
            _ => None,
        }
    }
}

impl<B: PassedLines> PassedLines for Tracked<B> {
    fn lines(&self) -> Option<&Lines> {
        self.inner().lines()
    }

    fn take_lines(&mut self) -> Option<Box<Lines>> {
        self.inner_mut().take_lines()
    }
}

/// Puts the kept lines of `res`'s body, if any, into its map, with the `content-length` they leave out: for an
/// answer that goes to hyper's server (whose HTTP/2 side sends no length for a body that is already finished).
pub fn into_map<B: PassedLines + http_body::Body>(res: &mut http::Response<B>) {
    if let Some(lines) = res.body_mut().take_lines() {
        lines.append_to(res.headers_mut());
        if let Some(n) = res.body().size_hint().exact() {
            res.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &'static [u8], kept: impl Fn(&httparse::Header<'_>) -> bool) -> (Option<Box<Lines>>, Bytes) {
        let data = Bytes::from_static(head);
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut res = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(len) = res.parse(&data).unwrap() else { panic!("partial") };
        let mask = res.headers.iter().enumerate().filter(|(_, h)| kept(h)).fold(0u128, |m, (i, _)| m | 1 << i);
        (Lines::keep(&data, res.headers, len, mask, false), data)
    }

    fn written(lines: &Lines) -> String {
        let mut out = Vec::new();
        lines.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn kinds_are_found_in_any_case() {
        assert_eq!(Kind::of(b"Content-Length"), Kind::ContentLength);
        assert_eq!(Kind::of(b"TRANSFER-ENCODING"), Kind::TransferEncoding);
        assert_eq!(Kind::of(b"connection"), Kind::Connection);
        assert_eq!(Kind::of(b"Keep-Alive"), Kind::KeepAlive);
        assert_eq!(Kind::of(b"X-Request-Id"), Kind::RequestId);
        assert_eq!(Kind::of(b"Date"), Kind::Date);
        for hop in ["TE", "Trailer", "Upgrade", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization"] {
            assert_eq!(Kind::of(hop.as_bytes()), Kind::OtherHop, "{hop}");
        }
        // Every name the forwarder strips from a map is one that keeps the lines out of `Lines` or out of the map.
        for hop in super::super::headers::HOP_BY_HOP.iter().map(http::HeaderName::as_str).chain(["te"]) {
            assert_ne!(Kind::of(hop.to_ascii_uppercase().as_bytes()), Kind::Other, "{hop}");
        }
        for other in ["Server", "Content-Type", "x-request-ie", "dates", "t"] {
            assert_eq!(Kind::of(other.as_bytes()), Kind::Other, "{other}");
        }
    }

    #[test]
    fn kept_lines_are_written_as_they_came_and_left_out_ones_are_not() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nContent-Length: 2\r\nX-Request-Id: up\r\nX-A:  b c\r\nConnection: keep-alive\r\n\r\nhi";
        let (lines, _) = parsed(head, |h| {
            !matches!(Kind::of(h.name.as_bytes()), Kind::ContentLength | Kind::RequestId | Kind::Connection)
        });
        let lines = lines.expect("kept");
        assert_eq!(written(&lines), "Server: nginx\r\nDate: x\r\nX-A:  b c\r\n");
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        let pairs: Vec<_> = map.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(pairs, [("server", "nginx"), ("date", "x"), ("x-a", "b c")]);
    }

    #[test]
    fn bare_line_feeds_and_too_many_runs_are_not_kept() {
        assert!(parsed(b"HTTP/1.1 200 OK\nServer: a\nX-B: c\n\n", |_| true).0.is_none());
        assert!(parsed(b"HTTP/1.1 200 OK\r\nServer: a\nX-B: c\r\n\r\n", |_| true).0.is_none());
        assert!(parsed(b"HTTP/1.1 200 OK\r\nServer: a\r\nX-B: c\r\n\n", |_| true).0.is_none());
        let many = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\n\r\n";
        let odd = |h: &httparse::Header<'_>| h.name.as_bytes()[0] % 2 == 1;
        assert!(parsed(many, odd).0.is_none(), "five runs");
        let four = |h: &httparse::Header<'_>| odd(h) && h.name != "I";
        assert_eq!(written(&parsed(many, four).0.expect("four runs")), "A: 1\r\nC: 3\r\nE: 5\r\nG: 7\r\n");
        let (none, _) = parsed(b"HTTP/1.1 204 No Content\r\nServer: a\r\n\r\n", |_| false);
        assert_eq!(written(&none.expect("no runs")), "");
    }
}

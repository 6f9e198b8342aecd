//! The wire client against a scripted upstream on an in-memory stream: response framing, connection reuse, and
//! what it refuses.

use std::sync::Mutex;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;

/// A pool of one kind of connection, for the tests.
#[derive(Default)]
#[expect(clippy::vec_box, reason = "as the pool keeps them")]
struct Kept(Mutex<Vec<Box<Conn<DuplexStream>>>>);

impl Home<DuplexStream> for Kept {
    fn put(&self, conn: Box<Conn<DuplexStream>>) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Kept {
    fn take(&self) -> Option<Box<Conn<DuplexStream>>> {
        self.0.lock().unwrap().pop()
    }
}

/// Why an exchange failed.
fn error_of(f: Failure) -> String {
    match f {
        Failure::Unsent(e) | Failure::Failed(e) => e.to_string(),
        Failure::TimedOut => "timed out".to_owned(),
    }
}

/// A deadline no test reaches.
fn far() -> Instant {
    Instant::now() + std::time::Duration::from_secs(3600)
}

/// What the client got: status, headers, body (or the error), and whether the connection went home.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, String>,
    trailers: Option<HeaderMap>,
    reused: bool,
    request: String,
    /// The header lines kept as bytes, as the lane writes them.
    lines: Option<String>,
}

/// The `traceparent` line [`encode`] adds.
const TRACEPARENT_LINE: &str = "traceparent: 00-00000000000000000000000000000abc-0000000000000012-01\r\n";

/// The head the wire client writes for `req`, with the lines an attempt adds: `host: up.test` and a `traceparent`.
fn encode(req: &Request<OutBody>) -> Encoded {
    encode_keeping(req, false)
}

/// [`encode`], asking for the answer's lines as bytes when `keep_lines`.
fn encode_keeping(req: &Request<OutBody>, keep_lines: bool) -> Encoded {
    static HOST: HeaderValue = HeaderValue::from_static("up.test");
    let trace = crate::telemetry::TraceContext { trace_id: 0xabc, span_id: 0x12, flags: 1, tracestate: None };
    super::encode(req, &Added { host: &HOST, trace: Some(&trace), forwarded: None }, keep_lines)
}

fn get(method: Method, body: &'static [u8]) -> Request<OutBody> {
    let body = if body.is_empty() { OutBody::Empty } else { OutBody::Full(Some(Bytes::from_static(body))) };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = "http://up.test/p?q=1".parse().unwrap();
    req.headers_mut().insert(header::HOST, HeaderValue::from_static("up.test"));
    req
}

/// Reads one request head (and a body of its `content-length`) from the upstream's side.
async fn read_request(up: &mut DuplexStream) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if up.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        seen.push(byte[0]);
    }
    let text = String::from_utf8(seen).unwrap();
    let length =
        text.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.trim().parse::<usize>().unwrap());
    let mut body = vec![0; length];
    up.read_exact(&mut body).await.unwrap();
    text + &String::from_utf8(body).unwrap()
}

/// Sends `req` on a fresh connection whose upstream answers with `pieces` (written one at a time, so the client
/// sees them split), then closes if `close`.
async fn exchange(req: Request<OutBody>, pieces: &[&'static [u8]], close: bool) -> Got {
    exchange_keeping(req, pieces, close, false).await
}

/// [`exchange`], asking for the answer's lines as bytes when `keep_lines`.
async fn exchange_keeping(req: Request<OutBody>, pieces: &[&'static [u8]], close: bool, keep_lines: bool) -> Got {
    let kept = Arc::new(Kept::default());
    let (client, mut up) = duplex(1 << 16);
    let pieces = pieces.to_vec();
    let upstream = tokio::spawn(async move {
        let request = read_request(&mut up).await;
        for piece in pieces {
            up.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        if !close {
            // Held open until the client is done.
            let mut rest = Vec::new();
            let _ = up.read_to_end(&mut rest).await;
        }
        request
    });
    let result = Conn::new(client).exchange(&encode_keeping(&req, keep_lines), kept.clone(), far()).await;
    let mut lines = None;
    let (status, headers, body, trailers) = match result {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            lines = body.lines().map(|l| {
                let mut out = Vec::new();
                l.write_to(&mut out);
                String::from_utf8(out).unwrap()
            });
            match body.collect().await {
                Ok(c) => {
                    let trailers = c.trailers().cloned();
                    (parts.status, parts.headers, Ok(c.to_bytes()), trailers)
                }
                Err(e) => (parts.status, parts.headers, Err(e.to_string()), None),
            }
        }
        Err(f) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), Err(error_of(f)), None),
    };
    let reused = kept.take().is_some();
    let request = upstream.await.unwrap();
    Got { status, headers, body, trailers, reused, request, lines }
}

#[tokio::test]
async fn a_small_answer_arrives_whole_and_the_connection_goes_home() {
    let got =
        exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"], false).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["x-a"], "1");
    assert_eq!(got.body.unwrap(), "hello");
    assert!(got.reused);
    assert_eq!(got.request, format!("GET /p?q=1 HTTP/1.1\r\nhost: up.test\r\n{TRACEPARENT_LINE}\r\n"));
}

#[tokio::test]
async fn a_body_split_across_reads_is_read_to_its_length() {
    let got = exchange(
        get(Method::GET, b""),
        &[b"HTTP/1.1 200 OK\r\ncontent-le", b"ngth: 11\r\n\r\nhel", b"lo w", b"orld"],
        false,
    )
    .await;
    assert_eq!(got.body.unwrap(), "hello world");
    assert!(got.reused);
    // A head whose blank line is split across reads, and one trickling in a byte at a time.
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r", b"\nok"], false).await;
    assert_eq!((got.body.unwrap(), got.reused), (Bytes::from("ok"), true));
    let bytes: Vec<&'static [u8]> = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".chunks(1).collect();
    let got = exchange(get(Method::GET, b""), &bytes, false).await;
    assert_eq!((got.body.unwrap(), got.reused), (Bytes::from("ok"), true));
}

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_are_decoded() {
    let got = exchange(
        get(Method::GET, b""),
        &[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=v\r\nhel",
            b"lo\r\n6 \r\n world\r",
            b"\n0\r\nx-trailer: 1\r\n",
            b"\r\n",
        ],
        false,
    )
    .await;
    assert_eq!(got.body.unwrap(), "hello world");
    assert!(got.reused);
    assert_eq!(got.trailers.unwrap()["x-trailer"], "1");
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let got = exchange(
        get(Method::POST, b"data"),
        &[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ],
        false,
    )
    .await;
    assert_eq!(got.status, StatusCode::CREATED);
    assert!(got.headers.get("link").is_none());
    assert_eq!(got.body.unwrap(), "ok");
    assert_eq!(
        got.request,
        format!("POST /p?q=1 HTTP/1.1\r\nhost: up.test\r\n{TRACEPARENT_LINE}content-length: 4\r\n\r\ndata")
    );
}

#[tokio::test]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_refused() {
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"], true).await;
    assert!(got.body.unwrap_err().contains("101"));
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_whatever_their_headers_say() {
    let got = exchange(get(Method::HEAD, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n"], false).await;
    assert_eq!((got.body.unwrap().len(), got.reused), (0, true));
    assert_eq!(got.headers["content-length"], "500");
    for status in ["204 No Content", "304 Not Modified"] {
        let head = format!("HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n").leak().as_bytes();
        let got = exchange(get(Method::GET, b""), &[head], false).await;
        assert_eq!((got.body.unwrap().len(), got.reused), (0, true), "{status}");
    }
}

#[tokio::test]
async fn both_lengths_given_the_chunks_count_and_the_connection_is_not_reused() {
    let got = exchange(
        get(Method::GET, b""),
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
        false,
    )
    .await;
    assert_eq!(got.body.unwrap(), "hello");
    assert!(got.headers.get(header::CONTENT_LENGTH).is_none(), "the stale length would cut the body short");
    assert!(!got.reused);
}

#[tokio::test]
async fn an_answer_without_a_length_is_read_until_close_and_not_reused() {
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it"], true).await;
    assert_eq!((got.body.unwrap(), got.reused), (Bytes::from("all of it"), false));
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw"], true).await;
    assert_eq!((got.body.unwrap(), got.reused), (Bytes::from("raw"), false));
}

#[tokio::test]
async fn connection_close_http_1_0_and_bytes_after_the_body_prevent_reuse() {
    let close = exchange(
        get(Method::GET, b""),
        &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"],
        false,
    );
    assert!(!close.await.reused);
    let old = exchange(get(Method::GET, b""), &[b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\na"], false).await;
    assert_eq!((old.body.unwrap(), old.reused), (Bytes::from("a"), false));
    let kept = exchange(
        get(Method::GET, b""),
        &[b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\na"],
        false,
    );
    assert!(kept.await.reused);
    let both = b"HTTP/1.0 200 OK\r\nconnection: close, keep-alive\r\ncontent-length: 1\r\n\r\na";
    assert!(!exchange(get(Method::GET, b""), &[both], false).await.reused, "close wins");
    let extra =
        exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\naHTTP/1.1 200 OK\r\n"], false);
    let extra = extra.await;
    assert_eq!((extra.body.unwrap(), extra.reused), (Bytes::from("a"), false));
}

#[tokio::test]
async fn hop_by_hop_lines_only_this_connection_needed_are_not_passed_on() {
    let plain = b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nx-a: 1\r\n\
        transfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n";
    let got = exchange(get(Method::GET, b""), &[plain], false).await;
    let names: Vec<&str> = got.headers.keys().map(HeaderName::as_str).collect();
    assert_eq!((names, got.body.unwrap(), got.reused), (vec!["x-a"], Bytes::from("a"), true));
    // A `connection` naming a header stays, for the forwarder to strip both; its `close` still counts.
    let naming = b"HTTP/1.1 200 OK\r\nconnection: x-hop, close\r\nx-hop: 1\r\ncontent-length: 1\r\n\r\na";
    let got = exchange(get(Method::GET, b""), &[naming], false).await;
    assert_eq!((got.headers["connection"].as_bytes(), got.reused), (&b"x-hop, close"[..], false));
    assert_eq!(got.headers["x-hop"], "1");
}

#[tokio::test]
async fn malformed_framing_is_refused() {
    let cases: [&[&'static [u8]]; 9] = [
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"],
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nab"],
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 1,\r\n\r\na"],
        &[b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\na"],
        &[b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"],
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n"],
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nxy0\r\n\r\n"],
        &[b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"],
    ];
    for pieces in cases {
        let got = exchange(get(Method::GET, b""), pieces, true).await;
        assert!(got.body.is_err() && !got.reused, "{:?} was taken", String::from_utf8_lossy(pieces[0]));
    }
}

#[tokio::test]
async fn heads_of_up_to_max_headers_lines_are_taken_and_longer_ones_refused() {
    for (lines, taken) in [(FEW_HEADERS, true), (FEW_HEADERS + 1, true), (MAX_HEADERS, true), (MAX_HEADERS + 1, false)]
    {
        let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for i in 1..lines {
            head.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        head.push_str("\r\nok");
        let got = exchange(get(Method::GET, b""), &[head.leak().as_bytes()], !taken).await;
        assert_eq!(got.body.is_ok(), taken, "{lines} header lines");
        if taken {
            assert_eq!(got.headers.len(), lines);
            assert_eq!(got.headers[format!("x-h{}", lines - 1)], (lines - 1).to_string());
        }
    }
}

#[tokio::test]
async fn a_list_of_one_content_length_is_taken_as_that_length() {
    let got =
        exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\nabcHTTP/1.1"], true).await;
    assert_eq!(got.body.unwrap(), "abc");
    assert_eq!(got.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["3"]);
    assert!(!got.reused, "the bytes after the body still count");
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 2,2\r\n\r\nab"], false).await;
    assert_eq!(got.body.unwrap(), "ab");
    assert!(got.reused);
    // Repeated lines, listed or not: one header.
    let got = exchange(
        get(Method::GET, b""),
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\ncontent-length: 2, 2\r\ncontent-length:\t2 \r\n\r\nab"],
        false,
    )
    .await;
    assert_eq!(got.body.unwrap(), "ab");
    assert_eq!(got.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["2"]);
    for bad in [&b"5,"[..], b",5", b"5,,5", b"5, 5, 6", b"5 5"] {
        assert!(content_length(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test]
async fn an_unusual_reason_phrase_is_passed_on() {
    let kept = Arc::new(Kept::default());
    for (line, reason) in [("HTTP/1.1 200 OK", None), ("HTTP/1.1 200 Fine Indeed", Some("Fine Indeed"))] {
        let (client, mut up) = duplex(1 << 16);
        let answer = format!("{line}\r\ncontent-length: 0\r\n\r\n");
        let upstream = tokio::spawn(async move {
            read_request(&mut up).await;
            up.write_all(answer.as_bytes()).await.unwrap();
            up
        });
        let res = Conn::new(client).exchange(&encode(&get(Method::GET, b"")), kept.clone(), far()).await.unwrap();
        let got = res.extensions().get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes().to_vec());
        assert_eq!(got, reason.map(|r| r.as_bytes().to_vec()), "{line}");
        drop(upstream.await.unwrap());
    }
}

#[tokio::test]
async fn an_answer_sent_before_the_request_was_all_written_is_passed_on() {
    // The upstream reads only the start of a 16 KiB upload, answers 413 and closes: the rest of the write fails,
    // and the answer is what the client gets; the connection is not kept.
    let kept = Arc::new(Kept::default());
    let (client, mut up) = duplex(256);
    let upstream = tokio::spawn(async move {
        let mut start = [0u8; 16];
        up.read_exact(&mut start).await.unwrap();
        up.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!")
            .await
            .unwrap();
    });
    static BODY: [u8; 16 << 10] = [b'x'; 16 << 10];
    let res = Conn::new(client).exchange(&encode(&get(Method::POST, &BODY)), kept.clone(), far()).await.unwrap();
    upstream.await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "too big!");
    assert!(kept.take().is_none());

    // With nothing answered, the write's own error stands.
    let (client, mut up) = duplex(256);
    let upstream = tokio::spawn(async move {
        let mut start = [0u8; 16];
        up.read_exact(&mut start).await.unwrap();
    });
    let failed = Conn::new(client).exchange(&encode(&get(Method::POST, &BODY)), kept.clone(), far()).await.unwrap_err();
    upstream.await.unwrap();
    assert!(matches!(failed, Failure::Failed(WireError::Io(_))), "the write's error: {failed:?}");
}

#[tokio::test]
async fn an_answer_cut_short_is_an_error() {
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"], true).await;
    assert!(got.body.unwrap_err().contains("closed"));
    let got =
        exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab"], true).await;
    assert!(got.body.is_err() && !got.reused);
    let got = exchange(get(Method::GET, b""), &[b"HTTP/1.1 200 O"], true).await;
    assert!(got.body.unwrap_err().contains("closed"));
}

#[tokio::test]
async fn the_body_sets_content_length_and_drops_transfer_encoding() {
    let mut req = get(Method::PUT, b"abc");
    req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    let got = exchange(req, &[b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
    assert_eq!(
        got.request,
        format!("PUT /p?q=1 HTTP/1.1\r\nhost: up.test\r\n{TRACEPARENT_LINE}content-length: 3\r\n\r\nabc")
    );
    let got = exchange(get(Method::POST, b""), &[b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
    assert!(got.request.ends_with("content-length: 0\r\n\r\n"));
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_open_and_takes_nothing() {
    let kept: Arc<Kept> = Arc::new(Kept::default());
    let (client, up) = duplex(1024);
    let mut conn = Conn::new(client);
    assert!(conn.is_open());
    drop(up);
    assert!(!conn.is_open());
    match conn.exchange(&encode(&get(Method::GET, b"")), kept, far()).await {
        Err(Failure::Unsent(_)) => {}
        other => panic!("expected an unsent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reused_connection_carries_the_next_exchange() {
    let kept = Arc::new(Kept::default());
    let (client, mut up) = duplex(1 << 16);
    let upstream = tokio::spawn(async move {
        for body in ["one", "two"] {
            read_request(&mut up).await;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{body}");
            up.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    let mut conn = Conn::new(client);
    for body in ["one", "two"] {
        assert!(conn.is_open());
        let res = conn.exchange(&encode(&get(Method::GET, b"")), kept.clone(), far()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), body);
        conn = kept.take().expect("the connection went home");
    }
    upstream.await.unwrap();
}

#[tokio::test]
async fn a_reused_connection_reads_the_next_answer_into_the_room_its_buffer_kept() {
    let kept = Arc::new(Kept::default());
    let (client, mut up) = duplex(1 << 16);
    let answer = |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{body}");
    let upstream = tokio::spawn(async move {
        for body in ["one", "two"] {
            read_request(&mut up).await;
            up.write_all(answer(body).as_bytes()).await.unwrap();
        }
    });
    let mut conn = Conn::new(client);
    let mut bodies = Vec::new();
    for body in ["one", "two"] {
        let res = conn.exchange(&encode(&get(Method::GET, b"")), kept.clone(), far()).await.unwrap();
        // The body as read, without a copy (and kept alive: the buffer stays shared with it).
        let data = res.into_body().frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, body);
        bodies.push(data);
        conn = kept.take().expect("the connection went home");
        assert!(conn.buf.is_empty() && conn.buf.capacity() > 0 && conn.buf.capacity() <= READ_CHUNK);
    }
    // The second answer was read into the same allocation, right after the first: no new buffer per answer.
    assert_eq!(bodies[1].as_ptr() as usize, bodies[0].as_ptr() as usize + answer("two").len());
    upstream.await.unwrap();
}

#[test]
fn only_small_buffered_requests_without_upgrade_are_eligible() {
    assert!(eligible(&get(Method::GET, b"")));
    assert!(eligible(&get(Method::POST, b"x")));
    let big = Request::new(OutBody::Full(Some(Bytes::from(vec![0; REPLAY_LIMIT as usize + 1]))));
    assert!(!eligible(&big));
    let mut upgrade = get(Method::GET, b"");
    upgrade.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(!eligible(&upgrade));
    assert!(!eligible(&get(Method::CONNECT, b"")));
}

/// An upstream on `up` that reads each request and answers the n-th after `delays[n]` (paused time).
fn slow_upstream(mut up: DuplexStream, delays: &'static [u64]) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for &delay in delays {
            read_request(&mut up).await;
            tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
            if up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
    })
}

/// One exchange on `conn` with a deadline `secs` from now: the connection back when answered.
async fn exchange_within(
    conn: Box<Conn<DuplexStream>>,
    kept: &Arc<Kept>,
    secs: u64,
) -> Option<Box<Conn<DuplexStream>>> {
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    match conn.exchange(&encode(&get(Method::GET, b"")), kept.clone(), deadline).await {
        Ok(res) => {
            assert!(Instant::now() < deadline);
            assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
            Some(kept.take().expect("the connection went home"))
        }
        Err(Failure::TimedOut) => {
            assert!(Instant::now() >= deadline, "not before the deadline");
            None
        }
        Err(other) => panic!("expected an answer or a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_connections_timer_keeps_each_exchanges_own_deadline() {
    // One timer per connection, moved to each exchange's deadline: later ones (the timer's expiry moved without
    // filing it again), an earlier one (filed again: answered here; that it ends an exchange at that deadline is the
    // next test's), and one after the timer fired while the connection was idle.
    let kept = Arc::new(Kept::default());
    let (client, up) = duplex(1 << 16);
    let upstream = slow_upstream(up, &[1, 1, 1, 0, 30]);
    let mut conn = Conn::new(client);
    for secs in [5, 10, 2] {
        conn = exchange_within(conn, &kept, secs).await.expect("answered before its deadline");
    }
    tokio::time::sleep(std::time::Duration::from_secs(60)).await; // the last deadline passes while idle
    conn = exchange_within(conn, &kept, 1).await.expect("answered at once");
    // The upstream takes 30 s: the deadline 20 s away ends the exchange, not the 1 s one before it.
    assert!(exchange_within(conn, &kept, 20).await.is_none());
    upstream.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_second_exchange_ends_at_its_own_deadline_whichever_the_timer_had() {
    // The timer is filed by a first exchange; the second one's answer comes after 5 s. A later deadline (10 s, after
    // a first of 1 s) does not cut it at the earlier one; an earlier deadline (2 s, after a first of 10 s) ends it.
    for (first, second, answered) in [(1, 10, true), (10, 2, false)] {
        let kept = Arc::new(Kept::default());
        let (client, up) = duplex(1 << 16);
        let upstream = slow_upstream(up, &[0, 5]);
        let conn = exchange_within(Conn::new(client), &kept, first).await.unwrap();
        assert_eq!(exchange_within(conn, &kept, second).await.is_some(), answered, "{first} s, then {second} s");
        upstream.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_body_after_a_head_in_time_has_no_deadline() {
    let kept = Arc::new(Kept::default());
    let (client, mut up) = duplex(1 << 16);
    let upstream = tokio::spawn(async move {
        read_request(&mut up).await;
        up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        up.write_all(b"cd").await.unwrap();
        up
    });
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let res = Conn::new(client).exchange(&encode(&get(Method::GET, b"")), kept.clone(), deadline).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "abcd");
    assert!(Instant::now() > deadline, "the body's end came after the deadline");
    drop(upstream.await.unwrap());
}

/// The exchange's failure, or a panic if it is not over within a minute (paused time).
async fn failure_within_a_minute<T>(conn: Box<Conn<T>>, req: Request<OutBody>, home: Arc<dyn Home<T>>) -> Failure
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let encoded = encode(&req);
    let exchange = conn.exchange(&encoded, home, deadline);
    let failed = tokio::time::timeout(std::time::Duration::from_secs(60), exchange).await.expect("over").unwrap_err();
    assert!(Instant::now() >= deadline, "not before the deadline");
    failed
}

#[tokio::test(start_paused = true)]
async fn a_write_the_upstream_does_not_take_ends_at_the_deadline() {
    let (client, _up) = duplex(256); // the upstream never reads
    static BODY: [u8; 16 << 10] = [b'x'; 16 << 10];
    let failed = failure_within_a_minute(Conn::new(client), get(Method::POST, &BODY), Arc::new(Kept::default())).await;
    assert!(matches!(failed, Failure::TimedOut), "{failed:?}");
}

/// A connection that takes every write into a buffer (as TLS does) and never flushes it, nor answers.
struct NeverFlushed;

impl AsyncRead for NeverFlushed {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for NeverFlushed {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// Keeps nothing.
struct Nowhere;

impl<T> Home<T> for Nowhere {
    fn put(&self, _: Box<Conn<T>>) {}
}

#[tokio::test(start_paused = true)]
async fn a_flush_that_never_ends_ends_at_the_deadline() {
    let failed = failure_within_a_minute(Conn::new(NeverFlushed), get(Method::GET, b""), Arc::new(Nowhere)).await;
    assert!(matches!(failed, Failure::TimedOut), "{failed:?}");
}

#[tokio::test]
async fn informational_answers_without_end_end_at_the_deadline() {
    // An upstream that sends 1xx answers as fast as it can (each is skipped, none is final): the deadline ends it.
    // In real time: paused time would never move, the runtime being never idle. (The case of reads that are always
    // ready until the task's cooperative budget is spent, which the timer being polled outside that budget covers,
    // needs a sender faster than the reader; an in-memory pipe in one runtime is not.)
    let (client, mut up) = duplex(1 << 16);
    let upstream = tokio::spawn(async move {
        read_request(&mut up).await;
        while up.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").await.is_ok() {}
    });
    let deadline = Instant::now() + std::time::Duration::from_millis(200);
    let encoded = encode(&get(Method::GET, b""));
    let exchange = Conn::new(client).exchange(&encoded, Arc::new(Kept::default()), deadline);
    let failed = tokio::time::timeout(std::time::Duration::from_secs(20), exchange).await.expect("over").unwrap_err();
    assert!(matches!(failed, Failure::TimedOut), "{failed:?}");
    upstream.await.unwrap();
}

#[tokio::test]
async fn lines_asked_for_as_bytes_are_kept_as_the_upstream_wrote_them_and_the_map_stays_empty() {
    let nginx =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\n\
        Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
    let got = exchange_keeping(get(Method::GET, b""), &[nginx], false, true).await;
    let lines = got.lines.as_deref();
    assert_eq!(lines, Some("Server: nginx\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\n"));
    assert!(got.headers.is_empty());
    assert_eq!((got.body.unwrap(), got.reused), (Bytes::from("hello"), true));
    // Not asked for: the map, as before.
    let got = exchange(get(Method::GET, b""), &[nginx], false).await;
    assert_eq!((got.lines, got.headers.len()), (None, 4));

    // Left out: the framing lines (the body is decoded here; a conflicting or listed length is the framing's), the
    // connection's own lines, and the upstream's `x-request-id` (the observe layer sets the request's).
    let cases: [(&'static [u8], &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\nx-request-id: up\r\nx-b: 2\r\n\r\n1\r\na\r\n0\r\n\r\n",
            "x-a: 1\r\nx-b: 2\r\n",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            "x-a: 1\r\n",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1, 1\r\nKeep-Alive: timeout=5\r\nx-a:1 \r\n\r\na", "x-a:1 \r\n"),
    ];
    for (answer, lines) in cases {
        let got = exchange_keeping(get(Method::GET, b""), &[answer], false, true).await;
        assert_eq!(got.lines.as_deref(), Some(lines), "{}", String::from_utf8_lossy(answer));
        assert_eq!((got.headers.len(), got.body.unwrap()), (0, Bytes::from("a")));
    }

    // Into the map instead: a hop-by-hop line the forwarder strips from the map, a bare line feed, no body.
    let cases: [(&'static [u8], usize); 5] = [
        (b"HTTP/1.1 200 OK\r\nconnection: x-hop\r\nx-hop: 1\r\ncontent-length: 1\r\n\r\na", 3),
        (b"HTTP/1.1 200 OK\r\ntrailer: x-t\r\nx-a: 1\r\ncontent-length: 1\r\n\r\na", 3),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\ncontent-length: 1\r\n\r\na", 3),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 1\r\n\na", 2),
        (b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n", 1),
    ];
    for (answer, lines) in cases {
        let got = exchange_keeping(get(Method::GET, b""), &[answer], false, true).await;
        assert_eq!((got.lines, got.headers.len()), (None, lines), "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn kept_lines_go_into_the_map_with_the_length_they_leave_out_and_overlong_names_keep_the_map() {
    let kept = Arc::new(Kept::default());
    let (client, mut up) = duplex(1 << 18);
    tokio::spawn(async move {
        read_request(&mut up).await;
        up.write_all(b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok").await.unwrap();
        let mut rest = Vec::new();
        let _ = up.read_to_end(&mut rest).await;
    });
    let req = encode_keeping(&get(Method::GET, b""), true);
    let mut res = Conn::new(client).exchange(&req, kept, far()).await.unwrap();
    assert!(res.headers().is_empty());
    crate::upstream::into_map(&mut res);
    let pairs: Vec<_> = res.headers().iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
    assert_eq!(pairs, [("server", "up"), ("x-a", "1"), ("content-length", "2")]);
    assert!(res.body().lines().is_none());

    // A name longer than `HeaderName` takes: refused, as on the map path.
    let long = format!("HTTP/1.1 200 OK\r\n{}: 1\r\ncontent-length: 1\r\n\r\na", "x".repeat(MAX_NAME + 1));
    let long: &'static [u8] = Box::leak(long.into_bytes().into_boxed_slice());
    let got = exchange_keeping(get(Method::GET, b""), &[long], false, true).await;
    assert!(got.body.unwrap_err().contains("header name"));
}

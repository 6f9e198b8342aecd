//! A template (`{header.x}`, `{path.id}`, `{body./a/b}`, …) parsed and rendered against a request whose body is the
//! rest of the input (after the first NUL byte): parse errors and missing values are answers, never panics.
#![no_main]

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use sluice::router::Params;
use sluice::template::{RenderContext, Template};

fuzz_target!(|data: &[u8]| {
    let (source, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else { return };
    let Ok(template) = Template::parse(source) else { return };
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let mut params = Params::default();
    params.push("id", "42");
    let method = Method::POST;
    let cx = RenderContext::new(&method, &headers, &params, Some("a=1&b=%20x"), "route").with_body(body);
    let _ = template.render(&cx);
});

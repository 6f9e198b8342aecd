//! Protocol upgrades (WebSocket and any `Upgrade:` protocol) pass through: the upgrade headers are kept, and once
//! the upstream answers `101 Switching Protocols` the two upgraded connections are spliced together.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::upstream::{AnswerBody, InFlight};

/// The `Upgrade` protocol a request asks for, when its `Connection` header carries the `upgrade` token.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Puts the upgrade headers back after hop-by-hop headers were removed.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// When the upstream switched protocols, splices the client's and the upstream's connections in a task that
/// holds the in-flight guard until both sides close. Returns the guard back when there is nothing to splice.
pub fn splice(client: OnUpgrade, upstream: &mut Response<AnswerBody>, guard: InFlight) -> Option<InFlight> {
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Some(guard);
    }
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
        }
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_upgrade_requests() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(requested(&h), None, "Connection: upgrade is required");
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(requested(&h).unwrap(), "websocket");
    }
}

//! Active health checks: `GET health_check.path` on every endpoint each `interval`; `unhealthy_threshold` failures
//! in a row take an endpoint out of the rotation, `healthy_threshold` successes bring it back.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use http::Request;
use http::uri::PathAndQuery;

use super::added::Added;
use super::endpoint::Endpoint;
use super::group::Upstream;
use crate::body::OutBody;
use crate::config::HealthCheckConfig;

/// Checks `upstream` until it is dropped (e.g. replaced by a config reload).
pub async fn health_loop(upstream: Weak<Upstream>, hc: HealthCheckConfig) {
    loop {
        let Some(up) = upstream.upgrade() else { return };
        let endpoints = up.endpoints().clone();
        let checks = endpoints.iter().map(|ep| async {
            let ok = check(&up, ep, &hc).await;
            let streak = ep.check_streak.load(Ordering::Relaxed);
            let streak = match (ok, streak) {
                (true, s) if s > 0 => s + 1,
                (true, _) => 1,
                (false, s) if s < 0 => s - 1,
                (false, _) => -1,
            };
            ep.check_streak.store(streak.clamp(-1000, 1000), Ordering::Relaxed);
            let healthy = ep.healthy.load(Ordering::Relaxed);
            if healthy && -streak >= hc.unhealthy_threshold as i32 {
                tracing::warn!(upstream = %up.name, endpoint = %ep.url, "endpoint failed its health checks");
                ep.healthy.store(false, Ordering::Relaxed);
            } else if !healthy && streak >= hc.healthy_threshold as i32 {
                tracing::info!(upstream = %up.name, endpoint = %ep.url, "endpoint passes its health checks again");
                ep.healthy.store(true, Ordering::Relaxed);
            }
        });
        futures_util::future::join_all(checks).await;
        drop(up);
        tokio::time::sleep(hc.interval.0).await;
    }
}

/// One check: a 2xx within `timeout` is a pass.
async fn check(up: &Upstream, ep: &Endpoint, hc: &HealthCheckConfig) -> bool {
    let Ok(path) = PathAndQuery::try_from(hc.path.as_str()) else { return false };
    let Ok(req) = Request::get(up.uri(ep, &path)).body(OutBody::Empty) else { return false };
    let added = Added { host: &ep.host_header, trace: None, forwarded: None };
    let deadline = super::call::after(tokio::time::Instant::now(), hc.timeout.0);
    match up.send(ep, req, added, deadline, false).await {
        Ok((res, conn)) => {
            let ok = res.status().is_success();
            // Read the (small) body so the connection can be reused.
            if http_body_util::BodyExt::collect(res.into_body()).await.is_ok()
                && let Some(conn) = conn
            {
                conn.release();
            }
            ok
        }
        _ => false,
    }
}

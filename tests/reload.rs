//! Hot reload through the real binary: `sluice run --config FILE` on free ports in front of real HTTP upstreams.
//! A valid change serves at once after `POST /reload`, after `SIGHUP` (which must not kill the process) and after
//! the file is rewritten, replaced by rename or swapped as a Kubernetes ConfigMap does; an invalid file is
//! rejected with every problem while the old routes keep serving; a request in flight across a swap finishes on
//! the old config while the next one on the same connection sees the new one; ejections, rate-limit buckets,
//! remembered `Idempotency-Key`s and broker connections that a reload did not touch survive it; subscriptions are
//! added, changed and removed by a reload (and listed by `/routes`); settings only a restart applies are reported as
//! such.

mod broker_support;
mod process_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use broker_support::common::*;
use broker_support::{Amqp, RabbitLock, amqp_url, brokers_sh, random_name};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use process_support::{Launched, free_port};
use serde_json::Value;

// =============================================================================================================
// The binary
// =============================================================================================================

/// The `[server]` and `[telemetry]` tables of a gateway on `port` (admin on `admin`), logging JSON lines.
fn server(port: u16, admin: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "5s"

[telemetry]
log_format = "json"
access_log = false
"#
    )
}

/// `[upstreams.NAME]` with `endpoints` and the extra `keys` (TOML lines).
fn upstream(name: &str, endpoints: &[&Upstream], keys: &str) -> String {
    let urls: Vec<String> = endpoints.iter().map(|u| format!("{:?}", u.url())).collect();
    format!("\n[upstreams.{name}]\nendpoints = [{}]\n{keys}\n", urls.join(", "))
}

/// A route `name` forwarding `path_prefix` to `upstream`, without retries.
fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!(
        "\n[[routes]]\nname = {name:?}\nmatch = {{ path_prefix = {prefix:?} }}\n\
         forward = {{ upstream = {upstream:?} }}\nretry = {{ max_retries = 0 }}\n"
    )
}

/// A running `sluice run --config FILE`, killed when dropped.
struct Sluice {
    proc: Launched,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
}

impl std::ops::Deref for Sluice {
    type Target = Launched;

    fn deref(&self) -> &Launched {
        &self.proc
    }
}

impl std::ops::DerefMut for Sluice {
    fn deref_mut(&mut self) -> &mut Launched {
        &mut self.proc
    }
}

impl Sluice {
    /// Starts the binary with `[server]`/`[telemetry]` from [`server`] followed by `rest`, in `routes.toml`.
    async fn start(test: &str, rest: &str) -> Sluice {
        Sluice::launch(test, |dir, port, admin| {
            let path = dir.join("routes.toml");
            std::fs::write(&path, server(port, admin) + rest).unwrap();
            path
        })
        .await
    }

    /// Starts the binary on two free ports with the config file that `files` writes into the fresh directory
    /// (given the ports) and returns the path of.
    async fn launch(test: &str, files: impl Fn(&Path, u16, u16) -> PathBuf) -> Sluice {
        let proc = Launched::start(&format!("reload-{test}"), &[], files).await;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Sluice { proc, client }
    }

    /// The file body for `rest` after this gateway's `[server]`/`[telemetry]`.
    fn config(&self, rest: &str) -> String {
        server(self.port, self.admin_port) + rest
    }

    /// Rewrites the config file in place (truncate, write).
    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    /// Replaces the config file by renaming a new file over it, as editors do.
    fn replace(&self, text: &str) {
        let tmp = self.dir.join("routes.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// `GET path` on the public listener (a pooled, kept-alive client).
    async fn get(&self, path: &str) -> Resp {
        send(&self.client, Request::get(self.url(path)).body(empty()).unwrap()).await
    }

    /// `(status, body)` of `GET path`.
    async fn answer(&self, path: &str) -> (u16, String) {
        let r = self.get(path).await;
        (r.status, r.text())
    }

    /// `POST /reload` on the admin listener.
    async fn post_reload(&self) -> Resp {
        send(&self.client, Request::post(self.admin_url("/reload")).body(empty()).unwrap()).await
    }

    /// `kill -HUP`.
    fn hangup(&self) {
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -HUP");
    }

    /// Whether the process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `sluice_config_reloads_total{result}`.
    async fn reloads(&self, result: &str) -> f64 {
        let r = send(&self.client, Request::get(self.admin_url("/metrics")).body(empty()).unwrap()).await;
        assert_eq!(r.status, 200, "/metrics");
        let series = format!("sluice_config_reloads_total{{result=\"{result}\"}}");
        metric(&r.text(), &series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", r.text()))
    }

    /// Every JSON log line.
    fn log(&self) -> Vec<Value> {
        self.stderr().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Log lines whose message is `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        self.log().into_iter().filter(|l| l["message"] == message).collect()
    }

    /// `(trigger, routes)` of every accepted reload, in order.
    fn accepted(&self) -> Vec<(String, u64)> {
        self.logged("config reloaded")
            .iter()
            .map(|l| (l["trigger"].as_str().unwrap_or_default().to_owned(), l["routes"].as_u64().unwrap_or(0)))
            .collect()
    }
}

/// The answer `response` brings, body read completely; a generous deadline turns a request stuck on the wrong
/// (gated) upstream into a failure instead of a hang.
async fn answered<F, E>(response: F) -> Resp
where
    F: std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, E>>,
    E: std::fmt::Debug,
{
    let res = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("an answer within 30 s (stuck on an upstream that holds it?)")
        .expect("the gateway answers");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("the response body arrives").to_bytes();
    Resp { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// Lets the file watcher act on the last write (its debounce is 300 ms), so that a redundant reload it might make
/// shows in the log on its own instead of merging into the next write. Only ever makes a test stricter.
async fn let_the_watcher_settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

// =============================================================================================================
// 1. A valid change serves at once, whatever asked for the reload
// =============================================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_change_serves_after_post_reload_sighup_rewrite_and_rename() {
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let ups = upstream("a", &[&a], "") + &upstream("b", &[&b], "");
    let mut gw = Sluice::start("valid", &(ups.clone() + &route("one", "/one", "a"))).await;
    assert_eq!(gw.answer("/one").await, (200, "a".to_owned()));
    assert_eq!(gw.get("/two").await.status, 404);
    assert_eq!(gw.reloads("success").await, 0.0);

    // POST /reload: a new route, serving as soon as the answer is there.
    gw.write(&gw.config(&(ups.clone() + &route("one", "/one", "a") + &route("two", "/two", "b"))));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.stderr());
    let body = r.json();
    assert_eq!(body["reloaded"], true, "{body}");
    assert_eq!(body["trigger"], "admin", "{body}");
    assert_eq!(body["routes"], 2, "{body}");
    assert_eq!(gw.answer("/two").await, (200, "b".to_owned()), "the new route serves at once");
    assert_eq!(gw.answer("/one").await, (200, "a".to_owned()));

    // SIGHUP: route `one` switched to upstream b, route `three` added; the process lives on.
    let v3 = ups.clone() + &route("one", "/one", "b") + &route("two", "/two", "b") + &route("three", "/three", "a");
    gw.write(&gw.config(&v3));
    gw.hangup();
    eventually("SIGHUP's reload serves `three`", async || gw.answer("/three").await == (200, "a".to_owned())).await;
    assert_eq!(gw.answer("/one").await, (200, "b".to_owned()), "route `one` switched upstream");
    assert!(gw.alive(), "SIGHUP must not kill the process:\n{}", gw.stderr());
    eventually("a reload by SIGHUP is logged", async || gw.accepted().iter().any(|(t, _)| t == "sighup")).await;
    // A SIGHUP that changes nothing still reloads (and still does not kill).
    let_the_watcher_settle().await;
    let before = gw.accepted().len();
    gw.hangup();
    eventually("a second SIGHUP reloads", async || gw.accepted().len() == before + 1).await;
    assert_eq!(gw.accepted().last().unwrap(), &("sighup".to_owned(), 3));
    assert!(gw.alive(), "a second SIGHUP must not kill the process either:\n{}", gw.stderr());

    // The file rewritten in place: the watcher reloads by itself.
    let v4 = v3.clone() + &route("four", "/four", "b");
    gw.write(&gw.config(&v4));
    eventually("the rewritten file serves `four`", async || gw.answer("/four").await == (200, "b".to_owned())).await;
    let_the_watcher_settle().await;

    // The file replaced by rename (editors, `mv`): seen as well.
    let v5 = v4.clone() + &route("five", "/five", "a");
    gw.replace(&gw.config(&v5));
    eventually("the renamed file serves `five`", async || gw.answer("/five").await == (200, "a".to_owned())).await;
    let_the_watcher_settle().await;

    // One reload per change: the watcher does not load again what POST /reload or SIGHUP already loaded (it may
    // come first on a slow machine, then the explicit reload follows; never after).
    let accepted = gw.accepted();
    let of = |routes: u64| -> Vec<&str> {
        accepted.iter().filter(|(_, n)| *n == routes).map(|(t, _)| t.as_str()).collect::<Vec<_>>()
    };
    assert!(matches!(of(2).as_slice(), ["admin"] | ["file", "admin"]), "reloads of version 2: {accepted:?}");
    assert!(
        matches!(of(3).as_slice(), ["sighup", "sighup"] | ["file", "sighup", "sighup"]),
        "reloads of version 3: {accepted:?}"
    );
    assert_eq!(of(4), ["file"], "reloads of version 4: {accepted:?}");
    assert_eq!(of(5), ["file"], "reloads of version 5: {accepted:?}");
    eventually("sluice_config_reloads_total{result=\"success\"} counts every reload", async || {
        gw.reloads("success").await == gw.accepted().len() as f64
    })
    .await;
    assert_eq!(gw.reloads("error").await, 0.0);
    assert!(gw.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_swap_of_the_data_link_is_seen() {
    // Kubernetes mounts a ConfigMap as `routes.toml -> ..data/routes.toml`, `..data -> ..<timestamp>`, and
    // updates it by pointing a new `..data_tmp` link at a new directory and renaming it over `..data`.
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let ups = upstream("a", &[&a], "") + &upstream("b", &[&b], "");
    let v1 = ups.clone() + &route("one", "/one", "a");
    let gw = Sluice::launch("configmap", |dir, port, admin| {
        let version = dir.join("..2024_01_01_00_00_00.1");
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("routes.toml"), server(port, admin) + &v1).unwrap();
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/routes.toml", dir.join("routes.toml")).unwrap();
        dir.join("routes.toml")
    })
    .await;
    assert_eq!(gw.answer("/one").await, (200, "a".to_owned()));

    let version = gw.dir.join("..2024_01_01_00_01_00.2");
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("routes.toml"), gw.config(&(ups + &route("one", "/one", "b")))).unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_01_00.2", gw.dir.join("..data_tmp")).unwrap();
    std::fs::rename(gw.dir.join("..data_tmp"), gw.dir.join("..data")).unwrap();
    std::fs::remove_dir_all(gw.dir.join("..2024_01_01_00_00_00.1")).unwrap();

    eventually("the swapped ConfigMap serves", async || gw.answer("/one").await == (200, "b".to_owned())).await;
    eventually("the reload is logged", async || gw.accepted() == [("file".to_owned(), 1)]).await;
    assert_eq!(gw.reloads("success").await, 1.0);
}

// =============================================================================================================
// 2. An invalid file is rejected; the old config keeps serving
// =============================================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_is_rejected_with_every_problem_and_the_old_routes_keep_serving() {
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let ups = upstream("a", &[&a], "") + &upstream("b", &[&b], "");
    let gw = Sluice::start("invalid", &(ups.clone() + &route("one", "/one", "a"))).await;

    // An unknown key, a reference to an upstream that does not exist, a bad duration.
    let bad = ups.clone()
        + &route("one", "/one", "b")
        + "\n[[routes]]\nname = \"typo\"\nmatch = { path_prefix = \"/typo\" }\nforward = { upstream = \"a\", timout = \"1s\" }\n"
        + &route("dangling", "/dangling", "nope")
        + "\n[[routes]]\nname = \"slow\"\nmatch = { path_prefix = \"/slow\" }\nforward = { upstream = \"a\", timeout = \"soon\" }\n";
    // (route label, a word its problem must name)
    let expected =
        [("routes[1] \"typo\"", "timout"), ("routes[2] \"dangling\"", "nope"), ("routes[3] \"slow\"", "soon")];
    gw.write(&gw.config(&bad));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["reloaded"], false, "{body}");
    assert_eq!(body["trigger"], "admin", "{body}");
    let problems: Vec<&str> = body["problems"].as_array().expect("problems").iter().filter_map(Value::as_str).collect();
    for (label, word) in expected {
        assert!(
            problems.iter().any(|p| p.contains(label) && p.contains(word)),
            "no problem names {label} and `{word}`: {body}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{body}");

    // The old config keeps serving, unchanged.
    assert_eq!(gw.answer("/one").await, (200, "a".to_owned()), "route `one` still forwards to a");
    assert_eq!(gw.get("/typo").await.status, 404);
    assert!(gw.reloads("error").await >= 1.0);
    assert_eq!(gw.reloads("success").await, 0.0);

    // The log names every problem (on the reload POST /reload asked for, at least).
    let rejected = gw.logged("config reload rejected");
    for (label, word) in expected {
        assert!(
            rejected.iter().any(|l| l["trigger"] == "admin"
                && l["level"] == "ERROR"
                && l["problem"].as_str().is_some_and(|p| p.contains(label) && p.contains(word))),
            "no log line names {label} and `{word}`:\n{}",
            gw.stderr()
        );
    }
    // Each rejected reload is counted once, and the watcher does not reject again what POST /reload rejected
    // (it may come first on a slow machine; never after).
    let_the_watcher_settle().await;
    let triggers: Vec<String> = gw
        .logged("config reload rejected")
        .iter()
        .filter(|l| l["problem"].as_str().is_some_and(|p| p.contains("timout")))
        .map(|l| l["trigger"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(matches!(triggers.as_slice(), [a] | [_, a] if a == "admin"), "rejections of the bad file: {triggers:?}");
    assert!(triggers.len() == 1 || triggers[0] == "file", "rejections of the bad file: {triggers:?}");
    assert_eq!(gw.reloads("error").await, triggers.len() as f64, "{}", gw.stderr());

    // An invalid file seen by the watcher alone is rejected too.
    gw.write(&gw.config(&(ups.clone() + "\n[bogus]\nkey = 1\n" + &route("one", "/one", "b"))));
    let errors = triggers.len() as f64 + 1.0;
    eventually("the watcher rejects the second bad file", async || gw.reloads("error").await == errors).await;
    assert_eq!(gw.answer("/one").await, (200, "a".to_owned()));
    eventually("the watcher's rejection is logged", async || {
        gw.logged("config reload rejected")
            .iter()
            .any(|l| l["trigger"] == "file" && l["problem"].as_str().is_some_and(|p| p.contains("bogus")))
    })
    .await;

    // A valid file afterwards is accepted again.
    gw.write(&gw.config(&(ups + &route("one", "/one", "b") + &route("two", "/two", "a"))));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], true);
    assert_eq!(gw.answer("/one").await, (200, "b".to_owned()));
    assert_eq!(gw.answer("/two").await, (200, "a".to_owned()));
    assert!(gw.reloads("success").await >= 1.0);
}

// =============================================================================================================
// 3. Requests in flight across a swap
// =============================================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_finishes_on_the_old_config_and_the_next_on_its_connection_sees_the_new() {
    let (old, gate) = gated("old").await;
    let new = Upstream::named("new").await;
    let ups_v1 = upstream("old", &[&old], "") + &upstream("new", &[&new], "");
    let v1 = ups_v1.clone() + &route("slow", "/slow", "old") + &route("held", "/held", "old");
    let gw = Sluice::start("in-flight", &v1).await;

    // One client connection, kept alive throughout.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let (mut conn, connection) =
        hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = |path: &str| Request::get(path).header("host", "gateway").body(empty()).unwrap();

    // The route's upstream changes while a request to it waits for the old upstream.
    let in_flight = tokio::spawn(conn.send_request(request("/slow")));
    eventually("the request reaches the old upstream", async || old.hits() == 1).await;
    let v2 = ups_v1.clone() + &route("slow", "/slow", "new") + &route("held", "/held", "old");
    gw.write(&gw.config(&v2));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.answer("/slow").await, (200, "new".to_owned()), "other connections see the new config");
    gate.add_permits(1);
    let r = answered(async { in_flight.await.unwrap() }).await;
    assert_eq!((r.status, r.text().as_str()), (200, "old"), "the in-flight request ends on the old config");
    conn.ready().await.expect("the connection is kept alive across the reload");
    let r = answered(conn.send_request(request("/slow"))).await;
    assert_eq!((r.status, r.text().as_str()), (200, "new"), "the next request on the connection sees the new config");

    // The route and its upstream removed while a request to it waits.
    conn.ready().await.expect("the connection is kept alive");
    let in_flight = tokio::spawn(conn.send_request(request("/held")));
    eventually("the request reaches the old upstream", async || old.hits() == 2).await;
    let v3 = upstream("new", &[&new], "") + &route("slow", "/slow", "new");
    gw.write(&gw.config(&v3));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["routes"], 1);
    gate.add_permits(1);
    let r = answered(async { in_flight.await.unwrap() }).await;
    assert_eq!((r.status, r.text().as_str()), (200, "old"), "the in-flight request ends on the removed route");
    conn.ready().await.expect("the connection is kept alive across the reload");
    let r = answered(conn.send_request(request("/held"))).await;
    assert_eq!(r.status, 404, "the removed route is gone for the next request on the connection: {}", r.text());
    assert_eq!(old.hits(), 2);
}

// =============================================================================================================
// 4. Ejections survive reloads that keep the endpoint
// =============================================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_endpoint_stays_ejected_across_reloads_that_keep_it() {
    let bad = Upstream::status(500, "bad").await;
    let (good, good2, other) =
        (Upstream::named("good").await, Upstream::named("good2").await, Upstream::named("other").await);
    let outlier = "balance = \"round_robin\"\noutlier = { consecutive_failures = 2, ejection_time = \"1h\" }\n";
    let svc = |keys: &str, endpoints: &[&Upstream]| upstream("svc", endpoints, &format!("{outlier}{keys}"));
    let v1 = svc("", &[&bad, &good]) + &route("svc", "/svc", "svc");
    let gw = Sluice::start("ejection", &v1).await;

    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(gw.get("/svc").await.status);
    }
    assert_eq!(bad.hits(), 2, "ejected after two failures in a row; answers: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 2, "{statuses:?}");

    // A reload that touches only another upstream and route.
    let v2 = svc("", &[&bad, &good])
        + &upstream("other", &[&other], "")
        + &route("svc", "/svc", "svc")
        + &route("other", "/other", "other");
    gw.write(&gw.config(&v2));
    assert_eq!(gw.post_reload().await.status, 200);
    assert_eq!(gw.answer("/other").await, (200, "other".to_owned()));
    for _ in 0..10 {
        assert_eq!(gw.answer("/svc").await, (200, "good".to_owned()), "the ejected endpoint stays out");
    }
    assert_eq!(bad.hits(), 2);

    // A reload that changes the upstream's settings but not its endpoints.
    let v3 = svc("max_concurrent = 64", &[&bad, &good])
        + &upstream("other", &[&other], "")
        + &route("svc", "/svc", "svc")
        + &route("other", "/other", "other");
    gw.write(&gw.config(&v3));
    assert_eq!(gw.post_reload().await.status, 200);
    for _ in 0..10 {
        assert_eq!(gw.answer("/svc").await, (200, "good".to_owned()), "the ejected endpoint stays out");
    }
    assert_eq!(bad.hits(), 2);

    // A reload that adds an endpoint: the kept one is still ejected, the new one takes traffic.
    let v4 = svc("max_concurrent = 64", &[&bad, &good, &good2]) + &route("svc", "/svc", "svc");
    gw.write(&gw.config(&v4));
    assert_eq!(gw.post_reload().await.status, 200);
    for _ in 0..10 {
        assert_eq!(gw.get("/svc").await.status, 200, "the ejected endpoint stays out");
    }
    assert_eq!(bad.hits(), 2);
    assert!(good2.hits() >= 4, "the new endpoint takes its share: {}", good2.hits());
    let m = send(&gw.client, Request::get(gw.admin_url("/metrics")).body(empty()).unwrap()).await.text();
    assert_eq!(metric(&m, "sluice_ejections_total{upstream=\"svc\"}"), Some(1.0), "ejected once, never again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_buckets_survive_a_reload_that_leaves_the_limit_alone() {
    let a = Upstream::named("a").await;
    // One request, then none for a thousand seconds.
    let limited = |burst: u32| {
        format!(
            "\n[[routes]]\nname = \"limited\"\nmatch = {{ path_prefix = \"/limited\" }}\n\
             forward = {{ upstream = \"a\" }}\nrate_limit = {{ per_second = 0.001, burst = {burst} }}\n"
        )
    };
    let gw = Sluice::start("rate-limit", &(upstream("a", &[&a], "") + &limited(1))).await;
    assert_eq!(gw.answer("/limited").await, (200, "a".to_owned()));
    assert_eq!(gw.get("/limited").await.status, 429, "the bucket is empty");

    // A reload that adds another route: the empty bucket stays empty.
    gw.write(&gw.config(&(upstream("a", &[&a], "") + &limited(1) + &route("other", "/other", "a"))));
    assert_eq!(gw.post_reload().await.status, 200);
    assert_eq!(gw.answer("/other").await, (200, "a".to_owned()));
    let r = gw.get("/limited").await;
    assert_eq!(r.status, 429, "a reload does not refill the bucket: {}", r.text());

    // A reload that changes the limit applies the new one at once.
    gw.write(&gw.config(&(upstream("a", &[&a], "") + &limited(2) + &route("other", "/other", "a"))));
    assert_eq!(gw.post_reload().await.status, 200);
    assert_eq!(gw.get("/limited").await.status, 200);
    assert_eq!(gw.get("/limited").await.status, 200);
    assert_eq!(gw.get("/limited").await.status, 429);
}

// =============================================================================================================
// 5. Settings only a restart applies
// =============================================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_listen_is_reported_as_needing_a_restart_and_the_old_listener_keeps_serving() {
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let ups = upstream("a", &[&a], "") + &upstream("b", &[&b], "");
    let gw = Sluice::start("listen", &(ups.clone() + &route("one", "/one", "a"))).await;
    let elsewhere = free_port().await;
    let moved = |rest: &str, access_log: bool| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{elsewhere}\"\nadmin_listen = \"127.0.0.1:{}\"\nshutdown_grace = \"9s\"\n\n\
             [telemetry]\nlog_format = \"json\"\naccess_log = {access_log}\n{rest}",
            gw.admin_port
        )
    };

    gw.write(&moved(&(ups.clone() + &route("one", "/one", "a") + &route("two", "/two", "b")), false));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["reloaded"], true, "the rest of the change applies: {body}");
    assert_eq!(body["restart_needed"], serde_json::json!(["server.listen", "server.shutdown_grace"]), "{body}");
    assert_eq!(gw.answer("/two").await, (200, "b".to_owned()), "the old listener serves the new routes");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", elsewhere)).await.is_err(),
        "nothing listens on the new address"
    );
    eventually("the log says a restart is needed", async || {
        gw.logged("config change needs a restart to take effect")
            .iter()
            .any(|l| l["key"] == "server.listen" && l["level"] == "WARN")
    })
    .await;

    // Still needed at the next reload, and /routes shows the address actually served.
    gw.write(&moved(
        &(ups.clone() + &route("one", "/one", "a") + &route("two", "/two", "b") + &route("three", "/three", "a")),
        false,
    ));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["restart_needed"],
        serde_json::json!(["server.listen", "server.shutdown_grace"]),
        "{}",
        r.text()
    );
    assert_eq!(gw.answer("/three").await, (200, "a".to_owned()));
    let routes = send(&gw.client, Request::get(gw.admin_url("/routes")).body(empty()).unwrap()).await.json();
    assert_eq!(routes["server"]["listen"], format!("127.0.0.1:{}", gw.port), "{routes}");

    // `telemetry.access_log` applies on reload: not reported, and it takes effect.
    gw.write(&moved(&(ups.clone() + &route("one", "/one", "a")), true));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["restart_needed"],
        serde_json::json!(["server.listen", "server.shutdown_grace"]),
        "{}",
        r.text()
    );
    assert_eq!(gw.answer("/one?logged").await.0, 200);
    eventually("the access log is on", async || {
        gw.log().iter().any(|l| l["target"] == "access" && l["path"].as_str().is_some_and(|p| p.starts_with("/one")))
    })
    .await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", elsewhere)).await.is_err());
}

// =============================================================================================================
// 6. Broker producers survive a reload that does not change their broker
// =============================================================================================================

/// RabbitMQ's process ids of the open connections named `name`.
fn amqp_connections(name: &str) -> Vec<String> {
    let listing =
        brokers_sh(&["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"]);
    listing
        .lines()
        .filter(|line| line.contains(&format!("<<\"{name}\">>")) || line.contains(&format!("\"{name}\"")))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_is_kept_across_a_reload_that_does_not_change_the_broker() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let (exchange, queue) = (random_name("reload-x"), random_name("reload-q"));
    amqp.exchange(&exchange, false).await;
    amqp.queue(&queue, &exchange, "k", false).await;
    let broker = random_name("reload");
    let connection_name = format!("sluice-{broker}");
    let a = Upstream::named("a").await;
    let brokers = |confirm_timeout: &str| {
        format!(
            "\n[brokers.{broker:?}]\nkind = \"amqp\"\nurl = {:?}\nconfirm_timeout = {confirm_timeout:?}\n",
            amqp_url()
        )
    };
    let publish = format!(
        "\n[[routes]]\nname = \"events\"\nmatch = {{ path = \"/events\", methods = [\"POST\"] }}\n\
         publish = {{ broker = {broker:?}, exchange = {exchange:?}, routing_key = \"k\" }}\n"
    );
    let gw = Sluice::start("broker", &(brokers("10s") + &publish)).await;
    let post = async |idempotency_key: Option<&str>| {
        let mut req = Request::post(gw.url("/events"));
        if let Some(key) = idempotency_key {
            req = req.header("idempotency-key", key);
        }
        send(&gw.client, req.body(full("event")).unwrap()).await
    };
    eventually("the producer connects", async || amqp_connections(&connection_name).len() == 1).await;
    let first = amqp_connections(&connection_name);
    eventually("a publish is accepted", async || post(None).await.status == 202).await;
    let key = random_name("key");
    let original = post(Some(&key)).await;
    assert_eq!(original.status, 202, "{}", original.text());

    // A reload that adds a forward route and leaves the broker alone.
    gw.write(&gw.config(&(brokers("10s") + &upstream("a", &[&a], "") + &publish + &route("one", "/one", "a"))));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.answer("/one").await, (200, "a".to_owned()));
    let r = post(None).await;
    assert_eq!(r.status, 202, "the kept producer publishes at once: {}", r.text());
    assert_eq!(amqp_connections(&connection_name), first, "the same single connection after the reload");
    let again = post(Some(&key)).await;
    assert!(again.replayed(), "the route's remembered Idempotency-Keys survive the reload: {}", again.text());
    assert_eq!((again.status, &again.body), (202, &original.body));

    // A reload that changes the broker: a new connection replaces the old one, which is closed.
    gw.write(&gw.config(&(brokers("11s") + &upstream("a", &[&a], "") + &publish + &route("one", "/one", "a"))));
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("the changed broker's new connection replaces the old one", async || {
        let now = amqp_connections(&connection_name);
        now.len() == 1 && now != first
    })
    .await;
    eventually("a publish is accepted on the new connection", async || post(None).await.status == 202).await;
    assert!(amqp.len(&queue).await >= 4, "every 202 is in the queue");
    amqp.delete(&queue, &exchange).await;
}

/// Publishes `body` to `queue` through the default exchange.
async fn to_queue(amqp: &Amqp, queue: &str, body: &str) {
    use lapin::options::BasicPublishOptions;
    amqp.channel
        .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body.as_bytes(), Default::default())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_reloads_added_changed_and_removed_and_show_in_routes() {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let (q1, q2) = (random_name("reload-sub-1"), random_name("reload-sub-2"));
    for q in [&q1, &q2] {
        amqp.queue(q, "amq.direct", q, false).await;
    }
    let (one, two) = (Upstream::status(200, "one").await, Upstream::status(200, "two").await);
    let broker = format!("\n[brokers.rabbit]\nkind = \"amqp\"\nurl = {:?}\n", amqp_url());
    let subscription = |name: &str, queue: &str, upstream: &str, path: &str| {
        format!(
            "\n[[subscriptions]]\nname = {name:?}\nfrom = {{ broker = \"rabbit\", queue = {queue:?} }}\n\
             to = {{ upstream = {upstream:?}, path = {path:?} }}\n"
        )
    };
    let upstreams = upstream("one", &[&one], "") + &upstream("two", &[&two], "");
    let paths = |u: &Upstream| u.requests().iter().map(|s| s.uri.path().to_owned()).collect::<Vec<_>>();
    let states = async |gw: &Sluice| {
        let r = send(&gw.client, Request::get(gw.admin_url("/readyz?verbose")).body(empty()).unwrap()).await;
        r.json()["subscriptions"].clone()
    };

    let gw =
        Sluice::start("subscriptions", &(broker.clone() + &upstreams + &subscription("s1", &q1, "one", "/a"))).await;
    eventually("s1 consuming", async || states(&gw).await["s1"] == "consuming").await;
    to_queue(&amqp, &q1, "m1").await;
    eventually("m1 delivered", async || one.hits() == 1).await;

    // Added: s2 starts; s1 goes on.
    let both = subscription("s1", &q1, "one", "/a") + &subscription("s2", &q2, "two", "/b");
    gw.write(&gw.config(&(broker.clone() + &upstreams + &both)));
    assert_eq!(gw.post_reload().await.status, 200);
    eventually("s2 consuming", async || states(&gw).await["s2"] == "consuming").await;
    to_queue(&amqp, &q1, "m2").await;
    to_queue(&amqp, &q2, "m3").await;
    eventually("m2 and m3 delivered", async || one.hits() == 2 && two.hits() == 1).await;
    let r = send(&gw.client, Request::get(gw.admin_url("/routes")).body(empty()).unwrap()).await;
    let names: Vec<String> =
        r.json()["subscriptions"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["s1", "s2"], "/routes lists the subscriptions");

    // Changed: s1 delivers to its new path.
    let changed = subscription("s1", &q1, "one", "/a2") + &subscription("s2", &q2, "two", "/b");
    gw.write(&gw.config(&(broker.clone() + &upstreams + &changed)));
    assert_eq!(gw.post_reload().await.status, 200);
    eventually("s1 consuming again", async || states(&gw).await["s1"] == "consuming").await;
    to_queue(&amqp, &q1, "m4").await;
    eventually("m4 delivered", async || one.hits() == 3).await;
    assert_eq!(paths(&one), ["/a", "/a", "/a2"]);

    // Removed: s2 stops consuming; what reaches its queue stays there.
    gw.write(&gw.config(&(broker + &upstreams + &subscription("s1", &q1, "one", "/a2"))));
    assert_eq!(gw.post_reload().await.status, 200);
    eventually("s2 gone", async || states(&gw).await.get("s2").is_none()).await;
    let consumers = async |queue: &str| {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        amqp.channel.queue_declare(queue.into(), passive, Default::default()).await.unwrap().consumer_count()
    };
    eventually("s2's consumer cancelled", async || consumers(&q2).await == 0).await;
    assert_eq!(consumers(&q1).await, 1, "s1 (restarted once) consumes with one consumer");
    to_queue(&amqp, &q2, "m5").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(two.hits(), 1, "a removed subscription delivers nothing");
    assert_eq!(amqp.len(&q2).await, 1, "its message waits in the queue");
    for q in [&q1, &q2] {
        let _ = amqp.channel.queue_delete(q.as_str().into(), Default::default()).await;
    }
}

//! Unit tests of loading and validation: each class of error is reported, all at once, naming where it is.

use super::*;
use crate::scratch::Scratch;

/// A config file in a [`Scratch`] directory of its own, gone when this is dropped (the end of the statement for
/// `load(&write(..))`).
struct Written {
    _dir: Scratch,
    path: std::path::PathBuf,
}

impl std::ops::Deref for Written {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

fn write(toml: &str) -> Written {
    let dir = Scratch::new("sluice-config");
    let path = dir.join("routes.toml");
    std::fs::write(&path, toml).unwrap();
    Written { _dir: dir, path }
}

fn problems(toml: &str) -> Vec<String> {
    load(&write(toml)).expect_err("config should be refused")
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body = "64KiB"

[upstreams.orders]
endpoints = ["http://127.0.0.1:9001", "http://localhost:9002"]
balance = "hash"
hash_key = "{header.x-user-id}"

[upstreams.orders.outlier]
consecutive_failures = 3

[[routes]]
name = "orders-api"
match = { path_prefix = "/api/orders", methods = ["GET", "POST"] }
forward = { upstream = "orders", rewrite_prefix = "/orders", timeout = "2s" }
retry = { max_retries = 2, per_try_timeout = "500ms", on = ["connect-failure", "5xx", "retriable-status:409"] }
fault = { delay = "200ms", delay_percent = 5, abort_status = 503, abort_percent = 1 }
rate_limit = { per_second = 100, burst = 200, key = "{header.x-api-key}" }

[[routes]]
name = "tenant"
match = { path = "/t/{tenant}/x", host = "*.example.com", headers = { "X-Env" = "prod" } }
forward = { upstream = "orders" }
rate_limit = { per_second = 5, key = "{path.tenant}" }
"#;

#[test]
fn a_good_config_loads_with_its_values() {
    let loaded = load(&write(GOOD)).unwrap();
    let c = &loaded.config;
    assert_eq!(c.server.max_body.0, 64 * 1024);
    assert_eq!(c.server.request_timeout.0, std::time::Duration::from_secs(30));
    assert_eq!(c.upstreams["orders"].outlier.consecutive_failures, 3);
    assert_eq!(c.upstreams["orders"].outlier.max_ejected_percent.0, 50.0);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].retry.as_ref().unwrap().max_retries, 2);
    assert_eq!(c.routes[1].matcher.headers["X-Env"], "prod");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn every_problem_is_reported_at_once_naming_route_and_key() {
    let p = problems(
        r#"
[server]
listen = "127.0.0.1:8080"
max_bdy = "1MiB"

[upstreams.orders]
endpoints = ["http://127.0.0.1:9001"]
connect_timeout = "soon"

[[routes]]
name = "a"
match = { path_prefix = "/a" }
forward = { upstream = "ordrs" }

[[routes]]
name = "a"
match = { path = "/b", path_prefix = "/b" }
forward = { upstream = "orders" }

[[routes]]
name = "c"
match = { path = "/c/{id}" }
forward = { upstream = "orders", timeout = "5 fortnights" }

[[routes]]
name = "d"
match = { path = "/d/{id}" }
forward = { upstream = "orders" }
fault = { abort_status = 503, abort_percent = 150 }
rate_limit = { per_second = 1, key = "{path.tenant}" }
retry = { on = ["sometimes"] }

[[routes]]
name = "e"
match = { path = "/e" }
forwrd = { upstream = "orders" }
"#,
    );
    let all = p.join("\n");
    let expect = [
        "server: unknown key `max_bdy`, expected one of listen, admin_listen, max_body,",
        "upstreams.orders: connect_timeout: bad duration \"soon\"",
        "routes[0] \"a\": forward.upstream \"ordrs\" is not defined",
        "routes[1] \"a\": name \"a\" is used by an earlier route",
        "routes[1] \"a\": match: set exactly one of path and path_prefix",
        "routes[2] \"c\": forward.timeout: bad duration \"5 fortnights\"",
        "routes[3] \"d\": fault.abort_percent must be between 0 and 100",
        "routes[3] \"d\": rate_limit.key refers to {path.tenant} but match.path has no {tenant} segment",
        "routes[3] \"d\": retry.on: \"sometimes\" is not one of",
        "routes[4] \"e\": unknown key `forwrd`, expected one of name, match, forward, publish,",
    ];
    for e in expect {
        assert!(all.contains(e), "missing {e:?} in:\n{all}");
    }
}

#[test]
fn upstream_problems_are_named() {
    let p = problems(
        r#"
[upstreams.u]
endpoints = ["ftp://x", "http://h:1/path"]
balance = "hash"
max_concurrent = 0
[upstreams.u.outlier]
max_ejected_percent = 101
[upstreams.v]
endpoints = []
balance = "fastest"
[[routes]]
name = "r"
match = { path_prefix = "/" }
forward = { upstream = "u" }
"#,
    )
    .join("\n");
    for e in [
        "upstreams.u: endpoints: \"ftp://x\" must start with http://",
        "upstreams.u: endpoints: \"http://h:1/path\" must not have a path",
        "upstreams.u: balance = \"hash\" needs hash_key",
        "upstreams.u: max_concurrent must be at least 1",
        "upstreams.u.outlier: max_ejected_percent must be between 0 and 100",
        "upstreams.v: balance: unknown variant `fastest`",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
}

#[test]
fn shadowed_routes_are_warned_about() {
    let loaded = load(&write(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:1"]
[[routes]]
name = "all"
match = { path_prefix = "/api" }
forward = { upstream = "u" }
[[routes]]
name = "never"
match = { path = "/api/orders/{id}", methods = ["GET"] }
forward = { upstream = "u" }
"#,
    ))
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].starts_with("routes[1] \"never\": never matches"), "{:?}", loaded.warnings);
}

#[test]
fn unknown_top_level_keys_and_missing_files_are_errors() {
    assert!(problems("[sever]\nlisten = \"x\"\n").join("\n").contains("unknown top-level key `sever`"));
    let missing = load(std::path::Path::new("/nonexistent/routes.toml")).unwrap_err();
    assert!(missing[0].contains("no such config file"));
}

#[test]
fn broker_and_publish_problems_are_named() {
    let p = problems(
        r#"
[brokers.rabbit]
kind = "amqp"
bootstrap = "127.0.0.1:9092"

[brokers.events]
kind = "kafka"
url = "amqp://x"

[brokers.nowhere]
kind = "mqtt"

[[routes]]
name = "k"
match = { path = "/k/{tenant}" }
publish = { broker = "events", exchange = "x", routing_key = "y" }

[[routes]]
name = "a"
match = { path = "/a" }
publish = { broker = "rabbit", topic = "t", routing_key = "{header.x" }

[[routes]]
name = "missing"
match = { path = "/m" }
publish = { broker = "nope", topic = "{path.tenant}" }

[[routes]]
name = "both"
match = { path = "/b" }
publish = { broker = "events", topic = "t", ce_type = "x" }
retry = { max_retries = 1 }
"#,
    )
    .join("\n");
    for e in [
        "brokers.rabbit: kind = \"amqp\" needs url or url_env",
        "brokers.rabbit: bootstrap is a kafka key; this broker is amqp",
        "brokers.events: url is an amqp key; this broker is kafka",
        "brokers.nowhere: kind: unknown variant `mqtt`",
        "routes[0] \"k\": publish.topic is required for kafka broker \"events\"",
        "routes[0] \"k\": publish.exchange is for amqp brokers",
        "routes[1] \"a\": publish.exchange and publish.routing_key are required for amqp broker \"rabbit\"",
        "routes[1] \"a\": publish.topic is for kafka brokers",
        "routes[1] \"a\": publish.routing_key: unclosed '{' in template",
        "routes[2] \"missing\": publish.broker \"nope\" is not defined",
        "routes[2] \"missing\": publish.topic refers to {path.tenant} but match.path has no {tenant} segment",
        "routes[3] \"both\": publish.ce_type and ce_source need format = \"cloudevents\"",
        "routes[3] \"both\": retry applies to forward routes only",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
}

#[test]
fn request_reply_problems_are_named() {
    let p = problems(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"

[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[[routes]]
name = "no-key"
match = { path = "/a" }
request_reply = { broker = "rabbit", topic = "t", timeout = "0s", max_pending = 0, reply_headers = ["bad header"] }
retry = { max_retries = 1 }

[[routes]]
name = "kafka"
match = { path = "/k" }
request_reply = { broker = "events", topic = "quotes", exchange = "x" }

[[routes]]
name = "kafka-bad-reply"
match = { path = "/k2" }
request_reply = { broker = "events", topic = "quotes", reply_topic = "__replies" }

[[routes]]
name = "kafka-good"
match = { path = "/k3" }
request_reply = { broker = "events", topic = "quotes", key = "{header.x-id}", reply_topic = "quotes.replies" }

[[routes]]
name = "two"
match = { path = "/t/{id}" }
request_reply = { broker = "nope", routing_key = "q.{path.other}" }
forward = { upstream = "u" }
"#,
    )
    .join("\n");
    for e in [
        "routes[0] \"no-key\": request_reply.routing_key is required for amqp broker \"rabbit\"",
        "routes[0] \"no-key\": request_reply.topic is for kafka brokers; \"rabbit\" is amqp",
        "routes[0] \"no-key\": request_reply.timeout must be more than 0",
        "routes[0] \"no-key\": request_reply.max_pending must be from 1 to 10000000",
        "routes[0] \"no-key\": request_reply.reply_headers: \"bad header\" is not a header name",
        "routes[0] \"no-key\": retry applies to forward routes only",
        "routes[1] \"kafka\": request_reply.reply_topic is required for kafka broker \"events\"",
        "routes[1] \"kafka\": request_reply.exchange is for amqp brokers; \"events\" is kafka",
        "routes[2] \"kafka-bad-reply\": request_reply.reply_topic is not a valid Kafka topic",
        "routes[4] \"two\": needs exactly one action: forward, publish or request_reply",
        "routes[4] \"two\": request_reply.broker \"nope\" is not defined",
        "routes[4] \"two\": request_reply.routing_key refers to {path.other} but match.path has no {other} segment",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
    assert!(!p.contains("kafka-good"), "a complete Kafka request_reply is fine:\n{p}");
}

#[test]
fn subscription_problems_are_named() {
    let p = problems(
        r#"
[upstreams.app]
endpoints = ["http://127.0.0.1:9001"]

[brokers.rabbit]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"

[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[[subscriptions]]
name = "a"
from = { broker = "rabbit", topic = "t" }
to = { upstream = "nope", path = "internal", method = "NOT A METHOD" }
retry = { backoff = "1s", max_backoff = "10ms" }
dead_letter = { exchange = "dlx" }
concurrency = 0

[[subscriptions]]
name = "a"
from = { broker = "events", topic = "orders", queue = "q" }
to = { upstream = "app", path = "/x" }
dead_letter = { broker = "events", topic = "__bad" }

[[subscriptions]]
name = "fine"
from = { broker = "rabbit", queue = "orders" }
to = { upstream = "app", path = "/x" }
dead_letter = { broker = "events", topic = "orders.dlq" }
"#,
    )
    .join("\n");
    for e in [
        "subscriptions[0] \"a\": from.queue is required for amqp broker \"rabbit\"",
        "subscriptions[0] \"a\": from.topic is for kafka brokers; \"rabbit\" is amqp",
        "subscriptions[0] \"a\": to.upstream \"nope\" is not defined",
        "subscriptions[0] \"a\": to.path must be a path starting with /",
        "subscriptions[0] \"a\": to.method \"NOT A METHOD\" is not an HTTP method",
        "subscriptions[0] \"a\": retry.backoff must be more than 0 and at most retry.max_backoff",
        "subscriptions[0] \"a\": concurrency must be from 1 to 65535",
        "subscriptions[0] \"a\": dead_letter.routing_key is required for amqp broker \"rabbit\"",
        "subscriptions[1] \"a\": name \"a\" is used by an earlier subscription",
        "subscriptions[1] \"a\": from.group is required for kafka broker \"events\"",
        "subscriptions[1] \"a\": from.queue is for amqp brokers; \"events\" is kafka",
        "subscriptions[1] \"a\": dead_letter.topic is not a valid Kafka topic",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
    assert!(!p.contains("\"fine\""), "{p}");
}

#[test]
fn backlog_problems_are_named() {
    let p = problems(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"

[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[[routes]]
name = "no-queue"
match = { path = "/a" }
publish = { broker = "rabbit", exchange = "", routing_key = "q", max_backlog = 10, backlog_group = "g" }

[[routes]]
name = "dynamic"
match = { path = "/k/{t}" }
publish = { broker = "events", topic = "orders.{path.t}", max_backlog = 10, backlog_group = "g" }

[[routes]]
name = "unbounded"
match = { path = "/u" }
publish = { broker = "events", topic = "orders", backlog_group = "g" }

[[routes]]
name = "fine"
match = { path = "/f" }
publish = { broker = "events", topic = "orders", max_backlog = 10, backlog_group = "g" }
"#,
    )
    .join("\n");
    for e in [
        "routes[0] \"no-queue\": publish.max_backlog needs publish.backlog_queue (the queue to watch)",
        "routes[0] \"no-queue\": publish.backlog_group is for kafka brokers; use backlog_queue",
        "routes[1] \"dynamic\": publish.backlog_group needs a literal publish.topic",
        "routes[2] \"unbounded\": publish.backlog_group is only read with publish.max_backlog",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
    assert!(!p.contains("\"fine\""), "{p}");
}

#[test]
fn broker_tls_problems_are_named() {
    let p = problems(
        r#"
[brokers.plain]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"
ca_file = "ca.pem"

[brokers.gone]
kind = "amqp"
url = "amqps://127.0.0.1:5671/%2f"
ca_file = "/nonexistent/ca.pem"

[brokers.twice]
kind = "kafka"
bootstrap = "127.0.0.1:9094"
ca_file = "/nonexistent/kafka-ca.pem"
options = { "security.protocol" = "SSL", "ssl.ca.location" = "/etc/ssl/ca.pem" }

[brokers.web]
kind = "amqp"
url = "https://127.0.0.1"
"#,
    )
    .join("\n");
    for e in [
        "brokers.plain: ca_file is for amqps:// (TLS) URLs; this broker's URL is amqp://",
        "brokers.gone.ca_file \"/nonexistent/ca.pem\" cannot be read",
        "brokers.twice: ca_file and the option \"ssl.ca.location\" say the same; keep one",
        "brokers.twice.ca_file \"/nonexistent/kafka-ca.pem\" cannot be read",
        "brokers.web: url must start with amqp:// or amqps://",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
    assert!(!p.contains("brokers.gone:"), "amqps:// itself is accepted:\n{p}");
}

#[test]
fn sqs_problems_are_named() {
    let p = problems(
        r#"
[brokers.q]
kind = "sqs"
endpoint = "127.0.0.1:9324"
bootstrap = "x:9092"
[brokers.k]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
region = "eu-west-1"
[upstreams.u]
endpoints = ["http://127.0.0.1:1"]
[[routes]]
name = "a"
match = { path = "/a" }
publish = { broker = "q", queue = "orders-{header.x}", topic = "t" }
[[routes]]
name = "b"
match = { path = "/b" }
publish = { broker = "q" }
[[routes]]
name = "c"
match = { path = "/c" }
publish = { broker = "k", topic = "t", queue = "q" }
[[routes]]
name = "d"
match = { path = "/d" }
request_reply = { broker = "q", timeout = "1s" }
[[subscriptions]]
name = "s"
from = { broker = "q" }
to = { upstream = "u", path = "/" }
"#,
    )
    .join("\n");
    for e in [
        "brokers.q: endpoint must start with http:// or https://",
        "brokers.q: bootstrap is not an sqs key",
        "brokers.k: region is an sqs key",
        "routes[0] \"a\": publish.queue must be a queue name or URL (no template)",
        "routes[0] \"a\": publish.topic is not for sqs broker \"q\"",
        "routes[1] \"b\": publish.queue is required for sqs broker \"q\"",
        "routes[2] \"c\": publish.queue is for sqs brokers",
        "routes[3] \"d\": request_reply.queue is required for sqs broker \"q\"",
        "subscriptions[0] \"s\": from.queue is required for sqs broker \"q\"",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
}

#[test]
fn publish_api_problems_are_named() {
    let p = problems(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"
[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
[[routes]]
name = "bridge"
match = { path = "/topics/{topic}" }
publish = { broker = "rabbit", exchange = "x", routing_key = "{path.topic}", api = "strimzi" }
[[routes]]
name = "ce"
match = { path = "/v3/clusters/{c}/topics/{topic}/records" }
publish = { broker = "events", topic = "{path.topic}", api = "confluent-v3", format = "cloudevents" }
[[routes]]
name = "odd"
match = { path = "/odd" }
publish = { broker = "events", topic = "t", api = "kafka-rest" }
"#,
    )
    .join("\n");
    for e in [
        "routes[0] \"bridge\": publish.api = \"strimzi\" is a Kafka API; \"rabbit\" is amqp",
        "routes[1] \"ce\": publish.api = \"confluent-v3\" makes its own messages; leave publish.format out",
        "unknown variant `kafka-rest`",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
}

#[test]
fn store_problems_are_named() {
    let p = problems("[store]\nkind = \"redis\"\non_error = \"shrug\"\n").join("\n");
    assert!(p.contains("store: kind = \"redis\" needs url_env"), "{p}");
    assert!(p.contains("store: on_error: unknown variant `shrug`"), "{p}");
    let p = problems("[store]\nkind = \"redis\"\nurl_env = \"SLUICE_TEST_SURELY_UNSET_REDIS\"\n").join("\n");
    assert!(p.contains("store: url_env names \"SLUICE_TEST_SURELY_UNSET_REDIS\""), "{p}");
    let p = problems("[store]\nkind = \"memcached\"\n").join("\n");
    assert!(p.contains("store: kind: unknown variant `memcached`"), "{p}");
}

#[test]
fn spool_problems_are_named() {
    let file = write("not a directory");
    let p = problems(&format!(
        r#"
[brokers.a]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"
spool = {{ dir = "/tmp/sluice-spool-check", max_bytes = "1KiB", fsync = "sometimes" }}

[brokers.b]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
spool = {{ dir = "/tmp/sluice-spool-check", fsync = "interval:0ms" }}

[brokers.c]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
spool = {{ dir = "/tmp/sluice-spool-check-c", max_bytes = "64KiB" }}

[brokers.d]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
spool = {{ dir = "{}/spool" }}
"#,
        file.display()
    ))
    .join("\n");
    for e in [
        "bad fsync \"sometimes\": write \"always\" or \"interval:10ms\"",
        "bad fsync \"interval:0ms\": the interval must be more than 0 and at most 1s",
        "is not a directory",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
    assert!(!p.contains("brokers.c"), "a good spool is accepted:\n{p}");
    let p = problems(
        r#"
[brokers.a]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"
spool = { dir = "/tmp/sluice-spool-check", max_bytes = "1KiB" }
[brokers.b]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
spool = { dir = "/tmp/sluice-spool-check" }
"#,
    )
    .join("\n");
    for e in [
        "brokers.a.spool: max_bytes must be at least 64KiB",
        "brokers.b.spool: dir is also the spool of broker \"a\"; give each its own",
    ] {
        assert!(p.contains(e), "missing {e:?} in:\n{p}");
    }
}

#[test]
fn a_route_needs_exactly_one_action() {
    let p = problems(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:1"]
[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
[[routes]]
name = "none"
match = { path = "/n" }
[[routes]]
name = "two"
match = { path = "/t" }
forward = { upstream = "u" }
publish = { broker = "events", topic = "t" }
"#,
    )
    .join("\n");
    assert!(p.contains("routes[0] \"none\": needs exactly one action: forward, publish or request_reply"), "{p}");
    assert!(p.contains("routes[1] \"two\": needs exactly one action: forward, publish or request_reply"), "{p}");
}

/// Loads without validating, for tests that look at what survived a bad key.
fn parsed(toml: &str) -> (Config, Vec<String>) {
    from_value(read_value(&write(toml)).unwrap())
}

#[test]
fn one_run_reports_bad_keys_inside_sections_and_the_checks_they_used_to_hide() {
    let toml = r#"
[server]
listen = "127.0.0.1:8080"
max_body = "12XB"
request_timeout = "3s"

[telemetry]
log_format = "text"
sample_ration = 0.5

[upstreams.orders]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "orders-api"
match = { path_prefix = "/api/orders" }
forward = { upstream = "ordrs", timout = "1s" }

[[routes]]
name = "retrying"
match = { path_prefix = "/r" }
forward = { upstream = "orders" }
retry = { max_retries = 3, backoff = "sometime" }

[[routes]]
name = "orders-api"
match = { path_prefix = "/later" }
forward = { upstream = "orders" }
"#;
    let p = problems(toml);
    let expect = [
        // (a) an unknown key inside `forward`
        "routes[0] \"orders-api\": forward: unknown key `timout`, expected one of upstream, rewrite_prefix, timeout",
        // (b) a bad size in [server]
        "server: max_body: bad size \"12XB\"",
        // (c) an unknown key in [telemetry]
        "telemetry: unknown key `sample_ration`, expected one of log_format, otlp_endpoint, service_name, \
         access_log, sample_ratio",
        // (d) a bad duration in a route's retry
        "routes[1] \"retrying\": retry.backoff: bad duration \"sometime\"",
        // (e) a duplicate route name later in the file
        "routes[2] \"orders-api\": name \"orders-api\" is used by an earlier route",
        // (f) an undefined upstream in the same route as (a)
        "routes[0] \"orders-api\": forward.upstream \"ordrs\" is not defined (upstreams: \"orders\")",
    ];
    for e in expect {
        assert!(p.iter().any(|l| l.starts_with(e)), "missing {e:?} in:\n{}", p.join("\n"));
    }
    assert_eq!(p.len(), expect.len(), "one line per problem, nothing else:\n{}", p.join("\n"));

    // The keys that are fine took effect, defaults stand in for the bad ones.
    let (c, _) = parsed(toml);
    assert_eq!(c.server.listen.port(), 8080);
    assert_eq!(c.server.request_timeout.0, std::time::Duration::from_secs(3));
    assert_eq!(c.server.max_body.0, 1 << 20);
    assert_eq!(c.telemetry.log_format, LogFormat::Text);
    let retry = c.routes[1].retry.as_ref().unwrap();
    assert_eq!((retry.max_retries, retry.backoff.0), (3, std::time::Duration::from_millis(25)));
    assert_eq!(c.routes.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn a_route_with_an_unknown_retry_key_still_gets_its_name_and_upstream_checked() {
    let p = problems(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:1"]
[[routes]]
name = "r"
match = { path_prefix = "/a" }
forward = { upstream = "u" }
[[routes]]
name = "r"
match = { path_prefix = "/b" }
forward = { upstream = "nowhere" }
retry = { max_retris = 2 }
"#,
    );
    let all = p.join("\n");
    for e in [
        "routes[1] \"r\": retry: unknown key `max_retris`, expected one of max_retries, per_try_timeout, on,",
        "routes[1] \"r\": name \"r\" is used by an earlier route",
        "routes[1] \"r\": forward.upstream \"nowhere\" is not defined",
    ] {
        assert!(all.contains(e), "missing {e:?} in:\n{all}");
    }
    assert_eq!(p.len(), 3, "{all}");
}

#[test]
fn bad_values_are_named_by_path_once_even_in_nested_tables_and_lists() {
    let p = problems(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:1", 5, "http://127.0.0.1:2", true]
[upstreams.u.outlier]
ejection_time = "later"
max_ejected = 10
[upstreams.v]
endpoints = 5
[[routes]]
name = "no-upstream"
match = { path = "/x" }
forward = { timeout = "1s" }
[[routes]]
name = "bad-upstream"
match = 7
forward = { upstream = 7 }
[[routes]]
match = { path = "/z" }
forward = { upstream = "u" }
"#,
    );
    let all = p.join("\n");
    let expect = [
        "upstreams.u: endpoints[1]: invalid type: integer `5`, expected a string",
        "upstreams.u: endpoints[3]: invalid type: boolean `true`, expected a string",
        "upstreams.u: outlier: unknown key `max_ejected`, expected one of consecutive_failures, ejection_time, \
         max_ejected_percent",
        "upstreams.u: outlier.ejection_time: bad duration \"later\"",
        "upstreams.v: endpoints: invalid type: integer `5`, expected a sequence",
        // A required key missing: said once, and the route is not also told it has no action.
        "routes[0] \"no-upstream\": forward: missing field `upstream`",
        "routes[1] \"bad-upstream\": forward.upstream: invalid type: integer `7`, expected a string",
        "routes[1] \"bad-upstream\": match: must be a table, not integer `7`",
        "routes[2]: name is required (a non-empty string)",
    ];
    for e in expect {
        assert!(p.iter().any(|l| l.starts_with(e)), "missing {e:?} in:\n{all}");
    }
    assert_eq!(p.len(), expect.len(), "one line per problem, nothing else:\n{all}");
}

#[test]
fn telemetry_takes_an_otlp_endpoint_and_a_sample_ratio() {
    let c = load(&write(
        "[telemetry]\notlp_endpoint = \"https://collector.example:4317\"\nsample_ratio = 0.25\naccess_log = false\n",
    ))
    .unwrap()
    .config;
    assert_eq!(c.telemetry.otlp_endpoint.as_deref(), Some("https://collector.example:4317"));
    assert_eq!(c.telemetry.sample_ratio, 0.25);
    assert!(!c.telemetry.access_log);
    let defaults = load(&write("")).unwrap().config.telemetry;
    assert_eq!((defaults.otlp_endpoint, defaults.sample_ratio, defaults.access_log), (None, 1.0, true));
    for ok in ["http://127.0.0.1:4317", "http://localhost:4317", "https://otel.example.com"] {
        let loaded = load(&write(&format!("[telemetry]\notlp_endpoint = {ok:?}\n")));
        assert!(loaded.is_ok(), "{ok}: {loaded:?}");
    }
}

#[test]
fn otlp_endpoint_must_be_an_http_url_with_a_host() {
    for bad in ["127.0.0.1:4317", "grpc://collector:4317", "http://", "http://:4317", "not a url", ""] {
        let p = problems(&format!("[telemetry]\notlp_endpoint = {bad:?}\n"));
        let expect = format!("telemetry: otlp_endpoint {bad:?} must be an http:// or https:// URL with a host");
        assert!(p.len() == 1 && p[0].starts_with(&expect), "{bad:?}: {p:?}");
    }
}

#[test]
fn sample_ratio_must_be_within_zero_and_one() {
    for ok in ["0", "0.0", "0.5", "1", "1.0"] {
        let c = load(&write(&format!("[telemetry]\nsample_ratio = {ok}\n"))).unwrap().config;
        assert_eq!(c.telemetry.sample_ratio, ok.parse::<f64>().unwrap());
    }
    for bad in ["-0.1", "1.5", "100"] {
        let p = problems(&format!("[telemetry]\nsample_ratio = {bad}\n"));
        let expect =
            format!("telemetry: sample_ratio must be between 0.0 and 1.0, not {}", bad.parse::<f64>().unwrap());
        assert_eq!(p, [expect]);
    }
    let p = problems("[telemetry]\nsample_ratio = \"half\"\n");
    assert_eq!(p, ["telemetry: sample_ratio: invalid type: string \"half\", expected f64"]);
}

#[test]
fn verify_keys_are_checked_per_scheme_and_the_secret_must_be_set() {
    // PATH is set wherever tests run; this name is set nowhere.
    let unset = format!("SLUICE_TEST_UNSET_{}", uuid::Uuid::new_v4().simple());
    let p = problems(&format!(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "gh"
match = {{ path = "/gh" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "github", secret_env = "PATH", tolerance = "1m", header = "x-sig", encoding = "hex" }}

[[routes]]
name = "mac"
match = {{ path = "/mac" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "hmac", secret_env = "{unset}", algorithm = "md5" }}

[[routes]]
name = "mac2"
match = {{ path = "/mac2" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "hmac", secret_env = "PATH", tolerance = "0s" }}

[[routes]]
name = "mac3"
match = {{ path = "/mac3" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "hmac", secret_env = "PATH", header = "bad header" }}

[[routes]]
name = "std"
match = {{ path = "/std" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "standard", secret_env = "PATH", prefix = "v1," }}

[[routes]]
name = "nosecret"
match = {{ path = "/n" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "stripe" }}

[[routes]]
name = "empty"
match = {{ path = "/e" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "stripe", secret_env = "", tolerance = "5m" }}

[[routes]]
name = "typo"
match = {{ path = "/t" }}
forward = {{ upstream = "u" }}
verify = {{ scheme = "gitlab", secret_env = "PATH" }}
"#
    ));
    let has = |needle: &str| assert!(p.iter().any(|e| e.contains(needle)), "no {needle:?} in {p:#?}");
    has(r#"routes[0] "gh": verify.tolerance applies to scheme "stripe" and "standard" only, not "github""#);
    has(r#"routes[0] "gh": verify.header applies to scheme "hmac" only"#);
    has(r#"routes[0] "gh": verify.encoding applies to scheme "hmac" only"#);
    has(r#"routes[1] "mac": verify.algorithm"#);
    has(r#"routes[2] "mac2": verify.header is required for scheme = "hmac""#);
    has(r#"routes[2] "mac2": verify.tolerance applies to scheme "stripe" and "standard" only, not "hmac""#);
    has(r#"routes[2] "mac2": verify.tolerance must be more than 0"#);
    has(r#"routes[3] "mac3": verify.header: "bad header" is not a header name"#);
    // PATH is no whsec_<base64> secret; the message names the variable but not its value.
    has(r#"routes[4] "std": verify.prefix applies to scheme "hmac" only, not "standard""#);
    has(r#"routes[4] "std": verify.secret_env "PATH": secret 1 of the list is not whsec_<base64>"#);
    has(r#"routes[5] "nosecret": verify: missing field `secret_env`"#);
    has(r#"routes[6] "empty": verify.secret_env must name an environment variable"#);
    has(r#"routes[7] "typo": verify.scheme: unknown variant `gitlab`"#);
    let path = std::env::var("PATH").unwrap();
    assert!(p.iter().all(|e| !e.contains(&path)), "a secret's value is never printed: {p:#?}");
    // The hmac route with a bad algorithm still gets its unset variable reported.
    has(&format!(r#"routes[1] "mac": verify.secret_env names "{unset}", which is not set"#));
}

#[test]
fn a_verify_route_with_its_secret_set_is_valid() {
    let loaded = load(&write(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "mac"
match = { path = "/mac" }
forward = { upstream = "u" }
verify = { scheme = "hmac", secret_env = "PATH", header = "X-Signature", prefix = "sha1=", encoding = "base64", algorithm = "sha1" }

[[routes]]
name = "stripe"
match = { path = "/s" }
forward = { upstream = "u" }
verify = { scheme = "stripe", secret_env = "PATH", tolerance = "2m" }
"#,
    ))
    .unwrap();
    let v = loaded.config.routes[0].verify.as_ref().unwrap();
    assert_eq!(v.algorithm, Some(HmacAlgorithm::Sha1));
    assert_eq!(v.encoding, Some(SignatureEncoding::Base64));
    assert_eq!(loaded.config.routes[1].verify.as_ref().unwrap().tolerance.unwrap().0.as_secs(), 120);
}

#[test]
fn auth_problems_are_named() {
    let dir = Scratch::new("sluice-auth");
    let not_jwks = dir.join("not-jwks.json");
    std::fs::write(&not_jwks, r#"{"issuer": "https://id.example.com"}"#).unwrap();
    let oct = dir.join("oct.json");
    std::fs::write(&oct, r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#).unwrap();
    let missing = dir.join("missing.json");
    let unset = format!("SLUICE_TEST_UNSET_{}", uuid::Uuid::new_v4().simple());
    let toml = format!(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "both"
match = {{ path = "/a" }}
forward = {{ upstream = "u" }}
auth = {{ api_keys_env = "{unset}", jwt = {{ secret_env = "{unset}" }} }}

[[routes]]
name = "keys-unset"
match = {{ path = "/b" }}
forward = {{ upstream = "u" }}
auth = {{ api_keys_env = "{unset}" }}
rate_limit = {{ per_second = 1, key = "{{jwt.sub}}" }}

[[routes]]
name = "two-sources"
match = {{ path = "/c" }}
forward = {{ upstream = "u" }}
auth = {{ jwt = {{ secret_env = "{unset}", jwks_file = "{missing}" }} }}

[[routes]]
name = "secret-unset"
match = {{ path = "/d" }}
forward = {{ upstream = "u" }}
auth = {{ jwt = {{ secret_env = "{unset}", required_scopes = ["ok:scope", "bad scope"] }} }}

[[routes]]
name = "jwks-missing"
match = {{ path = "/e" }}
forward = {{ upstream = "u" }}
auth = {{ jwt = {{ jwks_file = "{missing}" }} }}

[[routes]]
name = "jwks-bad"
match = {{ path = "/f" }}
forward = {{ upstream = "u" }}
auth = {{ jwt = {{ jwks_file = "{not_jwks}" }} }}

[[routes]]
name = "jwks-oct"
match = {{ path = "/g" }}
forward = {{ upstream = "u" }}
auth = {{ jwt = {{ jwks_file = "{oct}" }}, header = "x-key" }}
"#,
        missing = missing.display(),
        not_jwks = not_jwks.display(),
        oct = oct.display(),
    );
    let p = problems(&toml);
    let has = |route: &str, text: &str| p.iter().any(|e| e.contains(route) && e.contains(text));
    assert!(has("\"both\"", "auth needs exactly one of api_keys_env and jwt"), "{p:#?}");
    assert!(has("\"keys-unset\"", &format!("auth.api_keys_env names \"{unset}\", which is not set")), "{p:#?}");
    assert!(has("\"keys-unset\"", "rate_limit.key refers to {jwt.sub} but the route has no JWT auth"), "{p:#?}");
    assert!(has("\"two-sources\"", "auth.jwt needs exactly one of secret_env and jwks_file"), "{p:#?}");
    assert!(has("\"secret-unset\"", "\"bad scope\" is not a scope"), "{p:#?}");
    assert!(!has("\"secret-unset\"", "ok:scope"), "{p:#?}");
    assert!(
        has("\"jwks-missing\"", &format!("auth.jwt.jwks_file \"{}\": cannot be read", missing.display())),
        "{p:#?}"
    );
    assert!(has("\"jwks-bad\"", &format!("auth.jwt.jwks_file \"{}\": is not a JWKS", not_jwks.display())), "{p:#?}");
    assert!(has("\"jwks-oct\"", "auth.header is for api_keys_env"), "{p:#?}");
    let secret_unset = format!("routes[3] \"secret-unset\": auth.jwt.secret_env names \"{unset}\", which is not set");
    // The scope error hides the key check of the same route until it is fixed; the other routes are all reported.
    assert!(!p.contains(&secret_unset), "{p:#?}");
    assert_eq!(p.iter().filter(|e| e.contains("\"jwks-oct\"")).count(), 1, "{p:#?}");
}

#[test]
fn a_jwks_file_is_read_with_its_keys() {
    // RFC 7517 appendix A.1: an EC P-256 and an RSA public key.
    let jwks = r#"{"keys": [
        {"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","use":"enc","kid":"1"},
        {"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","kid":"ec"},
        {"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}
    ]}"#;
    let dir = Scratch::new("sluice-auth");
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    let toml = format!(
        r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "jwt"
match = {{ path = "/a" }}
forward = {{ upstream = "u" }}
auth = {{ jwt = {{ jwks_file = "{}", issuer = "https://id.example.com", leeway = "30s" }} }}
rate_limit = {{ per_second = 1, key = "{{jwt.sub}}" }}
"#,
        path.display()
    );
    let loaded = load(&write(&toml)).unwrap_or_else(|p| panic!("{p:#?}"));
    let jwt = loaded.config.routes[0].auth.as_ref().unwrap().jwt.as_ref().unwrap();
    assert_eq!(jwt.leeway.0, std::time::Duration::from_secs(30));
    // A duplicate kid is refused.
    std::fs::write(&path, jwks.replace("\"kid\":\"ec\"", "\"kid\":\"2011-04-29\"")).unwrap();
    let p = problems(&toml);
    assert!(p.iter().any(|e| e.contains("the kid is used by an earlier key")), "{p:#?}");
}

#[test]
fn tls_keys_are_checked_and_named() {
    let p = problems(
        "[server]\ntls = { cert = \"c.pem\", crt = \"x\" }\n\
         [upstreams.plain]\nendpoints = [\"http://a.internal\"]\ntls_server_name = \"a.internal\"\n\
         [upstreams.secure]\nendpoints = [\"https://b.internal\"]\ntls_server_name = \"not a name\"\n",
    );
    assert_eq!(
        p,
        [
            "server: tls: unknown key `crt`, expected one of cert, key",
            "server: tls: missing field `key`",
            "upstreams.plain: tls_server_name is only used with https:// endpoints",
            "upstreams.secure: tls_server_name \"not a name\" is not a DNS name or IP address",
        ]
    );
}

#[test]
fn https_endpoints_and_their_tls_keys_are_accepted() {
    let (c, errors) = parsed(
        "[upstreams.secure]\nendpoints = [\"https://orders.internal\", \"https://10.0.0.1:8443\"]\n\
         tls_server_name = \"orders.internal\"\n",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(validate(&c).errors.is_empty(), "{:?}", validate(&c).errors);
    assert_eq!(c.upstreams["secure"].tls_server_name.as_deref(), Some("orders.internal"));
}

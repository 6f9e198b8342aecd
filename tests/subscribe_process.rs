//! A subscription through the real binary, stopped in the middle of a stream: after `SIGKILL` no message is lost (the
//! next process delivers what was not acknowledged; duplicates are allowed), and after `SIGTERM` none is lost and
//! none is delivered twice (deliveries in flight finish and are acknowledged; the rest go back to the queue).

mod broker_support;
mod process_support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_support::common::{Upstream, reply};
use broker_support::{Amqp, RabbitLock, amqp_url, eventually, random_name};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use process_support::Launched;

const MESSAGES: usize = 150;

/// A slow upstream that counts the deliveries of each `sluice-id`.
async fn counting_upstream() -> (Upstream, Arc<Mutex<HashMap<String, usize>>>) {
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let c = counts.clone();
    let app = Upstream::start(move |seen| {
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let id = seen.headers.get("sluice-id").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            *c.lock().unwrap().entry(id).or_default() += 1;
            reply(200, "ok")
        }
    })
    .await;
    (app, counts)
}

async fn fill(amqp: &Amqp, queue: &str) {
    for i in 0..MESSAGES {
        let properties = BasicProperties::default().with_message_id(format!("m-{i}").into());
        amqp.channel
            .basic_publish("amq.direct".into(), queue.into(), BasicPublishOptions::default(), b"x", properties)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn gateway(test: &str, upstream: &str, queue: &str) -> Launched {
    let rest = format!(
        r#"shutdown_grace = "10s"

[upstreams.app]
endpoints = ["{upstream}"]

[brokers.rabbit]
kind = "amqp"
url = "{}"

[[subscriptions]]
name = "s"
from = {{ broker = "rabbit", queue = "{queue}" }}
to = {{ upstream = "app", path = "/in" }}
concurrency = 4
"#,
        amqp_url()
    );
    Launched::with_routes(test, &[], &rest).await
}

fn delivered(counts: &Mutex<HashMap<String, usize>>) -> (usize, usize) {
    let counts = counts.lock().unwrap();
    (counts.len(), counts.values().filter(|n| **n > 1).count())
}

/// Runs the stream with a first gateway stopped by `stop` after a third of the messages, then a second one to the end;
/// returns (distinct messages delivered, messages delivered more than once).
async fn interrupted(test: &str, stop: impl FnOnce(&mut Launched)) -> (usize, usize) {
    let _lock = RabbitLock::shared().await;
    let amqp = Amqp::connect().await;
    let queue = random_name("sub-proc-q");
    amqp.queue(&queue, "amq.direct", &queue, false).await;
    fill(&amqp, &queue).await;
    let (app, counts) = counting_upstream().await;

    let mut first = gateway(test, &app.url(), &queue).await;
    eventually("a third of the stream delivered", async || delivered(&counts).0 >= MESSAGES / 3).await;
    stop(&mut first);
    let status = tokio::task::spawn_blocking(move || first.child.wait().unwrap()).await.unwrap();
    assert!(delivered(&counts).0 < MESSAGES, "stopped before the end of the stream ({status:?})");

    let _second = gateway(test, &app.url(), &queue).await;
    eventually("every message delivered", async || delivered(&counts).0 == MESSAGES).await;
    eventually("the queue empty", async || amqp.len(&queue).await == 0).await;
    let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    delivered(&counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_no_message_is_lost() {
    let (distinct, _twice) = interrupted("sub-sigkill", |g| g.child.kill().unwrap()).await;
    assert_eq!(distinct, MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_no_message_is_lost_or_delivered_twice() {
    let (distinct, twice) = interrupted("sub-sigterm", |g| {
        let ok = Command::new("kill").args(["-TERM", &g.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM");
    })
    .await;
    assert_eq!((distinct, twice), (MESSAGES, 0));
}

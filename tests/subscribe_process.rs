//! A subscription through the real binary, stopped in the middle of a stream, from a RabbitMQ queue and from a Kafka
//! topic in a consumer group: after `SIGKILL` no message is lost (the next process delivers what was not acknowledged
//! or committed; duplicates are allowed, and counted in the test's output), and after `SIGTERM` none is lost and none
//! is delivered twice (deliveries in flight finish and are acknowledged or committed; the rest go back to the queue,
//! or are read again from the committed offsets).

mod broker_support;
mod process_support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_support::common::{Upstream, reply};
use broker_support::{
    Amqp, KafkaLock, RabbitLock, amqp_url, committed_to_the_end, create_topic, eventually, kafka_bootstrap, random_name,
};
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

/// Where the stream comes from.
enum Source {
    Rabbit,
    Kafka,
}

async fn gateway(test: &str, upstream: &str, source: &str) -> Launched {
    let rest = format!(
        r#"shutdown_grace = "10s"

[upstreams.app]
endpoints = ["{upstream}"]

{source}name = "s"
to = {{ upstream = "app", path = "/in" }}
concurrency = 4
"#
    );
    Launched::with_routes(test, &[], &rest).await
}

/// A stream of the test's own: the broker and `from` of the subscription reading it, and its queue (RabbitMQ).
struct Stream {
    config: String,
    queue: Option<String>,
    /// Kafka: the topic and the consumer group.
    topic: Option<(String, String)>,
}

impl Stream {
    /// Fills a queue or a topic with the stream.
    async fn fill(kind: &Source, amqp: &Amqp) -> Stream {
        match kind {
            Source::Rabbit => {
                let queue = random_name("sub-proc-q");
                amqp.queue(&queue, "amq.direct", &queue, false).await;
                fill(amqp, &queue).await;
                let config = format!(
                    "[brokers.rabbit]\nkind = \"amqp\"\nurl = \"{}\"\n\n[[subscriptions]]\nfrom = {{ broker = \"rabbit\", queue = \"{queue}\" }}\n",
                    amqp_url()
                );
                Stream { config, queue: Some(queue), topic: None }
            }
            Source::Kafka => {
                let topic = create_topic("sub-proc", 3).await;
                produce(&topic).await;
                // A killed member is noticed after session.timeout.ms (librdkafka's 45 s by default): the broker's
                // smallest, so that the next process gets the partitions soon.
                let group = random_name("sub-proc-g");
                let config = format!(
                    "[brokers.events]\nkind = \"kafka\"\nbootstrap = \"{}\"\noptions = {{ \"session.timeout.ms\" = \"6000\" }}\n\n[[subscriptions]]\nfrom = {{ broker = \"events\", topic = \"{topic}\", group = \"{group}\" }}\n",
                    kafka_bootstrap(),
                );
                Stream { config, queue: None, topic: Some((topic, group)) }
            }
        }
    }

    /// Whether nothing is left to take: every message acknowledged, or the group's offsets committed to the end of
    /// every partition.
    async fn drained(&self, amqp: &Amqp) -> bool {
        match (&self.queue, &self.topic) {
            (Some(queue), _) => amqp.len(queue).await == 0,
            (None, Some((topic, group))) => committed_to_the_end(topic, group, 3).await,
            (None, None) => true,
        }
    }
}

async fn produce(topic: &str) {
    let records: Vec<serde_json::Value> = (0..MESSAGES)
        .map(|i| serde_json::json!({ "key": format!("m-{i}"), "value": "x", "headers": { "sluice-id": format!("m-{i}") } }))
        .collect();
    process_support::produce_independently(&["kafka", &kafka_bootstrap(), topic], &records).await;
}

fn delivered(counts: &Mutex<HashMap<String, usize>>) -> (usize, usize) {
    let counts = counts.lock().unwrap();
    (counts.len(), counts.values().filter(|n| **n > 1).count())
}

/// Runs the stream with a first gateway stopped by `stop` after a third of the messages, then a second one to the end;
/// returns (distinct messages delivered, messages delivered more than once).
async fn interrupted(test: &str, kind: Source, stop: impl FnOnce(&mut Launched)) -> (usize, usize) {
    let _locks = (RabbitLock::shared().await, KafkaLock::shared().await);
    let amqp = Amqp::connect().await;
    let stream = Stream::fill(&kind, &amqp).await;
    let (app, counts) = counting_upstream().await;

    let mut first = gateway(test, &app.url(), &stream.config).await;
    eventually("a third of the stream delivered", async || delivered(&counts).0 >= MESSAGES / 3).await;
    stop(&mut first);
    let status = tokio::task::spawn_blocking(move || first.child.wait().unwrap()).await.unwrap();
    assert!(delivered(&counts).0 < MESSAGES, "stopped before the end of the stream ({status:?})");

    let _second = gateway(test, &app.url(), &stream.config).await;
    eventually("every message delivered", async || delivered(&counts).0 == MESSAGES).await;
    eventually("the source drained", async || stream.drained(&amqp).await).await;
    if let Some(queue) = &stream.queue {
        let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    }
    // Duplicates arriving late would show here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (distinct, twice) = delivered(&counts);
    eprintln!("{test}: {distinct} of {MESSAGES} messages delivered, {twice} of them more than once");
    (distinct, twice)
}

fn sigterm(g: &mut Launched) {
    let ok = Command::new("kill").args(["-TERM", &g.child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_no_message_is_lost() {
    let (distinct, _twice) = interrupted("sub-sigkill", Source::Rabbit, |g| g.child.kill().unwrap()).await;
    assert_eq!(distinct, MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_no_message_is_lost_or_delivered_twice() {
    let (distinct, twice) = interrupted("sub-sigterm", Source::Rabbit, sigterm).await;
    assert_eq!((distinct, twice), (MESSAGES, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_after_sigkill_no_record_is_lost() {
    let (distinct, _twice) = interrupted("sub-kafka-sigkill", Source::Kafka, |g| g.child.kill().unwrap()).await;
    assert_eq!(distinct, MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_after_sigterm_no_record_is_lost_or_delivered_twice() {
    let (distinct, twice) = interrupted("sub-kafka-sigterm", Source::Kafka, sigterm).await;
    assert_eq!((distinct, twice), (MESSAGES, 0));
}

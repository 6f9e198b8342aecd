//! The durable spool through the real binary and the real brokers: while RabbitMQ (and, separately, Kafka) is
//! stopped with `integration/brokers.sh`, every publish is answered `202` with `"spooled": true`; the gateway is
//! SIGKILLed half-way; the broker and then a new gateway on the same spool directory are started, and an
//! independent consumer receives every id answered `202`, in the order it was answered per destination. Also: a
//! full spool answers `503` with `Retry-After`, and a torn last record is cut off with a log line.
//!
//! The outage tests stop a broker for everyone: they hold its lock exclusively (the other tests hold it shared).

mod broker_support;
mod process_support;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker_support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use process_support::{Launched, free_port, json_request};
use serde_json::Value;

/// Messages per outage test, sent by [`DESTINATIONS`] sequential clients, one destination each.
const MESSAGES: usize = 2000;
const DESTINATIONS: usize = 4;

/// One answer: status, JSON body, `Retry-After`. `None` when the connection failed (the gateway was killed).
async fn post(url: &str, dest: &str, body: String) -> Option<(u16, Value, String)> {
    let req = Request::post(url).header("x-dest", dest).header("content-type", "application/json");
    let (status, headers, body) = json_request(req.body(Full::new(Bytes::from(body))).unwrap()).await?;
    let retry_after = headers.get("retry-after").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    Some((status, body, retry_after))
}

/// Starts the binary with one publish route (`destination` is its publish table, sending to `{header.x-dest}`) and
/// the broker `broker` (a TOML table body) with a spool in `spool`.
async fn gateway(test: &str, broker: &str, destination: &str, spool: &Path, max_bytes: &str) -> Launched {
    let spool = spool.display();
    let rest = format!(
        r#"
[brokers.b]
{broker}

[brokers.b.spool]
dir = "{spool}"
max_bytes = "{max_bytes}"

[[routes]]
name = "events"
match = {{ path = "/events", methods = ["POST"] }}
publish = {destination}
"#
    );
    Launched::with_routes(test, &[], &rest).await
}

fn spool_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-spool-{test}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the clients were told, per destination in the order they were told it.
#[derive(Default)]
struct Answers {
    accepted: HashMap<String, Vec<String>>,
    spooled: usize,
    other: Vec<String>,
}

/// Each destination's client sends its next messages (from `from[dest]` up to `until`) one after the other; a
/// failed connection (the gateway was killed) ends that client's run. With `kill_at`, the gateway is SIGKILLed once
/// that many messages have been accepted in this run, while the clients are still sending.
async fn run_clients(
    gw: &mut Launched,
    next: &mut [usize],
    until: usize,
    kill_at: Option<usize>,
    answers: &mut Answers,
) {
    let accepted_now = Arc::new(AtomicUsize::new(0));
    let url = gw.url("/events");
    let mut tasks = Vec::new();
    for (d, first) in next.iter().enumerate() {
        let (url, accepted_now, first) = (url.clone(), accepted_now.clone(), *first);
        tasks.push(tokio::spawn(async move {
            let dest = format!("d{d}");
            let mut seen = Vec::new();
            for n in first..until {
                let body = format!(r#"{{"dest":"{dest}","n":{n}}}"#);
                let Some(answer) = post(&url, &dest, body).await else { break };
                accepted_now.fetch_add(usize::from(answer.0 == 202), Ordering::Relaxed);
                seen.push((n, answer));
            }
            (dest, seen)
        }));
    }
    if let Some(at) = kill_at {
        while accepted_now.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gw.child.kill().unwrap();
        gw.child.wait().unwrap();
    }
    for (d, task) in tasks.into_iter().enumerate() {
        let (dest, seen) = task.await.unwrap();
        for (n, (status, body, _)) in seen {
            next[d] = n + 1;
            if status == 202 {
                answers.accepted.entry(dest.clone()).or_default().push(body["id"].as_str().unwrap().to_owned());
                answers.spooled += usize::from(body["spooled"] == true);
            } else {
                answers.other.push(format!("{dest} #{n}: {status} {body}"));
            }
        }
    }
}

/// Every accepted id was received, and per destination in the order it was accepted (a message may come twice,
/// and one whose answer was lost to the kill may come too).
fn assert_all_received_in_order(answers: &Answers, received: &HashMap<String, Vec<String>>) {
    let mut lost = Vec::new();
    for (dest, accepted) in &answers.accepted {
        let wanted: HashSet<&String> = accepted.iter().collect();
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for id in received.get(dest).into_iter().flatten() {
            if wanted.contains(id) && seen.insert(id) {
                order.push(id);
            }
        }
        lost.extend(accepted.iter().filter(|id| !seen.contains(id)).map(|id| format!("{dest}: {id}")));
        let accepted_seen: Vec<&String> = accepted.iter().filter(|id| seen.contains(id)).collect();
        if let Some(at) = order.iter().zip(&accepted_seen).position(|(a, b)| a != b) {
            panic!("{dest}: message {at} of {} received out of the order accepted", accepted.len());
        }
    }
    assert!(lost.is_empty(), "{} ids answered 202 never arrived: {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

async fn readyz(gw: &Launched) -> Value {
    json_request(Request::get(gw.admin_url("/readyz")).body(Full::default()).unwrap()).await.unwrap().2
}

/// Starts a broker again if the test fails while it is stopped.
struct StartOnDrop(&'static str);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = std::panic::catch_unwind(|| brokers_sh(&[self.0]));
        }
    }
}

/// The outage scenario for one broker: stopped, 202s spooled, gateway SIGKILLed half-way, broker started, a new
/// gateway on the same spool, the rest sent; returns what the clients were told.
async fn outage(test: &str, broker: &str, destination: &str, stop: &str, start: &'static str) -> Answers {
    let spool = spool_dir(test);
    tokio::task::spawn_blocking({
        let stop = stop.to_owned();
        move || brokers_sh(&[&stop])
    })
    .await
    .unwrap();
    let mut restart = StartOnDrop(start);
    let mut answers = Answers::default();
    let mut next = vec![0; DESTINATIONS];
    let per_destination = MESSAGES / DESTINATIONS;

    let mut first = gateway(test, broker, destination, &spool, "1GiB").await;
    run_clients(&mut first, &mut next, per_destination, Some(MESSAGES / 2), &mut answers).await;
    let spooled_while_down = answers.accepted.values().map(Vec::len).sum::<usize>();
    assert!(answers.other.is_empty(), "while the broker was down, every answer was a 202: {:?}", answers.other);
    assert!(spooled_while_down >= MESSAGES / 2, "the first gateway took half the messages");
    assert_eq!(answers.spooled, spooled_while_down, "each was spooled");
    let log = first.stderr();
    assert!(log.contains("spooling messages"), "the spool is in use:\n{log}");
    // Quiet while down: one line for the outage and one for the spool, not one per attempt or message.
    let warnings: Vec<&str> =
        log.lines().filter(|l| l.contains(r#""level":"WARN""#) && l.contains("unreachable")).collect();
    assert!(warnings.len() <= 2, "a quiet outage, but:\n{}", warnings.join("\n"));

    tokio::task::spawn_blocking(move || brokers_sh(&[start])).await.unwrap();
    restart.0 = "";
    let mut second = gateway(test, broker, destination, &spool, "1GiB").await;
    run_clients(&mut second, &mut next, per_destination, None, &mut answers).await;
    assert!(answers.other.is_empty(), "after the restart, every answer was a 202: {:?}", answers.other);
    eventually("the spool drains", async || readyz(&second).await["spools"]["b"]["messages"] == 0).await;
    let log = second.stderr();
    assert!(log.contains("spool holds messages to replay"), "the second gateway recovered the spool:\n{log}");
    std::fs::remove_dir_all(&spool).unwrap();
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_outage_spooled_through_a_sigkill_then_replayed_in_order() {
    let _lock = RabbitLock::exclusive().await;
    let amqp = Amqp::connect().await;
    let prefix = random_name("spool");
    for d in 0..DESTINATIONS {
        amqp.queue(&format!("{prefix}.d{d}"), "amq.direct", &format!("{prefix}.d{d}"), true).await;
    }
    drop(amqp);
    let broker = format!("kind = \"amqp\"\nurl = \"{}\"", amqp_url());
    let destination =
        format!(r#"{{ broker = "b", exchange = "amq.direct", routing_key = "{prefix}.{{header.x-dest}}" }}"#);
    let answers = outage("amqp", &broker, &destination, "rabbit-stop", "rabbit-start").await;

    let amqp = Amqp::connect().await;
    let mut received = HashMap::new();
    for d in 0..DESTINATIONS {
        let queue = format!("{prefix}.d{d}");
        let ids: Vec<String> = amqp.drain(&queue).await.iter().filter_map(Delivered::message_id).collect();
        received.insert(format!("d{d}"), ids);
        let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    }
    assert_all_received_in_order(&answers, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_outage_spooled_through_a_sigkill_then_replayed_in_order() {
    let _lock = KafkaLock::exclusive().await;
    let topic = create_topic("spool", 2).await;
    let broker = format!("kind = \"kafka\"\nbootstrap = \"{}\"", kafka_bootstrap());
    let destination = format!(r#"{{ broker = "b", topic = "{topic}", key = "{{header.x-dest}}" }}"#);
    let answers = outage("kafka", &broker, &destination, "kafka-stop", "kafka-start").await;

    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    for record in kafka_read_all(&topic, 2).await {
        let dest = String::from_utf8(record.key.clone().unwrap()).unwrap();
        received.entry(dest).or_default().push(record.header("sluice-id").unwrap());
    }
    assert_all_received_in_order(&answers, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_and_a_torn_last_record_is_cut_off_with_a_log_line() {
    let _lock = RabbitLock::shared().await;
    // No broker listens here: everything is spooled.
    let dead = format!("kind = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"", free_port().await);
    let queue = random_name("spool-torn");
    let destination = format!(r#"{{ broker = "b", exchange = "amq.direct", routing_key = "{queue}" }}"#);
    let spool = spool_dir("torn");

    let mut gw = gateway("spool-full", &dead, &destination, &spool, "64KiB").await;
    let big = "x".repeat(8_000);
    let mut accepted = Vec::new();
    let full = loop {
        let (status, body, retry_after) = post(&gw.url("/events"), "-", format!(r#"{{"pad":"{big}"}}"#)).await.unwrap();
        match status {
            202 => {
                assert_eq!(body["spooled"], true, "{body}");
                accepted.push(body["id"].as_str().unwrap().to_owned());
            }
            _ => break (status, retry_after, body),
        }
        assert!(accepted.len() < 20, "64 KiB cannot hold 20 messages of 8 KB");
    };
    assert_eq!(full.0, 503, "a full spool: {}", full.2);
    assert!(full.1.parse::<u64>().is_ok(), "with Retry-After");
    assert_eq!(full.2["route"], "events", "a problem document: {}", full.2);
    assert!(accepted.len() >= 5, "64 KiB held {} messages of 8 KB", accepted.len());
    let ready = readyz(&gw).await;
    assert_eq!(ready["spools"]["b"]["messages"], accepted.len(), "{ready}");
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();

    // A torn frame at the end of the newest segment, as a crash in the middle of a write leaves.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let newest = segments.last().expect("a segment");
    std::fs::OpenOptions::new().append(true).open(newest).unwrap().write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();

    let amqp = Amqp::connect().await;
    amqp.queue(&queue, "amq.direct", &queue, false).await;
    let live = format!("kind = \"amqp\"\nurl = \"{}\"", amqp_url());
    let gw = gateway("spool-torn", &live, &destination, &spool, "64KiB").await;
    let mut received = Vec::new();
    eventually("every spooled message arrives", async || {
        received.extend(amqp.drain(&queue).await.iter().filter_map(Delivered::message_id));
        received.len() >= accepted.len()
    })
    .await;
    assert_eq!(received, accepted, "replayed in order, the torn record dropped");
    let log = gw.stderr();
    assert!(log.contains("dropped a torn record"), "the torn record is logged:\n{log}");
    let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    drop(gw);
    std::fs::remove_dir_all(&spool).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_message_the_broker_refuses_for_good_is_dropped_without_holding_back_the_others() {
    let _lock = RabbitLock::shared().await;
    let dead = format!("kind = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"", free_port().await);
    let queue = random_name("spool-refused");
    let destination = r#"{ broker = "b", exchange = "amq.direct", routing_key = "{header.x-dest}" }"#;
    let spool = spool_dir("refused");
    let mut gw = gateway("spool-refused", &dead, destination, &spool, "1MiB").await;
    let mut ids = Vec::new();
    // The second goes to a routing key no queue is bound to: RabbitMQ returns it (unroutable) at each attempt.
    for (n, dest) in [queue.as_str(), "nowhere-bound", queue.as_str()].into_iter().enumerate() {
        let (status, body, _) = post(&gw.url("/events"), dest, format!("{{\"n\":{n}}}")).await.unwrap();
        assert_eq!((status, &body["spooled"]), (202, &Value::Bool(true)), "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();

    let amqp = Amqp::connect().await;
    amqp.queue(&queue, "amq.direct", &queue, false).await;
    let live = format!("kind = \"amqp\"\nurl = \"{}\"", amqp_url());
    let gw = gateway("spool-refused", &live, destination, &spool, "1MiB").await;
    eventually("the refused message is given up", async || gw.stderr().contains("refused by the broker: dropped"))
        .await;
    eventually("the spool drains", async || readyz(&gw).await["spools"]["b"]["messages"] == 0).await;
    let log = gw.stderr();
    let dropped = log.lines().find(|l| l.contains("refused by the broker: dropped")).unwrap();
    assert!(dropped.contains(&ids[1]) && dropped.contains("NO_ROUTE"), "the drop names the message:\n{dropped}");
    // Replayed in order, at least once: the batch holding the refused message may be sent again whole, so the
    // others may come twice (first sightings keep their order).
    let mut received: Vec<String> = Vec::new();
    for id in amqp.drain(&queue).await.iter().filter_map(Delivered::message_id) {
        if !received.contains(&id) {
            received.push(id);
        }
    }
    assert_eq!(received, [ids[0].clone(), ids[2].clone()]);
    let _ = amqp.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    drop(gw);
    std::fs::remove_dir_all(&spool).unwrap();
}

//! A Kafka outage seen through the gateway: the broker is stopped (`brokers.sh kafka-stop`) and started again
//! (`kafka-start`) with the same state while clients keep publishing. While it is down, clients get `503` with
//! `Retry-After` (never a `202` for a message the broker did not take), `/readyz?verbose` names the broker as down
//! (`/readyz` itself stays `200`) and `sluice_broker_up` reads 0; once it is back the same gateway (same producer,
//! no restart) answers `202` again, and every message answered `202` is in the topic, exactly once.
//!
//! This test stops Kafka for everyone: it holds the Kafka lock exclusively (the other Kafka tests hold it shared)
//! and lives in its own test binary; run it on its own with `cargo test --test publish_kafka_outage`. It needs the
//! Kafka that `integration/brokers.sh up` started (it cannot stop a broker it did not start).

mod broker_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_support::*;
use serde_json::json;

/// Phases of the test, as workers see them when they send and when they get the answer.
const UP: u8 = 0;
/// `kafka-stop` has returned: the broker is down until `kafka-start` is called.
const DOWN: u8 = 1;

/// Clients publishing at once.
const WORKERS: usize = 6;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Ids of messages answered 202, with the body sent.
    accepted: Vec<(String, String)>,
    /// Bodies of messages answered 503 (the broker may have stored some of them anyway).
    unavailable: HashSet<String>,
    /// 503 answers to requests sent and answered while the broker was certainly down.
    unavailable_while_down: usize,
    /// Anything that breaks the contract.
    violations: Vec<String>,
}

/// Starts Kafka again if the test fails while it is stopped.
struct StartOnDrop(bool);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::panic::catch_unwind(|| brokers_sh(&["kafka-start"]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_restart_answers_503_never_202_and_the_producer_recovers() {
    let _lock = KafkaLock::exclusive().await;

    let topic = create_topic("e2e-kafka-outage", 3).await;
    let broker = random_name("kafka-outage");
    let gw = Arc::new(
        Gateway::start(json!({
            "brokers": { broker.as_str(): { "kind": "kafka", "bootstrap": kafka_bootstrap(), "delivery_timeout": "3s" } },
            "routes": [publish_route("outage", "/outage", json!({ "broker": broker, "topic": topic, "key": "{header.x-key}" }))]
        }))
        .await,
    );
    eventually("the gateway to reach Kafka (/readyz 200)", async || gw.brokers_up().await).await;

    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let down_count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (gw, phase, stop, seen) = (gw.clone(), phase.clone(), stop.clone(), seen.clone());
            let (accepted_count, down_count, topic) = (accepted_count.clone(), down_count.clone(), topic.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let body = format!("w{w}-{i}");
                    let sent_in = phase.load(Ordering::SeqCst);
                    let r = gw.post("/outage", &[("content-type", "text/plain"), ("x-key", &body)], body.clone()).await;
                    let answered_in = phase.load(Ordering::SeqCst);
                    let down = sent_in == DOWN && answered_in == DOWN;
                    let backoff = {
                        let mut s = seen.lock().unwrap();
                        match r.status {
                            202 => {
                                let doc = r.json();
                                if down {
                                    s.violations.push(format!("202 while Kafka was stopped: {doc}"));
                                }
                                if doc["topic"] != topic.as_str() || doc["partition"].as_i64().is_none() {
                                    s.violations.push(format!("202 without a receipt for {topic}: {doc}"));
                                }
                                let id = doc["id"].as_str().unwrap_or_default().to_owned();
                                s.accepted.push((id, body));
                                accepted_count.fetch_add(1, Ordering::SeqCst);
                                false
                            }
                            503 => {
                                let ok = r.header("content-type") == "application/problem+json"
                                    && r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1);
                                if !ok {
                                    s.violations
                                        .push(format!("503 without problem+json / Retry-After: {:?}", r.headers));
                                }
                                s.unavailable.insert(body);
                                s.unavailable_while_down += usize::from(down);
                                down_count.fetch_add(usize::from(down), Ordering::SeqCst);
                                true
                            }
                            other => {
                                s.violations.push(format!("status {other} (sent in phase {sent_in}): {}", r.text()));
                                true
                            }
                        }
                    };
                    if backoff {
                        // Like a client honouring Retry-After, only faster.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let accepted = || accepted_count.load(Ordering::SeqCst);

    // 1. Publishing works.
    eventually("20 messages accepted", async || accepted() >= 20).await;

    // 2. Kafka stops: /readyz?verbose and sluice_broker_up report it (the gateway stays ready), every publish is a
    // 503.
    let mut start_guard = StartOnDrop(true);
    tokio::task::spawn_blocking(|| brokers_sh(&["kafka-stop"])).await.unwrap();
    phase.store(DOWN, Ordering::SeqCst);
    eventually("/readyz?verbose to say Kafka is down", async || !gw.brokers_up().await).await;
    gw.assert_broker_down_but_ready(&broker).await;
    eventually("sluice_broker_up 0 while Kafka is stopped", async || {
        metric(&gw.metrics().await, "sluice_broker_up", &[("broker", &broker)]) == Some(0.0)
    })
    .await;
    // Two rounds per client: each waits for the 3s delivery timeout, so the producer times out records repeatedly.
    eventually("answers to requests sent while Kafka is stopped", async || {
        down_count.load(Ordering::SeqCst) >= 2 * WORKERS
    })
    .await;

    // 3. Kafka comes back: the same gateway (and producer) publishes again.
    phase.store(UP, Ordering::SeqCst);
    let after_stop = accepted();
    tokio::task::spawn_blocking(|| brokers_sh(&["kafka-start"])).await.unwrap();
    start_guard.0 = false;
    eventually("202s to resume after Kafka is back", async || accepted() >= after_stop + 20).await;
    eventually("/readyz 200 after Kafka is back", async || gw.brokers_up().await).await;
    eventually("sluice_broker_up 1 after Kafka is back", async || {
        metric(&gw.metrics().await, "sluice_broker_up", &[("broker", &broker)]) == Some(1.0)
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.violations.is_empty(),
        "{} contract violations, first: {:?}",
        seen.violations.len(),
        seen.violations.first()
    );
    assert!(seen.unavailable_while_down >= 2 * WORKERS, "requests while Kafka was stopped were answered 503");

    // 4. Every message answered 202 is in the topic exactly once, with its body; anything else in the topic is a
    //    message that was answered 503 (stored anyway: at-least-once from the client's view).
    let records = kafka_read_all(&topic, 3).await;
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    for rec in &records {
        let id = rec.header("sluice-id").expect("every record has a sluice-id");
        found.entry(id).or_default().push(String::from_utf8_lossy(&rec.payload).into_owned());
    }
    let ids: HashSet<&String> = seen.accepted.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), seen.accepted.len(), "every 202 has its own id");
    for (id, body) in &seen.accepted {
        let bodies = found.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            bodies,
            std::slice::from_ref(body),
            "message {id} ({body}) answered 202 is in the topic exactly once"
        );
    }
    let mut extra = 0;
    for (id, bodies) in &found {
        if ids.contains(id) {
            continue;
        }
        extra += bodies.len();
        for body in bodies {
            assert!(seen.unavailable.contains(body), "record {id} ({body}) was neither answered 202 nor 503");
        }
    }
    eprintln!(
        "kafka outage: {} answered 202 (all found in the topic exactly once), {} answered 503 ({} sent and answered \
         while Kafka was stopped); {extra} records answered 503 were stored anyway",
        seen.accepted.len(),
        seen.unavailable.len(),
        seen.unavailable_while_down,
    );
}

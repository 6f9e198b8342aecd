//! RabbitMQ outages seen through the gateway: the gateway's AMQP connection force-closed by the broker, then the
//! broker application stopped and started again, while clients keep publishing. Clients get `503` with
//! `Retry-After` (never a `202` for a message the broker did not take), `/readyz?verbose` names the broker as down
//! (while `/readyz` stays `200`: the gateway's other routes keep serving), publishing resumes without restarting
//! Sluice, and every message answered `202` is in the queue afterwards.
//!
//! This test stops RabbitMQ for everyone: it holds the RabbitMQ lock exclusively (the other RabbitMQ tests hold it
//! shared) and lives in its own test binary; run it on its own with `cargo test --test publish_amqp_outage`.

mod broker_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_support::*;
use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::json;

/// Phases of the test, as workers see them when they send and when they get the answer.
const UP: u8 = 0;
/// `rabbit-stop` has returned: the broker is down until `rabbit-start` is called.
const DOWN: u8 = 1;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Ids of messages answered 202.
    accepted: Vec<String>,
    /// 503 answers.
    unavailable: usize,
    /// 503 answers to requests sent and answered while the broker was certainly down.
    unavailable_while_down: usize,
    /// Anything that breaks the contract.
    violations: Vec<String>,
}

/// Starts RabbitMQ again if the test fails while it is stopped.
struct StartOnDrop(bool);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::panic::catch_unwind(|| brokers_sh(&["rabbit-start"]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outages_answer_503_never_202_and_every_202_is_delivered() {
    let _lock = RabbitLock::exclusive().await;

    // A durable exchange and queue, so that they and the persistent messages in them survive the broker restart.
    let exchange = random_name("e2e-outage-x");
    let queue = random_name("e2e-outage-q");
    {
        let amqp = Amqp::connect().await;
        amqp.exchange(&exchange, true).await;
        amqp.queue(&queue, &exchange, "outage", true).await;
        let _ = amqp.connection.close(200, "set up".into()).await;
    }
    let broker = random_name("outage");
    let gw = Arc::new(
        Gateway::start(json!({
            "brokers": { broker.as_str(): { "kind": "amqp", "url": amqp_url(), "confirm_timeout": "5s" } },
            "routes": [publish_route("outage", "/outage", json!({ "broker": broker, "exchange": exchange, "routing_key": "outage" }))]
        }))
        .await,
    );
    eventually("the gateway to connect (/readyz 200)", async || gw.brokers_up().await).await;

    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let unavailable_count = Arc::new(AtomicUsize::new(0));
    let down_count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (gw, phase, stop, seen) = (gw.clone(), phase.clone(), stop.clone(), seen.clone());
            let (accepted_count, unavailable_count, down_count) =
                (accepted_count.clone(), unavailable_count.clone(), down_count.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let sent_in = phase.load(Ordering::SeqCst);
                    let r = gw.post("/outage", &[("content-type", "text/plain")], format!("w{w}-{i}")).await;
                    let answered_in = phase.load(Ordering::SeqCst);
                    let down = sent_in == DOWN && answered_in == DOWN;
                    let backoff = {
                        let mut s = seen.lock().unwrap();
                        match r.status {
                            202 => {
                                let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                                if down {
                                    s.violations.push(format!("202 while the broker was stopped: {}", r.text()));
                                }
                                s.accepted.push(id);
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
                                s.unavailable += 1;
                                s.unavailable_while_down += usize::from(down);
                                unavailable_count.fetch_add(1, Ordering::SeqCst);
                                down_count.fetch_add(usize::from(down), Ordering::SeqCst);
                                true
                            }
                            other => {
                                s.violations.push(format!("status {other}: {}", r.text()));
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
    let unavailable = || unavailable_count.load(Ordering::SeqCst);

    // 1. Publishing works.
    eventually("20 messages accepted", async || accepted() >= 20).await;

    // 2. The broker force-closes the gateway's connection: in-flight and following publishes fail with 503 until
    //    the producer has reconnected by itself; then 202s resume.
    let (before_close_ok, before_close_503) = (accepted(), unavailable());
    let name = format!("sluice-{broker}");
    let closed = tokio::task::spawn_blocking(move || close_connections_named(&name)).await.unwrap();
    assert_eq!(closed, 1, "the gateway holds one AMQP connection, named sluice-{broker}");
    eventually("202s to resume after the connection was closed", async || accepted() >= before_close_ok + 20).await;
    let closing_503 = unavailable() - before_close_503;
    assert!(closing_503 > 0, "closing the connection under load produced no 503");

    // 3. The broker stops: /readyz?verbose and sluice_broker_up report it (the gateway stays ready), every publish is
    // a 503.
    let mut start_guard = StartOnDrop(true);
    tokio::task::spawn_blocking(|| brokers_sh(&["rabbit-stop"])).await.unwrap();
    phase.store(DOWN, Ordering::SeqCst);
    eventually("/readyz?verbose to say RabbitMQ is down", async || !gw.brokers_up().await).await;
    gw.assert_broker_down_but_ready(&broker).await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_broker_up", &[("broker", &broker)]), Some(0.0), "{m}");
    eventually("20 answers while RabbitMQ is stopped", async || down_count.load(Ordering::SeqCst) >= 20).await;

    // 4. The broker comes back: the same gateway reconnects, /readyz?verbose says so and 202s resume.
    phase.store(UP, Ordering::SeqCst);
    tokio::task::spawn_blocking(|| brokers_sh(&["rabbit-start"])).await.unwrap();
    start_guard.0 = false;
    eventually("/readyz 200 after RabbitMQ is back", async || gw.brokers_up().await).await;
    let after_start = accepted();
    eventually("202s to resume after RabbitMQ is back", async || accepted() >= after_start + 20).await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "sluice_broker_up", &[("broker", &broker)]), Some(1.0), "{m}");

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
    assert!(seen.unavailable_while_down >= 20, "requests while stopped were answered 503");

    // 5. Every message answered 202 is in the queue, exactly once.
    let amqp = Amqp::connect().await;
    let in_queue = amqp.len(&queue).await as usize;
    amqp.channel.basic_qos(500, BasicQosOptions::default()).await.unwrap();
    let mut consumer = amqp
        .channel
        .basic_consume(
            queue.as_str().into(),
            "e2e-outage-check".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut found: HashMap<String, usize> = HashMap::new();
    for _ in 0..in_queue {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("queued messages arrive")
            .expect("consumer open")
            .expect("delivery");
        let id = d.properties.message_id().as_ref().map(|s| s.to_string()).expect("message_id");
        *found.entry(id).or_default() += 1;
    }
    let accepted: HashSet<&String> = seen.accepted.iter().collect();
    assert_eq!(accepted.len(), seen.accepted.len(), "every 202 has its own id");
    let missing = accepted.iter().filter(|id| !found.contains_key(**id)).count();
    assert_eq!(missing, 0, "{missing} of {} messages answered 202 are not in the queue", accepted.len());
    let duplicated = found.values().filter(|n| **n > 1).count();
    assert_eq!(duplicated, 0, "messages stored twice");
    let extra = found.keys().filter(|id| !accepted.contains(id)).count();
    assert!(extra <= seen.unavailable, "messages in the queue that no request sent");
    eprintln!(
        "outage: {} answered 202 (all {} found in the queue), {} answered 503 ({} while the connection was being \
         closed, {} while RabbitMQ was stopped); {extra} messages answered 503 were stored anyway (at-least-once)",
        accepted.len(),
        accepted.len(),
        seen.unavailable,
        closing_503,
        seen.unavailable_while_down,
    );
    amqp.delete(&queue, &exchange).await;
}

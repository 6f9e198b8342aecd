//! Model-based tests of the spool log (after vector's disk buffer tests): random appends, replays, restarts and
//! torn writes against a plain queue of what was answered as stored.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::config::units::{Dur, Size};

fn settings(dir: &Path, max_bytes: u64, fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig { dir: dir.to_owned(), max_bytes: Size(max_bytes), fsync }
}

fn message(rng: &mut fastrand::Rng, n: usize) -> Message {
    let destination = match rng.u8(0..3) {
        0 => crate::publish::Destination::Kafka {
            topic: "t".into(),
            key: Some(Bytes::from(vec![rng.u8(..); 3])),
            partition: Some(1),
        },
        1 => crate::publish::Destination::Kafka { topic: "u".into(), key: None, partition: None },
        _ => crate::publish::Destination::Amqp { exchange: "x".into(), routing_key: format!("k{n}"), persistent: true },
    };
    let body: Vec<u8> = (0..rng.usize(0..3000)).map(|_| rng.u8(..)).collect();
    Message {
        id: format!("m{n}"),
        body: Bytes::from(body),
        content_type: rng.bool().then(|| "application/json".to_owned()),
        headers: vec![("sluice-route".into(), "r".into())],
        destination,
    }
}

fn open(cfg: &SpoolConfig) -> Log {
    Log::open("test", cfg, SpoolMetrics::default()).expect("open the spool")
}

fn newest_segment(dir: &Path) -> Option<std::path::PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop()
}

/// Replays up to `n` messages, checks them against the model's front and moves the cursor (or not: a crash).
fn replay(log: &Log, model: &mut VecDeque<Message>, n: usize, commit: bool) {
    let mut left = n;
    while left > 0 {
        let Some(batch) = log.shared().read_batch(left).expect("read") else { break };
        assert!(batch.lost.is_none(), "nothing is corrupted in this test");
        if batch.records.is_empty() {
            continue;
        }
        let (mut count, mut bytes, mut to) = (0, 0, None);
        for (i, (msg, size, next)) in batch.records.iter().enumerate() {
            assert_eq!(Some(msg), model.get(i), "replayed in the order they were stored");
            count += 1;
            bytes += size;
            to = Some(*next);
        }
        if !commit {
            return;
        }
        log.shared().advance(to.unwrap(), count, bytes);
        model.drain(..count as usize);
        left -= count as usize;
    }
}

#[tokio::test]
async fn random_appends_replays_restarts_and_torn_writes_never_lose_or_reorder_a_stored_message() {
    for seed in 0..12 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = std::env::temp_dir().join(format!("sluice-spool-model-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fsync = if seed % 2 == 0 { FsyncPolicy::Always } else { FsyncPolicy::Interval(Dur::ms(2)) };
        let cfg = settings(&dir, 256 * 1024, fsync);
        let mut log = open(&cfg);
        let mut model: VecDeque<Message> = VecDeque::new();
        let mut n = 0;
        for _ in 0..60 {
            match rng.u8(0..10) {
                0..=3 => {
                    for _ in 0..rng.usize(1..20) {
                        n += 1;
                        let msg = message(&mut rng, n);
                        match log.append(&msg).await {
                            Ok(()) => model.push_back(msg),
                            Err(e) => assert!(e.to_string().contains("full"), "only a full spool refuses: {e}"),
                        }
                    }
                }
                4..=6 => replay(&log, &mut model, rng.usize(1..40), true),
                7 => replay(&log, &mut model, rng.usize(1..40), false),
                8 => {
                    drop(log);
                    log = open(&cfg);
                }
                _ => {
                    // A torn write: part of a frame that was never synced (so never answered).
                    drop(log);
                    if let Some(newest) = newest_segment(&dir) {
                        let garbage: Vec<u8> = (0..rng.usize(1..40)).map(|_| rng.u8(..)).collect();
                        std::fs::OpenOptions::new().append(true).open(newest).unwrap().write_all(&garbage).unwrap();
                    }
                    log = open(&cfg);
                }
            }
            let depth = log.depth();
            assert_eq!(depth.messages, model.len() as u64, "seed {seed}: messages held");
            assert!(depth.bytes <= depth.max_bytes);
        }
        replay(&log, &mut model, usize::MAX, true);
        assert!(model.is_empty(), "seed {seed}: every stored message was replayed");
        assert!(log.shared().try_drain(), "an empty spool lets messages through again");
        assert!(!log.spooling());
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test]
async fn a_full_spool_refuses_and_takes_messages_again_once_replayed() {
    let dir = std::env::temp_dir().join(format!("sluice-spool-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = open(&settings(&dir, 64 * 1024, FsyncPolicy::Always));
    let mut rng = fastrand::Rng::with_seed(7);
    let big = |n| Message { body: Bytes::from(vec![7; 10_000]), ..message(&mut fastrand::Rng::with_seed(n), 0) };
    let mut model = VecDeque::new();
    let mut refused = 0;
    for n in 0..10 {
        let msg = Message { id: format!("big{n}"), ..big(n) };
        match log.append(&msg).await {
            Ok(()) => model.push_back(msg),
            Err(e) => {
                assert!(e.is_spoolable() && e.to_string().contains("full"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(model.len(), 6, "64 KiB hold six 10 KB messages");
    assert_eq!(refused, 4);
    replay(&log, &mut model, 3, true);
    log.append(&message(&mut rng, 99)).await.expect("room again");
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = std::env::temp_dir().join(format!("sluice-spool-lock-{}", std::process::id()));
    let cfg = settings(&dir, 1 << 20, FsyncPolicy::Always);
    let log = open(&cfg);
    let err = Log::open("other", &cfg, SpoolMetrics::default()).err().expect("refused");
    assert!(err.contains("in use"), "{err}");
    drop(log);
    drop(open(&cfg));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_corrupted_frame_in_the_middle_of_a_segment_is_reported_lost_and_skipped() {
    let dir = std::env::temp_dir().join(format!("sluice-spool-corrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = settings(&dir, 1 << 20, FsyncPolicy::Always);
    let log = open(&cfg);
    let mut rng = fastrand::Rng::with_seed(3);
    for n in 0..5 {
        log.append(&message(&mut rng, n)).await.unwrap();
    }
    // Flip a byte of the third frame's body on disk, after it was synced.
    let segment = newest_segment(&dir).unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 0..2 {
        at += record::HEADER_LEN + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    bytes[at + record::HEADER_LEN + 1] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let batch = log.shared().read_batch(100).unwrap().unwrap();
    assert_eq!(batch.records.len(), 2, "the frames before the damage");
    let (past, lost) = batch.lost.expect("the damage is reported");
    assert_eq!(past.offset, bytes.len() as u64);
    assert_eq!(lost, (bytes.len() - at) as u64);
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

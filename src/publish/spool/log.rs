//! The spool's log on disk, after vector's disk buffer: numbered segment files of checksummed frames
//! ([`super::record`]), a ledger (the replay cursor, in the file `cursor`), one writer thread that appends and
//! fsyncs in groups, and the reads of the replayer.
//!
//! - `append` reserves the message's bytes against `max_bytes` (full → `503`), hands the frame to the writer in
//!   arrival order, and resolves once an fsync covers it: a `202` is only ever given for a frame on disk.
//!   `fsync = "always"` syncs as soon as frames are waiting (those that arrive meanwhile share the next sync);
//!   `"interval:D"` syncs at most once per `D`.
//! - The replayer reads whole frames from the cursor up to the synced length of each segment, publishes them and
//!   moves the cursor (`advance`); a segment behind the cursor is deleted.
//! - `open` recovers after any stop, SIGKILL or power loss included: segments behind the cursor are deleted, the
//!   others are checked frame by frame, and a torn or corrupted tail is cut off with a log line (a torn frame was
//!   never fsync'd, so never answered `202`).
//! - `LOCK` is held (flock) while the log is open: two processes never share a spool directory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use super::record::{self, Frame, HEADER_LEN};
use crate::config::{FsyncPolicy, SpoolConfig};
use crate::publish::error::PublishError;
use crate::publish::message::Message;
use crate::telemetry::SpoolMetrics;

/// Most bytes read from a segment for one replay batch (a larger frame is read on its own).
const READ_WINDOW: u64 = 4 << 20;
/// Most bytes of frames waiting in memory for the writer: beyond it (a disk slower than the clients), `503`.
const QUEUE_MAX_BYTES: u64 = 64 << 20;

/// A position in the log: the next frame to replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// Frames read for replay, in log order.
pub struct Batch {
    /// Each message, with its frame's size and the cursor just past it.
    pub records: Vec<(Message, u64, Cursor)>,
    /// When the segment is corrupted after these records: the cursor past the lost part, and its size.
    pub lost: Option<(Cursor, u64)>,
}

/// Where a new message goes ([`Log::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to the broker.
    Direct,
    /// Into the spool, behind what is there.
    Spool,
    /// Wait for the replay to finish, then ask again.
    Wait,
}

/// How full the spool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Depth {
    /// Messages held (appended, not replayed yet).
    pub messages: u64,
    /// Their frames' bytes.
    pub bytes: u64,
    /// `max_bytes`.
    pub max_bytes: u64,
}

/// An open spool log. Dropping it stops its writer thread once the frames handed to it are written.
pub struct Log {
    shared: Arc<Shared>,
    appends: Mutex<mpsc::Sender<Append>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Log {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has written what it was handed.
        drop(std::mem::replace(self.appends.get_mut().unwrap_or_else(|e| e.into_inner()), mpsc::channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What the log's users and its writer thread share.
pub struct Shared {
    /// The spool directory.
    pub dir: PathBuf,
    /// The broker's name, for logs.
    pub broker: String,
    max_bytes: AtomicU64,
    /// fsync interval in nanoseconds; 0 for `always`.
    fsync_nanos: AtomicU64,
    state: Mutex<State>,
    /// Woken when frames became durable.
    pub written: Notify,
    /// Woken when `closing` ends (the spool drained, or the replay paused).
    reopened: Notify,
    metrics: SpoolMetrics,
    /// Held (flock) while the log is open.
    _lock: File,
}

struct State {
    /// New messages go behind the spooled ones (set by an append, cleared by [`Shared::try_drain`]).
    spooling: bool,
    /// The replay has caught up with what is on disk: new messages wait (briefly) for the last frames being written
    /// to be replayed, instead of going behind them, so that a spool drains under continuous load too.
    closing: bool,
    /// Messages appended (or being appended) and not replayed yet, and their bytes.
    messages: u64,
    bytes: u64,
    /// Frames handed to the writer and not synced yet, and their bytes.
    queued: u64,
    queued_bytes: u64,
    /// Segments by number; the writer appends to the last one. `len`: bytes synced.
    segments: VecDeque<Segment>,
    cursor: Cursor,
    /// The next append starts a new segment (the replayer drained the current one).
    rotate: bool,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    id: u64,
    len: u64,
}

struct Append {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

impl Log {
    /// Opens (creating it if needed) and recovers the spool in `cfg.dir`, and starts its writer thread.
    pub fn open(broker: &str, cfg: &SpoolConfig, metrics: SpoolMetrics) -> Result<Log, String> {
        let dir = cfg.dir.clone();
        let at = |e: io::Error, what: &str| format!("spool {}: {what}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(|e| at(e, "cannot create the directory"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(|e| at(e, "cannot write in the directory"))?;
        lock.try_lock().map_err(|_| format!("spool {}: in use by another process (LOCK is held)", dir.display()))?;
        let (segments, cursor, messages, bytes) = recover(&dir, broker).map_err(|e| at(e, "cannot be read"))?;
        // Past every segment and past the cursor: a new segment is never taken for one the cursor has left behind.
        let next_id = segments.back().map_or(0, |s| s.id + 1).max(cursor.segment + 1);
        let shared = Arc::new(Shared {
            dir,
            broker: broker.to_owned(),
            max_bytes: AtomicU64::new(0),
            fsync_nanos: AtomicU64::new(0),
            state: Mutex::new(State {
                spooling: messages > 0,
                closing: false,
                messages,
                bytes,
                queued: 0,
                queued_bytes: 0,
                segments,
                cursor,
                rotate: true,
            }),
            written: Notify::new(),
            reopened: Notify::new(),
            metrics,
            _lock: lock,
        });
        shared.configure(cfg);
        shared.report(&shared.lock());
        if messages > 0 {
            tracing::info!(broker, messages, bytes, dir = %shared.dir.display(), "spool holds messages to replay");
        }
        let (tx, rx) = mpsc::channel();
        let writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name(format!("spool-{broker}"))
            .spawn(move || write_loop(&writer, &rx, next_id))
            .map_err(|e| format!("spool {}: cannot start its writer: {e}", shared.dir.display()))?;
        Ok(Log { shared, appends: Mutex::new(tx), writer: Some(writer) })
    }

    /// What the replayer works with.
    #[must_use]
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Takes new `max_bytes` and `fsync` settings (a reload that kept the directory).
    pub fn configure(&self, cfg: &SpoolConfig) {
        self.shared.configure(cfg);
    }

    /// Whether new messages must go behind spooled ones.
    #[must_use]
    pub fn spooling(&self) -> bool {
        self.shared.lock().spooling
    }

    /// Where a new message goes now: straight to the broker (nothing spooled and `broker_up`), into the spool, or
    /// nowhere yet: the replay is finishing, wait for [`Log::reopened`] (up to a second, then spool it).
    #[must_use]
    pub fn route(&self, broker_up: bool) -> Route {
        let st = self.shared.lock();
        match (st.spooling, st.closing) {
            (false, _) if broker_up => Route::Direct,
            (true, true) => Route::Wait,
            _ => Route::Spool,
        }
    }

    /// Resolves when the replay that was finishing drained the spool or paused (see [`Log::route`]).
    pub async fn reopened(&self) {
        let notified = self.shared.reopened.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.shared.lock().closing {
            notified.await;
        }
    }

    /// Appends `msg` and returns once it is on disk. Errors: the spool is full, or the write failed (both
    /// [`PublishError::Unavailable`]: nothing was stored).
    pub async fn append(&self, msg: &Message) -> Result<(), PublishError> {
        if msg.body.len() + (64 << 10) > record::MAX_PAYLOAD {
            return Err(PublishError::rejected("message too large for the spool", None));
        }
        let frame = record::encode(msg);
        let size = frame.len() as u64;
        let done = {
            let mut st = self.shared.lock();
            let max = self.shared.max_bytes.load(Ordering::Relaxed);
            if st.bytes + size > max {
                return Err(PublishError::unavailable(
                    format!("spool {} is full ({} of {max} bytes held)", self.shared.dir.display(), st.bytes),
                    None,
                ));
            }
            if st.queued_bytes + size > QUEUE_MAX_BYTES {
                return Err(PublishError::unavailable("spool writer is behind (disk too slow)", None));
            }
            if !st.spooling {
                st.spooling = true;
                tracing::warn!(broker = %self.shared.broker, dir = %self.shared.dir.display(), "broker unreachable: spooling messages");
            }
            st.messages += 1;
            st.bytes += size;
            st.queued += 1;
            st.queued_bytes += size;
            let (done, written) = oneshot::channel();
            // Sent under the state lock, so that the log's order is the order of the `spooling` decisions.
            let sent = self.appends.lock().unwrap_or_else(|e| e.into_inner()).send(Append { frame, done });
            if sent.is_err() {
                st.messages -= 1;
                st.bytes -= size;
                st.queued -= 1;
                st.queued_bytes -= size;
                return Err(PublishError::unavailable("spool writer stopped", None));
            }
            self.shared.report(&st);
            written
        };
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::unavailable(format!("spool write failed: {e}"), None)),
            Err(_) => Err(PublishError::unavailable("spool writer stopped", None)),
        }
    }

    /// How full the spool is.
    #[must_use]
    pub fn depth(&self) -> Depth {
        self.shared.depth()
    }

    /// Waits up to `timeout` for the frames handed to the writer to be on disk.
    pub async fn settle(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.shared.lock().queued > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn configure(&self, cfg: &SpoolConfig) {
        self.max_bytes.store(cfg.max_bytes.0, Ordering::Relaxed);
        let nanos = match cfg.fsync {
            FsyncPolicy::Always => 0,
            FsyncPolicy::Interval(d) => u64::try_from(d.0.as_nanos()).unwrap_or(u64::MAX).max(1),
        };
        self.fsync_nanos.store(nanos, Ordering::Relaxed);
    }

    fn report(&self, st: &State) {
        self.metrics.messages.set(st.messages as i64);
        self.metrics.bytes.set(st.bytes as i64);
    }

    /// How full the spool is.
    #[must_use]
    pub fn depth(&self) -> Depth {
        let st = self.lock();
        Depth { messages: st.messages, bytes: st.bytes, max_bytes: self.max_bytes.load(Ordering::Relaxed) }
    }

    /// Largest segment: an eighth of `max_bytes`, between 1 MiB and 128 MiB.
    fn segment_max(&self) -> u64 {
        (self.max_bytes.load(Ordering::Relaxed) / 8).clamp(1 << 20, 128 << 20)
    }

    /// When nothing is held any more, lets new messages skip the spool again (and returns true). When only frames
    /// still being written are left, new messages are held back until those are replayed (`closing`).
    pub fn try_drain(&self) -> bool {
        let mut st = self.lock();
        let at_end = st.segments.back().is_none_or(|s| st.cursor.segment == s.id && st.cursor.offset >= s.len);
        if !at_end {
            return false;
        }
        if st.queued > 0 {
            st.closing = st.spooling;
            return false;
        }
        st.closing = false;
        self.reopened.notify_waiters();
        if st.messages > 0 {
            // Only after a corrupted segment, whose messages were not counted one by one.
            st.messages = 0;
            st.bytes = 0;
            self.report(&st);
        }
        if st.spooling {
            st.spooling = false;
            st.rotate = true;
            tracing::info!(broker = %self.broker, "spool drained: publishing directly again");
        }
        true
    }

    /// The replay paused (the broker is failing): new messages stop waiting for it and are spooled.
    pub fn reopen(&self) {
        let mut st = self.lock();
        if st.closing {
            st.closing = false;
            self.reopened.notify_waiters();
        }
    }

    /// Reads the next frames to replay (blocking file IO): up to `max_records`, from one segment. `None` when
    /// no synced frame is past the cursor.
    pub fn read_batch(&self, max_records: usize) -> io::Result<Option<Batch>> {
        loop {
            let (cursor, len, last) = {
                let st = self.lock();
                let Some(at) = st.segments.iter().position(|s| s.id == st.cursor.segment) else {
                    // The cursor's segment is gone (or was never written): go on at the oldest one there is.
                    let Some(first) = st.segments.front().map(|s| s.id) else { return Ok(None) };
                    drop(st);
                    self.lock().cursor = Cursor { segment: first, offset: 0 };
                    continue;
                };
                (st.cursor, st.segments[at].len, at + 1 == st.segments.len())
            };
            if cursor.offset >= len {
                if last {
                    return Ok(None);
                }
                self.next_segment(cursor);
                continue;
            }
            return self.read_frames(cursor, len, max_records).map(Some);
        }
    }

    /// Moves the cursor from the end of a segment to the start of the next, and deletes the finished one.
    fn next_segment(&self, from: Cursor) {
        let next = {
            let mut st = self.lock();
            if st.cursor != from {
                return;
            }
            st.segments.retain(|s| s.id != from.segment);
            let Some(next) = st.segments.front().map(|s| s.id) else { return };
            st.cursor = Cursor { segment: next, offset: 0 };
            st.cursor
        };
        self.remove_segment(from.segment);
        self.save_cursor(next);
    }

    fn read_frames(&self, cursor: Cursor, len: u64, max_records: usize) -> io::Result<Batch> {
        let mut file = File::open(segment_path(&self.dir, cursor.segment))?;
        file.seek(SeekFrom::Start(cursor.offset))?;
        let mut buf = vec![0; (len - cursor.offset).min(READ_WINDOW) as usize];
        file.read_exact(&mut buf)?;
        if record::check(&buf) == Frame::Short && buf.len() >= HEADER_LEN {
            // One frame larger than the window: read just that frame.
            let whole = HEADER_LEN as u64 + u64::from(u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")));
            if cursor.offset + whole <= len {
                buf.resize(whole as usize, 0);
                file.seek(SeekFrom::Start(cursor.offset))?;
                file.read_exact(&mut buf)?;
            } else {
                // A length running past the synced end: corrupted. The rest of the segment is lost.
                tracing::error!(broker = %self.broker, offset = cursor.offset, "spool segment corrupted: the messages after this offset are lost");
                return Ok(Batch {
                    records: Vec::new(),
                    lost: Some((Cursor { segment: cursor.segment, offset: len }, len - cursor.offset)),
                });
            }
        }
        let buf = Bytes::from(buf);
        let mut records = Vec::new();
        let mut at = 0usize;
        while records.len() < max_records && at < buf.len() {
            match record::check(&buf[at..]) {
                Frame::Whole(n) => {
                    let next = Cursor { segment: cursor.segment, offset: cursor.offset + (at + n) as u64 };
                    let Some(msg) = record::decode(buf.slice(at..at + n)) else { break };
                    records.push((msg, n as u64, next));
                    at += n;
                }
                Frame::Short => break,
                Frame::Corrupt => break,
            }
        }
        // Synced bytes that are not a frame, or a frame running past the synced end of the segment.
        let rest = &buf[at..];
        let to_the_end = buf.len() as u64 == len - cursor.offset;
        let lost =
            if records.len() < max_records && !rest.is_empty() && (record::check(rest) != Frame::Short || to_the_end) {
                // The rest of this segment cannot be trusted.
                let from = cursor.offset + at as u64;
                tracing::error!(
                    broker = %self.broker,
                    file = %segment_path(&self.dir, cursor.segment).display(),
                    offset = from,
                    "spool segment corrupted: the messages after this offset are lost"
                );
                Some((Cursor { segment: cursor.segment, offset: len }, len - from))
            } else {
                None
            };
        Ok(Batch { records, lost })
    }

    /// Records that the frames before `to` are replayed (or given up): `messages` of `bytes`.
    pub fn advance(&self, to: Cursor, messages: u64, bytes: u64) {
        {
            let mut st = self.lock();
            st.cursor = to;
            st.messages = st.messages.saturating_sub(messages);
            st.bytes = st.bytes.saturating_sub(bytes);
            self.report(&st);
        }
        self.save_cursor(to);
    }

    /// Writes the ledger. Not fsync'd: after a crash an older cursor only replays some messages again.
    fn save_cursor(&self, cursor: Cursor) {
        let tmp = self.dir.join("cursor.tmp");
        let result = std::fs::write(&tmp, format!("{} {}\n", cursor.segment, cursor.offset))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("cursor")));
        if let Err(e) = result {
            tracing::warn!(broker = %self.broker, error = %e, "spool cursor not saved (messages may be replayed twice)");
        }
    }

    fn remove_segment(&self, id: u64) {
        if let Err(e) = std::fs::remove_file(segment_path(&self.dir, id)) {
            tracing::warn!(broker = %self.broker, error = %e, segment = id, "spool segment not deleted");
        }
    }

    /// Counts a message replayed to the broker.
    pub fn replayed(&self, n: u64) {
        self.metrics.replayed.inc_by(n);
    }

    /// Counts messages given up on (corrupted on disk, or refused by the broker for good).
    pub fn dropped(&self, n: u64) {
        self.metrics.dropped.inc_by(n);
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Reads the ledger and checks every segment from the cursor on; returns the segments, the cursor and what is
/// held (messages, bytes).
fn recover(dir: &Path, broker: &str) -> io::Result<(VecDeque<Segment>, Cursor, u64, u64)> {
    let mut cursor = match std::fs::read_to_string(dir.join("cursor")) {
        Ok(text) => parse_cursor(&text).unwrap_or_else(|| {
            tracing::warn!(broker, dir = %dir.display(), "spool cursor unreadable: replaying every segment");
            Cursor::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Cursor::default(),
        Err(e) => return Err(e),
    };
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    ids.sort_unstable();
    for id in ids.iter().filter(|&&id| id < cursor.segment) {
        std::fs::remove_file(segment_path(dir, *id))?;
    }
    ids.retain(|&id| id >= cursor.segment);
    if ids.first() != Some(&cursor.segment) {
        cursor = Cursor { segment: ids.first().copied().unwrap_or(0), offset: 0 };
    }
    let (mut messages, mut bytes) = (0, 0);
    let mut segments = VecDeque::with_capacity(ids.len());
    for id in ids {
        let from = if id == cursor.segment { cursor.offset } else { 0 };
        let (len, n, size) = scan(dir, id, from, broker)?;
        cursor.offset = if id == cursor.segment { cursor.offset.min(len) } else { cursor.offset };
        messages += n;
        bytes += size;
        segments.push_back(Segment { id, len });
    }
    Ok((segments, cursor, messages, bytes))
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Cursor { segment: segment.parse().ok()?, offset: offset.parse().ok()? })
}

/// Checks the frames of a segment from `from` on; cuts off a torn or corrupted tail. Returns the segment's valid
/// length and the messages (and bytes) from `from` to it.
fn scan(dir: &Path, id: u64, from: u64, broker: &str) -> io::Result<(u64, u64, u64)> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    reader.seek(SeekFrom::Start(from.min(size)))?;
    let (mut at, mut messages) = (from.min(size), 0);
    let mut frame = Vec::new();
    let end = loop {
        if at == size {
            break None;
        }
        let mut header = [0; HEADER_LEN];
        if size - at < HEADER_LEN as u64 {
            break Some("torn");
        }
        reader.read_exact(&mut header)?;
        let len = u64::from(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")));
        if len > record::MAX_PAYLOAD as u64 || len < 4 {
            break Some("corrupted");
        }
        if size - at < HEADER_LEN as u64 + len {
            break Some("torn");
        }
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(HEADER_LEN + len as usize, 0);
        reader.read_exact(&mut frame[HEADER_LEN..])?;
        match record::check(&frame) {
            Frame::Whole(n) if record::decode(Bytes::copy_from_slice(&frame)).is_some() => {
                at += n as u64;
                messages += 1;
            }
            _ => break Some("corrupted"),
        }
    };
    if let Some(what) = end {
        // Never answered 202 when torn (the fsync that would have covered it did not finish).
        let lost = size - at;
        tracing::warn!(broker, file = %path.display(), offset = at, bytes = lost, "spool: dropped a {what} record at the end of a segment");
        file.set_len(at)?;
        file.sync_all()?;
    }
    Ok((at, messages, at - from.min(at)))
}

/// The segment the writer appends to.
struct Active {
    id: u64,
    file: File,
    len: u64,
}

/// The writer thread: takes every frame waiting, appends them, syncs once, then answers them all.
fn write_loop(shared: &Shared, appends: &mpsc::Receiver<Append>, mut next_id: u64) {
    let mut active: Option<Active> = None;
    let mut last_sync = Instant::now();
    while let Ok(first) = appends.recv() {
        let mut batch = vec![first];
        let interval = shared.fsync_nanos.load(Ordering::Relaxed);
        if interval > 0 {
            let until = last_sync + Duration::from_nanos(interval);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match appends.recv_timeout(left) {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
        }
        batch.extend(appends.try_iter());
        let result = write_batch(shared, &mut active, &mut next_id, &batch);
        last_sync = Instant::now();
        {
            let mut st = shared.lock();
            let size: u64 = batch.iter().map(|a| a.frame.len() as u64).sum();
            st.queued -= batch.len() as u64;
            st.queued_bytes -= size;
            match &result {
                Ok((id, len)) => {
                    if let Some(s) = st.segments.iter_mut().find(|s| s.id == *id) {
                        s.len = *len;
                    }
                }
                Err(_) => {
                    st.messages -= batch.len() as u64;
                    st.bytes -= size;
                }
            }
            shared.report(&st);
        }
        if let Err(e) = &result {
            tracing::error!(broker = %shared.broker, dir = %shared.dir.display(), error = %e, "spool write failed");
            // A failed segment is not appended to again.
            active = None;
        }
        shared.written.notify_one();
        let answer = result.map(|_| ()).map_err(|e| e.to_string());
        for append in batch {
            let _ = append.done.send(answer.clone());
        }
    }
}

/// Appends the frames and syncs; returns the segment and its new synced length.
fn write_batch(
    shared: &Shared,
    active: &mut Option<Active>,
    next_id: &mut u64,
    batch: &[Append],
) -> io::Result<(u64, u64)> {
    let size: u64 = batch.iter().map(|a| a.frame.len() as u64).sum();
    let rotate = std::mem::take(&mut shared.lock().rotate);
    let full = active.as_ref().is_some_and(|a| a.len > 0 && a.len + size > shared.segment_max());
    if active.is_none() || rotate || full {
        *active = None;
        let id = *next_id;
        *next_id += 1;
        let file = OpenOptions::new().create_new(true).write(true).open(segment_path(&shared.dir, id))?;
        // The new file's name must survive a power loss too.
        File::open(&shared.dir)?.sync_all()?;
        shared.lock().segments.push_back(Segment { id, len: 0 });
        *active = Some(Active { id, file, len: 0 });
    }
    let seg = active.as_mut().expect("an active segment");
    let mut buf = Vec::with_capacity(size as usize);
    for append in batch {
        buf.extend_from_slice(&append.frame);
    }
    let written = seg.file.write_all(&buf).and_then(|()| seg.file.sync_data());
    match written {
        Ok(()) => {
            seg.len += size;
            Ok((seg.id, seg.len))
        }
        Err(e) => {
            // Cut off what was written of the failed batch: those frames are answered 503.
            let _ = seg.file.set_len(seg.len);
            Err(e)
        }
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;

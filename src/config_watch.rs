//! The config file's watch (Linux, inotify): its directory is watched, so that editors that replace the file and
//! Kubernetes ConfigMap updates (a `..data` link renamed over) are seen, but only for the events that can bring new
//! content: a write closed, a file created or moved in. Not a write itself (`MODIFY`), an open, a read or a
//! deletion: writes come for every line a log kept open next to the config writes, and woke the watcher on each
//! (with access logs there, +38–48% CPU per request; bench/README, eighteenth round). `notify` cannot leave them
//! out (its inotify mask is fixed), so the watch uses the `inotify` crate, read on the gateway's runtime instead of
//! a thread of its own.
//!
//! Not seen: a program that keeps the file open and writes to it without closing it, and a `chmod` alone (`SIGHUP`
//! or `POST /reload` then). A new file written more slowly than the reload's debounce may be read half-written
//! once (a rejected reload, logged), then again when its write is closed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask};

/// What the directory watch asks for: the events that can bring the file new content.
const MASK: WatchMask = WatchMask::CLOSE_WRITE.union(WatchMask::CREATE).union(WatchMask::MOVED_TO);

/// The changes of one config file, as the events of its directory that name it arrive.
pub struct Changes {
    events: EventStream<[u8; 4096]>,
    name: OsString,
}

/// What an event said about the file.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The file itself was written, created or moved in.
    File,
    /// A Kubernetes ConfigMap's `..data` link was swapped.
    ConfigMap,
    /// The kernel's queue overflowed: events were lost, one of them may have named the file.
    Lost,
}

/// Starts watching the file at `path` (through its directory).
pub fn watch(path: &Path) -> io::Result<Changes> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::other("the config path names no file"))?.to_owned();
    let inotify = Inotify::init()?;
    inotify.watches().add(&dir, MASK)?;
    Ok(Changes { events: inotify.into_event_stream([0; 4096])?, name })
}

impl Changes {
    /// Waits for the next event that may have changed the file; `None` when the watch ended (logged): a read
    /// failed, or the kernel removed the watch (the directory was deleted or unmounted). Cancel-safe: an event is
    /// taken from the stream only to be answered at once.
    pub async fn next(&mut self) -> Option<Change> {
        while let Some(event) = self.events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "the config file's watch failed; reload with SIGHUP or POST /reload");
                    return None;
                }
            };
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                return Some(Change::Lost);
            }
            if event.mask.contains(EventMask::IGNORED) {
                tracing::warn!("the config file's directory is no longer watched; reload with SIGHUP or POST /reload");
                return None;
            }
            if let Some(change) = event.name.as_deref().and_then(|n| change_of(n, &self.name)) {
                return Some(change);
            }
        }
        None
    }
}

/// What an event naming `event` means for the config file named `file`.
fn change_of(event: &OsStr, file: &OsStr) -> Option<Change> {
    if event == file {
        Some(Change::File)
    } else if event == "..data" {
        Some(Change::ConfigMap)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use std::io::{Read, Write};
    use std::time::Duration;

    async fn next(changes: &mut Changes) -> Option<Change> {
        tokio::time::timeout(Duration::from_secs(10), changes.next()).await.expect("an event naming the file")
    }

    /// The events the kernel queued until `marker` is written, in their order (the kernel keeps it).
    async fn raw_until(changes: &mut Changes, marker: &str) -> Vec<(OsString, EventMask)> {
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), changes.events.next())
                .await
                .expect("the marker's event comes")
                .expect("the watch goes on")
                .expect("an event");
            let name = e.name.unwrap_or_default();
            let done = name == marker;
            seen.push((name, e.mask));
            if done {
                return seen;
            }
        }
    }

    #[tokio::test]
    async fn writes_to_and_reads_of_other_files_in_the_directory_wake_nothing() {
        let dir = Scratch::new("sluice-watch");
        let config = dir.join("routes.toml");
        std::fs::write(&config, "a = 1\n").unwrap();
        // A log kept open and written line by line, and a file read now and then, as next to a real config.
        let mut log = std::fs::File::create(dir.join("sluice.log")).unwrap();
        std::fs::write(dir.join("static.html"), "<p>").unwrap();
        let mut changes = watch(&config).unwrap();

        for i in 0..100 {
            writeln!(log, "line {i}").unwrap();
            let mut text = String::new();
            std::fs::File::open(dir.join("static.html")).unwrap().read_to_string(&mut text).unwrap();
        }
        std::fs::remove_file(dir.join("static.html")).unwrap();
        std::fs::write(dir.join("marker"), "").unwrap();
        let seen = raw_until(&mut changes, "marker").await;
        assert!(seen.iter().all(|(n, _)| n == "marker"), "events before the marker: {seen:?}");

        // Another file created, written and closed wakes the watch but is not the config (were it taken for it, the
        // first change would be `File`); a ConfigMap swap and the config rewritten in place are.
        std::fs::write(dir.join("other.toml"), "b = 1\n").unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.join("..data")).unwrap();
        assert_eq!(next(&mut changes).await, Some(Change::ConfigMap));
        std::fs::write(&config, "a = 2\n").unwrap();
        assert_eq!(next(&mut changes).await, Some(Change::File));
    }

    #[tokio::test]
    async fn a_replaced_file_a_swapped_configmap_and_a_recreated_file_are_seen() {
        let dir = Scratch::new("sluice-watch");
        let config = dir.join("routes.toml");
        std::fs::write(&config, "a = 1\n").unwrap();
        let mut changes = watch(&config).unwrap();

        // Replaced by rename (editors, `mv`): the temporary file's own events are not the config's.
        std::fs::write(dir.join(".routes.toml.swp"), "a = 2\n").unwrap();
        std::fs::rename(dir.join(".routes.toml.swp"), &config).unwrap();
        assert_eq!(next(&mut changes).await, Some(Change::File));
        // A ConfigMap's `..data` link renamed over (the new link's own creation is not the config's).
        std::os::unix::fs::symlink("elsewhere", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(next(&mut changes).await, Some(Change::ConfigMap));
        // Deleted (nothing to load), then created and written again.
        std::fs::remove_file(&config).unwrap();
        std::fs::File::create(&config).unwrap().write_all(b"a = 3\n").unwrap();
        assert_eq!(next(&mut changes).await, Some(Change::File));
    }

    #[tokio::test]
    async fn a_deleted_directory_ends_the_watch() {
        let dir = Scratch::new("sluice-watch");
        let sub = dir.join("etc");
        std::fs::create_dir(&sub).unwrap();
        let mut changes = watch(&sub.join("routes.toml")).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        assert_eq!(next(&mut changes).await, None);
    }

    #[test]
    fn only_the_files_own_name_and_the_configmap_link_count() {
        let file = OsStr::new("routes.toml");
        assert_eq!(change_of(OsStr::new("routes.toml"), file), Some(Change::File));
        assert_eq!(change_of(OsStr::new("..data"), file), Some(Change::ConfigMap));
        assert_eq!(change_of(OsStr::new("routes.toml.bak"), file), None);
        assert_eq!(change_of(OsStr::new("..data_tmp"), file), None);
    }
}

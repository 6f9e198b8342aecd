//! Hot reload. `SIGHUP`, a change of the config file (on Linux, a debounced watch of its directory,
//! `config_watch`: editors that replace the file and Kubernetes ConfigMap updates are seen) and `POST /reload` all
//! run the same steps:
//! load → validate → compile → swap. In-flight requests finish on the snapshot they started with; the next
//! request, also on a kept-alive connection, gets the new one. An invalid file is rejected with every problem
//! logged and `sluice_config_reloads_total{result="error"}` counted, and the old config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::server::Gateway;
use crate::snapshot::Snapshot;

/// How long the file must stay quiet after a change before it is read (editors write in several steps).
#[cfg(target_os = "linux")]
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// The result of one reload, as `POST /reload` answers it.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// Whether the new config is now serving.
    pub reloaded: bool,
    /// What asked for the reload: `sighup`, `file`, `admin`.
    pub trigger: &'static str,
    /// Every problem of a rejected file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Warnings of an accepted file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Changed settings that only a restart applies (`server.listen`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
    /// Routes now serving.
    pub routes: usize,
}

/// Reloads one gateway from its config file; one reload at a time.
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    /// Held for the whole of a reload (one at a time); the file's bytes as the last reload (or start-up) read
    /// them, so that the file watcher does not load again what `SIGHUP` or `POST /reload` already did.
    last_read: Mutex<Option<Vec<u8>>>,
}

impl Reloader {
    /// A reloader of `gateway` from the file at `path` (read once now: the content the gateway started with).
    pub fn new(path: PathBuf, gateway: Arc<Gateway>) -> Reloader {
        let started_with = std::fs::read(&path).ok();
        Reloader { path, gateway, last_read: Mutex::new(started_with) }
    }

    /// Loads, validates, compiles and swaps in the config file.
    pub async fn reload(&self, trigger: &'static str) -> Outcome {
        let mut last_read = self.last_read.lock().await;
        *last_read = tokio::fs::read(&self.path).await.ok();
        self.apply(trigger).await
    }

    /// The file watcher's reload: only when the file's content differs from what the last reload, whatever its
    /// trigger, read (an editor that saves the same bytes, a touch, or an edit already applied by `SIGHUP` count
    /// as nothing). `None` when there was nothing to do.
    #[cfg(target_os = "linux")]
    async fn reload_if_changed(&self) -> Option<Outcome> {
        let mut last_read = self.last_read.lock().await;
        let now = tokio::fs::read(&self.path).await.ok();
        if now.is_none() || now == *last_read {
            return None;
        }
        *last_read = now;
        Some(self.apply("file").await)
    }

    /// Load → validate → compile → swap; the caller holds `last_read`.
    async fn apply(&self, trigger: &'static str) -> Outcome {
        let metrics = self.gateway.metrics().clone();
        let current = self.gateway.snapshot.load_full();
        let mut outcome = Outcome {
            reloaded: false,
            trigger,
            problems: Vec::new(),
            warnings: Vec::new(),
            restart_needed: Vec::new(),
            routes: current.routes.len(),
        };
        let path = self.path.clone();
        let loaded = match tokio::task::spawn_blocking(move || crate::config::load(&path)).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(problems)) => {
                for p in &problems {
                    tracing::error!(trigger, problem = %p, "config reload rejected");
                }
                metrics.reload("error");
                outcome.problems = problems;
                return outcome;
            }
            Err(e) => {
                metrics.reload("error");
                outcome.problems = vec![format!("reading the config failed: {e}")];
                return outcome;
            }
        };
        let mut config = loaded.config;
        outcome.restart_needed = keep_startup_settings(&current.config, &mut config);
        for key in &outcome.restart_needed {
            tracing::warn!(trigger, key = %key, "config change needs a restart to take effect");
        }
        match Snapshot::build(config, Some(&current), &self.gateway.shared).await {
            Ok(next) => {
                outcome.routes = next.routes.len();
                let next = Arc::new(next);
                self.gateway.snapshot.store(next.clone());
                next.activate();
                metrics.reload("success");
                for w in &loaded.warnings {
                    tracing::warn!(trigger, warning = %w, "config warning");
                }
                tracing::info!(trigger, routes = outcome.routes, "config reloaded");
                outcome.reloaded = true;
                outcome.warnings = loaded.warnings;
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "config reload rejected: it could not be compiled");
                metrics.reload("error");
                outcome.problems = vec![e.to_string()];
            }
        }
        outcome
    }

    /// Reloads on every `SIGHUP` received by `hangup` and on every change of the config file (Linux), as long as
    /// the gateway lives (each task notices it is gone at its next signal or change). A file watch that cannot be set
    /// up is logged; SIGHUP and `POST /reload` still work.
    pub fn spawn(self: &Arc<Self>, hangup: Option<tokio::signal::unix::Signal>) {
        if let Some(mut hangup) = hangup {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let Some(me) = me.upgrade() else { return };
                    me.reload("sighup").await;
                }
            });
        }
        #[cfg(target_os = "linux")]
        match crate::config_watch::watch(&self.path) {
            Ok(changes) => {
                tokio::spawn(on_file_change(Arc::downgrade(self), changes));
            }
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot watch the config file"),
        }
        #[cfg(not(target_os = "linux"))]
        tracing::warn!(
            path = %self.path.display(),
            "the config file is watched on Linux only; reload with SIGHUP or POST /reload"
        );
    }
}

/// Settings read once at start-up (listeners, TLS on or off, the shutdown grace, logging and trace export):
/// returns the keys
/// whose value in `new` differs from the one in effect in `running`, and puts the value in effect back into
/// `new`, so that `/routes` shows what is served and every later reload reports the change again until a
/// restart. (`telemetry.access_log` is not one of them: each snapshot reads it.)
fn keep_startup_settings(running: &Config, new: &mut Config) -> Vec<String> {
    let mut keys = Vec::new();
    macro_rules! keep {
        ($($table:ident . $key:ident),*) => {$(
            if new.$table.$key != running.$table.$key {
                keys.push(concat!(stringify!($table), ".", stringify!($key)).to_owned());
                new.$table.$key = running.$table.$key.clone();
            }
        )*};
    }
    keep!(
        server.listen,
        server.admin_listen,
        server.shutdown_grace,
        server.max_connections,
        telemetry.log_format,
        telemetry.otlp_endpoint,
        telemetry.service_name,
        telemetry.sample_ratio
    );
    // Whether the listener speaks TLS at all is fixed at start-up; its certificate and key are reloaded.
    if new.server.tls.is_some() != running.server.tls.is_some() {
        keys.push("server.tls".to_owned());
        new.server.tls = running.server.tls.clone();
    }
    keys
}

/// Reloads after the file has been quiet for `DEBOUNCE`, and only when its content changed since the last
/// reload read it ([`Reloader::reload_if_changed`]). Ends with the watch, or at the first change after the
/// gateway is gone.
#[cfg(target_os = "linux")]
async fn on_file_change(reloader: std::sync::Weak<Reloader>, mut changes: crate::config_watch::Changes) {
    while changes.next().await.is_some() {
        // Debounce: wait until no event named the file for DEBOUNCE (a watch that ends meanwhile still has its
        // last change read).
        let ended = loop {
            match tokio::time::timeout(DEBOUNCE, changes.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        let Some(r) = reloader.upgrade() else { return };
        r.reload_if_changed().await;
        if ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_settings_are_reported_and_kept_at_the_value_in_effect() {
        let running = Config::default();
        let mut new = Config::default();
        new.server.listen = "127.0.0.1:1".parse().unwrap();
        new.server.shutdown_grace = crate::config::units::Dur::secs(1);
        new.server.request_timeout = crate::config::units::Dur::secs(1);
        new.telemetry.sample_ratio = 0.5;
        new.telemetry.access_log = false;
        let keys = keep_startup_settings(&running, &mut new);
        assert_eq!(keys, ["server.listen", "server.shutdown_grace", "telemetry.sample_ratio"]);
        assert_eq!(new.server.listen, running.server.listen, "the address served stays in the active config");
        assert_eq!(new.server.shutdown_grace, running.server.shutdown_grace);
        assert_eq!(new.telemetry.sample_ratio, running.telemetry.sample_ratio);
        assert_eq!(new.server.request_timeout, crate::config::units::Dur::secs(1), "reloadable: the new value");
        assert!(!new.telemetry.access_log, "reloadable: the new value");
    }

    #[test]
    fn turning_tls_on_or_off_needs_a_restart_while_other_files_are_taken() {
        let tls = |cert: &str| Some(crate::config::ServerTlsConfig { cert: cert.into(), key: "key.pem".into() });
        let mut running = Config::default();
        running.server.tls = tls("a.pem");
        let mut new = Config::default();
        new.server.tls = tls("b.pem");
        assert!(keep_startup_settings(&running, &mut new).is_empty());
        assert_eq!(new.server.tls, tls("b.pem"), "other files: reloaded");
        let mut off = Config::default();
        assert_eq!(keep_startup_settings(&running, &mut off), ["server.tls"]);
        assert_eq!(off.server.tls, running.server.tls, "the listener keeps speaking TLS");
        let mut on = Config::default();
        on.server.tls = tls("a.pem");
        assert_eq!(keep_startup_settings(&Config::default(), &mut on), ["server.tls"]);
        assert_eq!(on.server.tls, None);
    }
}

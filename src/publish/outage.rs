//! Quiet logs while a broker is down: one warning when an outage starts, one line when it ends (with how long it
//! lasted), and a reminder at most once every [`REMIND_EVERY`] in between. Every other failed attempt is a debug
//! line, so a ten-minute outage writes about a dozen lines, not thousands.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a continuing outage is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// The outage state of one broker client.
#[derive(Debug)]
pub struct Outage {
    broker: String,
    kind: &'static str,
    /// When the outage started, and when it was last logged.
    since: Mutex<Option<(Instant, Instant)>>,
}

impl Outage {
    /// No outage yet.
    #[must_use]
    pub fn new(broker: &str, kind: &'static str) -> Outage {
        Outage { broker: broker.to_owned(), kind, since: Mutex::new(None) }
    }

    /// A connection attempt failed, or a connection was lost, for `reason`.
    pub fn down(&self, reason: &dyn Display) {
        let now = Instant::now();
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *since {
            None => {
                *since = Some((now, now));
                tracing::warn!(broker = %self.broker, error = %reason, "{} broker unreachable", self.kind);
            }
            Some((start, logged)) if now.duration_since(*logged) >= REMIND_EVERY => {
                *logged = now;
                let down_for = humantime::format_duration(Duration::from_secs(start.elapsed().as_secs()));
                tracing::warn!(broker = %self.broker, error = %reason, down_for = %down_for, "{} broker still unreachable", self.kind);
            }
            Some(_) => tracing::debug!(broker = %self.broker, error = %reason, "{} broker unreachable", self.kind),
        }
    }

    /// The broker answers again.
    pub fn up(&self) {
        if let Some((start, _)) = self.since.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let down_for = humantime::format_duration(Duration::from_millis(start.elapsed().as_millis() as u64));
            tracing::info!(broker = %self.broker, down_for = %down_for, "{} broker reachable again", self.kind);
        }
    }
}

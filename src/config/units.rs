//! Human-friendly units used in `routes.toml`: durations (`"250ms"`), sizes (`"1MiB"`) and percentages.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a string such as `"250ms"`, `"5s"` or `"1m"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Shorthand for a duration in milliseconds (used by the defaults).
    pub const fn ms(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }

    /// Shorthand for a duration in seconds (used by the defaults).
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("bad duration {s:?} ({e}); write e.g. \"250ms\", \"5s\", \"1m\"")))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes written as a string such as `"64KiB"` or `"1MiB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Shorthand for a size in KiB (used by the defaults).
    pub const fn kib(n: u64) -> Self {
        Size(n * 1024)
    }

    /// Shorthand for a size in MiB (used by the defaults).
    pub const fn mib(n: u64) -> Self {
        Size(n * 1024 * 1024)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| de::Error::custom(format!("bad size {s:?} ({e}); write e.g. \"64KiB\", \"1MiB\"")))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytesize::ByteSize(self.0).display().iec_short().to_string())
    }
}

/// A percentage, a number from 0 to 100 (range checked by `validate`).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Percent(pub f64);

impl Percent {
    /// Whether the value lies in 0..=100.
    pub fn in_range(self) -> bool {
        (0.0..=100.0).contains(&self.0)
    }

    /// The percentage as a probability in 0..=1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        let d: Dur = serde_json::from_str("\"250ms\"").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        let d: Dur = serde_json::from_str("\"1m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(60));
        let s: Size = serde_json::from_str("\"64KiB\"").unwrap();
        assert_eq!(s.0, 65536);
        let s: Size = serde_json::from_str("\"1MiB\"").unwrap();
        assert_eq!(s.0, 1 << 20);
        assert!(serde_json::from_str::<Dur>("\"5 parsecs\"").is_err());
        assert!(serde_json::from_str::<Size>("\"lots\"").is_err());
    }
}

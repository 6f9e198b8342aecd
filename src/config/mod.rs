//! Configuration: the `routes.toml` model, loading with environment overrides, and validation.

mod keys;
mod load;
mod model;
pub mod units;
mod validate;

use std::path::Path;

pub use load::{from_value, read_str, read_value, route_label};
pub use model::*;
pub use validate::{Report, validate};

/// A config that parsed and validated, with the warnings `sluice check` prints.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
}

/// Reads, parses and validates the file at `path`, and checks the TLS files it names (they exist and parse);
/// `Err` lists every problem found.
pub fn load(path: &Path) -> Result<Loaded, Vec<String>> {
    let value = read_value(path).map_err(|e| vec![e])?;
    let (config, mut errors) = from_value(value);
    let report = validate(&config);
    errors.extend(report.errors);
    errors.extend(crate::tls::check_files(&config));
    if errors.is_empty() { Ok(Loaded { config, warnings: report.warnings }) } else { Err(errors) }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;

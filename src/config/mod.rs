//! Configuration: the `routes.toml` model, loading with environment overrides, and validation.

mod keys;
mod load;
mod model;
pub mod units;
mod validate;

use std::path::Path;

pub use load::{from_value, read_str, read_value, route_label, subscription_label};
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

/// How every problem caused by an environment variable that is not set ends (`url_env`, `options_env`,
/// `secret_env`, `api_keys_env`), so that `sluice check` can tell them from the others.
pub const UNSET_VARIABLE: &str = "which is not set";

/// Reads, parses and validates the file at `path`, and checks the TLS files it names (they exist and parse);
/// `Err` lists every problem found. An unset `*_env` variable is a problem: the gateway must not run without it.
pub fn load(path: &Path) -> Result<Loaded, Vec<String>> {
    let checked = check(path, true);
    if checked.errors.is_empty() {
        Ok(Loaded { config: checked.config.expect("a file that was read"), warnings: checked.warnings })
    } else {
        Err(checked.errors)
    }
}

/// What `sluice check` found in a file.
#[derive(Debug)]
pub struct Checked {
    /// The configuration, when the file could be read and parsed as TOML.
    pub config: Option<Config>,
    /// Problems that make it unusable.
    pub errors: Vec<String>,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
}

/// [`load`] for `sluice check`: with `strict` false, an unset `*_env` variable is a warning (so a CI step without
/// the secrets can check the file), else a problem.
pub fn check(path: &Path, strict: bool) -> Checked {
    let value = match read_value(path) {
        Ok(value) => value,
        Err(e) => return Checked { config: None, errors: vec![e], warnings: Vec::new() },
    };
    let (config, mut errors) = from_value(value);
    let mut report = validate(&config);
    errors.append(&mut report.errors);
    errors.extend(crate::tls::check_files(&config));
    errors.extend(crate::publish::spool::check_dirs(&config));
    if !strict {
        let (unset, others): (Vec<_>, Vec<_>) = errors.into_iter().partition(|e| e.ends_with(UNSET_VARIABLE));
        errors = others;
        report.warnings.extend(unset.into_iter().map(|e| format!("{e} (set it before `sluice run`)")));
    }
    Checked { config: Some(config), errors, warnings: report.warnings }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;

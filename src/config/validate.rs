//! `validate()`: every semantic check of a parsed config, pure, returning all problems at once.

use std::collections::HashSet;

use http::StatusCode;

use super::load::{names, route_label};
use super::model::{Balance, Config, RouteConfig, UpstreamConfig};
use crate::forward::RetryOn;
use crate::router::Matcher;
use crate::template::Template;

/// The outcome of validation: errors refuse the config, warnings are printed.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems that make the config unusable.
    pub errors: Vec<String>,
    /// Suspicious but valid settings (e.g. a shadowed route).
    pub warnings: Vec<String>,
}

/// Checks everything `serde` cannot: references, ranges, templates, route shadowing.
pub fn validate(config: &Config) -> Report {
    let mut report = Report::default();
    let errors = &mut report.errors;
    for (name, upstream) in &config.upstreams {
        check_upstream(name, upstream, errors);
    }
    let mut seen = HashSet::new();
    let mut compiled: Vec<(String, Option<Matcher>)> = Vec::new();
    for route in &config.routes {
        let label = route_label(route.index, Some(&route.name));
        if !seen.insert(route.name.as_str()) {
            errors.push(format!(
                "{label}: name {:?} is used by an earlier route",
                route.name
            ));
        }
        let matcher = match Matcher::compile(&route.matcher) {
            Ok(m) => Some(m),
            Err(es) => {
                errors.extend(es.into_iter().map(|e| format!("{label}: {e}")));
                None
            }
        };
        check_route(&label, route, matcher.as_ref(), config, errors);
        compiled.push((label, matcher));
    }
    for (i, (label, later)) in compiled.iter().enumerate() {
        let Some(later) = later else { continue };
        if let Some((earlier, _)) = compiled[..i]
            .iter()
            .find(|(_, m)| m.as_ref().is_some_and(|m| m.covers(later)))
        {
            report.warnings.push(format!(
                "{label}: never matches, every request it takes is taken by {earlier} first"
            ));
        }
    }
    report
}

fn check_upstream(name: &str, u: &UpstreamConfig, errors: &mut Vec<String>) {
    let at = format!("upstreams.{name}");
    if u.endpoints.is_empty() {
        errors.push(format!("{at}: endpoints must list at least one URL"));
    }
    for e in &u.endpoints {
        if let Err(why) = crate::forward::Endpoint::parse_url(e) {
            errors.push(format!("{at}: endpoints: {e:?} {why}"));
        }
    }
    match (&u.balance, &u.hash_key) {
        (Balance::Hash, None) => errors.push(format!("{at}: balance = \"hash\" needs hash_key")),
        (Balance::Hash, Some(k)) => {
            if let Err(e) = Template::parse(k) {
                errors.push(format!("{at}: hash_key: {e}"));
            }
        }
        (_, Some(_)) => errors.push(format!(
            "{at}: hash_key is only used with balance = \"hash\""
        )),
        (_, None) => {}
    }
    if u.max_concurrent == 0 {
        errors.push(format!("{at}: max_concurrent must be at least 1"));
    }
    if u.connect_timeout.0.is_zero() {
        errors.push(format!("{at}: connect_timeout must be more than 0"));
    }
    if u.resolve_interval.0.is_zero() {
        errors.push(format!("{at}: resolve_interval must be more than 0"));
    }
    if u.outlier.consecutive_failures == 0 {
        errors.push(format!(
            "{at}.outlier: consecutive_failures must be at least 1"
        ));
    }
    if !u.outlier.max_ejected_percent.in_range() {
        errors.push(format!(
            "{at}.outlier: max_ejected_percent must be between 0 and 100"
        ));
    }
    if u.outlier.ejection_time.0.is_zero() {
        errors.push(format!("{at}.outlier: ejection_time must be more than 0"));
    }
    if let Some(hc) = &u.health_check {
        if !hc.path.starts_with('/') {
            errors.push(format!(
                "{at}.health_check: path {:?} must start with '/'",
                hc.path
            ));
        }
        if hc.unhealthy_threshold == 0 || hc.healthy_threshold == 0 {
            errors.push(format!("{at}.health_check: thresholds must be at least 1"));
        }
        if hc.interval.0.is_zero() || hc.timeout.0.is_zero() {
            errors.push(format!(
                "{at}.health_check: interval and timeout must be more than 0"
            ));
        }
    }
}

fn check_route(
    label: &str,
    r: &RouteConfig,
    matcher: Option<&Matcher>,
    config: &Config,
    errors: &mut Vec<String>,
) {
    let params: Vec<&str> = matcher.map(|m| m.param_names()).unwrap_or_default();
    let check_template = |key: &str, source: &str, errors: &mut Vec<String>| match Template::parse(
        source,
    ) {
        Err(e) => errors.push(format!("{label}: {key}: {e}")),
        Ok(t) => {
            for p in t.path_params() {
                if matcher.is_some() && !params.contains(&p) {
                    errors.push(format!(
                        "{label}: {key} refers to {{path.{p}}} but match.path has no {{{p}}} segment"
                    ));
                }
            }
        }
    };
    let Some(forward) = &r.forward else {
        errors.push(format!("{label}: needs an action: forward"));
        return;
    };
    match config.upstreams.get(&forward.upstream) {
        None if config.broken_upstreams.contains(&forward.upstream) => {}
        None => errors.push(format!(
            "{label}: forward.upstream {:?} is not defined ({})",
            forward.upstream,
            if config.upstreams.is_empty() {
                "no upstreams are defined".to_owned()
            } else {
                format!("upstreams: {}", names(&config.upstreams))
            }
        )),
        Some(u) => {
            if let Some(k) = &u.hash_key {
                check_template(
                    &format!("upstreams.{}.hash_key", forward.upstream),
                    k,
                    errors,
                );
            }
        }
    }
    if let Some(p) = &forward.rewrite_prefix {
        if r.matcher.path_prefix.is_none() {
            errors.push(format!(
                "{label}: forward.rewrite_prefix needs match.path_prefix"
            ));
        }
        if !p.starts_with('/') {
            errors.push(format!(
                "{label}: forward.rewrite_prefix {p:?} must start with '/'"
            ));
        }
    }
    if forward.timeout.is_some_and(|t| t.0.is_zero()) {
        errors.push(format!("{label}: forward.timeout must be more than 0"));
    }
    if let Some(retry) = &r.retry {
        for on in &retry.on {
            if let Err(e) = on.parse::<RetryOn>() {
                errors.push(format!("{label}: retry.on: {e}"));
            }
        }
        if retry.max_backoff < retry.backoff {
            errors.push(format!(
                "{label}: retry.max_backoff must not be less than retry.backoff"
            ));
        }
        if !retry.budget_percent.in_range() {
            errors.push(format!(
                "{label}: retry.budget_percent must be between 0 and 100"
            ));
        }
        if retry.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
            errors.push(format!(
                "{label}: retry.per_try_timeout must be more than 0"
            ));
        }
    }
    if let Some(f) = &r.fault {
        for (key, pct) in [
            ("delay_percent", f.delay_percent),
            ("abort_percent", f.abort_percent),
        ] {
            if pct.is_some_and(|p| !p.in_range()) {
                errors.push(format!("{label}: fault.{key} must be between 0 and 100"));
            }
        }
        if f.delay.is_some() != f.delay_percent.is_some() {
            errors.push(format!(
                "{label}: fault.delay and fault.delay_percent go together"
            ));
        }
        if f.abort_status.is_some() != f.abort_percent.is_some() {
            errors.push(format!(
                "{label}: fault.abort_status and fault.abort_percent go together"
            ));
        }
        if let Some(s) = f.abort_status
            && (!(200..=599).contains(&s) || StatusCode::from_u16(s).is_err())
        {
            errors.push(format!(
                "{label}: fault.abort_status {s} must be an HTTP status from 200 to 599"
            ));
        }
    }
    if let Some(rl) = &r.rate_limit {
        if !(rl.per_second > 0.0 && rl.per_second.is_finite()) {
            errors.push(format!(
                "{label}: rate_limit.per_second must be more than 0"
            ));
        }
        if rl.burst.is_some_and(|b| !(b >= 1.0 && b.is_finite())) {
            errors.push(format!("{label}: rate_limit.burst must be at least 1"));
        }
        if let Some(k) = &rl.key {
            check_template("rate_limit.key", k, errors);
        }
    }
}

//! The `sluice` command line: `sluice [run] [-c|--config PATH]`, `sluice check [--strict] [--print] [PATH]`,
//! `sluice --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: measurably cheaper than glibc malloc for the many small per-request allocations (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Edge gateway: forward HTTP with mesh resilience, or publish it to RabbitMQ and Kafka"
)]
struct Cli {
    /// Config file (else $SLUICE_CONFIG, else ./routes.toml).
    #[arg(short = 'c', long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a config file, print every problem, and exit 1 if there is any. An environment variable a `*_env`
    /// key names that is not set is a warning (an error with --strict).
    Check {
        /// Config file to check.
        path: Option<PathBuf>,
        /// Unset `*_env` variables are errors, as `sluice run` treats them.
        #[arg(long)]
        strict: bool,
        /// Print the effective config (file, environment overrides and defaults) as JSON, secrets masked.
        #[arg(long)]
        print: bool,
    },
}

fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("routes.toml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { path, strict, print }) => check(config_path(path.or(cli.config)), strict, print),
        Some(Command::Run) | None => run(config_path(cli.config)),
    }
}

fn check(path: PathBuf, strict: bool, print: bool) -> ExitCode {
    let checked = sluice::config::check(&path, strict);
    // With --print, stdout is the JSON alone.
    let say = |line: &str| if print { eprintln!("{line}") } else { println!("{line}") };
    for w in &checked.warnings {
        say(&format!("warning: {w}"));
    }
    match checked.config {
        Some(c) if checked.errors.is_empty() => {
            if print {
                let mut doc = serde_json::to_value(&c).unwrap_or_default();
                sluice::redact::config(&mut doc);
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            say(&format!(
                "ok: {} routes, {} upstreams, {} brokers",
                c.routes.len(),
                c.upstreams.len(),
                c.brokers.len()
            ));
            ExitCode::SUCCESS
        }
        _ => {
            for p in &checked.errors {
                say(p);
            }
            eprintln!("{}: {} problem(s)", path.display(), checked.errors.len());
            ExitCode::from(1)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let loaded = match sluice::config::load(&path) {
        Ok(l) => l,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{}: refusing to start with {} problem(s)", path.display(), problems.len());
            return ExitCode::from(1);
        }
    };
    // One worker thread asked for: a current-thread runtime does the same work without the work-stealing
    // scheduler's cross-thread bookkeeping (bench/README.md).
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|n| n.trim() == "1");
    let builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        sluice::telemetry::init_logging(&loaded.config.telemetry);
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the signal handlers");
                return ExitCode::from(1);
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        // SIGHUP reloads; registered before start-up so that an early one cannot kill the process.
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload with POST /reload");
                None
            }
        };
        let listeners = match sluice::Listeners::bind(&loaded.config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot bind the listeners");
                return ExitCode::from(1);
            }
        };
        let reload = sluice::ReloadSource { path, hangup };
        match sluice::run_with_reload(loaded.config, Some(reload), listeners, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                ExitCode::from(1)
            }
        }
    })
}

/// Registers the SIGTERM and SIGINT handlers now (so a signal during start-up is not lost to the default action),
/// and returns a future that resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutdown signal received: draining");
    })
}

//! The `sluice` command line: `sluice [run] [-c|--config PATH]`, `sluice check [--strict] [--print] [PATH]`,
//! `sluice --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod allocator;

/// mimalloc: measurably cheaper than glibc malloc for the many small per-request allocations (bench/README.md).
#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

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
    let threads = match Threads::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match threads.start() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
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
    });
    if let Some(workers) = sluice::workers::installed() {
        workers.stop();
    }
    code
}

/// How the process runs its tasks, from `TOKIO_WORKER_THREADS` (default: one per core) and `SLUICE_RUNTIME`.
enum Threads {
    /// One thread for everything: a current-thread runtime, without the work-stealing scheduler's cross-thread
    /// bookkeeping (bench/README.md).
    Single,
    /// This many serving workers, one connection's work always on the same thread (`sluice::workers`), beside a
    /// work-stealing runtime of as many threads for everything else.
    PerCore(usize),
    /// Everything on tokio's work-stealing runtime (`SLUICE_RUNTIME=work-stealing`).
    WorkStealing,
}

impl Threads {
    fn from_env() -> Result<Threads, String> {
        let count = match std::env::var("TOKIO_WORKER_THREADS") {
            Ok(n) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("TOKIO_WORKER_THREADS must be a number above 0, not {n:?}")),
            },
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        match std::env::var("SLUICE_RUNTIME").as_deref().map(str::trim) {
            Err(_) | Ok("" | "per-core") if count == 1 => Ok(Threads::Single),
            Err(_) | Ok("" | "per-core") => Ok(Threads::PerCore(count)),
            Ok("work-stealing") => Ok(Threads::WorkStealing),
            Ok(other) => Err(format!("SLUICE_RUNTIME must be per-core or work-stealing, not {other:?}")),
        }
    }

    /// The main runtime (and the serving workers, which it hands client connections to).
    fn start(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Threads::Single => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            Threads::PerCore(count) => {
                sluice::workers::start(count)?;
                tokio::runtime::Builder::new_multi_thread().worker_threads(count).enable_all().build()
            }
            Threads::WorkStealing => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        }
    }
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

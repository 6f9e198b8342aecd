//! Shared bits of the two bench clients: argument parsing, the load loop's bookkeeping, CPU time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `--name value` pairs after the subcommand.
pub struct Args {
    pub command: String,
    values: HashMap<String, String>,
}

impl Args {
    pub fn parse(usage: &str) -> Self {
        let mut it = std::env::args().skip(1);
        let Some(command) = it.next() else { die(usage) };
        if command == "-h" || command == "--help" {
            println!("{usage}");
            std::process::exit(0);
        }
        let mut values = HashMap::new();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else { die(&format!("unexpected argument {flag:?}\n{usage}")) };
            if name == "bare" {
                values.insert(name.to_owned(), "true".to_owned());
                continue;
            }
            let Some(value) = it.next() else { die(&format!("--{name} needs a value\n{usage}")) };
            values.insert(name.to_owned(), value);
        }
        Self { command, values }
    }

    pub fn str(&self, name: &str, default: &str) -> String {
        self.values.get(name).cloned().unwrap_or_else(|| default.to_owned())
    }

    pub fn required(&self, name: &str) -> String {
        self.values.get(name).cloned().unwrap_or_else(|| die(&format!("--{name} is required")))
    }

    pub fn num(&self, name: &str, default: f64) -> f64 {
        match self.values.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{name}: not a number: {v:?}"))),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

pub fn die(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

/// CPU time (user + system, all threads) of this process, in seconds, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // CLK_TCK is 100 on Linux.
    (ticks(14) + ticks(15)) / 100.0
}

/// Counters shared by the load tasks.
#[derive(Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

/// Metadata shaped like Sluice's (DESIGN.md §4: sluice-id, sluice-route, x-request-id, traceparent), so
/// records have the same size as the ones Sluice writes. Empty with `--bare`.
pub fn sluice_like_headers(n: u64, bare: bool) -> Vec<(&'static str, String)> {
    if bare {
        return Vec::new();
    }
    let id = format!("0190b6a4-{:04x}-7000-8000-{:012x}", (n >> 48) & 0xffff, n & 0xffff_ffff_ffff);
    vec![
        ("sluice-id", id.clone()),
        ("sluice-route", "bench".to_owned()),
        ("x-request-id", id),
        ("traceparent", format!("00-{n:032x}-{n:016x}-01")),
    ]
}

/// Runs `warmup` seconds, then measures `duration` seconds, then stops the tasks and waits for the
/// sends still in flight. Prints one `key=value` line for bench/brokers.sh.
pub async fn measure(
    name: &str,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    warmup: f64,
    duration: f64,
    concurrency: usize,
    size: usize,
) {
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let ok0 = counters.ok.load(Ordering::Relaxed);
    let err0 = counters.errors.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    let ok1 = counters.ok.load(Ordering::Relaxed);
    let err1 = counters.errors.load(Ordering::Relaxed);
    let cpu1 = cpu_seconds();
    let secs = t0.elapsed().as_secs_f64();
    counters.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let msgs = ok1 - ok0;
    let cpu = cpu1 - cpu0;
    println!(
        "{name}: msgs={msgs} errors={} seconds={secs:.3} msgs_per_s={:.1} cpu_s={cpu:.2} cpu_us_per_msg={:.2} \
         total_ok={} total_errors={} concurrency={concurrency} size={size}",
        err1 - err0,
        msgs as f64 / secs,
        if msgs > 0 { 1e6 * cpu / msgs as f64 } else { 0.0 },
        counters.ok.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
    );
}

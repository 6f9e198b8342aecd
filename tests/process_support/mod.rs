//! The real `sluice` binary as a child process (for tests of what only the process shows: signals, file watching,
//! connection limits, memory), and HTTP/1.1 responses read off a raw socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A fresh directory under the temp dir named `PREFIX-<uuid>`, removed with what it holds when dropped (kept when
/// the test panics, for its evidence).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The gateway binary: `SLUICE_TEST_BIN` when set (a copy of this checkout's build, for machines where several
/// checkouts share one target directory), else the one cargo built for this test.
pub fn sluice_bin() -> PathBuf {
    std::env::var_os("SLUICE_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")), PathBuf::from)
}

/// The Python of the independent clients: `SLUICE_TEST_PYTHON`, else the venv of `integration/pyenv.sh`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/pyenv.sh");
    let out = Command::new(&script).arg("python").output().expect("run integration/pyenv.sh python");
    assert!(
        out.status.success(),
        "no Python for the independent clients (set SLUICE_TEST_PYTHON or run integration/pyenv.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs `tests/bridge_support/produce.py ARGS` (confluent-kafka or pika, not the gateway's client libraries) with
/// `items` on its stdin, and waits until it confirmed them all.
pub async fn produce_independently(args: &[&str], items: &[serde_json::Value]) {
    use std::io::Write as _;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bridge_support/produce.py");
    let (args, input): (Vec<String>, String) =
        (args.iter().map(|a| (*a).to_owned()).collect(), serde_json::to_string(items).unwrap());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(python())
            .arg(script)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start produce.py");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "done",
        "produce.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on right now.
pub async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Two different ports nothing listens on right now: both held while the second is picked (two calls of
/// [`free_port`] may get the same port back, the first being free again by the second).
pub async fn free_ports() -> (u16, u16) {
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// A running `sluice run --config FILE` in its own temporary directory (its stderr in `stderr.log` there); killed
/// when dropped, and the directory removed unless the test failed.
pub struct Launched {
    /// The temporary directory.
    pub dir: PathBuf,
    /// The config file as given on the command line.
    pub path: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub child: Child,
}

impl Drop for Launched {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Launched {
    /// Starts the binary on two free ports with the config file that `files` writes into a fresh directory named
    /// after `name` (given the ports) and returns the path of, with `env` added to an environment cleared of
    /// `SLUICE__…` overrides; returns once `/healthz` answers. Ports taken by someone else meanwhile: tried again.
    pub async fn start(name: &str, env: &[(&str, &str)], files: impl Fn(&Path, u16, u16) -> PathBuf) -> Launched {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            let (port, admin_port) = free_ports().await;
            let path = files(&dir, port, admin_port);
            let mut command = Command::new(sluice_bin());
            command.env_remove("SLUICE_CONFIG").env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null());
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("SLUICE__") {
                    command.env_remove(k);
                }
            }
            command.envs(env.iter().copied());
            let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
            let child = command.arg("run").arg("--config").arg(&path).stderr(stderr).spawn().unwrap();
            let mut launched = Launched { dir, path, port, admin_port, child };
            loop {
                if let Some(status) = launched.child.try_wait().unwrap() {
                    let log = launched.stderr();
                    assert!(log.contains("cannot bind"), "sluice exited ({status}) at start-up:\n{log}");
                    break;
                }
                let req = Request::get(launched.admin_url("/healthz")).body(Empty::new()).unwrap();
                if matches!(client.request(req).await, Ok(r) if r.status() == 200) {
                    return launched;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no free ports for sluice after 5 tries");
    }

    /// [`Launched::start`] with a `routes.toml` of a `[server]` listening on the two ports, followed by `rest`.
    pub async fn with_routes(name: &str, env: &[(&str, &str)], rest: &str) -> Launched {
        Launched::start(name, env, |dir: &Path, port, admin| {
            let path = dir.join("routes.toml");
            let server = format!("[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n");
            std::fs::write(&path, server + rest).unwrap();
            path
        })
        .await
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

/// Sends `req` (30 s at most): the status, headers and JSON body (`Null` when it is not JSON) of the answer; `None`
/// when the connection failed or timed out.
pub async fn json_request(req: Request<Full<Bytes>>) -> Option<(u16, http::HeaderMap, serde_json::Value)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await.ok()?.ok()?;
    let (head, body) = res.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((head.status.as_u16(), head.headers, serde_json::from_slice(&body).unwrap_or_default()))
}

/// The status, head and (`content-length`) body of one HTTP/1.1 response read off `stream`; `None` when the
/// connection ends first.
pub async fn read_http1_response(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .skip(1)
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, head, body))
}

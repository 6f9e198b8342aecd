//! TLS end to end, with certificates made at test time (rcgen): the gateway's HTTPS listener answers HTTP/1.1 and
//! HTTP/2 chosen by ALPN (curl and a rustls client) with `x-forwarded-proto: https`, handshakes do not hold up the
//! accept loop and are cut after a timeout, a connection holds its `max_connections` slot from before its handshake
//! and the header timeout starts after it, hyper's parse errors become problem documents over TLS too, and a reload
//! serves replaced certificate files to new connections;
//! `https://` upstreams are verified (a self-signed certificate is refused without `ca_file` with a 502 and a log
//! line, accepted with it, and retried on another endpoint; the system roots are used without `ca_file`; a reload
//! reads `ca_file` again; `tls_server_name` changes the name checked and the SNI sent; `http2 = true` uses ALPN
//! `h2`), and `sluice check` names a missing, unreadable or mismatched file.

mod common;
mod process_support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use process_support::read_http1_response;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// =============================================================================================================
// Certificates
// =============================================================================================================

/// A certificate and its key, as PEM text and as the DER a client receives.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A server certificate for `names` (DNS names or IP addresses) with serial number `serial`.
    fn leaf(&self, names: &[&str], serial: u64) -> Leaf {
        let (params, key) = leaf_params(names, serial);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

fn leaf_params(names: &[&str], serial: u64) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.serial_number = Some(SerialNumber::from(serial));
    params.distinguished_name.push(DnType::CommonName, format!("{} #{serial}", names[0]));
    (params, KeyPair::generate().unwrap())
}

/// A self-signed server certificate (its own root).
fn self_signed(names: &[&str], serial: u64) -> Leaf {
    let (params, key) = leaf_params(names, serial);
    let cert = params.self_signed(&key).unwrap();
    Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
}

/// A fresh directory for one test's files, removed when dropped (kept when the test failed).
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{test}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Writes `text` to the file `name` and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// =============================================================================================================
// An HTTPS upstream
// =============================================================================================================

/// One TLS handshake as an upstream saw it.
#[derive(Clone, Debug)]
struct Handshake {
    /// The SNI the client sent.
    sni: Option<String>,
    /// The ALPN protocol agreed (`h2`, `http/1.1`), if any.
    alpn: Option<String>,
    /// Whether the handshake completed.
    ok: bool,
}

/// An HTTPS server on 127.0.0.1:0 (HTTP/1.1 or HTTP/2 by ALPN) answering 200 `tls-upstream`, recording every
/// handshake and every request.
struct TlsUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    requests: Arc<Mutex<Vec<(Version, http::HeaderMap)>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(leaf: &Leaf) -> TlsUpstream {
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes: Arc<Mutex<Vec<Handshake>>> = Arc::default();
        let requests: Arc<Mutex<Vec<(Version, http::HeaderMap)>>> = Arc::default();
        let (hs, reqs) = (handshakes.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                while open.try_join_next().is_some() {}
                let (acceptor, hs, reqs) = (acceptor.clone(), hs.clone(), reqs.clone());
                open.spawn(async move {
                    // Read the ClientHello first, so that the SNI is known even when the handshake then fails.
                    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                    let Ok(start) = start.await else { return };
                    let sni = start.client_hello().server_name().map(str::to_owned);
                    let config = acceptor.config().clone();
                    let stream = match start.into_stream(config).await {
                        Ok(s) => s,
                        Err(_) => {
                            hs.lock().unwrap().push(Handshake { sni, alpn: None, ok: false });
                            return;
                        }
                    };
                    let alpn = stream.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
                    hs.lock().unwrap().push(Handshake { sni, alpn, ok: true });
                    let service = service_fn(move |req: Request<Incoming>| {
                        let reqs = reqs.clone();
                        async move {
                            reqs.lock().unwrap().push((req.version(), req.headers().clone()));
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(full("tls-upstream")))
                        }
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        TlsUpstream { addr, handshakes, requests, task }
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<(Version, http::HeaderMap)> {
        self.requests.lock().unwrap().clone()
    }
}

// =============================================================================================================
// A gateway from a config file (so that it can reload)
// =============================================================================================================

/// `sluice::run_with_reload` on port 0 with the config file `routes.toml` in `dir`.
struct FileGateway {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<()>>,
}

impl FileGateway {
    async fn start(dir: &Dir, toml: &str) -> FileGateway {
        let path = dir.write("routes.toml", toml);
        let loaded = sluice::config::load(&path).unwrap_or_else(|e| panic!("config refused: {e:#?}"));
        let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let reload = sluice::ReloadSource { path, hangup: None };
        let done = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let listeners = sluice::Listeners { main, admin };
            if let Err(e) = sluice::run_with_reload(loaded.config, Some(reload), listeners, shutdown).await {
                panic!("sluice::run failed: {e}");
            }
        });
        FileGateway { addr, admin: admin_addr, stop: Some(stop), done: Some(done) }
    }

    /// One series of the admin listener's `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let req = Request::get(format!("http://{}/metrics", self.admin)).body(empty()).unwrap();
        metric(&send(&client(), req).await.text(), series).unwrap_or(0.0)
    }

    async fn post_reload(&self) -> Resp {
        let req = Request::post(format!("http://{}/reload", self.admin)).body(empty()).unwrap();
        send(&client(), req).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap();
    }
}

/// A directory for test `name` holding a certificate for `localhost` (serial `serial`) and its key as `cert.pem`
/// and `key.pem` (what [`tls_server`] reads), and the CA that issued it.
fn localhost_cert(name: &str, serial: u64) -> (Dir, Ca) {
    let dir = Dir::new(name);
    let ca = Ca::new("Sluice Test CA");
    let leaf = ca.leaf(&["localhost"], serial);
    dir.write("cert.pem", &leaf.cert_pem);
    dir.write("key.pem", &leaf.key_pem);
    (dir, ca)
}

/// `[server]` of a gateway with `server.tls` from the files `cert.pem` and `key.pem` in `dir`.
fn tls_server(dir: &Dir) -> String {
    tls_server_with(dir, "")
}

/// [`tls_server`] with the extra `[server]` keys `keys` (TOML lines).
fn tls_server_with(dir: &Dir, keys: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         tls = {{ cert = {:?}, key = {:?} }}\n{keys}\n[telemetry]\naccess_log = false\n",
        dir.path("cert.pem"),
        dir.path("key.pem"),
    )
}

/// `[upstreams.NAME]` with `endpoints` and the extra `keys` (TOML lines), and a route `/NAME` forwarding to it
/// without retries.
fn upstream_and_route(name: &str, endpoints: &[String], keys: &str) -> String {
    format!(
        "\n[upstreams.{name}]\nendpoints = {endpoints:?}\n{keys}\n\n[[routes]]\nname = {name:?}\n\
         match = {{ path_prefix = \"/{name}\" }}\nforward = {{ upstream = {name:?} }}\nretry = {{ max_retries = 0 }}\n"
    )
}

// =============================================================================================================
// Clients
// =============================================================================================================

/// What a TLS client saw.
#[derive(Debug)]
struct Seen {
    version: Version,
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    /// The certificate the server presented.
    cert: CertificateDer<'static>,
    /// The TLS version agreed.
    protocol: rustls::ProtocolVersion,
}

/// `GET https://{name}{path}` on `addr`, trusting `ca_pem`, offering the ALPN `protocols`, limited to `versions`.
async fn https_get(
    addr: SocketAddr,
    name: &str,
    ca_pem: &str,
    protocols: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    path: &str,
) -> Seen {
    let config = client_config(ca_pem, versions, protocols);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await.expect("handshake");
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().expect("a certificate")[0].clone().into_owned();
    let protocol = conn.protocol_version().unwrap();
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let uri = format!("https://{name}:{}{path}", addr.port());
    let io = TokioIo::new(tls);
    let res = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(Request::get(uri).body(Empty::<Bytes>::new()).unwrap()).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path).header("host", format!("{name}:{}", addr.port()));
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap()
    };
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Seen { version: parts.version, status: parts.status.as_u16(), headers: parts.headers, body, cert, protocol }
}

const TLS13_AND_12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS client connection over `tcp` to `localhost`, trusting `ca_pem`, ALPN `http/1.1`: for raw HTTP/1.1 bytes.
async fn tls_connect(tcp: TcpStream, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_offering(tcp, ca_pem, &[b"http/1.1"]).await
}

/// A TLS client connection over `tcp` to `localhost`, trusting `ca_pem`, offering `alpn` (none when empty).
async fn tls_connect_offering(
    tcp: TcpStream,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    let config = client_config(ca_pem, TLS13_AND_12, alpn);
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("handshake")
}

/// A rustls client config trusting `ca_pem`, limited to `versions`, offering the ALPN `protocols` (none when empty).
fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    protocols: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// curl's HTTP version (`1.1`, `2`), status and body for `https://localhost:{port}{path}`, trusting `ca`.
async fn curl(port: u16, ca: &Path, version_flag: &str, path: &str) -> (String, u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", version_flag, "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{response_code}"])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (version, status) = last.split_once(' ').unwrap();
    (version.to_owned(), status.parse().unwrap(), body.to_owned())
}

// =============================================================================================================
// Log capture
// =============================================================================================================

/// Every log line of this test process, as JSON (a global subscriber: a thread's own default would miss the
/// callsites other tests' threads registered first).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The process's log capture, installed on first use.
    fn global() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test binary");
            logs
        })
        .clone()
    }

    /// Lines whose message is `message`.
    fn lines(&self, message: &str) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }
}

// =============================================================================================================
// The HTTPS listener
// =============================================================================================================

#[tokio::test]
async fn https_listener_serves_http2_and_http1_by_alpn_with_x_forwarded_proto_https() {
    let dir = Dir::new("listener");
    let ca = Ca::new("Sluice Test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], 1001);
    dir.write("ca.pem", &ca.pem);
    dir.write("cert.pem", &leaf.cert_pem);
    dir.write("key.pem", &leaf.key_pem);
    let up = Upstream::named("orders").await;
    let gw = FileGateway::start(&dir, &(tls_server(&dir) + &upstream_and_route("orders", &[up.url()], ""))).await;

    // curl, HTTP/2 by ALPN and HTTP/1.1.
    let (version, status, body) = curl(gw.addr.port(), &dir.path("ca.pem"), "--http2", "/orders/a").await;
    assert_eq!((version.as_str(), status, body.as_str()), ("2", 200, "orders"));
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), "https", "{:?}", seen.headers);
    assert_eq!(seen.uri.path(), "/orders/a");
    let (version, status, body) = curl(gw.addr.port(), &dir.path("ca.pem"), "--http1.1", "/orders/b").await;
    assert_eq!((version.as_str(), status, body.as_str()), ("1.1", 200, "orders"));
    assert_eq!(up.last().header("x-forwarded-proto"), "https");
    assert_eq!(up.hits(), 2);

    // A rustls client: ALPN h2 → HTTP/2, ALPN http/1.1 → HTTP/1.1, TLS 1.3 by default and TLS 1.2 when asked.
    let h2 = https_get(gw.addr, "localhost", &ca.pem, &[b"h2", b"http/1.1"], TLS13_AND_12, "/orders/c").await;
    assert_eq!((h2.version, h2.status, &h2.body[..]), (Version::HTTP_2, 200, &b"orders"[..]));
    assert_eq!(h2.protocol, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(h2.cert, leaf.der, "the configured certificate is served");
    let h1 = https_get(gw.addr, "127.0.0.1", &ca.pem, &[b"http/1.1"], &[&rustls::version::TLS12], "/orders/d").await;
    assert_eq!((h1.version, h1.status, &h1.body[..]), (Version::HTTP_11, 200, &b"orders"[..]));
    assert_eq!(h1.protocol, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(up.last().header("x-forwarded-proto"), "https");

    // Gateway-made errors go through the same per-route stacks over TLS.
    let missing = https_get(gw.addr, "localhost", &ca.pem, &[b"h2"], TLS13_AND_12, "/nowhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.headers["content-type"], "application/problem+json");
    assert!(!missing.headers["x-request-id"].is_empty());

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = client().request(Request::get(format!("http://{}/orders/e", gw.addr)).body(empty()).unwrap()).await;
    assert!(plain.is_err(), "plain HTTP must not be served on the TLS listener: {plain:?}");
    assert_eq!(up.hits(), 4);
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_holds_up_no_other_connection_and_is_cut_after_the_timeout() {
    let (dir, ca) = localhost_cert("handshake", 7);
    let up = Upstream::named("orders").await;
    let gw = FileGateway::start(&dir, &(tls_server(&dir) + &upstream_and_route("orders", &[up.url()], ""))).await;

    // A client that connects and never says hello.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    // Another client completes its handshake and its request while the first one is still waiting (were
    // handshakes done in the accept loop, this one would only be served after the first had been cut off).
    let seen = https_get(gw.addr, "localhost", &ca.pem, &[b"h2"], TLS13_AND_12, "/orders").await;
    assert_eq!(seen.status, 200);
    let mut buf = [0u8; 16];
    assert!(
        matches!(stalled.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled connection is still open, waiting in its handshake"
    );
    // The gateway gives up on it after the handshake timeout and closes it.
    let closed = tokio::time::timeout(sluice::server::TLS_HANDSHAKE_TIMEOUT * 6, stalled.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the stalled handshake is cut: {closed:?}");
    gw.stop().await;
}

#[tokio::test]
async fn over_tls_the_header_timeout_starts_after_the_handshake_and_parse_errors_are_problems() {
    let (dir, ca) = localhost_cert("limits", 8);
    let up = Upstream::named("orders").await;
    let server = tls_server_with(&dir, "header_read_timeout = \"1s\"\nmax_header_bytes = \"16KiB\"");
    let gw = FileGateway::start(&dir, &(server + &upstream_and_route("orders", &[up.url()], ""))).await;

    // A client that waits longer than header_read_timeout before its handshake (within the handshake's own
    // timeout) is still served: the header timeout starts once the handshake is done.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut tls = tls_connect(tcp, &ca.pem).await;
    tls.write_all(b"GET /orders/late HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let (status, head, _) = read_http1_response(&mut tls).await.expect("an answer");
    assert_eq!(status, 200, "{head}");
    assert_eq!(up.last().uri.path(), "/orders/late");

    // A head sent too slowly after the handshake is cut by header_read_timeout, long before the handshake timeout.
    let mut slow = tls_connect(TcpStream::connect(gw.addr).await.unwrap(), &ca.pem).await;
    slow.write_all(b"GET /orders/slow HTTP/1.1\r\nhost: lo").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(sluice::server::TLS_HANDSHAKE_TIMEOUT, slow.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the slow head is cut: {closed:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "not before the header timeout");
    assert!(gw.metric("sluice_connection_timeouts_total{timeout=\"header\"}").await >= 1.0);

    // hyper's bare 431 for a head over max_header_bytes becomes a problem document over TLS too.
    let mut fat = tls_connect(TcpStream::connect(gw.addr).await.unwrap(), &ca.pem).await;
    let head = format!("GET /orders/fat HTTP/1.1\r\nhost: localhost\r\nx-fat: {}\r\n\r\n", "a".repeat(20 * 1024));
    fat.write_all(head.as_bytes()).await.unwrap();
    let (status, head, body) = read_http1_response(&mut fat).await.expect("an answer");
    assert_eq!(status, 431, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 431, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("16384"), "{problem}");
    assert_eq!(up.hits(), 1, "neither the slow nor the fat request reached the upstream");
    gw.stop().await;
}

#[tokio::test]
async fn over_tls_a_connection_holds_its_max_connections_slot_from_before_its_handshake() {
    let (dir, ca) = localhost_cert("slots", 9);
    let up = Upstream::named("orders").await;
    let server = tls_server_with(&dir, "max_connections = 1");
    let gw = FileGateway::start(&dir, &(server + &upstream_and_route("orders", &[up.url()], ""))).await;

    // A client that never says hello takes the only slot.
    let stalled = TcpStream::connect(gw.addr).await.unwrap();
    let mut at_limit = false;
    for _ in 0..500 {
        at_limit = gw.metric("sluice_open_connections").await == 1.0
            && gw.metric("sluice_connection_limit_reached_total").await >= 1.0;
        if at_limit {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(at_limit, "the connection in its handshake holds the one slot");
    // So another client's handshake waits in the backlog ...
    let (addr, ca_pem) = (gw.addr, ca.pem.clone());
    let mut next = tokio::spawn(async move {
        https_get(addr, "localhost", &ca_pem, &[b"h2"], TLS13_AND_12, "/orders/next").await.status
    });
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(700), &mut next).await;
    assert!(waiting.is_err(), "the second client waits for a slot: {waiting:?}");
    assert_eq!(up.hits(), 0);
    // ... until the first goes away.
    drop(stalled);
    assert_eq!(next.await.unwrap(), 200);
    assert_eq!(up.last().uri.path(), "/orders/next");
    gw.stop().await;
}

#[tokio::test]
async fn idle_tls_connections_that_chose_http1_are_parked_and_lose_no_byte_across_the_pause() {
    let (dir, ca) = localhost_cert("parking", 10);
    let up = Upstream::named("orders").await;
    let gw = FileGateway::start(&dir, &(tls_server(&dir) + &upstream_and_route("orders", &[up.url()], ""))).await;
    let parked = async || gw.metric("sluice_parked_connections").await;

    // ALPN http/1.1: a whole request and the start of the next in one write, the rest after a pause (as for a
    // plain connection, the bytes hyper read ahead must begin the next request).
    let mut tls = tls_connect(TcpStream::connect(gw.addr).await.unwrap(), &ca.pem).await;
    tls.write_all(b"GET /orders/a HTTP/1.1\r\nhost: localhost\r\n\r\nGET /orders/b HTTP/1.1\r\nx-part: ")
        .await
        .unwrap();
    let (status, head, _) = read_http1_response(&mut tls).await.expect("an answer");
    assert_eq!(status, 200, "{head}");
    tokio::time::sleep(sluice::park::PARK_AFTER * 4).await;
    tls.write_all(b"one\r\nhost: localhost\r\n\r\n").await.unwrap();
    let (status, head, body) = read_http1_response(&mut tls).await.expect("the split request is answered");
    assert_eq!((status, &body[..]), (200, &b"orders"[..]), "{head}");
    let seen = up.last();
    assert_eq!(
        (seen.uri.path(), seen.header("x-part"), seen.header("x-forwarded-proto")),
        ("/orders/b", "one", "https")
    );
    // Idle after a request: parked (the gauge says so), and served again on the same TLS session, twice.
    for path in ["/orders/c", "/orders/d"] {
        eventually("the idle TLS connection is parked", async || parked().await == 1.0).await;
        tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes()).await.unwrap();
        let (status, head, _) = read_http1_response(&mut tls).await.expect("an answer");
        assert_eq!(status, 200, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "a parked connection stays kept alive: {head}"
        );
        assert_eq!(up.last().uri.path(), path);
    }

    // No ALPN: served (it might have been HTTP/2 by prior knowledge), never parked.
    let mut plain = tls_connect_offering(TcpStream::connect(gw.addr).await.unwrap(), &ca.pem, &[]).await;
    plain.write_all(b"GET /orders/e HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_http1_response(&mut plain).await.expect("an answer").0, 200);
    eventually("the ALPN connection is parked again", async || parked().await == 1.0).await;
    tokio::time::sleep(sluice::park::PARK_AFTER * 4).await;
    assert_eq!(parked().await, 1.0, "the connection without ALPN is not parked");
    plain.write_all(b"GET /orders/f HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_http1_response(&mut plain).await.expect("an answer").0, 200);

    drop(plain);
    assert_eq!(up.hits(), 6);
    // A drain closes the parked TLS connection in order: close_notify, which the client reads as a clean end (not
    // rustls' "peer closed connection without sending TLS close_notify").
    eventually("parked before the drain", async || parked().await == 1.0).await;
    gw.stop().await;
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf)).await.expect("closed");
    assert!(matches!(end, Ok(0)), "an orderly TLS close: {end:?}");
}

/// Over TLS a client that goes away mid-request abandons it too (hyper looks for the close through the TLS session:
/// the socket alone would show the client's `close_notify` as bytes, not as a close).
#[tokio::test]
async fn over_tls_a_client_that_goes_away_mid_request_abandons_it() {
    let (dir, ca) = localhost_cert("gone", 12);
    let (never, _gate) = gated("never").await;
    let gw = FileGateway::start(&dir, &(tls_server(&dir) + &upstream_and_route("never", &[never.url()], ""))).await;
    let mut tls = tls_connect(TcpStream::connect(gw.addr).await.unwrap(), &ca.pem).await;
    tls.write_all(b"GET /never HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    eventually("the request to reach the upstream", async || never.hits() == 1).await;
    assert_eq!(gw.metric("sluice_requests_in_flight").await, 1.0);
    tls.shutdown().await.unwrap();
    drop(tls);
    eventually("the abandoned request to leave the in-flight gauge", async || {
        gw.metric("sluice_requests_in_flight").await == 0.0
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn reload_serves_the_replaced_certificate_to_new_connections_and_a_bad_pair_is_rejected() {
    let dir = Dir::new("reload");
    let ca = Ca::new("Sluice Test CA");
    let first = ca.leaf(&["localhost"], 1001);
    let second = ca.leaf(&["localhost"], 2002);
    dir.write("cert.pem", &first.cert_pem);
    dir.write("key.pem", &first.key_pem);
    let up = Upstream::named("orders").await;
    let toml = tls_server(&dir) + &upstream_and_route("orders", &[up.url()], "");
    let gw = FileGateway::start(&dir, &toml).await;
    let get = || https_get(gw.addr, "localhost", &ca.pem, &[b"h2"], TLS13_AND_12, "/orders");
    let before = get().await;
    assert_eq!((before.status, &before.cert), (200, &first.der));

    // Replace both files, then reload: new connections get the new certificate.
    dir.write("cert.pem", &second.cert_pem);
    dir.write("key.pem", &second.key_pem);
    let r = gw.post_reload().await;
    assert_eq!(r.json()["reloaded"], true, "{}", r.text());
    let after = get().await;
    assert_eq!(after.status, 200);
    assert_eq!(after.cert, second.der, "the replaced certificate (serial 2002) is served after the reload");
    assert_ne!(after.cert, first.der);

    // A key that is not the certificate's: the reload is rejected, naming both files; the last good pair serves.
    dir.write("key.pem", &first.key_pem);
    let r = gw.post_reload().await;
    let body = r.json();
    assert_eq!(body["reloaded"], false, "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("cert.pem") && problems.contains("key.pem"), "{problems}");
    assert!(problems.contains("do not go together"), "{problems}");
    assert_eq!(get().await.cert, second.der);

    // A missing certificate file: rejected, naming it.
    dir.write("key.pem", &second.key_pem);
    std::fs::remove_file(dir.path("cert.pem")).unwrap();
    let body = gw.post_reload().await.json();
    assert_eq!(body["reloaded"], false, "{body}");
    assert!(body["problems"].to_string().contains("server.tls.cert"), "{body}");
    assert_eq!(get().await.cert, second.der);

    // Turning TLS off needs a restart: reported as such, and the listener keeps speaking TLS.
    dir.write("cert.pem", &second.cert_pem);
    let plain = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n"
        .to_owned()
        + &upstream_and_route("orders", &[up.url()], "");
    dir.write("routes.toml", &plain);
    let body = gw.post_reload().await.json();
    assert_eq!(body["reloaded"], true, "{body}");
    assert_eq!(body["restart_needed"], serde_json::json!(["server.tls"]), "{body}");
    assert_eq!(get().await.status, 200);
    gw.stop().await;
}

// =============================================================================================================
// HTTPS upstreams
// =============================================================================================================

/// A plain-HTTP gateway with the upstreams and routes in `rest` (TOML).
async fn plain_gateway(dir: &Dir, rest: &str) -> FileGateway {
    let toml = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[telemetry]\naccess_log = false\n"
        .to_owned()
        + rest;
    FileGateway::start(dir, &toml).await
}

async fn get(gw: &FileGateway, path: &str) -> Resp {
    send(&client(), Request::get(format!("http://{}{path}", gw.addr)).body(empty()).unwrap()).await
}

#[tokio::test]
async fn a_self_signed_upstream_is_refused_without_ca_file_with_a_502_and_a_log_line_and_accepted_with_it() {
    let logs = Logs::global();
    let dir = Dir::new("upstream-ca");
    let leaf = self_signed(&["localhost"], 5);
    let ca_file = dir.write("upstream-ca.pem", &leaf.cert_pem);
    let up = TlsUpstream::start(&leaf).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let rest = upstream_and_route("system", std::slice::from_ref(&url), "")
        + &upstream_and_route("pinned", std::slice::from_ref(&url), &format!("ca_file = {ca_file:?}"));
    let gw = plain_gateway(&dir, &rest).await;

    // System roots do not know the self-signed certificate: 502, nothing sent, the reason only in the log.
    let refused = get(&gw, "/system/x").await;
    let problem = assert_problem(&refused, 502, Some("system"));
    let text = refused.text();
    for leak in ["certificate", "UnknownIssuer", "TLS", &up.addr.port().to_string()] {
        assert!(!text.contains(leak), "the problem leaks {leak:?}: {problem}");
    }
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    eventually("the upstream saw the failed handshake", async || !up.handshakes().is_empty()).await;
    let hs = up.handshakes();
    assert!(hs.iter().all(|h| !h.ok), "{hs:?}");
    assert_eq!(hs[0].sni.as_deref(), Some("localhost"), "SNI is the endpoint's host");
    let lines = logs.lines("upstream TLS handshake failed");
    let line = lines.iter().find(|l| l["fields"]["endpoint"] == url.as_str()).expect("a log line says why");
    assert_eq!(line["fields"]["upstream"], "system");
    assert_eq!(line["level"], "WARN");
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(error.contains("invalid peer certificate: UnknownIssuer"), "{error}");

    // With the certificate as ca_file: 200 from the upstream, over HTTP/1.1 (ALPN http/1.1), SNI localhost.
    let accepted = get(&gw, "/pinned/y").await;
    assert_eq!((accepted.status, accepted.text().as_str()), (200, "tls-upstream"));
    let (version, headers) = up.requests().last().cloned().unwrap();
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(headers["host"], format!("localhost:{}", up.addr.port()));
    assert_eq!(headers["x-forwarded-proto"], "http");
    let ok = up.handshakes().into_iter().filter(|h| h.ok).collect::<Vec<_>>();
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!((ok[0].sni.as_deref(), ok[0].alpn.as_deref()), (Some("localhost"), Some("http/1.1")));

    // The TLS connection is pooled: a second request reuses it (no new handshake).
    assert_eq!(get(&gw, "/pinned/z").await.status, 200);
    assert_eq!(up.handshakes().iter().filter(|h| h.ok).count(), 1, "the pooled TLS connection is reused");
    gw.stop().await;
}

#[tokio::test]
async fn a_failed_verification_is_a_connect_failure_retried_on_another_endpoint() {
    let dir = Dir::new("upstream-retry");
    let ca = Ca::new("Internal CA");
    let good = TlsUpstream::start(&ca.leaf(&["127.0.0.1"], 1)).await;
    let stranger = TlsUpstream::start(&self_signed(&["127.0.0.1"], 2)).await;
    let ca_file = dir.write("ca.pem", &ca.pem);
    let endpoints =
        [format!("https://127.0.0.1:{}", stranger.addr.port()), format!("https://127.0.0.1:{}", good.addr.port())];
    let rest = format!(
        "\n[upstreams.mixed]\nendpoints = {endpoints:?}\nca_file = {ca_file:?}\nbalance = \"round_robin\"\n\
         outlier = {{ consecutive_failures = 1000 }}\n\n[[routes]]\nname = \"mixed\"\nmatch = {{ path_prefix = \"/mixed\" }}\n\
         forward = {{ upstream = \"mixed\" }}\nretry = {{ max_retries = 1, on = [\"connect-failure\"] }}\n"
    );
    let gw = plain_gateway(&dir, &rest).await;
    for _ in 0..4 {
        let r = get(&gw, "/mixed").await;
        assert_eq!((r.status, r.text().as_str()), (200, "tls-upstream"), "the retry goes to the trusted endpoint");
    }
    eventually("the untrusted endpoint was tried", async || stranger.handshakes().iter().any(|h| !h.ok)).await;
    assert!(stranger.requests().is_empty(), "and was sent nothing");
    assert_eq!(good.requests().len(), 4);
    gw.stop().await;
}

#[tokio::test]
async fn tls_server_name_changes_the_name_verified_and_the_sni_sent() {
    let dir = Dir::new("server-name");
    let ca = Ca::new("Internal CA");
    let up = TlsUpstream::start(&ca.leaf(&["orders.internal"], 3)).await;
    let ca_file = dir.write("ca.pem", &ca.pem);
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let rest = upstream_and_route("by-address", std::slice::from_ref(&url), &format!("ca_file = {ca_file:?}"))
        + &upstream_and_route(
            "by-name",
            std::slice::from_ref(&url),
            &format!("ca_file = {ca_file:?}\ntls_server_name = \"orders.internal\""),
        );
    let gw = plain_gateway(&dir, &rest).await;

    // The certificate is for orders.internal, not 127.0.0.1: refused.
    assert_problem(&get(&gw, "/by-address").await, 502, Some("by-address"));
    assert!(up.requests().is_empty());
    eventually("the upstream saw the failed handshake", async || !up.handshakes().is_empty()).await;
    assert_eq!(up.handshakes()[0].sni, None, "no SNI for an IP address");

    // With tls_server_name: verified as orders.internal, which is also the SNI sent.
    let r = get(&gw, "/by-name").await;
    assert_eq!((r.status, r.text().as_str()), (200, "tls-upstream"));
    let ok: Vec<Handshake> = up.handshakes().into_iter().filter(|h| h.ok).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].sni.as_deref(), Some("orders.internal"));
    let (_, headers) = up.requests().last().cloned().unwrap();
    assert_eq!(headers["host"], format!("127.0.0.1:{}", up.addr.port()), "Host stays the endpoint's");
    gw.stop().await;
}

#[tokio::test]
async fn http2_over_tls_to_an_upstream_uses_alpn_h2() {
    let dir = Dir::new("upstream-h2");
    let ca = Ca::new("Internal CA");
    let up = TlsUpstream::start(&ca.leaf(&["localhost"], 4)).await;
    let ca_file = dir.write("ca.pem", &ca.pem);
    let url = format!("https://localhost:{}", up.addr.port());
    let rest = upstream_and_route("h2", std::slice::from_ref(&url), &format!("ca_file = {ca_file:?}\nhttp2 = true"));
    let gw = plain_gateway(&dir, &rest).await;
    for _ in 0..3 {
        let r = get(&gw, "/h2/x").await;
        assert_eq!((r.status, r.text().as_str()), (200, "tls-upstream"));
    }
    let requests = up.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|(v, _)| *v == Version::HTTP_2), "{requests:?}");
    let ok: Vec<Handshake> = up.handshakes().into_iter().filter(|h| h.ok).collect();
    assert_eq!(ok.len(), 1, "one multiplexed connection: {ok:?}");
    assert_eq!((ok[0].alpn.as_deref(), ok[0].sni.as_deref()), (Some("h2"), Some("localhost")));
    gw.stop().await;
}

// =============================================================================================================
// sluice check
// =============================================================================================================

#[test]
fn check_names_a_missing_unreadable_or_mismatched_tls_file() {
    let dir = Dir::new("check");
    let ca = Ca::new("Sluice Test CA");
    let a = ca.leaf(&["localhost"], 1);
    let b = ca.leaf(&["localhost"], 2);
    let cert = dir.write("cert.pem", &a.cert_pem);
    let other_key = dir.write("other-key.pem", &b.key_pem);
    let not_pem = dir.write("not-pem.pem", "hello\n");
    let missing = dir.path("missing.pem");
    let tls = |cert: &Path, key: &Path| format!("[server]\ntls = {{ cert = {cert:?}, key = {key:?} }}\n");
    let problems = |toml: String| -> Vec<String> {
        let path = dir.write("routes.toml", &toml);
        sluice::config::load(&path).expect_err("refused")
    };

    let p = problems(tls(&missing, &other_key));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("server.tls.cert") && p[0].contains(&*missing.to_string_lossy()), "{p:?}");
    assert!(p[0].contains("cannot be read"), "{p:?}");

    let p = problems(tls(&cert, &not_pem));
    assert!(p[0].starts_with("server.tls.key") && p[0].contains("not-pem.pem"), "{p:?}");
    assert!(p[0].contains("no PEM private key"), "{p:?}");

    let p = problems(tls(&not_pem, &other_key));
    assert!(p[0].starts_with("server.tls.cert") && p[0].contains("no PEM certificate"), "{p:?}");

    let p = problems(tls(&cert, &other_key));
    assert!(p[0].contains("do not go together"), "{p:?}");
    assert!(p[0].contains("cert.pem") && p[0].contains("other-key.pem"), "{p:?}");

    // A directory is unreadable as a file.
    let p = problems(tls(&cert, &dir.0));
    assert!(p[0].starts_with("server.tls.key") && p[0].contains("cannot be read"), "{p:?}");

    // Upstream ca_file: missing, and not a certificate; both reported at once with the listener's problem.
    let toml = tls(&missing, &other_key)
        + &format!(
            "[upstreams.a]\nendpoints = [\"https://a.internal\"]\nca_file = {missing:?}\n\
             [upstreams.b]\nendpoints = [\"https://b.internal\"]\nca_file = {not_pem:?}\n"
        );
    let p = problems(toml);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().any(|e| e.starts_with("upstreams.a.ca_file") && e.contains("missing.pem")), "{p:?}");
    assert!(p.iter().any(|e| e.starts_with("upstreams.b.ca_file") && e.contains("no PEM certificate")), "{p:?}");

    // The same through the binary: `sluice check` prints it and exits 1.
    let path = dir.write("routes.toml", &tls(&cert, &other_key));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("do not go together") && stdout.contains("other-key.pem"), "{stdout}");

    // And a good pair passes.
    let key = dir.write("key.pem", &a.key_pem);
    let path = dir.write("routes.toml", &tls(&cert, &key));
    assert!(sluice::config::load(&path).is_ok());
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    writeln!(f, "[upstreams.c]\nendpoints = [\"http://c.internal\"]\nca_file = {:?}", dir.path("ca.pem")).unwrap();
    let p = sluice::config::load(&path).expect_err("ca_file without https endpoints");
    assert!(p.iter().any(|e| e == "upstreams.c: ca_file is only used with https:// endpoints"), "{p:?}");
}

#[tokio::test]
async fn without_ca_file_an_upstream_is_verified_against_the_system_roots() {
    // rustls-native-certs reads SSL_CERT_FILE instead of the system store: the real binary, run with it pointing at
    // a test CA, trusts that CA as a system root.
    let dir = Dir::new("system-roots");
    let ca = Ca::new("Pretend Public CA");
    let up = TlsUpstream::start(&ca.leaf(&["localhost"], 9)).await;
    let roots = dir.write("system-roots.pem", &ca.pem);
    let (port, admin) = process_support::free_ports().await;
    let toml = format!("[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n")
        + &upstream_and_route("public", &[format!("https://localhost:{}", up.addr.port())], "");
    let path = dir.write("routes.toml", &toml);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE") {
            command.env_remove(k);
        }
    }
    let stderr = std::fs::File::create(dir.path("stderr.log")).unwrap();
    let child = command
        .env("SSL_CERT_FILE", &roots)
        .env_remove("SSL_CERT_DIR")
        .args(["run", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let http = client();
    eventually("sluice serves", async || {
        let req = Request::get(format!("http://127.0.0.1:{admin}/healthz")).body(empty()).unwrap();
        matches!(http.request(req).await, Ok(r) if r.status() == 200)
    })
    .await;
    let r = send(&http, Request::get(format!("http://127.0.0.1:{port}/public")).body(empty()).unwrap()).await;
    let log = std::fs::read_to_string(dir.path("stderr.log")).unwrap_or_default();
    assert_eq!((r.status, r.text().as_str()), (200, "tls-upstream"), "{log}");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_reload_reads_an_upstream_ca_file_again() {
    let dir = Dir::new("ca-reload");
    let (old_ca, new_ca) = (Ca::new("Old CA"), Ca::new("New CA"));
    let up = TlsUpstream::start(&new_ca.leaf(&["localhost"], 11)).await;
    let ca_file = dir.write("ca.pem", &old_ca.pem);
    let url = format!("https://localhost:{}", up.addr.port());
    let gw = plain_gateway(&dir, &upstream_and_route("rotated", &[url], &format!("ca_file = {ca_file:?}"))).await;
    assert_problem(&get(&gw, "/rotated").await, 502, Some("rotated"));

    // Same config, new roots in the same file: the reload makes new connections with them.
    dir.write("ca.pem", &new_ca.pem);
    let r = gw.post_reload().await;
    assert_eq!(r.json()["reloaded"], true, "{}", r.text());
    let r = get(&gw, "/rotated").await;
    assert_eq!((r.status, r.text().as_str()), (200, "tls-upstream"));
    gw.stop().await;
}

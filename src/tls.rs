//! TLS material read from files, with rustls and its `ring` provider: the public listener's certificate and key
//! (`server.tls`; TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`), what an upstream's `https://` endpoints are verified
//! against (its `ca_file`, else the system's roots), and a broker's `ca_file`. Read at every (re)load: a snapshot
//! holds what was read, so replacing the files and reloading takes effect for new connections. Every error names
//! the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Config, ServerTlsConfig, UpstreamConfig};

/// ALPN protocol ids.
const H2: &[u8] = b"h2";
pub(crate) const HTTP11: &[u8] = b"http/1.1";

/// Why TLS material could not be used; each names the file and the key it was given in.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{key} {path:?} cannot be read: {source}")]
    Read {
        /// The config key that named the file (`server.tls.cert`, `upstreams.orders.ca_file`).
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM item of the expected kind, or a broken one.
    #[error("{key} {path:?} {problem}")]
    Pem {
        /// The config key that named the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        problem: String,
    },
    /// The certificate and key do not make a usable pair (e.g. the key is not the certificate's).
    #[error("server.tls: cert {cert:?} and key {key:?} do not go together: {reason}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// rustls refused the settings.
    #[error("{key}: {reason}")]
    Settings {
        /// The config key concerned.
        key: String,
        /// rustls' reason.
        reason: String,
    },
}

/// The one crypto provider (`ring`), named explicitly so that no process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key: key.to_owned(), path: path.to_owned(), source })
}

/// Every PEM `CERTIFICATE` in `pem`, read from the file at `path` (at least one).
fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let problem = |problem: String| TlsError::Pem { key: key.to_owned(), path: path.to_owned(), problem };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(problem("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned()));
    }
    Ok(certs)
}

/// The listener's rustls configuration from `server.tls`: the certificate chain and its key, TLS 1.2 and 1.3,
/// ALPN `h2` then `http/1.1`.
pub fn server_config(tls: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("server.tls.cert", &tls.cert, &read("server.tls.cert", &tls.cert)?)?;
    let key_pem = read("server.tls.key", &tls.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        key: "server.tls.key".to_owned(),
        path: tls.key.clone(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".to_owned()
            }
            e => format!("is not valid PEM: {e}"),
        },
    })?;
    let settings = |e: rustls::Error| TlsError::Settings { key: "server.tls".to_owned(), reason: e.to_string() };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(settings)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Pair { cert: tls.cert.clone(), key: tls.key.clone(), reason: e.to_string() })?;
    config.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// How an upstream's `https://` endpoints are verified and spoken to.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// rustls client settings: the roots, and ALPN `h2` (`http2 = true`) or `http/1.1`.
    pub config: Arc<ClientConfig>,
    /// The `ca_file` content it was made from (a reload that finds other bytes there makes new connections).
    pub ca_pem: Option<Vec<u8>>,
}

impl UpstreamTls {
    /// Whether `self` and `other` verify with the same roots and speak the same protocol.
    pub fn same_as(&self, other: &UpstreamTls) -> bool {
        self.ca_pem == other.ca_pem && self.config.alpn_protocols == other.config.alpn_protocols
    }
}

/// The TLS settings of upstream `name`, or `None` when none of its endpoints is `https://`.
pub fn upstream(name: &str, cfg: &UpstreamConfig) -> Result<Option<UpstreamTls>, TlsError> {
    if !cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let (roots, ca_pem) = match &cfg.ca_file {
        Some(path) => {
            let (roots, pem) = roots_from_file(&format!("upstreams.{name}.ca_file"), path)?;
            (Arc::new(roots), Some(pem))
        }
        None => (system_roots(), None),
    };
    let alpn = if cfg.http2 { H2 } else { HTTP11 };
    let config = client_config(&format!("upstreams.{name}"), roots, alpn)?;
    Ok(Some(UpstreamTls { config, ca_pem }))
}

/// The PEM text of broker `name`'s `ca_file`, checked to hold certificates usable as roots. lapin takes the roots
/// as PEM text (added to the system's); librdkafka reads the file itself (`ssl.ca.location`), so for Kafka this is
/// only the check.
pub fn broker_ca(name: &str, path: &Path) -> Result<String, TlsError> {
    let key = format!("brokers.{name}.ca_file");
    let (_, pem) = roots_from_file(&key, path)?;
    String::from_utf8(pem).map_err(|_| TlsError::Pem { key, path: path.to_owned(), problem: "is not text".to_owned() })
}

/// The certificates of a `ca_file` as roots, and the file's bytes; `key` names the setting in an error.
fn roots_from_file(key: &str, path: &Path) -> Result<(RootCertStore, Vec<u8>), TlsError> {
    let pem = read(key, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(key, path, &pem)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            key: key.to_owned(),
            path: path.to_owned(),
            problem: format!("holds a certificate that cannot be a root: {e}"),
        })?;
    }
    Ok((roots, pem))
}

/// TLS for an `https://` OTLP collector (`telemetry.otlp_endpoint`): the system's roots, ALPN `h2` (gRPC).
pub fn collector() -> Result<Arc<ClientConfig>, TlsError> {
    client_config("telemetry.otlp_endpoint", system_roots(), H2)
}

/// A client config trusting `roots` and offering `alpn`; `key` names the setting in an error.
fn client_config(key: &str, roots: Arc<RootCertStore>, alpn: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings { key: key.to_owned(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The system's trusted roots (`rustls-native-certs`: `/etc/ssl/certs` on Debian, `SSL_CERT_FILE` / `SSL_CERT_DIR`
/// when set), read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system root certificate could not be loaded");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found (install ca-certificates, or set ca_file): \
                     https:// upstreams without ca_file will fail verification"
                );
            }
            tracing::debug!(added, ignored, "system root certificates loaded");
            Arc::new(roots)
        })
        .clone()
}

/// The name an `https://` endpoint's certificate must carry (and the SNI sent): `tls_server_name`, else the host.
pub fn server_name(tls_server_name: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = tls_server_name.unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|_| format!("{name:?} is not a DNS name or IP address"))
}

/// What `sluice check` and every reload find wrong with the TLS files a config names (they must exist, parse, and
/// the listener's key must be its certificate's). Not part of `validate`, which reads no files.
pub fn check_files(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(tls) = &config.server.tls
        && let Err(e) = server_config(tls)
    {
        errors.push(e.to_string());
    }
    for (name, upstream) in &config.upstreams {
        if let Err(e) = self::upstream(name, upstream) {
            errors.push(e.to_string());
        }
    }
    for (name, broker) in &config.brokers {
        if let Some(path) = &broker.ca_file
            && let Err(e) = broker_ca(name, path)
        {
            errors.push(e.to_string());
        }
    }
    errors
}

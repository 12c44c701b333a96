//! TLS for a listener (feature `tls`): a certificate and key from PEM files, reloaded when
//! the files change (new connections get the new certificate; open ones keep theirs), and
//! optionally mutual TLS, where every client must present a certificate signed by a given
//! CA. Used by the host's admin API and by plugins that listen.
//!
//! A reload that fails (a half-written file, a key that does not match its certificate)
//! keeps the last good certificate and says why once, so rotating the files one after the
//! other never takes a listener down.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_rustls::server::TlsStream;
pub use tokio_rustls::TlsAcceptor;

/// How often the files are looked at for changes, at most.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a client may take over its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for a listener. Relative paths are relative to the working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, its own certificate first. Replaced
    /// on disk, it is used for new connections within a second.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1), reloaded with
    /// the certificate.
    pub key: PathBuf,
    /// PEM file with the CA certificates that sign client certificates. When set, every
    /// client must present a certificate signed by one of them (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The files, in the order they are read.
    fn files(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten()
    }
}

/// When each file was last changed and how long it was: a change of either means reload.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(config: &TlsConfig) -> Stamp {
    config.files().map(|f| std::fs::metadata(f).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))).collect()
}

struct Current {
    acceptor: TlsAcceptor,
    stamp: Stamp,
    looked: Instant,
}

/// What became of certificate files that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// New connections get the new certificate.
    Taken,
    /// They did not load; why. The previous certificate stays in use.
    Refused(String),
}

/// A listener's TLS: the acceptor for its next connection, reloaded when the files change.
pub struct Tls {
    config: TlsConfig,
    current: Mutex<Current>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files; the error says which file is wrong and how.
    pub fn new(config: TlsConfig) -> Result<Tls, String> {
        let stamp = stamp(&config);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&config)?));
        Ok(Tls { current: Mutex::new(Current { acceptor, stamp, looked: Instant::now() }), config })
    }

    /// The settings it was made from.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// The acceptor for the next connection, after reloading the files if they changed.
    /// The second value says what became of changed files, once per change.
    pub fn acceptor(&self) -> (TlsAcceptor, Option<Reload>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut reload = None;
        if current.looked.elapsed() >= LOOK_EVERY {
            current.looked = Instant::now();
            let now = stamp(&self.config);
            if now != current.stamp {
                current.stamp = now;
                reload = Some(match server_config(&self.config) {
                    Ok(c) => {
                        current.acceptor = TlsAcceptor::from(Arc::new(c));
                        Reload::Taken
                    }
                    Err(e) => Reload::Refused(format!("{e}; the previous certificate stays in use")),
                });
            }
        }
        (current.acceptor.clone(), reload)
    }

    /// As [`Tls::acceptor`], saying through the stage's log what became of changed files.
    pub fn acceptor_logged(&self, ctx: &crate::Context) -> TlsAcceptor {
        let (acceptor, reload) = self.acceptor();
        match reload {
            Some(Reload::Taken) => ctx.info(&format!("New TLS certificate in use ({}).", self.config.cert.display())),
            Some(Reload::Refused(why)) => ctx.warn(&format!("Changed TLS files not taken: {why}")),
            None => {}
        }
        acceptor
    }

    /// Runs the handshake of an accepted connection, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(acceptor: &TlsAcceptor, stream: S) -> io::Result<TlsStream<S>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
        }
    }
}

/// The crypto provider: the one the rest of the process's rustls uses (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(config: &TlsConfig) -> Result<ServerConfig, String> {
    let certs = certificates(&config.cert)?;
    let key = private_key(&config.key)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| format!("TLS settings: {e}"))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: cannot check client certificates with it: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        format!("{} and {}: the key does not fit the certificate, or one is unusable: {e}", config.cert.display(), config.key.display())
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}

/// The private key in a PEM file; the error names the file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "a private key", e))
}

/// The certificates in a PEM file, at least one; the error names the file.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificates", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, "certificates", e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)", path.display()));
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &str, e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        Error::NoItemsFound => format!("{}: no {what} in it (expected a PEM file)", path.display()),
        e => format!("{}: not readable as PEM {what}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_named() {
        let dir = std::env::temp_dir().join(format!("weir-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem at all\n").unwrap();
        let config = TlsConfig { cert: dir.join("absent.pem"), key: junk.clone(), client_ca: None };
        let e = Tls::new(config).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("absent.pem"), "{e}");
        let config = TlsConfig { cert: junk.clone(), key: junk.clone(), client_ca: None };
        let e = Tls::new(config).unwrap_err();
        assert!(e.contains("junk.pem") && e.contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! rustls configuration: client roots (system + webpki + `ca_file`) for
//! upstreams and identity providers, and the server side for `tls:` with a
//! certificate that is reloaded when its files change ([`ReloadingCert`]).
//!
//! One crypto provider for the whole process: aws-lc-rs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificates: {source}")]
    Certificates {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no certificate found")]
    NoCertificate { path: String },
    #[error("{path}: cannot read private key: {source}")]
    Key {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = aws_lc_rs::default_provider().install_default();
}

/// Root certificates: Mozilla's (webpki-roots), the system's, and `ca_file`.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// A client config for `https://` upstreams and identity providers.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth();
    Ok(config)
}

/// A server config presenting `cert`'s current certificate, offering h2
/// and http/1.1 by ALPN.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The server certificate and key from PEM files, swapped atomically when
/// the files' content changes ([`ReloadingCert::watch`] polls once a second).
/// New handshakes get the new certificate; established connections keep
/// theirs. A pair that does not load (unreadable, garbage, a key that does not
/// match the certificate: e.g. one file written before the other) is logged
/// and retried on the next change; the old certificate keeps serving.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file contents last installed, and last refused (to log once).
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
    refused: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair; fails when it does not load.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        let certified = certified_key(cert, key, &cert_pem, &key_pem)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: ArcSwap::from_pointee(certified),
            seen: Mutex::new((cert_pem, key_pem)),
            refused: Mutex::new(None),
        }))
    }

    /// Reads the files; installs the pair when their content changed and it
    /// loads. Returns whether a new certificate was installed.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 == cert_pem && seen.1 == key_pem {
                return Ok(false);
            }
        }
        let certified = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        self.current.store(Arc::new(certified));
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = (cert_pem, key_pem);
        Ok(true)
    }

    /// Polls the files once a second until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    let now = read_pair(&self.cert_path, &self.key_path).ok();
                    let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                    if now.is_none() || *refused != now {
                        tracing::error!(
                            "TLS certificate not reloaded, the old one keeps serving: {e}"
                        );
                        *refused = now;
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            source: e,
        })
    };
    Ok((read(cert)?, read(key)?))
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificates {
            path: cert_path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key {
        path: key_path.display().to_string(),
        source,
    })?;
    Ok(CertifiedKey::from_der(
        certs,
        key,
        &aws_lc_rs::default_provider(),
    )?)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

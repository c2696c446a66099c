//! The webhook's serving certificate, read from PEM files and swapped in place when the
//! files change, as they do when cert-manager renews the certificate and the kubelet
//! updates the mounted Secret. Handshakes in progress keep the certificate they started
//! with; the next handshake gets the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Failure to load a certificate and key pair.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not valid PEM: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} contains no usable private key: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Result of [`ReloadingCertificate::reload`].
#[derive(Debug)]
pub enum Reload {
    /// The files are the same as at the last call.
    Unchanged,
    /// A new certificate and key are in use.
    Loaded,
    /// The files changed but do not form a usable pair; the previous certificate, if any,
    /// stays in use. Repeats of the same failure are reported once.
    Failed(CertificateError),
}

#[derive(Debug, Default)]
struct LoadState {
    /// SHA-256 of the certificate and key files as last read, loaded or not.
    fingerprint: Option<[u8; 32]>,
    /// Message of the last read failure, so a missing file is reported once.
    last_read_error: Option<String>,
}

/// A certificate resolver whose certificate can be replaced while the server runs.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    state: Mutex<LoadState>,
}

impl ReloadingCertificate {
    /// Creates a resolver with no certificate. Call [`reload`](Self::reload) to load one.
    pub fn new(cert_path: PathBuf, key_path: PathBuf, provider: Arc<CryptoProvider>) -> Self {
        ReloadingCertificate {
            cert_path,
            key_path,
            provider,
            current: RwLock::new(None),
            state: Mutex::new(LoadState::default()),
        }
    }

    /// Returns whether a certificate is loaded, so handshakes can succeed.
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Reads both files and, when their content differs from the last read, loads them.
    pub fn reload(&self) -> Reload {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_pem, key_pem) = match (read(&self.cert_path), read(&self.key_path)) {
            (Ok(cert), Ok(key)) => (cert, key),
            (Err(error), _) | (_, Err(error)) => {
                let message = error.to_string();
                if state.last_read_error.as_deref() == Some(message.as_str()) {
                    return Reload::Unchanged;
                }
                state.last_read_error = Some(message);
                return Reload::Failed(error);
            }
        };
        state.last_read_error = None;

        let mut hasher = Sha256::new();
        hasher.update(&cert_pem);
        hasher.update([0]);
        hasher.update(&key_pem);
        let fingerprint: [u8; 32] = hasher.finalize().into();
        if state.fingerprint == Some(fingerprint) {
            return Reload::Unchanged;
        }

        // Recorded before parsing: a pair that fails stays failed until a file changes,
        // such as while a renewal has written the certificate but not yet the key.
        state.fingerprint = Some(fingerprint);
        match self.parse(&cert_pem, &key_pem) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(key));
                Reload::Loaded
            }
            Err(error) => Reload::Failed(error),
        }
    }

    fn parse(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CertificateError::Pem {
                path: self.cert_path.clone(),
                source,
            })?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate {
                path: self.cert_path.clone(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| CertificateError::Pem {
                path: self.key_path.clone(),
                source,
            })?;
        // Also checks that the key belongs to the first certificate of the chain.
        CertifiedKey::from_der(chain, key, &self.provider).map_err(|source| CertificateError::Key {
            path: self.key_path.clone(),
            source,
        })
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read {
        path: path.to_owned(),
        source,
    })
}

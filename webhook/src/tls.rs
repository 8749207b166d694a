//! The serving certificate, reloaded while the server runs.
//!
//! Kubernetes updates a Secret volume by writing a new timestamped directory and atomically
//! swapping the `..data` symlink to it (`tls.crt -> ..data/tls.crt`). A watch on the files
//! themselves never fires for that, so the files are polled and their content compared; a pair
//! that does not load (unparsable, key not matching, missing, half-written) is refused and the
//! previous certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// The crypto provider of every TLS configuration of the webhook (aws-lc, as in the workspace).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why a certificate/key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, permissions).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file is not PEM.
    #[error("parsing the certificates in {path}: {source}")]
    CertificatePem {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key.
    #[error("parsing the private key in {path}: {source}")]
    KeyPem {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The private key is not one the crypto provider can sign with.
    #[error("the private key in {path} is unusable: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::Error,
    },
    /// The first certificate does not belong to the private key.
    #[error("the certificate in {cert} does not match the private key in {key}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The first certificate is not a valid X.509 certificate.
    #[error("the certificate in {path} is unusable: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::Error,
    },
}

/// The certificate rustls presents, swapped whole when a new pair loads.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver serving `initial`.
    pub fn new(initial: CertifiedKey) -> Self {
        CertResolver {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    fn store(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What one look at the files found.
#[derive(Debug)]
pub enum Reload {
    /// Same content as last time.
    Unchanged,
    /// A new pair is served from now on.
    Reloaded,
    /// The files changed but the pair is refused; the previous certificate keeps serving.
    Rejected(TlsError),
    /// The files were being replaced while they were read; look again next time.
    Changing,
}

/// The content last looked at, so that each change is acted on (and reported) once.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Pair { cert: Vec<u8>, key: Vec<u8> },
    Unreadable(String),
}

/// Watches the certificate and key files and feeds a [`CertResolver`].
#[derive(Debug)]
pub struct CertificateReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    last_seen: Seen,
}

impl CertificateReloader {
    /// Loads the initial pair, which must be good: a webhook without a certificate is useless.
    pub fn load(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let (cert_file, key_file) = (cert_file.into(), key_file.into());
        let cert = read(&cert_file)?;
        let key = read(&key_file)?;
        let certified = certified_key(&cert, &key, &cert_file, &key_file, &provider)?;
        Ok(CertificateReloader {
            cert_file,
            key_file,
            provider,
            resolver: Arc::new(CertResolver::new(certified)),
            last_seen: Seen::Pair { cert, key },
        })
    }

    /// The resolver to put into the rustls server configuration.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Unix time the serving certificate in use expires (0 when its `notAfter` cannot be read).
    pub fn expiry(&self) -> i64 {
        not_after(&self.resolver.current()).unwrap_or(0)
    }

    /// Looks at the files once and loads them if their content changed.
    pub fn check(&mut self) -> Reload {
        let (cert, key) = match self.read_pair() {
            Ok(Some(pair)) => pair,
            Ok(None) => return Reload::Changing,
            Err(e) => {
                let seen = Seen::Unreadable(e.to_string());
                if seen == self.last_seen {
                    return Reload::Unchanged;
                }
                self.last_seen = seen;
                return Reload::Rejected(e);
            }
        };
        if matches!(&self.last_seen, Seen::Pair { cert: c, key: k } if *c == cert && *k == key) {
            return Reload::Unchanged;
        }
        let loaded = certified_key(&cert, &key, &self.cert_file, &self.key_file, &self.provider);
        // Remembered whether good or bad: a bad pair is reported once, not at every poll.
        self.last_seen = Seen::Pair { cert, key };
        match loaded {
            Ok(certified) => {
                self.resolver.store(certified);
                Reload::Reloaded
            }
            Err(e) => Reload::Rejected(e),
        }
    }

    /// Checks the files every `interval`, forever (the server aborts the task when it stops).
    pub async fn run(mut self, interval: Duration, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and the files were just loaded.
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.check() {
                Reload::Unchanged => {}
                Reload::Changing => {
                    tracing::debug!("certificate files changed while being read; looking again");
                }
                Reload::Reloaded => {
                    metrics.cert_reload(true);
                    metrics.certificate_expiry(self.expiry());
                    tracing::info!(
                        cert_file = %self.cert_file.display(),
                        key_file = %self.key_file.display(),
                        "serving certificate reloaded"
                    );
                }
                Reload::Rejected(e) => {
                    metrics.cert_reload(false);
                    tracing::error!(
                        error = %e,
                        "new serving certificate refused; keeping the previous one"
                    );
                }
            }
        }
    }

    /// Both files, or `None` when a symlink swap happened while they were read (a Secret
    /// volume update), which could pair the old certificate with the new key or fail to open a
    /// file of the directory just removed.
    fn read_pair(&self) -> Result<Option<PemPair>, TlsError> {
        let resolved = || {
            (
                std::fs::canonicalize(&self.cert_file).ok(),
                std::fs::canonicalize(&self.key_file).ok(),
            )
        };
        let before = resolved();
        let cert = read(&self.cert_file);
        let key = read(&self.key_file);
        if resolved() != before {
            return Ok(None);
        }
        Ok(Some((cert?, key?)))
    }
}

/// The certificate file's and the key file's content.
type PemPair = (Vec<u8>, Vec<u8>);

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Unix time the leaf certificate of `key` stops being valid (its `notAfter`), if it parses.
fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Parses a PEM certificate chain and private key and checks that they belong together.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertificatePem {
            path: cert_file.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::KeyPem {
        path: key_file.to_owned(),
        source,
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Key {
            path: key_file.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Compares the key's public half with the certificate's; "unknown" (a key type that cannot
    // tell its public key) is refused too, since a mismatch would only show at handshakes.
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
        }),
        Err(source) => Err(TlsError::Certificate {
            path: cert_file.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn load(cert: &str, key: &str) -> Result<CertifiedKey, TlsError> {
        certified_key(
            cert.as_bytes(),
            key.as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
            &crypto_provider(),
        )
    }

    #[test]
    fn the_expiry_is_the_leaf_certificates_not_after() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let loaded = load(&cert.pem(), &key.serialize_pem()).unwrap();
        // 2031-01-02T00:00:00Z
        assert_eq!(not_after(&loaded), Some(1_925_078_400));
    }

    #[test]
    fn good_pairs_load_and_bad_ones_are_named() {
        let (cert, key) = pair("a");
        let (other_cert, other_key) = pair("b");
        assert!(load(&cert, &key).is_ok());
        assert!(load(&other_cert, &other_key).is_ok());
        let err = load(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        let err = load("garbage", &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = load(&cert, "garbage").unwrap_err();
        assert!(matches!(err, TlsError::KeyPem { .. }), "{err}");
        // Half-written: the PEM block has no end line.
        let err = load(&cert[..cert.len() / 2], &key).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::CertificatePem { .. } | TlsError::NoCertificate { .. }
            ),
            "{err}"
        );
        // Valid PEM around bytes that are no certificate.
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = load(bogus, &key).unwrap_err();
        assert!(matches!(err, TlsError::Certificate { .. }), "{err}");
    }

    #[test]
    fn changes_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key) = pair("a");
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let mut reloader =
            CertificateReloader::load(&cert_file, &key_file, crypto_provider()).unwrap();
        let first = reloader.resolver().current();
        assert!(matches!(reloader.check(), Reload::Unchanged));

        std::fs::write(&cert_file, "garbage").unwrap();
        assert!(matches!(reloader.check(), Reload::Rejected(_)));
        assert!(matches!(reloader.check(), Reload::Unchanged));
        assert!(Arc::ptr_eq(&first, &reloader.resolver().current()));

        std::fs::remove_file(&key_file).unwrap();
        assert!(matches!(
            reloader.check(),
            Reload::Rejected(TlsError::Read { .. })
        ));
        assert!(matches!(reloader.check(), Reload::Unchanged));

        let (cert, key) = pair("b");
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        assert!(matches!(reloader.check(), Reload::Reloaded));
        assert!(!Arc::ptr_eq(&first, &reloader.resolver().current()));
        assert!(matches!(reloader.check(), Reload::Unchanged));
    }
}

//! TLS for both sides of the proxy.
//!
//! Towards the jailed client: an ephemeral ECDSA P-256 CA made at every proxy start (its private
//! key never leaves this process's memory), and leaf certificates minted per server name on
//! first use and cached. All leaves share one key, so minting is a single signature.
//!
//! Towards upstreams: rustls verifying against Mozilla's roots (compiled in, so the sidecar's
//! `FROM scratch` image needs no trust store), the system trust store when there is one, and
//! any `--upstream-ca`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boundary_api::rules::Host;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// An extra CA file could not be read.
    #[error("reading CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// How long a minted leaf is used before a new one is made (its validity is longer).
const LEAF_REUSE: Duration = Duration::from_hours(20 * 24);
/// Leaf certificates kept; the cache starts over when full.
const CACHE_LIMIT: usize = 4096;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Minted server configurations by (name, h2), with when they were made.
type LeafCache = HashMap<(String, bool), (Instant, Arc<ServerConfig>)>;

/// The proxy's certificate authority and leaf cache.
pub struct CertAuthority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Made on first interception: not every run intercepts anything.
    leaf_key: OnceLock<KeyPair>,
    cache: Mutex<LeafCache>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl CertAuthority {
    /// Makes a new CA; `session` goes into its name so users can tell CAs of different runs
    /// apart.
    pub fn generate(session: &str) -> Result<CertAuthority, TlsError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Agent Boundary");
        dn.push(
            DnType::CommonName,
            format!("Agent Boundary proxy CA {session}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 825);
        let cert = params.self_signed(&ca_key)?;
        Ok(CertAuthority {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, ca_key),
            leaf_key: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server configuration presenting a certificate for `name`; ALPN offers h2 when
    /// `h2` (the client offered it).
    pub fn server_config(&self, name: &Host, h2: bool) -> Result<Arc<ServerConfig>, TlsError> {
        let key = (name.to_string(), h2);
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made, config)) = cache.get(&key)
            && made.elapsed() < LEAF_REUSE
        {
            return Ok(config.clone());
        }
        let config = Arc::new(self.mint(name, h2)?);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), config.clone()));
        Ok(config)
    }

    fn mint(&self, name: &Host, h2: bool) -> Result<ServerConfig, TlsError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match name {
            Host::Name(n) => SanType::DnsName(n.clone().try_into()?),
            Host::Ip(ip) => SanType::IpAddress(*ip),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.to_string());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 30);
        if self.leaf_key.get().is_none() {
            // A racing thread may win; either key is fine, the first one set is used.
            let _ = self
                .leaf_key
                .set(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?);
        }
        let leaf_key = self
            .leaf_key
            .get()
            .ok_or(rcgen::Error::KeyGenerationUnavailable)?;
        let cert = params.signed_by(leaf_key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(config)
    }
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |message: String| TlsError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

/// Upstream TLS client configurations, built on first use: parsing the root stores takes
/// milliseconds that a short-lived `boundary run` should not pay when it makes no TLS request.
pub struct UpstreamTls {
    extra: Vec<CertificateDer<'static>>,
    configs: OnceLock<(Arc<ClientConfig>, Arc<ClientConfig>)>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("extra", &self.extra.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Reads the extra CAs now, so a bad `--upstream-ca` is reported at start.
    pub fn new(extra_cas: &[std::path::PathBuf]) -> Result<UpstreamTls, TlsError> {
        let mut extra = Vec::new();
        for path in extra_cas {
            let certs = read_pem_certs(path)?;
            let mut check = RootCertStore::empty();
            for cert in &certs {
                check.add(cert.clone()).map_err(|e| TlsError::CaFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            extra.extend(certs);
        }
        Ok(UpstreamTls {
            extra,
            configs: OnceLock::new(),
        })
    }

    /// The configuration offering `http/1.1` only, or h2 and `http/1.1`.
    pub fn config(&self, h2: bool) -> Arc<ClientConfig> {
        let (h1, both) = self.configs.get_or_init(|| self.build());
        if h2 { both.clone() } else { h1.clone() }
    }

    fn build(&self) -> (Arc<ClientConfig>, Arc<ClientConfig>) {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        for store in crate::trust::TRUST_STORE_FILES {
            if let Ok(certs) = read_pem_certs(Path::new(store)) {
                roots.add_parsable_certificates(certs);
                break;
            }
        }
        roots.add_parsable_certificates(self.extra.iter().cloned());
        let roots = Arc::new(roots);
        let build = |alpn: Vec<Vec<u8>>| {
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn;
            Arc::new(config)
        };
        (
            build(vec![b"http/1.1".to_vec()]),
            build(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_minted_once_and_cached() {
        let ca = CertAuthority::generate("test").unwrap();
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let host = Host::parse("api.example.com").unwrap();
        let a = ca.server_config(&host, true).unwrap();
        let b = ca.server_config(&host, true).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols[0], b"h2");
        let c = ca.server_config(&host, false).unwrap();
        assert_eq!(c.alpn_protocols, [b"http/1.1".to_vec()]);
        ca.server_config(&Host::parse("10.1.2.3").unwrap(), false)
            .unwrap();
    }
}

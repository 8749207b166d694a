//! TLS for both sides of the proxy.
//!
//! Towards the jailed client: an ECDSA P-256 CA made at proxy start, and leaf certificates
//! minted per server name on first use and cached. All leaves share one key, so minting is a
//! single signature. Standalone the CA's key never leaves this process's memory. The sidecar may
//! keep its CA in a directory only it mounts (`--ca-dir`, a memory-backed emptyDir): a sidecar
//! the kubelet restarts must present the CA the running jails trusted at their start
//! ([`CertAuthority::load_or_generate`]).
//!
//! Towards upstreams: rustls verifying against Mozilla's roots (compiled in, so the sidecar's
//! `FROM scratch` image needs no trust store), the system trust store when there is one, and
//! any `--upstream-ca`.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
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
    /// The CA could not be kept in `--ca-dir`.
    #[error(
        "keeping the proxy CA in {dir}: {source} (the directory must be writable by the sidecar)"
    )]
    CaDir {
        /// The directory.
        dir: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The kept CA's certificate in `--ca-dir`.
pub const KEPT_CA_CERT: &str = "ca.crt";
/// The kept CA's private key in `--ca-dir` (mode 0600).
pub const KEPT_CA_KEY: &str = "ca.key";
/// How long the CA is made valid for.
const CA_VALIDITY_DAYS: i64 = 825;
/// How long leaves are made valid for.
const LEAF_VALIDITY_DAYS: i64 = 30;
/// A kept CA is reused only while it outlives every leaf it may still sign, with a margin.
const CA_MIN_REMAINING: time::Duration = time::Duration::days(2 * LEAF_VALIDITY_DAYS);

/// Where the CA in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaOrigin {
    /// Made now (no `--ca-dir`: never kept).
    Ephemeral,
    /// Made now and kept; `replaced` says why a kept one was not reused.
    New {
        /// Why the CA found in the directory was unusable (`None`: there was none).
        replaced: Option<String>,
    },
    /// The CA a previous run of the sidecar kept.
    Reused,
}

impl CaOrigin {
    /// `reused`, `new` or `ephemeral`, as in the audit trail.
    pub fn as_str(&self) -> &'static str {
        match self {
            CaOrigin::Ephemeral => "ephemeral",
            CaOrigin::New { .. } => "new",
            CaOrigin::Reused => "reused",
        }
    }
}

/// How long a minted leaf is used before a new one is made (its validity is longer).
const LEAF_REUSE: Duration = Duration::from_hours(20 * 24);
/// Leaf certificates kept; the cache starts over when full.
const CACHE_LIMIT: usize = 4096;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&ca_key)?;
        Ok(CertAuthority {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, ca_key),
            leaf_key: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA kept in `dir` when it is usable (see [`CertAuthority::from_kept`]), else a new one
    /// written there (the key with mode 0600, each file through a temporary file and a rename,
    /// so a crash never leaves half a file). An unusable kept CA is replaced; the reason is in
    /// the returned origin.
    pub fn load_or_generate(
        dir: &Path,
        session: &str,
    ) -> Result<(CertAuthority, CaOrigin), TlsError> {
        let fail = |source| TlsError::CaDir {
            dir: dir.display().to_string(),
            source,
        };
        let (cert_path, key_path) = (dir.join(KEPT_CA_CERT), dir.join(KEPT_CA_KEY));
        let replaced = match (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            (Ok(cert), Ok(key)) => {
                match CertAuthority::from_kept(&cert, &key, time::OffsetDateTime::now_utc()) {
                    Ok(ca) => return Ok((ca, CaOrigin::Reused)),
                    Err(why) => Some(why),
                }
            }
            (Err(c), Err(k))
                if c.kind() == std::io::ErrorKind::NotFound
                    && k.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            (Err(e), _) => Some(format!("{KEPT_CA_CERT}: {e}")),
            (_, Err(e)) => Some(format!("{KEPT_CA_KEY}: {e}")),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        // A second line behind the mount: only the sidecar mounts the volume, and its mount
        // point belongs to root when the sidecar runs as another user (then it stays as it is).
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::info!(dir = %dir.display(), error = %e, "the CA directory keeps its mode (not ours); the key file is 0600");
        }
        let ca = CertAuthority::generate(session)?;
        // The key first: a crash between the two leaves a pair that does not match, which the
        // next start replaces.
        write_private(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)
            .map_err(fail)?;
        write_private(&cert_path, ca.ca_pem.as_bytes(), 0o644).map_err(fail)?;
        Ok((ca, CaOrigin::New { replaced }))
    }

    /// A kept CA, if usable at `now`: the certificate parses and is a CA, the key parses and is
    /// the certificate's, and it is valid now and for [`CA_MIN_REMAINING`] more.
    pub fn from_kept(
        cert_pem: &str,
        key_pem: &str,
        now: time::OffsetDateTime,
    ) -> Result<CertAuthority, String> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("{KEPT_CA_CERT} is not a PEM certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{KEPT_CA_CERT} does not parse: {e}"))?;
        if !cert.is_ca() {
            return Err(format!("{KEPT_CA_CERT} is not a CA certificate"));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| format!("{KEPT_CA_KEY} is not a PEM private key: {e}"))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(format!("{KEPT_CA_KEY} is not the key of {KEPT_CA_CERT}"));
        }
        let validity = cert.validity();
        if now < validity.not_before.to_datetime() {
            return Err(format!("{KEPT_CA_CERT} is not valid yet"));
        }
        if validity.not_after.to_datetime() - now < CA_MIN_REMAINING {
            return Err(format!(
                "{KEPT_CA_CERT} expires at {} (too soon to sign {LEAF_VALIDITY_DAYS}-day leaves)",
                validity.not_after
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| format!("{KEPT_CA_CERT} cannot sign: {e}"))?;
        Ok(CertAuthority {
            ca_pem: cert_pem.to_owned(),
            issuer,
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
        let (cert, key) = self.leaf(name)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(config)
    }

    /// A leaf certificate for `name` and its key.
    fn leaf(
        &self,
        name: &Host,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
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
        validity(&mut params, LEAF_VALIDITY_DAYS);
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
        Ok((cert.der().clone(), key))
    }
}

/// Writes `content` to `path` with `mode` through a temporary file renamed over it.
fn write_private(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A temporary file a crash left behind may have another mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
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
                .expect("the aws-lc provider supports the default protocol versions")
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

    /// Whether `ca_pem` (alone) makes a client accept `ca`'s leaf for `name`.
    fn trusted(ca_pem: &str, ca: &CertAuthority, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier as _;
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let (leaf, _) = ca.leaf(&Host::parse(name).unwrap()).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_kept_ca_is_reused_and_its_leaves_are_trusted_by_the_first_runs_clients() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("ca");
        let (first, origin) = CertAuthority::load_or_generate(&kept, "one").unwrap();
        assert_eq!(origin, CaOrigin::New { replaced: None });
        assert_eq!(mode(&kept.join(KEPT_CA_KEY)), 0o600);
        assert_eq!(mode(&kept), 0o700);
        assert!(!kept.join("ca.tmp").exists());
        let (second, origin) = CertAuthority::load_or_generate(&kept, "two").unwrap();
        assert_eq!(origin, CaOrigin::Reused);
        assert_eq!(second.ca_pem(), first.ca_pem());
        // What a jail that trusted the first run's CA sees from the second run.
        trusted(first.ca_pem(), &second, "api.example.com").unwrap();
        // A CA made afresh is not trusted by it: the bug this prevents.
        let fresh = CertAuthority::generate("three").unwrap();
        assert!(trusted(first.ca_pem(), &fresh, "api.example.com").is_err());
    }

    #[test]
    fn an_unusable_kept_ca_is_replaced_with_the_reason() {
        let now = time::OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = CertAuthority::load_or_generate(dir.path(), "s").unwrap();
        let cert = ca.ca_pem().to_owned();
        let key = std::fs::read_to_string(dir.path().join(KEPT_CA_KEY)).unwrap();
        let other = CertAuthority::generate("other").unwrap();
        let other_key = other.issuer.key().serialize_pem();
        let cases: [(&str, &str, &str); 5] = [
            ("garbage", &key, "not a PEM certificate"),
            (&cert[..cert.len() / 2], &key, "not a PEM certificate"),
            (&cert, &key[..key.len() / 2], "not a PEM private key"),
            (&cert, &other_key, "is not the key of"),
            (other.ca_pem(), &key, "is not the key of"),
        ];
        for (c, k, why) in cases {
            let err = CertAuthority::from_kept(c, k, now).err().unwrap();
            assert!(err.contains(why), "{err}");
        }
        CertAuthority::from_kept(&cert, &key, now).unwrap();
        let late = now + time::Duration::days(CA_VALIDITY_DAYS - 10);
        let err = CertAuthority::from_kept(&cert, &key, late).err().unwrap();
        assert!(err.contains("too soon"), "{err}");
        let early = now - time::Duration::days(1);
        let err = CertAuthority::from_kept(&cert, &key, early).err().unwrap();
        assert!(err.contains("not valid yet"), "{err}");

        // Through the directory: a truncated certificate is replaced by a working pair.
        std::fs::write(dir.path().join(KEPT_CA_CERT), &cert[..40]).unwrap();
        let (again, origin) = CertAuthority::load_or_generate(dir.path(), "t").unwrap();
        let CaOrigin::New {
            replaced: Some(why),
        } = origin
        else {
            panic!("{origin:?}")
        };
        assert!(why.contains(KEPT_CA_CERT), "{why}");
        assert_ne!(again.ca_pem(), cert);
        let (reread, origin) = CertAuthority::load_or_generate(dir.path(), "u").unwrap();
        assert_eq!(origin, CaOrigin::Reused);
        assert_eq!(reread.ca_pem(), again.ca_pem());
        // Half a pair (the certificate gone) is replaced too.
        std::fs::remove_file(dir.path().join(KEPT_CA_CERT)).unwrap();
        let (_, origin) = CertAuthority::load_or_generate(dir.path(), "v").unwrap();
        assert!(
            matches!(origin, CaOrigin::New { replaced: Some(_) }),
            "{origin:?}"
        );
    }
}

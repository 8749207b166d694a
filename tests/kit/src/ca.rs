//! A self-signed CA signing leaf certificates for names and IP addresses.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Application protocols offered by a server or client in the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    H2,
    /// `h2`, then `http/1.1`.
    H2AndHttp1,
}

impl Alpn {
    pub fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// A test CA. Its certificate is also written as PEM to `pem_path`, readable by every user
/// (jailed processes run as other users), and removed with the CA.
pub struct TestCa {
    pub issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    pub pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("pem_path", &self.pem_path)
            .finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

/// A leaf certificate signed by a [`TestCa`] and its private key.
#[derive(Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A CA named "boundary test CA".
    pub fn new() -> TestCa {
        TestCa::named("boundary test CA")
    }

    /// A CA with `common_name` (tells CAs apart in handshake errors).
    pub fn named(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generating the CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let pem = cert.pem();
        let dir = tempfile::Builder::new()
            .prefix("boundary-test-ca-")
            .tempdir()
            .expect("creating the CA's directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("opening the CA's directory to every user");
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, &pem).expect("writing the CA's PEM");
        std::fs::set_permissions(&pem_path, std::fs::Permissions::from_mode(0o644))
            .expect("making the CA's PEM readable by every user");
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
            pem_path,
            _dir: dir,
        }
    }

    /// A leaf certificate for `names`: DNS names, or IP addresses written as such
    /// (`127.0.0.1`, `::1`).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("generating a leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("leaf certificate names {names:?}: {e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A server config presenting a fresh leaf for `names`, offering `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: Alpn) -> Arc<rustls::ServerConfig> {
        let leaf = self.leaf(names);
        let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der], leaf.key_der)
            .expect("a leaf certificate and its own key");
        config.alpn_protocols = alpn.protocols();
        Arc::new(config)
    }

    /// A client connector trusting only this CA, offering `alpn`.
    pub fn connector(&self, alpn: Alpn) -> tokio_rustls::TlsConnector {
        crate::tls_connector(&self.pem, alpn).expect("the CA's own PEM parses")
    }
}

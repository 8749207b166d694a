//! Certificates as PEM: read with x509-parser ([`inspect`]), made with rcgen ([`generate_ca`],
//! [`generate_serving`]).

use std::collections::BTreeSet;

use super::CertError;
use super::rotation::{BACKDATE_SECONDS, CertInfo};

/// Reads the first certificate of `pem`; `None` when there is none or it does not parse.
pub fn inspect(pem: &str) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let block = ::pem::parse(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).ok()?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    names.insert((*n).to_owned());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        names,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        is_ca: cert.is_ca(),
    })
}

/// A certificate and key pair as PEM, with what was read from the certificate.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Certificate (PEM).
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
    /// What the certificate says.
    pub info: CertInfo,
}

impl Pair {
    /// The pair from PEM texts, when the certificate parses and the key is its own.
    pub fn load(cert: &str, key: &str) -> Option<Pair> {
        let info = inspect(cert)?;
        let key_pair = rcgen::KeyPair::from_pem(key).ok()?;
        (key_pair.public_key_raw() == info.public_key.as_slice()).then(|| Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            info,
        })
    }
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new self-signed CA valid from `now` for `validity` seconds.
pub fn generate_ca(now: i64, validity: i64) -> Result<Pair, CertError> {
    let err = |source| CertError::Generate { what: "CA", source };
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    // A distinct subject per CA tells which CA signed a serving certificate.
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("agent-boundary webhook CA {now}"),
    );
    params.not_before = at(now - BACKDATE_SECONDS);
    params.not_after = at(now + validity);
    let cert = params.self_signed(&key).map_err(err)?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    Pair::load(&cert, &key)
        .ok_or_else(|| CertError::Settings("the new CA does not read back".into()))
}

/// A serving certificate for `names` signed by `ca`, valid from `now` for `validity` seconds
/// but not beyond the CA.
pub fn generate_serving(
    now: i64,
    validity: i64,
    ca: &Pair,
    names: &BTreeSet<String>,
) -> Result<Pair, CertError> {
    let err = |source| CertError::Generate {
        what: "serving certificate",
        source,
    };
    if names.is_empty() {
        return Err(CertError::Settings(
            "no DNS name or IP address for the webhook's serving certificate: set \
             --webhook-dns-names (BOUNDARY_WEBHOOK_DNS_NAMES)"
                .into(),
        ));
    }
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(err)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(err)?;
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::default();
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.as_str().try_into().map_err(err)?),
        });
    }
    if let Some(first) = names.iter().next() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = at(now - BACKDATE_SECONDS);
    params.not_after = at((now + validity).min(ca.info.not_after));
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    Pair::load(&cert, &key)
        .ok_or_else(|| CertError::Settings("the new serving certificate does not read back".into()))
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

    use super::*;
    use crate::certs::unix_now;

    #[test]
    fn generated_certificates_chain_and_read_back() {
        let now = unix_now();
        let ca = generate_ca(now, 3600).unwrap();
        assert!(ca.info.is_ca);
        let names = BTreeSet::from(["webhook.ns.svc".to_owned(), "127.0.0.1".to_owned()]);
        let leaf = generate_serving(now, 7200, &ca, &names).unwrap();
        assert_eq!(leaf.info.issuer, ca.info.subject);
        assert_eq!(leaf.info.names, names);
        assert!(!leaf.info.is_ca);
        // Never valid beyond its CA.
        assert_eq!(leaf.info.not_after, ca.info.not_after);
        assert_eq!(leaf.info.issued(), now);
        // A key that is not the certificate's is refused.
        let other = generate_ca(now, 3600).unwrap();
        assert!(Pair::load(&leaf.cert, &other.key).is_none());
        assert!(Pair::load("not pem", &leaf.key).is_none());
        assert!(generate_serving(now, 10, &ca, &BTreeSet::new()).is_err());

        // A rustls client trusting the CA accepts the leaf for the name.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let leaf_der = CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &leaf_der,
                &[],
                &ServerName::try_from("webhook.ns.svc").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }
}

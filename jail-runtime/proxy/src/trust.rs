//! Trust stores: where distributions keep their CA bundles, Mozilla's roots compiled in for
//! images without one, and the bundle the jail trusts (system roots plus the proxy's CA).

use std::io::Write;
use std::path::Path;

/// Trust-store files of common distributions (Debian/Ubuntu/Alpine, RHEL/Amazon Linux, SUSE,
/// Arch, and the `cert.pem` alias). Only those that exist in the jail's view are covered.
pub const TRUST_STORE_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ca-certificates/extracted/tls-ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// Mozilla's roots, PEM, for trust bundles when no system store exists.
pub fn builtin_roots_pem() -> String {
    let mut out = String::new();
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64_encode(der.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes the roots part of the jail's trust bundle to `path`: a copy of the system's store
/// (a kernel-side copy, no parsing), or Mozilla's roots where the image has none.
pub fn write_roots(path: &Path) -> std::io::Result<()> {
    for store in TRUST_STORE_FILES {
        if std::fs::metadata(store).is_ok_and(|m| m.is_file() && m.len() > 0)
            && std::fs::copy(store, path).is_ok()
        {
            return Ok(());
        }
    }
    std::fs::write(path, builtin_roots_pem())
}

/// Completes a bundle started by [`write_roots`] with the proxy's CA.
pub fn append_ca(path: &Path, ca_pem: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(b"\n# Agent Boundary proxy CA\n")?;
    file.write_all(ca_pem.as_bytes())
}

/// The password of the jail's Java trust store: the JDK's default, for programs that pass
/// `javax.net.ssl.trustStorePassword=changeit` (a JVM loading its default store passes none,
/// and reads a JKS store's certificates all the same).
pub const JAVA_STORE_PASSWORD: &str = "changeit";

/// Where JDKs keep their trust store (`cacerts`): Debian's shared one (the JDKs' own are links
/// to it there), each JDK under `/usr/lib/jvm` (also Java 8's `jre/`), Temurin's images'
/// `/opt/java/openjdk`, and `$JAVA_HOME`'s. Only those that exist, each once.
pub fn java_trust_stores(java_home: Option<&Path>) -> Vec<std::path::PathBuf> {
    let mut candidates = vec![std::path::PathBuf::from("/etc/ssl/certs/java/cacerts")];
    let mut homes: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/jvm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    homes.sort();
    homes.push("/opt/java/openjdk".into());
    homes.extend(java_home.map(Path::to_path_buf));
    for home in homes {
        candidates.push(home.join("lib/security/cacerts"));
        candidates.push(home.join("jre/lib/security/cacerts"));
    }
    let mut seen = Vec::new();
    candidates
        .into_iter()
        .filter(|p| {
            // A link (Debian's JDKs) is covered by a mount over its target.
            let Ok(real) = std::fs::canonicalize(p) else {
                return false;
            };
            let new = real.is_file() && !seen.contains(&real);
            seen.push(real);
            new
        })
        .collect()
}

/// The jail's Java trust store: every certificate of `bundle_pem` (the jail's trust bundle:
/// system roots, then the proxy's CA) as a JKS trusted-certificate entry, the format of
/// Debian's `cacerts`, which every JDK reads as its default store (`keystore.type.compat`).
/// A PKCS12 store would not do: its certificates are encrypted, and a JVM loads its default
/// store without a password, so it would skip them all.
pub fn java_trust_store(bundle_pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut store = jks::KeyStore::with_options(jks::KeyStoreOptions {
        // Aliases as written, in order: the JVM does not care, a reader of the file might.
        ordered_aliases: true,
        case_exact_aliases: true,
        ..jks::KeyStoreOptions::default()
    });
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        // A certificate the bundle's PEM cannot give is left out, as other clients do.
        let Ok(cert) = cert else { continue };
        count += 1;
        let entry = jks::TrustedCertificateEntry {
            creation_time: std::time::SystemTime::UNIX_EPOCH,
            certificate: jks::Certificate {
                cert_type: "X.509".into(),
                content: cert.as_ref().to_vec(),
            },
        };
        store
            .set_trusted_certificate_entry(&format!("boundary-{count:04}"), entry)
            .map_err(|e| format!("Java trust store: {e}"))?;
    }
    if count == 0 {
        return Err("Java trust store: no certificate in the trust bundle".into());
    }
    let mut out = Vec::new();
    store
        .store(&mut out, JAVA_STORE_PASSWORD.as_bytes())
        .map_err(|e| format!("Java trust store: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn builtin_roots_round_trip_through_pem() {
        let pem = builtin_roots_pem();
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert_eq!(
            parsed[0].as_ref(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref()
        );
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }

    #[test]
    fn the_java_store_holds_every_certificate_of_the_bundle() {
        let pem = builtin_roots_pem();
        let bytes = java_trust_store(&pem).unwrap();
        assert_eq!(&bytes[..4], &[0xfe, 0xed, 0xfe, 0xed], "JKS magic");
        let mut read = jks::KeyStore::new();
        read.load(bytes.as_slice(), JAVA_STORE_PASSWORD.as_bytes())
            .unwrap();
        assert_eq!(read.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        let first = read.get_trusted_certificate_entry("boundary-0001").unwrap();
        assert_eq!(
            first.certificate.content,
            webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref()
        );
        assert!(java_trust_store("no certificates").is_err());
    }

    #[test]
    fn the_bundle_is_the_roots_then_the_proxy_ca() {
        let path = std::env::temp_dir().join(format!("boundary-trust-test-{}", std::process::id()));
        write_roots(&path).unwrap();
        append_ca(
            &path,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let b = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(b.ends_with("\n# Agent Boundary proxy CA\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"));
        assert!(
            b.matches("BEGIN CERTIFICATE").count() > 10,
            "system or builtin roots come first"
        );
    }
}

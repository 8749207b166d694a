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

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
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Writes the roots part of the jail's trust bundle to `path`: a copy of the system's store
/// (a kernel-side copy, no parsing), or Mozilla's roots where the image has none.
pub fn write_roots(path: &Path) -> std::io::Result<()> {
    if system_stores().any(|store| std::fs::copy(store, path).is_ok()) {
        return Ok(());
    }
    std::fs::write(path, builtin_roots_pem())
}

/// The system's trust stores that exist here as non-empty files, in order of preference.
fn system_stores() -> impl Iterator<Item = &'static str> {
    TRUST_STORE_FILES
        .iter()
        .copied()
        .filter(|store| std::fs::metadata(store).is_ok_and(|m| m.is_file() && m.len() > 0))
}

/// Completes a bundle started by [`write_roots`] with the proxy's CA.
pub fn append_ca(path: &Path, ca_pem: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(CA_HEADER.as_bytes())?;
    file.write_all(ca_pem.as_bytes())
}

/// The line before the proxy's CA in the bundle.
const CA_HEADER: &str = "\n# Agent Boundary proxy CA\n";

/// The bundle [`write_roots`] and [`append_ca`] write, in memory: for a jail that also needs
/// the Java store made from it, so that the roots are read once rather than copied and read
/// back.
pub fn bundle(ca_pem: &str) -> Vec<u8> {
    let mut bundle = system_stores()
        .find_map(|store| std::fs::read(store).ok())
        .unwrap_or_else(|| builtin_roots_pem().into_bytes());
    bundle.extend_from_slice(CA_HEADER.as_bytes());
    bundle.extend_from_slice(ca_pem.as_bytes());
    bundle
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
///
/// Written directly (the format is a header, the entries and a SHA-1 over password, whitener
/// and content): it is on every jail's start-up path, where a general key-store library cost
/// about 2 ms for ~150 roots. Byte for byte what the `jks` crate writes (a test compares them).
pub fn java_trust_store(bundle_pem: &[u8]) -> Result<Vec<u8>, String> {
    let certificates = pem_certificates(bundle_pem);
    if certificates.is_empty() {
        return Err("Java trust store: no certificate in the trust bundle".into());
    }
    let count = u32::try_from(certificates.len())
        .map_err(|_| "Java trust store: too many certificates".to_owned())?;
    let size: usize = certificates.iter().map(|c| c.len() + 48).sum();
    let mut out = Vec::with_capacity(size + 32);
    out.extend_from_slice(&JKS_MAGIC.to_be_bytes());
    out.extend_from_slice(&JKS_VERSION.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for (index, der) in certificates.iter().enumerate() {
        let length = u32::try_from(der.len())
            .map_err(|_| "Java trust store: a certificate over 4 GiB".to_owned())?;
        // Aliases in order (`boundary-0001`, ...): the JVM does not care, a reader might.
        let alias = format!("boundary-{:04}", index + 1);
        out.extend_from_slice(&JKS_TRUSTED_CERT_TAG.to_be_bytes());
        push_java_utf(&mut out, &alias);
        // Creation time: the epoch, so the same bundle always gives the same store.
        out.extend_from_slice(&0u64.to_be_bytes());
        push_java_utf(&mut out, "X.509");
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(der);
    }
    let digest = jks_digest(JAVA_STORE_PASSWORD, &out);
    out.extend_from_slice(&digest);
    Ok(out)
}

const JKS_MAGIC: u32 = 0xfeed_feed;
const JKS_VERSION: u32 = 2;
const JKS_TRUSTED_CERT_TAG: u32 = 2;

/// A short ASCII string as Java's `writeUTF` writes it (length, then the bytes).
fn push_java_utf(out: &mut Vec<u8>, ascii: &str) {
    let length = u16::try_from(ascii.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&ascii.as_bytes()[..usize::from(length)]);
}

/// The integrity check closing a JKS store: SHA-1 over the password (UTF-16BE), the JDK's
/// fixed "Mighty Aphrodite" and the store's content.
fn jks_digest(password: &str, content: &[u8]) -> [u8; 20] {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    for unit in password.encode_utf16() {
        hasher.update(unit.to_be_bytes());
    }
    hasher.update(b"Mighty Aphrodite");
    hasher.update(content);
    hasher.finalize().into()
}

/// The DER of every `CERTIFICATE` block of a PEM bundle, in order. Certificates are public, so
/// the fast (not constant-time) base64 decoder is fine. A block that does not decode, or has no
/// end line, is left out, as other clients do; other blocks and text between them are skipped.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let begin = memchr::memmem::Finder::new(BEGIN);
    let last_begin = memchr::memmem::FinderRev::new(BEGIN);
    let end = memchr::memmem::Finder::new(END);
    let mut out = Vec::new();
    let mut body = Vec::new();
    let mut rest = pem;
    while let Some(start) = begin.find(rest) {
        rest = &rest[start + BEGIN.len()..];
        let Some(stop) = end.find(rest) else {
            break;
        };
        let block = &rest[..stop];
        rest = &rest[stop + END.len()..];
        let der = decode_pem_body(block, &mut body).or_else(|| {
            // A block without its end line is followed by the next block's begin line: the
            // last begin line before this end is the one it closes.
            let inner = last_begin.rfind(block)?;
            decode_pem_body(&block[inner + BEGIN.len()..], &mut body)
        });
        if let Some(der) = der.filter(|der| !der.is_empty()) {
            out.push(der);
        }
    }
    out
}

/// The base64 body of a PEM block, decoded; `None` when it is not base64. Copied line by line
/// (whole lines at once: this is on every jail's start-up path); whitespace inside a line,
/// which PEM readers also skip, takes the slow way.
fn decode_pem_body(block: &[u8], body: &mut Vec<u8>) -> Option<Vec<u8>> {
    body.clear();
    let mut line_start = 0;
    for newline in memchr::memchr_iter(b'\n', block).chain([block.len()]) {
        body.extend_from_slice(block[line_start..newline].trim_ascii());
        line_start = newline + 1;
    }
    decode_base64(body).or_else(|| {
        body.retain(|b| !matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' '));
        decode_base64(body)
    })
}

/// Standard base64 with padding, strictly (no bits left over after the last byte), decoded
/// with SIMD: the bundle's ~200 KiB of base64 took a third of the Java store's making with the
/// `base64` crate's decoder, which accepts and rejects exactly the same (a test compares them).
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    base64_simd::STANDARD.decode_to_vec(text).ok()
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
        let bytes = java_trust_store(pem.as_bytes()).unwrap();
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
        assert!(java_trust_store(b"no certificates").is_err());
    }

    /// The store as the `jks` crate writes it from rustls's PEM reader: what
    /// [`java_trust_store`] replaced, and must equal byte for byte.
    fn java_trust_store_by_the_jks_crate(bundle_pem: &str) -> Result<Vec<u8>, String> {
        let mut store = jks::KeyStore::with_options(jks::KeyStoreOptions {
            ordered_aliases: true,
            case_exact_aliases: true,
            ..jks::KeyStoreOptions::default()
        });
        let mut count = 0usize;
        for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
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
                .map_err(|e| e.to_string())?;
        }
        if count == 0 {
            return Err("none".into());
        }
        let mut out = Vec::new();
        store
            .store(&mut out, JAVA_STORE_PASSWORD.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn the_java_store_is_what_the_jks_crate_writes() {
        let mut bundles = vec![builtin_roots_pem()];
        for store in TRUST_STORE_FILES {
            if let Ok(pem) = std::fs::read_to_string(store) {
                bundles.push(pem);
            }
        }
        for pem in &bundles {
            assert_eq!(
                java_trust_store(pem.as_bytes()).unwrap(),
                java_trust_store_by_the_jks_crate(pem).unwrap()
            );
        }
    }

    /// One certificate as a PEM block the way bundles in the wild write them.
    fn pem_block(der: &[u8], width: usize, crlf: bool) -> String {
        let newline = if crlf { "\r\n" } else { "\n" };
        let b64 = base64_encode(der);
        let mut out = format!("-----BEGIN CERTIFICATE-----{newline}");
        for line in b64.as_bytes().chunks(width) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push_str(newline);
        }
        out.push_str("-----END CERTIFICATE-----");
        out.push_str(newline);
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Bundles of some roots, each written with its own line width and line ends, with
        /// comments and other PEM blocks between: the fast store equals the `jks` crate's.
        #[test]
        fn the_java_store_equals_the_jks_crate_on_any_bundle(
            picks in proptest::collection::vec(
                (0..webpki_root_certs::TLS_SERVER_ROOT_CERTS.len(), 1usize..=4, 0u8..8),
                1..12,
            ),
        ) {
            let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
            let mut pem = String::new();
            for (index, width, style) in picks {
                match style {
                    0 => pem.push_str("# a comment line between blocks\n"),
                    1 => pem.push_str("-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n"),
                    2 => pem.push_str("Certificate:\n    Data: text before the block\n"),
                    _ => {}
                }
                pem.push_str(&pem_block(roots[index].as_ref(), width * 16, style & 1 == 1));
            }
            proptest::prop_assert_eq!(
                java_trust_store(pem.as_bytes()).unwrap(),
                java_trust_store_by_the_jks_crate(&pem).unwrap()
            );
        }
    }

    #[test]
    fn broken_blocks_are_left_out_and_never_panic() {
        let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        let good = pem_block(roots[0].as_ref(), 64, false);
        let second = pem_block(roots[1].as_ref(), 64, false);
        let expected = java_trust_store(format!("{good}{second}").as_bytes()).unwrap();
        // Not base64; a block without its end line; a block never closed at the end.
        let bundle = format!(
            "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n{good}\
             -----BEGIN CERTIFICATE-----\nMIIB\n{second}-----BEGIN CERTIFICATE-----\nMIIB"
        );
        assert_eq!(java_trust_store(bundle.as_bytes()).unwrap(), expected);
        assert_eq!(pem_certificates(bundle.as_bytes()).len(), 2);
        // Whitespace inside lines and vertical tabs, which rustls's PEM reader skips too.
        let spaced = good.replacen("MII", "M I\t\x0bI", 1);
        assert_ne!(spaced, good);
        assert_eq!(
            java_trust_store(spaced.as_bytes()).unwrap(),
            java_trust_store_by_the_jks_crate(&spaced).unwrap()
        );
        for cut in 0..good.len() {
            let _ = java_trust_store(&good.as_bytes()[..cut]);
        }
        assert!(java_trust_store(b"").is_err());
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

    #[test]
    fn the_bundle_in_memory_is_the_bundle_written() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let path =
            std::env::temp_dir().join(format!("boundary-bundle-test-{}", std::process::id()));
        write_roots(&path).unwrap();
        append_ca(&path, ca).unwrap();
        let written = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let made = bundle(ca);
        // Not `assert_eq!`: a difference would print some 200 KiB of bytes.
        assert!(
            made == written,
            "the bundle in memory ({} bytes, ends {:?}) is not the bundle written ({} bytes, ends {:?})",
            made.len(),
            String::from_utf8_lossy(&made[made.len().saturating_sub(80)..]),
            written.len(),
            String::from_utf8_lossy(&written[written.len().saturating_sub(80)..]),
        );
    }

    /// The `base64` crate's decoder, which [`decode_base64`] replaced.
    fn decode_by_the_base64_crate(text: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any text of base64's bytes, `=` and a few others: the same bytes or the same refusal.
        #[test]
        fn base64_decodes_as_the_base64_crate_decodes_any_text(
            text in proptest::collection::vec(
                proptest::prop_oneof![
                    20 => proptest::sample::select(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".to_vec()
                    ),
                    1 => proptest::sample::select(b"=-_ \n\x00\xff.".to_vec()),
                ],
                0..150,
            ),
        ) {
            proptest::prop_assert_eq!(decode_base64(&text), decode_by_the_base64_crate(&text));
        }

        /// Encodings of any bytes, then one character changed (the last ones carry the bits
        /// left over, which a strict decoder refuses when set) or the padding cut.
        #[test]
        fn base64_decodes_as_the_base64_crate_decodes_changed_encodings(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            from_end in 0usize..6,
            by in proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=".to_vec()
            ),
            cut in proptest::prelude::any::<bool>(),
        ) {
            let mut text = base64_encode(&data).into_bytes();
            proptest::prop_assert_eq!(decode_base64(&text), Some(data));
            if let Some(at) = text.len().checked_sub(from_end + 1) {
                text[at] = by;
            }
            if cut {
                while text.last() == Some(&b'=') {
                    text.pop();
                }
            }
            proptest::prop_assert_eq!(decode_base64(&text), decode_by_the_base64_crate(&text));
        }
    }
}

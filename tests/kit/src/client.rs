//! Small clients: a TLS connector for a given CA, a free loopback port, waiting for a listener.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Alpn;

/// A TLS connector trusting only the certificates in `ca_pem` (one or more PEM certificates),
/// offering `alpn`.
pub fn tls_connector(ca_pem: &str, alpn: Alpn) -> io::Result<tokio_rustls::TlsConnector> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid("a CA certificate is no valid PEM", &e))?;
        roots
            .add(cert)
            .map_err(|e| invalid("a CA certificate is unusable as a trust anchor", &e))?;
    }
    if roots.is_empty() {
        return Err(invalid("no CA certificate in the PEM", &"nothing to trust"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.protocols();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A loopback address whose port was free a moment ago (for a process that must be told its
/// port in advance).
pub fn free_port() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Waits until something accepts connections on `addr`, up to 10 s; `what` names it in the
/// error.
pub async fn wait_port(addr: SocketAddr, what: &str) -> io::Result<()> {
    wait_port_within(addr, what, Duration::from_secs(10)).await
}

/// [`wait_port`] with a limit of `limit`.
pub async fn wait_port_within(addr: SocketAddr, what: &str, limit: Duration) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not start listening on {addr} within {limit:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

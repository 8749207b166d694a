//! Connections from the proxy to the real destinations: name resolution (a Rust resolver
//! reading the pod's `resolv.conf`, so the static binary needs no NSS, or `--upstream-dns`;
//! `--resolve` and `spec.resolve` pin names), the private-address guard on every address tried
//! ([`crate::guard`]), TCP with a connect timeout, TLS verified against the upstream roots, and pooled HTTP
//! clients (h1, and h2 when both sides speak it).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use boundary_api::rules::Host;
use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http_body_util::combinators::BoxBody;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::answer_first::AnswerFirst;
use crate::guard::{self, Exemptions, Judgement, Origin};
use crate::metrics::UpstreamError;
use crate::pod_local::is_loopback;
use crate::tls::UpstreamTls;

/// Boxed error of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer under an upstream TLS session: rustls reads at most 4 KiB per call, so a 16 KiB
/// record took four `recv`s; this holds a whole record (16 KiB of data, its header and the AEAD
/// expansion), so bulk downloads take one. Upstream connections are pooled, few next to the
/// clients' idle ones.
const TLS_READ_BUFFER: usize = 16 * 1024 + 512;

/// An upstream TCP stream under TLS, read a record at a time.
pub type TlsTcp = tokio::io::BufReader<TcpStream>;

/// An upstream failure: its kind (for metrics and the status code) and a short reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What failed.
    pub kind: UpstreamError,
    /// Short reason, shown to the client.
    pub message: String,
    /// A timeout (504) rather than a refusal (502).
    pub timeout: bool,
}

impl Failure {
    fn new(kind: UpstreamError, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            timeout: false,
        }
    }

    /// 403 for the private-address guard's refusals, 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> u16 {
        if self.kind == UpstreamError::Guard {
            403
        } else if self.timeout {
            504
        } else {
            502
        }
    }
}

/// Upstream settings shared by every connection.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    /// Built on first use (reads resolv.conf and hosts, unless `dns` is set).
    resolver: OnceLock<Result<TokioResolver, String>>,
    /// `--upstream-dns`: the DNS server to ask instead of the system's.
    dns: Option<SocketAddr>,
    overrides: HashMap<String, IpAddr>,
    tls: UpstreamTls,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// `overrides` pin names to addresses (`--resolve`); `dns` is the DNS server to ask
    /// (`--upstream-dns`; `None`: the system's, from `/etc/resolv.conf`).
    pub fn new(
        overrides: HashMap<String, IpAddr>,
        dns: Option<SocketAddr>,
        tls: UpstreamTls,
    ) -> Upstream {
        Upstream {
            inner: Arc::new(Inner {
                resolver: OnceLock::new(),
                dns,
                overrides,
                tls,
            }),
        }
    }

    fn resolver(&self) -> Result<&TokioResolver, Failure> {
        self.inner
            .resolver
            .get_or_init(|| match self.inner.dns {
                Some(server) => {
                    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut name_server.connections {
                        connection.port = server.port();
                    }
                    let config = ResolverConfig::from_name_servers(vec![name_server]);
                    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                        .build()
                        .map_err(|e| format!("cannot use the DNS server {server}: {e}"))
                }
                None => TokioResolver::builder_tokio()
                    .and_then(hickory_resolver::ResolverBuilder::build)
                    .map_err(|e| {
                        format!("cannot read the resolver configuration (/etc/resolv.conf): {e}")
                    }),
            })
            .as_ref()
            .map_err(|e| Failure::new(UpstreamError::Resolve, e.clone()))
    }

    /// The addresses to try for `host`, each with where it came from: an IP literal is itself,
    /// a name is looked up in `--resolve`, then in the policy's `pins`, then in DNS. Whether each
    /// may be connected to is the guard's business ([`Upstream::connect_tcp`]).
    pub async fn resolve(
        &self,
        host: &Host,
        pins: &HashMap<String, Vec<IpAddr>>,
    ) -> Result<Vec<(IpAddr, Origin)>, Failure> {
        let name = match host {
            Host::Ip(ip) => return Ok(vec![(*ip, Origin::Asked)]),
            Host::Name(name) => name,
        };
        if let Some(ip) = self.inner.overrides.get(name) {
            return Ok(vec![(*ip, Origin::Pinned)]);
        }
        if let Some(ips) = pins.get(name).filter(|ips| !ips.is_empty()) {
            return Ok(ips.iter().map(|ip| (*ip, Origin::Pinned)).collect());
        }
        let resolver = self.resolver()?;
        // Absolute name: the jail already asked for exactly this name.
        let lookup = resolver.lookup_ip(format!("{name}.")).await.map_err(|e| {
            Failure::new(
                UpstreamError::Resolve,
                format!("cannot resolve {name}: {e}"),
            )
        })?;
        let addrs: Vec<(IpAddr, Origin)> = lookup.iter().map(|ip| (ip, Origin::Asked)).collect();
        if addrs.is_empty() {
            return Err(Failure::new(
                UpstreamError::Resolve,
                format!("{name} has no address"),
            ));
        }
        Ok(addrs)
    }

    /// A TCP connection to `host:port`, trying each address in turn; the private-address guard
    /// judges each one before it is tried ([`guard::judge`]), so an address DNS handed out for
    /// an allowed name is refused when it is loopback, private, link-local, metadata… and
    /// neither pinned nor named by a rule. When no address could be connected to and one was
    /// refused by the guard, the failure is the guard's (403), saying why.
    pub async fn connect_tcp(
        &self,
        host: &Host,
        port: u16,
        exemptions: &Exemptions,
    ) -> Result<TcpStream, Failure> {
        let addrs = self.resolve(host, &exemptions.pins).await?;
        let mut last = None;
        let mut refused = None;
        for (ip, origin) in addrs {
            if let Judgement::Refused(refusal) = guard::judge(ip, port, origin, &exemptions.rules) {
                refused.get_or_insert(refusal);
                continue;
            }
            match tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(SocketAddr::new(ip, port)),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => {
                    last = Some(Failure::new(
                        UpstreamError::Connect,
                        format!("connecting to {host}:{port} ({ip}): {e}"),
                    ));
                }
                Err(_) => {
                    last = Some(Failure {
                        timeout: true,
                        ..Failure::new(
                            UpstreamError::Connect,
                            format!("connecting to {host}:{port} ({ip}) timed out"),
                        )
                    });
                }
            }
        }
        if let Some(refusal) = refused {
            let mut message = refusal.explain(host, port);
            if let Some(other) = last {
                message = format!("{message} (its other addresses failed: {other})");
            }
            return Err(Failure::new(UpstreamError::Guard, message));
        }
        Err(last
            .unwrap_or_else(|| Failure::new(UpstreamError::Connect, "no address to connect to")))
    }

    /// A TLS connection to `host:port`, verified; ALPN offers h2 when `h2`.
    pub async fn connect_tls(
        &self,
        host: &Host,
        port: u16,
        h2: bool,
        exemptions: &Exemptions,
    ) -> Result<TlsStream<TlsTcp>, Failure> {
        let tcp = tokio::io::BufReader::with_capacity(
            TLS_READ_BUFFER,
            self.connect_tcp(host, port, exemptions).await?,
        );
        let config = self.inner.tls.config(h2);
        let server_name = match host {
            Host::Name(n) => ServerName::try_from(n.clone()).map_err(|e| {
                Failure::new(UpstreamError::Tls, format!("invalid server name {n}: {e}"))
            })?,
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        };
        TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                Failure::new(
                    UpstreamError::Tls,
                    format!("TLS with {host}:{port} failed: {e}"),
                )
            })
    }

    /// A pooled HTTP client whose connections `exemptions` lift the guard for; `h2` lets TLS
    /// upstreams negotiate HTTP/2.
    pub fn client(&self, h2: bool, exemptions: Arc<Exemptions>) -> Client<Connector, Body> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .set_host(true);
        builder.build(Connector {
            upstream: self.clone(),
            h2,
            exemptions,
        })
    }
}

/// The pooled HTTP clients of one rule set (made on first use). One pool per rule set, so a
/// connection opened under one set's exemptions (a pin, an address rule) is never reused for a
/// container or a policy version without them.
#[derive(Default)]
pub struct Clients {
    made: OnceLock<[Client<Connector, Body>; 2]>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// The HTTP/1.1 or HTTP/2-capable client of `upstream` with `exemptions`.
    pub fn get(
        &self,
        upstream: &Upstream,
        exemptions: &Arc<Exemptions>,
        h2: bool,
    ) -> &Client<Connector, Body> {
        let [h1_client, h2_client] = self.made.get_or_init(|| {
            [
                upstream.client(false, exemptions.clone()),
                upstream.client(true, exemptions.clone()),
            ]
        });
        if h2 { h2_client } else { h1_client }
    }
}

/// A TCP connection to a port of the pod's loopback.
async fn connect_pod_local(ip: IpAddr, port: u16) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect(SocketAddr::new(ip, port)),
    )
    .await
    {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(Failure::new(
            UpstreamError::Connect,
            format!(
                "connecting to {ip}:{port} in the pod: {e} (is the pod's server listening there?)"
            ),
        )),
        Err(_) => Err(Failure {
            timeout: true,
            ..Failure::new(
                UpstreamError::Connect,
                format!("connecting to {ip}:{port} in the pod timed out"),
            )
        }),
    }
}

/// Connects for the pooled clients: `http://` plain, `https://` verified TLS.
#[derive(Clone, Debug)]
pub struct Connector {
    upstream: Upstream,
    h2: bool,
    exemptions: Arc<Exemptions>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, Failure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let upstream = self.upstream.clone();
        let h2 = self.h2;
        let exemptions = self.exemptions.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let raw_host = uri.host().unwrap_or_default();
            let host = Host::parse(raw_host)
                .map_err(|e| Failure::new(UpstreamError::Resolve, e.to_string()))?;
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            if https {
                let tls = upstream.connect_tls(&host, port, h2, &exemptions).await?;
                let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok(Conn {
                    io: TokioIo::new(AnswerFirst::new(Stream::Tls(Box::new(tls)))),
                    h2: negotiated_h2,
                })
            } else {
                let tcp = match host {
                    // A loopback target gets here only through `http::pod_local_request`
                    // (podLocal rules allowed it): `http::handle` sends every loopback target
                    // there, before any host rule is looked at.
                    Host::Ip(ip) if is_loopback(ip) => connect_pod_local(ip, port).await?,
                    _ => upstream.connect_tcp(&host, port, &exemptions).await?,
                };
                Ok(Conn {
                    io: TokioIo::new(AnswerFirst::new(Stream::Plain(tcp))),
                    h2: false,
                })
            }
        })
    }
}

/// An upstream stream, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TlsTcp>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection handed to hyper's client, telling it whether h2 was negotiated.
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<AnswerFirst<Stream>>,
    h2: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<TcpStream, Failure>) -> String {
        let failure = result.unwrap_err();
        assert_eq!(failure.kind, UpstreamError::Guard, "{failure}");
        assert_eq!(failure.status(), 403);
        failure.message
    }

    #[tokio::test]
    async fn the_guard_judges_every_address_and_pins_lift_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let overrides = HashMap::from([("pinned.test".to_owned(), "127.0.0.1".parse().unwrap())]);
        let upstream = Upstream::new(overrides, None, UpstreamTls::new(&[]).unwrap());
        let none = Exemptions::default();
        for literal in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            let host = Host::parse(literal).unwrap();
            let message = refused(upstream.connect_tcp(&host, port, &none).await);
            assert!(message.contains("podLocal"), "{literal}: {message}");
        }
        // A name whose answer is loopback (localhost always is) cannot reach the pod either.
        let localhost = Host::parse("localhost").unwrap();
        let message = refused(upstream.connect_tcp(&localhost, port, &none).await);
        assert!(message.contains("an address of localhost"), "{message}");
        // `--resolve` pins it; so does the policy's `spec.resolve`.
        let pinned = Host::parse("pinned.test").unwrap();
        assert!(upstream.connect_tcp(&pinned, port, &none).await.is_ok());
        let pins = Exemptions {
            pins: HashMap::from([("localhost".to_owned(), vec!["127.0.0.1".parse().unwrap()])]),
            rules: Vec::new(),
        };
        assert!(upstream.connect_tcp(&localhost, port, &pins).await.is_ok());
        let resolved = upstream.resolve(&pinned, &none.pins).await.unwrap();
        assert_eq!(resolved, [("127.0.0.1".parse().unwrap(), Origin::Pinned)]);
        let public = Host::parse("192.0.2.10").unwrap();
        assert_eq!(
            upstream.resolve(&public, &none.pins).await.unwrap(),
            [("192.0.2.10".parse().unwrap(), Origin::Asked)]
        );
    }
}

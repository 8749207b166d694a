//! Connections from the proxy to the real destinations: name resolution (a Rust resolver
//! reading the pod's `resolv.conf`, so the static binary needs no NSS; `--resolve` overrides for
//! tests), TCP with a connect timeout, TLS verified against the upstream roots, and pooled HTTP
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

use crate::metrics::UpstreamError;
use crate::pod_local::{is_local_address, is_loopback};
use crate::tls::UpstreamTls;

/// Boxed error of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> u16 {
        if self.timeout { 504 } else { 502 }
    }
}

/// Upstream settings shared by every connection.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    /// Built on first use (reads resolv.conf and hosts).
    resolver: OnceLock<Result<TokioResolver, String>>,
    overrides: HashMap<String, IpAddr>,
    tls: UpstreamTls,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// `overrides` pin names to addresses.
    pub fn new(overrides: HashMap<String, IpAddr>, tls: UpstreamTls) -> Upstream {
        Upstream {
            inner: Arc::new(Inner {
                resolver: OnceLock::new(),
                overrides,
                tls,
            }),
        }
    }

    fn resolver(&self) -> Result<&TokioResolver, Failure> {
        self.inner
            .resolver
            .get_or_init(|| {
                TokioResolver::builder_tokio()
                    .and_then(hickory_resolver::ResolverBuilder::build)
                    .map_err(|e| {
                        format!("cannot read the resolver configuration (/etc/resolv.conf): {e}")
                    })
            })
            .as_ref()
            .map_err(|e| Failure::new(UpstreamError::Resolve, e.clone()))
    }

    /// Addresses of `host`. The proxy's own host (loopback, `0.0.0.0`) is never one of them:
    /// the pod's loopback is reached only through `podLocal` rules, so a host rule (an IP range,
    /// or a name whose DNS answer points at `127.0.0.1`) cannot reach the pod's sidecars. Only a
    /// `--resolve` override, the administrator's own setting, may name it.
    pub async fn resolve(&self, host: &Host) -> Result<Vec<IpAddr>, Failure> {
        const LOCAL: &str = "the pod's loopback is reached only through podLocal rules \
                             (spec.podLocal, boundary run --allow-pod-local)";
        let name = match host {
            Host::Ip(ip) if is_local_address(*ip) => {
                return Err(Failure::new(
                    UpstreamError::Connect,
                    format!("{ip} is this pod's own address: {LOCAL}"),
                ));
            }
            Host::Ip(ip) => return Ok(vec![*ip]),
            Host::Name(name) => name,
        };
        if let Some(ip) = self.inner.overrides.get(name) {
            return Ok(vec![*ip]);
        }
        let resolver = self.resolver()?;
        // Absolute name: the jail already asked for exactly this name.
        let lookup = resolver.lookup_ip(format!("{name}.")).await.map_err(|e| {
            Failure::new(
                UpstreamError::Resolve,
                format!("cannot resolve {name}: {e}"),
            )
        })?;
        let (local, addrs): (Vec<IpAddr>, Vec<IpAddr>) =
            lookup.iter().partition(|ip| is_local_address(*ip));
        if addrs.is_empty() {
            let message = if local.is_empty() {
                format!("{name} has no address")
            } else {
                format!("{name} resolves only to this pod's own address: {LOCAL}")
            };
            return Err(Failure::new(UpstreamError::Resolve, message));
        }
        Ok(addrs)
    }

    /// A TCP connection to `host:port`, trying each address in turn.
    pub async fn connect_tcp(&self, host: &Host, port: u16) -> Result<TcpStream, Failure> {
        let addrs = self.resolve(host).await?;
        let mut last = None;
        for ip in addrs {
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
        Err(last
            .unwrap_or_else(|| Failure::new(UpstreamError::Connect, "no address to connect to")))
    }

    /// A TLS connection to `host:port`, verified; ALPN offers h2 when `h2`.
    pub async fn connect_tls(
        &self,
        host: &Host,
        port: u16,
        h2: bool,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let tcp = self.connect_tcp(host, port).await?;
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

    /// A pooled HTTP client; `h2` lets TLS upstreams negotiate HTTP/2.
    pub fn client(&self, h2: bool) -> Client<Connector, Body> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .set_host(true);
        builder.build(Connector {
            upstream: self.clone(),
            h2,
        })
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
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let raw_host = uri.host().unwrap_or_default();
            let host = Host::parse(raw_host)
                .map_err(|e| Failure::new(UpstreamError::Resolve, e.to_string()))?;
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            if https {
                let tls = upstream.connect_tls(&host, port, h2).await?;
                let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok(Conn {
                    io: TokioIo::new(Stream::Tls(Box::new(tls))),
                    h2: negotiated_h2,
                })
            } else {
                let tcp = match host {
                    // A loopback target gets here only through `http::pod_local_request`
                    // (podLocal rules allowed it): `http::handle` sends every loopback target
                    // there, before any host rule is looked at.
                    Host::Ip(ip) if is_loopback(ip) => connect_pod_local(ip, port).await?,
                    _ => upstream.connect_tcp(&host, port).await?,
                };
                Ok(Conn {
                    io: TokioIo::new(Stream::Plain(tcp)),
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
    Tls(Box<TlsStream<TcpStream>>),
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
    io: TokioIo<Stream>,
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

    #[tokio::test]
    async fn the_proxys_own_host_is_no_upstream_unless_an_override_names_it() {
        let overrides = HashMap::from([("pinned.test".to_owned(), "127.0.0.1".parse().unwrap())]);
        let upstream = Upstream::new(overrides, UpstreamTls::new(&[]).unwrap());
        for literal in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            let host = Host::parse(literal).unwrap();
            let err = upstream.resolve(&host).await.unwrap_err();
            assert!(err.message.contains("podLocal"), "{literal}: {err}");
        }
        // A name whose answer is loopback (localhost always is) cannot reach the pod either.
        let err = upstream
            .resolve(&Host::parse("localhost").unwrap())
            .await
            .unwrap_err();
        assert!(
            err.message.contains("only to this pod's own address"),
            "{err}"
        );
        assert!(
            upstream
                .connect_tcp(&Host::parse("localhost").unwrap(), 1)
                .await
                .is_err()
        );
        let pinned = upstream.resolve(&Host::parse("pinned.test").unwrap()).await;
        assert_eq!(pinned.unwrap(), ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let public = upstream.resolve(&Host::parse("192.0.2.10").unwrap()).await;
        assert_eq!(public.unwrap(), ["192.0.2.10".parse::<IpAddr>().unwrap()]);
    }
}

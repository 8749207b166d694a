//! The supervisor's side of the jail's network: it serves the sockets the jail's init created
//! inside the jail's network namespace. Redirected TCP connections get their original
//! destination back (`SO_ORIGINAL_DST`) and go to the proxy, in-process or through the
//! sidecar's unix socket behind a one-line header (a loopback destination, from a redirected
//! pod-local port, goes as it is); DNS queries get synthetic answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boundary_api::Tier;
use nix::sys::socket::{getsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};

use crate::session::Refusals;
use boundary_jail::dns::{self, NameTable};
use boundary_jail::{FORWARDER_PORT, ListenerKind};
use boundary_proxy::{Destination, Proxy};

/// Where intercepted connections go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The proxy in this process (standalone `boundary run`).
    Local(Proxy),
    /// The sidecar's unix socket, and where connections refused while it is unreachable are
    /// noted for the session to report.
    Socket(PathBuf, Arc<Refusals>),
}

/// What the forwarder needs.
#[derive(Debug)]
pub struct Forwarder {
    /// Synthetic address ↔ name.
    pub names: Arc<NameTable>,
    /// Where connections go.
    pub target: Target,
    /// The jailed container's name (for the sidecar's rule selection and audit).
    pub container: Option<String>,
    /// The jail's tier.
    pub tier: Tier,
}

impl Forwarder {
    /// Serves every listener until the runtime stops.
    pub fn serve(self: &Arc<Self>, listeners: Vec<(ListenerKind, OwnedFd)>) -> std::io::Result<()> {
        for (kind, fd) in listeners {
            match kind {
                ListenerKind::Forward4 | ListenerKind::Forward6 => {
                    let std = std::net::TcpListener::from(fd);
                    std.set_nonblocking(true)?;
                    let listener = TcpListener::from_std(std)?;
                    let this = self.clone();
                    tokio::spawn(async move { this.accept_loop(listener).await });
                }
                ListenerKind::DnsUdp4 | ListenerKind::DnsUdp6 => {
                    let std = std::net::UdpSocket::from(fd);
                    std.set_nonblocking(true)?;
                    let socket = UdpSocket::from_std(std)?;
                    let this = self.clone();
                    tokio::spawn(async move { this.dns_udp(socket).await });
                }
                ListenerKind::DnsTcp4 | ListenerKind::DnsTcp6 => {
                    let std = std::net::TcpListener::from(fd);
                    std.set_nonblocking(true)?;
                    let listener = TcpListener::from_std(std)?;
                    let this = self.clone();
                    tokio::spawn(async move { this.dns_tcp(listener).await });
                }
            }
        }
        Ok(())
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let this = self.clone();
                    tokio::spawn(async move { this.forward(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a jailed connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn forward(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let Some(original) = original_destination(&stream) else {
            return;
        };
        // A connection to the forwarder itself. Other loopback destinations arrive only for the
        // pod-local ports the jail redirects; the proxy decides them by podLocal rules.
        if original.ip().is_loopback() && original.port() == FORWARDER_PORT {
            return;
        }
        let name = match original.ip() {
            IpAddr::V4(v4) if NameTable::is_synthetic(v4) => match self.names.name_for(v4) {
                Some(name) => Some(name),
                // An address the jail's DNS never handed out: nobody to relay to.
                None => return,
            },
            _ => None,
        };
        let dest = Destination {
            dst: original,
            name,
            container: self.container.clone(),
            tier: Some(self.tier),
        };
        match &self.target {
            Target::Local(proxy) => proxy.serve_connection(Box::new(stream), dest).await,
            Target::Socket(path, refusals) => relay_to_socket(stream, path, &dest, refusals).await,
        }
    }

    async fn dns_udp(self: Arc<Self>, socket: UdpSocket) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            if let Some((reply, question, answer)) = dns::answer(&buf[..n], &self.names) {
                self.count_dns(question.as_ref(), &answer);
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    }

    async fn dns_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await
                {
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    let Some((reply, question, answer)) = dns::answer(&msg, &this.names) else {
                        return;
                    };
                    this.count_dns(question.as_ref(), &answer);
                    let mut framed = u16::try_from(reply.len())
                        .unwrap_or(0)
                        .to_be_bytes()
                        .to_vec();
                    framed.extend(reply);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    fn count_dns(&self, question: Option<&dns::Question>, answer: &dns::Answer) {
        if let Target::Local(proxy) = &self.target {
            proxy.metrics().dns_query();
        }
        tracing::debug!(?question, ?answer, "DNS query in the jail");
    }
}

/// The destination a redirected connection was opened to.
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    match stream.local_addr().ok()? {
        SocketAddr::V4(_) => {
            let sa = getsockopt(stream, sockopt::OriginalDst).ok()?;
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))),
                u16::from_be(sa.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
                u16::from_be(sa.sin6_port),
            ))
        }
    }
}

async fn relay_to_socket(
    stream: TcpStream,
    path: &std::path::Path,
    dest: &Destination,
    refusals: &Refusals,
) {
    let mut upstream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            // Fail closed; said once per outage, and the sidecar audits each one once back.
            if refusals.refused(dest) {
                tracing::warn!(
                    error = %e,
                    socket = %path.display(),
                    "the boundary sidecar is not reachable: the jail's connections are refused until it is back"
                );
            } else {
                tracing::debug!(error = %e, destination = %dest.dst, "the boundary sidecar is not reachable; connection refused");
            }
            return;
        }
    };
    boundary_proxy::tune_unix(&upstream);
    if upstream.write_all(&dest.header()).await.is_err() {
        return;
    }
    // Both ends are plain sockets: bulk is spliced, not copied through the forwarder.
    let _ = boundary_proxy::socket_relay::relay(&stream, &upstream).await;
}

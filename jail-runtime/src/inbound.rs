//! Inbound ports (`boundary run --inbound-port`): servers the jailed process runs on the jail's
//! `127.0.0.1:P` are reachable from outside as in an unjailed pod. The supervisor listens on
//! `0.0.0.0:P` (and `[::]:P` where IPv6 works) in its own network namespace (the pod's) and
//! relays each connection through a socket the jail's init created inside the jail's namespace
//! (see [`boundary_jail::JailSockets`]). Ports not listed stay unreachable. Every connection is
//! audited (`kind: inbound`): into the local audit trail standalone, over the session to the
//! sidecar in a pod.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_api::Tier;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
    sockopt,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::session::Session;
use boundary_jail::{DNS_PORT, FORWARDER_PORT, JailSockets};
use boundary_proxy::Proxy;
use boundary_proxy::session::InboundEvent;

/// Where inbound events are recorded.
#[derive(Debug, Clone)]
pub enum Recorder {
    /// The in-process proxy's audit trail (standalone).
    Local(Proxy),
    /// The sidecar's, over the session.
    Sidecar(Session),
}

/// Parses `--inbound-port` values: ports 1–65535 but the jail's own, each once.
pub fn parse_ports(items: &[String]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for item in items.iter().flat_map(|i| i.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let port: u16 =
            item.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("--inbound-port {item:?}: expected a port number 1-65535")
            })?;
        if [FORWARDER_PORT, DNS_PORT].contains(&port) {
            return Err(format!(
                "--inbound-port {port}: the jail's own forwarder and DNS use ports {FORWARDER_PORT} and {DNS_PORT} inside it"
            ));
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Binds every port on all IPv4 addresses, and on all IPv6 addresses where IPv6 works.
pub fn bind_all(ports: &[u16]) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    for &port in ports {
        let v4 = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .map_err(|e| {
                let fix = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need CAP_NET_BIND_SERVICE, or a lower sysctl \
                         net.ipv4.ip_unprivileged_port_start; or use a port above 1023)"
                    }
                    std::io::ErrorKind::AddrInUse => {
                        " (something else in this network namespace, e.g. another container of \
                         the pod, listens on it)"
                    }
                    _ => "",
                };
                std::io::Error::new(
                    e.kind(),
                    format!("listening on inbound port 0.0.0.0:{port}: {e}{fix}"),
                )
            })?;
        out.push(v4);
        match bind_v6_only(port) {
            Ok(l) => out.push(l),
            Err(e) => tracing::debug!(port, error = %e, "no IPv6 listener for the inbound port"),
        }
    }
    Ok(out)
}

/// `[::]:port` for IPv6 only (the IPv4 listener has the rest).
fn bind_v6_only(port: u16) -> nix::Result<std::net::TcpListener> {
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn6::from(std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    ));
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

/// Serves every listener until the runtime stops.
pub fn serve(
    listeners: Vec<std::net::TcpListener>,
    sockets: Arc<JailSockets>,
    recorder: Recorder,
    container: Option<String>,
    tier: Tier,
) -> std::io::Result<()> {
    let relay = Arc::new(Relay {
        sockets,
        recorder,
        container,
        tier,
    });
    for l in listeners {
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let listener = TcpListener::from_std(l)?;
        let relay = relay.clone();
        tokio::spawn(async move { relay.accept_loop(listener, port).await });
    }
    Ok(())
}

struct Relay {
    sockets: Arc<JailSockets>,
    recorder: Recorder,
    container: Option<String>,
    tier: Tier,
}

impl Relay {
    async fn accept_loop(self: Arc<Self>, listener: TcpListener, port: u16) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    tokio::spawn(async move { this.relay(stream, peer, port).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, port, "accepting an inbound connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn relay(&self, client: TcpStream, peer: SocketAddr, port: u16) {
        let started = Instant::now();
        let _ = client.set_nodelay(true);
        let mut event = InboundEvent {
            peer,
            port,
            refused: false,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
        };
        match self.connect_inside(port).await {
            Ok(inside) => {
                let _ = inside.set_nodelay(true);
                if let Ok((up, down)) = boundary_proxy::socket_relay::relay(&client, &inside).await
                {
                    event.bytes_in = up.bytes;
                    event.bytes_out = down.bytes;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, port, "nothing accepts the inbound connection in the jail");
                event.refused = true;
            }
        }
        event.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &self.recorder {
            Recorder::Local(proxy) => {
                proxy.record_inbound(self.container.clone(), Some(self.tier), event);
            }
            Recorder::Sidecar(session) => session.inbound(event),
        }
    }

    /// Connects to the jail's `127.0.0.1:port` with a socket of the jail's namespace.
    async fn connect_inside(&self, port: u16) -> std::io::Result<TcpStream> {
        let sockets = self.sockets.clone();
        let fd = tokio::task::spawn_blocking(move || sockets.tcp4())
            .await
            .map_err(std::io::Error::other)??;
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        let socket = TcpSocket::from_std_stream(std);
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_parsed_once_each_and_bad_ones_named() {
        assert_eq!(
            parse_ports(&["8080, 9090".into(), "8080".into(), String::new()]),
            Ok(vec![8080, 9090])
        );
        for bad in ["0", "65536", "http", "80-90", "53", "2"] {
            let e = parse_ports(&[bad.into()]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}

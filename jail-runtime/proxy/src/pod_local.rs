//! Connections to the pod's own loopback: sidecars of the same pod (database proxies,
//! Docker-in-Docker, MCP servers). The jail redirects only the pod-local ports it was given
//! (`BOUNDARY_POD_LOCAL_PORTS`); whatever arrives with a loopback destination is decided by
//! `podLocal` rules alone ([`crate::decide::pod_local`]), never by host rules, then relayed as raw
//! TCP to the same loopback address and port in the proxy's network namespace (the pod's;
//! standalone, the host's) and audited as `pod-local`. Deny rules do not apply: they name hosts, and the pod's
//! loopback has none (a `ClusterBoundaryPolicy` cannot add `podLocal` rules either).

use std::net::IpAddr;

/// Scheme of pod-local records in the audit trail.
pub const SCHEME: &str = "pod-local";

/// Whether `ip` reaches the local host itself: loopback, the unspecified address (connecting to
/// `0.0.0.0` reaches local listeners too) and their IPv4-mapped IPv6 forms.
pub fn is_local_address(ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    ip.is_loopback() || ip.is_unspecified()
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `127.0.0.0/8`, `::1` or `::ffff:127.x.y.z`.
pub fn is_loopback(ip: IpAddr) -> bool {
    unmapped(ip).is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_loopback_addresses() {
        for (ip, local, loopback) in [
            ("127.0.0.1", true, true),
            ("127.3.2.1", true, true),
            ("::1", true, true),
            ("0.0.0.0", true, false),
            ("::", true, false),
            ("::ffff:127.9.9.9", true, true),
            ("::ffff:0.0.0.0", true, false),
            ("10.1.2.3", false, false),
            ("::ffff:10.1.2.3", false, false),
            ("2001:db8::1", false, false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(is_local_address(ip), local, "{ip}");
            assert_eq!(is_loopback(ip), loopback, "{ip}");
        }
    }
}

//! Connections to the pod's own loopback: sidecars of the same pod (database proxies,
//! Docker-in-Docker, MCP servers). The jail redirects only the pod-local ports it was given
//! (`BOUNDARY_POD_LOCAL_PORTS`); whatever arrives here with a loopback destination is decided by
//! `podLocal` rules alone ([`decide`], pure), never by host rules, then relayed as raw TCP to the
//! same loopback address and port in the proxy's network namespace (the pod's; standalone, the
//! host's) and audited as `pod-local`. Deny rules do not apply: they name hosts, and the pod's
//! loopback has none (a `ClusterBoundaryPolicy` cannot add `podLocal` rules either).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boundary_api::Mode;
use boundary_api::rules::{Host, RuleSet, reserved_port_use};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::audit::Decision;
use super::io::{self, BoxIo};
use super::metrics::{Kind, UpstreamError};
use super::{ConnCtx, Destination, Proxy};

/// Scheme of pod-local records in the audit trail.
pub const SCHEME: &str = "pod-local";

/// A loopback connect is answered at once; this only bounds a wedged listener's backlog.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Whether a connection from the jail goes to the pod's loopback: a loopback destination with no
/// DNS name (the jail's redirect of a pod-local port, or a CONNECT to a loopback address).
pub fn is_pod_local(dest: &Destination) -> bool {
    dest.name.is_none() && is_loopback(dest.dst.ip())
}

/// `127.0.0.0/8`, `::1` or `::ffff:127.x.y.z`.
pub fn is_loopback(ip: IpAddr) -> bool {
    unmapped(ip).is_loopback()
}

/// What happens to a connection to a port of the pod's loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLocalDecision {
    /// Relayed; the rule that allows it.
    Allow(String),
    /// Relayed because the mode is Audit, recorded as would-be denied, with the reason.
    WouldDeny(String),
    /// Closed and recorded as denied, with the reason (which names the rule that would allow it).
    Deny(String),
}

/// The decision for `port` of the pod's loopback under `rules`. Ports the jail and the sidecar
/// use themselves are denied even in Audit mode: no rule can ever allow them.
pub fn decide(rules: &RuleSet, port: u16) -> PodLocalDecision {
    if let Some(what) = reserved_port_use(port) {
        return PodLocalDecision::Deny(format!(
            "port {port} on the pod's loopback is {what}; it cannot be pod-local"
        ));
    }
    if let Some(rule) = rules.check_pod_local(port) {
        return PodLocalDecision::Allow(rule.origin.to_string());
    }
    let reason = format!(
        "no podLocal rule allows port {port} on the pod's loopback; to allow it add \
         spec.podLocal: [{{ports: [{port}]}}] to the BoundaryPolicy (boundary run: \
         --allow-pod-local {port})"
    );
    match rules.mode() {
        Mode::Audit => PodLocalDecision::WouldDeny(reason),
        Mode::Enforce => PodLocalDecision::Deny(reason),
    }
}

impl Proxy {
    /// Decides, relays and audits a connection to `dst`, a port of the pod's loopback.
    pub(super) async fn serve_pod_local(
        &self,
        mut client: BoxIo,
        ctx: &ConnCtx,
        dst: SocketAddr,
        rules: &RuleSet,
    ) {
        let host = Host::Ip(dst.ip());
        let mut rec = self.record(ctx, SCHEME, &host, dst.port(), rules.mode());
        let decision = decide(rules, dst.port());
        let (audit_decision, rule, reason) = match decision {
            PodLocalDecision::Allow(rule) => (Decision::Allow, Some(rule), None),
            PodLocalDecision::WouldDeny(reason) => (Decision::WouldDeny, None, Some(reason)),
            PodLocalDecision::Deny(reason) => (Decision::Deny, None, Some(reason)),
        };
        self.inner.metrics.decision(Kind::PodLocal, audit_decision);
        rec.decision = audit_decision;
        rec.rule = rule;
        rec.reason = reason;
        if audit_decision == Decision::Deny {
            let _ = client.shutdown().await;
            self.inner.audit.record(&rec);
            return;
        }
        let started = Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                let (up, down) = io::relay(client, Vec::new(), upstream).await;
                rec.bytes_in = up;
                rec.bytes_out = down;
                self.inner.metrics.bytes(up, down);
            }
            Ok(Err(e)) => {
                self.inner.metrics.upstream_error(UpstreamError::Connect);
                rec.reason = Some(format!(
                    "connecting to {dst} in the pod: {e} (is the pod's server listening there?)"
                ));
            }
            Err(_) => {
                self.inner.metrics.upstream_error(UpstreamError::Connect);
                rec.reason = Some(format!("connecting to {dst} in the pod timed out"));
            }
        }
        rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.audit.record(&rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::PodLocalRule;
    use boundary_api::rules::{self, RuleSource};

    fn rules(ports: &[u16], allow: &[&str], mode: Mode) -> RuleSet {
        let pod_local: Vec<PodLocalRule> = if ports.is_empty() {
            Vec::new()
        } else {
            vec![PodLocalRule {
                ports: ports
                    .iter()
                    .map(|p| boundary_api::Port::new(*p).unwrap())
                    .collect(),
                description: Some("db".into()),
            }]
        };
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        let compiled = rules::compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            allow: &allow,
            pod_local: &pod_local,
            ..RuleSource::default()
        })
        .unwrap();
        RuleSet::new(compiled, mode)
    }

    #[test]
    fn decisions_by_port_mode_and_reserved_ports() {
        let enforce = rules(&[5432, 2375], &["domain=127.0.0.0/8"], Mode::Enforce);
        let audit = rules(&[5432], &[], Mode::Audit);
        let none = rules(
            &[],
            &["domain=localhost", "domain=127.0.0.1"],
            Mode::Enforce,
        );
        let allow =
            || PodLocalDecision::Allow("p spec.podLocal[0]: podLocal ports=5432,2375 (db)".into());
        // (rules, port, expected kind, text the reason or rule must contain)
        let table: Vec<(&RuleSet, u16, &str, &str)> = vec![
            (&enforce, 5432, "allow", "spec.podLocal[0]"),
            (&enforce, 2375, "allow", "ports=5432,2375"),
            (&enforce, 2376, "deny", "spec.podLocal: [{ports: [2376]}]"),
            (&enforce, 2376, "deny", "--allow-pod-local 2376"),
            (&none, 5432, "deny", "no podLocal rule allows port 5432"),
            (&audit, 5432, "allow", "spec.podLocal[0]"),
            (
                &audit,
                6379,
                "would-deny",
                "spec.podLocal: [{ports: [6379]}]",
            ),
            (&audit, 53, "deny", "DNS"),
            (&enforce, 2, "deny", "forwarder"),
            (&audit, 15080, "deny", "explicit proxy"),
            (&enforce, 15090, "deny", "metrics"),
        ];
        for (set, port, kind, text) in table {
            let (got, detail) = match decide(set, port) {
                PodLocalDecision::Allow(r) => ("allow", r),
                PodLocalDecision::WouldDeny(r) => ("would-deny", r),
                PodLocalDecision::Deny(r) => ("deny", r),
            };
            assert_eq!(got, kind, "port {port}: {detail}");
            assert!(
                detail.contains(text),
                "port {port}: {detail:?} lacks {text:?}"
            );
        }
        assert_eq!(decide(&enforce, 5432), allow());
    }

    #[test]
    fn only_loopback_destinations_without_a_name_are_pod_local() {
        let dest = |dst: &str, name: Option<&str>| Destination {
            dst: dst.parse().unwrap(),
            name: name.map(str::to_owned),
            container: None,
            tier: None,
        };
        let table = [
            ("127.0.0.1:5432", None, true),
            ("127.3.2.1:5432", None, true),
            ("[::1]:5432", None, true),
            ("[::ffff:127.0.0.1]:5432", None, true),
            ("0.0.0.0:5432", None, false),
            ("[::]:5432", None, false),
            ("10.0.0.1:5432", None, false),
            ("198.18.0.7:443", Some("github.com"), false),
            ("127.0.0.1:443", Some("github.com"), false),
        ];
        for (dst, name, expected) in table {
            assert_eq!(is_pod_local(&dest(dst, name)), expected, "{dst} {name:?}");
        }
        for (ip, local) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("0.0.0.0", true),
            ("::", true),
            ("::ffff:127.9.9.9", true),
            ("::ffff:0.0.0.0", true),
            ("10.1.2.3", false),
            ("::ffff:10.1.2.3", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_local_address(ip.parse().unwrap()), local, "{ip}");
        }
    }
}

//! Prometheus metrics of the proxy, exposed as text on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use super::audit::Decision;

/// Kinds of traffic a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP request.
    Http,
    /// A plain TCP connection.
    Tcp,
    /// A TLS connection (passthrough, or denied before the handshake).
    Tls,
    /// A TCP connection to the pod's own loopback.
    PodLocal,
}

const KINDS: [(Kind, &str); 4] = [
    (Kind::Http, "http"),
    (Kind::Tcp, "tcp"),
    (Kind::Tls, "tls"),
    (Kind::PodLocal, "pod-local"),
];
const DECISIONS: [(Decision, &str); 3] = [
    (Decision::Allow, "allow"),
    (Decision::Deny, "deny"),
    (Decision::WouldDeny, "would-deny"),
];

/// Upstream failure kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Name resolution failed.
    Resolve,
    /// TCP connect failed or timed out.
    Connect,
    /// The upstream's TLS certificate or handshake failed.
    Tls,
    /// The upstream broke the exchange.
    Protocol,
}

const UPSTREAM: [(UpstreamError, &str); 4] = [
    (UpstreamError::Resolve, "resolve"),
    (UpstreamError::Connect, "connect"),
    (UpstreamError::Tls, "tls"),
    (UpstreamError::Protocol, "protocol"),
];

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: [[AtomicU64; 3]; 4],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    active: AtomicI64,
    upstream_errors: [AtomicU64; 4],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    dns_queries: AtomicU64,
    policy_file_missing: AtomicBool,
}

fn index<T: PartialEq + Copy, const N: usize>(table: &[(T, &str); N], value: T) -> usize {
    table.iter().position(|(v, _)| *v == value).unwrap_or(0)
}

impl Metrics {
    /// Counts a decision.
    pub fn decision(&self, kind: Kind, decision: Decision) {
        self.decisions[index(&KINDS, kind)][index(&DECISIONS, decision)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts relayed bytes.
    pub fn bytes(&self, from_client: u64, to_client: u64) {
        self.bytes_in.fetch_add(from_client, Ordering::Relaxed);
        self.bytes_out.fetch_add(to_client, Ordering::Relaxed);
    }

    /// A connection opened (+1) or closed (-1).
    pub fn active(&self, delta: i64) {
        self.active.fetch_add(delta, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn active_connections(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[index(&UPSTREAM, kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a policy reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the policy file is missing now (the last policy loaded stays in force).
    pub fn policy_file_missing(&self, missing: bool) {
        self.policy_file_missing.store(missing, Ordering::Relaxed);
    }

    /// Counts a DNS query answered in the jail.
    pub fn dns_query(&self) {
        self.dns_queries.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `audit_dropped` comes from the audit queue.
    pub fn render(&self, audit_dropped: u64) -> String {
        let mut out = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP agent_boundary_decisions_total Policy decisions by traffic kind and result.\n# TYPE agent_boundary_decisions_total counter\n");
        for (k, (_, kind)) in KINDS.iter().enumerate() {
            for (d, (_, decision)) in DECISIONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "agent_boundary_decisions_total{{kind=\"{kind}\",decision=\"{decision}\"}} {}",
                    load(&self.decisions[k][d])
                );
            }
        }
        out.push_str("# HELP agent_boundary_bytes_total Bytes relayed, by direction.\n# TYPE agent_boundary_bytes_total counter\n");
        let _ = writeln!(
            out,
            "agent_boundary_bytes_total{{direction=\"from_client\"}} {}",
            load(&self.bytes_in)
        );
        let _ = writeln!(
            out,
            "agent_boundary_bytes_total{{direction=\"to_client\"}} {}",
            load(&self.bytes_out)
        );
        out.push_str("# HELP agent_boundary_active_connections Client connections open now.\n# TYPE agent_boundary_active_connections gauge\n");
        let _ = writeln!(
            out,
            "agent_boundary_active_connections {}",
            self.active.load(Ordering::Relaxed)
        );
        out.push_str("# HELP agent_boundary_upstream_errors_total Upstream failures by kind.\n# TYPE agent_boundary_upstream_errors_total counter\n");
        for (i, (_, kind)) in UPSTREAM.iter().enumerate() {
            let _ = writeln!(
                out,
                "agent_boundary_upstream_errors_total{{kind=\"{kind}\"}} {}",
                load(&self.upstream_errors[i])
            );
        }
        out.push_str("# HELP agent_boundary_policy_reloads_total Policy reloads by result.\n# TYPE agent_boundary_policy_reloads_total counter\n");
        let _ = writeln!(
            out,
            "agent_boundary_policy_reloads_total{{result=\"ok\"}} {}",
            load(&self.reloads_ok)
        );
        let _ = writeln!(
            out,
            "agent_boundary_policy_reloads_total{{result=\"error\"}} {}",
            load(&self.reloads_failed)
        );
        out.push_str("# HELP agent_boundary_policy_file_missing 1 while the policy file is gone (its ConfigMap deleted) and the last policy loaded stays in force.\n# TYPE agent_boundary_policy_file_missing gauge\n");
        let _ = writeln!(
            out,
            "agent_boundary_policy_file_missing {}",
            u8::from(self.policy_file_missing.load(Ordering::Relaxed))
        );
        out.push_str("# HELP agent_boundary_dns_queries_total DNS queries answered inside jails.\n# TYPE agent_boundary_dns_queries_total counter\n");
        let _ = writeln!(
            out,
            "agent_boundary_dns_queries_total {}",
            load(&self.dns_queries)
        );
        out.push_str("# HELP agent_boundary_audit_dropped_total Audit records dropped because the queue was full.\n# TYPE agent_boundary_audit_dropped_total counter\n");
        let _ = writeln!(out, "agent_boundary_audit_dropped_total {audit_dropped}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.decision(Kind::Http, Decision::Deny);
        m.decision(Kind::Http, Decision::Deny);
        m.decision(Kind::Tcp, Decision::Allow);
        m.decision(Kind::PodLocal, Decision::WouldDeny);
        m.upstream_error(UpstreamError::Tls);
        m.reload(false);
        m.policy_file_missing(true);
        m.active(3);
        m.active(-1);
        let text = m.render(7);
        assert!(text.contains("agent_boundary_decisions_total{kind=\"http\",decision=\"deny\"} 2"));
        assert!(text.contains("agent_boundary_decisions_total{kind=\"tcp\",decision=\"allow\"} 1"));
        assert!(text.contains(
            "agent_boundary_decisions_total{kind=\"pod-local\",decision=\"would-deny\"} 1"
        ));
        assert!(text.contains("agent_boundary_upstream_errors_total{kind=\"tls\"} 1"));
        assert!(text.contains("agent_boundary_policy_reloads_total{result=\"error\"} 1"));
        assert!(text.contains("agent_boundary_active_connections 2"));
        assert!(text.contains("agent_boundary_audit_dropped_total 7"));
        assert!(text.contains("agent_boundary_policy_file_missing 1"));
        m.policy_file_missing(false);
        assert!(m.render(0).contains("agent_boundary_policy_file_missing 0"));
    }
}

//! Prometheus metrics of the proxy, served on `/metrics` (see [`crate::admin`]) in Prometheus
//! text format 0.0.4 by `prometheus-client`, as the webhook and operator serve theirs. Every
//! series exists from the start (at 0), and the proxy updates them through handles kept here,
//! without a lookup per event.

use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::audit::Decision;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Kinds of traffic a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Kind {
    const ALL: [Kind; 4] = [Kind::Http, Kind::Tcp, Kind::Tls, Kind::PodLocal];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::PodLocal => "pod-local",
        }
    }
}

const DECISIONS: [Decision; 3] = [Decision::Allow, Decision::Deny, Decision::WouldDeny];

fn decision_str(decision: Decision) -> &'static str {
    match decision {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::WouldDeny => "would-deny",
    }
}

/// Upstream failure kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamError {
    /// Name resolution failed.
    Resolve,
    /// TCP connect failed or timed out.
    Connect,
    /// The upstream's TLS certificate or handshake failed.
    Tls,
    /// The upstream broke the exchange.
    Protocol,
    /// The private-address guard refused every address of the destination.
    Guard,
}

impl UpstreamError {
    const ALL: [UpstreamError; 5] = [
        UpstreamError::Resolve,
        UpstreamError::Connect,
        UpstreamError::Tls,
        UpstreamError::Protocol,
        UpstreamError::Guard,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Resolve => "resolve",
            UpstreamError::Connect => "connect",
            UpstreamError::Tls => "tls",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Guard => "guard",
        }
    }
}

/// Which way relayed bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    FromClient,
    ToClient,
}

/// How a policy reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReloadResult {
    Ok,
    Error,
}

macro_rules! label_value {
    ($($ty:ty => $str:expr),* $(,)?) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                let text: fn(&$ty) -> &'static str = $str;
                encoder.write_str(text(self))
            }
        }
    )*};
}

label_value! {
    Kind => |k| k.as_str(),
    Decision => |d| decision_str(*d),
    UpstreamError => |e| e.as_str(),
    Direction => |d| match d {
        Direction::FromClient => "from_client",
        Direction::ToClient => "to_client",
    },
    ReloadResult => |r| match r {
        ReloadResult::Ok => "ok",
        ReloadResult::Error => "error",
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    kind: Kind,
    decision: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    kind: UpstreamError,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CredentialLabels {
    credential: String,
}

/// `where` is a keyword: the label set is a plain pair.
type LeakLabels = [(&'static str, &'static str); 1];

/// Where leak attempts are found (the label values of `credential_leaks`).
const LEAK_PLACES: [&str; 4] = ["header", "query", "path", "body"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// All metrics, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    decisions: [[Counter; 3]; 4],
    bytes_in: Counter,
    bytes_out: Counter,
    active: Gauge,
    upstream_errors: [Counter; 5],
    reloads_ok: Counter,
    reloads_failed: Counter,
    dns_queries: Counter,
    policy_file_missing: Gauge,
    audit_dropped: Counter,
    credential_injections: Family<CredentialLabels, Counter>,
    credential_leaks: [Counter; 4],
    /// Renders one at a time: each brings `audit_dropped` up to the audit queue's count.
    rendering: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        let bytes = Family::<DirectionLabels, Counter>::default();
        let upstream = Family::<UpstreamLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let leaks = Family::<LeakLabels, Counter>::default();
        let mut metrics = Metrics {
            decisions: Kind::ALL.map(|kind| {
                DECISIONS.map(|decision| series(&decisions, &DecisionLabels { kind, decision }))
            }),
            bytes_in: series(
                &bytes,
                &DirectionLabels {
                    direction: Direction::FromClient,
                },
            ),
            bytes_out: series(
                &bytes,
                &DirectionLabels {
                    direction: Direction::ToClient,
                },
            ),
            active: Gauge::default(),
            upstream_errors: UpstreamError::ALL
                .map(|kind| series(&upstream, &UpstreamLabels { kind })),
            reloads_ok: series(
                &reloads,
                &ReloadLabels {
                    result: ReloadResult::Ok,
                },
            ),
            reloads_failed: series(
                &reloads,
                &ReloadLabels {
                    result: ReloadResult::Error,
                },
            ),
            dns_queries: Counter::default(),
            policy_file_missing: Gauge::default(),
            audit_dropped: Counter::default(),
            credential_injections: Family::default(),
            credential_leaks: LEAK_PLACES.map(|place| series(&leaks, &[("where", place)])),
            registry: Registry::default(),
            rendering: Mutex::new(()),
        };
        // Counters are registered without `_total`: the encoder adds it.
        metrics.registry.register(
            "agent_boundary_decisions",
            "Policy decisions by traffic kind and result",
            decisions,
        );
        metrics
            .registry
            .register("agent_boundary_bytes", "Bytes relayed, by direction", bytes);
        metrics.registry.register(
            "agent_boundary_active_connections",
            "Client connections open now",
            metrics.active.clone(),
        );
        metrics.registry.register(
            "agent_boundary_upstream_errors",
            "Upstream failures by kind",
            upstream,
        );
        metrics.registry.register(
            "agent_boundary_policy_reloads",
            "Policy reloads by result",
            reloads,
        );
        metrics.registry.register(
            "agent_boundary_policy_file_missing",
            "1 while the policy file is gone (its ConfigMap deleted) and the last policy loaded \
             stays in force",
            metrics.policy_file_missing.clone(),
        );
        metrics.registry.register(
            "agent_boundary_dns_queries",
            "DNS queries answered inside jails",
            metrics.dns_queries.clone(),
        );
        metrics.registry.register(
            "agent_boundary_audit_dropped",
            "Audit records dropped because the queue was full",
            metrics.audit_dropped.clone(),
        );
        metrics.registry.register(
            "agent_boundary_credential_injections",
            "Requests a credential was put into, by credential",
            metrics.credential_injections.clone(),
        );
        metrics.registry.register(
            "agent_boundary_credential_leaks",
            "Credential leak attempts refused, by where the placeholder or value was",
            leaks,
        );
        metrics
    }
}

/// A handle on the series of `family` for `labels`. A function of its own so that the family's
/// lock guard is dropped before the next series is made (making one takes the write lock).
fn series<S, M>(family: &Family<S, M>, labels: &S) -> M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
{
    family.get_or_create(labels).clone()
}

fn index<T: PartialEq + Copy, const N: usize>(all: &[T; N], value: T) -> usize {
    all.iter().position(|v| *v == value).unwrap_or(0)
}

impl Metrics {
    /// Counts a decision.
    pub fn decision(&self, kind: Kind, decision: Decision) {
        self.decisions[index(&Kind::ALL, kind)][index(&DECISIONS, decision)].inc();
    }

    /// Counts relayed bytes.
    pub fn bytes(&self, from_client: u64, to_client: u64) {
        self.bytes_in.inc_by(from_client);
        self.bytes_out.inc_by(to_client);
    }

    /// A connection opened (+1) or closed (-1).
    pub fn active(&self, delta: i64) {
        self.active.inc_by(delta);
    }

    /// Connections open now.
    pub fn active_connections(&self) -> i64 {
        self.active.get()
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[index(&UpstreamError::ALL, kind)].inc();
    }

    /// Counts a policy reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .inc();
    }

    /// Whether the policy file is missing now (the last policy loaded stays in force).
    pub fn policy_file_missing(&self, missing: bool) {
        self.policy_file_missing.set(i64::from(missing));
    }

    /// Counts a request `credential` was put into.
    pub fn credential_injected(&self, credential: &str) {
        self.credential_injections
            .get_or_create(&CredentialLabels {
                credential: credential.to_owned(),
            })
            .inc();
    }

    /// Counts a leak attempt found in `place` (`header`, `query`, `path`, `body`).
    pub fn credential_leak(&self, place: &str) {
        let i = LEAK_PLACES.iter().position(|p| *p == place).unwrap_or(3);
        self.credential_leaks[i].inc();
    }

    /// Counts a DNS query answered in the jail.
    pub fn dns_query(&self) {
        self.dns_queries.inc();
    }

    /// The exposition text ([`CONTENT_TYPE`]); `audit_dropped` comes from the audit queue.
    pub fn render(&self, audit_dropped: u64) -> String {
        let _one_at_a_time = self
            .rendering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counted = self.audit_dropped.get();
        if audit_dropped > counted {
            self.audit_dropped.inc_by(audit_dropped - counted);
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
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
        let text = m.render(0);
        assert!(
            text.contains("agent_boundary_credential_leaks_total{where=\"body\"} 0"),
            "leak series exist from the start: {text}"
        );
        m.credential_leak("header");
        m.credential_injected("github");
        let text = m.render(0);
        assert!(text.contains("agent_boundary_credential_leaks_total{where=\"header\"} 1"));
        assert!(
            text.contains("agent_boundary_credential_injections_total{credential=\"github\"} 1")
        );
    }
}

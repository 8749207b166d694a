//! Prometheus metrics of the operator and its `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! Plain atomics rendered as Prometheus text (as in the webhook): a handful of series does not
//! justify a registry.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The controllers whose reconciles are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// Namespaces of BoundaryPolicy objects.
    Policy,
    /// Node labels.
    Nodes,
    /// The status of `ClusterBoundaryPolicy` objects.
    ClusterPolicy,
}

const CONTROLLERS: [(Controller, &str); 3] = [
    (Controller::Policy, "policy"),
    (Controller::Nodes, "nodes"),
    (Controller::ClusterPolicy, "clusterpolicy"),
];

#[derive(Debug, Default)]
struct PerController {
    ok: AtomicU64,
    error: AtomicU64,
    micros_sum: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    controllers: [PerController; 3],
    leader: AtomicBool,
    leader_transitions: AtomicU64,
    ca_issued: AtomicU64,
    serving_issued: AtomicU64,
    certificate_errors: AtomicU64,
    serving_not_after: AtomicI64,
    ca_not_after: AtomicI64,
    sidecar_checks_ok: AtomicU64,
    sidecar_checks_unreachable: AtomicU64,
    /// Per namespace: running jailed pods proven to enforce, and not proven.
    enforcement: std::sync::Mutex<std::collections::BTreeMap<String, (i64, i64)>>,
}

/// The operator's counters; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    fn controller(&self, c: Controller) -> &PerController {
        &self.0.controllers[CONTROLLERS.iter().position(|(k, _)| *k == c).unwrap_or(0)]
    }

    /// A reconcile of `controller` ended after `took`.
    pub fn reconciled(&self, controller: Controller, ok: bool, took: Duration) {
        let c = self.controller(controller);
        if ok { &c.ok } else { &c.error }.fetch_add(1, Ordering::Relaxed);
        c.micros_sum.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// This replica became (or stopped being) the leader.
    pub fn set_leader(&self, leading: bool) {
        if self.0.leader.swap(leading, Ordering::Relaxed) != leading {
            self.0.leader_transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether this replica leads (or runs without leader election).
    pub fn is_leader(&self) -> bool {
        self.0.leader.load(Ordering::Relaxed)
    }

    /// A certificate (`ca` or `serving`) was made.
    pub fn certificate_issued(&self, which: &str) {
        if which == "ca" {
            &self.0.ca_issued
        } else {
            &self.0.serving_issued
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A certificate pass failed.
    pub fn certificate_error(&self) {
        self.0.certificate_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Expiry (unix seconds) of the certificates in use.
    pub fn set_certificate_expiry(&self, serving: i64, ca: i64) {
        self.0.serving_not_after.store(serving, Ordering::Relaxed);
        self.0.ca_not_after.store(ca, Ordering::Relaxed);
    }

    /// A round of enforcement checks asked `ok` sidecars successfully and could not read
    /// `unreachable` ones.
    pub fn sidecars_checked(&self, ok: usize, unreachable: usize) {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        self.0.sidecar_checks_ok.fetch_add(n(ok), Ordering::Relaxed);
        self.0
            .sidecar_checks_unreachable
            .fetch_add(n(unreachable), Ordering::Relaxed);
    }

    /// The running jailed pods of `namespace`: how many are proven to enforce, how many not.
    pub fn set_enforcement(&self, namespace: &str, enforced: i64, not_enforcing: i64) {
        let mut map = self
            .0
            .enforcement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if enforced == 0 && not_enforcing == 0 {
            map.remove(namespace);
        } else {
            map.insert(namespace.to_owned(), (enforced, not_enforcing));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let i = &self.0;
        out.push_str("# HELP boundary_operator_reconciles_total Reconciles by controller and result.\n# TYPE boundary_operator_reconciles_total counter\n");
        for (c, name) in CONTROLLERS {
            let m = self.controller(c);
            let _ = writeln!(
                out,
                "boundary_operator_reconciles_total{{controller=\"{name}\",result=\"ok\"}} {}",
                m.ok.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "boundary_operator_reconciles_total{{controller=\"{name}\",result=\"error\"}} {}",
                m.error.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP boundary_operator_reconcile_seconds_sum Time spent reconciling.\n# TYPE boundary_operator_reconcile_seconds_sum counter\n");
        for (c, name) in CONTROLLERS {
            #[allow(clippy::cast_precision_loss)] // seconds for a dashboard
            let secs = self.controller(c).micros_sum.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "boundary_operator_reconcile_seconds_sum{{controller=\"{name}\"}} {secs}"
            );
        }
        let gauges: [(&str, &str, &str, i64); 7] = [
            (
                "boundary_operator_leader",
                "gauge",
                "1 while this replica leads.",
                i64::from(i.leader.load(Ordering::Relaxed)),
            ),
            (
                "boundary_operator_leader_transitions_total",
                "counter",
                "Times this replica gained or lost leadership.",
                count(&i.leader_transitions),
            ),
            (
                "boundary_operator_ca_issued_total",
                "counter",
                "Webhook CAs made.",
                count(&i.ca_issued),
            ),
            (
                "boundary_operator_serving_certificates_issued_total",
                "counter",
                "Webhook serving certificates signed.",
                count(&i.serving_issued),
            ),
            (
                "boundary_operator_certificate_errors_total",
                "counter",
                "Failed certificate passes (retried).",
                count(&i.certificate_errors),
            ),
            (
                "boundary_operator_serving_certificate_expiry_seconds",
                "gauge",
                "Unix time the webhook's serving certificate expires (0: not managed).",
                i.serving_not_after.load(Ordering::Relaxed),
            ),
            (
                "boundary_operator_ca_expiry_seconds",
                "gauge",
                "Unix time the webhook's CA expires (0: not managed).",
                i.ca_not_after.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        self.render_enforcement(&mut out);
        out
    }

    /// The enforcement checks' series.
    fn render_enforcement(&self, out: &mut String) {
        let i = &self.0;
        out.push_str("# HELP boundary_operator_sidecar_checks_total Sidecar status requests by result.\n# TYPE boundary_operator_sidecar_checks_total counter\n");
        for (result, counter) in [
            ("ok", &i.sidecar_checks_ok),
            ("unreachable", &i.sidecar_checks_unreachable),
        ] {
            let _ = writeln!(
                out,
                "boundary_operator_sidecar_checks_total{{result=\"{result}\"}} {}",
                count(counter)
            );
        }
        let (enforced, not_enforcing) = i
            .enforcement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        let gauges: [(&str, &str, &str, i64); 2] = [
            (
                "boundary_operator_pods_enforced",
                "gauge",
                "Running jailed pods whose sidecar proves enforcement of the current policy.",
                enforced,
            ),
            (
                "boundary_operator_pods_not_enforcing",
                "gauge",
                "Running jailed pods not proven to enforce (see the policies' notEnforcing).",
                not_enforcing,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

fn count(c: &AtomicU64) -> i64 {
    i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (`ready` is set once the
/// controllers, or the leader election that guards them, are running) until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<SocketAddr> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.wait())
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.reconciled(Controller::Policy, true, Duration::from_millis(3));
        m.reconciled(Controller::Nodes, false, Duration::from_millis(1));
        m.reconciled(Controller::ClusterPolicy, true, Duration::from_millis(1));
        m.set_leader(true);
        m.set_leader(true);
        m.certificate_issued("ca");
        m.set_certificate_expiry(2_000_000_000, 2_100_000_000);
        m.sidecars_checked(3, 1);
        m.set_enforcement("a", 2, 1);
        m.set_enforcement("b", 1, 0);
        m.set_enforcement("gone", 5, 5);
        m.set_enforcement("gone", 0, 0);
        let text = m.render();
        for line in [
            "boundary_operator_reconciles_total{controller=\"policy\",result=\"ok\"} 1",
            "boundary_operator_reconciles_total{controller=\"nodes\",result=\"error\"} 1",
            "boundary_operator_reconciles_total{controller=\"clusterpolicy\",result=\"ok\"} 1",
            "boundary_operator_reconcile_seconds_sum{controller=\"policy\"} 0.003",
            "boundary_operator_leader 1",
            "boundary_operator_leader_transitions_total 1",
            "boundary_operator_ca_issued_total 1",
            "boundary_operator_serving_certificate_expiry_seconds 2000000000",
            "boundary_operator_sidecar_checks_total{result=\"ok\"} 3",
            "boundary_operator_sidecar_checks_total{result=\"unreachable\"} 1",
            "boundary_operator_pods_enforced 3",
            "boundary_operator_pods_not_enforcing 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

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
}

const CONTROLLERS: [(Controller, &str); 2] =
    [(Controller::Policy, "policy"), (Controller::Nodes, "nodes")];

#[derive(Debug, Default)]
struct PerController {
    ok: AtomicU64,
    error: AtomicU64,
    micros_sum: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    controllers: [PerController; 2],
    leader: AtomicBool,
    leader_transitions: AtomicU64,
    ca_issued: AtomicU64,
    serving_issued: AtomicU64,
    certificate_errors: AtomicU64,
    serving_not_after: AtomicI64,
    ca_not_after: AtomicI64,
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
        out
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
    shutdown: crate::Shutdown,
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
        m.set_leader(true);
        m.set_leader(true);
        m.certificate_issued("ca");
        m.set_certificate_expiry(2_000_000_000, 2_100_000_000);
        let text = m.render();
        for line in [
            "boundary_operator_reconciles_total{controller=\"policy\",result=\"ok\"} 1",
            "boundary_operator_reconciles_total{controller=\"nodes\",result=\"error\"} 1",
            "boundary_operator_reconcile_seconds_sum{controller=\"policy\"} 0.003",
            "boundary_operator_leader 1",
            "boundary_operator_leader_transitions_total 1",
            "boundary_operator_ca_issued_total 1",
            "boundary_operator_serving_certificate_expiry_seconds 2000000000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

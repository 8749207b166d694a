//! Prometheus metrics of the operator and its `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! One `prometheus-client` registry (prefix `boundary_operator`) with typed label sets, encoded
//! as Prometheus text 0.0.4. A reconcile is timed by a [`ReconcileMeasurer`], which records the
//! duration when dropped, and counted by its outcome: failures carry the kind of the error
//! ([`Error::metric_label`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::{
    EncodeLabel as _, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
    prometheus_text,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::{Error, ErrorLabel};

/// Upper bounds (seconds) of the reconcile duration buckets: a reconcile is a few apiserver
/// calls, slow ones wait on a busy apiserver.
const RECONCILE_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The controllers whose reconciles are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Controller {
    /// Namespaces of BoundaryPolicy objects.
    Policy,
    /// Node labels.
    Nodes,
    /// The status of `ClusterBoundaryPolicy` objects.
    ClusterPolicy,
}

impl Controller {
    const ALL: [Controller; 3] = [
        Controller::Policy,
        Controller::Nodes,
        Controller::ClusterPolicy,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Controller::Policy => "policy",
            Controller::Nodes => "nodes",
            Controller::ClusterPolicy => "clusterpolicy",
        }
    }
}

impl EncodeLabelValue for Controller {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for ErrorLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// How a reconcile ended: `result="ok"`, or `result="error"` with `error` = the error's kind
/// (an `ok` series never has an `error` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Outcome {
    Ok,
    Failed(ErrorLabel),
}

impl EncodeLabelSet for Outcome {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => ("result", "ok").encode(encoder.encode_label()),
            Outcome::Failed(kind) => {
                ("result", "error").encode(encoder.encode_label())?;
                ("error", *kind).encode(encoder.encode_label())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReconcileLabels {
    controller: Controller,
    #[prometheus(flatten)]
    outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ControllerLabels {
    controller: Controller,
}

/// A certificate the operator makes for the webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Certificate {
    /// The CA.
    Ca,
    /// The serving certificate.
    Serving,
}

/// How a sidecar status request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SidecarCheck {
    Ok,
    Unreachable,
}

impl EncodeLabelValue for SidecarCheck {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        let value = match self {
            SidecarCheck::Ok => "ok",
            SidecarCheck::Unreachable => "unreachable",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SidecarCheckLabels {
    result: SidecarCheck,
}

/// The namespace a policy gauge counts in. Namespaces are few and chosen by cluster
/// administrators, so the series stay few; they end when the namespace has no policy left.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

/// The `BoundaryPolicy` objects of one namespace, by the state of their status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Every policy the operator wrote a status for.
    pub total: i64,
    /// Whose `Ready` condition is not `True` (not published, or not yet).
    pub not_ready: i64,
    /// Whose `RulesValid` condition is `False` (a rule does not compile).
    pub rules_invalid: i64,
}

type DurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

#[derive(Debug)]
struct Inner {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_seconds: DurationFamily,
    leader: Gauge,
    leader_transitions: Counter,
    ca_issued: Counter,
    serving_issued: Counter,
    certificate_errors: Counter,
    serving_expiry: Gauge,
    ca_expiry: Gauge,
    sidecar_checks: Family<SidecarCheckLabels, Counter>,
    pods_enforced: Gauge,
    pods_not_enforcing: Gauge,
    policies: Family<NamespaceLabels, Gauge>,
    policies_not_ready: Family<NamespaceLabels, Gauge>,
    policies_rules_invalid: Family<NamespaceLabels, Gauge>,
    /// Per namespace: running jailed pods proven to enforce, and not proven (the gauges are
    /// their sums).
    enforcement: Mutex<BTreeMap<String, (i64, i64)>>,
}

impl Default for Inner {
    fn default() -> Self {
        let inner = Inner {
            registry: Registry::with_prefix("boundary_operator"),
            reconciles: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| Histogram::new(RECONCILE_BUCKETS)),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            ca_issued: Counter::default(),
            serving_issued: Counter::default(),
            certificate_errors: Counter::default(),
            serving_expiry: Gauge::default(),
            ca_expiry: Gauge::default(),
            sidecar_checks: Family::default(),
            pods_enforced: Gauge::default(),
            pods_not_enforcing: Gauge::default(),
            policies: Family::default(),
            policies_not_ready: Family::default(),
            policies_rules_invalid: Family::default(),
            enforcement: Mutex::default(),
        };
        // Series known in advance are shown from the start, at 0.
        for controller in Controller::ALL {
            let outcome = Outcome::Ok;
            let ok = ReconcileLabels {
                controller,
                outcome,
            };
            inner.reconciles.get_or_create_owned(&ok);
            let timed = ControllerLabels { controller };
            inner.reconcile_seconds.get_or_create_owned(&timed);
        }
        for result in [SidecarCheck::Ok, SidecarCheck::Unreachable] {
            let checked = SidecarCheckLabels { result };
            inner.sidecar_checks.get_or_create_owned(&checked);
        }
        inner.register()
    }
}

impl Inner {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "reconciles",
            "Reconciles by controller and result (failures also by error kind)",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Time spent reconciling",
            self.reconcile_seconds.clone(),
        );
        r.register("leader", "1 while this replica leads", self.leader.clone());
        r.register(
            "leader_transitions",
            "Times this replica gained or lost leadership",
            self.leader_transitions.clone(),
        );
        r.register("ca_issued", "Webhook CAs made", self.ca_issued.clone());
        r.register(
            "serving_certificates_issued",
            "Webhook serving certificates signed",
            self.serving_issued.clone(),
        );
        r.register(
            "certificate_errors",
            "Failed certificate passes (retried)",
            self.certificate_errors.clone(),
        );
        r.register(
            "serving_certificate_expiry_seconds",
            "Unix time the webhook's serving certificate expires (0: not managed)",
            self.serving_expiry.clone(),
        );
        r.register(
            "ca_expiry_seconds",
            "Unix time the webhook's CA expires (0: not managed)",
            self.ca_expiry.clone(),
        );
        r.register(
            "sidecar_checks",
            "Sidecar status requests by result",
            self.sidecar_checks.clone(),
        );
        r.register(
            "pods_enforced",
            "Running jailed pods whose sidecar proves enforcement of the current policy",
            self.pods_enforced.clone(),
        );
        r.register(
            "pods_not_enforcing",
            "Running jailed pods not proven to enforce (see the policies' notEnforcing)",
            self.pods_not_enforcing.clone(),
        );
        r.register(
            "policies",
            "BoundaryPolicies by namespace",
            self.policies.clone(),
        );
        r.register(
            "policies_not_ready",
            "BoundaryPolicies whose Ready condition is not True, by namespace",
            self.policies_not_ready.clone(),
        );
        r.register(
            "policies_rules_invalid",
            "BoundaryPolicies with a rule that does not compile (RulesValid False), by namespace",
            self.policies_rules_invalid.clone(),
        );
        self
    }
}

/// The operator's metrics; cheap to clone (clones share the series).
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    /// Starts timing a reconcile of `controller`.
    pub fn measure(&self, controller: Controller) -> ReconcileMeasurer {
        ReconcileMeasurer {
            metrics: self.clone(),
            controller,
            start: Instant::now(),
        }
    }

    /// This replica became (or stopped being) the leader.
    pub fn set_leader(&self, leading: bool) {
        let leading = i64::from(leading);
        if self.0.leader.set(leading) != leading {
            self.0.leader_transitions.inc();
        }
    }

    /// Whether this replica leads (or runs without leader election).
    pub fn is_leader(&self) -> bool {
        self.0.leader.get() == 1
    }

    /// A certificate was made.
    pub fn certificate_issued(&self, which: Certificate) {
        match which {
            Certificate::Ca => &self.0.ca_issued,
            Certificate::Serving => &self.0.serving_issued,
        }
        .inc();
    }

    /// A certificate pass failed.
    pub fn certificate_error(&self) {
        self.0.certificate_errors.inc();
    }

    /// Expiry (unix seconds) of the certificates in use.
    pub fn set_certificate_expiry(&self, serving: i64, ca: i64) {
        self.0.serving_expiry.set(serving);
        self.0.ca_expiry.set(ca);
    }

    /// A round of enforcement checks asked `ok` sidecars successfully and could not read
    /// `unreachable` ones.
    pub fn sidecars_checked(&self, ok: usize, unreachable: usize) {
        for (result, n) in [
            (SidecarCheck::Ok, ok),
            (SidecarCheck::Unreachable, unreachable),
        ] {
            self.0
                .sidecar_checks
                .get_or_create(&SidecarCheckLabels { result })
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// The running jailed pods of `namespace`: how many are proven to enforce, how many not.
    pub fn set_enforcement(&self, namespace: &str, enforced: i64, not_enforcing: i64) {
        let mut map = self
            .0
            .enforcement
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if enforced == 0 && not_enforcing == 0 {
            map.remove(namespace);
        } else {
            map.insert(namespace.to_owned(), (enforced, not_enforcing));
        }
        let (enforced, not_enforcing) = map.values().fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        // Set under the lock: two namespaces reporting at once cannot leave an old sum.
        self.0.pods_enforced.set(enforced);
        self.0.pods_not_enforcing.set(not_enforcing);
    }

    /// The policies of `namespace` by state; a namespace without policies has no series.
    pub fn set_policies(&self, namespace: &str, counts: PolicyCounts) {
        let labels = NamespaceLabels {
            namespace: namespace.to_owned(),
        };
        let gauges = [
            (&self.0.policies, counts.total),
            (&self.0.policies_not_ready, counts.not_ready),
            (&self.0.policies_rules_invalid, counts.rules_invalid),
        ];
        for (family, value) in gauges {
            if counts.total == 0 {
                family.remove(&labels);
            } else {
                family.get_or_create(&labels).set(value);
            }
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the encoder only passes the writer's errors on.
        let _ = prometheus_text::encode(&mut out, &self.0.registry);
        out
    }
}

/// Times one reconcile: the duration is recorded when the measurer is dropped, however the
/// reconcile ends (also when shutdown drops it half-way).
#[derive(Debug)]
#[must_use = "the duration is recorded when the measurer is dropped"]
pub struct ReconcileMeasurer {
    metrics: Metrics,
    controller: Controller,
    start: Instant,
}

impl ReconcileMeasurer {
    /// Counts the reconcile by how it ended; a failure by the kind of its error.
    pub fn count<T>(&self, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(error) => Outcome::Failed(error.metric_label()),
        };
        let labels = ReconcileLabels {
            controller: self.controller,
            outcome,
        };
        self.metrics.0.reconciles.get_or_create(&labels).inc();
    }
}

impl Drop for ReconcileMeasurer {
    fn drop(&mut self) {
        let labels = ControllerLabels {
            controller: self.controller,
        };
        self.metrics
            .0
            .reconcile_seconds
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
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
                async move {
                    (
                        [("content-type", prometheus_text::CONTENT_TYPE)],
                        m.render(),
                    )
                }
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

    /// The value of the series `series` (name and labels as rendered), if present.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{series}: {v:?} is no number"))
            })
    }

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.measure(Controller::Policy).count(&Ok::<(), Error>(()));
        m.measure(Controller::Nodes)
            .count(&Err::<(), _>(Error::MissingField("name")));
        m.measure(Controller::ClusterPolicy)
            .count(&Ok::<(), Error>(()));
        m.set_leader(true);
        m.set_leader(true);
        m.certificate_issued(Certificate::Ca);
        m.set_certificate_expiry(2_000_000_000, 2_100_000_000);
        m.sidecars_checked(3, 1);
        m.set_enforcement("a", 2, 1);
        m.set_enforcement("b", 1, 0);
        m.set_enforcement("gone", 5, 5);
        m.set_enforcement("gone", 0, 0);
        let counts = PolicyCounts {
            total: 3,
            not_ready: 1,
            rules_invalid: 1,
        };
        m.set_policies("a", counts);
        m.set_policies("gone", counts);
        m.set_policies("gone", PolicyCounts::default());
        let text = m.render();
        assert!(
            !text.contains("\"gone\""),
            "a namespace without policies is dropped:\n{text}"
        );
        for line in [
            "boundary_operator_reconciles_total{controller=\"policy\",result=\"ok\"} 1",
            "boundary_operator_reconciles_total{controller=\"nodes\",result=\"ok\"} 0",
            "boundary_operator_reconciles_total{controller=\"nodes\",result=\"error\",error=\"missing_field\"} 1",
            "boundary_operator_reconciles_total{controller=\"clusterpolicy\",result=\"ok\"} 1",
            "boundary_operator_reconcile_seconds_count{controller=\"policy\"} 1",
            "boundary_operator_reconcile_seconds_bucket{controller=\"nodes\",le=\"+Inf\"} 1",
            "boundary_operator_leader 1",
            "boundary_operator_leader_transitions_total 1",
            "boundary_operator_ca_issued_total 1",
            "boundary_operator_serving_certificates_issued_total 0",
            "boundary_operator_certificate_errors_total 0",
            "boundary_operator_serving_certificate_expiry_seconds 2000000000",
            "boundary_operator_ca_expiry_seconds 2100000000",
            "boundary_operator_sidecar_checks_total{result=\"ok\"} 3",
            "boundary_operator_sidecar_checks_total{result=\"unreachable\"} 1",
            "boundary_operator_pods_enforced 3",
            "boundary_operator_pods_not_enforcing 1",
            "boundary_operator_policies{namespace=\"a\"} 3",
            "boundary_operator_policies_not_ready{namespace=\"a\"} 1",
            "boundary_operator_policies_rules_invalid{namespace=\"a\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for controller in ["policy", "nodes", "clusterpolicy"] {
            let series =
                format!("boundary_operator_reconcile_seconds_sum{{controller=\"{controller}\"}}");
            let seconds = value(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
            assert!(seconds >= 0.0, "{series} {seconds}");
        }
    }

    #[test]
    fn every_line_is_prometheus_text_with_the_documented_names() {
        let m = Metrics::default();
        m.measure(Controller::Policy)
            .count(&Err::<(), _>(Error::WatchStopped("Namespace")));
        let text = m.render();
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.split(' ');
                let (kind, name) = (words.next(), words.next());
                assert!(matches!(kind, Some("HELP" | "TYPE")), "{line:?}");
                if kind == Some("TYPE") {
                    families.push(name.unwrap().to_owned());
                }
                continue;
            }
            let (series, number) = line.rsplit_once(' ').unwrap();
            assert!(number.parse::<f64>().is_ok(), "{line:?}");
            let name = series.split('{').next().unwrap();
            assert!(
                families.iter().any(|f| name.starts_with(f.as_str())),
                "{line:?} outside a declared family"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{line:?}"
                );
            }
        }
        assert_eq!(
            families,
            [
                "boundary_operator_reconciles_total",
                "boundary_operator_reconcile_seconds",
                "boundary_operator_leader",
                "boundary_operator_leader_transitions_total",
                "boundary_operator_ca_issued_total",
                "boundary_operator_serving_certificates_issued_total",
                "boundary_operator_certificate_errors_total",
                "boundary_operator_serving_certificate_expiry_seconds",
                "boundary_operator_ca_expiry_seconds",
                "boundary_operator_sidecar_checks_total",
                "boundary_operator_pods_enforced",
                "boundary_operator_pods_not_enforcing",
            ]
        );
        assert!(text.lines().any(|l| l
            == "boundary_operator_reconciles_total{controller=\"policy\",result=\"error\",error=\"watch_stopped\"} 1"));
    }

    /// `GET path` over a fresh connection: the status line, the headers and the body.
    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_metrics_and_readiness_over_http() {
        let metrics = Metrics::default();
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, shutdown) = crate::shutdown::Shutdown::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            ready.clone(),
            shutdown,
        )
        .await
        .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

        metrics
            .measure(Controller::Policy)
            .count(&Ok::<(), Error>(()));
        let response = get(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(
            value(
                body,
                "boundary_operator_reconciles_total{controller=\"policy\",result=\"ok\"}"
            ),
            Some(1.0),
            "{body}"
        );
        drop(stop);
    }

    #[test]
    fn leadership_changes_are_counted_once_each() {
        let m = Metrics::default();
        assert!(!m.is_leader());
        m.set_leader(false);
        m.set_leader(true);
        m.set_leader(true);
        assert!(m.is_leader());
        m.set_leader(false);
        let text = m.render();
        assert_eq!(value(&text, "boundary_operator_leader"), Some(0.0));
        assert_eq!(
            value(&text, "boundary_operator_leader_transitions_total"),
            Some(2.0)
        );
    }
}

//! The bridge between an admission request and the planner: reads the pod, takes the current
//! view of the cluster (nodes, namespace, policies), plans, and answers. No I/O here either:
//! the view is kept up to date by watches ([`crate::cache`]), so a review never waits on the
//! apiserver.

use std::collections::BTreeMap;
use std::sync::Arc;

use boundary_api::crd::BoundaryPolicy;
use k8s_openapi::api::core::v1::Pod;

use crate::facts::NodeFacts;
use crate::inject::Settings;
use crate::plan::{self, Cluster, Input, Verdict};
use crate::review::{AdmissionRequest, AdmissionResponse, Admit};

/// Audit annotation (prefixed by the apiserver with the webhook's name): the outcome.
pub const AUDIT_DECISION: &str = "decision";
/// Audit annotation: the planner row (tier) applied.
pub const AUDIT_TIER: &str = "tier";

/// What the planner needs to know about the cluster, as of now.
pub trait ClusterView: Send + Sync + 'static {
    /// Every node, classified.
    fn nodes(&self) -> Arc<Vec<NodeFacts>>;
    /// Labels of a namespace (empty when unknown).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String>;
    /// The `BoundaryPolicy` objects of a namespace.
    fn policies(&self, namespace: &str) -> Vec<BoundaryPolicy>;
    /// The apiserver's version.
    fn cluster(&self) -> Cluster;
}

/// A fixed view (tests, benchmarks, and the `plan` command line).
#[derive(Debug, Clone)]
pub struct StaticView {
    /// Nodes.
    pub nodes: Arc<Vec<NodeFacts>>,
    /// Namespace labels by namespace.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Policies (each in its own namespace).
    pub policies: Vec<BoundaryPolicy>,
    /// Cluster version.
    pub cluster: Cluster,
}

impl ClusterView for StaticView {
    fn nodes(&self) -> Arc<Vec<NodeFacts>> {
        self.nodes.clone()
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }

    fn policies(&self, namespace: &str) -> Vec<BoundaryPolicy> {
        self.policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }

    fn cluster(&self) -> Cluster {
        self.cluster
    }
}

/// The webhook's decider.
#[derive(Debug)]
pub struct Planner<V> {
    view: V,
    settings: Settings,
}

impl<V: ClusterView> Planner<V> {
    /// A planner over `view` injecting with `settings`.
    pub fn new(view: V, settings: Settings) -> Self {
        Planner { view, settings }
    }
}

fn is_pod(request: &AdmissionRequest) -> bool {
    request.kind.group.is_empty() && request.kind.version == "v1" && request.kind.kind == "Pod"
}

impl<V: ClusterView> Admit for Planner<V> {
    fn admit(&self, request: &AdmissionRequest) -> AdmissionResponse {
        let uid = &request.uid;
        if !is_pod(request) || request.operation != "CREATE" {
            // Registered for Pod CREATE only; anything else passes untouched.
            return AdmissionResponse::allow(uid);
        }
        let Some(object) = request.object.as_ref() else {
            return AdmissionResponse::deny(
                uid,
                "agentboundary.dev: the review carries no Pod object",
            );
        };
        let mut pod = match serde_json::from_str::<Pod>(object.get()) {
            Ok(pod) => pod,
            Err(e) => {
                return AdmissionResponse::deny(
                    uid,
                    format!("agentboundary.dev: the object is not a readable Pod: {e}"),
                );
            }
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        // The namespace is filled in for planning only (it is often absent on CREATE); the
        // patch is computed against the pod as it came, so it never adds it.
        let given_namespace = pod.metadata.namespace.clone();
        if given_namespace.is_none() {
            pod.metadata.namespace = Some(namespace.clone());
        }
        let nodes = self.view.nodes();
        let labels = self.view.namespace_labels(&namespace);
        let policies = self.view.policies(&namespace);
        let decision = plan::plan(&Input {
            pod: &pod,
            namespace_labels: &labels,
            policies: &policies,
            nodes: &nodes,
            cluster: self.view.cluster(),
            settings: &self.settings,
        });
        let mut decision = decision;
        let (mut response, outcome, tier) = match &decision.verdict {
            Verdict::Jailed { row, .. } => {
                let row = row.clone();
                pod.metadata.namespace.clone_from(&given_namespace);
                decision.pod.metadata.namespace = given_namespace;
                (
                    AdmissionResponse::patched(uid, &decision.patch(&pod)),
                    "jailed",
                    Some(row),
                )
            }
            Verdict::Skipped { .. } => (AdmissionResponse::allow(uid), "skipped", None),
            Verdict::Unjailed { .. } => (AdmissionResponse::allow(uid), "unjailed", None),
            Verdict::Denied { message } => (
                AdmissionResponse::deny(uid, message.clone()),
                "denied",
                None,
            ),
        };
        response.warnings = decision.warnings;
        response
            .audit_annotations
            .insert(AUDIT_DECISION.into(), outcome.into());
        if let Some(tier) = tier {
            response.audit_annotations.insert(AUDIT_TIER.into(), tier);
        }
        response
    }
}

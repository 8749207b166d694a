//! The bridge between an admission request and the planner: reads the pod, takes the current
//! view of the cluster (nodes, namespace, policies), plans, and answers. The view is kept up to
//! date by watches ([`crate::cache`]). The one wait a review may have: when a plan needs image
//! configs (a wrapped container without `command`, or the image's `USER`), they are looked up
//! ([`crate::image`], with the pod's pull secrets) within a time budget and the pod is planned
//! again with them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy};
use k8s_openapi::api::core::v1::Pod;

use crate::classes::NodeClasses;
use crate::guard::{self, Jailing};
use crate::image::{ImageConfig, Resolver};
use crate::inject::Settings;
use crate::plan::{self, Cluster, Input, Verdict};
use crate::policy_index::{ClusterPolicies, Policies};
use crate::pull_secrets::{self, Keyring};
use crate::review::{AdmissionRequest, AdmissionResponse, Admit, Object};

/// Audit annotation (prefixed by the apiserver with the webhook's name): the outcome.
pub const AUDIT_DECISION: &str = "decision";
/// Audit annotation: the planner row (tier) applied.
pub const AUDIT_TIER: &str = "tier";

/// What the planner needs to know about the cluster, as of now.
pub trait ClusterView: Send + Sync + 'static {
    /// Every node, classified and grouped.
    fn nodes(&self) -> Arc<NodeClasses>;
    /// Labels of a namespace (empty when unknown).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String>;
    /// The `BoundaryPolicy` objects of a namespace.
    fn policies(&self, namespace: &str) -> Arc<[Arc<BoundaryPolicy>]>;
    /// The `ClusterBoundaryPolicy` objects whose `namespaceSelector` selects `namespace`,
    /// labelled `labels` (a malformed selector selects nothing; the operator reports it).
    fn cluster_policies(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Arc<[Arc<ClusterBoundaryPolicy>]>;
    /// The apiserver's version.
    fn cluster(&self) -> Cluster;
}

/// A fixed view (tests, benchmarks, and the `plan` command line).
#[derive(Debug, Clone)]
pub struct StaticView {
    /// Nodes.
    pub nodes: Arc<NodeClasses>,
    /// Namespace labels by namespace.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Policies (each in its own namespace).
    pub policies: Policies,
    /// Cluster policies.
    pub cluster_policies: ClusterPolicies,
    /// Cluster version.
    pub cluster: Cluster,
}

impl ClusterView for StaticView {
    fn nodes(&self) -> Arc<NodeClasses> {
        self.nodes.clone()
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }

    fn policies(&self, namespace: &str) -> Arc<[Arc<BoundaryPolicy>]> {
        self.policies.in_namespace(namespace)
    }

    fn cluster_policies(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Arc<[Arc<ClusterBoundaryPolicy>]> {
        self.cluster_policies.selecting(namespace, labels)
    }

    fn cluster(&self) -> Cluster {
        self.cluster
    }
}

/// Where a pod's registry credentials come from.
pub trait PullSecretSource: Send + Sync + 'static {
    /// The credentials of `pod`'s pull secrets and its ServiceAccount's, in `namespace`.
    fn keyring<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a Pod,
    ) -> Pin<Box<dyn Future<Output = Keyring> + Send + 'a>>;
}

/// The pull secrets read from the apiserver when a lookup needs them.
#[derive(Clone)]
pub struct ApiPullSecrets(pub kube::Client);

impl std::fmt::Debug for ApiPullSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiPullSecrets")
    }
}

impl PullSecretSource for ApiPullSecrets {
    fn keyring<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a Pod,
    ) -> Pin<Box<dyn Future<Output = Keyring> + Send + 'a>> {
        Box::pin(pull_secrets::read_for_pod(&self.0, namespace, pod))
    }
}

/// The same credentials for every pod (tests, and clusters without pull secrets).
#[derive(Clone, Debug, Default)]
pub struct FixedPullSecrets(pub Keyring);

impl PullSecretSource for FixedPullSecrets {
    fn keyring<'a>(
        &'a self,
        _namespace: &'a str,
        _pod: &'a Pod,
    ) -> Pin<Box<dyn Future<Output = Keyring> + Send + 'a>> {
        Box::pin(std::future::ready(self.0.clone()))
    }
}

/// Image lookups for the planner: the resolver and the pods' credentials.
pub struct ImageLookup {
    /// Registry access and caches.
    pub resolver: Arc<Resolver>,
    /// Credentials.
    pub secrets: Box<dyn PullSecretSource>,
}

impl std::fmt::Debug for ImageLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLookup")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

/// The webhook's decider.
#[derive(Debug)]
pub struct Planner<V> {
    view: V,
    settings: Settings,
    jailing: Jailing,
    pods: Option<Box<dyn PodReader>>,
    images: Option<ImageLookup>,
}

impl<V: ClusterView> Planner<V> {
    /// A planner over `view` injecting with `settings`, without registry access (containers
    /// that leave their command to the image are not wrapped).
    pub fn new(view: V, settings: Settings) -> Self {
        Planner {
            view,
            settings,
            jailing: Jailing::default(),
            pods: None,
            images: None,
        }
    }

    /// Reads pods from the apiserver where a review lacks their metadata (ephemeral containers
    /// before Kubernetes 1.22). Without it such requests are refused.
    #[must_use]
    pub fn with_pod_reader(mut self, pods: Box<dyn PodReader>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Requires jailing where the admins say so, and lets the service accounts they name opt
    /// out.
    #[must_use]
    pub fn with_jailing(mut self, jailing: Jailing) -> Self {
        self.jailing = jailing;
        self
    }

    /// Looks image configs up when a plan needs them (reviews through [`Admit::admit_async`]).
    #[must_use]
    pub fn with_image_lookup(mut self, images: ImageLookup) -> Self {
        self.images = Some(images);
        self
    }
}

/// A Pod CREATE ready to plan.
struct Prepared<'r> {
    /// The review's own Pod when it needs no change to be planned, else a copy.
    pod: Cow<'r, Pod>,
    namespace: String,
    /// The pod's own `metadata.namespace` (often absent on CREATE).
    given_namespace: Option<String>,
    /// The request's UID (seeds the placeholder nonce).
    review_uid: String,
}

/// The architecture a pod asks for by node selector, if any.
fn pod_arch(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_selector
        .as_ref()?
        .get("kubernetes.io/arch")
        .map(String::as_str)
}

impl<V: ClusterView> Planner<V> {
    fn prepare(request: &AdmissionRequest) -> Result<Prepared<'_>, Box<AdmissionResponse>> {
        let uid = &request.uid;
        if !request.kind.is_pod() || request.operation != "CREATE" {
            // Pod CREATE is planned, UPDATE guarded; anything else passes untouched.
            return Err(Box::new(AdmissionResponse::allow(uid)));
        }
        let Some(object) = request.object.as_ref() else {
            return Err(Box::new(AdmissionResponse::deny(
                uid,
                "agentboundary.dev: the review carries no Pod object",
            )));
        };
        let read = match object {
            Object::Pod(pod) => Ok(Cow::Borrowed(&**pod)),
            Object::Raw(_) => object.read::<Pod>().map(Cow::Owned),
        };
        let mut pod = match read {
            Ok(pod) => pod,
            Err(e) => {
                return Err(Box::new(AdmissionResponse::deny(
                    uid,
                    format!("agentboundary.dev: the object is not a readable Pod: {e}"),
                )));
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
            pod.to_mut().metadata.namespace = Some(namespace.clone());
        }
        Ok(Prepared {
            pod,
            namespace,
            given_namespace,
            review_uid: uid.clone(),
        })
    }

    fn decide(
        &self,
        prepared: &Prepared<'_>,
        images: &BTreeMap<String, Result<ImageConfig, String>>,
    ) -> plan::Decision {
        let nodes = self.view.nodes();
        let labels = self.view.namespace_labels(&prepared.namespace);
        let policies = self.view.policies(&prepared.namespace);
        let cluster_policies = self.view.cluster_policies(&prepared.namespace, &labels);
        plan::plan(&Input {
            pod: &prepared.pod,
            namespace_labels: &labels,
            policies: &policies,
            cluster_policies: &cluster_policies,
            jailing: &self.jailing,
            nodes: &nodes,
            cluster: self.view.cluster(),
            settings: &self.settings,
            images,
            review_uid: &prepared.review_uid,
        })
    }

    /// Plans, looking up the image configs each plan asks for, within the lookup budget.
    async fn decide_with_images(
        &self,
        lookup: &ImageLookup,
        prepared: &Prepared<'_>,
    ) -> plan::Decision {
        let started = Instant::now();
        let mut images = BTreeMap::new();
        let mut keyring: Option<Keyring> = None;
        let mut decision = self.decide(prepared, &images);
        // A pass wants only containers not looked up yet, so this ends: commands, then users.
        loop {
            let wanted: Vec<(String, String)> = decision
                .wanted_images
                .iter()
                .filter(|w| !images.contains_key(&w.container))
                .map(|w| (w.container.clone(), w.image.clone()))
                .collect();
            if wanted.is_empty() {
                return decision;
            }
            if keyring.is_none() {
                let budget = lookup.resolver.config().budget;
                let read = lookup.secrets.keyring(&prepared.namespace, &prepared.pod);
                let read = tokio::time::timeout_at((started + budget).into(), read).await;
                keyring = Some(read.unwrap_or_else(|_| {
                    let mut none = Keyring::default();
                    none.problems
                        .push("the pull secrets could not be read within the lookup budget".into());
                    none
                }));
            }
            let keyring = keyring.get_or_insert_default();
            let found = lookup
                .resolver
                .resolve_all(&wanted, pod_arch(&prepared.pod), keyring, started)
                .await;
            for (container, result) in found {
                if let Err(e) = &result {
                    tracing::info!(
                        namespace = %prepared.namespace,
                        container = %container,
                        error = %e,
                        "image config lookup failed"
                    );
                }
                images.insert(container, result.map_err(|e| e.to_string()));
            }
            decision = self.decide(prepared, &images);
        }
    }

    fn respond(
        request: &AdmissionRequest,
        mut prepared: Prepared<'_>,
        mut decision: plan::Decision,
    ) -> AdmissionResponse {
        let uid = &request.uid;
        let (mut response, outcome, tier) = match &decision.verdict {
            Verdict::Jailed { row, .. } => {
                let row = row.clone();
                if prepared.pod.metadata.namespace != prepared.given_namespace {
                    prepared
                        .pod
                        .to_mut()
                        .metadata
                        .namespace
                        .clone_from(&prepared.given_namespace);
                }
                decision.pod.metadata.namespace = prepared.given_namespace;
                (
                    AdmissionResponse::patched(uid, decision.patch_json(&prepared.pod)),
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
        let meta = &prepared.pod.metadata;
        response.object_name =
            Some(request.object_name_from(meta.name.as_deref(), meta.generate_name.as_deref()));
        response
            .audit_annotations
            .insert(AUDIT_DECISION.into(), outcome.into());
        if let Some(tier) = tier {
            response.audit_annotations.insert(AUDIT_TIER.into(), tier);
        }
        response
    }
}

/// The parts of a Pod, or of 1.20–1.21's `EphemeralContainers` object, the ephemeral container
/// check reads.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WithEphemeral {
    #[serde(default)]
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// Kubernetes 1.22+: the Pod.
    #[serde(default)]
    spec: Option<EphemeralList>,
    /// Up to 1.21: `EphemeralContainers` carries the list itself.
    #[serde(default)]
    ephemeral_containers: Option<Vec<Named>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EphemeralList {
    #[serde(default)]
    ephemeral_containers: Option<Vec<Named>>,
}

#[derive(serde::Deserialize)]
struct Named {
    name: String,
}

/// The subresource through which ephemeral containers are added.
const EPHEMERAL: &str = "ephemeralcontainers";

/// A pod's annotations as read from the apiserver: `Ok(None)` when it does not exist.
pub type Looked = Result<Option<BTreeMap<String, String>>, String>;

/// Reads a pod's annotations when a review's object lacks them.
pub trait PodReader: std::fmt::Debug + Send + Sync + 'static {
    /// The annotations of pod `name` in `namespace`.
    fn annotations<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Looked> + Send + 'a>>;
}

/// Pods read from the apiserver (`get` on pods).
#[derive(Clone)]
pub struct ApiPods(pub kube::Client);

impl std::fmt::Debug for ApiPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiPods")
    }
}

impl PodReader for ApiPods {
    fn annotations<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Looked> + Send + 'a>> {
        Box::pin(async move {
            let pods: kube::Api<Pod> = kube::Api::namespaced(self.0.clone(), namespace);
            let read = tokio::time::timeout(std::time::Duration::from_secs(3), pods.get_opt(name));
            match read.await {
                Ok(Ok(pod)) => Ok(pod.map(|p| p.metadata.annotations.unwrap_or_default())),
                Ok(Err(e)) => Err(format!("reading the pod: {e}")),
                Err(_) => Err("reading the pod took over 3 s".into()),
            }
        })
    }
}

/// The same pods for every review (tests).
#[derive(Clone, Debug, Default)]
pub struct FixedPods(pub BTreeMap<(String, String), BTreeMap<String, String>>);

impl PodReader for FixedPods {
    fn annotations<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Looked> + Send + 'a>> {
        let found = self
            .0
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// Whether a review is an ephemeral container request whose object lacks the pod's metadata.
fn needs_pod_lookup(request: &AdmissionRequest) -> bool {
    request.operation == "UPDATE"
        && request.sub_resource.as_deref() == Some(EPHEMERAL)
        && parse_object::<WithEphemeral>(request.old_object.as_ref(), "old object")
            .is_ok_and(|o| o.without_pod_metadata())
}

impl WithEphemeral {
    /// 1.20–1.21's `EphemeralContainers` carries the pod's name but not its labels or
    /// annotations.
    fn without_pod_metadata(&self) -> bool {
        self.spec.is_none() && self.metadata.annotations.is_none()
    }

    fn names(&self) -> Vec<&str> {
        self.ephemeral_containers
            .iter()
            .chain(
                self.spec
                    .iter()
                    .filter_map(|s| s.ephemeral_containers.as_ref()),
            )
            .flatten()
            .map(|c| c.name.as_str())
            .collect()
    }
}

fn parse_object<T: serde::de::DeserializeOwned>(
    object: Option<&Object>,
    which: &str,
) -> Result<T, String> {
    let object =
        object.ok_or_else(|| format!("agentboundary.dev: the review carries no {which}"))?;
    object
        .read()
        .map_err(|e| format!("agentboundary.dev: the {which} is not readable: {e}"))
}

impl<V: ClusterView> Planner<V> {
    /// A change to an existing pod: refused when it would get around the jail of a jailed pod.
    /// Unreadable objects are refused (this webhook fails closed for jailed pods).
    /// `looked_up`: the pod's annotations read from the apiserver, for objects that do not
    /// carry them (1.20–1.21's `EphemeralContainers`).
    fn guard_update(
        &self,
        request: &AdmissionRequest,
        looked_up: Option<Looked>,
    ) -> AdmissionResponse {
        let uid = &request.uid;
        let refusal = match request.sub_resource.as_deref().unwrap_or_default() {
            "" if request.kind.is_pod() => self.refuse_pod_update(request),
            EPHEMERAL => Self::refuse_ephemeral(request, looked_up),
            _ => Ok(None),
        };
        let mut response = match refusal {
            Ok(None) => AdmissionResponse::allow(uid),
            Ok(Some(message)) | Err(message) => AdmissionResponse::deny(uid, message),
        };
        let outcome = if response.allowed {
            "allowed"
        } else {
            "denied"
        };
        response
            .audit_annotations
            .insert(AUDIT_DECISION.into(), outcome.into());
        response
    }

    fn refuse_pod_update(&self, request: &AdmissionRequest) -> Result<Option<String>, String> {
        let old: Pod = parse_object(request.old_object.as_ref(), "old Pod")?;
        if !guard::is_jailed(old.metadata.annotations.as_ref()) {
            return Ok(None);
        }
        let new: Pod = parse_object(request.object.as_ref(), "Pod")?;
        let namespace = request
            .namespace
            .clone()
            .or_else(|| old.metadata.namespace.clone())
            .unwrap_or_default();
        let policies = self.view.policies(&namespace);
        let labels = self.view.namespace_labels(&namespace);
        let cluster_policies = self.view.cluster_policies(&namespace, &labels);
        let selecting = |labels: &BTreeMap<String, String>| {
            let mut names: Vec<String> = policies
                .iter()
                .filter(|p| plan::selector(&p.spec.pod_selector).matches(labels) == Ok(true))
                .map(|p| {
                    format!(
                        "BoundaryPolicy {}",
                        p.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .chain(
                    cluster_policies
                        .iter()
                        .filter(|p| {
                            plan::selector(&p.spec.pod_selector).matches(labels) == Ok(true)
                        })
                        .map(|p| {
                            format!(
                                "ClusterBoundaryPolicy {}",
                                p.metadata.name.as_deref().unwrap_or_default()
                            )
                        }),
                )
                .collect();
            names.sort();
            names
        };
        Ok(guard::refuse_update(&old, &new, selecting))
    }

    fn refuse_ephemeral(
        request: &AdmissionRequest,
        looked_up: Option<Looked>,
    ) -> Result<Option<String>, String> {
        let old: WithEphemeral = parse_object(request.old_object.as_ref(), "old object")?;
        let new: WithEphemeral = parse_object(request.object.as_ref(), "object")?;
        let before = old.names();
        let added: Vec<String> = new
            .names()
            .into_iter()
            .filter(|n| !before.contains(n))
            .map(str::to_owned)
            .collect();
        if added.is_empty() {
            return Ok(None);
        }
        if !old.without_pod_metadata() {
            return Ok(guard::refuse_ephemeral(
                old.metadata.annotations.as_ref(),
                &added,
            ));
        }
        // Whether the pod is jailed is not in the object: it is read, and when that fails the
        // ephemeral container is refused (it could be a jailed pod's).
        let unknown = |why: &str| {
            format!(
                "agentboundary.dev: cannot tell whether pod {} is jailed ({why}), so ephemeral container {} is refused; try again",
                request.name.as_deref().unwrap_or_default(),
                added.join(", ")
            )
        };
        match looked_up {
            Some(Ok(Some(annotations))) => Ok(guard::refuse_ephemeral(Some(&annotations), &added)),
            // The pod is gone: the apiserver refuses the request itself.
            Some(Ok(None)) => Ok(None),
            Some(Err(e)) => Err(unknown(&e)),
            None => Err(unknown("this webhook cannot read pods")),
        }
    }
}

impl<V: ClusterView> Admit for Planner<V> {
    fn admit(&self, request: &AdmissionRequest) -> AdmissionResponse {
        if request.operation == "UPDATE" {
            return self.guard_update(request, None);
        }
        match Self::prepare(request) {
            Ok(prepared) => {
                let decision = self.decide(&prepared, &BTreeMap::new());
                Self::respond(request, prepared, decision)
            }
            Err(response) => *response,
        }
    }

    fn admit_async<'a>(
        &'a self,
        request: &'a AdmissionRequest,
    ) -> Pin<Box<dyn Future<Output = AdmissionResponse> + Send + 'a>> {
        if let Some(pods) = self.pods.as_deref().filter(|_| needs_pod_lookup(request)) {
            return Box::pin(async move {
                let namespace = request.namespace.as_deref().unwrap_or_default();
                let name = request.name.as_deref().unwrap_or_default();
                let looked_up = pods.annotations(namespace, name).await;
                self.guard_update(request, Some(looked_up))
            });
        }
        let Some(lookup) = self
            .images
            .as_ref()
            .filter(|_| request.operation == "CREATE")
        else {
            return Box::pin(async move { self.admit(request) });
        };
        Box::pin(async move {
            match Self::prepare(request) {
                Ok(prepared) => {
                    let decision = self.decide_with_images(lookup, &prepared).await;
                    Self::respond(request, prepared, decision)
                }
                Err(response) => *response,
            }
        })
    }
}

//! The planner: a pure function from (pod, namespace, policies, nodes, cluster) to a decision.
//! No I/O, no clock: the golden tests run it row by row.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use boundary_api::contract::{self, annotations, containers, labels, node_labels};
use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy};
use boundary_api::{JailRuntime, Mode, Tier};
use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, Pod, PodSpec, SeccompProfile,
};
use serde::Serialize;

use crate::classes::{self, Group, NodeClasses, Placement};
use crate::credentials::{self, PolicyCredential};
use crate::guard::{self, Jailing, RequiredBy, Requirement as Jail};
use crate::image::ImageConfig;
use crate::inject::{self, Injection, InjectionStatus, JailTarget, Settings, SidecarKind};
use crate::ports;
use crate::seccomp;
use crate::tables::{self, Row, Seccomp};
use boundary_api::nodes::{KUBERNETES_OS, NodeFacts};

/// Annotation the kubelet puts on mirror pods of static pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Namespace label of Pod Security Admission's enforced level.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// First minor version of Kubernetes with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// What the planner knows about the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Minor version of the apiserver (1.x).
    pub minor: u32,
}

/// Everything the planner looks at.
#[derive(Debug)]
pub struct Input<'a> {
    /// The pod, as the apiserver is about to store it.
    pub pod: &'a Pod,
    /// Labels of the pod's namespace.
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// `BoundaryPolicy` objects of the pod's namespace.
    pub policies: &'a [Arc<BoundaryPolicy>],
    /// `ClusterBoundaryPolicy` objects whose `namespaceSelector` selects the pod's namespace.
    pub cluster_policies: &'a [Arc<ClusterBoundaryPolicy>],
    /// Where jailing is required and who may opt out.
    pub jailing: &'a Jailing,
    /// Every node of the cluster, grouped.
    pub nodes: &'a NodeClasses,
    /// The cluster.
    pub cluster: Cluster,
    /// What to inject.
    pub settings: &'a Settings,
    /// Image configs of the pod's containers by container name, as the server looked them up
    /// (`Err`: why not). A container missing here whose config the plan needs is named in
    /// [`Decision::wanted_images`].
    pub images: &'a BTreeMap<String, Result<ImageConfig, String>>,
    /// The admission request's UID: seeds the pod's placeholder nonce (random per request, so
    /// per pod), unless an earlier injection of this pod recorded one.
    pub review_uid: &'a str,
}

/// A container whose image config would change the plan, and its image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WantedImage {
    /// The container.
    pub container: String,
    /// Its image reference.
    pub image: String,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Verdict {
    /// Not this webhook's business (not opted in, no policy, mirror pod, ...): unchanged.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Jailed with `row` of the runtime's table.
    Jailed {
        /// The runtime.
        runtime: JailRuntime,
        /// The row applied.
        row: String,
        /// This project's tier (builtin runtime).
        #[serde(skip_serializing_if = "Option::is_none")]
        tier: Option<Tier>,
        /// The pod was pinned to the nodes supporting the row.
        pinned: bool,
    },
    /// It cannot be jailed, and an `Audit` policy lets it run unjailed (with a warning).
    Unjailed {
        /// Why not.
        reason: String,
    },
    /// It cannot be jailed and an `Enforce` policy selects it: admission is denied.
    Denied {
        /// The message the client sees.
        message: String,
    },
}

/// The planner's answer: the verdict, the pod to store, and warnings for the client.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The outcome.
    pub verdict: Verdict,
    /// The pod to store (the input pod when nothing changes).
    pub pod: Pod,
    /// Warnings for the client (`kubectl` prints them).
    pub warnings: Vec<String>,
    /// Image configs the plan needed but `Input::images` lacks: look them up and plan again.
    pub wanted_images: Vec<WantedImage>,
}

impl Decision {
    /// The JSON Patch from `original` to the planned pod (see [`crate::patch`]).
    pub fn patch(&self, original: &Pod) -> json_patch::Patch {
        crate::patch::between(original, &self.pod)
    }

    /// [`Decision::patch`] as the JSON sent, written without building it first (see
    /// [`crate::patch::written`]); empty when there is nothing to change.
    pub fn patch_json(&self, original: &Pod) -> Vec<u8> {
        crate::patch::written(original, &self.pod)
    }
}

/// The policies selecting a pod, combined.
#[derive(Debug)]
struct Combined {
    /// The selecting `BoundaryPolicy` objects (recorded on the pod).
    names: Vec<String>,
    /// The selecting `ClusterBoundaryPolicy` objects.
    cluster_names: Vec<String>,
    /// Set where jailing is required: a pod that cannot be jailed is refused whatever the mode.
    required: Option<RequiredBy>,
    /// The pod's namespace (for messages).
    namespace: String,
    mode: Mode,
    runtime: JailRuntime,
    /// Tiers every policy permits (builtin rows only).
    tiers: BTreeSet<Tier>,
    pinning: bool,
    wrap_command: bool,
    /// Container names to jail; `None`: every app container.
    containers: Option<BTreeSet<String>>,
    /// Ports of the pod's loopback the policies let jailed containers reach (`spec.podLocal`).
    pod_local: BTreeSet<u16>,
    /// The selecting policies' credentials (valid or not), policies by name.
    credentials: Vec<PolicyCredential>,
}

pub use boundary_api::crd::compiled_selector as selector;

/// Combines the policies selecting a pod: Enforce wins, tiers intersect, pinning only when
/// every policy allows it, command wrapping when any asks for it, containers unite. Cluster
/// policies count for the mode and say nothing about the jail; they need the builtin runtime,
/// the only one that reads their rules.
fn combine(
    policies: &[Arc<BoundaryPolicy>],
    cluster_policies: &[Arc<ClusterBoundaryPolicy>],
    pod_labels: &BTreeMap<String, String>,
) -> Result<Option<Combined>, String> {
    let mut selected: Vec<&BoundaryPolicy> = Vec::new();
    for policy in policies {
        // A malformed selector selects nothing (the operator reports it in the policy's status).
        if selector(&policy.spec.pod_selector).matches(pod_labels) == Ok(true) {
            selected.push(policy);
        }
    }
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut cluster: Vec<&ClusterBoundaryPolicy> = cluster_policies
        .iter()
        .filter(|p| selector(&p.spec.pod_selector).matches(pod_labels) == Ok(true))
        .map(Arc::as_ref)
        .collect();
    cluster.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if selected.is_empty() && cluster.is_empty() {
        return Ok(None);
    }
    let mut combined = Combined {
        names: Vec::new(),
        cluster_names: Vec::new(),
        required: None,
        namespace: String::new(),
        mode: Mode::Audit,
        runtime: selected
            .first()
            .map_or(JailRuntime::Builtin, |p| p.spec.jail.runtime),
        tiers: Tier::ALL.into_iter().collect(),
        pinning: true,
        wrap_command: false,
        containers: if selected.is_empty() {
            None
        } else {
            Some(BTreeSet::new())
        },
        pod_local: BTreeSet::new(),
        credentials: Vec::new(),
    };
    for policy in &selected {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let jail = &policy.spec.jail;
        if jail.runtime != combined.runtime {
            return Err(format!(
                "BoundaryPolicies {} (runtime {}) and {name} (runtime {}) both select this pod but name different jail runtimes; make spec.jail.runtime agree",
                combined.names.first().map_or("", String::as_str),
                runtime_name(combined.runtime),
                runtime_name(jail.runtime)
            ));
        }
        combined.mode = combined.mode.strictest(policy.spec.mode);
        combined.tiers.retain(|t| jail.permits(*t));
        combined.pinning &= jail.allow_node_pinning;
        combined.wrap_command |= jail.wrap_command;
        if policy.spec.containers.is_empty() {
            combined.containers = None;
        } else if let Some(set) = combined.containers.as_mut() {
            set.extend(policy.spec.containers.iter().cloned());
        }
        combined.pod_local.extend(
            policy
                .spec
                .pod_local
                .iter()
                .flat_map(|rule| rule.ports.iter().map(|p| p.get())),
        );
        combined
            .credentials
            .extend(policy.spec.credentials.iter().map(|c| PolicyCredential {
                policy: name.clone(),
                credential: c.clone(),
            }));
        combined.names.push(name);
    }
    for policy in &cluster {
        combined.mode = combined.mode.strictest(policy.spec.mode);
        combined
            .cluster_names
            .push(policy.metadata.name.clone().unwrap_or_default());
    }
    if combined.runtime != JailRuntime::Builtin && !combined.credentials.is_empty() {
        let owners: BTreeSet<&str> = combined
            .credentials
            .iter()
            .map(|c| c.policy.as_str())
            .collect();
        return Err(format!(
            "BoundaryPolicy {} sets spec.credentials, which the builtin runtime's sidecar puts into requests, but the pod is jailed with runtime {}, which has no sidecar; use the builtin runtime or remove spec.credentials",
            owners.into_iter().collect::<Vec<_>>().join(", "),
            runtime_name(combined.runtime)
        ));
    }
    if combined.runtime != JailRuntime::Builtin && !combined.cluster_names.is_empty() {
        return Err(format!(
            "ClusterBoundaryPolicy {} selects this pod, but BoundaryPolicy {} jails it with runtime {}, which does not read cluster rules; use the builtin runtime",
            combined.cluster_names.join(", "),
            combined.names.join(", "),
            runtime_name(combined.runtime)
        ));
    }
    Ok(Some(combined))
}

impl Combined {
    /// The selecting policies, for messages: `BoundaryPolicy a, b and ClusterBoundaryPolicy c`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.names.is_empty() {
            parts.push(format!("BoundaryPolicy {}", self.names.join(", ")));
        }
        if !self.cluster_names.is_empty() {
            parts.push(format!(
                "ClusterBoundaryPolicy {}",
                self.cluster_names.join(", ")
            ));
        }
        parts.join(" and ")
    }

    /// `selects` or `select`, agreeing with [`Combined::describe`].
    fn selects(&self) -> &'static str {
        if self.names.len() + self.cluster_names.len() == 1 {
            "selects"
        } else {
            "select"
        }
    }
}

/// The API spelling of a runtime.
fn runtime_name(runtime: JailRuntime) -> &'static str {
    match runtime {
        JailRuntime::Builtin => "builtin",
        JailRuntime::CoderBoundary => "coder-boundary",
    }
}

/// Pod Security level enforced on the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PodSecurity {
    Privileged,
    Baseline,
    Restricted,
}

impl PodSecurity {
    fn of(namespace_labels: &BTreeMap<String, String>) -> PodSecurity {
        match namespace_labels
            .get(POD_SECURITY_ENFORCE)
            .map(String::as_str)
        {
            Some("baseline") => PodSecurity::Baseline,
            Some("restricted") => PodSecurity::Restricted,
            _ => PodSecurity::Privileged,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PodSecurity::Privileged => "privileged",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

/// A row whose capabilities need uid 0, for containers the pod spec leaves to their image's
/// `USER`: the image config decides (a non-root one has excluded the row already); one not
/// looked up yet is wanted, and while it is unknown a warning says what to set (the jail would
/// stop with its own error).
fn warn_of_image_users(
    row: &Row,
    spec: &PodSpec,
    jailed: &[&Container],
    images: &BTreeMap<String, Result<ImageConfig, String>>,
    wanted: &mut Vec<WantedImage>,
    warnings: &mut Vec<String>,
) {
    if !row.needs_root {
        return;
    }
    // Only this project's jail is known to drop them again before the command runs.
    let dropped = if row.tier.is_some() {
        " (the jail drops every capability before the command runs)"
    } else {
        ""
    };
    for c in jailed.iter().filter(|c| run_as_user(spec, c).is_none()) {
        let unread = match images.get(&c.name) {
            Some(Ok(_)) => continue,
            Some(Err(cause)) => format!(" (its config could not be read: {cause})"),
            None => {
                if let Some(image) = c.image.as_deref().filter(|i| !i.is_empty()) {
                    wanted.push(WantedImage {
                        container: c.name.clone(),
                        image: image.to_owned(),
                    });
                }
                String::new()
            }
        };
        warnings.push(format!(
            "agentboundary.dev: {} adds capabilities that take effect only for uid 0, and container {} runs as its image's user{unread}; if that is not root, set securityContext.runAsUser: 0{dropped}",
            row.name, c.name
        ));
    }
}

/// The seccomp profile type in effect for a container, if one is set.
fn effective_seccomp(spec: &PodSpec, c: &Container) -> Option<SeccompProfile> {
    c.security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.clone())
        .or_else(|| {
            spec.security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.clone())
        })
}

/// The uid the pod spec sets for a container (`None`: the image's `USER`).
fn run_as_user(spec: &PodSpec, c: &Container) -> Option<i64> {
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user))
}

/// Whether a container certainly runs as a non-root uid (added capabilities would not be
/// effective). Left to the image: its config's `USER` when it was read, else it counts as root
/// (the jail says so at start if wrong).
fn runs_as_non_root(
    spec: &PodSpec,
    c: &Container,
    images: &BTreeMap<String, Result<ImageConfig, String>>,
) -> bool {
    let sc = c.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let uid = run_as_user(spec, c);
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root));
    let image_non_root = matches!(images.get(&c.name), Some(Ok(config)) if !config.user_is_root());
    uid.is_some_and(|u| u != 0) || (uid.is_none() && (non_root == Some(true) || image_non_root))
}

/// How the seccomp needs of a row are met for one container on a set of nodes.
#[derive(Clone, Debug, PartialEq)]
enum SeccompChange {
    /// Nothing to change.
    Keep,
    /// Set this profile on the container.
    Set(SeccompProfile),
}

fn unconfined() -> SeccompProfile {
    SeccompProfile {
        type_: "Unconfined".into(),
        localhost_profile: None,
    }
}

/// The seccomp change `row` needs for container `c` on `nodes`, or why it cannot be met.
fn seccomp_change(
    row: &Row,
    spec: &PodSpec,
    c: &Container,
    nodes: &[&NodeFacts],
    level: PodSecurity,
) -> Result<SeccompChange, String> {
    let current = effective_seccomp(spec, c);
    match row.seccomp {
        Seccomp::Any => Ok(SeccompChange::Keep),
        Seccomp::Unconfined => {
            if current.is_some() {
                return Err(format!(
                    "container {} sets its own seccomp profile, which this row would replace with Unconfined",
                    c.name
                ));
            }
            if level >= PodSecurity::Baseline {
                return Err(format!(
                    "Pod Security {} forbids seccomp Unconfined",
                    level.name()
                ));
            }
            Ok(SeccompChange::Set(unconfined()))
        }
        Seccomp::AllowUserNamespaces => match current.as_ref().map(|p| p.type_.as_str()) {
            // Unset means Unconfined unless the kubelet runs with --seccomp-default; nodes
            // where the probe found otherwise do not list the userns tier.
            // The user's own Localhost profile is kept; a warning says what it must allow.
            None | Some("Unconfined" | "Localhost") => Ok(SeccompChange::Keep),
            _ => {
                let profiles: BTreeSet<_> =
                    nodes.iter().map(|n| n.seccomp_profile.as_deref()).collect();
                match profiles.into_iter().collect::<Vec<_>>().as_slice() {
                    [Some(profile)] => Ok(SeccompChange::Set(SeccompProfile {
                        type_: "Localhost".into(),
                        localhost_profile: Some((*profile).to_owned()),
                    })),
                    _ if level >= PodSecurity::Baseline => Err(format!(
                        "container {} runs under RuntimeDefault seccomp, which blocks user namespaces; the node agent's Localhost profile is not installed on every node, and Pod Security {} forbids Unconfined",
                        c.name,
                        level.name()
                    )),
                    _ => Ok(SeccompChange::Set(unconfined())),
                }
            }
        },
    }
}

/// Why `row` cannot be used for this pod regardless of nodes, if so.
/// Why a row is not used for a pod whatever its nodes.
enum Exclusion {
    /// The policies do not permit it: what the user asked for, no news.
    NotPermitted(String),
    /// Something about the pod or namespace rules it out: worth a warning when a more
    /// privileged or weaker row is used instead.
    RuledOut(String),
}

fn row_excluded(
    row: &Row,
    combined: &Combined,
    spec: &PodSpec,
    jailed: &[&Container],
    images: &BTreeMap<String, Result<ImageConfig, String>>,
    level: PodSecurity,
) -> Option<Exclusion> {
    if let Some(tier) = row.tier.filter(|t| !combined.tiers.contains(t)) {
        return Some(Exclusion::NotPermitted(format!(
            "{tier} is not in every policy's spec.jail.allowedTiers"
        )));
    }
    if row.needs_root
        && let Some(c) = jailed.iter().find(|c| runs_as_non_root(spec, c, images))
    {
        let whose = if run_as_user(spec, c).is_none() {
            "its image's non-root USER"
        } else {
            "a non-root user"
        };
        return Some(Exclusion::RuledOut(format!(
            "container {} runs as {whose}, for whom added capabilities are not effective",
            c.name
        )));
    }
    // Baseline (and so restricted) forbids adding NET_ADMIN or SYS_ADMIN.
    if level >= PodSecurity::Baseline && !row.capabilities.is_empty() {
        return Some(Exclusion::RuledOut(format!(
            "Pod Security {} of the namespace forbids adding {}",
            level.name(),
            row.capabilities.join(" and ")
        )));
    }
    None
}

fn describe(node: &NodeFacts) -> String {
    let mut text = format!("{} ({}", node.name, node.os);
    if let Some(k) = node.kernel {
        let _ = write!(text, ", kernel {k}");
    }
    let _ = write!(
        text,
        ", user namespaces {}, tiers: {})",
        if node.userns { "on" } else { "off" },
        if node.tiers.is_empty() {
            "none".to_owned()
        } else {
            node.tiers
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }
    );
    text
}

/// A decision reached before anything is injected: the pod stays as it is.
struct Early {
    verdict: Verdict,
    warnings: Vec<String>,
}

impl Early {
    fn skipped(reason: &str, warnings: Vec<String>) -> Early {
        Early {
            verdict: Verdict::Skipped {
                reason: reason.into(),
            },
            warnings,
        }
    }
}

/// The pod cannot be jailed: Enforce denies, Audit admits it unjailed with a warning; where
/// jailing is required it is denied whatever the mode.
fn cannot_jail(combined: &Combined, reason: String, mut warnings: Vec<String>) -> Early {
    let policies = combined.describe();
    if let Some(required) = &combined.required {
        return Early {
            verdict: Verdict::Denied {
                message: format!(
                    "agentboundary.dev: {}, and this pod cannot be jailed: {reason}",
                    required.describe(&combined.namespace)
                ),
            },
            warnings,
        };
    }
    match combined.mode {
        Mode::Enforce => Early {
            verdict: Verdict::Denied {
                message: format!(
                    "agentboundary.dev: {policies} (Enforce) {} this pod, but it cannot be jailed: {reason}. To run it unjailed, a cluster admin must exempt its service account (chart value webhook.optOutServiceAccounts) and the pod be labelled {}={}",
                    combined.selects(),
                    labels::INJECT,
                    contract::INJECT_DISABLED
                ),
            },
            warnings,
        },
        Mode::Audit => {
            warnings.push(format!(
                "agentboundary.dev: not jailed ({policies} is in Audit mode): {reason}"
            ));
            Early {
                verdict: Verdict::Unjailed { reason },
                warnings,
            }
        }
    }
}

/// Plans the pod.
pub fn plan(input: &Input<'_>) -> Decision {
    let mut wanted = Vec::new();
    let mut decision = match plan_jail(input, &mut wanted) {
        Ok(decision) => decision,
        Err(Early { verdict, warnings }) => Decision {
            verdict,
            pod: input.pod.clone(),
            warnings,
            wanted_images: Vec::new(),
        },
    };
    decision.wanted_images = wanted;
    decision
}

/// Why a pod is none of this webhook's business whatever its labels, if it is not.
fn not_ours(pod: &Pod) -> Option<&'static str> {
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Some("mirror pod (static pods are not changed by admission)");
    }
    pod.spec.is_none().then_some("pod without spec")
}

/// The policies selecting the pod, and whether it is to be jailed at all: `Err` when it is not
/// (skipped, or refused: an opt-out under Enforce, nothing selecting it where jailing is
/// required, policies that disagree).
fn selecting(input: &Input<'_>, pod_labels: &BTreeMap<String, String>) -> Result<Combined, Early> {
    let pod = input.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let requiring = input
        .cluster_policies
        .iter()
        .filter(|p| p.spec.require_jailing)
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    let requirement = guard::requirement(
        input.jailing,
        &namespace,
        input.namespace_labels,
        pod_labels,
        requiring,
    );
    let combined = combine(input.policies, input.cluster_policies, pod_labels).map_err(|m| Early {
        verdict: Verdict::Denied {
            message: format!("agentboundary.dev: {m}"),
        },
        warnings: Vec::new(),
    });
    match requirement {
        Jail::Off => Err(Early::skipped(
            "injection is not enabled for this pod or namespace",
            Vec::new(),
        )),
        Jail::OptedOut => {
            let enforcing = match combined {
                Ok(Some(c)) if c.mode == Mode::Enforce => vec![c.describe()],
                Ok(_) => Vec::new(),
                Err(early) => return Err(early),
            };
            let account = guard::service_account(&namespace, pod);
            match guard::refuse_opt_out(input.jailing, &account, &enforcing) {
                Some(message) => Err(Early {
                    verdict: Verdict::Denied { message },
                    warnings: Vec::new(),
                }),
                None => Err(Early::skipped(
                    "the pod opted out (label agentboundary.dev/inject=disabled)",
                    Vec::new(),
                )),
            }
        }
        Jail::Required(by) => match combined? {
            Some(mut c) => {
                c.required = Some(by);
                c.namespace = namespace;
                Ok(c)
            }
            None => Err(Early {
                verdict: Verdict::Denied {
                    message: format!(
                        "agentboundary.dev: {}, and no BoundaryPolicy or ClusterBoundaryPolicy selects this pod, so it cannot be jailed. A namespace admin can create a BoundaryPolicy that selects it",
                        by.describe(&namespace)
                    ),
                },
                warnings: Vec::new(),
            }),
        },
        Jail::OptedIn => match combined? {
            Some(mut c) => {
                c.namespace = namespace;
                Ok(c)
            }
            None => Err(Early::skipped(
                "no BoundaryPolicy selects this pod",
                vec![format!(
                    "agentboundary.dev: injection is enabled but no BoundaryPolicy in namespace {namespace} selects this pod; it runs without a jail"
                )],
            )),
        },
    }
}

#[allow(clippy::too_many_lines)] // the planner's steps in order, each its own function
fn plan_jail(input: &Input<'_>, wanted: &mut Vec<WantedImage>) -> Result<Decision, Early> {
    let original = input.pod;
    let pod_labels = original.metadata.labels.clone().unwrap_or_default();
    if let Some(reason) = not_ours(original) {
        return Err(Early::skipped(reason, Vec::new()));
    }
    let combined = selecting(input, &pod_labels)?;
    let (mut pod, pod_annotations, annotated) = as_before_injection(original);
    // Planned on the stripped pod's own spec unless seccomp annotations change it (no copy).
    let stripped_spec = pod.spec.take();
    let no_spec = PodSpec::default();
    let spec = annotated
        .as_ref()
        .or(stripped_spec.as_ref())
        .unwrap_or(&no_spec);
    let mut warnings = Vec::new();
    let images = input.images;
    let jailed = jailed_containers(
        spec,
        &pod_annotations,
        &combined,
        images,
        wanted,
        &mut warnings,
    )?;
    let credentials = credential_injection(input, &combined, spec, &jailed, &mut warnings)?;

    let fallback;
    let nodes: Vec<Group<'_>> = match input.nodes.candidates(spec, &pod_labels) {
        Placement::Fargate(facts) | Placement::UnknownNode(facts) => {
            fallback = facts;
            if !fallback.is_labelled() && fallback.os != contract::os::FARGATE {
                warnings.push(format!(
                    "agentboundary.dev: node {} is not known yet; assuming a Linux node with user namespaces",
                    fallback.name
                ));
            }
            vec![Group::single(&fallback)]
        }
        Placement::Nodes(found) if found.is_empty() => {
            fallback = NodeFacts::unknown("(no matching node)");
            warnings.push("agentboundary.dev: no known node matches this pod's node selector, affinity and tolerations; assuming a Linux node with user namespaces".into());
            vec![Group::single(&fallback)]
        }
        Placement::Nodes(found) => found,
    };
    let level = PodSecurity::of(input.namespace_labels);
    let (row, supporting, pinned) = match choose_row(
        &combined,
        spec,
        &jailed,
        images,
        &nodes,
        level,
        &mut warnings,
    ) {
        Ok(chosen) => chosen,
        Err(reason) => return Err(cannot_jail(&combined, reason, warnings)),
    };
    // What the rows read of nodes is the same across a group: one node stands for each.
    let supporting_facts: Vec<&NodeFacts> = supporting.iter().map(|g| g.facts).collect();
    let containers = targets(
        row,
        &combined,
        spec,
        &jailed,
        &supporting_facts,
        level,
        &mut warnings,
    );
    warn_of_image_users(row, spec, &jailed, images, wanted, &mut warnings);
    warn_of_unwrapped(&combined, &jailed, &mut warnings);
    let pin = pinned.then(|| pin_requirement(row, &supporting, &mut warnings));
    let injection = Injection {
        row,
        runtime: combined.runtime,
        mode: combined.mode,
        policies: combined.names.clone(),
        containers,
        wrap_command: combined.wrap_command,
        images: image_commands(&combined, &jailed, images),
        sidecar: if input.cluster.minor >= NATIVE_SIDECAR_MINOR {
            SidecarKind::Native
        } else {
            SidecarKind::Classic
        },
        pin,
        credentials,
    };
    pod.spec = stripped_spec;
    apply(&mut pod, &injection, input.settings, &mut warnings);
    Ok(Decision {
        verdict: Verdict::Jailed {
            runtime: combined.runtime,
            row: row.name.into(),
            tier: row.tier,
            pinned,
        },
        pod,
        warnings,
        wanted_images: Vec::new(),
    })
}

/// What the selecting policies' credentials need injected, after the check that no jailed
/// container receives a real value another way (Enforce: denied; Audit: a warning).
fn credential_injection(
    input: &Input<'_>,
    combined: &Combined,
    spec: &PodSpec,
    jailed: &[&Container],
    warnings: &mut Vec<String>,
) -> Result<inject::CredentialInjection, Early> {
    // Under coder-boundary `combine` has refused credentials, so only the credentials Secret
    // itself can conflict.
    let usable = credentials::usable(&combined.credentials, warnings);
    let conflicts = credentials::conflicts(spec, jailed, &usable);
    if !conflicts.is_empty() {
        let list = conflicts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        match combined.mode {
            // Denied rather than mended: the spec itself hands the agent the real value, and
            // whatever creates the pod without this webhook (failurePolicy Ignore, the webhook
            // down) would run it so.
            Mode::Enforce => {
                return Err(Early {
                    verdict: Verdict::Denied {
                        message: format!(
                            "agentboundary.dev: {} (Enforce) {} this pod, and the agent must never hold a credential's real value, but {list}",
                            combined.describe(),
                            combined.selects()
                        ),
                    },
                    warnings: std::mem::take(warnings),
                });
            }
            Mode::Audit => warnings.push(format!(
                "agentboundary.dev: the agent must never hold a credential's real value ({} is in Audit mode, so the pod is admitted), but {list}",
                combined.describe()
            )),
        }
    }
    if combined.runtime != JailRuntime::Builtin {
        return Ok(inject::CredentialInjection::default());
    }
    // Kept from an earlier injection of this pod (reinvocation gets a new request UID).
    let nonce = inject::previous_nonce(input.pod)
        .unwrap_or_else(|| boundary_api::credentials::nonce_from(input.review_uid.as_bytes()));
    Ok(inject::CredentialInjection {
        placeholders: credentials::placeholder_env(&usable, &nonce, warnings),
        sidecar_identity: credentials::sidecar_identity_needed(&usable),
        carried_identity: inject::previous_sidecar_identity(input.pod),
        nonce,
    })
}

/// The pod as it was before this webhook touched it (reinvocation, or a pod re-created from a
/// mutated spec, which carries injected parts without the record of them), its annotations, and
/// the spec to plan with when it is not the pod's own: the pod as the apiserver will store it,
/// legacy seccomp annotations turned into fields.
fn as_before_injection(original: &Pod) -> (Pod, BTreeMap<String, String>, Option<PodSpec>) {
    let mut pod = original.clone();
    if let Some(status) = InjectionStatus::of(&pod) {
        inject::strip(&mut pod, &status);
    }
    inject::strip_recognised(&mut pod);
    let pod_annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let annotated = seccomp::any_annotation(&pod_annotations).then(|| {
        seccomp::with_annotations(
            pod.spec.as_ref().unwrap_or(&PodSpec::default()),
            &pod_annotations,
        )
    });
    (pod, pod_annotations, annotated)
}

/// The image configs that give wrapped containers without a command theirs.
fn image_commands(
    combined: &Combined,
    jailed: &[&Container],
    images: &BTreeMap<String, Result<ImageConfig, String>>,
) -> BTreeMap<String, ImageConfig> {
    if !combined.wrap_command || combined.runtime != JailRuntime::Builtin {
        return BTreeMap::new();
    }
    jailed
        .iter()
        .filter(|c| c.command.as_ref().is_none_or(Vec::is_empty))
        .filter_map(|c| match images.get(&c.name) {
            Some(Ok(config)) => Some((c.name.clone(), config.clone())),
            _ => None,
        })
        .collect()
}

/// Injects, and adds the injection's warnings.
fn apply(
    pod: &mut Pod,
    injection: &Injection<'_>,
    settings: &Settings,
    warnings: &mut Vec<String>,
) {
    warnings.extend(
        inject::inject(pod, injection, settings)
            .into_iter()
            .map(|w| format!("agentboundary.dev: {w}")),
    );
    if injection.row.tier == Some(Tier::Landlock) {
        warnings.push("agentboundary.dev: jailed with the landlock tier: weaker isolation (TCP connect limited to the proxy; UDP and tools ignoring proxy variables are not covered)".into());
    }
}

/// Who named the containers to jail.
enum Naming {
    /// The selecting policies' `spec.containers`.
    Policy(BTreeSet<String>),
    /// The pod's [`annotations::CONTAINERS`] (policies that name none).
    Annotation(BTreeSet<String>),
    /// Nobody: every app container that keeps what it asked for in the jail.
    Default,
}

fn naming(combined: &Combined, pod_annotations: &BTreeMap<String, String>) -> Naming {
    if let Some(names) = &combined.containers {
        return Naming::Policy(names.clone());
    }
    // Where jailing is required the pod's author does not choose what is left out.
    if combined.required.is_some() {
        return Naming::Default;
    }
    match pod_annotations.get(annotations::CONTAINERS) {
        Some(list) => Naming::Annotation(
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        None => Naming::Default,
    }
}

/// Why a container would lose what it asked for inside the jail, if it would: a privileged
/// container (dind) needs its privileges, and the jailed process ends with no capabilities.
fn loses_privileges(c: &Container, runtime: JailRuntime) -> Option<String> {
    let sc = c.security_context.as_ref()?;
    if sc.privileged == Some(true) {
        return Some("it is privileged (securityContext.privileged: true), and the jail takes every privilege away".into());
    }
    if runtime != JailRuntime::Builtin {
        return None;
    }
    // The capabilities the jail itself uses to start (privileged-netns; SETFCAP for root in
    // a user namespace) are what Coder's setup asks users to add: the jail drops them again.
    let for_the_jail = |cap: &String| {
        let bare = cap
            .trim_start_matches("CAP_")
            .trim_start_matches("cap_")
            .to_ascii_uppercase();
        ["NET_ADMIN", "SYS_ADMIN", "SETFCAP"].contains(&bare.as_str())
    };
    let added: Vec<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|caps| caps.add.as_ref())
        .into_iter()
        .flatten()
        .filter(|cap| !for_the_jail(cap))
        .map(String::as_str)
        .collect();
    (!added.is_empty()).then(|| {
        format!(
            "it adds capabilities {}, which would not exist inside the jail (the jailed process has none)",
            added.join(", ")
        )
    })
}

/// The containers the pod's naming selects: named ones must keep what they ask for inside the
/// jail (else the pod cannot be jailed), unnamed ones that would not are left out with a warning.
fn select_containers<'a>(
    spec: &'a PodSpec,
    pod_annotations: &BTreeMap<String, String>,
    combined: &Combined,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'a Container>, Early> {
    let policies = combined.names.join(", ");
    let app = spec
        .containers
        .iter()
        .filter(|c| c.name != containers::SIDECAR);
    if let Some(c) = spec.init_containers.iter().flatten().next()
        && combined.required.is_some()
    {
        // Init containers run before the sidecar (and, before Kubernetes 1.29, with no sidecar
        // at all), so they are never jailed.
        return Err(cannot_jail(
            combined,
            format!(
                "its init container {} would run unjailed before the jail's sidecar starts; move that step into a jailed container",
                c.name
            ),
            std::mem::take(warnings),
        ));
    }
    Ok(match naming(combined, pod_annotations) {
        Naming::Default => {
            let mut kept = Vec::new();
            for c in app {
                match loses_privileges(c, combined.runtime) {
                    None => kept.push(c),
                    Some(why) if combined.required.is_some() => {
                        return Err(cannot_jail(
                            combined,
                            format!("container {} cannot be jailed: {why}", c.name),
                            std::mem::take(warnings),
                        ));
                    }
                    Some(why) => warnings.push(format!(
                        "agentboundary.dev: container {} is left out of the jail and its egress is not filtered: {why}. Name the agent containers in the policy's spec.containers or the pod annotation {}",
                        c.name,
                        annotations::CONTAINERS
                    )),
                }
            }
            if kept.is_empty() {
                return Err(cannot_jail(
                    combined,
                    "every container is privileged or adds capabilities, so none can be jailed"
                        .into(),
                    std::mem::take(warnings),
                ));
            }
            kept
        }
        Naming::Policy(names) | Naming::Annotation(names) => {
            let source = if combined.containers.is_some() {
                format!("BoundaryPolicy {policies} names")
            } else {
                format!("the pod annotation {} names", annotations::CONTAINERS)
            };
            for name in &names {
                if !spec.containers.iter().any(|c| &c.name == name) {
                    warnings.push(format!(
                        "agentboundary.dev: {source} container {name}, which this pod does not have"
                    ));
                }
            }
            let chosen: Vec<&Container> = app.filter(|c| names.contains(&c.name)).collect();
            if let Some((c, why)) = chosen
                .iter()
                .find_map(|c| loses_privileges(c, combined.runtime).map(|why| (c, why)))
            {
                return Err(cannot_jail(
                    combined,
                    format!(
                        "{source} container {} to be jailed, but {why}; remove that from the container, or stop naming it",
                        c.name
                    ),
                    std::mem::take(warnings),
                ));
            }
            chosen
        }
    })
}

/// The containers to jail, after the checks that make jailing impossible whatever the node.
fn jailed_containers<'a>(
    spec: &'a PodSpec,
    pod_annotations: &BTreeMap<String, String>,
    combined: &Combined,
    images: &BTreeMap<String, Result<ImageConfig, String>>,
    wanted: &mut Vec<WantedImage>,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'a Container>, Early> {
    if spec.host_network == Some(true) {
        return Err(cannot_jail(
            combined,
            "it uses hostNetwork, so its egress would not leave through the pod's own network namespace; set hostNetwork: false".into(),
            std::mem::take(warnings),
        ));
    }
    let windows_pod = spec.os.as_ref().is_some_and(|o| o.name == "windows")
        || spec
            .node_selector
            .as_ref()
            .and_then(|s| s.get(KUBERNETES_OS))
            .is_some_and(|v| v == "windows");
    if windows_pod {
        return Err(cannot_jail(
            combined,
            "it is a Windows pod; the jail needs Linux".into(),
            std::mem::take(warnings),
        ));
    }
    let jailed = select_containers(spec, pod_annotations, combined, warnings)?;
    if jailed.is_empty() {
        return Err(Early::skipped(
            "none of the pod's containers is selected",
            std::mem::take(warnings),
        ));
    }
    if combined.wrap_command && combined.runtime == JailRuntime::Builtin {
        let problem = commands_from_images(&jailed, images, wanted);
        if let Some(reason) = problem {
            return Err(cannot_jail(combined, reason, std::mem::take(warnings)));
        }
    }
    if combined.wrap_command && combined.runtime == JailRuntime::CoderBoundary {
        warnings.push("agentboundary.dev: spec.jail.wrapCommand applies to the builtin runtime only; with coder-boundary the image runs `boundary` itself".into());
    }
    Ok(jailed)
}

/// What each jailed container needs: its seccomp profile and the ports crossing the jail.
fn targets(
    row: &Row,
    combined: &Combined,
    spec: &PodSpec,
    jailed: &[&Container],
    nodes: &[&NodeFacts],
    level: PodSecurity,
    warnings: &mut Vec<String>,
) -> Vec<JailTarget> {
    seccomp_profiles(row, spec, jailed, nodes, level, warnings)
        .into_iter()
        .map(|(name, seccomp)| {
            let c = jailed.iter().find(|c| c.name == name);
            JailTarget {
                inbound_ports: c.map(|c| ports::served(c)).unwrap_or_default(),
                pod_local_ports: ports::of_other_containers(spec, &name)
                    .into_iter()
                    .chain(combined.pod_local.iter().copied())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                name,
                seccomp,
            }
        })
        .collect()
}

/// Without `wrapCommand`, the jail exists only where the image runs `boundary run` itself.
fn warn_of_unwrapped(combined: &Combined, jailed: &[&Container], warnings: &mut Vec<String>) {
    if combined.runtime != JailRuntime::Builtin || combined.wrap_command {
        return;
    }
    for c in jailed.iter().filter(|c| !invokes_boundary(c)) {
        warnings.push(format!(
            "agentboundary.dev: spec.jail.wrapCommand is off, and container {}'s command does not run `boundary run`: its egress is jailed only if its image runs `boundary run -- ...` itself (the policy's status lists the pods whose jail connected)",
            c.name
        ));
    }
}

/// Whether a container's own command or arguments start the jail (`boundary run ...`, or
/// Coder's `boundary -- ...`), directly or in a shell line.
fn invokes_boundary(c: &Container) -> bool {
    let words: Vec<&str> = c
        .command
        .iter()
        .chain(c.args.iter())
        .flatten()
        .map(String::as_str)
        .collect();
    let is_boundary = |w: &str| w.rsplit('/').next() == Some("boundary");
    words
        .windows(2)
        .any(|w| is_boundary(w[0]) && (w[1] == "run" || w[1] == "--"))
        || words.iter().any(|w| {
            w.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|p| is_boundary(p[0]) && (p[1] == "run" || p[1] == "--"))
        })
}

/// Containers to wrap that leave their command to the image need its config: every one not
/// looked up yet goes into `wanted`; the first that cannot be wrapped is the reason returned.
fn commands_from_images(
    jailed: &[&Container],
    images: &BTreeMap<String, Result<ImageConfig, String>>,
    wanted: &mut Vec<WantedImage>,
) -> Option<String> {
    const FIX: &str =
        "set command: to the image's entrypoint, e.g. command: [\"/usr/local/bin/agent\"]";
    let mut reason = None;
    for c in jailed
        .iter()
        .filter(|c| c.command.as_ref().is_none_or(Vec::is_empty))
    {
        let image = c.image.as_deref().unwrap_or_default();
        let lead = format!(
            "spec.jail.wrapCommand is set and container {} has no command, so the entrypoint of its image {image} is needed",
            c.name
        );
        let problem = if image.is_empty() {
            Some(format!("{lead}, but it names no image; {FIX}"))
        } else {
            match images.get(&c.name) {
                Some(Ok(config)) => {
                    let no_args = c.args.as_ref().is_none_or(Vec::is_empty);
                    (config.entrypoint.is_empty() && config.cmd.is_empty() && no_args).then(|| {
                        format!(
                            "{lead}, but the image ({}) has neither ENTRYPOINT nor CMD; {FIX}",
                            config.digest
                        )
                    })
                }
                Some(Err(cause)) => {
                    Some(format!("{lead}, but it could not be read: {cause}; {FIX}"))
                }
                None => {
                    wanted.push(WantedImage {
                        container: c.name.clone(),
                        image: image.to_owned(),
                    });
                    Some(format!(
                        "{lead}, but it was not looked up (the webhook has no registry access); {FIX}"
                    ))
                }
            }
        };
        if reason.is_none() {
            reason = problem;
        }
    }
    reason
}

/// The first row (least privilege first) that works on every candidate node; else, when
/// pinning is allowed, the first that works on some of them (`pinned`); else why not.
/// Candidates come in groups of nodes the rows cannot tell apart: one node stands for each.
fn choose_row<'g, 'n>(
    combined: &Combined,
    spec: &PodSpec,
    jailed: &[&Container],
    images: &BTreeMap<String, Result<ImageConfig, String>>,
    nodes: &'g [Group<'n>],
    level: PodSecurity,
    warnings: &mut Vec<String>,
) -> Result<(&'static Row, Vec<&'g Group<'n>>, bool), String> {
    let mut excluded: Vec<String> = Vec::new();
    let mut ruled_out: Vec<String> = Vec::new();
    let mut partial: Option<(&'static Row, Vec<&'g Group<'n>>)> = None;
    let runtime_class = spec.runtime_class_name.as_deref();
    let mut passed_over = |row: &Row, ruled_out: &[String]| {
        if !ruled_out.is_empty() {
            warnings.push(format!(
                "agentboundary.dev: using {} because {}",
                row.name,
                ruled_out.join("; ")
            ));
        }
    };
    for row in tables::table(combined.runtime) {
        match row_excluded(row, combined, spec, jailed, images, level) {
            Some(Exclusion::NotPermitted(why)) => {
                excluded.push(format!("{}: {why}", row.name));
                continue;
            }
            Some(Exclusion::RuledOut(why)) => {
                excluded.push(format!("{}: {why}", row.name));
                ruled_out.push(format!("{} is ruled out: {why}", row.name));
                continue;
            }
            None => {}
        }
        let supporting: Vec<&Group<'n>> = nodes
            .iter()
            .filter(|g| row.works.on(g.facts, runtime_class))
            .filter(|g| {
                jailed
                    .iter()
                    .all(|c| seccomp_change(row, spec, c, &[g.facts], level).is_ok())
            })
            .collect();
        if supporting.len() == nodes.len() {
            passed_over(row, &ruled_out);
            return Ok((row, supporting, false));
        }
        if !supporting.is_empty() && partial.is_none() {
            partial = Some((row, supporting));
        }
    }
    if combined.pinning
        && let Some((row, supporting)) = partial.clone()
    {
        passed_over(row, &ruled_out);
        return Ok((row, supporting, true));
    }
    let mut reason = format!(
        "no {} jail works on every node it can land on: {}",
        match combined.runtime {
            JailRuntime::Builtin => "tier of the builtin",
            JailRuntime::CoderBoundary => "row of the coder-boundary",
        },
        classes::nodes_of(&nodes.iter().collect::<Vec<_>>())
            .into_iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join("; ")
    );
    if !excluded.is_empty() {
        let _ = write!(reason, "; excluded: {}", excluded.join("; "));
    }
    if let Some((row, supporting)) = partial {
        let _ = write!(
            reason,
            "; {} works on {} — set spec.jail.allowNodePinning: true to pin the pod there, or narrow its nodeSelector",
            row.name,
            classes::nodes_of(&supporting)
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if nodes.iter().any(|g| g.facts.os == contract::os::WINDOWS) {
        reason.push_str("; keep it off Windows nodes with nodeSelector kubernetes.io/os: linux");
    } else if nodes.iter().any(|g| g.facts.os == contract::os::FARGATE) {
        reason.push_str("; EKS Fargate grants no added capabilities and its 5.x kernel has no Landlock networking (6.7+): run agent pods on EC2 nodes");
    }
    Err(reason)
}

/// The seccomp profile each jailed container gets (`None`: its own is kept).
fn seccomp_profiles(
    row: &Row,
    spec: &PodSpec,
    jailed: &[&Container],
    nodes: &[&NodeFacts],
    level: PodSecurity,
    warnings: &mut Vec<String>,
) -> Vec<(String, Option<SeccompProfile>)> {
    let mut out = Vec::new();
    for c in jailed {
        let change = seccomp_change(row, spec, c, nodes, level).unwrap_or(SeccompChange::Keep);
        let profile = match change {
            SeccompChange::Keep => {
                let own_localhost = effective_seccomp(spec, c).filter(|p| p.type_ == "Localhost");
                // The node agent's profile is made for the jail: nothing to say about it.
                let ours = own_localhost.as_ref().is_some_and(|p| {
                    p.localhost_profile.as_deref() == Some(contract::objects::SECCOMP_PROFILE)
                });
                if row.seccomp == Seccomp::AllowUserNamespaces && own_localhost.is_some() && !ours {
                    warnings.push(format!(
                        "agentboundary.dev: container {} uses its own Localhost seccomp profile; it must allow clone/unshare with CLONE_NEWUSER for the jail",
                        c.name
                    ));
                }
                None
            }
            SeccompChange::Set(profile) => {
                if profile.type_ == "Unconfined" && row.seccomp == Seccomp::AllowUserNamespaces {
                    warnings.push(format!(
                        "agentboundary.dev: container {} runs with seccomp Unconfined instead of RuntimeDefault, which blocks user namespaces; install the node agent's seccomp profile to keep a filter",
                        c.name
                    ));
                } else if profile.type_ == "Localhost" {
                    warnings.push(format!(
                        "agentboundary.dev: container {} runs with the node agent's seccomp profile {} instead of RuntimeDefault, which blocks user namespaces (the same filter, plus namespace creation for the jail)",
                        c.name,
                        profile.localhost_profile.as_deref().unwrap_or_default()
                    ));
                }
                Some(profile)
            }
        };
        out.push((c.name.clone(), profile));
    }
    out
}

/// The node-affinity requirement that keeps the pod on `supporting` nodes: the operator's
/// per-tier label when every one of them carries it (a label every node of a group shares),
/// else their names.
fn pin_requirement(
    row: &Row,
    supporting: &[&Group<'_>],
    warnings: &mut Vec<String>,
) -> (NodeSelectorRequirement, bool) {
    if let Some(tier) = row.tier {
        let key = node_labels::for_tier(tier);
        if supporting
            .iter()
            .all(|g| g.facts.labels.get(key).map(String::as_str) == Some("true"))
        {
            warnings.push(format!(
                "agentboundary.dev: pinned to nodes labelled {key}=true (not every node this pod could land on supports {tier})"
            ));
            return (
                NodeSelectorRequirement {
                    key: key.into(),
                    operator: "In".into(),
                    values: Some(vec!["true".into()]),
                },
                false,
            );
        }
    }
    let names: Vec<String> = classes::nodes_of(supporting)
        .iter()
        .map(|n| n.name.clone())
        .collect();
    warnings.push(format!(
        "agentboundary.dev: pinned by name to {} (the operator's node labels are missing, so new nodes will not be eligible)",
        names.join(", ")
    ));
    (
        NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(names),
        },
        true,
    )
}

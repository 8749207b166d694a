//! Applying a plan to a pod, and undoing it. Every change is recorded in the
//! `agentboundary.dev/status` annotation, so a second call (reinvocation, or another webhook
//! having changed the pod in between) first strips exactly what was injected and then injects
//! again: the same pod in, the same pod out.
//!
//! Only additions are made where possible (appended containers, volumes, env, mounts), so the
//! JSON Patch is made of `add` operations that leave the user's fields alone.

use std::collections::BTreeMap;

use boundary_api::contract::{
    annotations, conditions, containers, env, exit_when, labels, objects, paths, ports, volumes,
};
use boundary_api::{JailRuntime, Mode, Tier};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
    Pod, PodReadinessGate, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use crate::credentials::{
    self, AWS_IDENTITY_ENV, AWS_TOKEN_VOLUMES, AwsIdentity, EKS_SKIP_CONTAINERS,
};
use crate::image::ImageConfig;
use crate::tables::Row;

/// Version of the status annotation's format.
pub const STATUS_VERSION: u32 = 1;

/// How the jail-runtime sidecar was injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SidecarKind {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+).
    Native,
    /// A regular container (before 1.29); `boundary run` waits for its socket.
    Classic,
    /// No sidecar (runtime `coder-boundary`: Coder's binary runs its own proxy).
    None,
}

/// The seccomp profile a container had before this webhook set one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeccompBefore {
    /// The container's own profile (`None`: it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<SeccompProfile>,
}

/// What was done to one jailed container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JailedContainer {
    /// The container.
    pub name: String,
    /// Capabilities this webhook added (the user's own are never recorded, so never removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_capabilities: Vec<String>,
    /// Env vars this webhook added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_env: Vec<String>,
    /// Mount paths this webhook added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_mounts: Vec<String>,
    /// Set when this webhook set the container's seccomp profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_replaced: Option<SeccompBefore>,
    /// The container's own command before it was wrapped in `boundary run --`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_command: Option<Vec<String>>,
    /// The container's legacy seccomp annotation before this webhook made it agree with the
    /// profile it set (the apiserver refuses a field and an annotation that disagree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_annotation_replaced: Option<String>,
    /// Set when the wrapped command came from the image's config (the container had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_command: Option<ImageCommand>,
    /// The container's own env entries that now hold a credential's placeholder, as they were
    /// (a literal value that is not a placeholder is left out: it may be the real key, which
    /// the pod must no longer carry anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_env: Vec<EnvVar>,
    /// The pod's AWS identity env taken out of the container (a credential signs with the
    /// sidecar's identity, which the jail must not hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_env: Vec<EnvVar>,
    /// Mounts of the AWS token volumes taken out of the container, for the same reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_mounts: Vec<VolumeMount>,
    /// Set when this webhook added the container to EKS's [`EKS_SKIP_CONTAINERS`] annotation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped_by_eks_webhook: bool,
}

/// A command taken from the image: what the container had before, to restore it exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageCommand {
    /// Digest of the image manifest whose config gave `Entrypoint` and `Cmd`.
    pub digest: String,
    /// The container's `command` before (absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Whether `args` were set to the image's `Cmd` (the container had none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_from_image: bool,
    /// The container's `args` before, when they were set (absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

/// The node-affinity requirement added to pin the pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// The requirement (on a label, or on `metadata.name`).
    pub requirement: NodeSelectorRequirement,
    /// Whether it went into `matchFields` (node names) rather than `matchExpressions`.
    #[serde(default)]
    pub by_field: bool,
    /// Whether the pod had no required node affinity before (so the whole stanza is ours).
    #[serde(default)]
    pub created_affinity: bool,
}

/// The `agentboundary.dev/status` annotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// The jail implementation.
    pub runtime: JailRuntime,
    /// The planner row applied.
    pub row: String,
    /// The tier of this project's jail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Enforce or Audit.
    pub mode: Mode,
    /// The policies that select the pod.
    pub policies: Vec<String>,
    /// How the sidecar was injected.
    pub sidecar: SidecarKind,
    /// The jailed containers and what was changed in each.
    pub containers: Vec<JailedContainer>,
    /// The node pin, when the pod was pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// Whether this webhook added the readiness gate [`conditions::ENFORCED`] (not when the pod
    /// had it already).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readiness_gate: bool,
}

impl InjectionStatus {
    /// Reads the annotation of `pod` (none, or unreadable: nothing to strip).
    pub fn of(pod: &Pod) -> Option<InjectionStatus> {
        let text = pod
            .metadata
            .annotations
            .as_ref()?
            .get(annotations::STATUS)?;
        serde_json::from_str(text).ok()
    }
}

/// Image and resources of the injected containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The jail-runtime image (`boundary` binary at `/boundary`).
    pub image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// CPU request of the sidecar.
    pub sidecar_cpu_request: String,
    /// Memory request of the sidecar.
    pub sidecar_memory_request: String,
    /// Memory limit of the sidecar.
    pub sidecar_memory_limit: String,
    /// The sidecar's audit lines: `json` (its default: no env set) or `ocsf`.
    pub sidecar_audit_format: String,
    /// Threads of the sidecar's proxy: 1 (its default: no env set), more, or 0 for one per CPU.
    pub sidecar_worker_threads: u16,
    /// Give pods jailed with the builtin runtime the readiness gate [`conditions::ENFORCED`], so
    /// they are not Ready until the operator has confirmed their enforcement.
    pub enforcement_readiness_gate: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "agent-boundary/jail-runtime:dev".into(),
            image_pull_policy: "IfNotPresent".into(),
            sidecar_cpu_request: "10m".into(),
            sidecar_memory_request: "32Mi".into(),
            sidecar_memory_limit: "256Mi".into(),
            sidecar_audit_format: "json".into(),
            sidecar_worker_threads: 1,
            enforcement_readiness_gate: false,
        }
    }
}

/// Everything `inject` applies, decided by the planner.
#[derive(Debug)]
pub struct Injection<'a> {
    /// The row.
    pub row: &'a Row,
    /// The runtime.
    pub runtime: JailRuntime,
    /// The mode.
    pub mode: Mode,
    /// The selecting policies.
    pub policies: Vec<String>,
    /// Containers to jail.
    pub containers: Vec<JailTarget>,
    /// Wrap the containers' commands in `boundary run --`.
    pub wrap_command: bool,
    /// Image configs of the containers to wrap that have no command, by container name.
    pub images: BTreeMap<String, ImageConfig>,
    /// Native or classic sidecar.
    pub sidecar: SidecarKind,
    /// The node pin.
    pub pin: Option<(NodeSelectorRequirement, bool)>,
    /// Credentials: placeholders, the sidecar's nonce, the AWS identity.
    pub credentials: CredentialInjection,
}

/// What the credentials of the selecting policies need (builtin runtime only).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CredentialInjection {
    /// The pod's placeholder nonce, for the sidecar.
    pub nonce: String,
    /// `(env name, placeholder)`, set on every jailed container, replacing an entry of that
    /// name (explicit `env` beats `envFrom`).
    pub placeholders: Vec<(String, String)>,
    /// A credential signs with the sidecar's AWS identity: the jailed containers lose the
    /// pod's, the sidecar gets it.
    pub sidecar_identity: bool,
    /// The AWS identity the previous injection's sidecar had (from the jailed containers, or
    /// put there by EKS's webhook when it ran after this one); the new sidecar keeps it.
    pub carried_identity: AwsIdentity,
}

/// One container to jail and what it needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JailTarget {
    /// The container.
    pub name: String,
    /// The seccomp profile to set (`None`: leave it).
    pub seccomp: Option<SeccompProfile>,
    /// Ports that must reach the jailed process from the pod's network (declared, probes).
    pub inbound_ports: Vec<u16>,
    /// Ports of the pod's loopback the jail sends to the proxy (pod-local rules decide).
    pub pod_local_ports: Vec<u16>,
}

/// Removes the annotations `keys` and the jailed label (maps left empty go).
fn forget_metadata(pod: &mut Pod, keys: &[&str]) {
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        for key in keys {
            annotations.remove(*key);
        }
        if annotations.is_empty() {
            pod.metadata.annotations = None;
        }
    }
    if let Some(pod_labels) = pod.metadata.labels.as_mut() {
        pod_labels.remove(labels::JAILED);
        if pod_labels.is_empty() {
            pod.metadata.labels = None;
        }
    }
}

/// Removes everything a previous injection (recorded in `status`) added.
pub fn strip(pod: &mut Pod, status: &InjectionStatus) {
    forget_metadata(
        pod,
        &[annotations::STATUS, annotations::TIER, annotations::POLICY],
    );
    let skipped: Vec<&str> = status
        .containers
        .iter()
        .filter(|r| r.skipped_by_eks_webhook)
        .map(|r| r.name.as_str())
        .collect();
    if !skipped.is_empty() {
        unskip_in_eks_webhook(pod, &skipped);
    }
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let ours = |c: &Container| c.name == containers::SIDECAR || c.name == containers::INSTALL;
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| !ours(c));
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    spec.containers.retain(|c| !ours(c));
    if let Some(vols) = spec.volumes.as_mut() {
        vols.retain(|v| !volumes::ALL.contains(&v.name.as_str()));
    }
    if spec.volumes.as_ref().is_some_and(Vec::is_empty) {
        spec.volumes = None;
    }
    for record in &status.containers {
        if let Some(before) = &record.seccomp_annotation_replaced {
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    crate::seccomp::container_annotation(&record.name),
                    before.clone(),
                );
        }
        let Some(spec) = pod.spec.as_mut() else {
            return;
        };
        let Some(c) = spec.containers.iter_mut().find(|c| c.name == record.name) else {
            continue;
        };
        restore_env_and_mounts(c, record);
        if let Some(command) = &record.wrapped_command {
            c.command = Some(command.clone());
        }
        if let Some(from_image) = &record.image_command {
            c.command.clone_from(&from_image.command);
            if from_image.args_from_image {
                c.args.clone_from(&from_image.args);
            }
        }
        if let Some(sc) = c.security_context.as_mut() {
            if let Some(add) = sc.capabilities.as_mut().and_then(|caps| caps.add.as_mut()) {
                add.retain(|cap| !record.added_capabilities.contains(cap));
            }
            if let Some(caps) = sc.capabilities.as_mut() {
                if caps.add.as_ref().is_some_and(Vec::is_empty) {
                    caps.add = None;
                }
                if *caps == Capabilities::default() {
                    sc.capabilities = None;
                }
            }
            if let Some(before) = &record.seccomp_replaced {
                sc.seccomp_profile.clone_from(&before.profile);
            }
            if *sc == SecurityContext::default() {
                c.security_context = None;
            }
        }
    }
    if let (Some(pin), Some(spec)) = (&status.pin, pod.spec.as_mut()) {
        unpin(spec, pin);
    }
    if status.readiness_gate
        && let Some(spec) = pod.spec.as_mut()
        && let Some(gates) = spec.readiness_gates.as_mut()
    {
        gates.retain(|g| g.condition_type != conditions::ENFORCED);
        if gates.is_empty() {
            spec.readiness_gates = None;
        }
    }
}

/// A jailed container's env and mounts as they were before `record`'s injection.
fn restore_env_and_mounts(c: &mut Container, record: &JailedContainer) {
    if let Some(env) = c.env.as_mut() {
        env.retain(|e| !record.added_env.contains(&e.name));
        // The entries of each name in order, as they were replaced.
        let mut restored: Vec<&str> = Vec::new();
        for before in &record.replaced_env {
            let nth = restored.iter().filter(|n| **n == before.name).count();
            if let Some(e) = env.iter_mut().filter(|e| e.name == before.name).nth(nth) {
                e.clone_from(before);
            }
            restored.push(&before.name);
        }
    }
    if !record.removed_env.is_empty() {
        c.env
            .get_or_insert_with(Vec::new)
            .extend(record.removed_env.iter().cloned());
    }
    if c.env.as_ref().is_some_and(Vec::is_empty) {
        c.env = None;
    }
    if let Some(mounts) = c.volume_mounts.as_mut() {
        mounts.retain(|m| !record.added_mounts.contains(&m.mount_path));
    }
    if !record.removed_mounts.is_empty() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(record.removed_mounts.iter().cloned());
    }
    if c.volume_mounts.as_ref().is_some_and(Vec::is_empty) {
        c.volume_mounts = None;
    }
}

/// Takes `names` out of EKS's [`EKS_SKIP_CONTAINERS`] (the annotation goes when none is left).
fn unskip_in_eks_webhook(pod: &mut Pod, names: &[&str]) {
    let Some(annotations) = pod.metadata.annotations.as_mut() else {
        return;
    };
    let Some(value) = annotations.get(EKS_SKIP_CONTAINERS) else {
        return;
    };
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !names.contains(n))
        .collect();
    if kept.is_empty() {
        annotations.remove(EKS_SKIP_CONTAINERS);
    } else {
        let kept = kept.join(",");
        annotations.insert(EKS_SKIP_CONTAINERS.into(), kept);
    }
    if annotations.is_empty() {
        pod.metadata.annotations = None;
    }
}

/// Env vars this webhook sets on jailed containers of the builtin runtime.
const JAILED_ENV: [&str; 7] = [
    env::TIER,
    env::PROXY_SOCKET,
    env::PROXY_PORT,
    env::CONTAINER_NAME,
    env::POD_NAME,
    env::POD_NAMESPACE,
    env::INBOUND_PORTS,
];

/// Removes injected parts recognised by what they are rather than by the status record: a pod
/// re-created from a mutated spec (a controller that copied it, `kubectl get -o yaml | kubectl
/// create`) carries them without the annotation, and would otherwise be wrapped twice. Leaves a
/// pod without such parts as it is. Credential placeholders stay where they are: the next
/// injection writes the pod's current placeholder over them in place (what they replaced is
/// not known without the record, and was not for the agent to hold anyway); the pod's AWS
/// identity on the removed sidecar is carried over by the planner
/// ([`previous_sidecar_identity`]).
pub fn strip_recognised(pod: &mut Pod) {
    forget_metadata(pod, &[annotations::TIER, annotations::POLICY]);
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let injected = |c: &Container| {
        let args = c.args.as_deref().unwrap_or_default();
        (c.name == containers::SIDECAR && args.first().is_some_and(|a| a == "sidecar"))
            || (c.name == containers::INSTALL && args.first().is_some_and(|a| a == "install"))
    };
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| !injected(c));
        if init.is_empty() {
            spec.init_containers = None;
        }
    }
    spec.containers.retain(|c| !injected(c));
    if let Some(vols) = spec.volumes.as_mut() {
        vols.retain(|v| !volumes::ALL.contains(&v.name.as_str()));
        if vols.is_empty() {
            spec.volumes = None;
        }
    }
    for c in &mut spec.containers {
        unwrap_command(c);
        let jailed_here = c.env.iter().flatten().any(|e| {
            e.name == env::PROXY_SOCKET && e.value.as_deref() == Some(paths::PROXY_SOCKET)
        });
        if !jailed_here {
            continue;
        }
        let privileged_netns = c.env.iter().flatten().any(|e| {
            e.name == env::TIER && e.value.as_deref() == Some(Tier::PrivilegedNetns.as_str())
        });
        if let Some(vars) = c.env.as_mut() {
            vars.retain(|e| {
                !JAILED_ENV.contains(&e.name.as_str()) && e.name != env::POD_LOCAL_PORTS
            });
            if vars.is_empty() {
                c.env = None;
            }
        }
        if let Some(mounts) = c.volume_mounts.as_mut() {
            mounts.retain(|m| !volumes::ALL.contains(&m.name.as_str()));
            if mounts.is_empty() {
                c.volume_mounts = None;
            }
        }
        // The privileged-netns tier's capabilities, which the jail drops again.
        if privileged_netns
            && let Some(sc) = c.security_context.as_mut()
            && let Some(caps) = sc.capabilities.as_mut()
            && let Some(add) = caps.add.as_mut()
        {
            add.retain(|cap| cap != "SYS_ADMIN" && cap != "NET_ADMIN");
            if add.is_empty() {
                caps.add = None;
            }
            if *caps == Capabilities::default() {
                sc.capabilities = None;
            }
            if *sc == SecurityContext::default() {
                c.security_context = None;
            }
        }
    }
}

/// The sidecar this webhook injected (by its name and `sidecar` argument), if the pod has one.
fn injected_sidecar(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| {
            c.name == containers::SIDECAR
                && c.args
                    .as_deref()
                    .and_then(<[String]>::first)
                    .is_some_and(|a| a == "sidecar")
        })
}

/// The placeholder nonce of an earlier injection of this pod (its status record and its
/// sidecar's env), kept when the pod is injected again: a reinvocation carries a new request
/// UID, and a new nonce would change every placeholder for nothing.
pub fn previous_nonce(pod: &Pod) -> Option<String> {
    InjectionStatus::of(pod)?;
    injected_sidecar(pod)?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env::PLACEHOLDER_NONCE)
        .and_then(|e| e.value.clone())
        .filter(|n| boundary_api::credentials::is_nonce(n))
}

/// The AWS identity (env, token mounts) the sidecar of an earlier injection has: it came from
/// the jailed containers, or EKS's webhook put it there after this one ran; either way the new
/// sidecar keeps it.
pub fn previous_sidecar_identity(pod: &Pod) -> AwsIdentity {
    injected_sidecar(pod)
        .map(AwsIdentity::of)
        .unwrap_or_default()
}

/// `boundary run -- CMD` (as this webhook wraps it, once or more) back to `CMD`.
fn unwrap_command(c: &mut Container) {
    let prefix = [paths::BOUNDARY_BIN, "run", "--"];
    let Some(command) = c.command.as_mut() else {
        return;
    };
    while command.len() >= prefix.len() && command.iter().zip(prefix).all(|(a, b)| a == b) {
        command.drain(..prefix.len());
    }
    if command.is_empty() {
        c.command = None;
    }
}

fn unpin(spec: &mut PodSpec, pin: &Pin) {
    if pin.created_affinity {
        if let Some(node_affinity) = spec
            .affinity
            .as_mut()
            .and_then(|a| a.node_affinity.as_mut())
        {
            node_affinity.required_during_scheduling_ignored_during_execution = None;
        }
    } else if let Some(required) = spec
        .affinity
        .as_mut()
        .and_then(|a| a.node_affinity.as_mut())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_mut()
        })
    {
        for term in &mut required.node_selector_terms {
            let list = if pin.by_field {
                &mut term.match_fields
            } else {
                &mut term.match_expressions
            };
            if let Some(items) = list.as_mut() {
                items.retain(|r| *r != pin.requirement);
                if items.is_empty() {
                    *list = None;
                }
            }
        }
    }
    // Remove the stanzas that became empty, so the pod is as it was.
    if let Some(affinity) = spec.affinity.as_mut() {
        if affinity
            .node_affinity
            .as_ref()
            .is_some_and(|n| *n == NodeAffinity::default())
        {
            affinity.node_affinity = None;
        }
        if *affinity == Affinity::default() {
            spec.affinity = None;
        }
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The securityContext of the injected containers: passes Pod Security `restricted`.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

fn install_container(settings: &Settings) -> Container {
    Container {
        name: containers::INSTALL.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["install".into(), "--to".into(), paths::BIN_DIR.into()]),
        volume_mounts: Some(vec![mount(volumes::BIN, paths::BIN_DIR, false)]),
        security_context: Some(restricted_security_context()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "16Mi")])),
            limits: Some(quantities(&[("memory", "64Mi")])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

fn sidecar_container(
    settings: &Settings,
    native: bool,
    nonce: &str,
    identity: &AwsIdentity,
) -> Container {
    let health = Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(i32::from(ports::SIDECAR_METRICS)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(30),
        ..Probe::default()
    };
    Container {
        name: containers::SIDECAR.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["sidecar".into()]),
        restart_policy: native.then(|| "Always".into()),
        env: Some(
            vec![
                field_env(env::POD_NAME, "metadata.name"),
                field_env(env::POD_NAMESPACE, "metadata.namespace"),
                value_env(env::PROXY_SOCKET, paths::PROXY_SOCKET),
                value_env(env::POLICY_FILE, paths::POLICY_FILE),
                value_env(env::LABELS_FILE, paths::LABELS_FILE),
                value_env(env::UPSTREAM_CA_DIR, paths::UPSTREAM_CA_DIR),
                value_env(env::CA_DIR, paths::CA_DIR),
                value_env(
                    env::EXPLICIT_PROXY,
                    &format!("127.0.0.1:{}", ports::EXPLICIT_PROXY),
                ),
                value_env(
                    env::METRICS_ADDR,
                    &format!("0.0.0.0:{}", ports::SIDECAR_METRICS),
                ),
                value_env(env::PLACEHOLDER_NONCE, nonce),
                value_env(env::CREDENTIALS_DIR, paths::CREDENTIALS_DIR),
            ]
            .into_iter()
            // JSON is the sidecar's default: pods keep their spec unless OCSF is asked for.
            .chain((settings.sidecar_audit_format != "json").then(|| {
                value_env(
                    boundary_api::contract::boundary_env::AUDIT_FORMAT,
                    &settings.sidecar_audit_format,
                )
            }))
            .chain((settings.sidecar_worker_threads != 1).then(|| {
                value_env(
                    boundary_api::contract::boundary_env::WORKER_THREADS,
                    &settings.sidecar_worker_threads.to_string(),
                )
            }))
            // The pod's AWS identity, for credentials that sign with it.
            .chain(identity.env.iter().cloned())
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("boundary-metric".into()),
            container_port: i32::from(ports::SIDECAR_METRICS),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(
            vec![
                mount(volumes::RUN, paths::RUN_DIR, false),
                mount(volumes::POLICY, paths::POLICY_DIR, true),
                mount(volumes::PODINFO, paths::PODINFO_DIR, true),
                mount(volumes::UPSTREAM_CA, paths::UPSTREAM_CA_DIR, true),
                // The proxy CA's key: the sidecar's alone, never a jailed container's.
                mount(volumes::CA, paths::CA_DIR, false),
                // The real values of the credentials: the sidecar's alone too.
                mount(volumes::CREDENTIALS, paths::CREDENTIALS_DIR, true),
            ]
            .into_iter()
            .chain(identity.mounts.iter().cloned())
            .collect(),
        ),
        security_context: Some(restricted_security_context()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", &settings.sidecar_cpu_request),
                ("memory", &settings.sidecar_memory_request),
            ])),
            limits: Some(quantities(&[("memory", &settings.sidecar_memory_limit)])),
            ..ResourceRequirements::default()
        }),
        // A native sidecar holds back the app containers until its startup probe passes, so the
        // proxy socket exists before any jailed command starts.
        startup_probe: native.then(|| health.clone()),
        readiness_probe: Some(Probe {
            failure_threshold: Some(3),
            ..health
        }),
        ..Container::default()
    }
}

fn volumes_to_add() -> Vec<Volume> {
    vec![
        Volume {
            name: volumes::BIN.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: volumes::RUN.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: volumes::POLICY.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: objects::POLICY_CONFIGMAP.into(),
                // The operator publishes it; until then the sidecar denies everything.
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: volumes::PODINFO.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: volumes::UPSTREAM_CA.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: objects::UPSTREAM_CA_CONFIGMAP.into(),
                // Most namespaces have none: then the directory is empty.
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: volumes::CA.into(),
            // The sidecar's CA outlives a restart of the sidecar (the jails still trust it) but
            // not the pod; in memory, never on the node's disk. Two PEM files.
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Volume::default()
        },
        Volume {
            name: volumes::CREDENTIALS.into(),
            // Always, credentials or not: the operator writes the Secret once a policy of the
            // namespace has credentials, and the kubelet fills an optional Secret volume in
            // when it appears, so credentials added later reach the running sidecar (a header
            // credential needs nothing of the jailed process).
            secret: Some(SecretVolumeSource {
                secret_name: Some(objects::CREDENTIALS_SECRET.into()),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Env vars the jailed container gets (names the user already set are left alone).
fn jailed_env(injection: &Injection<'_>, target: &JailTarget) -> Vec<EnvVar> {
    let container = target.name.as_str();
    let mut vars: Vec<EnvVar> = injection
        .row
        .env
        .iter()
        .map(|(k, v)| value_env(k, v))
        .collect();
    if injection.runtime == JailRuntime::Builtin {
        if let Some(tier) = injection.row.tier {
            vars.push(value_env(env::TIER, tier.as_str()));
            if tier == Tier::Landlock {
                vars.push(value_env(
                    env::PROXY_PORT,
                    &ports::EXPLICIT_PROXY.to_string(),
                ));
            }
        }
        vars.push(value_env(env::PROXY_SOCKET, paths::PROXY_SOCKET));
        vars.push(value_env(env::CONTAINER_NAME, container));
        vars.push(field_env(env::POD_NAME, "metadata.name"));
        vars.push(field_env(env::POD_NAMESPACE, "metadata.namespace"));
        if !target.inbound_ports.is_empty() {
            vars.push(value_env(
                env::INBOUND_PORTS,
                &port_list(&target.inbound_ports),
            ));
        }
        if !target.pod_local_ports.is_empty() {
            vars.push(value_env(
                env::POD_LOCAL_PORTS,
                &boundary_api::policy::pod_local_ports_value(
                    target.pod_local_ports.iter().copied(),
                ),
            ));
        }
    }
    vars
}

/// Jails one container: env, mounts, capabilities, seccomp, command. Returns the record.
fn jail_container(
    c: &mut Container,
    injection: &Injection<'_>,
    target: &JailTarget,
    warnings: &mut Vec<String>,
) -> JailedContainer {
    let seccomp = target.seccomp.as_ref();
    let builtin = injection.runtime == JailRuntime::Builtin;
    let name = c.name.clone();
    let mut record = JailedContainer {
        name: name.clone(),
        ..JailedContainer::default()
    };
    let env = c.env.get_or_insert_with(Vec::new);
    // Placeholders before this webhook's own vars: a pod re-created from its injected spec
    // keeps them where they are (`strip_recognised` leaves them for the next injection to
    // overwrite) while the own vars are removed and appended again, so the order comes out
    // the same.
    if builtin {
        set_placeholders(env, &injection.credentials, &mut record, warnings);
    }
    for var in jailed_env(injection, target) {
        if env.iter().any(|e| e.name == var.name) {
            warnings.push(format!(
                "container {name} sets {} itself; its value is kept",
                var.name
            ));
        } else {
            record.added_env.push(var.name.clone());
            env.push(var);
        }
    }
    if builtin && injection.credentials.sidecar_identity {
        take_aws_identity(c, &mut record, warnings);
    }
    if c.env.as_ref().is_some_and(Vec::is_empty) {
        c.env = None;
    }
    if builtin {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        let mut on_path = mount(volumes::BIN, paths::BOUNDARY_ON_PATH, true);
        on_path.sub_path = Some("boundary".into());
        let wanted = [
            mount(volumes::BIN, paths::BIN_DIR, true),
            mount(volumes::RUN, paths::RUN_DIR, true),
            on_path,
        ];
        for m in wanted {
            if mounts.iter().any(|x| x.mount_path == m.mount_path) {
                warnings.push(format!(
                    "container {name} already mounts something at {}; left as it is",
                    m.mount_path
                ));
            } else {
                record.added_mounts.push(m.mount_path.clone());
                mounts.push(m);
            }
        }
    }
    if !injection.row.capabilities.is_empty() {
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
        let add = caps.add.get_or_insert_with(Vec::new);
        for cap in injection.row.capabilities {
            let present = add.iter().any(|a| {
                a.trim_start_matches("CAP_")
                    .trim_start_matches("cap_")
                    .eq_ignore_ascii_case(cap)
            });
            if !present {
                add.push((*cap).to_owned());
                record.added_capabilities.push((*cap).to_owned());
            }
        }
    }
    if let Some(profile) = seccomp {
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        record.seccomp_replaced = Some(SeccompBefore {
            profile: sc.seccomp_profile.clone(),
        });
        sc.seccomp_profile = Some(profile.clone());
    }
    if injection.wrap_command && builtin {
        let mut wrapped = vec![paths::BOUNDARY_BIN.to_owned(), "run".into(), "--".into()];
        if let Some(command) = c.command.clone().filter(|own| !own.is_empty()) {
            wrapped.extend(command.iter().cloned());
            c.command = Some(wrapped);
            record.wrapped_command = Some(command);
        } else if let Some(image) = injection.images.get(&name) {
            record.image_command = Some(wrap_image_command(c, wrapped, image));
        }
    }
    record
}

/// Sets each credential's placeholder: appended, or in place of the container's own entry of
/// that name (so `$(NAME)` references after it see the placeholder too).
fn set_placeholders(
    env: &mut Vec<EnvVar>,
    credentials: &CredentialInjection,
    record: &mut JailedContainer,
    warnings: &mut Vec<String>,
) {
    for (name, placeholder) in &credentials.placeholders {
        let var = value_env(name, placeholder);
        // Every entry of the name: with duplicates the last one is the one the container gets.
        let mut own = env.iter_mut().filter(|e| e.name == *name).peekable();
        if own.peek().is_none() {
            record.added_env.push(name.clone());
            env.push(var);
            continue;
        }
        let mut warned = false;
        for entry in own {
            let mut before = std::mem::replace(entry, var.clone());
            if !credentials::is_placeholder(&before) {
                if !warned {
                    warnings.push(format!(
                        "container {} sets {name} itself; it holds the credential's placeholder instead (remove {name} from the pod spec: the proxy puts the real value in)",
                        record.name
                    ));
                    warned = true;
                }
                if before.value_from.is_none() {
                    // Possibly the real key: not kept in the status annotation, readable by
                    // whoever reads the pod.
                    before.value = None;
                }
            }
            record.replaced_env.push(before);
        }
    }
}

/// Takes the pod's AWS identity (env, token mounts) out of a jailed container.
fn take_aws_identity(c: &mut Container, record: &mut JailedContainer, warnings: &mut Vec<String>) {
    if let Some(env) = c.env.as_mut() {
        let (gone, kept): (Vec<EnvVar>, Vec<EnvVar>) = std::mem::take(env)
            .into_iter()
            .partition(|e| AWS_IDENTITY_ENV.contains(&e.name.as_str()));
        *env = kept;
        record.removed_env = gone;
    }
    if let Some(mounts) = c.volume_mounts.as_mut() {
        let (gone, kept): (Vec<VolumeMount>, Vec<VolumeMount>) = std::mem::take(mounts)
            .into_iter()
            .partition(|m| AWS_TOKEN_VOLUMES.contains(&m.name.as_str()));
        *mounts = kept;
        record.removed_mounts = gone;
        if mounts.is_empty() {
            c.volume_mounts = None;
        }
    }
    if !record.removed_env.is_empty() || !record.removed_mounts.is_empty() {
        let taken: Vec<String> = record
            .removed_env
            .iter()
            .map(|e| format!("env {}", e.name))
            .chain(
                record
                    .removed_mounts
                    .iter()
                    .map(|m| format!("the mount of volume {}", m.name)),
            )
            .collect();
        warnings.push(format!(
            "container {} does not get the pod's AWS identity ({}): a credential signs with the sidecar's AWS identity, which the jailed containers must not hold; the sidecar has it",
            c.name,
            taken.join(", ")
        ));
    }
}

/// Kubernetes runs the image's `Entrypoint` when `command` is empty, with `args`, or with the
/// image's `Cmd` when `args` are empty too. Wrapped: `command: [boundary run --] + Entrypoint`,
/// `args` kept, or the image's `Cmd` when there are none.
fn wrap_image_command(
    c: &mut Container,
    mut wrapped: Vec<String>,
    image: &ImageConfig,
) -> ImageCommand {
    let mut record = ImageCommand {
        digest: image.digest.clone(),
        command: c.command.clone(),
        ..ImageCommand::default()
    };
    wrapped.extend(image.entrypoint.iter().cloned());
    c.command = Some(wrapped);
    if c.args.as_ref().is_none_or(Vec::is_empty) && !image.cmd.is_empty() {
        record.args_from_image = true;
        record.args = c.args.replace(image.cmd.clone());
    }
    record
}

/// Applies `injection` to `pod` (already stripped of any earlier injection). Returns warnings.
pub fn inject(pod: &mut Pod, injection: &Injection<'_>, settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut records = Vec::new();
    let builtin = injection.runtime == JailRuntime::Builtin;
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    let mut identity = injection.credentials.carried_identity.clone();
    for target in &injection.containers {
        if let Some(c) = spec.containers.iter_mut().find(|c| c.name == target.name) {
            if builtin && injection.credentials.sidecar_identity {
                identity.merge(AwsIdentity::of(c));
            }
            records.push(jail_container(c, injection, target, &mut warnings));
        }
    }
    // A container's legacy seccomp annotation must agree with the profile set on it.
    for record in &mut records {
        let key = crate::seccomp::container_annotation(&record.name);
        let wanted = injection
            .containers
            .iter()
            .find(|t| t.name == record.name)
            .and_then(|t| t.seccomp.as_ref())
            .and_then(crate::seccomp::annotation_of);
        if let (Some(wanted), Some(annotations)) = (wanted, pod.metadata.annotations.as_mut())
            && let Some(value) = annotations.get_mut(&key)
            && *value != wanted
        {
            record.seccomp_annotation_replaced = Some(std::mem::replace(value, wanted));
        }
    }
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    let sidecar = if builtin {
        injection.sidecar
    } else {
        SidecarKind::None
    };
    if builtin {
        add_sidecar(
            spec,
            sidecar,
            settings,
            &injection.credentials.nonce,
            &identity,
            &records,
        );
    }
    let pin = injection
        .pin
        .as_ref()
        .map(|(requirement, by_field)| pin(spec, requirement, *by_field));
    // Only the builtin runtime has a sidecar that can confirm enforcement.
    let readiness_gate = builtin && settings.enforcement_readiness_gate && {
        let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
        let absent = !gates
            .iter()
            .any(|g| g.condition_type == conditions::ENFORCED);
        if absent {
            gates.push(PodReadinessGate {
                condition_type: conditions::ENFORCED.into(),
            });
        }
        absent
    };
    if builtin && injection.credentials.sidecar_identity {
        skip_in_eks_webhook(pod, &mut records);
    }
    let status = InjectionStatus {
        version: STATUS_VERSION,
        runtime: injection.runtime,
        row: injection.row.name.into(),
        tier: injection.row.tier,
        mode: injection.mode,
        policies: injection.policies.clone(),
        sidecar,
        containers: records,
        pin,
        readiness_gate,
    };
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        annotations::STATUS.into(),
        serde_json::to_string(&status).unwrap_or_default(),
    );
    let tier = injection.row.tier.map_or(injection.row.name, Tier::as_str);
    annotations.insert(annotations::TIER.into(), tier.into());
    annotations.insert(annotations::POLICY.into(), injection.policies.join(","));
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(labels::JAILED.into(), tier.into());
    warnings
}

/// Adds the volumes, the install container and the sidecar.
fn add_sidecar(
    spec: &mut PodSpec,
    sidecar: SidecarKind,
    settings: &Settings,
    nonce: &str,
    identity: &AwsIdentity,
    records: &[JailedContainer],
) {
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes_to_add());
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    init.push(install_container(settings));
    match sidecar {
        SidecarKind::Native => init.push(sidecar_container(settings, true, nonce, identity)),
        SidecarKind::Classic => {
            let mut container = sidecar_container(settings, false, nonce, identity);
            let exit_when = match spec.restart_policy.as_deref() {
                Some("Never") => exit_when::ALL_EXITED,
                Some("OnFailure") => exit_when::ALL_SUCCEEDED,
                _ => exit_when::NEVER,
            };
            // Without native sidecars nothing else ends the sidecar of a pod that runs to
            // completion (a Job would never complete).
            if exit_when != exit_when::NEVER {
                let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
                container.env.get_or_insert_with(Vec::new).extend([
                    value_env(env::JAILED_CONTAINERS, &names.join(",")),
                    value_env(env::EXIT_WHEN, exit_when),
                ]);
            }
            spec.containers.push(container);
        }
        SidecarKind::None => {}
    }
}

/// Names the jailed containers in EKS's [`EKS_SKIP_CONTAINERS`], so the pod's AWS identity stays
/// out of them when EKS's webhook runs after this one; records whom it added.
fn skip_in_eks_webhook(pod: &mut Pod, records: &mut [JailedContainer]) {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut names: Vec<String> = annotations
        .get(EKS_SKIP_CONTAINERS)
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let listed = names.len();
    for r in records.iter_mut() {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
            r.skipped_by_eks_webhook = true;
        }
    }
    if names.len() != listed {
        annotations.insert(EKS_SKIP_CONTAINERS.into(), names.join(","));
    }
    if annotations.is_empty() {
        pod.metadata.annotations = None;
    }
}

/// Adds `requirement` to every required node-selector term (creating one when there is none).
fn pin(spec: &mut PodSpec, requirement: &NodeSelectorRequirement, by_field: bool) -> Pin {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let created_affinity = node_affinity
        .required_during_scheduling_ignored_during_execution
        .is_none();
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        let list = if by_field {
            &mut term.match_fields
        } else {
            &mut term.match_expressions
        };
        list.get_or_insert_with(Vec::new).push(requirement.clone());
    }
    Pin {
        requirement: requirement.clone(),
        by_field,
        created_affinity,
    }
}

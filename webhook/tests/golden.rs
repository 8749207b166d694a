//! Golden tests of the planner: one case per row of each table, plus mixed node pools, pinning,
//! opt-out, reinvocation, Windows nodes, hostNetwork pods and Pod Security levels, and image
//! configs as the server looked them up (`images:`: wrapCommand from the image, image users).
//!
//! Each `tests/golden/<group>/<case>.yaml` is an input (pod, namespace, policies, nodes, cluster
//! version; shorthand defaults below); `<case>.golden.yaml` next to it is the expected verdict,
//! warnings and JSON Patch. `UPDATE_GOLDEN=1 cargo test -p boundary-webhook --test golden`
//! rewrites the golden files (review the diff). Every case is also planned a second time on
//! the patched pod: the second patch must be empty and the verdict the same (idempotent
//! reinvocation).
//!
//! With `GOLDEN_PODS_DIR=<dir>` set, every case's patched pod is also written there as
//! `<group>--<case>.json` (`{clusterMinor, verdict, pod}`): tests/scripts/test-webhook-pod-schemas.sh
//! validates them against the Kubernetes schemas of the versions they were planned for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use boundary_api::JailRuntime;
use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy};
use boundary_api::nodes::NodeFacts;
use boundary_webhook::classes::NodeClasses;
use boundary_webhook::guard::Jailing;
use boundary_webhook::image::ImageConfig;
use boundary_webhook::inject::Settings;
use boundary_webhook::plan::{Cluster, Decision, Input, Verdict, plan};
use boundary_webhook::policy_index::ClusterPolicies;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Deserialize;
use serde_json::{Value, json};

/// One input file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    /// What the case shows.
    description: String,
    /// Apiserver minor version (default 33).
    #[serde(default)]
    cluster_minor: Option<u32>,
    /// Namespace labels (default: injection enabled).
    #[serde(default)]
    namespace_labels: Option<BTreeMap<String, String>>,
    /// Merged (JSON merge patch) into the default policy's spec; ignored when `policies` is set.
    #[serde(default)]
    policy: Option<Value>,
    /// Full list of policies (`{name, spec}`).
    #[serde(default)]
    policies: Option<Vec<Value>>,
    /// Cluster policies (`{name, spec}`); those whose namespaceSelector selects the pod's
    /// namespace reach the planner, as the live view hands them over.
    #[serde(default)]
    cluster_policies: Vec<Value>,
    /// The webhook's `--required-namespaces`.
    #[serde(default)]
    required_namespaces: Vec<String>,
    /// The webhook's `--opt-out-service-accounts`.
    #[serde(default)]
    opt_out_service_accounts: Vec<String>,
    /// Nodes in shorthand.
    #[serde(default)]
    nodes: Vec<NodeShorthand>,
    /// Merged into the default pod.
    #[serde(default)]
    pod: Option<Value>,
    /// The webhook's `--enforcement-readiness-gate` (default off).
    #[serde(default)]
    enforcement_readiness_gate: bool,
    /// Image configs the server looked up, by container name.
    #[serde(default)]
    images: BTreeMap<String, ImageShorthand>,
    /// The webhook's `--sidecar-audit-format` (default json).
    #[serde(default)]
    sidecar_audit_format: Option<String>,
    /// The webhook's `--sidecar-worker-threads` (default 1).
    #[serde(default)]
    sidecar_worker_threads: Option<u16>,
}

/// An image config (`entrypoint`, `cmd`, `user`), or the lookup's `error`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ImageShorthand {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    user: String,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NodeShorthand {
    name: String,
    #[serde(default)]
    os_image: String,
    #[serde(default)]
    kernel: String,
    #[serde(default)]
    operating_system: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<Value>,
    #[serde(default)]
    unschedulable: bool,
}

impl NodeShorthand {
    fn node(&self) -> anyhow::Result<Node> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"taints": self.taints, "unschedulable": self.unschedulable},
            "status": {"nodeInfo": {
                "osImage": self.os_image, "kernelVersion": self.kernel,
                "operatingSystem": self.operating_system.as_deref().unwrap_or("linux"),
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://1.7.0",
                "kubeProxyVersion": "", "kubeletVersion": "v1.33.0", "machineID": "", "systemUUID": ""
            }}
        }))?)
    }
}

/// The request UID of every golden review (the placeholder nonce derives from it).
const GOLDEN_REVIEW_UID: &str = "0f6ad3c2-5a5e-4d0e-9b8e-golden000001";

fn default_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "agents", "labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1", "command": ["claude"]}]}
    })
}

fn settings() -> Settings {
    Settings {
        image: "registry.example/agent-boundary/jail-runtime:1.0.0".into(),
        ..Settings::default()
    }
}

struct Loaded {
    pod: Pod,
    settings: Settings,
    namespace_labels: BTreeMap<String, String>,
    policies: Vec<Arc<BoundaryPolicy>>,
    cluster_policies: Arc<[Arc<ClusterBoundaryPolicy>]>,
    jailing: Jailing,
    nodes: NodeClasses,
    cluster: Cluster,
    images: BTreeMap<String, Result<ImageConfig, String>>,
}

fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path)?;
    let case: Case =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}", path.display()))?;
    anyhow::ensure!(
        !case.description.is_empty(),
        "{}: empty description",
        path.display()
    );
    let mut pod = default_pod();
    if let Some(patch) = &case.pod {
        json_patch::merge(&mut pod, patch);
    }
    let policies = match (&case.policies, &case.policy) {
        (Some(list), _) => list.clone(),
        (None, overrides) => {
            let mut spec = json!({"podSelector": {}, "allow": ["domain=api.anthropic.com"]});
            if let Some(overrides) = overrides {
                json_patch::merge(&mut spec, overrides);
            }
            vec![json!({"name": "agents", "spec": spec})]
        }
    };
    let policies = policies
        .into_iter()
        .map(|p| {
            serde_json::from_value(json!({
                "apiVersion": "agentboundary.dev/v1alpha1",
                "kind": "BoundaryPolicy",
                "metadata": {"name": p["name"], "namespace": "agents"},
                "spec": p["spec"],
            }))
        })
        .collect::<Result<Vec<BoundaryPolicy>, _>>()?
        .into_iter()
        .map(Arc::new)
        .collect();
    let nodes = case
        .nodes
        .iter()
        .map(|n| n.node().map(|node| NodeFacts::from_node(&node)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let namespace_labels = case
        .namespace_labels
        .unwrap_or_else(|| BTreeMap::from([("agentboundary.dev/inject".into(), "enabled".into())]));
    let cluster_policies = case
        .cluster_policies
        .iter()
        .map(|p| {
            serde_json::from_value(json!({
                "apiVersion": "agentboundary.dev/v1alpha1",
                "kind": "ClusterBoundaryPolicy",
                "metadata": {"name": p["name"]},
                "spec": p["spec"],
            }))
        })
        .collect::<Result<Vec<ClusterBoundaryPolicy>, _>>()?;
    // Those selecting the pod's namespace, as the webhook's views pick them.
    let cluster_policies =
        ClusterPolicies::from(cluster_policies).selecting("agents", &namespace_labels);
    Ok(Loaded {
        pod: serde_json::from_value(pod)?,
        cluster_policies,
        jailing: Jailing {
            required_namespaces: case.required_namespaces.into_iter().collect(),
            opt_out_service_accounts: case.opt_out_service_accounts.into_iter().collect(),
        },
        settings: Settings {
            enforcement_readiness_gate: case.enforcement_readiness_gate,
            sidecar_audit_format: case.sidecar_audit_format.unwrap_or_else(|| "json".into()),
            sidecar_worker_threads: case.sidecar_worker_threads.unwrap_or(1),
            ..settings()
        },
        namespace_labels,
        policies,
        nodes: NodeClasses::new(nodes),
        cluster: Cluster {
            minor: case.cluster_minor.unwrap_or(33),
        },
        images: case
            .images
            .into_iter()
            .map(|(name, image)| {
                let result = match image.error {
                    Some(error) => Err(error),
                    None => Ok(ImageConfig {
                        digest: format!("sha256:{}", "ab".repeat(32)),
                        entrypoint: image.entrypoint,
                        cmd: image.cmd,
                        user: image.user,
                    }),
                };
                (name, result)
            })
            .collect(),
    })
}

fn decide(loaded: &Loaded, pod: &Pod, settings: &Settings) -> Decision {
    plan(&input(loaded, pod, settings))
}

fn input<'a>(loaded: &'a Loaded, pod: &'a Pod, settings: &'a Settings) -> Input<'a> {
    Input {
        pod,
        namespace_labels: &loaded.namespace_labels,
        policies: &loaded.policies,
        cluster_policies: &loaded.cluster_policies,
        jailing: &loaded.jailing,
        nodes: &loaded.nodes,
        cluster: loaded.cluster,
        settings,
        images: &loaded.images,
        review_uid: GOLDEN_REVIEW_UID,
    }
}

/// The golden output of one case.
fn output(decision: &Decision, original: &Pod) -> anyhow::Result<String> {
    let patch = decision.patch(original);
    let value = json!({
        "verdict": decision.verdict,
        "warnings": decision.warnings,
        "patch": patch,
    });
    Ok(serde_yaml_ng::to_string(&value)?)
}

fn cases() -> anyhow::Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut found = Vec::new();
    for group in std::fs::read_dir(&root)? {
        let group = group?.path();
        if !group.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&group)? {
            let file = file?.path();
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            // Case files are written by this project in lower case.
            let is_case =
                file.extension().is_some_and(|e| e == "yaml") && !name.ends_with(".golden.yaml");
            if is_case {
                found.push(file);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// How nodes are grouped changes the cost of planning, never the decision: with every label
/// indexed per node (threshold 0) each case plans as with the default grouping.
#[test]
fn every_case_plans_the_same_whatever_the_node_grouping() -> anyhow::Result<()> {
    for path in &cases()? {
        let mut loaded = load(path)?;
        let settings = loaded.settings.clone();
        let grouped = output(&decide(&loaded, &loaded.pod, &settings), &loaded.pod)?;
        let nodes = loaded.nodes.nodes().to_vec();
        loaded.nodes = NodeClasses::with_per_node_threshold(nodes, 0);
        let indexed = output(&decide(&loaded, &loaded.pod, &settings), &loaded.pod)?;
        assert_eq!(grouped, indexed, "{}", path.display());
    }
    Ok(())
}

#[test]
fn every_case_matches_its_golden_file_and_reinvocation_changes_nothing() -> anyhow::Result<()> {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let pods_dir = std::env::var_os("GOLDEN_PODS_DIR").map(PathBuf::from);
    let mut failures = Vec::new();
    let all = cases()?;
    assert!(
        all.len() >= 30,
        "expected the whole golden suite, found {}",
        all.len()
    );
    for path in &all {
        let loaded = load(path)?;
        let settings = &loaded.settings;
        let decision = decide(&loaded, &loaded.pod, settings);
        let got = output(&decision, &loaded.pod)?;
        let golden = path.with_extension("golden.yaml");
        if update {
            std::fs::write(&golden, &got)?;
        } else {
            let want = std::fs::read_to_string(&golden).with_context(|| {
                format!("{} is missing: run with UPDATE_GOLDEN=1", golden.display())
            })?;
            if want != got {
                failures.push(format!(
                    "{}:\n{}",
                    path.display(),
                    pretty_assertions::StrComparison::new(&want, &got)
                ));
            }
        }

        // The patch turns the input into exactly the planned pod.
        let patch = decision.patch(&loaded.pod);
        let mut patched = serde_json::to_value(&loaded.pod)?;
        json_patch::patch(&mut patched, &patch)
            .with_context(|| format!("{}: the patch does not apply", path.display()))?;
        // The patch as sent is written without building it: the bytes `serde_json` writes
        // of the built one (nothing when there are no operations).
        let sent = String::from_utf8(decision.patch_json(&loaded.pod))?;
        let built = if patch.0.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&patch)?
        };
        if sent != built {
            failures.push(format!(
                "{}: the written patch differs from the built one:\n{sent}\n{built}",
                path.display(),
            ));
        }
        if patched != serde_json::to_value(&decision.pod)? {
            failures.push(format!(
                "{}: the patch does not give the planned pod",
                path.display()
            ));
        }
        if let Some(dir) = &pods_dir {
            write_patched_pod(dir, path, &loaded, &decision, &patched)?;
        }
        // Reinvocation: the patched pod planned again gives the same verdict and no patch.
        let patched: Pod = serde_json::from_value(patched)?;
        if let Some(failure) = ca_volume_misplaced(&patched) {
            failures.push(format!("{}: {failure}", path.display()));
        }
        if let Some(failure) = credentials_volume_misplaced(&patched) {
            failures.push(format!("{}: {failure}", path.display()));
        }
        if let Some(failure) = recreated_pod_differs(&loaded, &patched, &decision, settings)? {
            failures.push(format!("{}: {failure}", path.display()));
        }
        let again = decide(&loaded, &patched, settings);
        let second = again.patch(&patched);
        if !second.0.is_empty() || again.verdict != decision.verdict {
            failures.push(format!(
                "{}: reinvocation is not idempotent: {:?} then {:?}, second patch {}",
                path.display(),
                decision.verdict,
                again.verdict,
                serde_json::to_string(&second)?
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} golden case(s) failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// Writes the pod the apiserver would store for a case, for the schema validation of
/// tests/scripts/test-webhook-pod-schemas.sh.
fn write_patched_pod(
    dir: &Path,
    case: &Path,
    loaded: &Loaded,
    decision: &Decision,
    patched: &Value,
) -> anyhow::Result<()> {
    let group = case
        .parent()
        .and_then(Path::file_name)
        .and_then(|g| g.to_str())
        .unwrap_or_default();
    let name = case
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let file = dir.join(format!("{group}--{name}.json"));
    let record = json!({
        "clusterMinor": loaded.cluster.minor,
        "verdict": decision.verdict,
        "pod": patched,
    });
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", file.display()))
}

/// The sidecar's CA volume (its private key) must be mounted by the sidecar and by no other
/// container: a jailed container that mounted it could read the key and mint certificates its
/// own jail trusts.
fn ca_volume_misplaced(pod: &Pod) -> Option<String> {
    use boundary_api::contract::{containers, paths, volumes};
    let spec = pod.spec.as_ref()?;
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut sidecar_mounts = false;
    for c in all {
        let mounts_ca = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == volumes::CA || m.mount_path.starts_with(paths::CA_DIR));
        if c.name == containers::SIDECAR {
            sidecar_mounts = mounts_ca;
        } else if mounts_ca {
            return Some(format!(
                "container {} mounts the sidecar's CA volume",
                c.name
            ));
        }
    }
    let has_volume = spec.volumes.iter().flatten().any(|v| v.name == volumes::CA);
    if has_volume != sidecar_mounts {
        return Some(format!(
            "the CA volume is {} but the sidecar {} it",
            if has_volume { "there" } else { "missing" },
            if sidecar_mounts {
                "mounts"
            } else {
                "does not mount"
            }
        ));
    }
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volumes::CA)
    {
        let memory = volume
            .empty_dir
            .as_ref()
            .is_some_and(|e| e.medium.as_deref() == Some("Memory") && e.size_limit.is_some());
        if !memory {
            return Some("the CA volume is not a size-limited memory emptyDir".into());
        }
    }
    None
}

/// The credentials Secret (every credential's real value) must be mounted by the sidecar, read
/// only, and by no other container; the volume is optional (pods start before the operator
/// writes it).
fn credentials_volume_misplaced(pod: &Pod) -> Option<String> {
    use boundary_api::contract::{containers, objects, paths, volumes};
    let spec = pod.spec.as_ref()?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volumes::CREDENTIALS);
    let mut sidecar_mounts = false;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for m in c.volume_mounts.iter().flatten() {
            let ours =
                m.name == volumes::CREDENTIALS || m.mount_path.starts_with(paths::CREDENTIALS_DIR);
            if !ours {
                continue;
            }
            if c.name != containers::SIDECAR {
                return Some(format!(
                    "container {} mounts the credentials Secret",
                    c.name
                ));
            }
            if m.read_only != Some(true) || m.mount_path != paths::CREDENTIALS_DIR {
                return Some(
                    "the sidecar mounts the credentials Secret writable or elsewhere".into(),
                );
            }
            sidecar_mounts = true;
        }
    }
    match volume {
        None if sidecar_mounts => {
            Some("the sidecar mounts a credentials volume that is not there".into())
        }
        None => None,
        Some(_) if !sidecar_mounts => {
            Some("the credentials volume is there but the sidecar does not mount it".into())
        }
        Some(v) => {
            let secret = v.secret.as_ref();
            let right = secret.is_some_and(|s| {
                s.secret_name.as_deref() == Some(objects::CREDENTIALS_SECRET)
                    && s.optional == Some(true)
            });
            (!right).then(|| {
                "the credentials volume is not the optional Secret agent-boundary-credentials"
                    .into()
            })
        }
    }
}

/// A jailed pod re-created from its mutated spec without the status annotation (a controller
/// that copied it, `kubectl get -o yaml | kubectl create -f -`) must come out jailed once, as the
/// first time: the same containers, commands, env, volumes and labels.
fn recreated_pod_differs(
    loaded: &Loaded,
    patched: &Pod,
    decision: &Decision,
    settings: &Settings,
) -> anyhow::Result<Option<String>> {
    // Only the builtin runtime's parts carry markers (the proxy socket, the `boundary` binary);
    // the coder-boundary rows' capabilities and env look like the user's own. A BOUNDARY_* var
    // the user set is indistinguishable from the injected one once the record is gone.
    let user_sets_boundary_env = loaded.pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
        c.env
            .iter()
            .flatten()
            .any(|e| e.name.starts_with("BOUNDARY_"))
    });
    if !matches!(
        decision.verdict,
        Verdict::Jailed {
            runtime: JailRuntime::Builtin,
            ..
        }
    ) || user_sets_boundary_env
    {
        return Ok(None);
    }
    let mut copy = patched.clone();
    if let Some(a) = copy.metadata.annotations.as_mut() {
        a.remove("agentboundary.dev/status");
    }
    let recreated = apply(&copy, &decide(loaded, &copy, settings))?;
    let without_status = |pod: &Pod| -> anyhow::Result<Value> {
        let mut v = serde_json::to_value(pod)?;
        if let Some(a) = v["metadata"]["annotations"].as_object_mut() {
            a.remove("agentboundary.dev/status");
        }
        Ok(v)
    };
    let (want, got) = (without_status(patched)?, without_status(&recreated)?);
    Ok((want != got).then(|| {
        format!(
            "re-created without its status annotation it is not jailed the same way:\n{}",
            pretty_assertions::StrComparison::new(
                &serde_yaml_ng::to_string(&want).unwrap_or_default(),
                &serde_yaml_ng::to_string(&got).unwrap_or_default()
            )
        )
    }))
}

fn loaded_case(name: &str) -> anyhow::Result<Loaded> {
    load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name),
    )
}

fn apply(pod: &Pod, decision: &Decision) -> anyhow::Result<Pod> {
    let mut value = serde_json::to_value(pod)?;
    json_patch::patch(&mut value, &decision.patch(pod))?;
    Ok(serde_json::from_value(value)?)
}

#[test]
fn a_container_added_by_another_webhook_is_jailed_on_reinvocation_without_double_injection()
-> anyhow::Result<()> {
    let loaded = loaded_case("builtin/userns-amazon-linux-2023.yaml")?;
    let settings = settings();
    let first = decide(&loaded, &loaded.pod, &settings);
    let mut pod = apply(&loaded.pod, &first)?;
    // Another webhook appends a container after ours ran.
    pod.spec
        .as_mut()
        .unwrap()
        .containers
        .push(serde_json::from_value(
            json!({"name": "late", "image": "late:1"}),
        )?);
    let again = decide(&loaded, &pod, &settings);
    let result = apply(&pod, &again)?;
    let spec = result.spec.as_ref().unwrap();
    let init: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["boundary-install", "boundary"]);
    let late = spec.containers.iter().find(|c| c.name == "late").unwrap();
    assert_eq!(
        late.env
            .iter()
            .flatten()
            .filter(|e| e.name == "BOUNDARY_TIER")
            .count(),
        1
    );
    let agent = &spec.containers[0];
    assert_eq!(
        agent
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "BOUNDARY_TIER")
            .count(),
        1
    );
    // Each injected volume once.
    assert_eq!(
        spec.volumes.as_ref().unwrap().len(),
        boundary_api::contract::volumes::ALL.len()
    );
    // And a third call changes nothing.
    let third = decide(&loaded, &result, &settings);
    assert!(third.patch(&result).0.is_empty());
    Ok(())
}

#[test]
fn a_new_plan_replaces_the_old_injection_exactly() -> anyhow::Result<()> {
    // Injected for Bottlerocket (capabilities added), then planned again where userns works:
    // the capabilities this webhook added go, the user's own stay.
    let bottlerocket = loaded_case("builtin/capabilities-merged.yaml")?;
    let settings = settings();
    let first = decide(&bottlerocket, &bottlerocket.pod, &settings);
    let injected = apply(&bottlerocket.pod, &first)?;
    let amazon = loaded_case("builtin/userns-amazon-linux-2023.yaml")?;
    let second = decide(&amazon, &injected, &settings);
    let result = apply(&injected, &second)?;
    let caps = result.spec.as_ref().unwrap().containers[0]
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap();
    assert_eq!(caps.add.unwrap(), ["cap_net_admin"]);
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert_eq!(
        result.metadata.annotations.as_ref().unwrap()["agentboundary.dev/tier"],
        "userns"
    );
    Ok(())
}

#[test]
fn fields_this_build_does_not_know_survive_the_patch() -> anyhow::Result<()> {
    let loaded = loaded_case("builtin/privileged-netns-bottlerocket.yaml")?;
    let mut raw = serde_json::to_value(&loaded.pod)?;
    raw["spec"]["containers"][0]["futureField"] = json!({"keep": true});
    raw["spec"]["futurePodField"] = json!("keep");
    raw["status"] = json!({"futureStatus": 1});
    let decision = decide(&loaded, &loaded.pod, &settings());
    json_patch::patch(&mut raw, &decision.patch(&loaded.pod))?;
    assert_eq!(
        raw["spec"]["containers"][0]["futureField"],
        json!({"keep": true})
    );
    assert_eq!(raw["spec"]["futurePodField"], "keep");
    assert_eq!(
        raw["spec"]["containers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "SYS_ADMIN"])
    );
    Ok(())
}

#[test]
fn the_plan_names_the_image_configs_it_needs_and_no_others() -> anyhow::Result<()> {
    let settings = settings();
    let wanted = |case: &str| -> anyhow::Result<Vec<(String, String)>> {
        let loaded = loaded_case(case)?;
        Ok(decide(&loaded, &loaded.pod, &settings)
            .wanted_images
            .into_iter()
            .map(|w| (w.container, w.image))
            .collect())
    };
    let agent = vec![("agent".to_owned(), "registry.example/agent:1".to_owned())];
    // The command (wrapCommand without command), and the user (a tier that needs uid 0).
    assert_eq!(
        wanted("builtin/wrap-command-without-command-denied.yaml")?,
        agent
    );
    assert_eq!(wanted("builtin/privileged-netns-bottlerocket.yaml")?, agent);
    // Nothing when the pod spec answers (a command; userns needs no root), or it was read.
    assert!(wanted("builtin/wrap-command.yaml")?.is_empty());
    assert!(wanted("builtin/userns-amazon-linux-2023.yaml")?.is_empty());
    assert!(wanted("builtin/privileged-netns-as-root.yaml")?.is_empty());
    assert!(wanted("images/entrypoint-and-cmd.yaml")?.is_empty());
    assert!(wanted("images/image-user-unreadable.yaml")?.is_empty());
    Ok(())
}

#[test]
fn a_pod_injected_before_the_ca_volume_existed_gets_it_once_and_only_in_the_sidecar()
-> anyhow::Result<()> {
    use boundary_api::contract::{containers, env, volumes};
    let loaded = loaded_case("builtin/userns-amazon-linux-2023.yaml")?;
    let settings = settings();
    let current = apply(&loaded.pod, &decide(&loaded, &loaded.pod, &settings))?;
    // The same pod as an older webhook injected it (no CA volume, mount or env), re-created
    // from its spec without the status record, and as reinvoked with the record.
    let mut older = current.clone();
    let spec = older.spec.as_mut().unwrap();
    spec.volumes
        .as_mut()
        .unwrap()
        .retain(|v| v.name != volumes::CA);
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
        .filter(|c| c.name == containers::SIDECAR)
    {
        c.volume_mounts
            .as_mut()
            .unwrap()
            .retain(|m| m.name != volumes::CA);
        c.env.as_mut().unwrap().retain(|e| e.name != env::CA_DIR);
    }
    let mut recreated = older.clone();
    recreated
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("agentboundary.dev/status");
    for pod in [older, recreated] {
        let result = apply(&pod, &decide(&loaded, &pod, &settings))?;
        let spec = result.spec.as_ref().unwrap();
        let ca_volumes = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.name == volumes::CA)
            .count();
        assert_eq!(ca_volumes, 1);
        assert_eq!(ca_volume_misplaced(&result), None);
        assert_eq!(
            serde_json::to_value(&result.spec)?,
            serde_json::to_value(&current.spec)?,
            "injected as a new pod is"
        );
    }
    Ok(())
}

fn env_of<'p>(pod: &'p Pod, container: &str) -> Vec<(&'p str, Option<&'p str>)> {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .unwrap()
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect()
}

fn mounts_of<'p>(pod: &'p Pod, container: &str) -> Vec<&'p str> {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .unwrap()
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect()
}

#[test]
fn the_jailed_container_sees_placeholders_that_the_sidecar_can_tell_by_its_nonce()
-> anyhow::Result<()> {
    use boundary_api::credentials::{is_nonce, nonce_from, placeholder};
    let loaded = loaded_case("credentials/basic.yaml")?;
    let pod = apply(&loaded.pod, &decide(&loaded, &loaded.pod, &settings()))?;
    let sidecar = env_of(&pod, "boundary");
    let nonce = sidecar
        .iter()
        .find(|(n, _)| *n == "BOUNDARY_PLACEHOLDER_NONCE")
        .and_then(|(_, v)| *v)
        .unwrap();
    assert!(is_nonce(nonce));
    assert_eq!(nonce, nonce_from(GOLDEN_REVIEW_UID.as_bytes()));
    for container in ["agent", "tools"] {
        let env = env_of(&pod, container);
        let github = placeholder(nonce, "github");
        let openai = placeholder(nonce, "openai");
        assert!(
            env.contains(&("GITHUB_TOKEN", Some(github.as_str()))),
            "{env:?}"
        );
        assert!(
            env.contains(&("OPENAI_API_KEY", Some(openai.as_str()))),
            "{env:?}"
        );
        assert!(
            !env.iter()
                .any(|(n, _)| n.starts_with("BOUNDARY_PLACEHOLDER"))
        );
        assert!(!mounts_of(&pod, container).contains(&"boundary-credentials"));
    }
    // Another review of the same pod spec (another pod) gets another nonce.
    let other = plan(&Input {
        review_uid: "another-review",
        ..input(&loaded, &loaded.pod, &settings())
    });
    let other = apply(&loaded.pod, &other)?;
    assert_ne!(env_of(&other, "agent"), env_of(&pod, "agent"));
    // Reinvocation (a new request UID) keeps the pod's nonce.
    let again = plan(&Input {
        review_uid: "the-reinvocation",
        ..input(&loaded, &pod, &settings())
    });
    assert!(again.patch(&pod).0.is_empty());
    Ok(())
}

#[test]
fn a_literal_value_replaced_by_the_placeholder_is_kept_nowhere() -> anyhow::Result<()> {
    let loaded = loaded_case("credentials/literal-env-replaced.yaml")?;
    let pod = apply(&loaded.pod, &decide(&loaded, &loaded.pod, &settings()))?;
    let text = serde_json::to_string(&pod)?;
    assert!(!text.contains("sk-ant-api03"), "{text}");
    // Its position is kept: HOME still follows it.
    let names: Vec<&str> = env_of(&pod, "agent").into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        &names[..3],
        ["ANTHROPIC_API_KEY", "HOME", "ANTHROPIC_API_KEY"]
    );
    // Every entry of the name holds the placeholder (the last one is the one that counts).
    let values: Vec<Option<&str>> = env_of(&pod, "agent")
        .into_iter()
        .filter(|(n, _)| *n == "ANTHROPIC_API_KEY")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.len(), 2);
    assert!(
        values
            .iter()
            .all(|v| v.is_some_and(|v| v.starts_with("boundary-ph-"))),
        "{values:?}"
    );
    Ok(())
}

#[test]
fn the_aws_identity_stays_with_the_sidecar_whichever_webhook_runs_first() -> anyhow::Result<()> {
    let settings = settings();
    let loaded = loaded_case("credentials/aws-sidecar-identity.yaml")?;
    let identity = ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"];
    let holds = |pod: &Pod, container: &str| {
        let env = env_of(pod, container);
        identity.iter().all(|i| env.iter().any(|(n, _)| n == i))
            && mounts_of(pod, container).contains(&"aws-iam-token")
    };
    let lacks = |pod: &Pod, container: &str| {
        let env = env_of(pod, container);
        !identity.iter().any(|i| env.iter().any(|(n, _)| n == i))
            && !mounts_of(pod, container).contains(&"aws-iam-token")
    };
    // EKS's webhook first: the identity moves from the jailed container to the sidecar.
    let first = apply(&loaded.pod, &decide(&loaded, &loaded.pod, &settings))?;
    assert!(lacks(&first, "agent") && holds(&first, "boundary") && holds(&first, "helper"));
    assert_eq!(
        first.metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/skip-containers"],
        "agent"
    );

    // EKS's webhook after this one: it skips the containers the annotation names and gives the
    // others, the sidecar among them, the identity; this webhook is then invoked again.
    let mut bare = loaded.pod.clone();
    for c in &mut bare.spec.as_mut().unwrap().containers {
        c.env
            .as_mut()
            .unwrap()
            .retain(|e| !e.name.starts_with("AWS_ROLE") && !e.name.starts_with("AWS_WEB"));
        c.volume_mounts = None;
    }
    let ours_first = apply(&bare, &decide(&loaded, &bare, &settings))?;
    assert!(lacks(&ours_first, "agent") && lacks(&ours_first, "boundary"));
    let skipped =
        ours_first.metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/skip-containers"]
            .clone();
    let mut eks_after = ours_first.clone();
    let spec = eks_after.spec.as_mut().unwrap();
    let donor = loaded.pod.spec.as_ref().unwrap().containers[1].clone();
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if skipped.split(',').any(|s| s == c.name) || c.name == "boundary-install" {
            continue;
        }
        for e in donor.env.iter().flatten() {
            if !c.env.iter().flatten().any(|x| x.name == e.name) {
                c.env.get_or_insert_with(Vec::new).push(e.clone());
            }
        }
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(donor.volume_mounts.iter().flatten().cloned());
    }
    let reinvoked = apply(&eks_after, &decide(&loaded, &eks_after, &settings))?;
    assert!(
        lacks(&reinvoked, "agent"),
        "jailed container: {:?}",
        env_of(&reinvoked, "agent")
    );
    assert!(
        holds(&reinvoked, "boundary"),
        "sidecar: {:?}",
        env_of(&reinvoked, "boundary")
    );
    // And it is stable.
    let third = decide(&loaded, &reinvoked, &settings);
    assert!(third.patch(&reinvoked).0.is_empty());
    Ok(())
}

#[test]
fn strip_puts_back_what_credentials_replaced_or_took() -> anyhow::Result<()> {
    use boundary_webhook::inject::{InjectionStatus, strip};
    for case in [
        "credentials/own-env-conflict-audit.yaml",
        "credentials/aws-sidecar-identity.yaml",
        "credentials/aws-pod-identity.yaml",
    ] {
        let loaded = loaded_case(case)?;
        let mut pod = apply(&loaded.pod, &decide(&loaded, &loaded.pod, &settings()))?;
        let status = InjectionStatus::of(&pod).unwrap();
        strip(&mut pod, &status);
        let sorted = |p: &Pod| -> anyhow::Result<Vec<Value>> {
            let mut out = Vec::new();
            for c in &p.spec.as_ref().unwrap().containers {
                let mut env: Vec<Value> = c
                    .env
                    .iter()
                    .flatten()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?;
                env.sort_by_key(ToString::to_string);
                let mut mounts: Vec<Value> = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?;
                mounts.sort_by_key(ToString::to_string);
                out.push(json!({"name": c.name, "env": env, "mounts": mounts}));
            }
            Ok(out)
        };
        assert_eq!(sorted(&pod)?, sorted(&loaded.pod)?, "{case}");
        assert_eq!(
            pod.metadata.annotations, loaded.pod.metadata.annotations,
            "{case}"
        );
        // The entry replaced in place comes back in place.
        if case.contains("own-env") {
            assert_eq!(
                serde_json::to_value(&pod.spec.as_ref().unwrap().containers[0].env)?,
                serde_json::to_value(&loaded.pod.spec.as_ref().unwrap().containers[0].env)?
            );
        }
    }
    Ok(())
}

#[test]
fn the_sidecar_only_volume_checks_catch_a_jailed_container_mounting_them() -> anyhow::Result<()> {
    use boundary_api::contract::{paths, volumes};
    let loaded = loaded_case("credentials/header.yaml")?;
    let pod = apply(&loaded.pod, &decide(&loaded, &loaded.pod, &settings()))?;
    assert_eq!(credentials_volume_misplaced(&pod), None);
    assert_eq!(ca_volume_misplaced(&pod), None);
    for (volume, path) in [
        (volumes::CREDENTIALS, paths::CREDENTIALS_DIR),
        (volumes::CA, paths::CA_DIR),
    ] {
        let mut leaked = pod.clone();
        leaked.spec.as_mut().unwrap().containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(
                json!({"name": volume, "mountPath": path}),
            )?);
        let found = credentials_volume_misplaced(&leaked).or_else(|| ca_volume_misplaced(&leaked));
        assert!(
            found.is_some_and(|f| f.contains("container agent")),
            "{volume}"
        );
    }
    // An optional: false Secret would keep pods from starting before the operator writes it.
    let mut required = pod.clone();
    for v in required.spec.as_mut().unwrap().volumes.iter_mut().flatten() {
        if let Some(s) = v.secret.as_mut() {
            s.optional = Some(false);
        }
    }
    assert!(credentials_volume_misplaced(&required).is_some());
    Ok(())
}

/// The patch as this webhook built it before the field-by-field diff of containers: each
/// changed container serialised whole and diffed with `json_patch::diff`. Kept as the
/// reference the property test below compares the webhook's patch with.
mod reference {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
    use k8s_openapi::api::core::v1::Pod;
    use serde::Serialize;
    use serde_json::Value;
    use std::collections::BTreeMap;

    fn value<T: Serialize>(item: &T) -> Value {
        serde_json::to_value(item).unwrap_or(Value::Null)
    }

    fn add(path: PointerBuf, value: Value) -> PatchOperation {
        PatchOperation::Add(AddOperation { path, value })
    }

    fn remove(path: PointerBuf) -> PatchOperation {
        PatchOperation::Remove(RemoveOperation { path })
    }

    fn pointer(tokens: &[&str]) -> PointerBuf {
        PointerBuf::from_tokens(tokens.iter().copied())
    }

    fn prefixed(prefix: &PointerBuf, op: PatchOperation) -> PatchOperation {
        match op {
            PatchOperation::Add(o) => add(prefix.concat(&o.path), o.value),
            PatchOperation::Remove(o) => remove(prefix.concat(&o.path)),
            PatchOperation::Replace(o) => PatchOperation::Replace(ReplaceOperation {
                path: prefix.concat(&o.path),
                value: o.value,
            }),
            other => other,
        }
    }

    fn section<T: Serialize + PartialEq>(
        path: PointerBuf,
        before: Option<&T>,
        after: Option<&T>,
        ops: &mut Vec<PatchOperation>,
    ) {
        match (before, after) {
            (None, None) => {}
            (None, Some(b)) => ops.push(add(path, value(b))),
            (Some(_), None) => ops.push(remove(path)),
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                let diff = json_patch::diff(&value(a), &value(b));
                ops.extend(diff.0.into_iter().map(|op| prefixed(&path, op)));
            }
        }
    }

    fn list<T: Serialize + PartialEq>(
        path: &[&str],
        before: Option<&Vec<T>>,
        after: Option<&Vec<T>>,
        ops: &mut Vec<PatchOperation>,
    ) {
        let at = |i: usize| {
            let mut p = pointer(path);
            p.push_back(i);
            p
        };
        match (before, after) {
            (Some(a), Some(b)) => {
                let common = a.len().min(b.len());
                for i in 0..common {
                    section(at(i), Some(&a[i]), Some(&b[i]), ops);
                }
                for (i, item) in b.iter().enumerate().skip(common) {
                    ops.push(add(at(i), value(item)));
                }
                for i in (common..a.len()).rev() {
                    ops.push(remove(at(i)));
                }
            }
            (a, b) => section(pointer(path), a, b, ops),
        }
    }

    fn string_map(
        field: &str,
        before: Option<&BTreeMap<String, String>>,
        after: Option<&BTreeMap<String, String>>,
        ops: &mut Vec<PatchOperation>,
    ) {
        let (Some(before), Some(after)) = (before, after) else {
            section(pointer(&["metadata", field]), before, after, ops);
            return;
        };
        for (key, old) in before {
            let path = pointer(&["metadata", field, key]);
            match after.get(key) {
                None => ops.push(remove(path)),
                Some(new) if new != old => {
                    ops.push(PatchOperation::Replace(ReplaceOperation {
                        path,
                        value: Value::String(new.clone()),
                    }));
                }
                Some(_) => {}
            }
        }
        for (key, new) in after.iter().filter(|(k, _)| !before.contains_key(*k)) {
            ops.push(add(
                pointer(&["metadata", field, key]),
                Value::String(new.clone()),
            ));
        }
    }

    pub fn between(original: &Pod, planned: &Pod) -> Patch {
        let mut ops = Vec::new();
        let (a, b) = (&original.metadata, &planned.metadata);
        string_map(
            "annotations",
            a.annotations.as_ref(),
            b.annotations.as_ref(),
            &mut ops,
        );
        string_map("labels", a.labels.as_ref(), b.labels.as_ref(), &mut ops);
        if let (Some(a), Some(b)) = (&original.spec, &planned.spec) {
            let affinity = pointer(&["spec", "affinity"]);
            section(affinity, a.affinity.as_ref(), b.affinity.as_ref(), &mut ops);
            let containers = (Some(&a.containers), Some(&b.containers));
            list(
                &["spec", "containers"],
                containers.0,
                containers.1,
                &mut ops,
            );
            let (x, y) = (a.init_containers.as_ref(), b.init_containers.as_ref());
            list(&["spec", "initContainers"], x, y, &mut ops);
            list(
                &["spec", "volumes"],
                a.volumes.as_ref(),
                b.volumes.as_ref(),
                &mut ops,
            );
            let (x, y) = (a.readiness_gates.as_ref(), b.readiness_gates.as_ref());
            list(&["spec", "readinessGates"], x, y, &mut ops);
        }
        Patch(ops)
    }
}

mod equivalence {
    use super::*;
    use proptest::prelude::*;

    /// The golden cases the random pods are planned with: userns, capabilities added, a
    /// credential (placeholders, nonce), the pod's AWS identity moved to the sidecar.
    const CASES: [&str; 5] = [
        "builtin/userns-amazon-linux-2023.yaml",
        "builtin/privileged-netns-bottlerocket.yaml",
        "builtin/landlock-only-node.yaml",
        "credentials/basic.yaml",
        "credentials/aws-sidecar-identity.yaml",
    ];

    fn annotation_key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "example.com/a~b",
            "a~1b/c~0",
            "team",
            "/",
            "~",
            "container.seccomp.security.alpha.kubernetes.io/agent",
        ])
        .prop_map(str::to_owned)
    }

    fn env() -> impl Strategy<Value = Option<Value>> {
        prop::option::of(prop::collection::vec(
            (
                prop::sample::select(vec!["HOME", "BOUNDARY_TIER", "ANTHROPIC_API_KEY", "AWS_ROLE_ARN", "X"]),
                any::<bool>(),
            )
                .prop_map(|(name, from)| {
                    if from {
                        json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
                    } else {
                        json!({"name": name, "value": "v"})
                    }
                }),
            0..4,
        ))
        .prop_map(|list| list.map(Value::from))
    }

    /// A pod: with or without volumes, env, init containers, annotations with `/` and `~` in
    /// their keys, a securityContext, a second container, a restart policy.
    fn pod() -> impl Strategy<Value = Value> {
        (
            (any::<bool>(), env(), any::<bool>()),
            prop::collection::btree_map(annotation_key(), "[a-z~/]{0,3}", 0..3),
            prop::option::of((prop::option::of(prop::sample::select(vec!["SYS_ADMIN", "cap_net_admin"])), any::<bool>())),
            (any::<bool>(), prop::option::of(prop::sample::select(vec!["Never", "OnFailure", "Always"]))),
            any::<bool>(),
        )
            .prop_map(|((volumes, env, init), annotations, security, (second, restart), mounts)| {
                let mut agent = json!({"name": "agent", "image": "registry.example/agent:1", "command": ["claude"]});
                if let Some(env) = env {
                    agent["env"] = env;
                }
                if mounts {
                    agent["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
                }
                if let Some((cap, seccomp)) = security {
                    let mut sc = json!({});
                    if let Some(cap) = cap {
                        sc["capabilities"] = json!({"add": [cap], "drop": ["ALL"]});
                    }
                    if seccomp {
                        sc["seccompProfile"] = json!({"type": "RuntimeDefault"});
                    }
                    agent["securityContext"] = sc;
                }
                let mut containers = vec![agent];
                if second {
                    containers.push(json!({"name": "helper", "image": "helper:1", "ports": [{"containerPort": 8080}]}));
                }
                let mut spec = json!({"containers": containers});
                if volumes {
                    spec["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
                }
                if init {
                    spec["initContainers"] = json!([{"name": "clone", "image": "git:1"}]);
                }
                if let Some(restart) = restart {
                    spec["restartPolicy"] = json!(restart);
                }
                let mut metadata = json!({"name": "agent", "namespace": "agents", "labels": {"app": "agent"}});
                if !annotations.is_empty() {
                    metadata["annotations"] = json!(annotations);
                }
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
            })
    }

    fn check(loaded: &Loaded, pod: &Pod) -> Result<Option<Pod>, TestCaseError> {
        let decision = decide(loaded, pod, &loaded.settings);
        let got = decision.patch(pod);
        let want = reference::between(pod, &decision.pod);
        prop_assert_eq!(&got, &want);
        let sent = String::from_utf8(decision.patch_json(pod))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let reference = if want.0.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&want).map_err(|e| TestCaseError::fail(e.to_string()))?
        };
        prop_assert_eq!(
            sent,
            reference,
            "the patch as sent is the reference's, byte for byte"
        );
        let mut patched =
            serde_json::to_value(pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
        json_patch::patch(&mut patched, &got).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let planned =
            serde_json::to_value(&decision.pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&patched, &planned);
        matches!(decision.verdict, Verdict::Jailed { .. })
            .then(|| serde_json::from_value(patched))
            .transpose()
            .map_err(|e| TestCaseError::fail(e.to_string()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// On random pods, first injection and reinvocation (stripping, then injecting again,
        /// possibly for another case's plan), the webhook's patch is the reference's, operation
        /// for operation, and gives the planned pod.
        #[test]
        fn the_patch_is_the_reference_patch_on_random_pods(
            pod in pod(),
            first in 0..CASES.len(),
            second in 0..CASES.len(),
            minor in prop::sample::select(vec![28u32, 33]),
        ) {
            let mut loaded = loaded_case(CASES[first]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            loaded.cluster.minor = minor;
            let pod: Pod = serde_json::from_value(pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if let Some(injected) = check(&loaded, &pod)? {
                let again = loaded_case(CASES[second]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                check(&again, &injected)?;
            }
        }
    }
}

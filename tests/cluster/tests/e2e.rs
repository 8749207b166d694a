//! End to end, the way users meet it: the Helm chart installed (webhook, operator, node agent from
//! the locally built images), a `BoundaryPolicy`, and agent pods that the webhook mutates and the
//! real node runs jailed. Needs a cluster with a real node (`with-cluster.sh --node`) and the
//! images of `tests/scripts/build-images.sh` (also `e2e-tools`: the agent and HTTPS servers).
//!
//! Every test holds an exclusive lock for its whole run (the file `BOUNDARY_E2E_LOCK`), so they
//! never overlap, whatever the runner's parallelism: they share one release and one node, and
//! some scale the webhook down. Each test first runs `helm upgrade --install` with the base
//! values (a no-op when nothing changed); `tests/scripts/cluster-tests.sh` uninstalls the release
//! after them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use boundary_api::contract::{self, annotations, labels, objects};
use boundary_test_support::node_runtime::NodeRuntime;
use boundary_test_support::{
    TestNamespace, client, eventually, image, kubectl_output, wait_for_pod_phase,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service};
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

#[path = "e2e/advisor.rs"]
mod advisor;
#[path = "e2e/chaos.rs"]
mod chaos;
#[path = "e2e/no_way_out.rs"]
mod no_way_out;
#[path = "e2e/real_pods.rs"]
mod real_pods;
#[path = "e2e/rules.rs"]
mod rules;
#[path = "e2e/secretless.rs"]
mod secretless;
#[path = "e2e/upgrade.rs"]
mod upgrade;

const RELEASE: &str = "agent-boundary";
const RELEASE_NAMESPACE: &str = "agent-boundary-e2e";
const ALLOWED: &str = "allowed.e2e.test";
const DENIED: &str = "denied.e2e.test";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// helm: `$HELM`, else the pinned Helm 4 `tests/scripts/chart-tools.sh` installs, else PATH.
fn helm() -> PathBuf {
    if let Some(helm) = std::env::var_os("HELM") {
        return helm.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let pinned =
        PathBuf::from(home).join(".cache/agent-boundary-tools/kubectl-layer-2.2.2/helm/helm");
    if pinned.exists() {
        pinned
    } else {
        "helm".into()
    }
}

/// Serialises the end-to-end tests (see the module comment). Released on drop.
struct Exclusive(#[allow(dead_code)] std::fs::File);

fn exclusive() -> anyhow::Result<Exclusive> {
    let path = std::env::var_os("BOUNDARY_E2E_LOCK").map_or_else(
        || std::env::temp_dir().join("agent-boundary-e2e.lock"),
        PathBuf::from,
    );
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()?;
    Ok(Exclusive(file))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The values every test release gets on this node (`key=value`): quick probes, the seccomp
/// profile where this kubelet reads it, text logs.
fn node_values() -> Vec<String> {
    vec![
        "nodeAgent.probeIntervalSeconds=3".into(),
        "nodeAgent.installSeccompProfile=true".into(),
        format!(
            "nodeAgent.seccompDir={}",
            boundary_test_support::kubelet_seccomp_dir()
        ),
        "operator.logFormat=text".into(),
        "webhook.logFormat=text".into(),
    ]
}

/// `helm upgrade --install` of the chart with the test values plus `extra` (`key=value`), then
/// waits until the webhook answers (its Deployment ready and the `caBundle` in place).
async fn install(client: &Client, extra: &[&str]) -> anyhow::Result<()> {
    let repo = boundary_test_support::image_repo();
    let tag = boundary_test_support::image_tag();
    let mut values = vec![
        format!("jailRuntime.image.repository={repo}/jail-runtime"),
        format!("webhook.image.repository={repo}/boundary-webhook"),
        format!("operator.image.repository={repo}/boundary-operator"),
        format!("jailRuntime.image.tag={tag}"),
        format!("webhook.image.tag={tag}"),
        format!("operator.image.tag={tag}"),
        // One node: one webhook replica (the PodDisruptionBudget is then not rendered).
        "webhook.replicas=1".into(),
    ];
    values.extend(node_values());
    values.extend(extra.iter().map(ToString::to_string));
    // Helm installs a chart's CRDs only on the first install and never upgrades them: the
    // working tree's schema is applied first (the operator applies them too, once it runs).
    boundary_test_support::install_crds(client).await?;
    let mut cmd = Command::new(helm());
    cmd.args(["upgrade", "--install", RELEASE])
        .arg(repo_root().join("charts/agent-boundary"))
        .args(["--namespace", RELEASE_NAMESPACE, "--create-namespace"])
        .args(["--wait", "--timeout", "5m"]);
    // Helm 4 upgrades by server-side apply: fields a test changed through the API (a chaos
    // test's scale or roll) would conflict; the release's values win, as Helm 3's merge did.
    if helm_major()? >= 4 {
        cmd.arg("--force-conflicts");
    }
    for v in &values {
        cmd.args(["--set", v]);
    }
    if let Some(kubeconfig) = std::env::var_os("KUBECONFIG") {
        cmd.arg("--kubeconfig").arg(kubeconfig);
    }
    run(&mut cmd)?;
    webhook_answers(client).await
}

/// Waits until the webhook answers: only current webhook pods, all ready, and the operator's
/// `caBundle` in the webhook configuration.
async fn webhook_answers(client: &Client) -> anyhow::Result<()> {
    only_current_webhook_pods(client).await?;
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    eventually(
        Duration::from_mins(2),
        "the operator put the caBundle into the webhook configuration",
        || async {
            let list = webhooks.list(&ListParams::default()).await?;
            let ours = list
                .items
                .iter()
                .find(|w| w.name_any().starts_with(RELEASE))
                .context("no webhook configuration of the release")?;
            Ok(ours
                .webhooks
                .iter()
                .flatten()
                .all(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                })
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Pod creations without pause (server-side dry runs, which go through admission like any
/// create, every 100 ms) until [`Burst::finish`].
struct Burst {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Admissions>,
}

/// What a [`Burst`] saw.
struct Admissions {
    /// Admitted and jailed (the webhook's status annotation).
    admitted: u32,
    /// Admitted without being jailed.
    unjailed: u32,
    /// Refused, with the apiserver's message.
    refused: Vec<String>,
    slowest: Duration,
}

impl Burst {
    fn start(pods: Api<Pod>, pod: Pod) -> Burst {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let dry_run = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                let mut seen = Admissions {
                    admitted: 0,
                    unjailed: 0,
                    refused: Vec::new(),
                    slowest: Duration::ZERO,
                };
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let sent = std::time::Instant::now();
                    match pods.create(&dry_run, &pod).await {
                        Ok(p) if p.annotations().contains_key(annotations::STATUS) => {
                            seen.admitted += 1;
                        }
                        Ok(_) => seen.unjailed += 1,
                        Err(e) => seen.refused.push(e.to_string()),
                    }
                    seen.slowest = seen.slowest.max(sent.elapsed());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                seen
            })
        };
        Burst { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Admissions> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

/// Waits until the webhook pods are those of the current settings only: a replaced pod keeps
/// answering reviews (with the old settings) during its shutdown delay, and one deleted while
/// its container was being created can take the old kubelet a while to clear.
async fn only_current_webhook_pods(client: &Client) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    eventually(
        Duration::from_mins(3),
        "only the current webhook pods run, all ready",
        || async {
            let Some(webhook) = deployments
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|d| d.name_any().ends_with("-webhook"))
            else {
                return Ok(None);
            };
            let wanted = webhook.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = webhook.status.clone().unwrap_or_default();
            let rolled_out = status.observed_generation == webhook.metadata.generation
                && status.updated_replicas == Some(wanted)
                && status.ready_replicas == Some(wanted);
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
                .await?;
            let count = i32::try_from(list.items.len()).unwrap_or(i32::MAX);
            let none_leaving = list
                .items
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_none());
            Ok((rolled_out && none_leaving && count == wanted).then_some(()))
        },
    )
    .await
}

/// The release's webhook Deployment.
async fn webhook_deployment(client: &Client) -> anyhow::Result<String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    Ok(deployments
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|d| d.name_any().ends_with("-webhook"))
        .context("no webhook Deployment")?
        .name_any())
}

/// Scales the webhook to 0 and waits until none of its pods is left (`install` scales it back).
async fn webhook_scaled_to_zero(client: &Client) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    deployments
        .patch(
            &webhook_deployment(client).await?,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    let release_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    eventually(Duration::from_mins(3), "no webhook pod left", || async {
        let left = release_pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
            .await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await
}

/// Waits until the operator has labelled the node from the node agent's probe.
async fn probed_node(client: &Client) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        Duration::from_mins(2),
        "the node is labelled from the node agent's probe",
        || async {
            let list = nodes.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|n| {
                n.labels()
                    .get(contract::node_labels::PROBED)
                    .map(String::as_str)
                    == Some("true")
            }))
        },
    )
    .await
}

/// The node's `InternalIP` (where the local registry listens).
fn internal_ip(node: &Node) -> anyhow::Result<String> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
        .context("the node has no InternalIP")
}

/// A test CA and the certificate of both test servers.
struct ServerPki {
    ca: String,
    cert: String,
    key: String,
}

fn server_pki() -> anyhow::Result<ServerPki> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "agent-boundary e2e test CA");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![ALLOWED.to_owned(), DENIED.to_owned()])?
        .signed_by(&key, &issuer)?;
    Ok(ServerPki {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The agents' namespace: opted in, with two HTTPS servers (`allowed`, `denied`) of a private
/// CA, that CA in the namespace's upstream-CA ConfigMap, and a policy allowing only `allowed`.
struct World {
    client: Client,
    ns: TestNamespace,
    /// `hostAliases` that name both servers (the local cluster has no cluster DNS).
    host_aliases: Value,
}

async fn world(prefix: &str) -> anyhow::Result<World> {
    let client = client().await?;
    install(&client, &[]).await?;
    world_of(client, prefix).await
}

/// [`world`] with whatever release is installed.
async fn world_of(client: Client, prefix: &str) -> anyhow::Result<World> {
    let ns = TestNamespace::create(
        &client,
        prefix,
        &[(labels::INJECT, contract::INJECT_ENABLED)],
    )
    .await?;
    let pki = server_pki()?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "servers-tls"},
        "stringData": {"tls.crt": pki.cert, "tls.key": pki.key},
    }))?;
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    let upstream_ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": objects::UPSTREAM_CA_CONFIGMAP},
        "data": {"e2e-ca.crt": pki.ca},
    }))?;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &upstream_ca)
        .await?;
    let mut aliases = Vec::new();
    for (name, host) in [("allowed", ALLOWED), ("denied", DENIED)] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name, labels::INJECT: contract::INJECT_DISABLED}},
            "spec": {
                "containers": [{
                    "name": "server",
                    "image": image("e2e-tools"),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["serve", "--cert", "/tls/tls.crt", "--key", "/tls/tls.key", "--name", name,
                             "--show-header", "x-api-key"],
                    "volumeMounts": [{"name": "tls", "mountPath": "/tls"}],
                }],
                "volumes": [{"name": "tls", "secret": {"secretName": "servers-tls"}}],
            },
        }))?;
        ns.create_pod(&pod).await?;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 443, "targetPort": 8443}]},
        }))?;
        let service = ns
            .api::<Service>()
            .create(&PostParams::default(), &service)
            .await?;
        let ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service has no cluster IP")?;
        aliases.push(json!({"ip": ip, "hostnames": [host]}));
    }
    for name in ["allowed", "denied"] {
        wait_for_pod_phase(&ns.api(), name, &["Running"], Duration::from_mins(2)).await?;
    }
    policy(&ns, &[format!("domain={ALLOWED} path=/ok")]).await?;
    Ok(World {
        client,
        ns,
        host_aliases: Value::Array(aliases),
    })
}

/// Creates or replaces the namespace's policy `agents`: pods `app=agent`, Enforce, `allow`.
async fn policy(ns: &TestNamespace, allow: &[String]) -> anyhow::Result<()> {
    policy_with(ns, json!({"allow": allow})).await
}

async fn policy_with(ns: &TestNamespace, spec: Value) -> anyhow::Result<()> {
    let mut full = json!({
        "podSelector": {"matchLabels": {"app": "agent"}},
        "mode": "Enforce",
        // The containers' own commands run inside `boundary run`.
        "jail": {"wrapCommand": true},
    });
    merge(&mut full, &spec);
    pin_services(ns, &mut full).await?;
    let object = json!({
        "apiVersion": contract::API_VERSION,
        "kind": "BoundaryPolicy",
        "metadata": {"name": "agents"},
        "spec": full,
    });
    let api: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
    api.patch(
        "agents",
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&object),
    )
    .await?;
    // Published: the operator compiled it into the namespace's ConfigMap.
    eventually(Duration::from_mins(1), "the policy is Ready", || async {
        let p = api.get("agents").await?;
        let ready = p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                && s.observed_generation == p.metadata.generation
        });
        Ok(ready.then_some(()))
    })
    .await
}

/// The `status.deniedDestinations` of policy `agents` once `done` says they hold `what`.
async fn denied_destinations_when(
    ns: &TestNamespace,
    what: &str,
    done: impl Fn(&[boundary_api::enforcement::DeniedDestination]) -> bool,
) -> anyhow::Result<Vec<boundary_api::enforcement::DeniedDestination>> {
    let policies: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
    eventually(
        Duration::from_secs(90),
        &format!("{what} in status.deniedDestinations"),
        || async {
            let policy = policies.get("agents").await?;
            let denied = policy
                .status
                .map(|s| s.denied_destinations)
                .unwrap_or_default();
            Ok(done(&denied).then_some(denied))
        },
    )
    .await
}

/// Pins the test servers' names to their Services' cluster IPs in a policy `spec` that has no
/// `resolve` of its own: this cluster has no DNS for them (the pods get `hostAliases`), and the
/// proxy's private-address guard refuses a private address that is neither pinned nor named by
/// a rule, which is what a cluster IP is.
async fn pin_services(ns: &TestNamespace, spec: &mut Value) -> anyhow::Result<()> {
    if spec.get("resolve").is_some() {
        return Ok(());
    }
    let services: Api<Service> = ns.api();
    let mut pins = Vec::new();
    for (name, host) in [("allowed", ALLOWED), ("denied", DENIED)] {
        if let Some(ip) = services
            .get_opt(name)
            .await?
            .and_then(|s| s.spec)
            .and_then(|s| s.cluster_ip)
        {
            pins.push(json!({"host": host, "addresses": [ip]}));
        }
    }
    if !pins.is_empty() {
        spec["resolve"] = Value::Array(pins);
    }
    Ok(())
}

fn merge(target: &mut Value, patch: &Value) {
    if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            t.insert(k.clone(), v.clone());
        }
    }
}

/// An agent pod: `fetch` of both servers every 2 s in container `agent`, `status` in container
/// `inspect`, both jailed. `extra` is merged into the pod's spec.
fn agent_pod(world: &World, name: &str, extra: &Value) -> anyhow::Result<Pod> {
    let tools = "/usr/local/bin/e2e-tools";
    let mut spec = json!({
        "hostAliases": world.host_aliases,
        "terminationGracePeriodSeconds": 2,
        "containers": [
            {
                "name": "agent",
                "image": image("e2e-tools"),
                "imagePullPolicy": "IfNotPresent",
                "command": [tools],
                "args": ["fetch", "--every", "2", format!("https://{ALLOWED}/ok"),
                         format!("https://{ALLOWED}/secret"), format!("https://{DENIED}/no")],
                // `boundary run` keeps its work files in /tmp; the image is FROM scratch.
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            },
            {
                "name": "inspect",
                "image": image("e2e-tools"),
                "imagePullPolicy": "IfNotPresent",
                "command": [tools],
                "args": ["status", "--hold"],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            },
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    });
    merge(&mut spec, extra);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "agent"}},
        "spec": spec,
    }))?)
}

async fn logs(pods: &Api<Pod>, pod: &str, container: &str) -> anyhow::Result<String> {
    Ok(pods
        .logs(
            pod,
            &LogParams {
                container: Some(container.into()),
                ..LogParams::default()
            },
        )
        .await?)
}

/// Waits until container `container` of `pod` has logged every one of `needles`.
async fn logs_show(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    needles: &[&str],
) -> anyhow::Result<String> {
    eventually(
        Duration::from_mins(2),
        &format!("{pod}/{container} logs {needles:?}"),
        || async {
            let text = logs(pods, pod, container).await?;
            if needles.iter().all(|n| text.contains(n)) {
                Ok(Some(text))
            } else {
                bail!("so far:\n{}", tail(&text, 15))
            }
        },
    )
    .await
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn container<'a>(
    pod: &'a Pod,
    name: &str,
) -> anyhow::Result<&'a k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .with_context(|| format!("no container {name}"))
}

fn added_capabilities(pod: &Pod, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(container(pod, name)?
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default())
}

/// The `Cap*` values the `inspect` container printed, by name.
fn capabilities(status: &str) -> BTreeMap<String, String> {
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// What the cluster knew when the webhook decided about `pod` of `namespace`: the node labels
/// now and the webhook's review log lines (with their warnings) about that pod. For failure
/// messages, so a failed assertion on the checker says why without the full dump.
async fn decision_context(client: &Client, namespace: &str, pod: &str) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = match nodes.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|n| {
                format!(
                    "{}: {:?} taints {:?}",
                    n.name_any(),
                    n.labels(),
                    n.spec.as_ref().and_then(|s| s.taints.clone())
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(nodes: {e})"),
    };
    let webhook_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let selector = "app.kubernetes.io/component=webhook";
    let mut reviews = String::new();
    match webhook_pods
        .list(&ListParams::default().labels(selector))
        .await
    {
        Ok(list) => {
            for p in list.items {
                let text = logs(&webhook_pods, &p.name_any(), "webhook")
                    .await
                    .unwrap_or_else(|e| format!("(no logs: {e})"));
                for line in text
                    .lines()
                    .filter(|l| l.contains(namespace) && l.contains(pod))
                {
                    reviews.push_str(line);
                    reviews.push('\n');
                }
            }
        }
        Err(e) => reviews = format!("(webhook pods: {e})"),
    }
    format!("nodes:\n{labels}\nwebhook reviews of {namespace}/{pod}:\n{reviews}")
}

async fn dump_on_error<T>(ns: &TestNamespace, result: anyhow::Result<T>) -> anyhow::Result<T> {
    if let Err(e) = &result {
        // First, so that a log cut short after its first lines still says why.
        eprintln!("FAILED: {e:#}");
        eprintln!("{}", ns.dump().await);
        let release =
            boundary_test_support::dump_namespace(&client().await?, RELEASE_NAMESPACE).await;
        eprintln!("{release}");
    }
    result
}

/// 1. An opted-in pod is jailed in the `userns` tier with no added capabilities, reaches the
///    allowed HTTPS service (a private CA the namespace's upstream-CA ConfigMap names), is denied
///    the other, and the sidecar's audit log shows both decisions.
#[tokio::test]
async fn an_opted_in_pod_is_jailed_without_capabilities_and_only_the_allowed_service_answers()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-jail").await?;
    let result = async {
        probed_node(&world.client).await?;
        let pods: Api<Pod> = world.ns.api();
        let created = world
            .ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        assert_eq!(
            created
                .annotations()
                .get(annotations::TIER)
                .map(String::as_str),
            Some("userns"),
            "{:?}",
            created.annotations()
        );
        assert_eq!(
            created.labels().get(labels::JAILED).map(String::as_str),
            Some("userns")
        );
        for name in ["agent", "inspect"] {
            assert!(
                added_capabilities(&created, name)?.is_empty(),
                "{name}: {:?}",
                container(&created, name)?.security_context
            );
        }
        let agent = logs_show(
            &pods,
            "agent",
            "agent",
            &[
                &format!("fetch https://{ALLOWED}/ok -> 200 hello from allowed: GET /ok"),
                // A request the rules do not allow on an allowed host: the proxy's 403.
                &format!("fetch https://{ALLOWED}/secret -> 403"),
                // A host no rule allows: refused at the TLS handshake, nothing decrypted.
                &format!("fetch https://{DENIED}/no -> error: TLS handshake: received fatal alert: AccessDenied"),
            ],
        )
        .await?;
        let audit = logs_show(&pods, "agent", contract::containers::SIDECAR, &[DENIED]).await?;
        let decisions: Vec<Value> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("decision").is_some())
            .collect();
        let seen = |host: &str, decision: &str| {
            decisions
                .iter()
                .any(|d| d["host"] == host && d["decision"] == decision && d["pod"] == "agent")
        };
        assert!(
            seen(ALLOWED, "allow"),
            "no allow line for {ALLOWED}:\n{audit}"
        );
        assert!(seen(DENIED, "deny"), "no deny line for {DENIED}:\n{audit}");
        assert!(
            decisions.iter().any(|d| d["host"] == ALLOWED
                && d["path"] == "/secret"
                && d["decision"] == "deny"),
            "no deny line for /secret:\n{audit}"
        );
        // The jailed processes hold no capability at all, and cannot gain any.
        jailed_without_capabilities(&pods, "agent").await?;
        eprintln!("agent:\n{}", tail(&agent, 4));
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// 2. A pod that asks for `seccompProfile: RuntimeDefault` (which refuses user namespaces, like
///    Bottlerocket's default) gets the node agent's Localhost profile and works; without the
///    webhook the same jail fails with the jail's own error naming seccomp, and runs under
///    `Unconfined`. On the local cluster these are the node runtime's own profiles (containerd's
///    default; dockerd's with `RUNTIME=docker`).
#[tokio::test]
async fn a_runtime_default_seccomp_pod_gets_the_profile_it_needs_and_works() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-seccomp").await?;
    let result = async {
        let node = probed_node(&world.client).await?;
        assert_eq!(
            node.labels().get(contract::node_labels::SECCOMP_PROFILE).map(String::as_str),
            Some(objects::SECCOMP_PROFILE),
            "the node agent installed its profile: {:?}",
            node.labels()
        );
        let pods: Api<Pod> = world.ns.api();
        let runtime_default = json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}});
        let created = world
            .ns
            .create_pod(&agent_pod(&world, "agent", &runtime_default)?)
            .await?;
        let profile = container(&created, "agent")?
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.clone())
            .context("no seccomp profile on the agent container")?;
        if profile.type_ != "Localhost"
            || profile.localhost_profile.as_deref() != Some(objects::SECCOMP_PROFILE)
        {
            bail!(
                "the agent container got seccomp {profile:?}, not Localhost {}; {}",
                objects::SECCOMP_PROFILE,
                decision_context(&world.client, world.ns.name(), "agent").await
            );
        }
        fetches_as_the_policy_says(&pods, "agent").await?;

        // The same jail without the webhook (a namespace that did not opt in).
        let plain = TestNamespace::create(&world.client, "e2e-seccomp-plain", &[]).await?;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "jail"},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "jail",
                    "image": image("jail-runtime"),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["run", "--tier", "userns", "--", "/usr/local/bin/boundary", "--version"],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }))?;
        plain.create_pod(&pod).await?;
        let plain_pods: Api<Pod> = plain.api();
        let done = finished_phase(&plain_pods, "jail").await?;
        let text = logs(&plain_pods, "jail", "jail").await?;
        assert_eq!(done, "Failed", "RuntimeDefault refuses the jail: {text}");
        assert!(text.contains("seccomp"), "the jail's error names seccomp: {text}");

        // The same jail under `Unconfined` (Bottlerocket's documented option): the runtime loads
        // no profile, and the user namespace is allowed.
        Box::pin(unconfined_jail_runs(&plain, pod)).await?;
        eprintln!(
            "seccomp cases on {}: RuntimeDefault refused the jail, the Localhost profile and Unconfined let it run",
            node.status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map_or("an unknown runtime", |i| i.container_runtime_version.as_str())
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// The phase pod `name` ends in (`Succeeded` or `Failed`), waiting up to two minutes.
async fn finished_phase(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    eventually(
        Duration::from_mins(2),
        &format!("pod {name} finished"),
        || async {
            let phase = pods
                .get(name)
                .await?
                .status
                .and_then(|s| s.phase)
                .unwrap_or_default();
            Ok(["Succeeded", "Failed"]
                .contains(&phase.as_str())
                .then_some(phase))
        },
    )
    .await
}

/// `pod` (a plain jail) again as `jail-unconfined` with seccomp `Unconfined`: it must succeed.
async fn unconfined_jail_runs(plain: &TestNamespace, mut pod: Pod) -> anyhow::Result<()> {
    pod.metadata.name = Some("jail-unconfined".into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.security_context = Some(serde_json::from_value(
            json!({"seccompProfile": {"type": "Unconfined"}}),
        )?);
    }
    plain.create_pod(&pod).await?;
    let pods: Api<Pod> = plain.api();
    let done = finished_phase(&pods, "jail-unconfined").await?;
    let text = logs(&pods, "jail-unconfined", "jail").await?;
    anyhow::ensure!(
        done == "Succeeded",
        "Unconfined lets the jail run, but it {done}: {text}"
    );
    Ok(())
}

/// The major version of `helm()` (`helm version --template {{.Version}}`, e.g. `v4.1.4`).
fn helm_major() -> anyhow::Result<u32> {
    let out = Command::new(helm())
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .context("running helm version")?;
    let version = String::from_utf8_lossy(&out.stdout);
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("helm version {version:?} has no major version"))
}

/// `user.max_user_namespaces` of the node, set by a test and put back when dropped. The node
/// is this machine (the local cluster), so the test writes the file itself; the original value
/// is also kept in `$STATE`, from where `down.sh` restores it should the test be killed.
struct MaxUserNamespaces {
    original: String,
    backup: PathBuf,
}

const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";

impl MaxUserNamespaces {
    /// Sets the value; the error (`PermissionDenied` where the machine withholds
    /// `CAP_SYS_RESOURCE`, which the kernel asks for) leaves everything as it was.
    fn set(state: &std::path::Path, value: u32) -> std::io::Result<MaxUserNamespaces> {
        let backup = state.join("max_user_namespaces.saved");
        // A backup left by a killed run holds the machine's real value.
        let original = match std::fs::read_to_string(&backup) {
            Ok(saved) => saved.trim().to_owned(),
            Err(_) => std::fs::read_to_string(MAX_USER_NAMESPACES)?
                .trim()
                .to_owned(),
        };
        std::fs::write(&backup, &original)?;
        if let Err(e) = std::fs::write(MAX_USER_NAMESPACES, value.to_string()) {
            let _ = std::fs::remove_file(&backup);
            return Err(e);
        }
        Ok(MaxUserNamespaces { original, backup })
    }

    fn current() -> anyhow::Result<u64> {
        Ok(std::fs::read_to_string(MAX_USER_NAMESPACES)?
            .trim()
            .parse()?)
    }
}

impl Drop for MaxUserNamespaces {
    fn drop(&mut self) {
        match std::fs::write(MAX_USER_NAMESPACES, &self.original) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.backup);
            }
            Err(e) => eprintln!(
                "cannot restore {MAX_USER_NAMESPACES}={}: {e} (down.sh retries from {})",
                self.original,
                self.backup.display()
            ),
        }
    }
}

/// Sets `user.max_user_namespaces=0` on the node when this test can (see test 3); `None`, with
/// the reason printed, when it cannot.
fn turn_user_namespaces_off() -> anyhow::Result<Option<MaxUserNamespaces>> {
    let Some(state) = boundary_test_support::local_cluster_state() else {
        eprintln!(
            "NOT RUN: the sysctl round trip needs the project's local cluster (the node is this machine); privileged-netns is chosen by allowedTiers instead"
        );
        return Ok(None);
    };
    match MaxUserNamespaces::set(&state, 0) {
        Ok(guard) => Ok(Some(guard)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let status = std::fs::read_to_string("/proc/self/status")?;
            eprintln!(
                "NOT RUN: the sysctl round trip: {MAX_USER_NAMESPACES} cannot be changed here ({e}; the kernel wants CAP_SYS_RESOURCE, bounding set {}); privileged-netns is chosen by allowedTiers instead",
                capabilities(&status)
                    .get("CapBnd")
                    .map_or("?", String::as_str)
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until the operator's labels on the (one) node say user namespaces are `on` or not.
async fn node_says_userns(client: &Client, on: bool) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let want = on.to_string();
    eventually(
        Duration::from_mins(2),
        &format!(
            "the node is labelled {}={want}",
            contract::node_labels::USERNS
        ),
        || async {
            let list = nodes.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|n| {
                let l = n.labels();
                let tiers = l
                    .get(contract::node_labels::TIERS)
                    .map(String::as_str)
                    .unwrap_or_default();
                l.get(contract::node_labels::PROBED).map(String::as_str) == Some("true")
                    && l.get(contract::node_labels::USERNS) == Some(&want)
                    && tiers.split('.').any(|t| t == "userns") == on
            }))
        },
    )
    .await
}

/// Creates `pod` once a server-side dry run shows the webhook plans the tier `tier` for it: the
/// webhook learns of node labels from its watch, a moment after the test reads them.
async fn create_in_tier(world: &World, pod: &Pod, tier: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = world.ns.api();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let name = pod.name_any();
    let planned = eventually(
        Duration::from_secs(30),
        &format!("the webhook plans tier {tier} for pod {name}"),
        || async {
            let planned = pods.create(&dry_run, pod).await?;
            let got = planned.annotations().get(annotations::TIER).cloned();
            if got.as_deref() == Some(tier) {
                Ok(Some(()))
            } else {
                bail!("planned {got:?}")
            }
        },
    )
    .await;
    if let Err(e) = planned {
        bail!(
            "{e:#}; {}",
            decision_context(&world.client, world.ns.name(), &name).await
        );
    }
    world.ns.create_pod(pod).await
}

/// Waits until the jailed `inspect` container of pod `name` has reported its capabilities, and
/// checks it holds none, in any set, and runs with `no_new_privs`.
async fn jailed_without_capabilities(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    let status = logs_show(pods, name, "inspect", &["NoNewPrivs"]).await?;
    let caps = capabilities(&status);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            caps.get(set).map(String::as_str),
            Some("0000000000000000"),
            "{name}: {set}:\n{status}"
        );
    }
    assert_eq!(
        caps.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{status}"
    );
    Ok(())
}

/// Waits until the agent of pod `name` got 200 from the allowed path and 403 from the other.
async fn fetches_as_the_policy_says(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    logs_show(
        pods,
        name,
        "agent",
        &[
            &format!("fetch https://{ALLOWED}/ok -> 200"),
            &format!("fetch https://{ALLOWED}/secret -> 403"),
        ],
    )
    .await
}

/// 3. With `user.max_user_namespaces=0` on the node the operator relabels it, new pods get the
///    `privileged-netns` tier (`SYS_ADMIN` and `NET_ADMIN` added) and the jailed commands still
///    hold no capability; with the chart's sysctl switch on, the node agent turns user
///    namespaces back on and new pods get `userns` again, with nothing added.
///
///    The kernel lets only a holder of `CAP_SYS_RESOURCE` change the sysctl. Where the test
///    process (and so the node agent's privileged container) lacks it, as in this project's CI
///    sandbox, or the node is not this machine, the `privileged-netns` pod is chosen by the
///    policy's `allowedTiers` instead and everything about that pod is checked the same way;
///    the sysctl round trip is then reported as not run.
#[tokio::test]
async fn without_user_namespaces_pods_get_privileged_netns_until_the_node_agent_turns_them_on()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-nouserns").await?;
    let result = Box::pin(async {
        let pods: Api<Pod> = world.ns.api();
        // The agent runs as root: added capabilities are effective only for uid 0.
        let as_root = json!({"securityContext": {"runAsUser": 0}});
        let userns_off = turn_user_namespaces_off()?;
        if userns_off.is_some() {
            node_says_userns(&world.client, false).await?;
        } else {
            policy_with(
                &world.ns,
                json!({
                    "allow": [format!("domain={ALLOWED} path=/ok")],
                    "jail": {"wrapCommand": true, "allowedTiers": ["privileged-netns"]},
                }),
            )
            .await?;
        }
        let pod = agent_pod(&world, "agent-netns", &as_root)?;
        let created = create_in_tier(&world, &pod, "privileged-netns").await?;
        for name in ["agent", "inspect"] {
            let mut added = added_capabilities(&created, name)?;
            added.sort();
            assert_eq!(added, ["NET_ADMIN", "SYS_ADMIN"], "container {name}");
        }
        fetches_as_the_policy_says(&pods, "agent-netns").await?;
        jailed_without_capabilities(&pods, "agent-netns").await?;

        let Some(_userns_off) = userns_off else {
            return anyhow::Ok(());
        };
        // The chart's switch: the (now privileged) node agent sets the sysctl back.
        install(&world.client, &["nodeAgent.enableUserNamespaces=true"]).await?;
        node_says_userns(&world.client, true).await?;
        assert_eq!(
            MaxUserNamespaces::current()?,
            65536,
            "the chart's default value"
        );
        let pod = agent_pod(&world, "agent-userns", &as_root)?;
        let created = create_in_tier(&world, &pod, "userns").await?;
        for name in ["agent", "inspect"] {
            assert!(
                added_capabilities(&created, name)?.is_empty(),
                "container {name}"
            );
        }
        fetches_as_the_policy_says(&pods, "agent-userns").await?;
        jailed_without_capabilities(&pods, "agent-userns").await?;
        anyhow::Ok(())
    })
    .await;
    dump_on_error(&world.ns, result).await
}

/// 4. A policy edit reaches a running pod without restarting it.
#[tokio::test]
async fn a_policy_edit_reaches_a_running_pod_without_a_restart() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-edit").await?;
    let result = async {
        let pods: Api<Pod> = world.ns.api();
        let created = world
            .ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        logs_show(
            &pods,
            "agent",
            "agent",
            &[&format!("fetch https://{DENIED}/no -> error")],
        )
        .await?;
        policy(
            &world.ns,
            &[format!("domain={ALLOWED}"), format!("domain={DENIED}")],
        )
        .await?;
        logs_show(
            &pods,
            "agent",
            "agent",
            &[&format!(
                "fetch https://{DENIED}/no -> 200 hello from denied: GET /no"
            )],
        )
        .await?;
        the_same_pod_without_restarts(&pods, &created).await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// `created` still runs as it was: the same pod (uid), no container restarted.
async fn the_same_pod_without_restarts(pods: &Api<Pod>, created: &Pod) -> anyhow::Result<()> {
    let now = pods.get(&created.name_any()).await?;
    assert_eq!(now.uid(), created.uid(), "the same pod");
    let restarts: i32 = now
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0, "no container restarted");
    Ok(())
}

/// 5. Runtime `coder-boundary`: the injected securityContext is the published row for the node's
///    OS (the webhook's `CODER_BOUNDARY` table, Coder's matrix).
#[tokio::test]
async fn the_coder_boundary_runtime_gets_the_published_security_context_for_the_nodes_os()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-coder").await?;
    let result = async {
        let node = probed_node(&world.client).await?;
        let os = node
            .labels()
            .get(contract::node_labels::OS)
            .cloned()
            .context("the node has no OS label")?;
        let userns = node
            .labels()
            .get(contract::node_labels::USERNS)
            .map(String::as_str)
            == Some("true");
        policy_with(
            &world.ns,
            json!({"allow": [format!("domain={ALLOWED} path=/ok")], "jail": {"runtime": "coder-boundary", "wrapCommand": true}}),
        )
        .await?;
        let created = world
            .ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        let row_name = created
            .annotations()
            .get(annotations::TIER)
            .cloned()
            .context("no tier annotation")?;
        let row = boundary_webhook::tables::CODER_BOUNDARY
            .iter()
            .find(|r| r.name == row_name)
            .with_context(|| format!("{row_name} is not a row of the published matrix"))?;
        // The least-privileged row that works on this node's OS.
        let expected = boundary_webhook::tables::CODER_BOUNDARY
            .iter()
            .find(|r| match r.works {
                boundary_webhook::tables::Works::UserNamespacesOn(families) => {
                    userns && families.contains(&os.as_str())
                }
                boundary_webhook::tables::Works::CapabilitiesGranted => true,
                _ => false,
            })
            .context("no row works here")?;
        assert_eq!(
            row.name, expected.name,
            "the row for {os} (userns {userns})"
        );
        let mut added = added_capabilities(&created, "agent")?;
        added.sort();
        let mut want: Vec<String> = row.capabilities.iter().map(ToString::to_string).collect();
        want.sort();
        assert_eq!(added, want, "capabilities of row {}", row.name);
        for (name, value) in row.env {
            let env = container(&created, "agent")?
                .env
                .clone()
                .unwrap_or_default();
            assert!(
                env.iter()
                    .any(|e| e.name == *name && e.value.as_deref() == Some(value)),
                "{name}={value} in {env:?}"
            );
        }
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// 6. With the webhook scaled to 0, pods of opted-in namespaces cannot be created (fail closed,
///    with the apiserver naming our webhook), and other namespaces are unaffected.
#[tokio::test]
async fn without_a_webhook_opted_in_pods_fail_closed_and_other_namespaces_are_unaffected()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-down").await?;
    let result = async {
        webhook_scaled_to_zero(&world.client).await?;
        let refused = world
            .ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await
            .expect_err("an opted-in pod must not start un-jailed");
        let message = format!("{refused:#}");
        assert!(
            message.contains("webhook.agentboundary.dev"),
            "the apiserver names our webhook: {message}"
        );
        let other = TestNamespace::create(&world.client, "e2e-down-other", &[]).await?;
        let plain: Pod = serde_json::from_value(json!({
            "metadata": {"name": "plain", "labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "c", "image": image("e2e-tools"),
                      "imagePullPolicy": "IfNotPresent", "args": ["sleep"]}]},
        }))?;
        let created = other.create_pod(&plain).await?;
        assert!(
            !created.annotations().contains_key(annotations::STATUS),
            "not injected"
        );
        anyhow::Ok(())
    }
    .await;
    // Back to the release's replicas whatever happened.
    install(&world.client, &[]).await?;
    dump_on_error(&world.ns, result).await
}

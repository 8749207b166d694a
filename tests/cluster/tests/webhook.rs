//! The admission webhook against a real kube-apiserver: the webhook runs in this test process
//! (real HTTPS with its own CA), is registered by URL with a `MutatingWebhookConfiguration`
//! scoped to the test's namespace, and the apiserver calls it when pods are created. Node
//! objects of each OS are created through the API, so the planner sees them through its real
//! watches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use boundary_api::contract::{annotations, containers, labels};
use boundary_test_support::nodes::{FakeNode, NodeSystem, TEST_POOL};
use boundary_test_support::{TestNamespace, client, eventually, install_crds, kubectl};
use boundary_webhook::admit::Planner;
use boundary_webhook::cache::LiveView;
use boundary_webhook::inject::Settings;
use boundary_webhook::review::{AdmissionRequest, AdmissionResponse, Admit};
use boundary_webhook::server::{Config, Server};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

/// Label on the test namespace that the webhook configuration selects.
const WEBHOOK_SCOPE: &str = "agentboundary.dev/test-webhook";

/// A webhook server of this process, registered with the apiserver; unregistered on drop.
struct Registered {
    name: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        boundary_test_support::delete_cluster_object_now::<MutatingWebhookConfiguration>(
            self.name.clone(),
        );
    }
}

/// PEM texts.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> anyhow::Result<Pki> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "boundary test webhook CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()])?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn base64(bytes: &[u8]) -> String {
    boundary_webhook::review::base64_encode(bytes)
}

/// Serves `admit` over HTTPS on loopback and registers it for pod CREATE in namespaces
/// labelled `WEBHOOK_SCOPE=<scope>`.
async fn register(
    client: &Client,
    name: &str,
    scope: &str,
    admit: Arc<dyn Admit>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<Registered> {
    let pki = pki()?;
    let dir = tempfile::tempdir()?;
    let cert_file = dir.path().join("tls.crt");
    let key_file = dir.path().join("tls.key");
    std::fs::write(&cert_file, &pki.cert)?;
    std::fs::write(&key_file, &pki.key)?;
    let config = Config {
        https_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        plain_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert_file,
        key_file,
        ..Config::default()
    };
    let server = Server::bind(config, admit, ready).await?;
    let port = server.https_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": format!("{name}.agentboundary.dev"),
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": base64(pki.ca.as_bytes())},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {WEBHOOK_SCOPE: scope}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
        }],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .with_context(|| format!("registering webhook {name}"))?;
    Ok(Registered {
        name: name.into(),
        _dir: dir,
        stop: Some(stop),
    })
}

/// Starts the real planner (live caches) and registers it for the test namespace.
async fn start_boundary_webhook(client: &Client, ns: &TestNamespace) -> anyhow::Result<Registered> {
    let ready = Arc::new(AtomicBool::new(false));
    let view = LiveView::start(client.clone(), ready.clone()).await?;
    eventually(Duration::from_secs(30), "webhook caches synced", || async {
        Ok(view.is_ready().then_some(()))
    })
    .await?;
    let settings = Settings {
        image: "agent-boundary/jail-runtime:test".into(),
        ..Settings::default()
    };
    let planner: Arc<dyn Admit> = Arc::new(Planner::new(view, settings));
    register(
        client,
        &format!("boundary-{}", ns.name()),
        ns.name(),
        planner,
        ready,
    )
    .await
}

/// Creates a Linux Node object (no kubelet behind it) in this test's pool.
async fn fake_node(
    client: &Client,
    name: &str,
    pool: &str,
    os_image: &str,
    kernel: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<FakeNode> {
    FakeNode::create(
        client,
        name,
        pool,
        NodeSystem::linux(os_image, kernel),
        labels,
    )
    .await
}

/// An agent pod for `pool` that no scheduler picks up (so it is deleted at once with its
/// namespace), tolerating whatever the node controller puts on node objects without a kubelet.
fn agent_pod(name: &str, pool: &str, extra_spec: &Value) -> anyhow::Result<Pod> {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "agent"}},
        "spec": {
            "schedulerName": "no-scheduler-for-webhook-tests",
            // Without a controller-manager no token is minted for the service account.
            "automountServiceAccountToken": false,
            "nodeSelector": {TEST_POOL: pool},
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "agent", "image": "agent:1", "command": ["claude"]}],
        },
    });
    json_merge(&mut pod, extra_spec);
    Ok(serde_json::from_value(pod)?)
}

fn json_merge(target: &mut Value, patch: &Value) {
    if let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) {
        for (k, v) in p {
            json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    } else {
        *target = patch.clone();
    }
}

async fn policy(ns: &TestNamespace, name: &str, spec: Value) -> anyhow::Result<()> {
    let api: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
    let object = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1",
        "kind": "BoundaryPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn added_capabilities(pod: &Pod, container: &str) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

/// Creates `pod` until the webhook answers for it (configuration changes reach the apiserver's
/// webhook cache asynchronously); returns the stored pod.
async fn create_when_webhook_is_active(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<Pod> {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(Duration::from_secs(30), "the webhook is called", || async {
        let created = pods.create(&dry_run, pod).await?;
        Ok(annotation(&created, annotations::STATUS).map(|_| ()))
    })
    .await?;
    Ok(pods.create(&PostParams::default(), pod).await?)
}

async fn setup(prefix: &str) -> anyhow::Result<(Client, TestNamespace, Registered)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix, &[(labels::INJECT, "enabled")]).await?;
    // The scope label carries the namespace's own (random) name.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns.name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {WEBHOOK_SCOPE: ns.name()}}})),
        )
        .await?;
    default_service_account(&client, ns.name()).await?;
    let webhook = start_boundary_webhook(&client, &ns).await?;
    Ok((client, ns, webhook))
}

/// Pods need the namespace's `default` ServiceAccount, which only a controller-manager creates;
/// the apiserver-only cluster has none, so make it (racing the controller is harmless).
async fn default_service_account(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    let account = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_mutated_as_planned_for_the_nodes_they_can_land_on() -> anyhow::Result<()> {
    let (client, ns, _webhook) = setup("webhook-os").await?;
    let pool = ns.name();
    let _al = fake_node(
        &client,
        &format!("{pool}-al2023"),
        &format!("{pool}-al"),
        "Amazon Linux 2023",
        "6.1.102-111.182.amzn2023.x86_64",
        &[],
    )
    .await?;
    let _br = fake_node(
        &client,
        &format!("{pool}-br"),
        &format!("{pool}-br"),
        "Bottlerocket OS 1.49.0 (aws-k8s-1.34)",
        "6.12.40",
        &[],
    )
    .await?;
    policy(
        &ns,
        "agents",
        json!({"podSelector": {}, "allow": ["domain=api.anthropic.com"]}),
    )
    .await?;
    let pods: Api<Pod> = ns.api();

    // Amazon Linux: userns, nothing added to the agent; classic sidecar on a 1.20 apiserver.
    let al = create_when_webhook_is_active(
        &pods,
        &agent_pod("on-al", &format!("{pool}-al"), &json!({}))?,
    )
    .await?;
    assert_eq!(annotation(&al, annotations::TIER), Some("userns"));
    assert!(added_capabilities(&al, "agent").is_empty());
    let spec = al.spec.as_ref().context("spec")?;
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, [containers::INSTALL]);
    assert!(
        spec.containers
            .iter()
            .any(|c| c.name == containers::SIDECAR),
        "classic sidecar on 1.20"
    );
    let agent = &spec.containers[0];
    assert!(
        agent
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "BOUNDARY_TIER" && e.value.as_deref() == Some("userns"))
    );

    // Bottlerocket (user namespaces off): privileged-netns, exactly NET_ADMIN + SYS_ADMIN.
    let br = create_when_webhook_is_active(
        &pods,
        &agent_pod("on-br", &format!("{pool}-br"), &json!({}))?,
    )
    .await?;
    assert_eq!(annotation(&br, annotations::TIER), Some("privileged-netns"));
    assert_eq!(added_capabilities(&br, "agent"), ["NET_ADMIN", "SYS_ADMIN"]);

    // The probed Bottlerocket label from the operator wins over classification.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            &format!("{pool}-br"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {
                "agentboundary.dev/probed": "true", "agentboundary.dev/userns": "true",
                "agentboundary.dev/tiers": "userns.privileged-netns.landlock"}}})),
        )
        .await?;
    let probed = eventually(
        Duration::from_secs(30),
        "the webhook sees the new node labels",
        || async {
            let pod = agent_pod("probe-br", &format!("{pool}-br"), &json!({}))?;
            let created = pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &pod,
                )
                .await?;
            if annotation(&created, annotations::TIER) == Some("userns") {
                Ok(Some(created))
            } else {
                anyhow::bail!(
                    "planned so far: {:?}",
                    created.metadata.annotations.unwrap_or_default()
                )
            }
        },
    )
    .await?;
    assert!(added_capabilities(&probed, "agent").is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fargate_pods_are_denied_with_the_facts() -> anyhow::Result<()> {
    let (client, ns, _webhook) = setup("webhook-fargate").await?;
    let pool = ns.name();
    let _al = fake_node(
        &client,
        &format!("{pool}-al2023"),
        pool,
        "Amazon Linux 2023",
        "6.1.102",
        &[],
    )
    .await?;
    policy(
        &ns,
        "agents",
        json!({"podSelector": {}, "allow": ["domain=github.com"]}),
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    create_when_webhook_is_active(&pods, &agent_pod("first", pool, &json!({}))?).await?;
    // An EKS Fargate pod (5.x kernel, no added capabilities): no tier works, Enforce denies
    // with the facts.
    let fargate = agent_pod(
        "on-fargate",
        pool,
        &json!({"spec": {"schedulerName": "fargate-scheduler"}}),
    )?;
    let err = pods
        .create(&PostParams::default(), &fargate)
        .await
        .expect_err("a Fargate pod cannot be jailed");
    let message = err.to_string();
    assert!(message.contains("Fargate"), "{message}");
    assert!(
        message.contains("agentboundary.dev/inject=disabled"),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_warnings_reach_kubectl_and_other_namespaces_are_untouched()
-> anyhow::Result<()> {
    let (client, ns, _webhook) = setup("webhook-deny").await?;
    let pool = ns.name();
    let _al = fake_node(
        &client,
        &format!("{pool}-al2023"),
        pool,
        "Amazon Linux 2023",
        "6.1.102",
        &[],
    )
    .await?;
    policy(
        &ns,
        "agents",
        json!({"podSelector": {}, "allow": ["domain=github.com"]}),
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    create_when_webhook_is_active(&pods, &agent_pod("first", pool, &json!({}))?).await?;

    // hostNetwork under Enforce: denied, and kubectl prints the planner's message.
    let host_network = agent_pod("host-net", pool, &json!({"spec": {"hostNetwork": true}}))?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), serde_json::to_string(&host_network)?)?;
    // Not a blocking call: this process serves the webhook the apiserver is calling.
    let out = tokio::process::Command::from(kubectl())
        .args(["apply", "-n", ns.name(), "-f"])
        .arg(file.path())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "hostNetwork pod was admitted");
    assert!(stderr.contains("denied the request"), "{stderr}");
    assert!(stderr.contains("hostNetwork"), "{stderr}");
    assert!(
        stderr.contains("agentboundary.dev/inject=disabled"),
        "{stderr}"
    );

    // A container the policy names but the pod lacks: admitted with a warning kubectl prints.
    let api: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
    api.patch(
        "agents",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"containers": ["agent", "ghost"]}})),
    )
    .await?;
    let warned = eventually(
        Duration::from_secs(30),
        "kubectl prints the warning",
        || async {
            let pod = agent_pod("warned", pool, &json!({}))?;
            std::fs::write(file.path(), serde_json::to_string(&pod)?)?;
            let out = tokio::process::Command::from(kubectl())
                .args(["apply", "--dry-run=server", "-n", ns.name(), "-f"])
                .arg(file.path())
                .output()
                .await?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            Ok(stderr
                .contains("Warning: agentboundary.dev")
                .then_some(stderr))
        },
    )
    .await?;
    assert!(warned.contains("ghost"), "{warned}");

    // A namespace without the opt-in label, in the webhook's scope: untouched.
    let other =
        TestNamespace::create(&client, "webhook-other", &[(WEBHOOK_SCOPE, ns.name())]).await?;
    default_service_account(&client, other.name()).await?;
    let other_pods: Api<Pod> = other.api();
    let plain = other_pods
        .create(
            &PostParams::default(),
            &agent_pod("plain", pool, &json!({}))?,
        )
        .await?;
    assert!(annotation(&plain, annotations::STATUS).is_none());
    assert!(
        plain
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none()
    );
    assert!(plain.spec.as_ref().is_some_and(|s| s.containers.len() == 1));
    Ok(())
}

/// A second webhook that adds a container after ours ran, making the apiserver reinvoke ours.
struct AddsAContainer;

impl Admit for AddsAContainer {
    fn admit(&self, request: &AdmissionRequest) -> AdmissionResponse {
        let object: Value = request
            .object
            .as_ref()
            .and_then(|object| object.read().ok())
            .unwrap_or_default();
        let has = object["spec"]["containers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "late"));
        if has {
            return AdmissionResponse::allow(&request.uid);
        }
        let patch = serde_json::to_vec(&json!([
            {"op": "add", "path": "/spec/containers/-", "value": {"name": "late", "image": "late:1"}}
        ]))
        .unwrap_or_default();
        AdmissionResponse::patched(&request.uid, patch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvocation_after_another_webhook_gives_one_injection() -> anyhow::Result<()> {
    let (client, ns, _webhook) = setup("webhook-reinvoke").await?;
    let pool = ns.name();
    let _al = fake_node(
        &client,
        &format!("{pool}-al2023"),
        pool,
        "Amazon Linux 2023",
        "6.1.102",
        &[],
    )
    .await?;
    policy(
        &ns,
        "agents",
        json!({"podSelector": {}, "allow": ["domain=github.com"]}),
    )
    .await?;
    // Registered after ours, so called after it: the apiserver then calls ours again.
    let _other = register(
        &client,
        &format!("zz-adds-container-{}", ns.name()),
        ns.name(),
        Arc::new(AddsAContainer),
        Arc::new(AtomicBool::new(true)),
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    let pod = eventually(
        Duration::from_secs(30),
        "both webhooks are called",
        || async {
            let pod = agent_pod("agent", pool, &json!({}))?;
            let created = pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &pod,
                )
                .await?;
            let both = annotation(&created, annotations::STATUS).is_some()
                && created
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.containers.iter().any(|c| c.name == "late"));
            Ok(both.then_some(created))
        },
    )
    .await?;
    let spec = pod.spec.as_ref().context("spec")?;
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        init,
        [containers::INSTALL],
        "one install container: {init:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == containers::SIDECAR).count(),
        1,
        "{names:?}"
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = volumes.iter().collect();
    assert_eq!(
        unique.len(),
        volumes.len(),
        "duplicate volumes: {volumes:?}"
    );
    // The container added later is jailed too, once.
    let late = spec
        .containers
        .iter()
        .find(|c| c.name == "late")
        .context("late container")?;
    let tiers = late
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "BOUNDARY_TIER")
        .count();
    assert_eq!(tiers, 1, "the late container is jailed exactly once");
    Ok(())
}

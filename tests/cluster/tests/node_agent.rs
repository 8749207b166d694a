//! The node agent (`boundary-node-agent`) against a real kube-apiserver: the real binary runs on
//! this host, outside any Pod, with `--api-server`/`--token-file`/`--ca-file`, the token of a
//! ServiceAccount whose only permission is `get`/`patch` on pods in its namespace, and
//! `--boundary-bin` pointing at the workspace's `boundary` (whose `boundary probe` it runs). Its Pod is an
//! API object bound to a fake Node (no kubelet runs it). The operator's node controller runs in
//! this process and turns the agent's report into labels of that Node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use boundary_api::Tier;
use boundary_api::contract::{annotations, node_agent_env, node_labels, objects};
use boundary_operator::{Config, Shutdown};
use boundary_test_support::nodes::{FakeNode, NodeSystem, TEST_POOL};
use boundary_test_support::{TestNamespace, client, eventually};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// Label that scopes a test's Node objects (and its node controller) to that test.
/// The node agent's label, as the operator selects it.
const COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "node-agent");

/// The workspace binary `bin` of `package`. The cluster tests do not depend on the binaries'
/// packages (artifact dependencies are unstable), so it is built here, into the target directory
/// this test was built in; `cargo build` is a no-op when it is up to date. `env_override` names
/// an env var whose path wins.
fn workspace_bin(package: &str, bin: &str, env_override: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_override) {
        return Ok(path.into());
    }
    // <target>/<profile dir>/deps/<this test>
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected test binary location")?;
    let target = profile_dir.parent().ok_or("no target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(target)
        .current_dir(workspace)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p {package} --bin {bin} failed: {status}"
        ));
    }
    Ok(profile_dir.join(bin))
}

/// The `boundary` binary (`BOUNDARY_BIN` overrides), whose `boundary probe` the agent runs.
fn boundary_bin() -> anyhow::Result<PathBuf> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_bin("boundary", "boundary", node_agent_env::BOUNDARY_BIN))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// The `boundary-node-agent` binary (`BOUNDARY_NODE_AGENT_BIN` overrides).
fn node_agent_bin() -> anyhow::Result<PathBuf> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        workspace_bin(
            "boundary-operator",
            "boundary-node-agent",
            "BOUNDARY_NODE_AGENT_BIN",
        )
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// A Bottlerocket Node object (no kubelet behind it) in this test's pool; deleted on drop.
async fn fake_node(client: &Client, name: &str, pool: &str) -> anyhow::Result<FakeNode> {
    let system = NodeSystem::linux("Bottlerocket OS 1.49.0 (aws-k8s-1.34)", "6.12.40");
    FakeNode::create(client, name, pool, system, &[]).await
}

/// The operator's node controller, scoped to this test's pool and namespace; stops on drop.
struct Operator {
    _stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_operator(client: &Client, ns: &TestNamespace) -> Operator {
    let config = Config {
        node_selector: Some(format!("{TEST_POOL}={}", ns.name())),
        node_agent_namespace: Some(ns.name().into()),
        retry_seconds: 1,
        ..Config::default()
    };
    let (stop, shutdown) = Shutdown::new();
    let client = client.clone();
    let task = tokio::spawn(async move {
        if let Err(err) = boundary_operator::nodes::run(client, config, shutdown).await {
            eprintln!("node controller: {err}");
        }
    });
    Operator { _stop: stop, task }
}

/// Creates ServiceAccount `name`; with `rbac`, also the node agent's Role (get and patch on
/// pods, nothing else) bound to it.
async fn service_account(ns: &TestNamespace, name: &str, rbac: bool) -> anyhow::Result<()> {
    let pp = PostParams::default();
    ns.api::<ServiceAccount>()
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await
        .with_context(|| format!("creating ServiceAccount {name}"))?;
    if !rbac {
        return Ok(());
    }
    ns.api::<Role>()
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
            }))?,
        )
        .await
        .context("creating the node agent's Role")?;
    ns.api::<RoleBinding>()
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns.name()}],
            }))?,
        )
        .await
        .context("creating the node agent's RoleBinding")?;
    Ok(())
}

/// A short-lived token of ServiceAccount `name` (`TokenRequest`: what the kubelet projects into
/// the agent's Pod).
async fn token(ns: &TestNamespace, name: &str) -> anyhow::Result<String> {
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let answer = ns
        .api::<ServiceAccount>()
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {name}"))?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("the TokenRequest came back without a token")
}

/// A node agent Pod bound to `node` (no kubelet runs it), using ServiceAccount `account`.
async fn agent_pod(
    ns: &TestNamespace,
    name: &str,
    node: &str,
    account: &str,
) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {COMPONENT.0: COMPONENT.1}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "agent", "image": "agent-boundary/jail-runtime:test",
                            "command": ["/usr/local/bin/boundary-node-agent"]}],
        },
    }))?;
    ns.create_pod(&pod).await?;
    Ok(())
}

/// The apiserver address and its CA (PEM) from `KUBECONFIG`.
async fn apiserver() -> anyhow::Result<(String, String)> {
    let config = kube::Config::infer().await.context("reading KUBECONFIG")?;
    let certs = config
        .root_cert
        .context("KUBECONFIG names no CA for the apiserver")?;
    let mut pem = String::new();
    for der in certs {
        let b64 = boundary_webhook::review::base64_encode(&der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line)?);
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let url = config.cluster_url.to_string();
    Ok((url.trim_end_matches('/').to_owned(), pem))
}

/// A client that authenticates with `token` instead of KUBECONFIG's user.
async fn client_with_token(token: &str) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..kube::config::AuthInfo::default()
    };
    Ok(Client::try_from(config)?)
}

/// A running `boundary-node-agent`; killed on drop, its log kept in a file.
struct Agent {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Agent {
    /// The agent's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains every one of `needles`.
    async fn log_shows(&self, needles: &[&str]) -> anyhow::Result<String> {
        eventually(WAIT, &format!("agent log shows {needles:?}"), || async {
            let log = self.log();
            Ok(needles.iter().all(|n| log.contains(n)).then_some(log))
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.log()))
    }

    /// Sends SIGTERM and returns the exit code.
    async fn terminate(mut self) -> anyhow::Result<Option<i32>> {
        let pid = self.child.id().context("the agent already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("the agent did not stop within 10 s of SIGTERM")??;
        Ok(exit.code())
    }
}

struct AgentFiles {
    dir: tempfile::TempDir,
    url: String,
}

impl AgentFiles {
    async fn new(token: &str) -> anyhow::Result<AgentFiles> {
        let dir = tempfile::tempdir()?;
        let (url, ca) = apiserver().await?;
        std::fs::write(dir.path().join("ca.crt"), ca)?;
        std::fs::write(dir.path().join("token"), format!("{token}\n"))?;
        Ok(AgentFiles { dir, url })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the agent as Pod `pod` of `ns` with the extra `args`.
    fn start(&self, ns: &str, pod: &str, log: &str, args: &[&str]) -> anyhow::Result<Agent> {
        let log = self.path(log);
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(node_agent_bin()?)
            .arg("--boundary-bin")
            .arg(boundary_bin()?)
            .arg("--api-server")
            .arg(&self.url)
            .arg("--token-file")
            .arg(self.path("token"))
            .arg("--ca-file")
            .arg(self.path("ca.crt"))
            .args(["--interval-seconds", "1"])
            .args(args)
            // Only what the flags say: nothing of an in-cluster environment leaks in.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove(boundary_api::contract::log_env::LEVEL)
            .env(boundary_api::contract::env::POD_NAME, pod)
            .env(boundary_api::contract::env::POD_NAMESPACE, ns)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting boundary-node-agent")?;
        Ok(Agent { child, log })
    }
}

/// The probe report in the annotation of Pod `name`, once there.
async fn report_of(ns: &TestNamespace, name: &str) -> anyhow::Result<(Pod, Value)> {
    report_of_within(ns, name, WAIT).await
}

/// [`report_of`] with a timeout of `within`.
async fn report_of_within(
    ns: &TestNamespace,
    name: &str,
    within: Duration,
) -> anyhow::Result<(Pod, Value)> {
    let pods = ns.api::<Pod>();
    eventually(
        within,
        &format!("{name} carries a probe report"),
        || async {
            let pod = pods.get(name).await?;
            let Some(text) = pod.annotations().get(annotations::PROBE_REPORT).cloned() else {
                return Ok(None);
            };
            let report: Value = serde_json::from_str(&text)
                .with_context(|| format!("the annotation is not JSON: {text}"))?;
            Ok(Some((pod, report)))
        },
    )
    .await
}

/// Asserts that `what` was refused by RBAC (HTTP 403), not for any other reason.
fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Waits until the operator has labelled `node` from `report`.
async fn node_gets_the_labels_of(
    client: &Client,
    node_name: &str,
    report: &Value,
) -> anyhow::Result<()> {
    // A probe without SYS_ADMIN and NET_ADMIN leaves privileged-netns to classification,
    // which says yes for the (Bottlerocket) test node.
    let untried = report["facts"]["netAdminAndSysAdmin"] != true;
    let works = |tier: Tier| {
        report["tiers"][tier.as_str()]["works"] == true
            || (tier == Tier::PrivilegedNetns && untried)
    };
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(WAIT, "the node carries the probe's labels", || async {
        let node = nodes.get(node_name).await?;
        let labels = node.labels();
        let label = |k: &str| labels.get(k).map(String::as_str);
        let mut want: BTreeMap<&str, Option<String>> = BTreeMap::from([
            (node_labels::PROBED, Some("true".to_owned())),
            (
                node_labels::SECCOMP_PROFILE,
                Some(objects::SECCOMP_PROFILE.to_owned()),
            ),
            (
                node_labels::LANDLOCK_ABI,
                Some(report["facts"]["landlockAbi"].to_string()),
            ),
        ]);
        for tier in Tier::ALL {
            want.insert(
                node_labels::for_tier(tier),
                works(tier).then(|| "true".to_owned()),
            );
        }
        let have: BTreeMap<&str, Option<String>> = want
            .keys()
            .map(|k| (*k, label(k).map(str::to_owned)))
            .collect();
        if have == want {
            Ok(Some(()))
        } else {
            bail!("labels {have:?}, want {want:?}")
        }
    })
    .await?;
    Ok(())
}

/// Shows that the agent's `token` can read and patch its own Pod and do nothing else.
async fn token_allows_only_get_and_patch_pods(
    token: &str,
    ns: &TestNamespace,
    node_name: &str,
) -> anyhow::Result<()> {
    let agent_client = client_with_token(token).await?;
    let own_pods: Api<Pod> = Api::namespaced(agent_client.clone(), ns.name());
    own_pods.get("node-agent-1").await?;
    own_pods
        .patch(
            "node-agent-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
        )
        .await?;
    assert_forbidden(
        "patching a Node",
        Api::<Node>::all(agent_client.clone())
            .patch(
                node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {node_labels::PROBED: "true"}}})),
            )
            .await,
    );
    let secrets: Api<Secret> = Api::namespaced(agent_client.clone(), ns.name());
    assert_forbidden(
        "listing Secrets",
        secrets.list(&ListParams::default()).await,
    );
    assert_forbidden("reading a Secret", secrets.get("any").await);
    assert_forbidden("listing Pods", own_pods.list(&ListParams::default()).await);
    assert_forbidden(
        "deleting its own Pod",
        own_pods
            .delete("node-agent-1", &DeleteParams::default())
            .await,
    );
    assert_forbidden(
        "patching a Pod in another namespace",
        Api::<Pod>::namespaced(agent_client.clone(), "default")
            .patch(
                "node-agent-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
            )
            .await,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_reports_on_its_own_pod_with_nothing_more_than_get_and_patch_pods()
-> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "node-agent", &[]).await?;
    let node_name = format!("{}-node", ns.name());
    let _node = fake_node(&client, &node_name, ns.name()).await?;
    let _operator = start_operator(&client, &ns);
    service_account(&ns, "node-agent", true).await?;
    agent_pod(&ns, "node-agent-1", &node_name, "node-agent").await?;
    let token = token(&ns, "node-agent").await?;
    let files = AgentFiles::new(&token).await?;
    let seccomp_dir = files.path("kubelet/seccomp");
    let agent = files.start(
        ns.name(),
        "node-agent-1",
        "agent.log",
        &["--seccomp-dir", &seccomp_dir.to_string_lossy()],
    )?;

    // The report appears on the agent's own Pod.
    let (pod, report) = report_of(&ns, "node-agent-1").await?;
    assert_eq!(
        report["seccompProfile"],
        objects::SECCOMP_PROFILE,
        "{report}"
    );
    let installed = std::fs::read_to_string(seccomp_dir.join(objects::SECCOMP_PROFILE))?;
    let profile: Value = serde_json::from_str(&installed)?;
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    // It is the real probe of this host: what `boundary probe` prints here, plus the profile.
    let probe = std::process::Command::new(boundary_bin()?)
        .arg("probe")
        .output()?;
    anyhow::ensure!(probe.status.success(), "boundary probe failed: {probe:?}");
    let probed: Value = serde_json::from_slice(&probe.stdout)?;
    let mut without_profile = report.clone();
    without_profile
        .as_object_mut()
        .context("the report is not an object")?
        .remove("seccompProfile");
    assert_eq!(without_profile, probed, "annotation vs `boundary probe`");
    let uname = std::process::Command::new("uname").arg("-r").output()?;
    assert_eq!(
        report["facts"]["kernel"],
        String::from_utf8_lossy(&uname.stdout).trim()
    );
    // And the operator reads it: the fake Node gets the probe's labels.
    node_gets_the_labels_of(&client, &node_name, &report).await?;

    // An unchanged report is not written again: several intervals later the Pod is untouched.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = ns.api::<Pod>().get("node-agent-1").await?;
    assert_eq!(
        again.resource_version(),
        pod.resource_version(),
        "the agent rewrote an unchanged report"
    );

    // The agent's token can do exactly what the agent needs, and nothing else.
    token_allows_only_get_and_patch_pods(&token, &ns, &node_name).await?;

    // SIGTERM: a clean exit.
    let log = agent.log();
    assert!(log.contains("probe report published"), "{log}");
    assert!(log.contains("seccomp profile installed"), "{log}");
    assert_eq!(agent.terminate().await?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_names_missing_rbac_a_missing_pod_and_a_wrong_ca() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "node-agent-errors", &[]).await?;
    let node_name = format!("{}-node", ns.name());
    let _node = fake_node(&client, &node_name, ns.name()).await?;
    service_account(&ns, "no-rbac", false).await?;
    service_account(&ns, "node-agent", true).await?;
    agent_pod(&ns, "node-agent-1", &node_name, "no-rbac").await?;

    // A token without the Role: the apiserver's 403, and which grant is missing.
    let files = AgentFiles::new(&token(&ns, "no-rbac").await?).await?;
    let agent = files.start(ns.name(), "node-agent-1", "forbidden.log", &[])?;
    let log = agent
        .log_shows(&[
            "403 Forbidden",
            &format!("may not patch pods in namespace {}", ns.name()),
            "verbs [get, patch]",
            "system:serviceaccount",
        ])
        .await?;
    // Retried (with backoff), not given up, and the annotation never appears.
    agent
        .log_shows(&["\"failures\":2"])
        .await
        .with_context(|| log.clone())?;
    let pod = ns.api::<Pod>().get("node-agent-1").await?;
    assert!(!pod.annotations().contains_key(annotations::PROBE_REPORT));
    // Still stoppable while failing.
    assert_eq!(agent.terminate().await?, Some(0));

    // The right token, but a Pod name that does not exist.
    let files = AgentFiles::new(&token(&ns, "node-agent").await?).await?;
    let agent = files.start(ns.name(), "node-agent-gone", "gone.log", &[])?;
    agent
        .log_shows(&[
            "404 Not Found",
            &format!("pod {}/node-agent-gone does not exist", ns.name()),
        ])
        .await?;
    assert_eq!(agent.terminate().await?, Some(0));

    // A CA that did not sign the apiserver's certificate.
    let other_ca = rcgen::CertificateParams::new(Vec::<String>::new())?
        .self_signed(&rcgen::KeyPair::generate()?)?
        .pem();
    std::fs::write(files.path("ca.crt"), other_ca)?;
    let agent = files.start(ns.name(), "node-agent-1", "tls.log", &[])?;
    agent
        .log_shows(&["TLS handshake with the apiserver"])
        .await?;
    assert_eq!(agent.terminate().await?, Some(0));

    // A token that is not valid.
    std::fs::write(files.path("token"), "not-a-token")?;
    let (_, ca) = apiserver().await?;
    std::fs::write(files.path("ca.crt"), ca)?;
    let agent = files.start(ns.name(), "node-agent-1", "unauthorized.log", &[])?;
    agent.log_shows(&["401 Unauthorized"]).await?;
    // The token file is re-read on every attempt: a valid token fixes it without a restart.
    std::fs::write(files.path("token"), token(&ns, "node-agent").await?)?;
    report_of(&ns, "node-agent-1").await?;
    assert_eq!(agent.terminate().await?, Some(0));
    Ok(())
}

/// Runs a one-shot Pod of the jail-runtime image with `args` and `seccomp` (a
/// `seccompProfile`), returns its phase and logs.
async fn run_once(
    ns: &TestNamespace,
    name: &str,
    args: &[&str],
    seccomp: &Value,
) -> anyhow::Result<(String, String)> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"seccompProfile": seccomp},
            "containers": [{
                "name": "boundary",
                "image": boundary_test_support::image("jail-runtime"),
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                // `boundary run` needs a /tmp for its work directory; the image is FROM scratch.
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }))?;
    ns.create_pod(&pod).await?;
    let pods = ns.api::<Pod>();
    let done = eventually(
        Duration::from_mins(2),
        &format!("pod {name} finished"),
        || async {
            let pod = pods.get(name).await?;
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            Ok(["Succeeded", "Failed"]
                .contains(&phase.as_str())
                .then_some(phase))
        },
    )
    .await?;
    let logs = pods
        .logs(name, &kube::api::LogParams::default())
        .await
        .unwrap_or_default();
    Ok((done, logs))
}

/// Needs the local cluster's real node (`with-cluster.sh --node`, images built by
/// `build-images.sh`): the agent runs as a Pod with the in-cluster configuration, installs the
/// profile into kubelet's seccomp directory, and Pods using that profile can build the jail
/// where the runtime's default profile refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_pod_on_a_real_node_installs_the_profile_that_lets_the_jail_run()
-> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "node-agent-real", &[]).await?;
    service_account(&ns, "node-agent", true).await?;
    let agent: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-agent", "labels": {COMPONENT.0: COMPONENT.1}},
        "spec": {
            "serviceAccountName": "node-agent",
            "terminationGracePeriodSeconds": 5,
            // Root, to write the host directory (what the chart does for installSeccompProfile).
            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
            "containers": [{
                "name": "node-agent",
                "image": boundary_test_support::image("jail-runtime"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/boundary-node-agent"],
                "args": ["--interval-seconds", "2"],
                "env": [
                    {"name": boundary_api::contract::env::POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": boundary_api::contract::env::POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "BOUNDARY_SECCOMP_DIR", "value": "/host/seccomp"},
                ],
                "volumeMounts": [{"name": "seccomp", "mountPath": "/host/seccomp"}],
            }],
            "volumes": [{"name": "seccomp", "hostPath": {
                "path": boundary_test_support::kubelet_seccomp_dir(), "type": "DirectoryOrCreate"}}],
        },
    }))?;
    ns.create_pod(&agent).await?;
    // In-cluster: the `kubernetes` Service, the mounted token and CA, only get/patch pods.
    let (pod, report) = report_of_within(&ns, "node-agent", Duration::from_mins(2)).await?;
    assert_eq!(
        report["seccompProfile"],
        objects::SECCOMP_PROFILE,
        "{report}"
    );
    assert_eq!(report["facts"]["uid"], 0, "{report}");
    let node = pod
        .spec
        .and_then(|s| s.node_name)
        .context("not scheduled")?;

    let localhost = json!({"type": "Localhost", "localhostProfile": objects::SECCOMP_PROFILE});
    let runtime_default = json!({"type": "RuntimeDefault"});
    // The probe: a filter is active in both, and only the agent's profile allows the userns tier.
    for (name, profile, userns) in [
        ("probe-localhost", &localhost, true),
        ("probe-runtime-default", &runtime_default, false),
    ] {
        let (phase, logs) = run_once(&ns, name, &["probe"], profile).await?;
        assert_eq!(phase, "Succeeded", "{name}: {logs}");
        let probe: Value = serde_json::from_str(logs.trim())
            .with_context(|| format!("{name} printed no JSON: {logs}"))?;
        assert_eq!(probe["facts"]["seccompFilter"], true, "{name}: {probe}");
        assert_eq!(
            probe["tiers"]["userns"]["works"], userns,
            "{name} on {node}: {probe}"
        );
    }
    // The jail itself (user, network, mount, PID namespaces; mounts inside) as uid 65532.
    let jailed = [
        "run",
        "--tier",
        "userns",
        "--",
        "/usr/local/bin/boundary",
        "--version",
    ];
    let (phase, logs) = run_once(&ns, "jail-localhost", &jailed, &localhost).await?;
    assert_eq!(phase, "Succeeded", "{logs}");
    assert!(logs.contains("boundary "), "{logs}");
    let (phase, logs) = run_once(&ns, "jail-runtime-default", &jailed, &runtime_default).await?;
    assert_eq!(
        phase, "Failed",
        "the runtime default refuses the jail: {logs}"
    );
    assert!(
        logs.contains("seccomp"),
        "the failure names seccomp: {logs}"
    );
    Ok(())
}

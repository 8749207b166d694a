//! The operator against a real kube-apiserver: its controllers run in this test process, scoped
//! to the test's namespace (policies) or to the test's own Node objects (nodes, created through
//! the API with the `nodeInfo` of each OS), and everything is observed through the API.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use boundary_api::compiled::CompiledPolicy;
use boundary_api::compiled::policy_hash;
use boundary_api::contract::{annotations, node_labels, objects};
use boundary_api::crd::{BoundaryPolicy, BoundaryPolicyStatus, condition_types};
use boundary_operator::{Config, Shutdown};
use boundary_test_support::nodes::{FakeNode, NodeSystem, TEST_POOL};
use boundary_test_support::{TestNamespace, client, eventually, install_crds};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// One of the operator's controllers, running in this process until dropped.
struct Running {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn spawn(
        stop: tokio::sync::watch::Sender<bool>,
        run: impl Future<Output = Result<(), boundary_operator::Error>> + Send + 'static,
    ) -> Running {
        let task = tokio::spawn(async move {
            if let Err(err) = run.await {
                eprintln!("controller: {err}");
            }
        });
        Running {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Requests a graceful shutdown (what SIGTERM does in the binary) and waits for the
    /// controller to return.
    async fn shut_down(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .context("the controller did not stop within 10 s of the shutdown signal")??;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn start_policies(client: &Client, ns: &TestNamespace) -> Running {
    let config = Config {
        watch_namespace: Some(ns.name().into()),
        retry_seconds: 1,
        ..Config::default()
    };
    let (stop, shutdown) = Shutdown::new();
    Running::spawn(
        stop,
        boundary_operator::policy::run(client.clone(), config, shutdown),
    )
}

fn start_nodes(client: &Client, ns: &TestNamespace) -> Running {
    let config = Config {
        node_selector: Some(format!("{TEST_POOL}={}", ns.name())),
        node_agent_namespace: Some(ns.name().into()),
        retry_seconds: 1,
        ..Config::default()
    };
    let (stop, shutdown) = Shutdown::new();
    Running::spawn(
        stop,
        boundary_operator::nodes::run(client.clone(), config, shutdown),
    )
}

async fn create_policy(
    ns: &TestNamespace,
    name: &str,
    spec: &Value,
) -> anyhow::Result<BoundaryPolicy> {
    let object = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1",
        "kind": "BoundaryPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    ns.api::<BoundaryPolicy>()
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating policy {name}"))
}

fn condition<'a>(status: &'a BoundaryPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The policy once its status describes its current generation and `check` holds.
async fn status_when(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    check: impl Fn(&BoundaryPolicyStatus) -> bool,
) -> anyhow::Result<BoundaryPolicy> {
    let api = ns.api::<BoundaryPolicy>();
    eventually(WAIT, &format!("{name}: {what}"), || async {
        let bp = api.get(name).await?;
        let Some(status) = &bp.status else {
            return Ok(None);
        };
        let current = status.observed_generation == bp.metadata.generation;
        Ok((current && check(status)).then_some(bp))
    })
    .await
}

/// The published ConfigMap once `check` holds for its content; returns it with the file.
async fn config_map_when(
    ns: &TestNamespace,
    what: &str,
    check: impl Fn(&CompiledPolicy) -> bool,
) -> anyhow::Result<(ConfigMap, String)> {
    let api = ns.api::<ConfigMap>();
    eventually(WAIT, &format!("ConfigMap: {what}"), || async {
        let Some(cm) = api.get_opt(objects::POLICY_CONFIGMAP).await? else {
            return Ok(None);
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(objects::POLICY_CONFIGMAP_KEY))
            .cloned()
            .unwrap_or_default();
        let file: CompiledPolicy = serde_json::from_str(&text)?;
        Ok(check(&file).then_some((cm, text)))
    })
    .await
}

fn entry_names(file: &CompiledPolicy) -> Vec<&str> {
    file.policies.iter().map(|e| e.name.as_str()).collect()
}

fn owner_uids(cm: &ConfigMap) -> Vec<String> {
    let mut uids: Vec<String> = cm
        .owner_references()
        .iter()
        .map(|o| o.uid.clone())
        .collect();
    uids.sort();
    uids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_published_edited_and_removed_through_the_config_map() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-publish", &[]).await?;
    let operator = start_policies(&client, &ns);

    // A valid policy: published, Ready, with the hash of exactly what was published.
    let a = create_policy(
        &ns,
        "a",
        &json!({"podSelector": {"matchLabels": {"app": "agent"}}, "allow": ["domain=api.anthropic.com"]}),
    )
    .await?;
    let (cm, text) = config_map_when(&ns, "holds policy a", |f| entry_names(f) == ["a"]).await?;
    assert_eq!(
        cm.labels()["app.kubernetes.io/managed-by"],
        "agent-boundary-operator"
    );
    assert_eq!(cm.labels()["app.kubernetes.io/component"], "policy");
    assert_eq!(owner_uids(&cm), [a.uid().unwrap()]);
    let bp = status_when(&ns, "a", "Ready with the published hash", |s| {
        condition(s, condition_types::READY).is_some_and(|c| c.status == "True")
            && s.policy_hash.as_deref() == Some(policy_hash(text.as_bytes()).as_str())
    })
    .await?;
    let status = bp.status.unwrap();
    assert_eq!(status.rule_count, Some(1));
    assert_eq!(
        status.config_map.as_deref(),
        Some(objects::POLICY_CONFIGMAP)
    );
    assert!(status.rule_problems.is_empty());
    let rules_valid = condition(&status, condition_types::RULES_VALID).unwrap();
    assert_eq!(rules_valid.status, "True");
    let ready_since = condition(&status, condition_types::READY)
        .unwrap()
        .last_transition_time
        .clone();

    // An edit reaches the file and the hash; Ready stays True since the same moment.
    ns.api::<BoundaryPolicy>()
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allow": ["domain=api.anthropic.com", "domain=github.com method=GET"]}})),
        )
        .await?;
    let (_, edited) = config_map_when(&ns, "has the edited rules", |f| {
        f.policies.first().is_some_and(|e| e.allow.len() == 2)
    })
    .await?;
    assert_ne!(policy_hash(edited.as_bytes()), policy_hash(text.as_bytes()));
    let bp = status_when(&ns, "a", "the new hash", |s| {
        s.policy_hash.as_deref() == Some(policy_hash(edited.as_bytes()).as_str())
    })
    .await?;
    let status = bp.status.unwrap();
    assert_eq!(status.rule_count, Some(2));
    let ready = condition(&status, condition_types::READY).unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(
        ready.last_transition_time, ready_since,
        "no transition, no new time"
    );

    // A second policy joins the file and the owners; deleting the first leaves the second.
    let b = create_policy(
        &ns,
        "b",
        &json!({"podSelector": {}, "mode": "Audit", "allow": ["domain=b.com"]}),
    )
    .await?;
    let (cm, _) = config_map_when(&ns, "holds a and b", |f| entry_names(f) == ["a", "b"]).await?;
    let mut want = vec![a.uid().unwrap(), b.uid().unwrap()];
    want.sort();
    assert_eq!(owner_uids(&cm), want);
    ns.api::<BoundaryPolicy>()
        .delete("a", &DeleteParams::default())
        .await?;
    let (cm, _) = config_map_when(&ns, "holds only b", |f| entry_names(f) == ["b"]).await?;
    assert_eq!(owner_uids(&cm), [b.uid().unwrap()]);

    // The last policy goes: so does the ConfigMap.
    ns.api::<BoundaryPolicy>()
        .delete("b", &DeleteParams::default())
        .await?;
    let cms = ns.api::<ConfigMap>();
    eventually(WAIT, "the ConfigMap is deleted", || async {
        Ok(cms
            .get_opt(objects::POLICY_CONFIGMAP)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    operator.shut_down().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_reported_with_positions_and_an_event() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-invalid", &[]).await?;
    let _operator = start_policies(&client, &ns);

    create_policy(
        &ns,
        "typo",
        &json!({"podSelector": {}, "allow": ["domain=ok.com", "domain=x.* method=GET"]}),
    )
    .await?;
    let bp = status_when(&ns, "typo", "RulesValid=False", |s| {
        condition(s, condition_types::RULES_VALID).is_some_and(|c| c.status == "False")
    })
    .await?;
    let status = bp.status.unwrap();
    assert_eq!(status.rule_problems.len(), 1, "{:?}", status.rule_problems);
    let problem = &status.rule_problems[0];
    assert_eq!(problem.field, "spec.allow[1]");
    assert_eq!(problem.column, Some(10), "the column of the `*`");
    let rules_valid = condition(&status, condition_types::RULES_VALID).unwrap();
    assert_eq!(rules_valid.reason, "InvalidRules");
    assert!(
        rules_valid.message.contains("spec.allow[1] column 10"),
        "{}",
        rules_valid.message
    );
    assert_eq!(
        condition(&status, condition_types::READY).unwrap().status,
        "False"
    );
    // Published without its rules: the namespace's file stays loadable, nothing is allowed.
    let (_, text) = config_map_when(&ns, "holds typo without rules", |f| {
        entry_names(f) == ["typo"] && f.policies[0].allow.is_empty()
    })
    .await?;
    assert_eq!(
        status.policy_hash.as_deref(),
        Some(policy_hash(text.as_bytes()).as_str())
    );

    let events = ns.api::<Event>();
    eventually(WAIT, "an InvalidRules Event on the policy", || async {
        let list = events.list(&kube::api::ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("InvalidRules")
                    && e.involved_object.name.as_deref() == Some("typo")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|e| e.message.clone().unwrap_or_default()))
    })
    .await
    .map(|message| assert!(message.contains("spec.allow[1] column 10"), "{message}"))?;

    // Fixed: valid, published with its rules, Ready.
    ns.api::<BoundaryPolicy>()
        .patch(
            "typo",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"allow": ["domain=ok.com", "domain=*.x.com method=GET"]}}),
            ),
        )
        .await?;
    let bp = status_when(&ns, "typo", "Ready=True", |s| {
        condition(s, condition_types::READY).is_some_and(|c| c.status == "True")
    })
    .await?;
    let status = bp.status.unwrap();
    assert!(status.rule_problems.is_empty());
    assert_eq!(
        condition(&status, condition_types::RULES_VALID)
            .unwrap()
            .status,
        "True"
    );
    config_map_when(&ns, "holds the fixed rules", |f| {
        f.policies[0].allow.len() == 2
    })
    .await?;
    Ok(())
}

/// The fields of issue 14 through the real apiserver: the CRD accepts them, the operator reports
/// each bad one at its place, publishes the deny rules that compile (they only tighten) and
/// withholds the rest; fixed, everything is published, presets included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_conditions_presets_and_pins_are_reported_at_their_place() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-rules", &[]).await?;
    let _operator = start_policies(&client, &ns);

    create_policy(
        &ns,
        "rules",
        &json!({
            "podSelector": {},
            "allow": ["domain=ok.com"],
            "deny": ["domain=paste.example", "domain=-bad.example"],
            "denyHttp": [{"domains": ["ok.com"], "headers": {"X Bad": "*"}}],
            "http": [{"domains": ["git.example"], "query": {"service": "git-upload-pack"}}],
            "presets": ["github-read-only", "no-such-preset"],
            "resolve": [{"host": "svc.example", "addresses": ["10.0.0.1", "not-an-ip"]}],
        }),
    )
    .await?;
    let bp = status_when(&ns, "rules", "RulesValid=False", |s| {
        condition(s, condition_types::RULES_VALID).is_some_and(|c| c.status == "False")
    })
    .await?;
    let status = bp.status.unwrap();
    let fields: Vec<&str> = status
        .rule_problems
        .iter()
        .map(|p| p.field.as_str())
        .collect();
    for wanted in [
        "spec.deny[1]",
        "spec.denyHttp[0].headers.X Bad",
        "spec.presets[1]",
        "spec.resolve[0].addresses[1]",
    ] {
        assert!(
            fields.contains(&wanted),
            "no problem at {wanted}: {:?}",
            status.rule_problems
        );
    }
    let preset = status
        .rule_problems
        .iter()
        .find(|p| p.field == "spec.presets[1]")
        .unwrap();
    assert!(
        preset.message.contains("github-read-only"),
        "the known presets are listed: {}",
        preset.message
    );
    // The valid deny rule stays published; the allow rules, presets and pins are withheld.
    config_map_when(&ns, "holds the valid deny rule only", |f| {
        f.policies.first().is_some_and(|e| {
            e.deny == ["domain=paste.example"]
                && e.allow.is_empty()
                && e.presets.is_empty()
                && e.resolve.is_empty()
        })
    })
    .await?;

    ns.api::<BoundaryPolicy>()
        .patch(
            "rules",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "deny": ["domain=paste.example"],
                "denyHttp": [{"domains": ["ok.com"], "headers": {"X-Mode": "write"}}],
                "presets": ["github-read-only"],
                "resolve": [{"host": "svc.example", "addresses": ["10.0.0.1"]}],
            }})),
        )
        .await?;
    status_when(&ns, "rules", "Ready=True", |s| {
        condition(s, condition_types::READY).is_some_and(|c| c.status == "True")
    })
    .await?;
    config_map_when(&ns, "holds every field", |f| {
        f.policies.first().is_some_and(|e| {
            e.deny.len() == 1
                && e.deny_http.len() == 1
                && e.presets == ["github-read-only"]
                && e.http.first().is_some_and(|h| !h.query.is_empty())
                && e.resolve.len() == 1
        })
    })
    .await?;
    Ok(())
}

/// A Node object (no kubelet behind it) in this test's pool; deleted on drop.
async fn fake_node(
    client: &Client,
    name: &str,
    pool: &str,
    os_image: &str,
    operating_system: &str,
    kernel: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<FakeNode> {
    let system = NodeSystem {
        os_image,
        operating_system,
        kernel,
    };
    FakeNode::create(client, name, pool, system, labels).await
}

/// The operator's labels on `node` (with `agentboundary.dev/` shortened away), once they equal
/// `want` (in any order).
async fn labels_become(client: &Client, node: &str, want: &[&str]) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let mut want: Vec<String> = want.iter().map(|w| (*w).to_owned()).collect();
    want.sort();
    eventually(WAIT, &format!("labels of {node} are {want:?}"), || async {
        let n = api.get(node).await?;
        let mut have: Vec<String> = n
            .labels()
            .iter()
            .filter(|(k, _)| node_labels::ALL.contains(&k.as_str()))
            .map(|(k, v)| format!("{}={v}", k.replace("agentboundary.dev/", "")))
            .collect();
        have.sort();
        if have == want {
            Ok(Some(()))
        } else {
            anyhow::bail!("labels are {have:?}")
        }
    })
    .await
}

/// A node agent Pod bound to `node` (no kubelet runs it) whose probe report says user
/// namespaces and Landlock work there, but not the privileged tier.
async fn create_node_agent(ns: &TestNamespace, node: &str) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = ns.api();
    match accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let report = json!({
        "tiers": {
            "userns": {"works": true},
            "privileged-netns": {"works": false, "reason": "no CAP_SYS_ADMIN"},
            "landlock": {"works": true}
        },
        "best": "userns",
        "facts": {"kernel": "6.12.40", "maxUserNamespaces": 63000, "apparmorRestrictsUserns": false,
                  "seccompFilter": false, "landlockAbi": 6, "uid": 0, "netAdminAndSysAdmin": false}
    });
    let agent: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "node-agent",
            "labels": {"app.kubernetes.io/component": "node-agent"},
            "annotations": {annotations::PROBE_REPORT: report.to_string()},
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "agent", "image": "agent-boundary/jail-runtime:test"}],
        },
    }))?;
    ns.create_pod(&agent).await?;
    Ok(())
}

/// Nodes `<pool>-br` (Bottlerocket), `<pool>-al2023` (with stale operator labels someone else
/// set), `<pool>-fargate` and `<pool>-win`, in `pool`.
async fn pool_of_each_os(client: &Client, pool: &str) -> anyhow::Result<Vec<FakeNode>> {
    let name = |os: &str| format!("{pool}-{os}");
    let bottlerocket = fake_node(
        client,
        &name("br"),
        pool,
        "Bottlerocket OS 1.49.0 (aws-k8s-1.34)",
        "linux",
        "6.12.40",
        &[],
    )
    .await?;
    // Stale labels of an earlier probe, set by someone else: removed.
    let al2023 = fake_node(
        client,
        &name("al2023"),
        pool,
        "Amazon Linux 2023.5.20240819",
        "linux",
        "6.1.102-111.182.amzn2023.x86_64",
        &[
            (node_labels::PROBED, "true"),
            (node_labels::TIER_LANDLOCK, "true"),
            (node_labels::TIERS, "landlock"),
        ],
    )
    .await?;
    let fargate = fake_node(
        client,
        &name("fargate"),
        pool,
        "Amazon Linux 2",
        "linux",
        "5.10.215",
        &[("eks.amazonaws.com/compute-type", "fargate")],
    )
    .await?;
    let windows = fake_node(
        client,
        &name("win"),
        pool,
        "Windows Server 2022 Datacenter",
        "windows",
        "10.0.20348.2461",
        &[],
    )
    .await?;
    Ok(vec![bottlerocket, al2023, fargate, windows])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_labelled_from_classification_and_probe_reports() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "operator-nodes", &[]).await?;
    let pool = ns.name().to_owned();
    let name = |os: &str| format!("{pool}-{os}");
    let _nodes = pool_of_each_os(&client, &pool).await?;
    let operator = start_nodes(&client, &ns);

    let bottlerocket_classified = [
        "os=bottlerocket",
        "userns=false",
        "tiers=privileged-netns.landlock",
        "tier.privileged-netns=true",
        "tier.landlock=true",
    ];
    labels_become(&client, &name("br"), &bottlerocket_classified).await?;
    labels_become(
        &client,
        &name("al2023"),
        &[
            "os=amazon-linux-2023",
            "userns=true",
            "tiers=userns.privileged-netns",
            "tier.userns=true",
            "tier.privileged-netns=true",
        ],
    )
    .await?;
    labels_become(
        &client,
        &name("fargate"),
        &["os=fargate", "userns=false", "tiers="],
    )
    .await?;
    labels_become(
        &client,
        &name("win"),
        &["os=windows", "userns=false", "tiers="],
    )
    .await?;

    // The node agent on the Bottlerocket node reports that user namespaces work there.
    create_node_agent(&ns, &name("br")).await?;
    labels_become(
        &client,
        &name("br"),
        &[
            "os=bottlerocket",
            "userns=true",
            "landlock-abi=6",
            "probed=true",
            // privileged-netns: the agent could not try it without the capabilities, so
            // classification (a Linux node) decides.
            "tiers=userns.privileged-netns.landlock",
            "tier.userns=true",
            "tier.privileged-netns=true",
            "tier.landlock=true",
        ],
    )
    .await?;

    // The report goes away: back to classification, the probe's labels removed.
    ns.api::<Pod>()
        .delete(
            "node-agent",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
    labels_become(&client, &name("br"), &bottlerocket_classified).await?;
    operator.shut_down().await
}

/// A pod as the webhook leaves it: jailed label with the tier, the selecting policies. Bound to
/// a node that does not exist, so it never runs.
async fn jailed_pod(
    ns: &TestNamespace,
    name: &str,
    tier: &str,
    policies: &str,
) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {boundary_api::contract::labels::JAILED: tier},
            "annotations": {annotations::POLICY: policies, annotations::TIER: tier},
        },
        "spec": {
            "nodeName": "nowhere",
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "agent:1"}],
        },
    }))?;
    ns.create_pod(&pod).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_status_counts_the_pods_jailed_under_it_by_tier() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-pods", &[]).await?;
    let accounts: Api<ServiceAccount> = ns.api();
    let account = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let _operator = start_policies(&client, &ns);
    create_policy(
        &ns,
        "a",
        &json!({"podSelector": {}, "allow": ["domain=a.example.com"]}),
    )
    .await?;
    create_policy(
        &ns,
        "b",
        &json!({"podSelector": {}, "allow": ["domain=b.example.com"]}),
    )
    .await?;
    status_when(&ns, "a", "no pods yet", |s| s.matched_pods == Some(0)).await?;

    jailed_pod(&ns, "one", "userns", "a").await?;
    jailed_pod(&ns, "two", "userns", "a,b").await?;
    jailed_pod(&ns, "three", "privileged-netns", "a").await?;
    let a = status_when(&ns, "a", "three pods in two tiers", |s| {
        s.matched_pods == Some(3)
    })
    .await?;
    assert_eq!(
        a.status.unwrap().tiers,
        BTreeMap::from([("privileged-netns".to_owned(), 1), ("userns".to_owned(), 2)])
    );
    let b = status_when(&ns, "b", "one pod", |s| s.matched_pods == Some(1)).await?;
    assert_eq!(
        b.status.unwrap().tiers,
        BTreeMap::from([("userns".to_owned(), 1)])
    );

    // A deleted pod stops counting.
    ns.api::<Pod>()
        .delete("two", &DeleteParams::default().grace_period(0))
        .await?;
    let b = status_when(&ns, "b", "no pod left", |s| s.matched_pods == Some(0)).await?;
    // Tiers once shown stay at 0 (see the operator's policy module).
    assert_eq!(
        b.status.unwrap().tiers,
        BTreeMap::from([("userns".to_owned(), 0)])
    );
    status_when(&ns, "a", "two pods left", |s| s.matched_pods == Some(2)).await?;
    Ok(())
}

/// An allow rule that opens a channel out gets a warning (`LintClean=False`, `lintWarnings`, an
/// `ExfiltrationRisk` Event), never a rejection: the rule is published. The annotation silences
/// a code.
#[tokio::test]
async fn allow_rules_that_open_a_channel_out_are_warned_about_and_still_published()
-> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-lint", &[]).await?;
    let _operator = start_policies(&client, &ns);

    create_policy(
        &ns,
        "risky",
        &json!({"podSelector": {}, "allow": ["domain=registry.npmjs.org", "domain=pastebin.com"]}),
    )
    .await?;
    let bp = status_when(&ns, "risky", "LintClean=False", |s| {
        condition(s, condition_types::LINT_CLEAN).is_some_and(|c| c.status == "False")
    })
    .await?;
    let status = bp.status.unwrap();
    let warned = condition(&status, condition_types::LINT_CLEAN).unwrap();
    assert_eq!(warned.reason, "ExfiltrationRisk");
    assert!(
        warned.message.contains("spec.allow[1]"),
        "{}",
        warned.message
    );
    assert_eq!(status.lint_warnings.len(), 1, "{:?}", status.lint_warnings);
    assert_eq!(status.lint_warnings[0].field, "spec.allow[1]");
    assert_eq!(status.lint_warnings[0].code, "publish-anywhere");
    assert_eq!(
        condition(&status, condition_types::READY).map(|c| c.status.as_str()),
        Some("True"),
        "a warning, not a rejection"
    );
    config_map_when(&ns, "holds the warned rule", |f| {
        f.policies
            .first()
            .is_some_and(|e| e.allow.contains(&"domain=pastebin.com".to_owned()))
    })
    .await?;
    let events = ns.api::<Event>();
    let message = eventually(WAIT, "an ExfiltrationRisk Event on the policy", || async {
        let list = events.list(&kube::api::ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("ExfiltrationRisk")
                    && e.involved_object.name.as_deref() == Some("risky")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|e| e.message.clone().unwrap_or_default()))
    })
    .await?;
    assert!(message.contains("pastebin.com"), "{message}");

    ns.api::<BoundaryPolicy>()
        .patch(
            "risky",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                annotations::LINT_IGNORE: "publish-anywhere"}}})),
        )
        .await?;
    let bp = status_when(&ns, "risky", "LintClean=True", |s| {
        condition(s, condition_types::LINT_CLEAN).is_some_and(|c| c.status == "True")
    })
    .await?;
    assert!(bp.status.unwrap().lint_warnings.is_empty());
    Ok(())
}

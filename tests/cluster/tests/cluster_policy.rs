//! `ClusterBoundaryPolicy` through the operator against a real kube-apiserver: the policy
//! controller runs in this test process, limited by `--namespace-selector` to the test's own
//! namespaces (a label with a value of this run), and the cluster policy selects only those.
//! Everything is observed through the API.

use std::time::Duration;

use anyhow::Context as _;
use boundary_api::compiled::CompiledPolicy;
use boundary_api::contract::{annotations, labels, objects};
use boundary_api::crd::{ClusterBoundaryPolicy, ClusterBoundaryPolicyStatus, condition_types};
use boundary_operator::{Config, Shutdown};
use boundary_test_support::{TestNamespace, client, eventually, install_crds};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
/// Label of this test's namespaces, valued per run: the operator manages only those.
const RUN: &str = "cbp-test.agentboundary.dev/run";
/// Label the cluster policy selects namespaces by.
const TEAM: &str = "cbp-test.agentboundary.dev/team";

/// The policy controller, running in this process until dropped or shut down.
struct Operator {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    fn start(client: &Client, run: &str) -> Operator {
        let mut config = Config {
            namespace_selector: Some(format!("{RUN}={run}")),
            retry_seconds: 1,
            ..Config::default()
        };
        // No jailed pods here: no sidecars to ask.
        config.enforcement.interval_seconds = 0;
        let (stop, shutdown) = Shutdown::new();
        let run = boundary_operator::policy::run(client.clone(), config, shutdown);
        let task = tokio::spawn(async move {
            if let Err(err) = run.await {
                eprintln!("policy controller: {err}");
            }
        });
        Operator {
            stop,
            task: Some(task),
        }
    }

    async fn shut_down(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .context("the controller did not stop within 10 s of the shutdown signal")??;
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Deletes the cluster policy when the test ends, passing or not (it outlives namespaces).
struct DeleteOnDrop(String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        boundary_test_support::delete_cluster_object_now::<ClusterBoundaryPolicy>(self.0.clone());
    }
}

/// A value unique to this run, usable in names and label values.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:08x}",
        (nanos ^ u128::from(std::process::id())) & 0xffff_ffff
    )
}

/// The compiled file of `ns` once `check` holds for it (`None`: no ConfigMap).
async fn file_when(
    ns: &TestNamespace,
    what: &str,
    check: impl Fn(Option<&CompiledPolicy>) -> bool,
) -> anyhow::Result<Option<(ConfigMap, CompiledPolicy)>> {
    let api = ns.api::<ConfigMap>();
    eventually(WAIT, &format!("{}: {what}", ns.name()), || async {
        let found = match api.get_opt(objects::POLICY_CONFIGMAP).await? {
            Some(cm) => {
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(objects::POLICY_CONFIGMAP_KEY))
                    .cloned()
                    .unwrap_or_default();
                let file: CompiledPolicy = serde_json::from_str(&text)?;
                Some((cm, file))
            }
            None => None,
        };
        Ok(check(found.as_ref().map(|(_, f)| f)).then_some(found))
    })
    .await
}

/// `(name, cluster)` of each entry of `file`.
fn entries(file: Option<&CompiledPolicy>) -> Vec<(String, bool)> {
    file.map(|f| {
        f.policies
            .iter()
            .map(|e| (e.name.clone(), e.cluster))
            .collect()
    })
    .unwrap_or_default()
}

/// The cluster policy once its status describes its current generation and `check` holds.
async fn status_when(
    api: &Api<ClusterBoundaryPolicy>,
    name: &str,
    what: &str,
    check: impl Fn(&ClusterBoundaryPolicyStatus) -> bool,
) -> anyhow::Result<ClusterBoundaryPolicyStatus> {
    eventually(WAIT, &format!("{name}: {what}"), || async {
        let cbp = api.get(name).await?;
        let Some(status) = cbp.status else {
            return Ok(None);
        };
        let current = status.observed_generation == cbp.metadata.generation;
        Ok((current && check(&status)).then_some(status))
    })
    .await
}

fn condition_status<'a>(status: &'a ClusterBoundaryPolicyStatus, type_: &str) -> &'a str {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map_or("", |c| c.status.as_str())
}

/// The inject label and the annotation of the value it replaced, once `check` holds for them.
async fn inject_when(
    client: &Client,
    ns: &TestNamespace,
    what: &str,
    check: impl Fn(Option<&str>, Option<&str>) -> bool,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    eventually(WAIT, &format!("{}: {what}", ns.name()), || async {
        let namespace = api.get(ns.name()).await?;
        let label = namespace.labels().get(labels::INJECT).map(String::as_str);
        let before = namespace
            .annotations()
            .get(annotations::INJECT_BEFORE_REQUIRED)
            .map(String::as_str);
        Ok(check(label, before).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story, told in order
async fn cluster_policies_reach_selected_namespaces_require_jailing_and_report_status()
-> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let run = run_id();
    let a =
        TestNamespace::create(&client, "cbp-a", &[(RUN, run.as_str()), (TEAM, "agents")]).await?;
    let b = TestNamespace::create(
        &client,
        "cbp-b",
        &[
            (RUN, run.as_str()),
            (TEAM, "agents"),
            (labels::INJECT, "enabled"),
        ],
    )
    .await?;
    let c = TestNamespace::create(&client, "cbp-c", &[(RUN, run.as_str()), (TEAM, "web")]).await?;
    // A namespace policy in `a`: the cluster entry comes after it.
    let own = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
        "metadata": {"name": "own"},
        "spec": {"podSelector": {}, "allow": ["domain=a.example.com"]},
    }))?;
    a.api::<boundary_api::crd::BoundaryPolicy>()
        .create(&PostParams::default(), &own)
        .await?;
    let operator = Operator::start(&client, &run);

    let name = format!("cbp-test-{run}");
    let _cleanup = DeleteOnDrop(name.clone());
    let api: Api<ClusterBoundaryPolicy> = Api::all(client.clone());
    let cbp: ClusterBoundaryPolicy = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1", "kind": "ClusterBoundaryPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {RUN: run, TEAM: "agents"}},
            "podSelector": {},
            "deny": ["domain=pastebin.com"],
            "allow": ["domain=api.anthropic.com"],
            "requireJailing": true,
        },
    }))?;
    let cbp = api.create(&PostParams::default(), &cbp).await?;
    let uid = cbp.uid().context("created without uid")?;

    // Published into both selected namespaces, after `a`'s own policy; `b` has none of its own
    // and gets the ConfigMap anyway, owned by the cluster policy.
    let (cm_a, file_a) = file_when(&a, "own, then the cluster policy", |f| {
        entries(f) == [("own".to_owned(), false), (name.clone(), true)]
    })
    .await?
    .context("no ConfigMap")?;
    let entry = &file_a.policies[1];
    assert_eq!(entry.deny, ["domain=pastebin.com"]);
    assert_eq!(entry.allow, ["domain=api.anthropic.com"]);
    assert!(
        cm_a.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.kind == "ClusterBoundaryPolicy")
    );
    let (cm_b, _) = file_when(&b, "only the cluster policy", |f| {
        entries(f) == [(name.clone(), true)]
    })
    .await?
    .context("no ConfigMap")?;
    let owners: Vec<_> = cm_b
        .owner_references()
        .iter()
        .map(|o| o.uid.clone())
        .collect();
    assert_eq!(owners, std::slice::from_ref(&uid));
    file_when(&c, "no ConfigMap (not selected)", |f| f.is_none()).await?;

    let mut both = vec![a.name().to_owned(), b.name().to_owned()];
    both.sort();
    let status = status_when(&api, &name, "Ready in two namespaces", |s| {
        condition_status(s, condition_types::READY) == "True" && s.namespaces == both
    })
    .await?;
    assert_eq!(status.namespace_count, Some(2));
    assert_eq!(status.rule_count, Some(2));
    assert_eq!(
        condition_status(&status, condition_types::RULES_VALID),
        "True"
    );

    // requireJailing: `a` (no label) and `b` (owner's `enabled`) are `required`; `b` remembers.
    inject_when(&client, &a, "inject=required", |l, before| {
        l == Some("required") && before.is_none()
    })
    .await?;
    inject_when(
        &client,
        &b,
        "inject=required, enabled before",
        |l, before| l == Some("required") && before == Some("enabled"),
    )
    .await?;
    inject_when(&client, &c, "no inject label", |l, _| l.is_none()).await?;

    // Not required any more: `a` loses the label, `b` gets `enabled` back.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"requireJailing": false}})),
    )
    .await?;
    inject_when(&client, &a, "no inject label", |l, before| {
        l.is_none() && before.is_none()
    })
    .await?;
    inject_when(&client, &b, "inject=enabled again", |l, before| {
        l == Some("enabled") && before.is_none()
    })
    .await?;

    // `c` joins by label: published there too, counted.
    Api::<Namespace>::all(client.clone())
        .patch(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {TEAM: "agents"}}})),
        )
        .await?;
    file_when(&c, "the cluster policy", |f| {
        entries(f) == [(name.clone(), true)]
    })
    .await?;
    status_when(&api, &name, "three namespaces", |s| {
        s.namespace_count == Some(3) && condition_status(s, condition_types::READY) == "True"
    })
    .await?;

    // A typo in one deny rule: reported with its position; the other deny rule stays
    // published, the allow rules are withheld.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deny": ["domain=pastebin.com", "domain=x.* method=GET"]}})),
    )
    .await?;
    let status = status_when(&api, &name, "RulesValid=False", |s| {
        condition_status(s, condition_types::RULES_VALID) == "False"
    })
    .await?;
    assert_eq!(status.rule_problems.len(), 1, "{:?}", status.rule_problems);
    assert_eq!(status.rule_problems[0].field, "spec.deny[1]");
    assert_eq!(status.rule_problems[0].column, Some(10));
    assert_eq!(condition_status(&status, condition_types::READY), "False");
    let (_, file_a) = file_when(&a, "valid deny rule only", |f| {
        f.and_then(|f| f.policies.iter().find(|e| e.cluster))
            .is_some_and(|e| e.deny == ["domain=pastebin.com"] && e.allow.is_empty())
    })
    .await?
    .context("no ConfigMap")?;
    assert_eq!(file_a.policies.len(), 2);
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let message = eventually(
        WAIT,
        "an InvalidRules Event on the cluster policy",
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("InvalidRules")
                        && e.involved_object.name.as_deref() == Some(name.as_str())
                        && e.involved_object.kind.as_deref() == Some("ClusterBoundaryPolicy")
                })
                .map(|e| e.message.clone().unwrap_or_default()))
        },
    )
    .await?;
    assert!(message.contains("spec.deny[1] column 10"), "{message}");

    // Deleted: `b` and `c` had nothing else, their ConfigMaps go; `a` keeps its own policy.
    api.delete(&name, &kube::api::DeleteParams::default())
        .await?;
    file_when(&b, "no ConfigMap", |f| f.is_none()).await?;
    file_when(&c, "no ConfigMap", |f| f.is_none()).await?;
    file_when(&a, "only its own policy", |f| {
        entries(f) == [("own".to_owned(), false)]
    })
    .await?;
    operator.shut_down().await
}

//! The operator survives the apiserver going away: the local cluster's kube-apiserver is stopped
//! for 10 s while the operator (leader election, policy and node controllers) runs in this
//! process; once it is back, changes made afterwards converge without restarting the operator.
//!
//! It stops the apiserver every other test uses, so `tests/scripts/cluster-tests.sh` runs this
//! binary alone, after the others. It needs the project's local cluster (it restarts a process);
//! on another cluster it says so and checks nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use boundary_api::contract::{node_labels, objects};
use boundary_api::crd::BoundaryPolicy;
use boundary_operator::metrics::Metrics;
use boundary_operator::{Config, Shutdown};
use boundary_test_support::nodes::{NodeSystem, TEST_POOL};
use boundary_test_support::{
    TestNamespace, client, eventually, install_crds, local_cluster_state, restart_local_apiserver,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

async fn create_node(
    client: &Client,
    name: &str,
    pool: &str,
    os_image: &str,
) -> anyhow::Result<()> {
    let system = NodeSystem::linux(os_image, "6.1.141");
    boundary_test_support::nodes::create_node(client, name, pool, system, &[]).await
}

async fn published(ns: &TestNamespace, wanted: &[&str]) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = ns.api();
    eventually(Duration::from_mins(1), "the policies published", || async {
        let text = maps
            .get_opt(objects::POLICY_CONFIGMAP)
            .await?
            .and_then(|m| m.data)
            .and_then(|d| d.get(objects::POLICY_CONFIGMAP_KEY).cloned())
            .unwrap_or_default();
        Ok(wanted.iter().all(|w| text.contains(w)).then_some(()))
    })
    .await
}

async fn os_label(client: &Client, node: &str) -> anyhow::Result<Option<String>> {
    let node = Api::<Node>::all(client.clone()).get(node).await?;
    let labels: BTreeMap<String, String> = node.metadata.labels.unwrap_or_default();
    Ok(labels.get(node_labels::OS).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story, told in order
async fn the_operator_converges_after_the_apiserver_was_down_for_10_seconds() -> anyhow::Result<()>
{
    if local_cluster_state().is_none() {
        eprintln!("skipped: stopping the apiserver needs the project's local cluster");
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-outage", &[]).await?;
    let pool = ns.name().to_owned();
    let metrics = Metrics::default();
    let config = Config {
        watch_namespace: Some(ns.name().into()),
        node_selector: Some(format!("{TEST_POOL}={pool}")),
        node_agent_namespace: Some(ns.name().into()),
        retry_seconds: 1,
        instance: Some("outage-test".into()),
        lease_namespace: Some(ns.name().into()),
        metrics: metrics.clone(),
        ..Config::default()
    };
    let (stop, shutdown) = Shutdown::new();
    let operator = tokio::spawn(boundary_operator::run(client.clone(), config, shutdown));

    let policies: Api<BoundaryPolicy> = ns.api();
    let policy = |name: &str, domain: &str| -> anyhow::Result<BoundaryPolicy> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "agentboundary.dev/v1alpha1",
            "kind": "BoundaryPolicy",
            "metadata": {"name": name},
            "spec": {"podSelector": {}, "allow": [format!("domain={domain}")]},
        }))?)
    };
    policies
        .create(
            &PostParams::default(),
            &policy("before", "before.example.com")?,
        )
        .await?;
    let first_node = format!("{pool}-al2023");
    create_node(&client, &first_node, &pool, "Amazon Linux 2023.6.20250203").await?;
    published(&ns, &["before.example.com"]).await?;
    eventually(
        Duration::from_secs(30),
        "the first node labelled",
        || async { os_label(&client, &first_node).await },
    )
    .await?;

    // The outage.
    tokio::task::spawn_blocking(|| restart_local_apiserver(Duration::from_secs(10))).await??;
    eventually(Duration::from_mins(1), "the apiserver back", || async {
        Ok(policies
            .list(&kube::api::ListParams::default())
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;

    // Changes after the outage converge, with the same operator task.
    policies
        .patch(
            "before",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allow": ["domain=edited.example.com"]}})),
        )
        .await?;
    policies
        .create(
            &PostParams::default(),
            &policy("after", "after.example.com")?,
        )
        .await?;
    let second_node = format!("{pool}-bottlerocket");
    create_node(
        &client,
        &second_node,
        &pool,
        "Bottlerocket OS 1.19.2 (aws-k8s-1.29)",
    )
    .await?;
    published(&ns, &["edited.example.com", "after.example.com"]).await?;
    let os = eventually(
        Duration::from_mins(1),
        "the second node labelled",
        || async { os_label(&client, &second_node).await },
    )
    .await?;
    assert_eq!(os, boundary_api::contract::os::BOTTLEROCKET);
    assert!(
        !operator.is_finished(),
        "the operator stopped during the outage"
    );
    eventually(Duration::from_secs(30), "leading again", || async {
        Ok(metrics.is_leader().then_some(()))
    })
    .await?;

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(15), operator)
        .await
        .context("the operator did not stop")???;
    let nodes: Api<Node> = Api::all(client.clone());
    for node in [first_node, second_node] {
        let _ = nodes.delete(&node, &DeleteParams::default()).await;
    }
    Ok(())
}

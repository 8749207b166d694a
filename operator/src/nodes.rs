//! The node controller: writes the labels the webhook reads (see [`crate::labels`]) with
//! server-side apply, from each node's classification and the probe report of the node agent
//! Pod running on it. The node agent never writes Node objects; it reports through the
//! `agentboundary.dev/probe-report` annotation of its own Pod.

use std::sync::Arc;
use std::time::Duration;

use boundary_api::contract::{annotations, objects};
use boundary_api::probe::ProbeReport;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo, Pod, PodSpec};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Map, Value, json};

use crate::Error;
use crate::config::Config;
use crate::labels::{classify, labels_in_sync, node_labels};
use crate::metrics::{Controller as MetricsController, Metrics};
use crate::shutdown::Shutdown;
use crate::watch::{ByTarget, spawn_indexed_reflector, stop_on, wait_ready};

/// What a reconcile needs.
pub struct Context {
    client: Client,
    agents: ByTarget<Pod, Node>,
    retry: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("agents", &self.agents.store().len())
            .finish_non_exhaustive()
    }
}

/// Reconciles running at once: each may write a Node, and at most this many requests (and
/// connections to the apiserver) are in flight however many nodes join together.
const CONCURRENCY: u16 = 16;

/// What of a Node the controller keeps in memory: its name, `resourceVersion`, labels and the
/// three `nodeInfo` fields classification reads ([`classify`]). A real node's status (images,
/// conditions, addresses, capacity) and managed fields are many kilobytes; kept whole, 10,000
/// of them would hold over 100 MiB.
pub fn trim_node(node: &mut Node) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        ..ObjectMeta::default()
    };
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        node_info: status.node_info.map(|info| NodeSystemInfo {
            os_image: info.os_image,
            kernel_version: info.kernel_version,
            operating_system: info.operating_system,
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    });
}

/// What of a node agent Pod the controller keeps: what [`probe_report`] reads (name, namespace,
/// creation and deletion times, the probe report annotation, the node).
pub fn trim_agent(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    let mut kept = meta.annotations.unwrap_or_default();
    kept.retain(|k, _| k == annotations::PROBE_REPORT);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        annotations: Some(kept),
        ..ObjectMeta::default()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = None;
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let (tx, rx) = futures::channel::mpsc::unbounded::<ObjectRef<Node>>();
    let pods: Api<Pod> = match &config.node_agent_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (agents, _agent_task) = spawn_indexed_reflector(
        watcher(
            pods,
            watcher::Config::default().labels(&config.node_agent_selector),
        )
        .modify(trim_agent),
        |pod: &Pod| {
            let node = pod.spec.as_ref()?.node_name.as_deref()?;
            Some(ObjectRef::new(node))
        },
        tx,
    );
    // Never label from a half-listed cache: a missing report removes `probed`.
    if !wait_ready(agents.store(), "node agent Pod", &shutdown).await? {
        return Ok(());
    }
    let mut nodes = watcher::Config::default();
    if let Some(selector) = &config.node_selector {
        nodes = nodes.labels(selector);
    }
    let context = Arc::new(Context {
        client: client.clone(),
        agents,
        retry: config.retry(),
        metrics: config.metrics.clone(),
    });
    tracing::info!(selector = ?config.node_selector, "node controller started");
    let (store, writer) = reflector::store();
    let trimmed = watcher(Api::<Node>::all(client), nodes)
        .modify(trim_node)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let (controller, abandon) = stop_on(Controller::for_stream(trimmed, store), &shutdown);
    controller
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(rx)
        .run(
            |object, ctx: Arc<Context>| async move {
                let measurer = ctx.metrics.measure(MetricsController::Nodes);
                let result = reconcile(object, ctx.clone()).await;
                measurer.count(&result);
                result
            },
            error_policy,
            context,
        )
        .take_until(abandon)
        .for_each(|result| {
            match result {
                Ok((node, _)) => tracing::debug!(node = %node.name, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "reconcile skipped"),
            }
            std::future::ready(())
        })
        .await;
    tracing::info!("node controller stopped");
    Ok(())
}

/// Failed reconciles are retried after the configured delay.
// The signature is the one `Controller::run` takes.
#[allow(clippy::needless_pass_by_value)]
pub fn error_policy(node: Arc<Node>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), %error, "node reconcile failed");
    Action::requeue(ctx.retry)
}

/// The probe report of the newest node agent Pod on `node` that has a readable one.
pub fn probe_report(node: &str, agents: &[Arc<Pod>]) -> Option<ProbeReport> {
    let mut on_node: Vec<&Arc<Pod>> = agents
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
        })
        .collect();
    on_node.sort_by_key(|p| std::cmp::Reverse(p.creation_timestamp()));
    on_node.into_iter().find_map(|pod| {
        let text = pod.annotations().get(annotations::PROBE_REPORT)?;
        match serde_json::from_str(text) {
            Ok(report) => Some(report),
            Err(err) => {
                tracing::warn!(
                    pod = %pod.name_any(), namespace = ?pod.namespace(), %node, error = %err,
                    "unreadable probe report ignored"
                );
                None
            }
        }
    })
}

/// Brings the operator's labels on `node` up to date.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.name_any();
    let probe = probe_report(&name, &ctx.agents.of(&ObjectRef::new(&name)));
    let desired = node_labels(&classify(&node), probe.as_ref());
    if labels_in_sync(node.labels(), &desired) {
        return Ok(Action::await_change());
    }
    let set: Map<String, Value> = desired
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), Value::String(v.clone()?))))
        .collect();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let body =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": set}});
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| Error::kube(format!("labelling node {name}"), e))?;
    // Server-side apply removes the labels this manager set before and omits now; a label of
    // ours that someone else set (an older operator, a person) needs an explicit removal.
    let leftovers: Map<String, Value> = desired
        .iter()
        .filter(|(k, v)| v.is_none() && applied.labels().contains_key(*k))
        .map(|(k, _)| (k.clone(), Value::Null))
        .collect();
    if !leftovers.is_empty() {
        let params = PatchParams {
            field_manager: Some(objects::OPERATOR_FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(
            &name,
            &params,
            &Patch::Merge(json!({"metadata": {"labels": leftovers}})),
        )
        .await
        .map_err(|e| Error::kube(format!("removing stale labels of node {name}"), e))?;
    }
    tracing::info!(node = %name, labels = ?set, probed = probe.is_some(), "node labels updated");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, node: &str, created: &str, report: Option<&str>) -> Arc<Pod> {
        let mut annotations = serde_json::Map::new();
        if let Some(r) = report {
            annotations.insert(annotations::PROBE_REPORT.into(), r.into());
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations},
                "spec": {"nodeName": node, "containers": []},
            }))
            .unwrap(),
        )
    }

    /// A node as a kubelet reports it, with much the operator never reads.
    fn full_node(os_image: &str, labels: &serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": "n1", "uid": "u1", "resourceVersion": "7", "labels": labels,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "spec": {"providerID": "aws:///eu-west-1a/i-0", "taints": [
                {"key": "dedicated", "value": "agents", "effect": "NoSchedule"}]},
            "status": {
                "nodeInfo": {
                    "osImage": os_image, "kernelVersion": "6.1.141", "operatingSystem": "linux",
                    "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://1.7.0",
                    "kubeProxyVersion": "v1.29", "kubeletVersion": "v1.29", "machineID": "m",
                    "systemUUID": "s",
                },
                "images": [{"names": ["registry.example/big:1"], "sizeBytes": 1_000_000}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn trimmed_nodes_get_the_labels_whole_ones_do() {
        let images = [
            "Amazon Linux 2",
            "Bottlerocket OS 1.19.2 (aws-k8s-1.29)",
            "Ubuntu 24.04.1 LTS",
            "Windows Server 2022 Datacenter",
        ];
        let label_sets = [
            json!({"kubernetes.io/os": "linux"}),
            json!({"eks.amazonaws.com/compute-type": "auto", "agentboundary.dev/tiers": "landlock"}),
            json!({"eks.amazonaws.com/compute-type": "fargate"}),
        ];
        let report: ProbeReport = serde_json::from_value(
            json!({"tiers": {"userns": {"works": true}}, "facts": {"landlockAbi": 6}}),
        )
        .unwrap();
        for image in images {
            for labels in &label_sets {
                let whole = full_node(image, labels);
                let mut trimmed = whole.clone();
                trim_node(&mut trimmed);
                assert!(trimmed.spec.is_none() && trimmed.metadata.managed_fields.is_none());
                assert_eq!(trimmed.metadata.labels, whole.metadata.labels);
                for probe in [None, Some(&report)] {
                    assert_eq!(
                        node_labels(&classify(&trimmed), probe),
                        node_labels(&classify(&whole), probe),
                        "{image} {labels}"
                    );
                }
            }
        }
    }

    #[test]
    fn trimmed_agents_give_the_same_report() {
        let report = r#"{"tiers": {"landlock": {"works": true}}, "facts": {"landlockAbi": 6}}"#;
        let mut pods = vec![
            agent("a", "n1", "2024-01-01T00:00:00Z", Some(report)),
            agent("b", "n2", "2024-01-01T00:00:00Z", None),
        ];
        let whole: Vec<Option<ProbeReport>> = ["n1", "n2"]
            .iter()
            .map(|n| probe_report(n, &pods))
            .collect();
        for pod in &mut pods {
            let mut copy = (**pod).clone();
            copy.metadata
                .annotations
                .get_or_insert_default()
                .insert("other".into(), "x".repeat(1000));
            trim_agent(&mut copy);
            assert_eq!(
                copy.annotations().len(),
                usize::from(copy.name_any() == "a")
            );
            *pod = Arc::new(copy);
        }
        let trimmed: Vec<Option<ProbeReport>> = ["n1", "n2"]
            .iter()
            .map(|n| probe_report(n, &pods))
            .collect();
        assert_eq!(trimmed, whole);
        assert!(trimmed[0].is_some());
    }

    #[test]
    fn the_newest_readable_report_on_the_node_wins() {
        let old = r#"{"tiers": {"userns": {"works": true}}, "facts": {"landlockAbi": 1}}"#;
        let new = r#"{"tiers": {"landlock": {"works": true}}, "facts": {"landlockAbi": 6}}"#;
        let pods = [
            agent("old", "n1", "2024-01-01T00:00:00Z", Some(old)),
            agent("new", "n1", "2024-02-01T00:00:00Z", Some(new)),
            agent(
                "newest-broken",
                "n1",
                "2024-03-01T00:00:00Z",
                Some("{not json"),
            ),
            agent("pending", "n1", "2024-04-01T00:00:00Z", None),
            agent("elsewhere", "n2", "2024-05-01T00:00:00Z", Some(old)),
        ];
        assert_eq!(probe_report("n1", &pods).unwrap().facts.landlock_abi, 6);
        assert_eq!(probe_report("n2", &pods).unwrap().facts.landlock_abi, 1);
        assert!(probe_report("n3", &pods).is_none());
    }
}

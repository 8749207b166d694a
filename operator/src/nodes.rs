//! The node controller: writes the labels the webhook reads (see [`crate::labels`]) with
//! server-side apply, from each node's classification and the probe report of the node agent
//! Pod running on it. The node agent never writes Node objects; it reports through the
//! `agentboundary.dev/probe-report` annotation of its own Pod.

use std::sync::Arc;
use std::time::Duration;

use boundary_api::contract::{annotations, objects};
use boundary_api::probe::ProbeReport;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo, Pod};
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
    agents: ByTarget<AgentPod, Node>,
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
/// creation and deletion times, the probe report annotation) and its node. A whole `Pod` is over
/// 2 KiB even when trimmed (its spec is stored inline); with an agent on each of 10,000 nodes
/// that alone was 22 MiB.
#[derive(Clone, Debug, Default)]
pub struct AgentPod {
    pub metadata: ObjectMeta,
    pub node: Option<String>,
}

impl From<Pod> for AgentPod {
    fn from(pod: Pod) -> Self {
        let meta = pod.metadata;
        let mut kept = meta.annotations.unwrap_or_default();
        kept.retain(|k, _| k == annotations::PROBE_REPORT);
        AgentPod {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                resource_version: meta.resource_version,
                creation_timestamp: meta.creation_timestamp,
                deletion_timestamp: meta.deletion_timestamp,
                annotations: Some(kept),
                ..ObjectMeta::default()
            },
            node: pod.spec.and_then(|spec| spec.node_name),
        }
    }
}

/// An agent is stored, watched and referred to as the Pod it is.
impl kube::Resource for AgentPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> std::borrow::Cow<'_, str> {
        Pod::kind(&())
    }
    fn group((): &()) -> std::borrow::Cow<'_, str> {
        Pod::group(&())
    }
    fn version((): &()) -> std::borrow::Cow<'_, str> {
        Pod::version(&())
    }
    fn plural((): &()) -> std::borrow::Cow<'_, str> {
        Pod::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A watch event of an agent Pod as one of an [`AgentPod`].
fn agent_event(event: watcher::Event<Pod>) -> watcher::Event<AgentPod> {
    use watcher::Event;
    match event {
        Event::Apply(pod) => Event::Apply(pod.into()),
        Event::Delete(pod) => Event::Delete(pod.into()),
        Event::Init => Event::Init,
        Event::InitApply(pod) => Event::InitApply(pod.into()),
        Event::InitDone => Event::InitDone,
    }
}

/// The node whose labels `agent`'s report decides.
fn node_of(agent: &AgentPod) -> Option<ObjectRef<Node>> {
    agent.node.as_deref().map(ObjectRef::new)
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
        .map(|event| event.map(agent_event)),
        node_of,
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
pub fn probe_report(node: &str, agents: &[Arc<AgentPod>]) -> Option<ProbeReport> {
    let mut on_node: Vec<&Arc<AgentPod>> = agents
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.node.as_deref() == Some(node))
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

    /// A node agent Pod as the DaemonSet makes it.
    fn agent_pod(name: &str, node: &str, created: &str, report: Option<&str>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(r) = report {
            annotations.insert(annotations::PROBE_REPORT.into(), r.into());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "agent-boundary", "uid": format!("uid-{name}"),
                         "resourceVersion": "7", "creationTimestamp": created,
                         "labels": {"app.kubernetes.io/component": "node-agent"},
                         "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "boundary"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.9"},
        }))
        .unwrap()
    }

    fn agent(name: &str, node: &str, created: &str, report: Option<&str>) -> Arc<AgentPod> {
        Arc::new(agent_pod(name, node, created, report).into())
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
    fn an_agent_keeps_what_its_report_needs_and_nothing_else() {
        let report = r#"{"tiers": {"landlock": {"works": true}}, "facts": {"landlockAbi": 6}}"#;
        let mut pod = agent_pod("a", "n1", "2024-01-01T00:00:00Z", Some(report));
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert("other".into(), "x".repeat(1000));
        let agent = AgentPod::from(pod.clone());
        assert_eq!(agent.node.as_deref(), Some("n1"));
        assert_eq!(
            ObjectRef::from_obj(&agent).erase(),
            ObjectRef::from_obj(&pod).erase(),
            "stored and indexed as the Pod it is"
        );
        let meta = &agent.metadata;
        assert_eq!(
            (
                &meta.name,
                &meta.namespace,
                &meta.uid,
                &meta.resource_version
            ),
            (
                &pod.metadata.name,
                &pod.metadata.namespace,
                &pod.metadata.uid,
                &pod.metadata.resource_version
            )
        );
        assert_eq!(meta.creation_timestamp, pod.metadata.creation_timestamp);
        assert_eq!(
            meta.annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [annotations::PROBE_REPORT]
        );
        assert!(meta.labels.is_none() && meta.managed_fields.is_none());
        let report = probe_report("n1", &[Arc::new(agent)]).unwrap();
        assert_eq!(report.facts.landlock_abi, 6);
        let mut leaving = pod;
        leaving.metadata.deletion_timestamp = leaving.metadata.creation_timestamp.clone();
        assert!(probe_report("n1", &[Arc::new(leaving.into())]).is_none());
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

//! The live [`ClusterView`]: watches of Nodes, Namespaces, `BoundaryPolicy` and
//! `ClusterBoundaryPolicy` objects kept in
//! memory (kube-runtime reflectors), so that a review is answered without calling the
//! apiserver. Node facts are recomputed when a node changes, not on every review.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::admit::ClusterView;
use crate::classes::NodeClasses;
use crate::plan::Cluster;
use crate::policy_index::{ClusterPolicies, Policies};
use boundary_api::nodes::NodeFacts;

/// Why the cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The apiserver's version could not be read.
    #[error("reading the apiserver version: {0}")]
    Version(#[source] kube::Error),
    /// The version string is not `1.x`.
    #[error("cannot read the apiserver minor version {0:?}")]
    BadVersion(String),
}

/// Watches of the cluster, shared by all reviews.
#[derive(Clone)]
pub struct LiveView {
    nodes: Arc<ArcSwap<NodeClasses>>,
    namespaces: Store<Namespace>,
    policies: Arc<ArcSwap<Policies>>,
    cluster_policies: Arc<ArcSwap<ClusterPolicies>>,
    cluster: Cluster,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("nodes", &self.nodes.load().nodes().len())
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Parses the apiserver's minor version (`"29"`, `"29+"` on EKS and GKE).
pub fn parse_minor(minor: &str) -> Option<u32> {
    minor.trim_end_matches('+').parse().ok()
}

impl LiveView {
    /// Starts the watches on the tokio runtime. `ready` turns true once every watch has listed
    /// its objects (the readiness probe waits for that, so no review sees an empty cache).
    pub async fn start(client: Client, ready: Arc<AtomicBool>) -> Result<LiveView, CacheError> {
        let version = client
            .apiserver_version()
            .await
            .map_err(CacheError::Version)?;
        let minor = parse_minor(&version.minor)
            .ok_or_else(|| CacheError::BadVersion(version.minor.clone()))?;

        let (node_store, node_writer) = reflector::store::<Node>();
        let (ns_store, ns_writer) = reflector::store::<Namespace>();
        let (policy_store, policy_writer) = reflector::store::<BoundaryPolicy>();
        let (cluster_store, cluster_writer) = reflector::store::<ClusterBoundaryPolicy>();
        let nodes = Arc::new(ArcSwap::from_pointee(NodeClasses::default()));

        let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(node_writer);
        let (nodes_synced, mut nodes_listed) = tokio::sync::watch::channel(false);
        tokio::spawn(keep_derived(
            "node",
            node_events,
            node_store,
            nodes.clone(),
            nodes_synced,
            node_classes,
        ));
        spawn_drain(
            "namespace",
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .reflect(ns_writer)
            .touched_objects(),
        );
        let policies = Arc::new(ArcSwap::from_pointee(Policies::default()));
        let (policies_synced, mut policies_listed) = tokio::sync::watch::channel(false);
        tokio::spawn(keep_derived(
            "policy",
            watcher(
                Api::<BoundaryPolicy>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .reflect(policy_writer),
            policy_store,
            policies.clone(),
            policies_synced,
            |store| store.state().into_iter().collect::<Policies>(),
        ));
        // Helm never upgrades CRDs: after an upgrade from a release without this one there can
        // be no ClusterBoundaryPolicy, so none is the truth (a watch would never list, and the
        // webhook never become ready).
        let cluster_api = Api::<ClusterBoundaryPolicy>::all(client);
        let cluster_crd_missing = matches!(
            cluster_api.list(&kube::api::ListParams::default().limit(1)).await,
            Err(kube::Error::Api(ref status)) if status.code == 404
        );
        let cluster_policies = Arc::new(ArcSwap::from_pointee(ClusterPolicies::default()));
        let (cluster_synced, mut cluster_listed) = tokio::sync::watch::channel(false);
        if cluster_crd_missing {
            tracing::warn!(
                "the ClusterBoundaryPolicy CRD is not installed: cluster policies are ignored until it is and the webhook restarts (apply the chart's crds/)"
            );
        } else {
            tokio::spawn(keep_derived(
                "cluster policy",
                watcher(cluster_api, watcher::Config::default())
                    .default_backoff()
                    .reflect(cluster_writer),
                cluster_store,
                cluster_policies.clone(),
                cluster_synced,
                |store| store.state().into_iter().collect::<ClusterPolicies>(),
            ));
        }
        let view = LiveView {
            nodes,
            namespaces: ns_store,
            policies,
            cluster_policies,
            cluster: Cluster { minor },
            ready: ready.clone(),
        };
        let b = view.namespaces.clone();
        tokio::spawn(async move {
            let all = async {
                // The node facts, not just the node store: the facts are what reviews read.
                nodes_listed.wait_for(|listed| *listed).await.ok()?;
                b.wait_until_ready().await.ok()?;
                // The index, not just the store: the index is what reviews read.
                policies_listed.wait_for(|listed| *listed).await.ok()?;
                if !cluster_crd_missing {
                    cluster_listed.wait_for(|listed| *listed).await.ok()?;
                }
                Some(())
            };
            if all.await.is_some() {
                tracing::info!(
                    "node, namespace, policy and cluster policy caches are synced; ready"
                );
                ready.store(true, Ordering::SeqCst);
            }
        });
        Ok(view)
    }

    /// Whether every watch has listed its objects.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Keeps `derived` equal to `derive(store)`, where `events` (a reflected watch) fills `store`.
/// Recomputed after an object changes and after a (re)list completes: the store swaps the listed
/// objects in only at `InitDone`, so a value derived on `InitApply` would be that of the
/// previous list (nothing at start-up, until some object next changed). `synced` turns true
/// once the first list is in `derived`.
async fn keep_derived<K, T, S>(
    what: &'static str,
    events: S,
    store: Store<K>,
    derived: Arc<ArcSwap<T>>,
    synced: tokio::sync::watch::Sender<bool>,
    derive: impl Fn(&Store<K>) -> T,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Err(e) => tracing::warn!(error = %e, "{what} watch"),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(
                event @ (watcher::Event::Apply(_)
                | watcher::Event::Delete(_)
                | watcher::Event::InitDone),
            ) => {
                derived.store(Arc::new(derive(&store)));
                if matches!(event, watcher::Event::InitDone) {
                    synced.send_replace(true);
                }
            }
        }
    }
}

/// The nodes of `store` grouped into classes, once per change, so that reviews cost classes,
/// not nodes.
fn node_classes(store: &Store<Node>) -> NodeClasses {
    let mut all: Vec<NodeFacts> = store
        .state()
        .iter()
        .map(|n| NodeFacts::from_node(n))
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    NodeClasses::new(all)
}

fn spawn_drain<S, T>(what: &'static str, stream: S)
where
    S: futures_util::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "{what} watch");
            }
        }
    });
}

impl ClusterView for LiveView {
    fn nodes(&self) -> Arc<NodeClasses> {
        self.nodes.load_full()
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_default()
    }

    fn policies(&self, namespace: &str) -> Arc<[Arc<BoundaryPolicy>]> {
        self.policies.load().in_namespace(namespace)
    }

    fn cluster_policies(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Arc<[Arc<ClusterBoundaryPolicy>]> {
        self.cluster_policies.load().selecting(namespace, labels)
    }

    fn cluster(&self) -> Cluster {
        self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, os_image: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"nodeInfo": {
                "osImage": os_image, "kernelVersion": "6.1.0", "operatingSystem": "linux",
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "systemUUID": ""
            }}
        }))
        .unwrap()
    }

    /// Runs `events` through a reflector into [`keep_derived`] of [`node_classes`] to the end of
    /// the stream.
    async fn facts_after(events: Vec<watcher::Event<Node>>) -> (Vec<String>, bool) {
        let (store, writer) = reflector::store::<Node>();
        let facts = Arc::new(ArcSwap::from_pointee(NodeClasses::default()));
        let (synced, listed) = tokio::sync::watch::channel(false);
        let stream = futures_util::stream::iter(events.into_iter().map(Ok)).reflect(writer);
        keep_derived("node", stream, store, facts.clone(), synced, node_classes).await;
        let names = facts
            .load()
            .nodes()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        (names, *listed.borrow())
    }

    #[tokio::test]
    async fn the_first_list_reaches_the_facts_without_any_later_node_change() {
        let (names, synced) = facts_after(vec![
            watcher::Event::Init,
            watcher::Event::InitApply(node("b", "Bottlerocket OS 1.49.0")),
            watcher::Event::InitApply(node("a", "Amazon Linux 2023")),
            watcher::Event::InitDone,
        ])
        .await;
        assert_eq!(names, ["a", "b"]);
        assert!(synced);
    }

    #[tokio::test]
    async fn a_relist_replaces_the_facts_when_it_completes() {
        let (names, _) = facts_after(vec![
            watcher::Event::Init,
            watcher::Event::InitApply(node("gone", "Amazon Linux 2023")),
            watcher::Event::InitDone,
            watcher::Event::Apply(node("a", "Amazon Linux 2023")),
            // The watch broke; the relist no longer has `gone` and has a new node.
            watcher::Event::Init,
            watcher::Event::InitApply(node("a", "Amazon Linux 2023")),
            watcher::Event::InitApply(node("new", "Amazon Linux 2023")),
            watcher::Event::InitDone,
        ])
        .await;
        assert_eq!(names, ["a", "new"]);
    }

    #[tokio::test]
    async fn facts_are_not_synced_before_the_list_completes() {
        let (names, synced) = facts_after(vec![
            watcher::Event::Init,
            watcher::Event::InitApply(node("a", "Amazon Linux 2023")),
        ])
        .await;
        assert!(names.is_empty());
        assert!(!synced);
    }

    #[test]
    fn minor_versions_parse() {
        assert_eq!(super::parse_minor("20"), Some(20));
        assert_eq!(super::parse_minor("29+"), Some(29));
        assert_eq!(super::parse_minor("x"), None);
    }
}

//! The live [`ClusterView`]: watches of Nodes, Namespaces and `BoundaryPolicy` objects kept in
//! memory (kube-runtime reflectors), so that a review is answered without calling the
//! apiserver. Node facts are recomputed when a node changes, not on every review.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use boundary_api::crd::BoundaryPolicy;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::admit::ClusterView;
use crate::facts::NodeFacts;
use crate::plan::Cluster;

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
    nodes: Arc<ArcSwap<Vec<NodeFacts>>>,
    namespaces: Store<Namespace>,
    policies: Store<BoundaryPolicy>,
    cluster: Cluster,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("nodes", &self.nodes.load().len())
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
        let nodes = Arc::new(ArcSwap::from_pointee(Vec::new()));

        let node_stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(node_writer)
            .touched_objects();
        let facts = nodes.clone();
        let store = node_store.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(node_stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "node watch");
                }
                let mut all: Vec<NodeFacts> = store
                    .state()
                    .iter()
                    .map(|n| NodeFacts::from_node(n))
                    .collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                facts.store(Arc::new(all));
            }
        });
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
        spawn_drain(
            "policy",
            watcher(
                Api::<BoundaryPolicy>::all(client),
                watcher::Config::default(),
            )
            .default_backoff()
            .reflect(policy_writer)
            .touched_objects(),
        );
        let view = LiveView {
            nodes,
            namespaces: ns_store,
            policies: policy_store,
            cluster: Cluster { minor },
            ready: ready.clone(),
        };
        let (a, b, c) = (node_store, view.namespaces.clone(), view.policies.clone());
        tokio::spawn(async move {
            let all = async {
                a.wait_until_ready().await?;
                b.wait_until_ready().await?;
                c.wait_until_ready().await
            };
            if all.await.is_ok() {
                tracing::info!("node, namespace and policy caches are synced; ready");
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
    fn nodes(&self) -> Arc<Vec<NodeFacts>> {
        self.nodes.load_full()
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_default()
    }

    fn policies(&self, namespace: &str) -> Vec<BoundaryPolicy> {
        self.policies
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .iter()
            .map(|p| (**p).clone())
            .collect()
    }

    fn cluster(&self) -> Cluster {
        self.cluster
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn minor_versions_parse() {
        assert_eq!(super::parse_minor("20"), Some(20));
        assert_eq!(super::parse_minor("29+"), Some(29));
        assert_eq!(super::parse_minor("x"), None);
    }
}

//! `boundary-operator`: the controller of Agent Boundary for Kubernetes.
//!
//! Shaped like kube-rs's `controller-rs`: a context per controller, a `reconcile` that computes
//! the desired state with pure functions and writes it by server-side apply with one fixed field
//! manager ([`boundary_api::contract::objects::OPERATOR_FIELD_MANAGER`]), Events, an
//! `error_policy` that requeues, and graceful shutdown.
//!
//! * [`policy`]: compiles the `BoundaryPolicy` objects of each namespace and the
//!   `ClusterBoundaryPolicy` objects selecting it ([`compile`], [`cluster`]) into the ConfigMap
//!   the sidecars mount, writes each policy's status ([`status`]), including which jailed pods
//!   are proven to enforce it ([`enforcement`]), each cluster policy's status, and the namespace
//!   label `agentboundary.dev/inject=required` of `requireJailing`.
//! * [`nodes`]: writes the node labels the webhook reads, from classification and the node
//!   agent's probe reports ([`labels`]).
//! * [`node_agent`]: the node agent (`boundary-node-agent`, the DaemonSet) that writes those
//!   reports on its own Pod from `boundary probe`.
#![forbid(unsafe_code)]

pub mod certs;
pub mod cluster;
pub mod compile;
pub mod enforcement;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod node_agent;
pub mod nodes;
pub mod policy;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boundary_api::contract::objects;

use kube::Client;

/// Label selector of the node agent's Pods (they carry the probe report).
pub const DEFAULT_NODE_AGENT_SELECTOR: &str = "app.kubernetes.io/component=node-agent";

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the apiserver failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A watch ended before its first list completed (the operator is shutting down).
    #[error("the {0} watch stopped before it listed its objects")]
    WatchStopped(&'static str),
    /// The object has no namespace or name (never for objects from the apiserver).
    #[error("object without {0}")]
    MissingField(&'static str),
    /// The webhook's certificates cannot be managed.
    #[error("webhook certificates: {0}")]
    Certificates(#[from] certs::CertError),
    /// The metrics endpoint cannot listen.
    #[error("listening on {addr} for /metrics: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A [`Error::Kube`] with its context.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}

/// Settings of the controllers (flags and environment variables of the binary).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Reconcile the BoundaryPolicy objects of this namespace only (default: all namespaces).
    #[arg(long, env = "BOUNDARY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Reconcile only the namespaces with these labels (a label selector; default: every
    /// namespace). `ClusterBoundaryPolicy` status then counts only those namespaces.
    #[arg(long, env = "BOUNDARY_NAMESPACE_SELECTOR")]
    pub namespace_selector: Option<String>,
    /// Namespaces (comma-separated) no `ClusterBoundaryPolicy` selects, besides the operator's own
    /// (`POD_NAMESPACE`) and `kube-system`, which never are.
    #[arg(long, env = boundary_api::contract::env::EXCLUDED_NAMESPACES, value_delimiter = ',')]
    pub excluded_namespaces: Vec<String>,
    /// Namespaces (comma-separated) where jailing is required: labelled
    /// `agentboundary.dev/inject=required` like those a `ClusterBoundaryPolicy` requires.
    #[arg(long, env = boundary_api::contract::env::REQUIRED_NAMESPACES, value_delimiter = ',')]
    pub required_namespaces: Vec<String>,
    /// Label selector of the nodes to label (default: every node).
    #[arg(long, env = "BOUNDARY_NODE_SELECTOR")]
    pub node_selector: Option<String>,
    /// Label selector of the node agent's Pods, whose probe-report annotation is merged into
    /// the labels of the node they run on.
    #[arg(long, env = "BOUNDARY_NODE_AGENT_SELECTOR", default_value = DEFAULT_NODE_AGENT_SELECTOR)]
    pub node_agent_selector: String,
    /// Namespace of the node agent's Pods. Only Pods there are trusted to report probes; without
    /// it, matching Pods of every namespace are (anyone who can create a labelled Pod bound to a
    /// node could then change that node's labels).
    #[arg(long, env = "BOUNDARY_NODE_AGENT_NAMESPACE")]
    pub node_agent_namespace: Option<String>,
    /// Seconds before a failed reconcile is retried.
    #[arg(long, env = "BOUNDARY_RETRY_SECONDS", default_value_t = 10)]
    pub retry_seconds: u64,
    /// Name of this instance in Events (`reportingInstance`) and in the leader-election Lease;
    /// the Pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// The operator's own namespace (the webhook certificate Secrets live there).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader-election Lease. Unset: no leader election (run one replica).
    #[arg(long, env = "BOUNDARY_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "BOUNDARY_LEASE_NAME", default_value = objects::OPERATOR_LEASE)]
    pub lease_name: String,
    /// Seconds a Lease holds without renewal (another replica takes over after that).
    #[arg(long, env = "BOUNDARY_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps acting without renewing the Lease (less than its duration).
    #[arg(
        long,
        env = "BOUNDARY_LEASE_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub lease_renew_deadline_seconds: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz`. Unset: not served.
    #[arg(long, env = "BOUNDARY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Webhook certificate management.
    #[command(flatten)]
    pub certs: certs::CertConfig,
    /// Enforcement checks of jailed pods.
    #[command(flatten)]
    pub enforcement: enforcement::EnforcementConfig,
    /// The counters `/metrics` shows (shared with the caller).
    #[arg(skip)]
    pub metrics: metrics::Metrics,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            watch_namespace: None,
            namespace_selector: None,
            excluded_namespaces: Vec::new(),
            required_namespaces: Vec::new(),
            node_selector: None,
            node_agent_selector: DEFAULT_NODE_AGENT_SELECTOR.into(),
            node_agent_namespace: None,
            retry_seconds: 10,
            instance: None,
            namespace: None,
            lease_namespace: None,
            lease_name: objects::OPERATOR_LEASE.into(),
            lease_duration_seconds: 15,
            lease_renew_deadline_seconds: 10,
            metrics_addr: None,
            certs: certs::CertConfig::default(),
            enforcement: enforcement::EnforcementConfig::default(),
            metrics: metrics::Metrics::default(),
        }
    }
}

impl Config {
    /// Delay before a failed reconcile runs again.
    pub fn retry(&self) -> Duration {
        Duration::from_secs(self.retry_seconds.max(1))
    }
}

/// A shutdown signal shared by the controllers: resolves once the sender fires or is dropped.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal and its trigger (send `true`, or drop the sender, to shut down).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves when shutdown is requested.
    pub fn wait(self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0;
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Runs the operator until `shutdown`: the metrics endpoint always, the controllers and the
/// certificate manager only while this replica leads (always without leader election). Each
/// controller finishes the reconciles it has started.
pub async fn run(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    // Settings that cannot work fail the start, not a background task.
    config.certs.check(config.namespace.as_deref())?;
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics_addr {
        let bound = metrics::serve(
            addr,
            config.metrics.clone(),
            ready.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|source| Error::Metrics { addr, source })?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    let work = {
        let (client, config) = (client.clone(), config.clone());
        move |term: Shutdown| controllers(client.clone(), config.clone(), term)
    };
    // Ready once running or campaigning: a standby replica is healthy.
    ready.store(true, Ordering::Relaxed);
    let Some(namespace) = config.lease_namespace.clone() else {
        config.metrics.set_leader(true);
        return work(shutdown).await;
    };
    let identity = config.instance.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
            std::process::id()
        )
    });
    let mut election = leader::Election::new(namespace, config.lease_name.clone(), identity);
    election.lease_duration = Duration::from_secs(config.lease_duration_seconds.max(2));
    election.renew_deadline = Duration::from_secs(
        config
            .lease_renew_deadline_seconds
            .clamp(1, config.lease_duration_seconds.max(2) - 1),
    );
    election.retry = (election.renew_deadline / 4).max(Duration::from_millis(500));
    leader::lead(client, election, config.metrics.clone(), shutdown, work).await
}

/// The controllers and the certificate manager, until `shutdown`.
async fn controllers(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let policies = policy::run(client.clone(), config.clone(), shutdown.clone());
    let nodes = nodes::run(client.clone(), config.clone(), shutdown.clone());
    let certificates = async {
        certs::run(
            client.clone(),
            config.namespace.clone(),
            config.certs.clone(),
            config.metrics.clone(),
            config.retry(),
            shutdown.clone(),
        )
        .await
        .map_err(Error::from)
    };
    tokio::try_join!(policies, nodes, certificates).map(|_| ())
}

/// Aborts a spawned task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a reflector (an in-memory copy of the objects `events` reports, from `watcher` or
/// `metadata_watcher`) on its own task and sends `map(object)` to `tx` for every object that
/// changes or goes away. The returned store is ready once the first list is in ([`wait_ready`]).
pub(crate) fn spawn_reflector<K, T, S, F>(
    events: S,
    map: F,
    tx: futures::channel::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<T>>,
) -> (kube::runtime::reflector::Store<K>, AbortOnDrop)
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    T: kube::Resource + 'static,
    T::DynamicType: Send + Sync,
    S: futures::Stream<Item = kube::runtime::watcher::Result<kube::runtime::watcher::Event<K>>>
        + Send
        + 'static,
    F: Fn(&K) -> Option<kube::runtime::reflector::ObjectRef<T>> + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector};
    let (store, writer) = reflector::store();
    let stream = events.default_backoff().reflect(writer);
    let reader = store.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut triggers = Triggers::default();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    let targets = triggers.after(&event, || reader.state(), &map);
                    if targets.into_iter().any(|t| tx.unbounded_send(t).is_err()) {
                        break;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "watch failed; retrying with backoff"),
            }
        }
    });
    (store, AbortOnDrop(task))
}

/// Which reconciles a watch event triggers. A change triggers its target at once. A (re)list
/// fills the store only at `InitDone` (until then it holds the previous list), so the targets
/// of the listed objects, and of the previous list's (which may be gone now), are held until
/// then: a reconcile run earlier would read the previous list.
struct Triggers<T: kube::Resource> {
    held: Vec<kube::runtime::reflector::ObjectRef<T>>,
}

impl<T: kube::Resource> Default for Triggers<T> {
    fn default() -> Self {
        Triggers { held: Vec::new() }
    }
}

impl<T: kube::Resource> Triggers<T> {
    /// The targets to send after `event`; `previous` gives the store's objects (read only on
    /// `Init`, while the store still holds the previous list).
    fn after<K, P, F>(
        &mut self,
        event: &kube::runtime::watcher::Event<K>,
        previous: P,
        map: &F,
    ) -> Vec<kube::runtime::reflector::ObjectRef<T>>
    where
        P: FnOnce() -> Vec<std::sync::Arc<K>>,
        F: Fn(&K) -> Option<kube::runtime::reflector::ObjectRef<T>>,
    {
        use kube::runtime::watcher::Event;
        match event {
            Event::Apply(object) | Event::Delete(object) => map(object).into_iter().collect(),
            Event::Init => {
                self.held = previous().iter().filter_map(|o| map(o)).collect();
                Vec::new()
            }
            Event::InitApply(object) => {
                self.held.extend(map(object));
                Vec::new()
            }
            Event::InitDone => std::mem::take(&mut self.held),
        }
    }
}

/// `controller` set to shut down gracefully on `shutdown`, and a future for `take_until` on its
/// results that resolves when shutdown comes before the controller's own store was listed.
/// kube-runtime 5's graceful shutdown then never ends: its runner holds until the store is
/// ready, but the watcher that would fill it has stopped. Nothing was reconciled yet, so
/// dropping the stream loses nothing.
pub(crate) fn stop_on<K>(
    controller: kube::runtime::Controller<K>,
    shutdown: &Shutdown,
) -> (
    kube::runtime::Controller<K>,
    impl Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + std::fmt::Debug + Unpin + Send + Sync,
{
    let store = controller.store();
    let abandon = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            if futures::FutureExt::now_or_never(store.wait_until_ready()).is_some() {
                std::future::pending::<()>().await;
            }
        }
    };
    (
        controller.graceful_shutdown_on(shutdown.clone().wait()),
        abandon,
    )
}

/// Waits until `store` has listed its objects (or shutdown is requested: `Ok(false)`).
pub(crate) async fn wait_ready<K>(
    store: &kube::runtime::reflector::Store<K>,
    what: &'static str,
    shutdown: &Shutdown,
) -> Result<bool, Error>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::select! {
        ready = store.wait_until_ready() => ready.map(|()| true).map_err(|_| Error::WatchStopped(what)),
        () = shutdown.clone().wait() => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::watcher::Event;

    /// A node agent Pod on `node`.
    fn agent(name: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "system"},
            "spec": {"nodeName": node, "containers": []},
        }))
        .unwrap()
    }

    fn node_of(pod: &Pod) -> Option<ObjectRef<Node>> {
        Some(ObjectRef::new(pod.spec.as_ref()?.node_name.as_deref()?))
    }

    fn names(targets: &[ObjectRef<Node>]) -> Vec<&str> {
        targets.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn a_list_triggers_its_targets_only_once_it_is_complete() {
        let mut triggers = Triggers::<Node>::default();
        let none = Vec::new;
        assert!(triggers.after(&Event::Init, none, &node_of).is_empty());
        let listed = Event::InitApply(agent("a1", "n1"));
        assert!(triggers.after(&listed, none, &node_of).is_empty());
        let listed = Event::InitApply(agent("a2", "n2"));
        assert!(triggers.after(&listed, none, &node_of).is_empty());
        let done = triggers.after(&Event::InitDone, none, &node_of);
        assert_eq!(names(&done), ["n1", "n2"]);
        // Changes after the list trigger at once.
        let changed = triggers.after(&Event::Apply(agent("a1", "n1")), none, &node_of);
        assert_eq!(names(&changed), ["n1"]);
        let gone = triggers.after(&Event::Delete(agent("a2", "n2")), none, &node_of);
        assert_eq!(names(&gone), ["n2"]);
    }

    #[test]
    fn a_relist_also_triggers_the_targets_of_objects_it_no_longer_has() {
        let mut triggers = Triggers::<Node>::default();
        // The store still holds the previous list when the relist starts.
        let previous = || vec![Arc::new(agent("old", "n-old")), Arc::new(agent("a", "n1"))];
        assert!(triggers.after(&Event::Init, previous, &node_of).is_empty());
        let none = Vec::new;
        assert!(
            triggers
                .after(&Event::InitApply(agent("a", "n1")), none, &node_of)
                .is_empty()
        );
        let done = triggers.after(&Event::InitDone, none, &node_of);
        assert_eq!(names(&done), ["n-old", "n1", "n1"]);
        assert!(triggers.after(&Event::InitDone, none, &node_of).is_empty());
    }

    #[tokio::test]
    async fn shutdown_resolves_on_request_or_when_the_trigger_is_dropped() {
        let (stop, shutdown) = Shutdown::new();
        let waiting = tokio::spawn(shutdown.clone().wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        stop.send(true).unwrap();
        waiting.await.unwrap();

        let (stop, shutdown) = Shutdown::new();
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("a dropped trigger shuts down");
    }

    #[test]
    fn excluded_namespaces_are_a_comma_separated_list() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let cli = Cli::try_parse_from([
            "op",
            "--excluded-namespaces",
            "monitoring,ci",
            "--namespace-selector",
            "team=ml",
            "--required-namespaces",
            "agents,ci",
        ])
        .unwrap();
        assert_eq!(cli.config.excluded_namespaces, ["monitoring", "ci"]);
        assert_eq!(cli.config.required_namespaces, ["agents", "ci"]);
        assert_eq!(cli.config.namespace_selector.as_deref(), Some("team=ml"));
        let none = Cli::try_parse_from(["op"]).unwrap();
        assert!(none.config.excluded_namespaces.is_empty());
    }
}

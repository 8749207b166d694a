//! Watch plumbing shared by the controllers: reflectors that trigger reconciles only once their
//! cache can answer them, waiting for a first list, and stopping a kube-runtime controller on
//! shutdown without hanging.

use std::future::Future;

use crate::Error;
use crate::shutdown::Shutdown;

/// Aborts a spawned task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

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
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::watcher::Event;

    use super::*;

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
}

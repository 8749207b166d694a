//! Watch plumbing shared by the controllers: reflectors that trigger reconciles only once their
//! cache can answer them, their objects by the target they trigger, waiting for a first list,
//! and stopping a kube-runtime controller on shutdown without hanging.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::reflector::{ObjectRef, ObjectRefExtra, Store};
use kube::runtime::watcher::Event;

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
    tx: futures::channel::mpsc::UnboundedSender<ObjectRef<T>>,
) -> (Store<K>, AbortOnDrop)
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    T: kube::Resource + 'static,
    T::DynamicType: Send + Sync,
    S: futures::Stream<Item = kube::runtime::watcher::Result<Event<K>>> + Send + 'static,
    F: Fn(&K) -> Option<ObjectRef<T>> + Send + 'static,
{
    spawn(events, map, tx, |_: &Event<K>| ())
}

/// [`spawn_reflector`] whose objects can also be read by their target ([`ByTarget::of`]): for a
/// `map` that depends on the object alone (its node, its namespace).
pub(crate) fn spawn_indexed_reflector<K, T, S, F>(
    events: S,
    map: F,
    tx: futures::channel::mpsc::UnboundedSender<ObjectRef<T>>,
) -> (ByTarget<K, T>, AbortOnDrop)
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    T: kube::Resource + 'static,
    T::DynamicType: Eq + Hash + Clone + Send + Sync,
    S: futures::Stream<Item = kube::runtime::watcher::Result<Event<K>>> + Send + 'static,
    F: Fn(&K) -> Option<ObjectRef<T>> + Send + Sync + 'static,
{
    let map: Mapping<K, T> = Arc::new(map);
    let index = Arc::new(RwLock::new(TargetIndex::default()));
    let triggering = map.clone();
    let (indexing, observed) = (map.clone(), index.clone());
    let (store, task) = spawn(
        events,
        move |object: &K| triggering(object),
        tx,
        move |event: &Event<K>| {
            observed
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .after(event, indexing.as_ref());
        },
    );
    (ByTarget { store, map, index }, task)
}

/// The reflector's task: the store is written first (`reflect`), then `observe` sees the event,
/// then the event's targets are sent, so a reconcile never runs before what it reads is in.
fn spawn<K, T, S, F, O>(
    events: S,
    map: F,
    tx: futures::channel::mpsc::UnboundedSender<ObjectRef<T>>,
    observe: O,
) -> (Store<K>, AbortOnDrop)
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    T: kube::Resource + 'static,
    T::DynamicType: Send + Sync,
    S: futures::Stream<Item = kube::runtime::watcher::Result<Event<K>>> + Send + 'static,
    F: Fn(&K) -> Option<ObjectRef<T>> + Send + 'static,
    O: Fn(&Event<K>) + Send + 'static,
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
                    observe(&event);
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

type Mapping<K, T> = Arc<dyn Fn(&K) -> Option<ObjectRef<T>> + Send + Sync>;

/// A reflector's store and its objects by target (a node agent Pod by its node, a policy or a
/// jailed Pod by its namespace), so that a reconcile reads the objects of its target without
/// scanning the store: with a node agent on every node, a scan per node reconcile made a
/// start-up on 10,000 nodes 10⁸ steps.
pub(crate) struct ByTarget<K: kube::Resource + 'static, T: kube::Resource>
where
    K::DynamicType: Eq + Hash,
{
    store: Store<K>,
    map: Mapping<K, T>,
    index: Arc<RwLock<TargetIndex<K, T>>>,
}

impl<K: kube::Resource + 'static, T: kube::Resource> Clone for ByTarget<K, T>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        ByTarget {
            store: self.store.clone(),
            map: self.map.clone(),
            index: self.index.clone(),
        }
    }
}

impl<K, T> ByTarget<K, T>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
    T: kube::Resource,
    T::DynamicType: Eq + Hash + Clone,
{
    /// The stored objects whose target is `target`: what filtering the whole store by `map`
    /// finds (the store can be one event ahead of the index; that event's targets are
    /// reconciled again once the index has it).
    pub(crate) fn of(&self, target: &ObjectRef<T>) -> Vec<Arc<K>> {
        let keys: Vec<ObjectRef<K>> = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .of(target)
            .cloned()
            .collect();
        keys.iter()
            .filter_map(|key| self.store.get(key))
            .filter(|object| (self.map)(object).as_ref() == Some(target))
            .collect()
    }

    pub(crate) fn store(&self) -> &Store<K> {
        &self.store
    }
}

#[cfg(test)]
impl<K, T> ByTarget<K, T>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
    T: kube::Resource,
    T::DynamicType: Eq + Hash + Clone,
{
    /// A store and its index with no watch: `apply` feeds them what a watch would.
    pub(crate) fn standalone(
        map: impl Fn(&K) -> Option<ObjectRef<T>> + Send + Sync + 'static,
    ) -> (Self, impl FnMut(&Event<K>)) {
        let (store, mut writer) = kube::runtime::reflector::store();
        let index = Arc::new(RwLock::new(TargetIndex::default()));
        let map: Mapping<K, T> = Arc::new(map);
        let by_target = ByTarget {
            store,
            map: map.clone(),
            index: index.clone(),
        };
        let apply = move |event: &Event<K>| {
            writer.apply_watcher_event(event);
            index.write().unwrap().after(event, map.as_ref());
        };
        (by_target, apply)
    }
}

/// The keys of a store's objects by target, kept from the watch events as the store is: a
/// relist replaces the store only when it is complete, so it replaces the index then too.
struct TargetIndex<K: kube::Resource, T: kube::Resource> {
    live: Grouped<K, T>,
    relisting: Option<Grouped<K, T>>,
}

impl<K: kube::Resource, T: kube::Resource> Default for TargetIndex<K, T> {
    fn default() -> Self {
        TargetIndex {
            live: Grouped::default(),
            relisting: None,
        }
    }
}

impl<K, T> TargetIndex<K, T>
where
    K: kube::Resource,
    K::DynamicType: Default + Eq + Hash + Clone,
    T: kube::Resource,
    T::DynamicType: Eq + Hash + Clone,
{
    fn after(&mut self, event: &Event<K>, map: &dyn Fn(&K) -> Option<ObjectRef<T>>) {
        match event {
            Event::Apply(object) => self.live.put(object, map(object)),
            Event::Delete(object) => self.live.remove(object, map(object)),
            Event::Init => self.relisting = Some(Grouped::default()),
            Event::InitApply(object) => self
                .relisting
                .get_or_insert_with(Grouped::default)
                .put(object, map(object)),
            Event::InitDone => self.live = self.relisting.take().unwrap_or_default(),
        }
    }
}

/// Object keys grouped by target. An object is filed under the target it has when it changes
/// or is listed and removed from the one it has when deleted: the targets of the indexed objects
/// never change once set (a Pod's node, any object's namespace), so no key-to-target map is
/// kept (at 10,000 nodes it cost more than the rest of the index). Were a target to change, the
/// key left under the old one is skipped by [`ByTarget::of`] and gone at the next relist.
struct Grouped<K: kube::Resource, T: kube::Resource> {
    objects: HashMap<ObjectRef<T>, Vec<ObjectRef<K>>>,
}

impl<K: kube::Resource, T: kube::Resource> Default for Grouped<K, T> {
    fn default() -> Self {
        Grouped {
            objects: HashMap::new(),
        }
    }
}

impl<K, T> Grouped<K, T>
where
    K: kube::Resource,
    K::DynamicType: Default + Eq + Hash + Clone,
    T: kube::Resource,
    T::DynamicType: Eq + Hash + Clone,
{
    /// The key of `object`: its kind, name and namespace (not its uid and `resourceVersion`,
    /// which `ObjectRef` compares without and which would double what the index holds).
    fn key(object: &K) -> ObjectRef<K> {
        let mut key = ObjectRef::from_obj(object);
        key.extra = ObjectRefExtra::default();
        key
    }

    fn put(&mut self, object: &K, target: Option<ObjectRef<T>>) {
        let Some(target) = target else {
            return;
        };
        let key = Self::key(object);
        // Most targets have one object (a node its agent): room for one, not Vec's first four.
        let keys = self
            .objects
            .entry(target)
            .or_insert_with(|| Vec::with_capacity(1));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    fn remove(&mut self, object: &K, target: Option<ObjectRef<T>>) {
        let Some(target) = target else {
            return;
        };
        let key = Self::key(object);
        if let Some(keys) = self.objects.get_mut(&target) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.objects.remove(&target);
            }
        }
    }

    fn of(&self, target: &ObjectRef<T>) -> impl Iterator<Item = &ObjectRef<K>> {
        self.objects.get(target).into_iter().flatten()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.objects.values().map(Vec::len).sum()
    }
}

/// Which reconciles a watch event triggers. A change triggers its target at once. A (re)list
/// fills the store only at `InitDone` (until then it holds the previous list), so the targets
/// of the listed objects, and of the previous list's (which may be gone now), are held until
/// then: a reconcile run earlier would read the previous list.
struct Triggers<T: kube::Resource> {
    held: Vec<ObjectRef<T>>,
}

impl<T: kube::Resource> Default for Triggers<T> {
    fn default() -> Self {
        Triggers { held: Vec::new() }
    }
}

impl<T: kube::Resource> Triggers<T> {
    /// The targets to send after `event`; `previous` gives the store's objects (read only on
    /// `Init`, while the store still holds the previous list).
    fn after<K, P, F>(&mut self, event: &Event<K>, previous: P, map: &F) -> Vec<ObjectRef<T>>
    where
        P: FnOnce() -> Vec<Arc<K>>,
        F: Fn(&K) -> Option<ObjectRef<T>>,
    {
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
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::ResourceExt;

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

    /// A watch history step: what the apiserver did, and whether the watch told of it (a missed
    /// change is what a relist catches up with).
    #[derive(Debug, Clone)]
    enum Step {
        Apply {
            pod: u8,
            node: Option<u8>,
            told: bool,
        },
        Delete {
            pod: u8,
            told: bool,
        },
        Relist,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..8u8, proptest::option::of(0..4u8), proptest::bool::weighted(0.9))
                .prop_map(|(pod, node, told)| Step::Apply { pod, node, told }),
            3 => (0..8u8, proptest::bool::weighted(0.9))
                .prop_map(|(pod, told)| Step::Delete { pod, told }),
            1 => Just(Step::Relist),
        ]
    }

    fn pod(i: u8, node: Option<u8>) -> Pod {
        let mut pod = agent(&format!("a{i}"), "");
        pod.spec.as_mut().unwrap().node_name = node.map(|n| format!("n{n}"));
        pod
    }

    /// What a scan of the whole store finds for each node, and what the index finds.
    fn scanned_and_indexed(agents: &ByTarget<Pod, Node>) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let sorted = |pods: Vec<Arc<Pod>>| {
            let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            names.sort();
            names
        };
        (0..4)
            .map(|n| {
                let target = ObjectRef::<Node>::new(&format!("n{n}"));
                let scanned = agents
                    .store()
                    .state()
                    .into_iter()
                    .filter(|p| node_of(p).as_ref() == Some(&target))
                    .collect();
                (sorted(scanned), sorted(agents.of(&target)))
            })
            .unzip()
    }

    proptest::proptest! {
        #[test]
        fn objects_by_target_are_what_a_scan_of_the_store_finds(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let (agents, mut apply) = ByTarget::<Pod, Node>::standalone(node_of);
            let mut server = std::collections::BTreeMap::<u8, Option<u8>>::new();
            let mut watch = |event: Event<Pod>| {
                apply(&event);
                let (scanned, indexed) = scanned_and_indexed(&agents);
                proptest::prop_assert_eq!(scanned, indexed, "after {:?}", event);
                Ok(())
            };
            watch(Event::Init)?;
            watch(Event::InitDone)?;
            for step in steps.into_iter().chain([Step::Relist]) {
                match step {
                    Step::Apply { pod: i, node, told } => {
                        server.insert(i, node);
                        if told {
                            watch(Event::Apply(pod(i, node)))?;
                        }
                    }
                    Step::Delete { pod: i, told } => {
                        if let Some(node) = server.remove(&i) && told {
                            watch(Event::Delete(pod(i, node)))?;
                        }
                    }
                    // Checked after each event: the store keeps the previous list until the
                    // new one is complete, and so must the index.
                    Step::Relist => {
                        watch(Event::Init)?;
                        for (&i, &node) in &server {
                            watch(Event::InitApply(pod(i, node)))?;
                        }
                        watch(Event::InitDone)?;
                    }
                }
            }
            // Caught up with the apiserver after the last relist.
            let (_, indexed) = scanned_and_indexed(&agents);
            let expected: Vec<Vec<String>> = (0..4u8)
                .map(|n| {
                    server
                        .iter()
                        .filter(|(_, node)| **node == Some(n))
                        .map(|(i, _)| format!("a{i}"))
                        .collect()
                })
                .collect();
            proptest::prop_assert_eq!(indexed, expected);
            // Nothing gone is kept.
            let kept = agents.index.read().unwrap().live.len();
            proptest::prop_assert_eq!(kept, server.values().flatten().count());
        }
    }

    #[test]
    fn a_deleted_object_leaves_nothing_and_one_scheduled_later_is_found_under_its_node() {
        let (agents, mut apply) = ByTarget::<Pod, Node>::standalone(node_of);
        apply(&Event::Init);
        apply(&Event::InitApply(pod(1, None)));
        apply(&Event::InitDone);
        assert_eq!(scanned_and_indexed(&agents).1, [[""; 0]; 4]);
        apply(&Event::Apply(pod(1, Some(2))));
        apply(&Event::Apply(pod(1, Some(2))));
        assert_eq!(agents.of(&ObjectRef::new("n2")).len(), 1);
        assert_eq!(agents.index.read().unwrap().live.len(), 1);
        // A target that changes (no Pod's node does) is found under the new one only.
        apply(&Event::Apply(pod(1, Some(3))));
        assert!(agents.of(&ObjectRef::new("n2")).is_empty());
        assert_eq!(agents.of(&ObjectRef::new("n3"))[0].name_any(), "a1");
        apply(&Event::Apply(pod(2, Some(0))));
        apply(&Event::Delete(pod(2, Some(0))));
        assert!(agents.of(&ObjectRef::new("n0")).is_empty());
        assert!(
            !agents
                .index
                .read()
                .unwrap()
                .live
                .objects
                .contains_key(&ObjectRef::new("n0"))
        );
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

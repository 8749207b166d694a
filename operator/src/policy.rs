//! The `BoundaryPolicy` controller. The unit of work is a namespace: its policies and the
//! `ClusterBoundaryPolicy` objects selecting it compile into one ConfigMap, so any change to one
//! of them (created, edited, deleted), to the namespace's labels or to the ConfigMap reconciles
//! the whole namespace from the in-memory copies (reflectors). A change to a cluster policy
//! reconciles every namespace: simple and correct (the old and the new selector both count), and
//! cheap at the scale of hundreds of namespaces, since a reconcile that changes nothing writes
//! nothing. The same reconcile sets or releases the namespace label
//! `agentboundary.dev/inject=required` of `requireJailing` ([`crate::cluster`]).
//!
//! The ConfigMap has an owner reference to every policy that applies to the namespace, cluster
//! policies included (a namespaced object may have cluster-scoped owners), so the garbage
//! collector removes it when the last one goes; the operator also deletes it itself (clusters
//! without a garbage collector, a cluster policy that stops selecting the namespace, and the
//! operator notices first).
//!
//! A second controller writes the status of each cluster policy (namespaces it applies to,
//! whether its entry is in each of their ConfigMaps), triggered by the cluster policy and by any
//! change to namespaces and ConfigMaps. Only an operator that manages every namespace writes it
//! (not one started with `--watch-namespace`: its view is one namespace).
//!
//! The same reconcile writes the namespace's credentials Secret ([`crate::credentials`]) before
//! the ConfigMap (so a sidecar finds a credential's value once it sees the credential), from the
//! Secrets the policies reference. Secrets are watched by their metadata only (names and
//! `resourceVersion`, trimmed: nothing else is kept), and a change to one that a policy of its
//! namespace references reconciles that namespace, so a rotated value is copied within seconds;
//! the referenced ones are read (`get`) only when their `resourceVersion` changed.
//!
//! A deleted policy stops applying at once to new pods and, through the mounted ConfigMap (the
//! kubelet refreshes it, the sidecar reloads it), to running ones once the namespace has other
//! policies left; when the last policy goes, the ConfigMap goes, and running pods keep the last
//! file they loaded until they restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boundary_api::compiled::CompiledPolicy;
use boundary_api::contract::{self, API_VERSION, annotations, conditions, labels, objects};
use boundary_api::crd::{BoundaryPolicy, BoundaryPolicyStatus, ClusterBoundaryPolicy};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::cluster::{self, Excluded};
use crate::compile::{CompiledCluster, CompiledNamespace, compile_cluster, compile_namespace};
use crate::config::Config;
use crate::credentials;
use crate::denials::DenialLedger;
use crate::enforcement::{
    self, EnforcementConfig, Observation, Observations, PodFacts, PodKey, Verdict,
};
use crate::metrics::{Controller as MetricsController, Metrics, PolicyCounts};
use crate::shutdown::Shutdown;
use crate::status::{
    CREDENTIALS_READY, Publication, desired_status, reasons, up_to_date, with_credentials,
    with_enforcement,
};
use crate::watch::{
    AbortOnDrop, ByTarget, spawn_indexed_reflector, spawn_reflector, stop_on, wait_ready,
};

/// Value of [`labels::COMPONENT`] on the policy ConfigMaps.
pub const COMPONENT_POLICY: &str = "policy";
/// Reason of the Warning Event on a policy whose rules do not compile.
pub const EVENT_INVALID_RULES: &str = "InvalidRules";
/// Reason of the Warning Event on a policy with an allow rule that opens a channel out (lint).
pub const EVENT_EXFILTRATION_RISK: &str = "ExfiltrationRisk";
/// Reason of the Warning Event on a policy whose rules compile but some credentials do not.
pub const EVENT_INVALID_CREDENTIALS: &str = "InvalidCredentials";
/// Reason of the Warning Event on a policy a credential of which has no value.
pub const EVENT_CREDENTIAL_VALUE_MISSING: &str = "CredentialValueMissing";
/// Longest Event note the apiserver accepts (events.k8s.io/v1 limits it to 1 KiB).
const MAX_NOTE: usize = 1000;

/// What a reconcile needs.
pub struct Context {
    client: Client,
    policies: ByTarget<BoundaryPolicy, Namespace>,
    clusters: Store<ClusterBoundaryPolicy>,
    /// The namespaces this operator manages (their labels select cluster policies).
    namespaces: Store<Namespace>,
    /// Namespaces no cluster policy selects.
    excluded: Excluded,
    /// Namespaces the chart requires jailing in (`--required-namespaces`).
    required: std::collections::BTreeSet<String>,
    config_maps: Store<ConfigMap>,
    /// Every Secret's name and `resourceVersion` (nothing else: see [`trim_secret`]).
    secrets: Store<PartialObjectMeta<Secret>>,
    /// Per namespace, the fingerprint of its credentials Secret as last written
    /// ([`credentials::fingerprint`]) and the messages of the values missing then.
    credentials_written: Mutex<HashMap<String, (String, Missing)>>,
    /// Jailed pods, trimmed to what the counts and the checks read ([`enforcement::trim`]).
    jailed: ByTarget<Pod, Namespace>,
    /// What each running jailed pod's sidecar said last.
    observations: Observations,
    /// What the sidecars denied, summed per policy (`status.deniedDestinations`).
    denials: Mutex<DenialLedger>,
    enforcement: EnforcementConfig,
    /// Per namespace, the last published hash and since when this operator has seen it.
    published: Mutex<HashMap<String, (String, Instant)>>,
    recorder: Recorder,
    retry: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("policies", &self.policies.store().len())
            .field("config_maps", &self.config_maps.len())
            .finish_non_exhaustive()
    }
}

/// Namespaces reconciled at once: each writes its ConfigMap and its policies' statuses one after
/// the other, so at most this many requests (and connections to the apiserver) are in flight
/// however many namespaces change together.
const CONCURRENCY: u16 = 16;

/// What of a policy is kept in memory: everything but its managed fields and `kubectl apply`'s
/// copy of the whole object in an annotation, which nothing here reads.
fn trim_policy(policy: &mut BoundaryPolicy) {
    policy.metadata.managed_fields = None;
    if let Some(annotations) = policy.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The annotation of `kubectl apply` holding the object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Per policy, one message per credential without a value.
type Missing = BTreeMap<String, Vec<String>>;

/// A Secret's metadata as kept in memory: its name, namespace and `resourceVersion`, and the
/// labels of a credentials Secret (to tell the operator's own). Nothing else: annotations and
/// managed fields can be large, and `kubectl apply`'s last-applied annotation even holds the data.
fn trim_secret(secret: &mut PartialObjectMeta<Secret>) {
    let meta = std::mem::take(&mut secret.metadata);
    let ours = meta.name.as_deref() == Some(objects::CREDENTIALS_SECRET);
    secret.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        labels: meta.labels.filter(|_| ours),
        ..ObjectMeta::default()
    };
}

/// The namespace a change to `secret` reconciles: its own when it is the credentials Secret or
/// a policy there references it, else none.
fn secret_target(
    policies: &ByTarget<BoundaryPolicy, Namespace>,
    secret: &PartialObjectMeta<Secret>,
) -> Option<ObjectRef<Namespace>> {
    let ns = secret.metadata.namespace.as_deref()?;
    let name = secret.metadata.name.as_deref()?;
    let target = ObjectRef::new(ns);
    let concerned = name == objects::CREDENTIALS_SECRET
        || policies
            .of(&target)
            .iter()
            .any(|p| credentials::references(p, name));
    concerned.then_some(target)
}

/// The reflector of Secrets, by metadata only, trimmed to name and `resourceVersion` before
/// they are stored; a change triggers the namespaces whose policies reference it.
fn secret_reflector(
    client: &Client,
    config: &Config,
    policies: &ByTarget<BoundaryPolicy, Namespace>,
    tx: &futures::channel::mpsc::UnboundedSender<ObjectRef<Namespace>>,
) -> (Store<PartialObjectMeta<Secret>>, AbortOnDrop) {
    let api = match &config.watch_namespace {
        Some(ns) => Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let policies = policies.clone();
    spawn_reflector(
        watcher(api, watcher::Config::default()).modify(trim_secret),
        move |s: &PartialObjectMeta<Secret>| secret_target(&policies, s),
        tx.clone(),
    )
}

/// The namespace whose reconcile reads `object` (a policy, a jailed Pod).
fn namespace_of<K: kube::Resource>(object: &K) -> Option<ObjectRef<Namespace>> {
    object.meta().namespace.as_deref().map(ObjectRef::new)
}

/// The reflector of the policies, trimmed ([`trim_policy`]); a change triggers its namespace.
fn policy_reflector(
    api: Api<BoundaryPolicy>,
    tx: &futures::channel::mpsc::UnboundedSender<ObjectRef<Namespace>>,
) -> (ByTarget<BoundaryPolicy, Namespace>, AbortOnDrop) {
    spawn_indexed_reflector(
        watcher(api, watcher::Config::default()).modify(trim_policy),
        namespace_of,
        tx.clone(),
    )
}

/// The label selector of the ConfigMaps this controller manages.
pub fn config_map_selector() -> String {
    format!(
        "{}={},{}={COMPONENT_POLICY}",
        labels::MANAGED_BY,
        contract::MANAGED_BY_OPERATOR,
        labels::COMPONENT
    )
}

/// The watch of the namespaces this operator manages: `--watch-namespace` and
/// `--namespace-selector`.
fn namespace_watch(config: &Config) -> watcher::Config {
    let mut ns_watch = watcher::Config::default();
    if let Some(ns) = &config.watch_namespace {
        ns_watch = ns_watch.fields(&format!("metadata.name={ns}"));
    }
    if let Some(selector) = &config.namespace_selector {
        ns_watch = ns_watch.labels(selector);
    }
    ns_watch
}

/// Forwards every target `rx` receives to `namespaces` and a unit to `all` (while anyone listens
/// there: not when the cluster policy status controller does not run), until `namespaces` is
/// closed.
fn tee(
    mut rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<Namespace>>,
    namespaces: futures::channel::mpsc::UnboundedSender<ObjectRef<Namespace>>,
    all: futures::channel::mpsc::UnboundedSender<()>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        while let Some(target) = rx.next().await {
            if namespaces.unbounded_send(target).is_err() {
                break;
            }
            let _ = all.unbounded_send(());
        }
    }))
}

/// The reflector of the policy ConfigMaps; a change triggers its namespace and the cluster
/// policy status (`all`).
fn config_map_reflector(
    api: Api<ConfigMap>,
    tx: &futures::channel::mpsc::UnboundedSender<ObjectRef<Namespace>>,
    all: futures::channel::mpsc::UnboundedSender<()>,
) -> (Store<ConfigMap>, [AbortOnDrop; 2]) {
    let (cm_tx, cm_rx) = futures::channel::mpsc::unbounded();
    let cm_tee = tee(cm_rx, tx.clone(), all);
    let (store, task) = spawn_reflector(
        watcher(
            api,
            watcher::Config::default().labels(&config_map_selector()),
        )
        // Only data, labels and owners are compared ([`config_map_current`]).
        .modify(|c: &mut ConfigMap| c.metadata.managed_fields = None),
        |c: &ConfigMap| c.namespace().map(|ns| ObjectRef::new(&ns)),
        cm_tx,
    );
    (store, [cm_tee, task])
}

/// The reflectors of the managed namespaces and of the cluster policies. Namespaces trigger
/// their own reconcile (the namespace controller sees label changes too; this copy is for the
/// fan-out) and the cluster policy status (`all`); a cluster policy triggers every namespace,
/// since its old selector may have matched namespaces the new one does not.
fn cluster_reflectors(
    client: &Client,
    ns_watch: watcher::Config,
    tx: &futures::channel::mpsc::UnboundedSender<ObjectRef<Namespace>>,
    all: futures::channel::mpsc::UnboundedSender<()>,
) -> (
    Store<Namespace>,
    Store<ClusterBoundaryPolicy>,
    Vec<AbortOnDrop>,
) {
    let (ns_tx, ns_rx) = futures::channel::mpsc::unbounded();
    let ns_tee = tee(ns_rx, tx.clone(), all);
    let (namespaces, ns_task) = spawn_reflector(
        watcher(Api::<Namespace>::all(client.clone()), ns_watch),
        |n: &Namespace| Some(ObjectRef::new(&n.name_any())),
        ns_tx,
    );
    let (cluster_tx, mut cluster_rx) =
        futures::channel::mpsc::unbounded::<ObjectRef<ClusterBoundaryPolicy>>();
    let (clusters, cluster_task) = spawn_reflector(
        watcher(
            Api::<ClusterBoundaryPolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
        |c: &ClusterBoundaryPolicy| Some(ObjectRef::from_obj(c)),
        cluster_tx,
    );
    let fan_out = {
        let (namespaces, tx) = (namespaces.clone(), tx.clone());
        AbortOnDrop(tokio::spawn(async move {
            while cluster_rx.next().await.is_some() {
                for ns in namespaces.state() {
                    if tx.unbounded_send(ObjectRef::new(&ns.name_any())).is_err() {
                        return;
                    }
                }
            }
        }))
    };
    (
        namespaces,
        clusters,
        vec![ns_tee, ns_task, cluster_task, fan_out],
    )
}

/// Runs the controllers (namespaces; cluster policy status) until `shutdown`.
pub async fn run(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let (tx, rx) = futures::channel::mpsc::unbounded::<ObjectRef<Namespace>>();
    // Triggers of the cluster policy status controller: namespaces and ConfigMaps changed.
    let (all_tx, all_rx) = futures::channel::mpsc::unbounded::<()>();
    let ns_watch = namespace_watch(&config);
    let (policy_api, cm_api, pod_api) = match &config.watch_namespace {
        Some(ns) => (
            Api::<BoundaryPolicy>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let (policies, _policy_task) = policy_reflector(policy_api, &tx);
    let (config_maps, _cm_tasks) = config_map_reflector(cm_api, &tx, all_tx.clone());
    let (secrets, _secret_task) = secret_reflector(&client, &config, &policies, &tx);
    let (namespaces, clusters, _cluster_tasks) =
        cluster_reflectors(&client, ns_watch.clone(), &tx, all_tx);
    // Jailed pods, whole (the checks need the pod IP, phase and container states) but trimmed
    // before they are stored, so they cost about as much memory as metadata alone.
    let (jailed, _jailed_task) = spawn_indexed_reflector(
        watcher(pod_api, watcher::Config::default().labels(labels::JAILED))
            .modify(enforcement::trim),
        namespace_of,
        tx.clone(),
    );
    // Never reconcile from a half-listed cache: an empty policy list deletes the ConfigMap.
    if !wait_ready(policies.store(), "BoundaryPolicy", &shutdown).await?
        || !wait_for_cluster_policies(&clusters, &shutdown).await?
        || !wait_ready(&namespaces, "Namespace", &shutdown).await?
        || !wait_ready(&config_maps, "ConfigMap", &shutdown).await?
        || !wait_for_secrets(&secrets, &shutdown).await?
        || !wait_ready(jailed.store(), "jailed Pod", &shutdown).await?
    {
        return Ok(());
    }
    let reporter = Reporter {
        controller: objects::OPERATOR_FIELD_MANAGER.into(),
        instance: config.instance.clone(),
    };
    let observations = Observations::default();
    let _checks = AbortOnDrop(tokio::spawn(enforcement::run_checks(
        jailed.store().clone(),
        observations.clone(),
        tx,
        config.enforcement.clone(),
        config.metrics.clone(),
        shutdown.clone(),
    )));
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        policies,
        clusters,
        namespaces,
        excluded: Excluded::new(config.namespace.as_deref(), &config.excluded_namespaces),
        required: config.required_namespaces.iter().cloned().collect(),
        config_maps,
        secrets,
        credentials_written: Mutex::new(HashMap::new()),
        denials: Mutex::new(DenialLedger::default()),
        jailed,
        observations,
        enforcement: config.enforcement.clone(),
        published: Mutex::new(HashMap::new()),
        retry: config.retry(),
        metrics: config.metrics.clone(),
    });
    tracing::info!(namespace = ?config.watch_namespace, selector = ?config.namespace_selector, "policy controller started");
    let (controller, abandon) = stop_on(
        Controller::new(Api::<Namespace>::all(client.clone()), ns_watch),
        &shutdown,
    );
    let namespaces = controller
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(rx)
        .run(
            |object, ctx: Arc<Context>| async move {
                let measurer = ctx.metrics.measure(MetricsController::Policy);
                let result = reconcile(object, ctx.clone()).await;
                measurer.count(&result);
                result
            },
            error_policy,
            context.clone(),
        )
        .take_until(abandon)
        .for_each(log_reconciled);
    let cluster_status = async {
        // An operator that sees one namespace cannot tell where a cluster policy applies.
        if config.watch_namespace.is_none() {
            run_cluster_status(client, context, all_rx, shutdown).await;
        }
    };
    futures::join!(namespaces, cluster_status);
    tracing::info!("policy controller stopped");
    Ok(())
}

fn log_reconciled<E: std::fmt::Display>(
    result: Result<(ObjectRef<Namespace>, Action), E>,
) -> std::future::Ready<()> {
    match result {
        Ok((namespace, _)) => tracing::debug!(namespace = %namespace.name, "reconciled"),
        Err(err) => tracing::debug!(error = %err, "reconcile skipped"),
    }
    std::future::ready(())
}

/// Waits for the first list of cluster policies, saying what is likely wrong when it takes long:
/// `helm upgrade` never installs a CRD that is new in the chart. Nothing is reconciled before:
/// without the cluster policies the namespaces would lose their deny rules and the
/// `inject=required` labels.
async fn wait_for_cluster_policies(
    clusters: &Store<ClusterBoundaryPolicy>,
    shutdown: &Shutdown,
) -> Result<bool, Error> {
    let waiting = wait_ready(clusters, "ClusterBoundaryPolicy", shutdown);
    let mut waiting = std::pin::pin!(waiting);
    tokio::select! {
        ready = &mut waiting => return ready,
        () = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    tracing::error!(
        "ClusterBoundaryPolicy objects cannot be listed yet; nothing is reconciled until they \
         can. Is the CRD installed? (helm upgrade does not install new CRDs: kubectl apply -f \
         charts/agent-boundary/crds/) Does the operator's role allow list/watch on \
         clusterboundarypolicies?"
    );
    waiting.await
}

/// Waits for the first list of Secrets (metadata), saying what is likely wrong when it takes
/// long: a role from a chart older than credentials has no right on Secrets.
async fn wait_for_secrets(
    secrets: &Store<PartialObjectMeta<Secret>>,
    shutdown: &Shutdown,
) -> Result<bool, Error> {
    let waiting = wait_ready(secrets, "Secret", shutdown);
    let mut waiting = std::pin::pin!(waiting);
    tokio::select! {
        ready = &mut waiting => return ready,
        () = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    tracing::error!(
        "Secrets cannot be listed yet; nothing is reconciled until they can (the credentials of \
         spec.credentials are copied from them). Does the operator's role allow list/watch on \
         secrets?"
    );
    waiting.await
}

/// The controller of the cluster policies' status, until `shutdown`; `all` triggers every one.
async fn run_cluster_status(
    client: Client,
    context: Arc<Context>,
    all: futures::channel::mpsc::UnboundedReceiver<()>,
    shutdown: Shutdown,
) {
    let (controller, abandon) = stop_on(
        Controller::new(
            Api::<ClusterBoundaryPolicy>::all(client),
            watcher::Config::default(),
        ),
        &shutdown,
    );
    controller
        .reconcile_all_on(all)
        .run(
            |object, ctx: Arc<Context>| async move {
                let measurer = ctx.metrics.measure(MetricsController::ClusterPolicy);
                let result = reconcile_cluster(object, ctx.clone()).await;
                measurer.count(&result);
                result
            },
            error_policy_cluster,
            context,
        )
        .take_until(abandon)
        .for_each(|result| {
            if let Err(err) = result {
                tracing::debug!(error = %err, "cluster policy reconcile skipped");
            }
            std::future::ready(())
        })
        .await;
}

/// Whether the webhook jailed `pod` under `policy` (and the pod is not being deleted).
fn jailed_under(pod: &Pod, policy: &str) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .annotations()
            .get(annotations::POLICY)
            .is_some_and(|names| names.split(',').any(|n| n.trim() == policy))
}

/// How many of `pods` (jailed pods of one namespace) the webhook jailed under `policy`, and by
/// tier. A pod counts from admission until it is deleted, finished or not: this is what the
/// webhook did, not proof of enforcement (see [`enforcement`]).
pub fn jailed_by(pods: &[Arc<Pod>], policy: &str) -> (i32, BTreeMap<String, i32>) {
    let mut tiers = BTreeMap::new();
    let mut matched = 0;
    for pod in pods {
        if !jailed_under(pod, policy) {
            continue;
        }
        matched += 1;
        let tier = pod
            .labels()
            .get(labels::JAILED)
            .cloned()
            .unwrap_or_default();
        *tiers.entry(tier).or_insert(0) += 1;
    }
    (matched, tiers)
}

/// Failed reconciles are retried after the configured delay.
// The signature is the one `Controller::run` takes.
#[allow(clippy::needless_pass_by_value)]
pub fn error_policy(namespace: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %namespace.name_any(), %error, "policy reconcile failed");
    Action::requeue(ctx.retry)
}

/// Failed cluster policy reconciles are retried after the configured delay.
// The signature is the one `Controller::run` takes.
#[allow(clippy::needless_pass_by_value)]
pub fn error_policy_cluster(
    policy: Arc<ClusterBoundaryPolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(policy = %policy.name_any(), %error, "cluster policy reconcile failed");
    Action::requeue(ctx.retry)
}

/// Brings the status of a cluster policy up to date: the namespaces it applies to and whether
/// its entry is in the published file of each.
pub async fn reconcile_cluster(
    policy: Arc<ClusterBoundaryPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = policy.name_any();
    let compiled = compile_cluster(&policy);
    let selected = cluster::selected_namespaces(&compiled, &ctx.namespaces.state(), &ctx.excluded);
    let unpublished: Vec<String> = selected
        .iter()
        .filter(|ns| !ctx.entry_published(ns, &compiled))
        .cloned()
        .collect();
    let previous = policy.status.as_ref();
    let now = Time(Timestamp::now());
    let status = cluster::desired_status(&compiled, &selected, &unpublished, previous, &now);
    if cluster::up_to_date(previous, &status) {
        return Ok(Action::await_change());
    }
    let report = &compiled.report;
    let problems_changed = previous.is_none_or(|s| {
        s.rule_problems != report.problems || s.observed_generation != report.generation
    });
    if !report.problems.is_empty() && problems_changed {
        let reference = policy.object_ref(&());
        publish_problems(&ctx.recorder, &reference, &name, &status.conditions).await;
    }
    if let Some(note) = new_lint_warnings(
        previous.map(|s| s.lint_warnings.as_slice()),
        &status.lint_warnings,
        &status.conditions,
    ) {
        let reference = policy.object_ref(&());
        publish_warning(
            &ctx.recorder,
            &reference,
            &name,
            EVENT_EXFILTRATION_RISK,
            &note,
        )
        .await;
    }
    let body =
        json!({"apiVersion": API_VERSION, "kind": "ClusterBoundaryPolicy", "status": status});
    let api: Api<ClusterBoundaryPolicy> = Api::all(ctx.client.clone());
    match api
        .patch_status(
            &name,
            &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(Error::kube(
            format!("writing the status of ClusterBoundaryPolicy {name}"),
            e,
        )),
    }
}

/// Deletes the policy ConfigMap of `ns` (nothing applies there any more).
async fn delete_config_map(cms: &Api<ConfigMap>, ns: &str) -> Result<(), Error> {
    match cms
        .delete(objects::POLICY_CONFIGMAP, &DeleteParams::default())
        .await
    {
        Ok(_) => tracing::info!(namespace = %ns, "no policies left: ConfigMap deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(Error::kube(format!("deleting ConfigMap in {ns}"), e)),
    }
    Ok(())
}

/// Sets or releases the namespace label `agentboundary.dev/inject=required`
/// ([`cluster::inject_label`]).
async fn apply_inject_label(
    ctx: &Context,
    namespace: &Namespace,
    applying: &[&CompiledCluster],
) -> Result<(), Error> {
    let ns = namespace.name_any();
    let required = applying.iter().any(|c| c.require_jailing)
        || (ctx.required.contains(&ns) && !ctx.excluded.contains(&ns));
    let Some(body) = cluster::inject_label(namespace, required) else {
        return Ok(());
    };
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    api.patch(
        &ns,
        &PatchParams::apply(objects::OPERATOR_INJECT_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| {
        Error::kube(
            format!(
                "setting the label {}={} of namespace {ns} (does the operator's role allow \
                 patch on namespaces?)",
                labels::INJECT,
                if required {
                    contract::INJECT_REQUIRED
                } else {
                    "<released>"
                }
            ),
            e,
        )
    })?;
    tracing::info!(namespace = %ns, required, "inject label applied");
    Ok(())
}

/// Brings the ConfigMap and the status of every policy of `namespace` up to date, and its
/// inject label.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let clusters = ctx.compiled_clusters();
    let applying = cluster::applying(&clusters, &namespace, &ctx.excluded);
    // A label that cannot be written must not hold up the policies (nor the other way round);
    // either failure retries the whole reconcile.
    let labelled = if namespace.metadata.deletion_timestamp.is_none() {
        apply_inject_label(&ctx, &namespace, &applying).await
    } else {
        Ok(())
    };
    let published = publish(&namespace, &ctx, &applying).await;
    labelled?;
    published
}

/// Publishes the ConfigMap of `namespace` from its policies and the cluster policies
/// `applying` to it (or deletes it when there are none), and writes its policies' status.
async fn publish(
    namespace: &Namespace,
    ctx: &Context,
    applying: &[&CompiledCluster],
) -> Result<Action, Error> {
    let ns = namespace.name_any();
    let mut policies: Vec<BoundaryPolicy> = ctx
        .policies
        .of(&ObjectRef::new(&ns))
        .iter()
        .map(|p| (**p).clone())
        .collect();
    policies.sort_by_key(ResourceExt::name_any);
    let cm_ref = ObjectRef::<ConfigMap>::new(objects::POLICY_CONFIGMAP).within(&ns);
    let existing = ctx.config_maps.get(&cm_ref);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);

    if policies.is_empty() && applying.is_empty() {
        ctx.forget(&ns);
        remove_credentials(ctx, &ns).await?;
        if existing.is_some() {
            delete_config_map(&cms, &ns).await?;
        }
        return Ok(Action::await_change());
    }
    if namespace.metadata.deletion_timestamp.is_some() {
        // Nothing can be created in a terminating namespace; its objects are going anyway.
        return Ok(Action::await_change());
    }

    let compiled = compile_namespace(&ns, &policies, applying);
    // Values first, so a sidecar that sees a credential in the file finds its value. A failure
    // must not hold up the rules: it is reported on the policies and retried at the end.
    let synced = sync_credentials(ctx, &ns, &compiled, &policies).await;
    let missing = missing_values(&synced, &compiled);
    let text = compiled.to_json();
    let hash = boundary_api::compiled::policy_hash(text.as_bytes());
    let desired = config_map(&ns, &policies, applying, text)?;
    if !config_map_current(existing.as_deref(), &desired) {
        cms.patch(
            objects::POLICY_CONFIGMAP,
            &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|e| Error::kube(format!("applying ConfigMap in {ns}"), e))?;
        tracing::info!(namespace = %ns, %hash, policies = policies.len(), cluster_policies = applying.len(), "compiled policy published");
    }

    let publication = Publication {
        config_map: objects::POLICY_CONFIGMAP.into(),
        hash,
    };
    let now = Time(Timestamp::now());
    let ns_pods = ctx.pods_of(&ns);
    let verdicts = ctx.verdicts(&ns_pods, &publication.hash);
    let published_for = ctx.published_for(&ns, &publication.hash);
    ctx.tally_denials(&ns, &policies, &ns_pods);
    let api: Api<BoundaryPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let mut counts = PolicyCounts::default();
    for report in &compiled.reports {
        let Some(bp) = policies.iter().find(|p| p.name_any() == report.name) else {
            continue;
        };
        let previous = bp.status.as_ref();
        let mut status = desired_status(report, previous, &publication, &now);
        pod_fields(
            &mut status,
            previous,
            &report.name,
            &ns_pods,
            &verdicts,
            ctx.enforcement.enabled(),
            &now,
        );
        let no_values: &[String] = &[];
        let missing_here = missing.get(&report.name).map_or(no_values, Vec::as_slice);
        with_credentials(&mut status, previous, report, missing_here, &now);
        status.denied_destinations = ctx.denied_destinations(&ns, &report.name);
        count_policy(&mut counts, &status);
        if up_to_date(previous, &status) {
            continue;
        }
        publish_events(&ctx.recorder, bp, report, &status).await;
        let body = json!({"apiVersion": API_VERSION, "kind": "BoundaryPolicy", "status": status});
        match api
            .patch_status(
                &report.name,
                &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(
                    format!("writing the status of {ns}/{}", report.name),
                    e,
                ));
            }
        }
    }
    ctx.count_verdicts(&ns, &verdicts);
    ctx.metrics.set_policies(&ns, counts);
    set_pod_conditions(ctx, &ns, &ns_pods, &verdicts, published_for, &now).await;
    synced?;
    Ok(Action::await_change())
}

/// Adds a policy's `status` to the metrics' counts: not Ready unless `Ready` is `True`; invalid
/// rules only when `RulesValid` says `False`.
fn count_policy(counts: &mut PolicyCounts, status: &BoundaryPolicyStatus) {
    use boundary_api::crd::condition_types::{READY, RULES_VALID};
    let status_of = |kind: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.as_str())
    };
    counts.total += 1;
    if status_of(READY) != Some("True") {
        counts.not_ready += 1;
    }
    if status_of(RULES_VALID) == Some("False") {
        counts.rules_invalid += 1;
    }
}

/// The Warning Events a policy's new `status` calls for: its problems, when they changed, and a
/// credential value that went missing.
async fn publish_events(
    recorder: &Recorder,
    bp: &BoundaryPolicy,
    report: &crate::compile::PolicyReport,
    status: &BoundaryPolicyStatus,
) {
    let previous = bp.status.as_ref();
    let reference = bp.object_ref(&());
    if let Some(note) = newly_missing(previous, status) {
        let reason = EVENT_CREDENTIAL_VALUE_MISSING;
        publish_warning(recorder, &reference, &report.name, reason, &note).await;
    }
    let problems_changed = previous.is_none_or(|s| {
        s.rule_problems != report.problems || s.observed_generation != report.generation
    });
    if !report.problems.is_empty() && problems_changed {
        publish_problems(recorder, &reference, &report.name, &status.conditions).await;
    }
    if let Some(note) = new_lint_warnings(
        previous.map(|s| s.lint_warnings.as_slice()),
        &status.lint_warnings,
        &status.conditions,
    ) {
        publish_warning(
            recorder,
            &reference,
            &report.name,
            EVENT_EXFILTRATION_RISK,
            &note,
        )
        .await;
    }
}

/// Per policy, the credentials without a value: as `synced` says, or every policy with
/// credentials when the credentials Secret could not be written.
fn missing_values(synced: &Result<Missing, Error>, compiled: &CompiledNamespace) -> Missing {
    match synced {
        Ok(missing) => missing.clone(),
        Err(error) => compiled
            .reports
            .iter()
            .filter(|r| r.credential_count > 0)
            .map(|r| {
                let message = format!("the credentials Secret could not be written: {error}");
                (r.name.clone(), vec![message])
            })
            .collect(),
    }
}

/// The message of the `CredentialsReady` condition of `status` when it is `False` with a message
/// `previous` did not have (what a Warning Event should say), else `None`.
fn newly_missing(
    previous: Option<&BoundaryPolicyStatus>,
    status: &BoundaryPolicyStatus,
) -> Option<String> {
    let find = |s: &BoundaryPolicyStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == CREDENTIALS_READY)
            .cloned()
    };
    let now = find(status).filter(|c| c.status == "False")?;
    let before = previous.and_then(find);
    (before.is_none_or(|b| b.status != now.status || b.message != now.message))
        .then_some(now.message)
}

/// Writes the credentials Secret of `ns` from the published credentials of `compiled` (or
/// deletes it when none has a Secret source); returns, per policy, the credentials left without
/// a value. Reads and writes only when something it is made from changed
/// ([`credentials::fingerprint`]).
async fn sync_credentials(
    ctx: &Context,
    ns: &str,
    compiled: &CompiledNamespace,
    policies: &[BoundaryPolicy],
) -> Result<Missing, Error> {
    let wanted = credentials::wanted(&compiled.policy);
    if wanted.is_empty() {
        remove_credentials(ctx, ns).await?;
        return Ok(Missing::new());
    }
    let owners: Vec<&BoundaryPolicy> = policies
        .iter()
        .filter(|p| wanted.iter().any(|w| w.policy == p.name_any()))
        .collect();
    let rv_of = |name: &str| {
        ctx.secrets
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|s| s.metadata.resource_version.clone())
    };
    let seen = credentials::fingerprint(
        &wanted,
        &owners,
        rv_of,
        rv_of(objects::CREDENTIALS_SECRET).as_deref(),
    );
    if let Some((fingerprint, missing)) = ctx.lock_credentials().get(ns)
        && *fingerprint == seen
    {
        return Ok(missing.clone());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut sources = credentials::SourceSecrets::new();
    for name in credentials::referenced(&wanted) {
        let secret = api.get_opt(name).await.map_err(|e| {
            Error::kube(
                format!(
                    "reading Secret {ns}/{name}, referenced by spec.credentials (does the \
                     operator's role allow get on secrets?)"
                ),
                e,
            )
        })?;
        sources.insert(name.to_owned(), secret.map(|s| s.data.unwrap_or_default()));
    }
    let collected = credentials::collect(ns, &wanted, &sources);
    drop(sources);
    let desired = credentials::secret(ns, &owners, &collected.values)?;
    let existing = api
        .get_opt(objects::CREDENTIALS_SECRET)
        .await
        .map_err(|e| {
            Error::kube(
                format!("reading Secret {ns}/{}", objects::CREDENTIALS_SECRET),
                e,
            )
        })?;
    let own_rv = if credentials::secret_current(existing.as_ref(), &desired) {
        existing.and_then(|s| s.metadata.resource_version)
    } else {
        let written = api
            .patch(
                objects::CREDENTIALS_SECRET,
                &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(|e| {
                Error::kube(
                    format!(
                        "applying Secret {ns}/{} (does the operator's role allow patch on it?)",
                        objects::CREDENTIALS_SECRET
                    ),
                    e,
                )
            })?;
        tracing::info!(
            namespace = %ns,
            values = collected.values.len(),
            missing = collected.missing.values().map(Vec::len).sum::<usize>(),
            "credentials Secret written"
        );
        written.metadata.resource_version
    };
    let written = credentials::fingerprint(&wanted, &owners, rv_of, own_rv.as_deref());
    ctx.lock_credentials()
        .insert(ns.to_owned(), (written, collected.missing.clone()));
    Ok(collected.missing)
}

/// Deletes the credentials Secret of `ns` if it exists and the operator wrote it (no credential
/// needs it any more).
async fn remove_credentials(ctx: &Context, ns: &str) -> Result<(), Error> {
    ctx.lock_credentials().remove(ns);
    let own = ObjectRef::<PartialObjectMeta<Secret>>::new(objects::CREDENTIALS_SECRET).within(ns);
    let written_by_us = ctx.secrets.get(&own).is_some_and(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::MANAGED_BY))
            .is_some_and(|v| v == contract::MANAGED_BY_OPERATOR)
    });
    if !written_by_us {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .delete(objects::CREDENTIALS_SECRET, &DeleteParams::default())
        .await
    {
        Ok(_) => tracing::info!(namespace = %ns, "no credentials left: credentials Secret deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            return Err(Error::kube(
                format!("deleting Secret {ns}/{}", objects::CREDENTIALS_SECRET),
                e,
            ));
        }
    }
    Ok(())
}

/// The fields of a policy's status computed from its pods: `matchedPods` and `tiers` (what the
/// webhook did) and the enforcement part (what the sidecars proved).
fn pod_fields(
    status: &mut BoundaryPolicyStatus,
    previous: Option<&BoundaryPolicyStatus>,
    policy: &str,
    pods: &[Arc<Pod>],
    verdicts: &[Verdict],
    checks_enabled: bool,
    now: &Time,
) {
    let (matched, mut tiers) = jailed_by(pods, policy);
    // A tier once shown stays, at 0: applying a map without its last key makes older
    // apiservers (1.20) store `null`, which the schema refuses.
    for tier in previous.iter().flat_map(|s| s.tiers.keys()) {
        tiers.entry(tier.clone()).or_insert(0);
    }
    status.matched_pods = Some(matched);
    status.tiers = tiers;
    let summary = enforcement::summarize(
        pods.iter()
            .zip(verdicts)
            .filter(|(pod, _)| jailed_under(pod, policy))
            .map(|(pod, verdict)| (pod.metadata.name.as_deref().unwrap_or_default(), verdict)),
    );
    let generation = status.observed_generation;
    with_enforcement(status, previous, summary, checks_enabled, generation, now);
}

impl Context {
    /// The jailed pods of `namespace`.
    fn pods_of(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.jailed.of(&ObjectRef::new(namespace))
    }

    /// Metrics of the verdicts on the pods of `namespace`.
    fn count_verdicts(&self, namespace: &str, verdicts: &[Verdict]) {
        let count = |f: fn(&Verdict) -> bool| {
            i64::try_from(verdicts.iter().filter(|v| f(v)).count()).unwrap_or(i64::MAX)
        };
        self.metrics.set_enforcement(
            namespace,
            count(|v| *v == Verdict::Enforced),
            count(|v| matches!(v, Verdict::NotEnforcing { .. })),
        );
    }

    /// Every cluster policy, compiled.
    fn compiled_clusters(&self) -> Vec<CompiledCluster> {
        self.clusters
            .state()
            .iter()
            .map(|c| compile_cluster(c))
            .collect()
    }

    /// Whether the published ConfigMap of `namespace` holds `cluster`'s entry as compiled now.
    fn entry_published(&self, namespace: &str, cluster: &CompiledCluster) -> bool {
        let Some(entry) = &cluster.entry else {
            return false;
        };
        let cm_ref = ObjectRef::<ConfigMap>::new(objects::POLICY_CONFIGMAP).within(namespace);
        self.config_maps
            .get(&cm_ref)
            .and_then(|cm| {
                cm.data
                    .as_ref()?
                    .get(objects::POLICY_CONFIGMAP_KEY)
                    .cloned()
            })
            .and_then(|text| serde_json::from_str::<CompiledPolicy>(&text).ok())
            .is_some_and(|file| file.policies.iter().any(|e| e == entry))
    }

    /// Forgets what was recorded for `namespace` (it has no policy left).
    fn forget(&self, namespace: &str) {
        self.lock_published().remove(namespace);
        self.metrics.set_enforcement(namespace, 0, 0);
    }

    fn lock_credentials(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Missing)>> {
        self.credentials_written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_published(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `hash` has been the published policy of `namespace`, as far as this process
    /// knows (a restarted operator counts from its start: a fresh grace, never a shorter one).
    fn published_for(&self, namespace: &str, hash: &str) -> Duration {
        let mut map = self.lock_published();
        let entry = map
            .entry(namespace.to_owned())
            .or_insert_with(|| (hash.to_owned(), Instant::now()));
        if entry.0 != hash {
            *entry = (hash.to_owned(), Instant::now());
        }
        entry.1.elapsed()
    }

    /// The verdict on each of `pods` (same order).
    /// Adds what the sidecars of `pods` (the jailed pods of `namespace`) report denying to the
    /// totals of the policies they were jailed under, each started from its stored status.
    fn tally_denials(&self, namespace: &str, policies: &[BoundaryPolicy], pods: &[Arc<Pod>]) {
        let mut ledger = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let names: Vec<String> = policies.iter().map(ResourceExt::name_any).collect();
        for policy in policies {
            let stored = policy
                .status
                .as_ref()
                .map_or(&[][..], |s| s.denied_destinations.as_slice());
            ledger.seed(namespace, &policy.name_any(), stored);
        }
        let mut current = std::collections::BTreeSet::new();
        for pod in pods {
            let key = PodKey::of(pod);
            current.insert(key.clone());
            let Some(Observation::Status(status)) = self.observations.get(&key) else {
                continue;
            };
            let under: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|name| jailed_under(pod, name))
                .collect();
            ledger.absorb(namespace, &key, &under, &status);
        }
        ledger.retain(namespace, &current, &names);
    }

    /// `policy`'s `status.deniedDestinations` as the ledger has it now.
    fn denied_destinations(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Vec<boundary_api::enforcement::DeniedDestination> {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .status(namespace, policy)
    }

    fn verdicts(&self, pods: &[Arc<Pod>], hash: &str) -> Vec<Verdict> {
        pods.iter()
            .map(|pod| {
                if pod.metadata.deletion_timestamp.is_some() {
                    Verdict::Exited
                } else if self.enforcement.enabled() {
                    let observation = self.observations.get(&PodKey::of(pod));
                    enforcement::decide(&PodFacts::of(pod), observation.as_ref(), hash)
                } else {
                    Verdict::NotChecked
                }
            })
            .collect()
    }
}

/// Sets the pod condition `agentboundary.dev/enforced` on the pods that have it as a readiness
/// gate, where it differs from what the verdict says (strategic merge patch of `pods/status`,
/// merged by condition type). Failures are logged: they must not hold up the policies' status.
async fn set_pod_conditions(
    ctx: &Context,
    namespace: &str,
    pods: &[Arc<Pod>],
    verdicts: &[Verdict],
    published_for: Duration,
    now: &Time,
) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for (pod, verdict) in pods.iter().zip(verdicts) {
        if !enforcement::gated(pod) {
            continue;
        }
        let Some((status, reason, message)) =
            enforcement::pod_condition(verdict, published_for, ctx.enforcement.stale_grace())
        else {
            continue;
        };
        let current = enforcement::current_condition(pod);
        if current.is_some_and(|c| {
            c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message.as_str())
        }) {
            continue;
        }
        let since = current
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        let body = json!({"status": {"conditions": [{
            "type": conditions::ENFORCED,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }]}});
        let name = pod.name_any();
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
        {
            Ok(_) => tracing::info!(namespace, pod = %name, status, reason, "pod condition set"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => tracing::warn!(
                namespace, pod = %name, %error,
                "setting the pod condition {} failed (does the operator's role allow patch on \
                 pods/status?)",
                conditions::ENFORCED
            ),
        }
    }
}

/// The note of an `ExfiltrationRisk` Warning Event when a policy's lint warnings are not the
/// ones it had (the `LintClean` condition's message), else `None`: an Event per change, not per
/// reconcile.
fn new_lint_warnings(
    previous: Option<&[boundary_api::crd::LintWarning]>,
    current: &[boundary_api::crd::LintWarning],
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<String> {
    if current.is_empty() || previous == Some(current) {
        return None;
    }
    conditions
        .iter()
        .find(|c| c.type_ == boundary_api::crd::condition_types::LINT_CLEAN)
        .map(|c| c.message.clone())
}

/// A Warning Event on the policy `reference` naming its problems (the message of the
/// `RulesValid` condition in `conditions`). Failing to record it is only logged.
async fn publish_problems(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    name: &str,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    let rules_valid = conditions
        .iter()
        .find(|c| c.type_ == boundary_api::crd::condition_types::RULES_VALID);
    let message = rules_valid.map(|c| c.message.clone()).unwrap_or_default();
    // Only credentials are invalid: say so (the rules are published).
    let reason = if rules_valid.is_some_and(|c| c.reason == reasons::INVALID_CREDENTIALS) {
        EVENT_INVALID_CREDENTIALS
    } else {
        EVENT_INVALID_RULES
    };
    publish_warning(recorder, reference, name, reason, &message).await;
}

/// A Warning Event with `reason` and `message` (cut to what the apiserver accepts) on the
/// policy `reference`. Failing to record it is only logged.
async fn publish_warning(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    name: &str,
    reason: &str,
    message: &str,
) {
    let mut note: String = message.chars().take(MAX_NOTE).collect();
    if note.len() < message.len() {
        note.push('…');
    }
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Compile".into(),
        secondary: None,
    };
    let mut result = recorder.publish(&event, reference).await;
    // Kubernetes before 1.21 refuses an events.k8s.io/v1 Event about a cluster-scoped object
    // unless the reference names the Event's namespace.
    if matches!(&result, Err(kube::Error::Api(status)) if status.code == 422)
        && reference.namespace.is_none()
    {
        let mut in_default = reference.clone();
        in_default.namespace = Some("default".into());
        result = recorder.publish(&event, &in_default).await;
    }
    if let Err(err) = result {
        tracing::warn!(policy = %name, error = %err, "recording an Event failed");
    }
}

/// The namespace's policy ConfigMap, owned by every policy of the namespace and every cluster
/// policy applying to it.
pub fn config_map(
    namespace: &str,
    policies: &[BoundaryPolicy],
    clusters: &[&CompiledCluster],
    text: String,
) -> Result<ConfigMap, Error> {
    let owner = |kind: &str, name: String, uid: Option<String>| {
        Ok(OwnerReference {
            api_version: API_VERSION.into(),
            kind: kind.into(),
            name,
            uid: uid.ok_or(Error::MissingField("metadata.uid"))?,
            controller: None,
            block_owner_deletion: None,
        })
    };
    let owners = policies
        .iter()
        .map(|p| owner("BoundaryPolicy", p.name_any(), p.uid()))
        .chain(
            clusters
                .iter()
                .map(|c| owner("ClusterBoundaryPolicy", c.name.clone(), c.uid.clone())),
        )
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(objects::POLICY_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (
                    labels::MANAGED_BY.into(),
                    contract::MANAGED_BY_OPERATOR.into(),
                ),
                (labels::PART_OF.into(), contract::PART_OF.into()),
                (labels::COMPONENT.into(), COMPONENT_POLICY.into()),
            ])),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            objects::POLICY_CONFIGMAP_KEY.into(),
            text,
        )])),
        ..ConfigMap::default()
    })
}

/// Whether `existing` already has the data, labels and owners of `desired`.
fn config_map_current(existing: Option<&ConfigMap>, desired: &ConfigMap) -> bool {
    let Some(existing) = existing else {
        return false;
    };
    let uids = |c: &ConfigMap| -> BTreeSet<String> {
        c.metadata
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.clone())
            .collect()
    };
    let labels_ok = desired
        .labels()
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    existing.data == desired.data && uids(existing) == uids(desired) && labels_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, uid: &str) -> BoundaryPolicy {
        serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "BoundaryPolicy",
            "metadata": {"name": name, "namespace": "agents", "uid": uid},
            "spec": {"podSelector": {}},
        }))
        .unwrap()
    }

    #[test]
    fn the_config_map_is_owned_by_every_policy_and_labelled() {
        let policies = [policy("a", "u1"), policy("b", "u2")];
        let cm = config_map("agents", &policies, &[], "{}\n".into()).unwrap();
        let owners = cm.metadata.owner_references.clone().unwrap();
        assert_eq!(
            owners.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
            ["u1", "u2"]
        );
        assert!(owners.iter().all(|o| o.kind == "BoundaryPolicy"));
        assert_eq!(cm.labels()[labels::COMPONENT], "policy");
        assert_eq!(
            cm.labels()[labels::MANAGED_BY],
            contract::MANAGED_BY_OPERATOR
        );
        assert_eq!(
            cm.data.as_ref().unwrap()[objects::POLICY_CONFIGMAP_KEY],
            "{}\n"
        );
        assert!(config_map_current(Some(&cm), &cm));
        assert!(!config_map_current(None, &cm));
        let fewer = config_map("agents", &policies[..1], &[], "{}\n".into()).unwrap();
        assert!(!config_map_current(Some(&fewer), &cm));
        let other = config_map("agents", &policies, &[], "[]\n".into()).unwrap();
        assert!(!config_map_current(Some(&other), &cm));
        assert!(config_map("agents", &[policy("a", "")], &[], String::new()).is_ok());
        let mut no_uid = policy("a", "");
        no_uid.metadata.uid = None;
        assert!(config_map("agents", &[no_uid], &[], String::new()).is_err());
    }

    #[test]
    fn cluster_policies_own_the_config_map_too() {
        let cbp: ClusterBoundaryPolicy = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "ClusterBoundaryPolicy",
            "metadata": {"name": "org", "uid": "c1"},
            "spec": {"namespaceSelector": {}, "podSelector": {}, "deny": ["domain=pastebin.com"]},
        }))
        .unwrap();
        let org = compile_cluster(&cbp);
        let cm = config_map("agents", &[policy("a", "u1")], &[&org], "{}\n".into()).unwrap();
        let owners: Vec<_> = cm
            .owner_references()
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str(), o.uid.as_str()))
            .collect();
        assert_eq!(
            owners,
            [
                ("BoundaryPolicy", "a", "u1"),
                ("ClusterBoundaryPolicy", "org", "c1")
            ]
        );
        // Only a cluster policy applies: it alone owns the ConfigMap.
        let cm = config_map("agents", &[], &[&org], "{}\n".into()).unwrap();
        assert_eq!(cm.owner_references().len(), 1);
        let without_cluster =
            config_map("agents", &[policy("a", "u1")], &[], "{}\n".into()).unwrap();
        assert!(!config_map_current(Some(&without_cluster), &cm));
        let mut no_uid = org.clone();
        no_uid.uid = None;
        assert!(config_map("agents", &[], &[&no_uid], String::new()).is_err());
    }

    #[test]
    fn secret_changes_reconcile_only_namespaces_whose_policies_reference_them() {
        use kube::runtime::watcher::Event;
        let (policies, mut apply) = ByTarget::<BoundaryPolicy, Namespace>::standalone(namespace_of);
        let mut referencing = policy("a", "u1");
        referencing.spec.credentials = serde_json::from_value(json!([
            {"name": "llm", "secretKeyRef": {"name": "llm-key", "key": "k"},
             "destinations": [{"domains": ["api.anthropic.com"]}],
             "inject": {"header": {"name": "x-api-key"}}},
            {"name": "aws", "destinations": [{"domains": ["*.amazonaws.com"]}],
             "inject": {"awsSigV4": {"secretName": "aws-keys"}}}
        ]))
        .unwrap();
        apply(&Event::Apply(referencing));
        let secret = |ns: &str, name: &str| -> PartialObjectMeta<Secret> {
            serde_json::from_value(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "5",
                             "labels": {"a": "b"}, "managedFields": [{"manager": "kubectl"}],
                             "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                             "{\"data\":{\"k\":\"c2VjcmV0\"}}"}},
            }))
            .unwrap()
        };
        let target =
            |ns: &str, name: &str| secret_target(&policies, &secret(ns, name)).map(|t| t.name);
        assert_eq!(target("agents", "llm-key").as_deref(), Some("agents"));
        assert_eq!(target("agents", "aws-keys").as_deref(), Some("agents"));
        assert_eq!(target("agents", "unrelated"), None);
        assert_eq!(
            target("elsewhere", "llm-key"),
            None,
            "policies reference their own namespace"
        );
        assert_eq!(
            target("elsewhere", objects::CREDENTIALS_SECRET).as_deref(),
            Some("elsewhere"),
            "a change to the operator's own Secret is repaired"
        );
        // What is kept of a Secret: no labels, annotations (the last-applied one holds the data)
        // or managed fields; the labels of a credentials Secret only.
        let mut kept = secret("agents", "llm-key");
        trim_secret(&mut kept);
        assert_eq!(
            serde_json::to_value(&kept.metadata).unwrap(),
            json!({"name": "llm-key", "namespace": "agents", "resourceVersion": "5"})
        );
        let mut ours = secret("agents", objects::CREDENTIALS_SECRET);
        trim_secret(&mut ours);
        assert_eq!(
            serde_json::to_value(&ours.metadata).unwrap(),
            json!({"name": objects::CREDENTIALS_SECRET, "namespace": "agents",
                   "resourceVersion": "5", "labels": {"a": "b"}})
        );
    }

    #[test]
    fn policies_are_counted_by_their_ready_and_rules_valid_conditions() {
        use boundary_api::crd::condition_types::{READY, RULES_VALID};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let status = |conditions: &[(&str, &str)]| BoundaryPolicyStatus {
            conditions: conditions
                .iter()
                .map(|(kind, state)| Condition {
                    type_: (*kind).into(),
                    status: (*state).into(),
                    reason: "r".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(Timestamp::UNIX_EPOCH),
                })
                .collect(),
            ..BoundaryPolicyStatus::default()
        };
        let mut counts = PolicyCounts::default();
        count_policy(
            &mut counts,
            &status(&[(READY, "True"), (RULES_VALID, "True")]),
        );
        count_policy(
            &mut counts,
            &status(&[(READY, "False"), (RULES_VALID, "False")]),
        );
        // No condition yet: not Ready, but nothing says the rules are invalid.
        count_policy(&mut counts, &status(&[]));
        count_policy(&mut counts, &status(&[(READY, "Unknown")]));
        assert_eq!(
            counts,
            PolicyCounts {
                total: 4,
                not_ready: 3,
                rules_invalid: 1,
            }
        );
    }

    #[test]
    fn an_event_is_due_when_a_missing_value_is_new_or_its_message_changed() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let status = |state: &str, message: &str| BoundaryPolicyStatus {
            conditions: vec![Condition {
                type_: CREDENTIALS_READY.into(),
                status: state.into(),
                reason: "r".into(),
                message: message.into(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..BoundaryPolicyStatus::default()
        };
        let missing = status("False", "Secret agents/llm has no key k");
        assert_eq!(
            newly_missing(None, &missing).as_deref(),
            Some("Secret agents/llm has no key k")
        );
        assert!(newly_missing(Some(&status("True", "fine")), &missing).is_some());
        assert!(newly_missing(Some(&missing), &missing).is_none());
        assert!(newly_missing(Some(&status("False", "other")), &missing).is_some());
        assert!(newly_missing(Some(&missing), &status("True", "fine")).is_none());
    }

    #[test]
    fn the_namespace_watch_combines_name_and_labels() {
        let config = Config {
            watch_namespace: Some("agents".into()),
            namespace_selector: Some("team=ml".into()),
            ..Config::default()
        };
        let watch = namespace_watch(&config);
        assert_eq!(
            watch.field_selector.as_deref(),
            Some("metadata.name=agents")
        );
        assert_eq!(watch.label_selector.as_deref(), Some("team=ml"));
        let all = namespace_watch(&Config::default());
        assert!(all.field_selector.is_none() && all.label_selector.is_none());
    }
}

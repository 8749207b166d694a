//! The `BoundaryPolicy` controller. The unit of work is a namespace: its policies compile into
//! one ConfigMap, so any change to one of them (created, edited, deleted) or to the ConfigMap
//! reconciles the whole namespace from the in-memory copies (reflectors) of both.
//!
//! The ConfigMap has an owner reference to every policy of the namespace, so the garbage
//! collector removes it when the last one goes; the operator also deletes it itself (clusters
//! without a garbage collector, and the operator notices first).
//!
//! A deleted policy stops applying at once to new pods and, through the mounted ConfigMap (the
//! kubelet refreshes it, the sidecar reloads it), to running ones once the namespace has other
//! policies left; when the last policy goes, the ConfigMap goes, and running pods keep the last
//! file they loaded until they restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boundary_api::contract::{self, API_VERSION, annotations, conditions, labels, objects};
use boundary_api::crd::{BoundaryPolicy, BoundaryPolicyStatus};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::AbortOnDrop;
use crate::compile::compile_namespace;
use crate::enforcement::{self, EnforcementConfig, Observations, PodFacts, PodKey, Verdict};
use crate::metrics::{Controller as MetricsController, Metrics};
use crate::status::{Publication, desired_status, up_to_date, with_enforcement};
use crate::{Config, Error, Shutdown, spawn_reflector, wait_ready};

/// Value of [`labels::COMPONENT`] on the policy ConfigMaps.
pub const COMPONENT_POLICY: &str = "policy";
/// Reason of the Warning Event on a policy whose rules do not compile.
pub const EVENT_INVALID_RULES: &str = "InvalidRules";
/// Longest Event note the apiserver accepts (events.k8s.io/v1 limits it to 1 KiB).
const MAX_NOTE: usize = 1000;

/// What a reconcile needs.
pub struct Context {
    client: Client,
    policies: Store<BoundaryPolicy>,
    config_maps: Store<ConfigMap>,
    /// Jailed pods, trimmed to what the counts and the checks read ([`enforcement::trim`]).
    jailed: Store<Pod>,
    /// What each running jailed pod's sidecar said last.
    observations: Observations,
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
            .field("policies", &self.policies.len())
            .field("config_maps", &self.config_maps.len())
            .finish_non_exhaustive()
    }
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

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let (tx, rx) = futures::channel::mpsc::unbounded::<ObjectRef<Namespace>>();
    let (policy_api, cm_api, pod_api, ns_watch) = match &config.watch_namespace {
        Some(ns) => (
            Api::<BoundaryPolicy>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={ns}")),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            watcher::Config::default(),
        ),
    };
    let (policies, _policy_task) = spawn_reflector(
        watcher(policy_api, watcher::Config::default()),
        |p: &BoundaryPolicy| p.namespace().map(|ns| ObjectRef::new(&ns)),
        tx.clone(),
    );
    let (config_maps, _cm_task) = spawn_reflector(
        watcher(
            cm_api,
            watcher::Config::default().labels(&config_map_selector()),
        ),
        |c: &ConfigMap| c.namespace().map(|ns| ObjectRef::new(&ns)),
        tx.clone(),
    );
    // Jailed pods, whole (the checks need the pod IP, phase and container states) but trimmed
    // before they are stored, so they cost about as much memory as metadata alone.
    let (jailed, _jailed_task) = spawn_reflector(
        watcher(pod_api, watcher::Config::default().labels(labels::JAILED))
            .modify(enforcement::trim),
        |p: &Pod| p.namespace().map(|ns| ObjectRef::new(&ns)),
        tx.clone(),
    );
    // Never reconcile from a half-listed cache: an empty policy list deletes the ConfigMap.
    if !wait_ready(&policies, "BoundaryPolicy", &shutdown).await?
        || !wait_ready(&config_maps, "ConfigMap", &shutdown).await?
        || !wait_ready(&jailed, "jailed Pod", &shutdown).await?
    {
        return Ok(());
    }
    let reporter = Reporter {
        controller: objects::OPERATOR_FIELD_MANAGER.into(),
        instance: config.instance.clone(),
    };
    let observations = Observations::default();
    let _checks = AbortOnDrop(tokio::spawn(enforcement::run_checks(
        jailed.clone(),
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
        config_maps,
        jailed,
        observations,
        enforcement: config.enforcement.clone(),
        published: Mutex::new(HashMap::new()),
        retry: config.retry(),
        metrics: config.metrics.clone(),
    });
    tracing::info!(namespace = ?config.watch_namespace, "policy controller started");
    Controller::new(Api::<Namespace>::all(client), ns_watch)
        .reconcile_on(rx)
        .graceful_shutdown_on(shutdown.wait())
        .run(
            |object, ctx: Arc<Context>| async move {
                let started = std::time::Instant::now();
                let result = reconcile(object, ctx.clone()).await;
                ctx.metrics.reconciled(
                    MetricsController::Policy,
                    result.is_ok(),
                    started.elapsed(),
                );
                result
            },
            error_policy,
            context,
        )
        .for_each(|result| {
            match result {
                Ok((namespace, _)) => tracing::debug!(namespace = %namespace.name, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "reconcile skipped"),
            }
            std::future::ready(())
        })
        .await;
    tracing::info!("policy controller stopped");
    Ok(())
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

/// Brings the ConfigMap and the status of every policy of `namespace` up to date.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = namespace.name_any();
    let mut policies: Vec<BoundaryPolicy> = ctx
        .policies
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .map(|p| (**p).clone())
        .collect();
    policies.sort_by_key(ResourceExt::name_any);
    let cm_ref = ObjectRef::<ConfigMap>::new(objects::POLICY_CONFIGMAP).within(&ns);
    let existing = ctx.config_maps.get(&cm_ref);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);

    if policies.is_empty() {
        ctx.forget(&ns);
        if existing.is_some() {
            match cms
                .delete(objects::POLICY_CONFIGMAP, &DeleteParams::default())
                .await
            {
                Ok(_) => tracing::info!(namespace = %ns, "no policies left: ConfigMap deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("deleting ConfigMap in {ns}"), e)),
            }
        }
        return Ok(Action::await_change());
    }
    if namespace.metadata.deletion_timestamp.is_some() {
        // Nothing can be created in a terminating namespace; its objects are going anyway.
        return Ok(Action::await_change());
    }

    let compiled = compile_namespace(&ns, &policies);
    let text = compiled.to_json();
    let hash = boundary_api::compiled::policy_hash(text.as_bytes());
    let desired = config_map(&ns, &policies, text)?;
    if !config_map_current(existing.as_deref(), &desired) {
        cms.patch(
            objects::POLICY_CONFIGMAP,
            &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|e| Error::kube(format!("applying ConfigMap in {ns}"), e))?;
        tracing::info!(namespace = %ns, %hash, policies = policies.len(), "compiled policy published");
    }

    let publication = Publication {
        config_map: objects::POLICY_CONFIGMAP.into(),
        hash,
    };
    let now = Time(Timestamp::now());
    let ns_pods = ctx.pods_of(&ns);
    let verdicts = ctx.verdicts(&ns_pods, &publication.hash);
    let published_for = ctx.published_for(&ns, &publication.hash);
    let api: Api<BoundaryPolicy> = Api::namespaced(ctx.client.clone(), &ns);
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
        if up_to_date(previous, &status) {
            continue;
        }
        let problems_changed = previous.is_none_or(|s| {
            s.rule_problems != report.problems || s.observed_generation != report.generation
        });
        if !report.problems.is_empty() && problems_changed {
            publish_problems(&ctx.recorder, bp, &status).await;
        }
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
    set_pod_conditions(&ctx, &ns, &ns_pods, &verdicts, published_for, &now).await;
    Ok(Action::await_change())
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
        self.jailed
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .collect()
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

    /// Forgets what was recorded for `namespace` (it has no policy left).
    fn forget(&self, namespace: &str) {
        self.lock_published().remove(namespace);
        self.metrics.set_enforcement(namespace, 0, 0);
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

/// A Warning Event on the policy naming its problems. Failing to record it is only logged.
async fn publish_problems(
    recorder: &Recorder,
    bp: &BoundaryPolicy,
    status: &boundary_api::crd::BoundaryPolicyStatus,
) {
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == boundary_api::crd::condition_types::RULES_VALID)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let mut note: String = message.chars().take(MAX_NOTE).collect();
    if note.len() < message.len() {
        note.push('…');
    }
    let event = Event {
        type_: EventType::Warning,
        reason: EVENT_INVALID_RULES.into(),
        note: Some(note),
        action: "Compile".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &bp.object_ref(&())).await {
        tracing::warn!(policy = %bp.name_any(), error = %err, "recording an Event failed");
    }
}

/// The namespace's policy ConfigMap, owned by every policy of the namespace.
pub fn config_map(
    namespace: &str,
    policies: &[BoundaryPolicy],
    text: String,
) -> Result<ConfigMap, Error> {
    let owners = policies
        .iter()
        .map(|p| {
            Ok(OwnerReference {
                api_version: API_VERSION.into(),
                kind: "BoundaryPolicy".into(),
                name: p.name_any(),
                uid: p.uid().ok_or(Error::MissingField("metadata.uid"))?,
                controller: None,
                block_owner_deletion: None,
            })
        })
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
        let cm = config_map("agents", &policies, "{}\n".into()).unwrap();
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
        let fewer = config_map("agents", &policies[..1], "{}\n".into()).unwrap();
        assert!(!config_map_current(Some(&fewer), &cm));
        let other = config_map("agents", &policies, "[]\n".into()).unwrap();
        assert!(!config_map_current(Some(&other), &cm));
        assert!(config_map("agents", &[policy("a", "")], String::new()).is_ok());
        let mut no_uid = policy("a", "");
        no_uid.metadata.uid = None;
        assert!(config_map("agents", &[no_uid], String::new()).is_err());
    }
}

//! Which jailed pods are proven to enforce their policy.
//!
//! The webhook's `agentboundary.dev/jailed` label says a pod was given a jail, not that its
//! agent runs in it: an image whose command does not start with `boundary run` (and a policy
//! without `wrapCommand`) runs the agent unjailed next to an idle sidecar. So the operator asks
//! every running jailed pod's sidecar (`GET http://<pod IP>:15090/status`, the sidecar's
//! metrics listener; the agent's service account gets no right for it) which jails are
//! connected to it and which policy file it enforces, and [`decide`] turns that into a verdict
//! per pod. The policy controller aggregates the verdicts into each policy's status
//! ([`summarize`], [`policy_condition`]) and sets the pod condition
//! [`conditions::ENFORCED`] on pods that carry it as a readiness gate ([`pod_condition`]).
//!
//! The answer is as trustworthy as the pod's network namespace: a container of the pod that
//! runs unjailed shares it with the sidecar (the jailed ones do not).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boundary_api::contract::{self, annotations, conditions, ports};
use boundary_api::crd::NotEnforcingPod;
use boundary_api::enforcement::{JailState, SidecarStatus};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Reasons of a pod that is not proven to enforce (in `notEnforcing[].reason`, the `Enforced`
/// conditions and the pod condition).
pub mod reasons {
    /// Every jailed container is connected and the current policy is loaded.
    pub const ENFORCED: &str = "Enforced";
    /// A jailed container runs (or ran) without a jail connected to the sidecar.
    pub const NO_JAIL_CONNECTED: &str = "NoJailConnected";
    /// A jail could not be set up, or its connection was lost.
    pub const JAIL_FAILED: &str = "JailFailed";
    /// The sidecar enforces another policy file than the published one (or none).
    pub const STALE_POLICY: &str = "StalePolicy";
    /// The sidecar's status could not be read.
    pub const SIDECAR_UNREACHABLE: &str = "SidecarUnreachable";
    /// The pod's `agentboundary.dev/status` annotation is missing or unreadable, so its jailed
    /// containers are unknown.
    pub const UNKNOWN_CONTAINERS: &str = "UnknownContainers";
    /// Several pods fail for different reasons (policy condition only).
    pub const NOT_ENFORCING: &str = "NotEnforcing";
    /// Some running pods were not checked yet (policy condition only).
    pub const CHECKING: &str = "Checking";
    /// No running pod is jailed under the policy (policy condition only).
    pub const NO_RUNNING_PODS: &str = "NoRunningPods";
    /// The running pods use the coder-boundary runtime, which has no sidecar to ask.
    pub const NOT_VERIFIABLE: &str = "NotVerifiable";
    /// Enforcement checks are turned off.
    pub const CHECKS_DISABLED: &str = "ChecksDisabled";
}

/// Entries of `notEnforcing` in a policy's status, at most.
pub const MAX_NOT_ENFORCING: usize = 20;
/// Largest status answer read from a sidecar.
pub const MAX_STATUS_BYTES: usize = 256 * 1024;

/// Settings of the enforcement checks (flags of the binary).
#[derive(Clone, Debug, clap::Args)]
pub struct EnforcementConfig {
    /// Seconds between two rounds of asking every running jailed pod's sidecar for its status.
    /// 0 turns the checks off (the `Enforced` condition stays `Unknown`).
    #[arg(
        long = "enforcement-interval-seconds",
        env = contract::operator_env::ENFORCEMENT_INTERVAL_SECONDS,
        default_value_t = 10
    )]
    pub interval_seconds: u64,
    /// Milliseconds one sidecar has to answer (connect, request and body).
    #[arg(
        long = "enforcement-timeout-millis",
        env = contract::operator_env::ENFORCEMENT_TIMEOUT_MILLIS,
        default_value_t = 2000
    )]
    pub timeout_millis: u64,
    /// Sidecars asked at the same time.
    #[arg(
        long = "enforcement-concurrency",
        env = contract::operator_env::ENFORCEMENT_CONCURRENCY,
        default_value_t = 32
    )]
    pub concurrency: usize,
    /// Seconds a newly published policy may take to reach the sidecars (the kubelet refreshes
    /// ConfigMap volumes about once a minute) before a pod whose sidecar still enforces the
    /// previous one loses its `agentboundary.dev/enforced` pod condition. Policy status shows
    /// `StalePolicy` at once either way.
    #[arg(
        long = "enforcement-stale-grace-seconds",
        env = contract::operator_env::ENFORCEMENT_STALE_GRACE_SECONDS,
        default_value_t = 180
    )]
    pub stale_grace_seconds: u64,
    /// The sidecars' status port: the contract's; tests point it at their own servers.
    #[arg(skip = ports::SIDECAR_METRICS)]
    pub sidecar_port: u16,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        EnforcementConfig {
            interval_seconds: 10,
            timeout_millis: 2000,
            concurrency: 32,
            stale_grace_seconds: 180,
            sidecar_port: ports::SIDECAR_METRICS,
        }
    }
}

impl EnforcementConfig {
    /// Whether checks run at all.
    pub fn enabled(&self) -> bool {
        self.interval_seconds > 0
    }

    /// Time between rounds.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_seconds.max(1))
    }

    /// Time one sidecar has (never more than a round).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_millis.max(1)).min(self.interval())
    }

    /// Grace for a policy update in flight.
    pub fn stale_grace(&self) -> Duration {
        Duration::from_secs(self.stale_grace_seconds)
    }
}

// ---------------------------------------------------------------------------------------------
// What is known about a pod

/// How the kubelet reports a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerRun {
    /// Running.
    Running,
    /// Waiting to (re)start, with the kubelet's reason (e.g. `CrashLoopBackOff`).
    Waiting(String),
    /// Ended, with its exit code.
    Terminated(i32),
    /// No status reported (yet).
    Unknown,
}

/// What the decision needs of a jailed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's name.
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Whether a `boundary sidecar` was injected (not with the coder-boundary runtime).
    pub sidecar: bool,
    /// The jailed containers, from the webhook's status annotation (`None`: missing or
    /// unreadable).
    pub jailed: Option<Vec<String>>,
    /// The kubelet's view of each container.
    pub containers: BTreeMap<String, ContainerRun>,
}

/// The parts of the webhook's `agentboundary.dev/status` annotation (`InjectionStatus` in
/// webhook/src/inject.rs) the operator reads.
#[derive(Debug, Deserialize)]
struct InjectionRecord {
    sidecar: String,
    containers: Vec<InjectedContainer>,
}

#[derive(Debug, Deserialize)]
struct InjectedContainer {
    name: String,
}

impl PodFacts {
    /// The facts of `pod`.
    pub fn of(pod: &Pod) -> PodFacts {
        let record = pod
            .annotations()
            .get(annotations::STATUS)
            .and_then(|text| serde_json::from_str::<InjectionRecord>(text).ok());
        let status = pod.status.as_ref();
        let containers = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .map(|c| (c.name.clone(), run_of(c.state.as_ref())))
            .collect();
        PodFacts {
            name: pod.name_any(),
            phase: status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into()),
            sidecar: record.as_ref().is_none_or(|r| r.sidecar != "none"),
            jailed: record.map(|r| r.containers.into_iter().map(|c| c.name).collect()),
            containers,
        }
    }
}

fn run_of(state: Option<&ContainerState>) -> ContainerRun {
    let Some(state) = state else {
        return ContainerRun::Unknown;
    };
    if state.running.is_some() {
        ContainerRun::Running
    } else if let Some(t) = &state.terminated {
        ContainerRun::Terminated(t.exit_code)
    } else if let Some(w) = &state.waiting {
        ContainerRun::Waiting(w.reason.clone().unwrap_or_default())
    } else {
        ContainerRun::Unknown
    }
}

/// What the operator learnt from a pod's sidecar in the last round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The sidecar's answer.
    Status(SidecarStatus),
    /// Why there is none (connection refused, timeout, not JSON, ...).
    Unreachable(String),
}

// ---------------------------------------------------------------------------------------------
// The decision

/// The verdict on one jailed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every jailed container that runs is connected, and the sidecar enforces the published
    /// policy.
    Enforced,
    /// Not proven to enforce.
    NotEnforcing {
        /// The container concerned, if the reason is one container's.
        container: Option<String>,
        /// One of [`reasons`].
        reason: &'static str,
        /// Details and what to do.
        message: String,
    },
    /// The pod (or every jailed container of it) ran to completion: not counted.
    Exited,
    /// The pod does not run yet: not counted.
    Pending,
    /// Running, but its sidecar has not been asked yet.
    NotChecked,
    /// No sidecar to ask (the coder-boundary runtime).
    Unverifiable,
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// One container's part of the verdict.
enum ContainerVerdict {
    Connected,
    Exited,
    Problem(&'static str, String),
}

fn container_verdict(name: &str, run: &ContainerRun, status: &SidecarStatus) -> ContainerVerdict {
    let jails: Vec<_> = status
        .jails
        .iter()
        .filter(|j| j.container == name)
        .collect();
    if jails.iter().any(|j| j.state == JailState::Connected) {
        return ContainerVerdict::Connected;
    }
    let kubelet = match run {
        ContainerRun::Running | ContainerRun::Unknown => String::new(),
        ContainerRun::Waiting(reason) if reason.is_empty() => " (the container is waiting)".into(),
        ContainerRun::Waiting(reason) => format!(" (the container is waiting: {reason})"),
        ContainerRun::Terminated(code) => format!(" (the container exited with {code})"),
    };
    // The sidecar appends one entry per run: the last is the current or latest run.
    let Some(last) = jails.last() else {
        return ContainerVerdict::Problem(
            reasons::NO_JAIL_CONNECTED,
            format!(
                "container {name} has not connected a jail to the sidecar{kubelet}: its command \
                 does not run `boundary run` (set spec.jail.wrapCommand in the policy, or start \
                 the image's command with `boundary run --`)"
            ),
        );
    };
    let error = last
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    match last.state {
        JailState::Connected => ContainerVerdict::Connected,
        JailState::Failed => ContainerVerdict::Problem(
            reasons::JAIL_FAILED,
            format!("the jail of container {name} could not be set up{error}{kubelet}"),
        ),
        JailState::Lost => ContainerVerdict::Problem(
            reasons::JAIL_FAILED,
            format!(
                "the jail of container {name} lost its connection to the sidecar without \
                 reporting an exit{error}{kubelet}"
            ),
        ),
        JailState::Exited if *run == ContainerRun::Running => ContainerVerdict::Problem(
            reasons::NO_JAIL_CONNECTED,
            format!(
                "container {name} runs again but its new run has not connected a jail to the \
                 sidecar (the previous one exited{}): its command does not run `boundary run`",
                last.exit_code
                    .map(|c| format!(" with {c}"))
                    .unwrap_or_default()
            ),
        ),
        JailState::Exited => ContainerVerdict::Exited,
        JailState::Unknown => ContainerVerdict::Problem(
            reasons::NO_JAIL_CONNECTED,
            format!(
                "the sidecar reports a jail state for container {name} this operator does not \
                 know{kubelet}"
            ),
        ),
    }
}

/// The verdict on `pod`, given the last observation of its sidecar and the hash of the policy
/// file published for its namespace.
pub fn decide(pod: &PodFacts, observation: Option<&Observation>, published_hash: &str) -> Verdict {
    match pod.phase.as_str() {
        "Succeeded" | "Failed" => return Verdict::Exited,
        "Running" => {}
        _ => return Verdict::Pending,
    }
    if !pod.sidecar {
        return Verdict::Unverifiable;
    }
    let Some(jailed) = &pod.jailed else {
        return Verdict::NotEnforcing {
            container: None,
            reason: reasons::UNKNOWN_CONTAINERS,
            message: format!(
                "the pod's {} annotation is missing or unreadable, so its jailed containers are \
                 unknown (re-create the pod)",
                annotations::STATUS
            ),
        };
    };
    let status = match observation {
        None => return Verdict::NotChecked,
        Some(Observation::Unreachable(error)) => {
            return Verdict::NotEnforcing {
                container: None,
                reason: reasons::SIDECAR_UNREACHABLE,
                message: error.clone(),
            };
        }
        Some(Observation::Status(status)) => status,
    };
    let mut connected = 0;
    for name in jailed {
        let run = pod.containers.get(name).unwrap_or(&ContainerRun::Unknown);
        match container_verdict(name, run, status) {
            ContainerVerdict::Connected => connected += 1,
            ContainerVerdict::Exited => {}
            ContainerVerdict::Problem(reason, message) => {
                return Verdict::NotEnforcing {
                    container: Some(name.clone()),
                    reason,
                    message,
                };
            }
        }
    }
    if connected == 0 {
        return Verdict::Exited;
    }
    if !status.policy_loaded || status.policy_hash.is_empty() {
        return Verdict::NotEnforcing {
            container: None,
            reason: reasons::STALE_POLICY,
            message: format!(
                "the sidecar has no policy file loaded (published: sha256 {}): it denies \
                 everything until the ConfigMap volume is refreshed",
                short(published_hash)
            ),
        };
    }
    if status.policy_hash != published_hash {
        return Verdict::NotEnforcing {
            container: None,
            reason: reasons::STALE_POLICY,
            message: format!(
                "the sidecar enforces policy sha256 {}, the published one is sha256 {}: the \
                 kubelet has not refreshed the ConfigMap volume yet (about a minute), or the \
                 sidecar refused the new file (see its log)",
                short(&status.policy_hash),
                short(published_hash)
            ),
        };
    }
    Verdict::Enforced
}

// ---------------------------------------------------------------------------------------------
// Aggregation

/// The verdicts on the pods of one policy, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Running pods proven to enforce.
    pub enforced: i32,
    /// Running pods not proven to enforce, by pod name (all of them).
    pub not_enforcing: Vec<NotEnforcingPod>,
    /// Running pods not checked yet.
    pub not_checked: i32,
    /// Running pods without a sidecar to ask.
    pub unverifiable: i32,
}

/// Counts `verdicts` (pod name, verdict).
pub fn summarize<'a>(verdicts: impl IntoIterator<Item = (&'a str, &'a Verdict)>) -> Summary {
    let mut summary = Summary::default();
    for (pod, verdict) in verdicts {
        match verdict {
            Verdict::Enforced => summary.enforced += 1,
            Verdict::NotEnforcing {
                container,
                reason,
                message,
            } => summary.not_enforcing.push(NotEnforcingPod {
                pod: pod.to_owned(),
                container: container.clone(),
                reason: (*reason).to_owned(),
                message: message.clone(),
            }),
            Verdict::NotChecked => summary.not_checked += 1,
            Verdict::Unverifiable => summary.unverifiable += 1,
            Verdict::Exited | Verdict::Pending => {}
        }
    }
    summary.not_enforcing.sort_by(|a, b| a.pod.cmp(&b.pod));
    summary
}

/// `(status, reason, message)` of a policy's `Enforced` condition.
pub fn policy_condition(summary: &Summary, checks_enabled: bool) -> (&'static str, String, String) {
    if !checks_enabled {
        return (
            "Unknown",
            reasons::CHECKS_DISABLED.into(),
            "enforcement checks are off (BOUNDARY_ENFORCEMENT_INTERVAL_SECONDS=0)".into(),
        );
    }
    let failing = summary.not_enforcing.len();
    let running = summary.enforced
        + i32::try_from(failing).unwrap_or(i32::MAX)
        + summary.not_checked
        + summary.unverifiable;
    if let Some(first) = summary.not_enforcing.first() {
        let reason = if summary
            .not_enforcing
            .iter()
            .all(|p| p.reason == first.reason)
        {
            first.reason.clone()
        } else {
            reasons::NOT_ENFORCING.to_owned()
        };
        let mut examples: Vec<String> = summary
            .not_enforcing
            .iter()
            .take(3)
            .map(|p| match &p.container {
                Some(c) => format!("{} ({c}): {}", p.pod, p.message),
                None => format!("{}: {}", p.pod, p.message),
            })
            .collect();
        if failing > examples.len() {
            examples.push(format!("and {} more", failing - examples.len()));
        }
        return (
            "False",
            reason,
            format!(
                "{failing} of {running} running pod(s) not proven to enforce: {}",
                examples.join("; ")
            ),
        );
    }
    if summary.not_checked > 0 {
        return (
            "Unknown",
            reasons::CHECKING.into(),
            format!(
                "{} of {running} running pod(s) not checked yet",
                summary.not_checked
            ),
        );
    }
    if summary.enforced == 0 {
        return if summary.unverifiable > 0 {
            (
                "Unknown",
                reasons::NOT_VERIFIABLE.into(),
                format!(
                    "{} running pod(s) use the coder-boundary runtime, which has no sidecar to \
                     report enforcement",
                    summary.unverifiable
                ),
            )
        } else {
            (
                "Unknown",
                reasons::NO_RUNNING_PODS.into(),
                "no running pod is jailed under this policy".into(),
            )
        };
    }
    let mut message = format!(
        "all {} running pod(s) have every jailed container connected to their sidecar, which \
         enforces the published policy",
        summary.enforced
    );
    if summary.unverifiable > 0 {
        let _ = write!(
            message,
            " ({} coder-boundary pod(s) not verifiable)",
            summary.unverifiable
        );
    }
    ("True", reasons::ENFORCED.into(), message)
}

/// The pod condition [`conditions::ENFORCED`] a gated pod should have: `None` leaves it as it
/// is (not checked yet, not running, or a policy update still within `grace`: `published_for` is
/// how long the current hash has been published).
pub fn pod_condition(
    verdict: &Verdict,
    published_for: Duration,
    grace: Duration,
) -> Option<(&'static str, &'static str, String)> {
    match verdict {
        Verdict::Enforced => Some((
            "True",
            reasons::ENFORCED,
            "every jailed container is connected to the sidecar, which enforces the published \
             policy"
                .into(),
        )),
        Verdict::NotEnforcing { reason, .. }
            if *reason == reasons::STALE_POLICY && published_for < grace =>
        {
            None
        }
        Verdict::NotEnforcing {
            container,
            reason,
            message,
        } => Some((
            "False",
            reason,
            match container {
                Some(c) => format!("{c}: {message}"),
                None => message.clone(),
            },
        )),
        Verdict::Exited | Verdict::Pending | Verdict::NotChecked | Verdict::Unverifiable => None,
    }
}

/// Whether `pod` has the readiness gate [`conditions::ENFORCED`].
pub fn gated(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .any(|g| g.condition_type == conditions::ENFORCED)
}

/// The pod's current [`conditions::ENFORCED`] condition.
pub fn current_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == conditions::ENFORCED)
}

// ---------------------------------------------------------------------------------------------
// Memory: the operator keeps jailed pods with only what the counts and the checks read

/// Drops everything of a jailed pod the operator does not read (managed fields, the spec but its
/// readiness gates, container images, other annotations and conditions), so the watch of whole
/// pods costs about as much memory as a metadata-only one.
pub fn trim(pod: &mut Pod) {
    let keep_labels = |m: &mut Option<BTreeMap<String, String>>, keys: &[&str]| {
        if let Some(map) = m.as_mut() {
            map.retain(|k, _| keys.contains(&k.as_str()));
        }
    };
    let meta = std::mem::take(&mut pod.metadata);
    let mut kept = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        labels: meta.labels,
        annotations: meta.annotations,
        ..ObjectMeta::default()
    };
    keep_labels(&mut kept.labels, &[contract::labels::JAILED]);
    keep_labels(
        &mut kept.annotations,
        &[annotations::STATUS, annotations::POLICY],
    );
    pod.metadata = kept;
    pod.spec = pod.spec.take().map(|s| PodSpec {
        readiness_gates: s.readiness_gates,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        conditions: s.conditions.map(|c| {
            c.into_iter()
                .filter(|c| c.type_ == conditions::ENFORCED)
                .collect()
        }),
        container_statuses: s.container_statuses.map(|all| {
            all.into_iter()
                .map(|c| ContainerStatus {
                    name: c.name,
                    state: c.state,
                    restart_count: c.restart_count,
                    ..ContainerStatus::default()
                })
                .collect()
        }),
        ..PodStatus::default()
    });
}

// ---------------------------------------------------------------------------------------------
// Asking the sidecars

/// Why a sidecar's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The TCP connection failed.
    #[error("connecting to the sidecar at {addr}: {source} (is the sidecar running, and may the operator reach pod IPs? a NetworkPolicy may block port {port})", port = addr.port())]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("asking the sidecar at {addr}: {source}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// Not 200.
    #[error("the sidecar at {addr} answered {status} to GET {path}{hint}", path = contract::SIDECAR_STATUS_PATH, hint = if *status == 404 { " (its jail-runtime image predates the status endpoint: upgrade it)" } else { "" })]
    Status {
        /// Where.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
    },
    /// The body was too large.
    #[error("the sidecar at {addr} sent more than {MAX_STATUS_BYTES} bytes of status")]
    TooLarge {
        /// Where.
        addr: SocketAddr,
    },
    /// The body was not the status JSON.
    #[error("the sidecar at {addr} sent a status that is not the expected JSON: {source}")]
    Json {
        /// Where.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// No complete answer in time.
    #[error("the sidecar at {addr} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
}

/// `GET http://addr/status`, one connection, at most `timeout` for everything.
pub async fn fetch_status(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SidecarStatus, FetchError> {
    tokio::time::timeout(timeout, fetch(addr))
        .await
        .unwrap_or(Err(FetchError::Timeout { addr, timeout }))
}

async fn fetch(addr: SocketAddr) -> Result<SidecarStatus, FetchError> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| FetchError::Connect { addr, source })?;
    let http = |source| FetchError::Http { addr, source };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    // Drives the connection; ends (and is aborted) with this function.
    let _connection = crate::watch::AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = hyper::Request::get(contract::SIDECAR_STATUS_PATH)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .expect("a GET of a fixed path is a valid request");
    let response = sender.send_request(request).await.map_err(http)?;
    if response.status() != hyper::StatusCode::OK {
        return Err(FetchError::Status {
            addr,
            status: response.status().as_u16(),
        });
    }
    let body = Limited::new(response.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(source) => FetchError::Http {
                addr,
                source: *source,
            },
            Err(_) => FetchError::TooLarge { addr },
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|source| FetchError::Json { addr, source })
}

/// Asks every target's sidecar, at most `concurrency` at a time, each within `timeout`.
pub async fn poll<K: Send>(
    targets: Vec<(K, SocketAddr)>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<(K, Observation)> {
    futures::stream::iter(targets)
        .map(|(key, addr)| async move {
            let observation = match fetch_status(addr, timeout).await {
                Ok(status) => Observation::Status(status),
                Err(err) => Observation::Unreachable(err.to_string()),
            };
            (key, observation)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// Identifies one pod (a re-created pod of the same name is another pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The UID.
    pub uid: String,
}

impl PodKey {
    /// The key of `pod`.
    pub fn of(pod: &Pod) -> PodKey {
        PodKey {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

/// The last observation of every checked pod, shared by the poller and the policy controller.
#[derive(Clone, Debug, Default)]
pub struct Observations(Arc<Mutex<HashMap<PodKey, Observation>>>);

impl Observations {
    /// The last observation of `key`.
    pub fn get(&self, key: &PodKey) -> Option<Observation> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PodKey, Observation>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a round: `results` replace the previous observations, pods not in `current` are
    /// forgotten. Returns the namespaces whose observations changed.
    pub fn record(
        &self,
        results: Vec<(PodKey, Observation)>,
        current: &BTreeSet<PodKey>,
    ) -> BTreeSet<String> {
        let mut map = self.lock();
        map.retain(|k, _| current.contains(k));
        let mut changed = BTreeSet::new();
        for (key, observation) in results {
            if map.get(&key) != Some(&observation) {
                changed.insert(key.namespace.clone());
                map.insert(key, observation);
            }
        }
        changed
    }
}

/// Whether `pod` is one whose sidecar can be asked: running, with an IP, not being deleted.
pub fn target(pod: &Pod, port: u16) -> Option<SocketAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Asks the sidecars of the running jailed pods in `pods` every interval until `shutdown`,
/// records what they say in `observations`, and sends the namespaces whose observations changed
/// to `trigger` (the policy controller recomputes their status and pod conditions).
pub async fn run_checks(
    pods: Store<Pod>,
    observations: Observations,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<Namespace>>,
    config: EnforcementConfig,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    if !config.enabled() {
        tracing::info!("enforcement checks are off");
        return;
    }
    let mut ticks = tokio::time::interval(config.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.clone().wait() => return,
        }
        let mut current = BTreeSet::new();
        let targets: Vec<(PodKey, SocketAddr)> = pods
            .state()
            .iter()
            .filter(|p| PodFacts::of(p).sidecar)
            .filter_map(|p| {
                let addr = target(p, config.sidecar_port)?;
                let key = PodKey::of(p);
                current.insert(key.clone());
                Some((key, addr))
            })
            .collect();
        let results = tokio::select! {
            results = poll(targets, config.timeout(), config.concurrency) => results,
            () = shutdown.clone().wait() => return,
        };
        let unreachable = results
            .iter()
            .filter(|(_, o)| matches!(o, Observation::Unreachable(_)))
            .count();
        metrics.sidecars_checked(results.len() - unreachable, unreachable);
        for namespace in observations.record(results, &current) {
            if trigger.unbounded_send(ObjectRef::new(&namespace)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! `boundary-node-agent`: the DaemonSet process that tells the operator what works on its node.
//!
//! Every interval it runs `boundary probe` ([`probe`], a child process) and, when the report
//! differs from the last one it published (and at start), writes it as the
//! `agentboundary.dev/probe-report` annotation of its **own Pod** with a JSON merge patch
//! ([`publish`]). The operator reads that annotation from node-agent Pods in the agent namespace
//! and labels the Pod's node; the agent itself never touches Node objects, so its RBAC is
//! `get`/`patch` on pods in its own namespace and nothing else.
//!
//! Two optional switches, each needing a privileged container: `--set-max-user-namespaces`
//! ([`sysctl`]) and `--seccomp-dir` ([`seccomp`]).

pub mod probe;
pub mod publish;
pub mod seccomp;
pub mod sysctl;

use std::path::PathBuf;
use std::time::Duration;

use boundary_api::contract::{annotations, node_agent_env, objects};
use boundary_api::probe::ProbeReport;
use clap::Args;

use self::publish::Apiserver;

/// The long `--help` text of `boundary-node-agent`.
pub const LONG_ABOUT: &str = "\
Probe which jail tiers work on this node and report it on this agent's own Pod (DaemonSet).

Every --interval-seconds `boundary probe` (--boundary-bin) runs; when its result changes, and at \
start, it is written as the annotation agentboundary.dev/probe-report of the Pod named by \
BOUNDARY_POD_NAME/BOUNDARY_POD_NAMESPACE (JSON merge patch). The operator turns it into node labels that the \
webhook reads. RBAC needed: get and patch on pods in the agent's namespace, nothing else.

The apiserver is found in-cluster (KUBERNETES_SERVICE_HOST/PORT and the service account's token \
and CA); --api-server, --token-file and --ca-file override that to run outside a Pod.

Optional, off by default, each needs a privileged container: --set-max-user-namespaces turns \
user namespaces on where the node has them off; --seccomp-dir installs the Localhost seccomp \
profile agent-boundary-userns.json (the runtime default plus namespace creation).

Logs go to standard error as JSON lines. Stops on SIGTERM or SIGINT with exit code 0; exits 2 \
on bad configuration.";

/// Flags of `boundary-node-agent`. Every flag has an env var (the DaemonSet sets env).
// The field docs are the `--help` text, where backticks would be printed literally.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Clone, Args)]
pub struct NodeAgentArgs {
    /// Seconds between probes (and the longest wait between retries of a failed report).
    #[arg(
        long,
        value_name = "SECONDS",
        env = node_agent_env::PROBE_INTERVAL_SECONDS,
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub interval_seconds: u64,
    /// The boundary binary whose `probe` subcommand reports the node (the jail-runtime image's).
    #[arg(long, value_name = "FILE", env = node_agent_env::BOUNDARY_BIN, default_value = probe::DEFAULT_BOUNDARY_BIN)]
    pub boundary_bin: PathBuf,
    /// Name of this agent's own Pod (downward API: fieldRef metadata.name).
    #[arg(long, value_name = "NAME", env = boundary_api::contract::env::POD_NAME)]
    pub pod_name: Option<String>,
    /// Namespace of this agent's own Pod (downward API: fieldRef metadata.namespace).
    #[arg(long, value_name = "NAMESPACE", env = boundary_api::contract::env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// The apiserver, as https://HOST:PORT [default: in-cluster, from KUBERNETES_SERVICE_HOST and
    /// KUBERNETES_SERVICE_PORT].
    #[arg(long, value_name = "URL", env = node_agent_env::API_SERVER)]
    pub api_server: Option<String>,
    /// Bearer token file, re-read for every report (projected tokens rotate).
    #[arg(long, value_name = "FILE", env = node_agent_env::TOKEN_FILE, default_value = publish::IN_CLUSTER_TOKEN)]
    pub token_file: PathBuf,
    /// CA certificates (PEM) that sign the apiserver's certificate.
    #[arg(long, value_name = "FILE", env = node_agent_env::CA_FILE, default_value = publish::IN_CLUSTER_CA)]
    pub ca_file: PathBuf,
    /// Where user.max_user_namespaces is 0 (user namespaces off, the Bottlerocket default), set
    /// it to N before every probe; 0 leaves the node alone. Needs a privileged container.
    #[arg(
        long,
        value_name = "N",
        env = node_agent_env::SET_MAX_USER_NAMESPACES,
        default_value_t = 0
    )]
    pub set_max_user_namespaces: u64,
    /// The sysctl's file (tests point it elsewhere).
    #[arg(long, hide = true, value_name = "FILE", env = node_agent_env::MAX_USER_NAMESPACES_FILE, default_value = sysctl::MAX_USER_NAMESPACES)]
    pub max_user_namespaces_file: PathBuf,
    /// Install the Localhost seccomp profile agent-boundary-userns.json into DIR (kubelet's
    /// seccomp directory, /var/lib/kubelet/seccomp, mounted from the host) and report it. Needs
    /// root, and a privileged container on SELinux nodes.
    #[arg(long, value_name = "DIR", env = node_agent_env::SECCOMP_DIR)]
    pub seccomp_dir: Option<PathBuf>,
}

/// Why the node agent cannot do (part of) its job. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `BOUNDARY_POD_NAME` or `BOUNDARY_POD_NAMESPACE` is missing.
    #[error(
        "{env} is not set: the node agent reports on its own Pod and needs its {what} (set env \
         {env} from the downward API, fieldRef {field}, or pass {flag})"
    )]
    MissingPodIdentity {
        /// `name` or `namespace`.
        what: &'static str,
        /// The env var.
        env: &'static str,
        /// The flag.
        flag: &'static str,
        /// The downward-API field.
        field: &'static str,
    },
    /// A Pod name or namespace that cannot be one.
    #[error("invalid {what} {value:?}: not a Kubernetes object name")]
    BadName {
        /// `pod name` or `namespace`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Neither `--api-server` nor the in-cluster env vars say where the apiserver is.
    #[error(
        "no apiserver address: {} and {} are not set (they are in every pod; outside a \
         cluster pass --api-server https://HOST:PORT or set {})",
        publish::HOST_ENV,
        publish::PORT_ENV,
        node_agent_env::API_SERVER
    )]
    NoApiServer,
    /// The apiserver address does not parse or is not HTTPS.
    #[error("invalid apiserver address {url:?}: {reason}")]
    BadApiServer {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The service account token cannot be read.
    #[error(
        "reading the service account token {}: {source}. The node agent's Pod needs a service \
         account token (automountServiceAccountToken must not be false; outside a cluster pass \
         --token-file)", path.display()
    )]
    Token {
        /// The token file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the service account token file {} is empty", path.display())]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("the apiserver CA file {}: {reason} (outside a cluster pass --ca-file)", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// kube-rs refused the configuration.
    #[error("building the Kubernetes client: {source}")]
    Client {
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong name, not TLS).
    #[error(
        "TLS handshake with the apiserver at {server} failed: {detail} (is the CA file the \
         cluster's CA, and does the apiserver's certificate name {server}?)"
    )]
    Tls {
        /// `host:port`.
        server: String,
        /// The TLS error.
        detail: String,
    },
    /// No answer: no connection, or the exchange broke off.
    #[error("cannot reach the apiserver at {server}: {detail}")]
    Unreachable {
        /// `host:port`.
        server: String,
        /// The client's error and its causes.
        detail: String,
    },
    /// The request took longer than the timeout.
    #[error("the apiserver at {server} did not answer within {timeout:?}")]
    Timeout {
        /// `host:port`.
        server: String,
        /// The timeout.
        timeout: Duration,
    },
    /// 401: the token is not (or no longer) valid.
    #[error(
        "401 Unauthorized: the apiserver rejected the service account token ({message}); \
         was the ServiceAccount deleted or the token file replaced by something else?"
    )]
    Unauthorized {
        /// The apiserver's Status message.
        message: String,
    },
    /// 403: RBAC does not allow the patch.
    #[error(
        "403 Forbidden: the node agent's service account may not patch pods in namespace \
         {namespace} ({message}). Fix: bind it to a Role that allows verbs [get, patch] on \
         resource pods in namespace {namespace} (the Helm chart's node-agent Role does)"
    )]
    Forbidden {
        /// The namespace.
        namespace: String,
        /// The apiserver's Status message.
        message: String,
    },
    /// 404: the agent's own Pod does not exist.
    #[error(
        "404 Not Found: pod {namespace}/{name} does not exist ({message}); it is being deleted, \
         or BOUNDARY_POD_NAME/BOUNDARY_POD_NAMESPACE do not name this agent's Pod (set them from the downward API: \
         fieldRef metadata.name and metadata.namespace)"
    )]
    PodNotFound {
        /// The namespace.
        namespace: String,
        /// The Pod name.
        name: String,
        /// The apiserver's Status message.
        message: String,
    },
    /// Any other refusal.
    #[error("the apiserver answered {status} to {what}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The request, e.g. `PATCH pod ns/name`.
        what: String,
        /// The apiserver's Status message.
        message: String,
    },
    /// The report cannot be encoded (never for a report the probe produced).
    #[error("encoding the probe report: {0}")]
    Encode(#[source] serde_json::Error),
    /// The `boundary` binary is not there.
    #[error(
        "the probe binary {} does not exist: the node agent runs `boundary probe` from the \
         jail-runtime image (point --boundary-bin or {} at the boundary binary)",
        path.display(), node_agent_env::BOUNDARY_BIN
    )]
    ProbeMissing {
        /// The path tried.
        path: PathBuf,
    },
    /// The `boundary` binary cannot be run.
    #[error("running the probe {} probe: {source}", path.display())]
    ProbeStart {
        /// The binary.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `boundary probe` failed.
    #[error("{} probe failed ({status}): {stderr}", path.display())]
    ProbeFailed {
        /// The binary.
        path: PathBuf,
        /// How it ended.
        status: String,
        /// The start of its standard error.
        stderr: String,
    },
    /// `boundary probe` printed something else than a report.
    #[error(
        "{} probe printed no probe report ({source}); is --boundary-bin the boundary binary of \
         the same release? It printed: {output}", path.display()
    )]
    ProbeOutput {
        /// The binary.
        path: PathBuf,
        /// Why it is not a report.
        #[source]
        source: serde_json::Error,
        /// The start of what it printed.
        output: String,
    },
    /// `boundary probe` did not finish.
    #[error("{} probe did not finish within {timeout:?} and was killed", path.display())]
    ProbeTimeout {
        /// The binary.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// The sysctl file cannot be read or written.
    #[error(
        "{action} {}: {source} (setting user.max_user_namespaces needs a privileged container: \
         /proc/sys is read-only otherwise)", path.display()
    )]
    Sysctl {
        /// The sysctl's file.
        path: PathBuf,
        /// `reading` or `writing`.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The sysctl file holds something else than a number.
    #[error("{} holds {content:?}, not a number", path.display())]
    SysctlValue {
        /// The sysctl's file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// The seccomp profile cannot be installed.
    #[error(
        "installing the seccomp profile {}: {action}: {source} (mount kubelet's seccomp \
         directory from the host and run the agent as root; SELinux nodes such as Bottlerocket \
         need a privileged container)", path.display()
    )]
    Seccomp {
        /// The profile's path.
        path: PathBuf,
        /// What failed.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Errors that may go away by themselves (connectivity, apiserver overload, a probe that
    /// hung once), as opposed to errors that need someone to change something (RBAC, a missing
    /// Pod, a bad token or binary); the agent retries both, only the log level differs.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Tls { .. }
            | Error::ProbeTimeout { .. } => true,
            Error::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Remembers what was last published, so unchanged reports are not written again.
#[derive(Debug, Default)]
pub struct Publisher {
    last: Option<ProbeReport>,
}

impl Publisher {
    /// Whether `report` must be published: nothing was yet (start, or every attempt so far
    /// failed), or it differs from the last one published.
    pub fn needs(&self, report: &ProbeReport) -> bool {
        self.last.as_ref() != Some(report)
    }

    /// Records a successful publication.
    pub fn published(&mut self, report: ProbeReport) {
        self.last = Some(report);
    }
}

/// The wait before retry number `failures` (1 for the first): 1 s, doubling, at most
/// `interval` (the agent never waits longer than it would have anyway) and at most a minute.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs(1 << exponent)
        .min(interval)
        .min(Duration::from_mins(1))
}

/// The agent's settings, resolved from the flags.
#[derive(Debug)]
struct Agent {
    pod_name: String,
    namespace: String,
    interval: Duration,
    boundary_bin: PathBuf,
    api: Apiserver,
    max_user_namespaces: Option<(PathBuf, u64)>,
    seccomp_dir: Option<PathBuf>,
    /// Last sysctl outcome and seccomp state logged, so steady state is logged once.
    sysctl_seen: Option<sysctl::Outcome>,
    seccomp_ok: Option<bool>,
}

impl Agent {
    fn new(args: &NodeAgentArgs) -> Result<Agent, Error> {
        let identity = |value: &Option<String>, what, env, flag, field| {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or(Error::MissingPodIdentity {
                    what,
                    env,
                    flag,
                    field,
                })
        };
        let pod_name = identity(
            &args.pod_name,
            "name",
            boundary_api::contract::env::POD_NAME,
            "--pod-name",
            "metadata.name",
        )?;
        let namespace = identity(
            &args.pod_namespace,
            "namespace",
            boundary_api::contract::env::POD_NAMESPACE,
            "--pod-namespace",
            "metadata.namespace",
        )?;
        check_name("pod name", &pod_name)?;
        check_name("namespace", &namespace)?;
        let api = Apiserver::resolve(
            args.api_server.as_deref(),
            |k| std::env::var(k).ok(),
            args.token_file.clone(),
            args.ca_file.clone(),
        )?;
        Ok(Agent {
            pod_name,
            namespace,
            interval: Duration::from_secs(args.interval_seconds),
            boundary_bin: args.boundary_bin.clone(),
            api,
            max_user_namespaces: (args.set_max_user_namespaces > 0).then(|| {
                (
                    args.max_user_namespaces_file.clone(),
                    args.set_max_user_namespaces,
                )
            }),
            seccomp_dir: args.seccomp_dir.clone(),
            sysctl_seen: None,
            seccomp_ok: None,
        })
    }

    /// Applies the switches, then probes (the switches change what the probe finds).
    async fn observe(&mut self) -> Result<ProbeReport, Error> {
        let seccomp_profile = self.apply_switches();
        let mut report = probe::run(&self.boundary_bin, probe::PROBE_TIMEOUT).await?;
        report.seccomp_profile = seccomp_profile;
        Ok(report)
    }

    /// Sets the sysctl and installs the seccomp profile when asked to; returns the name of the
    /// profile to report.
    fn apply_switches(&mut self) -> Option<String> {
        if let Some((path, value)) = &self.max_user_namespaces {
            match sysctl::ensure_max_user_namespaces(path, *value) {
                Ok(outcome @ sysctl::Outcome::Raised { to }) => {
                    tracing::warn!(
                        file = %path.display(), to,
                        "user namespaces were off on this node (user.max_user_namespaces=0): set it to {to}"
                    );
                    self.sysctl_seen = Some(outcome);
                }
                Ok(outcome @ sysctl::Outcome::Left(current)) => {
                    if self.sysctl_seen != Some(outcome) {
                        tracing::info!(
                            file = %path.display(), current,
                            "user.max_user_namespaces is {current}: left as it is"
                        );
                    }
                    self.sysctl_seen = Some(outcome);
                }
                Err(e) => tracing::error!(error = %e, "cannot ensure user.max_user_namespaces"),
            }
        }
        self.seccomp_dir.as_ref().and_then(|dir| {
            match seccomp::ensure_installed(dir) {
                Ok(installed) => {
                    if installed.written {
                        tracing::info!(path = %installed.path.display(), "seccomp profile installed");
                    }
                    self.seccomp_ok = Some(true);
                    Some(objects::SECCOMP_PROFILE.to_owned())
                }
                Err(e) => {
                    // Not reported, so no pod is told to use a profile that is not there.
                    if self.seccomp_ok != Some(false) {
                        tracing::error!(error = %e, "seccomp profile not installed; not reported");
                    }
                    self.seccomp_ok = Some(false);
                    None
                }
            }
        })
    }

    async fn publish(&self, report: &ProbeReport) -> Result<(), Error> {
        let json = serde_json::to_string(report).map_err(Error::Encode)?;
        self.api
            .annotate_pod(
                &self.namespace,
                &self.pod_name,
                annotations::PROBE_REPORT,
                &json,
            )
            .await
    }
}

/// A DNS-1123 subdomain (Pod names) or label (namespaces): nothing that could alter the path.
fn check_name(what: &'static str, value: &str) -> Result<(), Error> {
    let ok = value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(Error::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

/// SIGTERM (kubelet stopping the Pod) and SIGINT (a person at a terminal).
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Logs a failed round and returns the wait before the next try.
fn failed(what: &str, error: &Error, failures: &mut u32, interval: Duration) -> Duration {
    *failures = failures.saturating_add(1);
    let retry = backoff(*failures, interval);
    let failures = *failures;
    if error.is_transient() {
        tracing::warn!(error = %error, ?retry, failures, "{what} failed");
    } else {
        tracing::error!(error = %error, ?retry, failures, "{what} failed");
    }
    retry
}

/// Runs the node agent until SIGTERM or SIGINT; returns the exit code.
pub async fn run(args: &NodeAgentArgs) -> i32 {
    let mut agent = match Agent::new(args) {
        Ok(agent) => agent,
        Err(e) => {
            tracing::error!(error = %e, "boundary-node-agent cannot start");
            return 2;
        }
    };
    let mut stop = match Stop::new() {
        Ok(stop) => stop,
        Err(e) => {
            tracing::error!(error = %e, "boundary-node-agent cannot handle signals");
            return 1;
        }
    };
    tracing::info!(
        pod = %agent.pod_name, namespace = %agent.namespace,
        apiserver = %agent.api.authority(), interval = ?agent.interval,
        boundary_bin = %agent.boundary_bin.display(),
        set_max_user_namespaces = ?agent.max_user_namespaces.as_ref().map(|(_, n)| n),
        seccomp_dir = ?agent.seccomp_dir,
        "node agent started"
    );
    let mut last_published = Publisher::default();
    let mut failures = 0u32;
    loop {
        let observed = tokio::select! {
            observed = agent.observe() => observed,
            () = stop.wait() => break,
        };
        let wait = match observed {
            Err(e) => failed("probing the node", &e, &mut failures, agent.interval),
            Ok(report) if last_published.needs(&report) => {
                let attempt = tokio::select! {
                    attempt = agent.publish(&report) => attempt,
                    () = stop.wait() => break,
                };
                match attempt {
                    Ok(()) => {
                        tracing::info!(
                            best = ?report.best,
                            tiers = ?report.working_tiers().collect::<Vec<_>>(),
                            seccomp_profile = ?report.seccomp_profile,
                            "probe report published"
                        );
                        last_published.published(report);
                        failures = 0;
                        agent.interval
                    }
                    Err(e) => failed(
                        "publishing the probe report",
                        &e,
                        &mut failures,
                        agent.interval,
                    ),
                }
            }
            Ok(_) => {
                tracing::debug!("probe report unchanged");
                failures = 0;
                agent.interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.wait() => break,
        }
    }
    tracing::info!("node agent stopped (signal)");
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::probe::{ProbeFacts, TierProbe};
    use clap::Parser;
    use std::collections::BTreeMap;

    fn report(userns: bool, seccomp: Option<&str>) -> ProbeReport {
        let tiers = BTreeMap::from([
            (
                "userns".to_owned(),
                TierProbe {
                    works: userns,
                    reason: (!userns).then(|| "user namespaces are disabled".to_owned()),
                },
            ),
            (
                "landlock".to_owned(),
                TierProbe {
                    works: true,
                    reason: None,
                },
            ),
        ]);
        ProbeReport {
            tiers,
            best: Some(if userns {
                boundary_api::Tier::Userns
            } else {
                boundary_api::Tier::Landlock
            }),
            facts: ProbeFacts {
                kernel: "6.12.40".into(),
                max_user_namespaces: Some(if userns { 15000 } else { 0 }),
                apparmor_restricts_userns: false,
                seccomp_filter: false,
                landlock_abi: 6,
                uid: 0,
                net_admin_and_sys_admin: false,
            },
            seccomp_profile: seccomp.map(str::to_owned),
        }
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeAgentArgs,
    }

    /// Flags only: the test process's env must not leak in (clap reads env for unset flags, so
    /// every env-backed field that matters is overwritten).
    fn args(flags: &[&str]) -> NodeAgentArgs {
        let mut args =
            Cli::parse_from(std::iter::once("node-agent").chain(flags.iter().copied())).args;
        if !flags.contains(&"--pod-name") {
            args.pod_name = None;
        }
        args
    }

    #[test]
    fn the_patch_sets_the_report_annotation_to_the_report_json() {
        let report = report(true, Some(objects::SECCOMP_PROFILE));
        let json = serde_json::to_string(&report).unwrap();
        let patch = publish::annotation_patch(annotations::PROBE_REPORT, &json);
        let annotation = patch["metadata"]["annotations"]["agentboundary.dev/probe-report"]
            .as_str()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(annotation).unwrap();
        assert_eq!(value["seccompProfile"], "agent-boundary-userns.json");
        assert_eq!(value["best"], "userns");
        assert_eq!(value["tiers"]["userns"]["works"], true);
        assert_eq!(value["facts"]["maxUserNamespaces"], 15000);
        // The operator reads exactly what was written.
        assert_eq!(
            serde_json::from_value::<ProbeReport>(value).unwrap(),
            report
        );
    }

    #[test]
    fn only_changed_reports_are_published_again() {
        let mut publisher = Publisher::default();
        let first = report(false, None);
        assert!(publisher.needs(&first), "always on start");
        // A failed attempt records nothing: the same report is tried again.
        assert!(publisher.needs(&first));
        publisher.published(first);
        assert!(!publisher.needs(&report(false, None)));
        // The sysctl switch turned user namespaces on: a new report.
        let second = report(true, None);
        assert!(publisher.needs(&second));
        publisher.published(second);
        // The profile got installed: new again.
        assert!(publisher.needs(&report(true, Some(objects::SECCOMP_PROFILE))));
    }

    #[test]
    fn retries_back_off_up_to_the_interval() {
        let minute = Duration::from_mins(1);
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n, minute).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(5, Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(
            backoff(u32::MAX, Duration::from_hours(1)),
            Duration::from_mins(1)
        );
    }

    #[test]
    fn the_pod_identity_is_required_with_a_pointer_to_the_downward_api() {
        let mut args = args(&[
            "--pod-namespace",
            "agent-boundary",
            "--api-server",
            "https://127.0.0.1:6443",
        ]);
        let err = Agent::new(&args).unwrap_err();
        assert!(
            err.to_string().contains("POD_NAME") && err.to_string().contains("metadata.name"),
            "{err}"
        );
        args.pod_name = Some("../nodes/x".into());
        let err = Agent::new(&args).unwrap_err();
        assert!(matches!(err, Error::BadName { .. }), "{err}");
        args.pod_name = Some("node-agent-abc".into());
        let agent = Agent::new(&args).unwrap();
        assert_eq!(agent.interval, Duration::from_mins(1));
        assert!(agent.max_user_namespaces.is_none(), "off by default");
        assert!(agent.seccomp_dir.is_none(), "off by default");
        assert_eq!(agent.api.authority(), "127.0.0.1:6443");
    }

    #[tokio::test]
    async fn the_switches_apply_before_the_probe_and_a_missing_probe_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("max_user_namespaces");
        std::fs::write(&file, "0\n").unwrap();
        let seccomp_dir = dir.path().join("seccomp");
        let mut agent = Agent::new(&args(&[
            "--pod-name",
            "p",
            "--pod-namespace",
            "n",
            "--api-server",
            "https://127.0.0.1:1",
            "--boundary-bin",
            &dir.path().join("boundary").to_string_lossy(),
            "--set-max-user-namespaces",
            "1234",
            "--max-user-namespaces-file",
            &file.to_string_lossy(),
            "--seccomp-dir",
            &seccomp_dir.to_string_lossy(),
        ]))
        .unwrap();
        let err = agent.observe().await.unwrap_err();
        assert!(matches!(err, Error::ProbeMissing { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1234\n");
        assert_eq!(
            agent.sysctl_seen,
            Some(sysctl::Outcome::Raised { to: 1234 })
        );
        assert!(seccomp_dir.join(objects::SECCOMP_PROFILE).is_file());
        assert_eq!(agent.seccomp_ok, Some(true));
        // A profile that cannot be installed is not reported.
        std::fs::write(dir.path().join("blocker"), "").unwrap();
        agent.seccomp_dir = Some(dir.path().join("blocker").join("seccomp"));
        assert_eq!(agent.apply_switches(), None);
        assert_eq!(agent.seccomp_ok, Some(false));
    }
}

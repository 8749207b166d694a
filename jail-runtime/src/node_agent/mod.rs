//! `boundary node-agent`: the DaemonSet process that tells the operator what works on its node.
//!
//! Every interval it runs the jail's probe ([`boundary_jail::probe`]) in-process and, when the
//! report differs from the last one it published (and at start), writes it as the
//! `agentboundary.dev/probe-report` annotation of its **own Pod** with a JSON merge patch. The
//! operator reads that annotation from node-agent Pods in the agent namespace and labels the Pod's
//! node; the agent itself never touches Node objects, so its RBAC is `get`/`patch` on pods in its
//! own namespace and nothing else.
//!
//! Two optional switches, each needing a privileged container: `--set-max-user-namespaces`
//! ([`sysctl`]) and `--seccomp-dir` ([`seccomp`]).
//!
//! The process stays single-threaded (a current-thread runtime, no blocking pool) because the
//! probe forks: a fork taken while another thread holds the allocator's or stdio's lock would
//! deadlock the child.

pub mod apiserver;
pub mod seccomp;
pub mod sysctl;

use std::path::PathBuf;
use std::time::Duration;

use boundary_api::contract::{annotations, objects};
use clap::Args;
use serde::Serialize;

use self::apiserver::{ApiError, ApiServer, Endpoint};
use boundary_jail::probe::ProbeReport;

/// The long `--help` text of `boundary node-agent`.
pub const LONG_ABOUT: &str = "\
Probe which jail tiers work on this node and report it on this agent's own Pod (DaemonSet).

Every --interval-seconds the jail's probe (what `boundary probe` prints) runs here; when its \
result changes, and at start, it is written as the annotation agentboundary.dev/probe-report of \
the Pod named by BOUNDARY_POD_NAME/BOUNDARY_POD_NAMESPACE (JSON merge patch). The operator turns it into node \
labels that the webhook reads. RBAC needed: get and patch on pods in the agent's namespace, \
nothing else.

The apiserver is found in-cluster (KUBERNETES_SERVICE_HOST/PORT and the service account's token \
and CA); --api-server, --token-file and --ca-file override that to run outside a Pod.

Optional, off by default, each needs a privileged container: --set-max-user-namespaces turns \
user namespaces on where the node has them off; --seccomp-dir installs the Localhost seccomp \
profile agent-boundary-userns.json (the runtime default plus namespace creation).

Logs go to standard error as JSON lines. Stops on SIGTERM or SIGINT with exit code 0; exits 2 \
on bad configuration.";

/// Flags of `boundary node-agent`. Every flag has an env var (the DaemonSet sets env).
// The field docs are the `--help` text, where backticks would be printed literally.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Clone, Args)]
pub struct NodeAgentArgs {
    /// Seconds between probes (and the longest wait between retries of a failed report).
    #[arg(
        long,
        value_name = "SECONDS",
        env = boundary_api::contract::boundary_env::PROBE_INTERVAL_SECONDS,
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub interval_seconds: u64,
    /// Name of this agent's own Pod (downward API: fieldRef metadata.name).
    #[arg(long, value_name = "NAME", env = boundary_api::contract::env::POD_NAME)]
    pub pod_name: Option<String>,
    /// Namespace of this agent's own Pod (downward API: fieldRef metadata.namespace).
    #[arg(long, value_name = "NAMESPACE", env = boundary_api::contract::env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// The apiserver, as https://HOST:PORT [default: in-cluster, from KUBERNETES_SERVICE_HOST and
    /// KUBERNETES_SERVICE_PORT].
    #[arg(long, value_name = "URL", env = boundary_api::contract::boundary_env::API_SERVER)]
    pub api_server: Option<String>,
    /// Bearer token file, re-read for every request (projected tokens rotate).
    #[arg(long, value_name = "FILE", env = boundary_api::contract::boundary_env::TOKEN_FILE, default_value = apiserver::IN_CLUSTER_TOKEN)]
    pub token_file: PathBuf,
    /// CA certificates (PEM) that sign the apiserver's certificate.
    #[arg(long, value_name = "FILE", env = boundary_api::contract::boundary_env::CA_FILE, default_value = apiserver::IN_CLUSTER_CA)]
    pub ca_file: PathBuf,
    /// Where user.max_user_namespaces is 0 (user namespaces off, the Bottlerocket default), set
    /// it to N before every probe; 0 leaves the node alone. Needs a privileged container.
    #[arg(
        long,
        value_name = "N",
        env = boundary_api::contract::boundary_env::SET_MAX_USER_NAMESPACES,
        default_value_t = 0
    )]
    pub set_max_user_namespaces: u64,
    /// The sysctl's file (tests point it elsewhere).
    #[arg(long, hide = true, value_name = "FILE", env = boundary_api::contract::boundary_env::MAX_USER_NAMESPACES_FILE, default_value = sysctl::MAX_USER_NAMESPACES)]
    pub max_user_namespaces_file: PathBuf,
    /// Install the Localhost seccomp profile agent-boundary-userns.json into DIR (kubelet's
    /// seccomp directory, /var/lib/kubelet/seccomp, mounted from the host) and report it. Needs
    /// root, and a privileged container on SELinux nodes.
    #[arg(long, value_name = "DIR", env = boundary_api::contract::boundary_env::SECCOMP_DIR)]
    pub seccomp_dir: Option<PathBuf>,
    /// Diagnostics (JSON lines on standard error by default).
    #[command(flatten)]
    pub log: boundary_telemetry::LogArgs,
}

/// Why the node agent cannot do (part of) its job.
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
    /// The apiserver could not be found or refused the report.
    #[error(transparent)]
    Api(#[from] ApiError),
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

/// What goes into the annotation: the probe report plus the installed seccomp profile.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// `boundary probe`'s report.
    #[serde(flatten)]
    pub probe: ProbeReport,
    /// Name of the Localhost seccomp profile this agent installed (and found in place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<String>,
}

impl AgentReport {
    /// The annotation's value: compact JSON, deterministic for equal reports (tiers are a
    /// sorted map), so equal reports compare equal as text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Remembers what was last published, so unchanged reports are not written again.
#[derive(Debug, Default)]
pub struct Publisher {
    last: Option<String>,
}

impl Publisher {
    /// Whether `report` must be published: nothing was yet (start, or every attempt so far
    /// failed), or it differs from the last one published.
    pub fn needs(&self, report: &str) -> bool {
        self.last.as_deref() != Some(report)
    }

    /// Records a successful publication.
    pub fn published(&mut self, report: String) {
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
    api: ApiServer,
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
        let endpoint = Endpoint::resolve(args.api_server.as_deref(), |k| std::env::var(k).ok())?;
        Ok(Agent {
            pod_name,
            namespace,
            interval: Duration::from_secs(args.interval_seconds),
            api: ApiServer::new(endpoint, args.token_file.clone(), args.ca_file.clone()),
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

    /// Applies the switches, then probes. Runs outside the async runtime (the probe forks).
    fn observe(&mut self) -> AgentReport {
        let seccomp_profile = self.apply_switches();
        AgentReport {
            probe: boundary_jail::probe::probe(),
            seccomp_profile,
        }
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

    async fn publish(&self, report: &str) -> Result<(), ApiError> {
        let patch = apiserver::annotation_patch(annotations::PROBE_REPORT, report);
        self.api
            .merge_patch_pod(&self.namespace, &self.pod_name, patch)
            .await
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

/// Runs the node agent until SIGTERM or SIGINT; returns the exit code.
pub fn run(args: &NodeAgentArgs) -> i32 {
    if let Err(e) = boundary_telemetry::init(
        &args
            .log
            .or_defaults("info", boundary_telemetry::LogFormat::Json),
    ) {
        eprintln!("boundary node-agent: {e}");
        return 2;
    }
    let mut agent = match Agent::new(args) {
        Ok(agent) => agent,
        Err(e) => {
            tracing::error!(error = %e, "boundary node-agent cannot start");
            return 2;
        }
    };
    // Current-thread and no blocking pool: see the module documentation.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boundary node-agent: cannot start the runtime: {e}");
            return 1;
        }
    };
    let mut stop = match runtime.block_on(async { Stop::new() }) {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("boundary node-agent: cannot handle signals: {e}");
            return 1;
        }
    };
    tracing::info!(
        pod = %agent.pod_name, namespace = %agent.namespace,
        apiserver = %agent.api.endpoint().authority(), interval = ?agent.interval,
        set_max_user_namespaces = ?agent.max_user_namespaces.as_ref().map(|(_, n)| n),
        seccomp_dir = ?agent.seccomp_dir,
        "node agent started"
    );
    let mut publisher = Publisher::default();
    let mut failures = 0u32;
    loop {
        let report = agent.observe();
        let json = report.to_json();
        let wait = if publisher.needs(&json) {
            let attempt = runtime.block_on(async {
                tokio::select! {
                    result = agent.publish(&json) => Some(result),
                    () = stop.wait() => None,
                }
            });
            match attempt {
                None => break,
                Some(Ok(())) => {
                    tracing::info!(
                        best = ?report.probe.best,
                        tiers = ?report.probe.tiers.iter().filter(|(_, t)| t.works).map(|(n, _)| n).collect::<Vec<_>>(),
                        seccomp_profile = ?report.seccomp_profile,
                        "probe report published"
                    );
                    publisher.published(json);
                    failures = 0;
                    agent.interval
                }
                Some(Err(e)) => {
                    failures = failures.saturating_add(1);
                    let retry = backoff(failures, agent.interval);
                    if e.is_transient() {
                        tracing::warn!(error = %e, ?retry, failures, "publishing the probe report failed");
                    } else {
                        tracing::error!(error = %e, ?retry, failures, "publishing the probe report failed");
                    }
                    retry
                }
            }
        } else {
            tracing::debug!("probe report unchanged");
            agent.interval
        };
        let stopped = runtime.block_on(async {
            tokio::select! {
                () = tokio::time::sleep(wait) => false,
                () = stop.wait() => true,
            }
        });
        if stopped {
            break;
        }
    }
    tracing::info!("node agent stopped (signal)");
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_jail::probe::{ProbeFacts, TierProbe};
    use std::collections::BTreeMap;

    fn report(userns: bool, seccomp: Option<&str>) -> AgentReport {
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
        AgentReport {
            probe: ProbeReport {
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
            },
            seccomp_profile: seccomp.map(str::to_owned),
        }
    }

    #[test]
    fn the_annotation_is_the_probe_report_plus_the_seccomp_profile() {
        let json = report(true, Some(objects::SECCOMP_PROFILE)).to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["seccompProfile"], "agent-boundary-userns.json");
        assert_eq!(value["best"], "userns");
        assert_eq!(value["tiers"]["userns"]["works"], true);
        assert_eq!(value["facts"]["maxUserNamespaces"], 15000);
        assert_eq!(value["facts"]["landlockAbi"], 6);
        // The probe's own fields, as `boundary probe` prints them, round-trip.
        let back: ProbeReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report(true, None).probe);
        // Without an installed profile the field is absent (the operator then removes the label).
        let json = report(true, None).to_json();
        assert!(!json.contains("seccompProfile"), "{json}");
        // The patch carries it as a string under the contract's annotation.
        let patch = apiserver::annotation_patch(annotations::PROBE_REPORT, &json);
        let patch: serde_json::Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            patch["metadata"]["annotations"]["agentboundary.dev/probe-report"],
            json.as_str()
        );
    }

    #[test]
    fn only_changed_reports_are_published_again() {
        let mut publisher = Publisher::default();
        let first = report(false, None).to_json();
        assert!(publisher.needs(&first), "always on start");
        // A failed attempt records nothing: the same report is tried again.
        assert!(publisher.needs(&first));
        publisher.published(first.clone());
        assert!(!publisher.needs(&report(false, None).to_json()));
        // The sysctl switch turned user namespaces on: a new report.
        let second = report(true, None).to_json();
        assert!(publisher.needs(&second));
        publisher.published(second);
        // The profile got installed: new again.
        assert!(publisher.needs(&report(true, Some(objects::SECCOMP_PROFILE)).to_json()));
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
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: NodeAgentArgs,
        }
        // Flags only (the env of the test process must not leak in).
        let args = Cli::parse_from([
            "node-agent",
            "--pod-namespace",
            "agent-boundary",
            "--api-server",
            "https://127.0.0.1:6443",
        ])
        .args;
        let mut args = args;
        args.pod_name = None;
        let err = Agent::new(&args).unwrap_err();
        assert!(
            err.to_string().contains("POD_NAME") && err.to_string().contains("metadata.name"),
            "{err}"
        );
        args.pod_name = Some("node-agent-abc".into());
        let agent = Agent::new(&args).unwrap();
        assert_eq!(agent.interval, Duration::from_mins(1));
        assert!(agent.max_user_namespaces.is_none(), "off by default");
        assert!(agent.seccomp_dir.is_none(), "off by default");
        assert_eq!(agent.api.endpoint().authority(), "127.0.0.1:6443");
    }

    #[test]
    fn the_switches_set_the_sysctl_and_install_the_profile() {
        let dir = std::env::temp_dir().join(format!("boundary-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("max_user_namespaces");
        std::fs::write(&file, "0\n").unwrap();
        let mut agent = Agent {
            pod_name: "p".into(),
            namespace: "n".into(),
            interval: Duration::from_secs(1),
            api: ApiServer::new(
                Endpoint::parse("https://127.0.0.1:1").unwrap(),
                dir.join("token"),
                dir.join("ca"),
            ),
            max_user_namespaces: Some((file.clone(), 1234)),
            seccomp_dir: Some(dir.join("seccomp")),
            sysctl_seen: None,
            seccomp_ok: None,
        };
        // (Not `observe`: the probe forks, which a multi-threaded test harness must not do.)
        let profile = agent.apply_switches();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1234\n");
        assert_eq!(
            agent.sysctl_seen,
            Some(sysctl::Outcome::Raised { to: 1234 })
        );
        assert_eq!(profile.as_deref(), Some(objects::SECCOMP_PROFILE));
        // A profile that cannot be installed is not reported.
        std::fs::write(dir.join("blocker"), "").unwrap();
        agent.seccomp_dir = Some(dir.join("blocker").join("seccomp"));
        assert_eq!(agent.apply_switches(), None);
        assert!(dir.join("seccomp").join(objects::SECCOMP_PROFILE).is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

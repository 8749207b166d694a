//! The operator's settings: flags and environment variables of the binary.

use std::net::SocketAddr;
use std::time::Duration;

use boundary_api::contract::objects;

use crate::{certs, enforcement, metrics};

/// Label selector of the node agent's Pods (they carry the probe report).
pub const DEFAULT_NODE_AGENT_SELECTOR: &str = "app.kubernetes.io/component=node-agent";

/// Settings of the controllers (flags and environment variables of the binary).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Reconcile the BoundaryPolicy objects of this namespace only (default: all namespaces).
    #[arg(long, env = boundary_api::contract::operator_env::WATCH_NAMESPACE)]
    pub watch_namespace: Option<String>,
    /// Reconcile only the namespaces with these labels (a label selector; default: every
    /// namespace). `ClusterBoundaryPolicy` status then counts only those namespaces.
    #[arg(long, env = boundary_api::contract::operator_env::NAMESPACE_SELECTOR)]
    pub namespace_selector: Option<String>,
    /// Namespaces (comma-separated) no `ClusterBoundaryPolicy` selects, besides the operator's own
    /// (`BOUNDARY_POD_NAMESPACE`) and `kube-system`, which never are.
    #[arg(long, env = boundary_api::contract::env::EXCLUDED_NAMESPACES, value_delimiter = ',')]
    pub excluded_namespaces: Vec<String>,
    /// Namespaces (comma-separated) where jailing is required: labelled
    /// `agentboundary.dev/inject=required` like those a `ClusterBoundaryPolicy` requires.
    #[arg(long, env = boundary_api::contract::env::REQUIRED_NAMESPACES, value_delimiter = ',')]
    pub required_namespaces: Vec<String>,
    /// Label selector of the nodes to label (default: every node).
    #[arg(long, env = boundary_api::contract::operator_env::NODE_SELECTOR)]
    pub node_selector: Option<String>,
    /// Label selector of the node agent's Pods, whose probe-report annotation is merged into
    /// the labels of the node they run on.
    #[arg(long, env = boundary_api::contract::operator_env::NODE_AGENT_SELECTOR, default_value = DEFAULT_NODE_AGENT_SELECTOR)]
    pub node_agent_selector: String,
    /// Namespace of the node agent's Pods. Only Pods there are trusted to report probes; without
    /// it, matching Pods of every namespace are (anyone who can create a labelled Pod bound to a
    /// node could then change that node's labels).
    #[arg(long, env = boundary_api::contract::operator_env::NODE_AGENT_NAMESPACE)]
    pub node_agent_namespace: Option<String>,
    /// Seconds before a failed reconcile is retried.
    #[arg(long, env = boundary_api::contract::operator_env::RETRY_SECONDS, default_value_t = 10)]
    pub retry_seconds: u64,
    /// Apply this release's CRDs at start (server-side apply; needs `get` and `patch` on the two
    /// CRDs), so an upgrade brings their new fields. `false` when CRDs are managed elsewhere
    /// (GitOps): then apply `crds/` yourself before each upgrade.
    #[arg(
        long,
        env = boundary_api::contract::operator_env::MANAGE_CRDS,
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub manage_crds: bool,
    /// Name of this instance in Events (`reportingInstance`) and in the leader-election Lease;
    /// the Pod name in a cluster.
    #[arg(long, env = boundary_api::contract::env::POD_NAME)]
    pub instance: Option<String>,
    /// The operator's own namespace (the webhook certificate Secrets live there).
    #[arg(long, env = boundary_api::contract::env::POD_NAMESPACE)]
    pub namespace: Option<String>,
    /// Namespace of the leader-election Lease. Unset: no leader election (run one replica).
    #[arg(long, env = boundary_api::contract::operator_env::LEASE_NAMESPACE)]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = boundary_api::contract::operator_env::LEASE_NAME, default_value = objects::OPERATOR_LEASE)]
    pub lease_name: String,
    /// Seconds a Lease holds without renewal (another replica takes over after that).
    #[arg(long, env = boundary_api::contract::operator_env::LEASE_DURATION_SECONDS, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps acting without renewing the Lease (less than its duration).
    #[arg(
        long,
        env = boundary_api::contract::operator_env::LEASE_RENEW_DEADLINE_SECONDS,
        default_value_t = 10
    )]
    pub lease_renew_deadline_seconds: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz`. Unset: not served.
    #[arg(long, env = boundary_api::contract::env::METRICS_ADDR)]
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
            manage_crds: true,
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

#[cfg(test)]
mod tests {
    use super::*;

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

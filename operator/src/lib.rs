//! `boundary-operator`: the controller of Agent Boundary for Kubernetes.
//!
//! Shaped like kube-rs's `controller-rs`: a context per controller, a `reconcile` that computes
//! the desired state with pure functions and writes it by server-side apply with one fixed field
//! manager ([`boundary_api::contract::objects::OPERATOR_FIELD_MANAGER`]), Events, an
//! `error_policy` that requeues, and graceful shutdown. This file holds only the error type and
//! the module list.
//!
//! * [`policy`]: compiles the `BoundaryPolicy` objects of each namespace and the
//!   `ClusterBoundaryPolicy` objects selecting it ([`compile`], [`cluster`]) into the ConfigMap
//!   the sidecars mount, writes each policy's status ([`status`]), including which jailed pods
//!   are proven to enforce it ([`enforcement`]), each cluster policy's status, and the namespace
//!   label `agentboundary.dev/inject=required` of `requireJailing`, and the namespace's
//!   credentials Secret with the values of the policies' credentials ([`credentials`]).
//! * [`nodes`]: writes the node labels the webhook reads, from classification and the node
//!   agent's probe reports ([`labels`]).
//! * [`node_agent`]: the node agent (`boundary-node-agent`, the DaemonSet) that writes those
//!   reports on its own Pod from `boundary probe`.
//! * [`certs`]: the webhook's CA, serving certificate and `caBundle`.
//! * [`crds`]: the release's CRDs, applied at start so an upgrade brings their new fields.
//! * [`uninstall`]: `boundary-operator uninstall`, the chart's post-delete hook, removes what
//!   the operator wrote outside the release.
//! * [`run`](mod@run): wires them up behind [`leader`] election, with [`metrics`]; [`config`] is
//!   their settings, `watch` and [`shutdown`] the plumbing they share.
#![forbid(unsafe_code)]

pub mod certs;
pub mod cluster;
pub mod compile;
pub mod config;
pub mod crds;
pub mod credentials;
pub mod denials;
pub mod enforcement;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod node_agent;
pub mod nodes;
pub mod policy;
pub mod run;
pub mod shutdown;
pub mod status;
pub mod uninstall;
mod watch;

pub use config::Config;
pub use run::run;
pub use shutdown::Shutdown;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the apiserver failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
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
    /// An applied CRD did not become Established.
    #[error("CustomResourceDefinition {0} was applied but not Established within a minute")]
    CrdNotEstablished(String),
    /// `uninstall` waited in vain for the operator's Pods to go.
    #[error(
        "the operator's Pods {pods:?} are still there after {seconds} s: they would write again \
         what the clean-up removes; wait until they are gone and run the clean-up again"
    )]
    OperatorStillRunning { pods: Vec<String>, seconds: u64 },
    /// The metrics endpoint cannot listen.
    #[error("listening on {addr} for /metrics: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The kind of an [`Error`], the value of the `error` label of failed reconciles: a fixed set,
/// so the label cannot grow with object names or messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorLabel {
    Kube,
    WatchStopped,
    MissingField,
    Certificates,
    Crd,
    Metrics,
    Uninstall,
}

impl ErrorLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorLabel::Kube => "kube",
            ErrorLabel::WatchStopped => "watch_stopped",
            ErrorLabel::MissingField => "missing_field",
            ErrorLabel::Certificates => "certificates",
            ErrorLabel::Crd => "crd",
            ErrorLabel::Metrics => "metrics",
            ErrorLabel::Uninstall => "uninstall",
        }
    }
}

impl Error {
    /// A [`Error::Kube`] with its context.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            action: action.into(),
            source,
        }
    }

    /// Its kind, for the `error` label of failed reconciles.
    pub fn metric_label(&self) -> ErrorLabel {
        match self {
            Error::Kube { .. } => ErrorLabel::Kube,
            Error::WatchStopped(_) => ErrorLabel::WatchStopped,
            Error::MissingField(_) => ErrorLabel::MissingField,
            Error::Certificates(_) => ErrorLabel::Certificates,
            Error::CrdNotEstablished(_) => ErrorLabel::Crd,
            Error::Metrics { .. } => ErrorLabel::Metrics,
            Error::OperatorStillRunning { .. } => ErrorLabel::Uninstall,
        }
    }
}

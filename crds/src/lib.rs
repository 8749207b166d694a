//! The shared API of Agent Boundary for Kubernetes.
//!
//! - [`contract`]: every name the components share (labels, annotations, env, volumes, paths).
//! - [`tier`], [`policy`]: jail tiers, modes and structured rules, free of Kubernetes types so the
//!   `boundary` binary can use them without linking kube or k8s-openapi.
//! - [`policy_file`]: `BoundaryPolicy` YAML files read for `boundary run --policy` and
//!   `boundary check`, without Kubernetes types.
//! - [`credentials`]: credentials the agent never holds (placeholders, the sidecar's value file).
//! - [`enforcement`]: what a pod's sidecar reports about its jails (operator and sidecar).
//! - [`advisor`]: `boundary suggest`'s core: audit records into a minimal policy.
//! - [`lint`]: warnings on rules that open a channel out (paste sites, `*`, wildcard TLDs).
//! - [`presets`]: named rule sets (`spec.presets`, `--preset`), data versioned with the project.
//! - [`probe`]: the node probe's report (`boundary probe`, the node agent, the operator).
//! - [`crd_compat`]: the CRD compatibility check against the previous release's CRDs.
//! - `crd` (feature `kube`): the `BoundaryPolicy` custom resource and its generated CRD.
//! - `nodes` (feature `kube`): node classification and facts (operator and webhook).
#![forbid(unsafe_code)]

pub mod advisor;
pub mod compiled;
pub mod contract;
#[cfg(feature = "kube")]
pub mod crd;
pub mod crd_compat;
pub mod credentials;
pub mod enforcement;
pub mod lint;
#[cfg(feature = "kube")]
pub mod nodes;
pub mod policy;
pub mod policy_file;
pub mod presets;
pub mod probe;
pub mod rules;
pub mod tier;

pub use policy::{
    HttpRule, JailRuntime, JailSpec, Mode, PodLocalRule, Port, ResolvePin, TcpRule, TlsMode,
    pod_local_ports_value,
};
pub use tier::Tier;

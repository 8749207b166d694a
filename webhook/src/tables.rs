//! The two planner tables, as data. Each row is a way to jail a container: what it adds to the
//! container and on which nodes it works. The planner takes the first row (least privilege
//! first) that works on every node the pod can land on.
//!
//! - [`BUILTIN`]: this project's jail (`boundary run`), one row per tier.
//! - [`CODER_BOUNDARY`]: Coder's own `boundary` binary, reproducing its published requirement
//!   matrix literally (../shared/research/FACTS.md §2), every row including Bottlerocket option B
//!   and Fargate.

use boundary_api::contract::{env, os};
use boundary_api::{JailRuntime, Tier};

use boundary_api::nodes::NodeFacts;

/// What a row needs from the container's seccomp profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seccomp {
    /// Nothing.
    Any,
    /// `clone`/`unshare` with `CLONE_NEWUSER` must be allowed: the pod's effective profile is
    /// kept where it allows that, else the node agent's Localhost profile, else `Unconfined`.
    AllowUserNamespaces,
    /// `seccompProfile: Unconfined` on the container (Coder's Bottlerocket option A).
    Unconfined,
}

/// Where a row works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Works {
    /// Where this project's tier works (node facts).
    BuiltinTier(Tier),
    /// Nodes of these OS families with unprivileged user namespaces.
    UserNamespacesOn(&'static [&'static str]),
    /// Any Linux node that grants added capabilities (everything but Fargate and Windows).
    CapabilitiesGranted,
    /// Kernels with Landlock networking (6.7+), Fargate included.
    LandlockNet,
    /// Pods with this `runtimeClassName` (whatever the node).
    RuntimeClass(&'static str),
}

impl Works {
    /// Whether the row works on `node` for a pod with `runtime_class`.
    pub fn on(self, node: &NodeFacts, runtime_class: Option<&str>) -> bool {
        match self {
            Works::BuiltinTier(tier) => node.tiers.contains(&tier),
            Works::UserNamespacesOn(families) => node.userns && families.contains(&node.os),
            Works::CapabilitiesGranted => node.os != os::FARGATE && node.os != os::WINDOWS,
            Works::LandlockNet => node.os != os::WINDOWS && node.landlock_net(),
            Works::RuntimeClass(class) => {
                runtime_class == Some(class) && node.os != os::WINDOWS && node.os != os::FARGATE
            }
        }
    }
}

/// One row of a planner table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Name in annotations, logs and golden files.
    pub name: &'static str,
    /// The environment the row stands for, in the words of the published matrix.
    pub environment: &'static str,
    /// The tier of this project's jail (builtin rows only).
    pub tier: Option<Tier>,
    /// Capabilities added to the jailed container.
    pub capabilities: &'static [&'static str],
    /// Seccomp needs.
    pub seccomp: Seccomp,
    /// Env vars set on the jailed container.
    pub env: &'static [(&'static str, &'static str)],
    /// Added capabilities are only effective for uid 0 (no ambient capabilities in pods).
    pub needs_root: bool,
    /// Where it works.
    pub works: Works,
}

/// This project's jail, least privilege first.
pub const BUILTIN: &[Row] = &[
    Row {
        name: "userns",
        environment: "user namespaces available",
        tier: Some(Tier::Userns),
        capabilities: &[],
        seccomp: Seccomp::AllowUserNamespaces,
        env: &[],
        needs_root: false,
        works: Works::BuiltinTier(Tier::Userns),
    },
    Row {
        name: "privileged-netns",
        environment: "user namespaces off (Bottlerocket, EKS Auto Mode)",
        tier: Some(Tier::PrivilegedNetns),
        capabilities: &["NET_ADMIN", "SYS_ADMIN"],
        // With SYS_ADMIN, RuntimeDefault permits unshare.
        seccomp: Seccomp::Any,
        env: &[],
        needs_root: true,
        works: Works::BuiltinTier(Tier::PrivilegedNetns),
    },
    Row {
        name: "landlock",
        environment: "no namespaces possible, kernel 6.7+ (e.g. Fargate on a new kernel)",
        tier: Some(Tier::Landlock),
        capabilities: &[],
        seccomp: Seccomp::Any,
        env: &[],
        needs_root: false,
        works: Works::BuiltinTier(Tier::Landlock),
    },
];

/// Coder's published requirements for its `boundary` binary, least privilege first.
pub const CODER_BOUNDARY: &[Row] = &[
    Row {
        name: "sysbox",
        environment: "sysbox-runc",
        tier: None,
        capabilities: &["NET_ADMIN"],
        seccomp: Seccomp::Any,
        env: &[],
        needs_root: true,
        works: Works::RuntimeClass("sysbox-runc"),
    },
    Row {
        name: "amazon-linux",
        environment: "EKS managed nodes, Amazon Linux",
        tier: None,
        capabilities: &["NET_ADMIN"],
        seccomp: Seccomp::AllowUserNamespaces,
        env: &[],
        needs_root: true,
        works: Works::UserNamespacesOn(&[os::AMAZON_LINUX_2, os::AMAZON_LINUX_2023]),
    },
    Row {
        name: "docker-runc",
        environment: "Docker runc (other Linux nodes)",
        tier: None,
        capabilities: &["NET_ADMIN"],
        seccomp: Seccomp::AllowUserNamespaces,
        env: &[],
        needs_root: true,
        works: Works::UserNamespacesOn(&[os::UBUNTU, os::OTHER_LINUX, os::UNKNOWN]),
    },
    Row {
        name: "bottlerocket",
        environment: "EKS managed nodes, Bottlerocket (user.max_user_namespaces enabled)",
        tier: None,
        capabilities: &["NET_ADMIN"],
        seccomp: Seccomp::Unconfined,
        env: &[],
        needs_root: true,
        works: Works::UserNamespacesOn(&[os::BOTTLEROCKET]),
    },
    Row {
        name: "bottlerocket-sys-admin",
        environment: "EKS managed nodes, Bottlerocket, option B (the pod sets its own seccomp profile)",
        tier: None,
        capabilities: &["NET_ADMIN", "SYS_ADMIN"],
        seccomp: Seccomp::Any,
        env: &[],
        needs_root: true,
        works: Works::UserNamespacesOn(&[os::BOTTLEROCKET]),
    },
    Row {
        name: "no-user-namespace",
        environment: "user namespaces impossible (--no-user-namespace)",
        tier: None,
        capabilities: &["NET_ADMIN", "SYS_ADMIN"],
        seccomp: Seccomp::Any,
        env: &[(env::CODER_NO_USER_NAMESPACE, "true")],
        needs_root: true,
        works: Works::CapabilitiesGranted,
    },
    Row {
        name: "landjail",
        environment: "EKS Fargate (landjail, kernel 6.7+)",
        tier: None,
        capabilities: &[],
        seccomp: Seccomp::Any,
        env: &[(env::CODER_JAIL_TYPE, "landjail")],
        needs_root: false,
        works: Works::LandlockNet,
    },
];

/// The table of a runtime.
pub fn table(runtime: JailRuntime) -> &'static [Row] {
    match runtime {
        JailRuntime::Builtin => BUILTIN,
        JailRuntime::CoderBoundary => CODER_BOUNDARY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rows_are_the_tiers_in_order() {
        let tiers: Vec<_> = BUILTIN.iter().filter_map(|r| r.tier).collect();
        assert_eq!(tiers, Tier::ALL);
        for row in BUILTIN {
            assert_eq!(row.name, row.tier.unwrap().as_str());
        }
    }

    #[test]
    fn names_are_unique_and_label_safe() {
        let mut names: Vec<_> = BUILTIN
            .iter()
            .chain(CODER_BOUNDARY)
            .map(|r| r.name)
            .collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before);
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        );
    }

    #[test]
    fn capabilities_are_kubernetes_names() {
        for row in BUILTIN.iter().chain(CODER_BOUNDARY) {
            for cap in row.capabilities {
                assert!(
                    !cap.starts_with("CAP_"),
                    "{cap}: Kubernetes names drop CAP_"
                );
            }
        }
    }
}

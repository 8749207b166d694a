//! What the jail is asked to be: the plan the supervisor hands to the jail's init across
//! `clone`, and the jail's own ports.

use std::ffi::OsString;

use boundary_api::Tier;

use crate::mounts::MountPlan;

/// Port of the TCP forwarder inside the jail's network namespace. Below 1024, so the jailed
/// process (without `CAP_NET_BIND_SERVICE`) can never bind it, and unlikely to clash with a
/// server the agent runs on loopback.
pub const FORWARDER_PORT: u16 = boundary_api::contract::ports::JAIL_FORWARDER;
/// Port of the jail's DNS server (UDP and TCP) inside its network namespace.
pub const DNS_PORT: u16 = boundary_api::contract::ports::JAIL_DNS;

/// Everything the jail needs to know to start.
#[derive(Debug, Clone)]
pub struct JailPlan {
    /// `Userns` or `PrivilegedNetns` (the landlock tier has its own [`landlock_tier`]).
    pub tier: Tier,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Variables added to (or replacing in) the command's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Variables removed from the command's environment.
    pub env_remove: Vec<OsString>,
    /// The filesystem view.
    pub mounts: MountPlan,
    /// Loopback TCP ports that belong to the pod, not the jail: redirected to the forwarder
    /// (and so to the proxy, which decides them by podLocal rules).
    pub pod_local_ports: Vec<u16>,
}

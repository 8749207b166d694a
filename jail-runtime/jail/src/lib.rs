//! `boundary-jail`: the agent's process tree in its own namespaces, with no way out but the proxy.
//!
//! ```text
//! boundary run (supervisor: forwarder, DNS, proxy; outside the jail's PID namespace)
//!  └─ jail init (PID 1 of the jail; sets up mounts and the network, then only reaps and
//!     │          forwards signals, with no capabilities left)
//!     └─ CMD (no capabilities in any set, no_new_privs)
//! ```
//!
//! The supervisor creates the init with `clone` before any thread exists. The init builds the
//! jail's view (see [`mounts`]), brings `lo` up with default routes through it, installs the
//! nftables ruleset (see [`crate::netlink`]), creates the forwarder's and DNS server's sockets
//! *inside* the jail's network namespace and passes them to the supervisor over a socketpair,
//! then forks CMD, which drops every privilege and execs. Sockets belong to the namespace they
//! were created in, so the supervisor serves them from outside, where the jailed process can
//! neither see nor signal it.
//!
//! Clean-up needs no code: when the init dies the kernel kills the jail's processes and frees
//! its namespaces (interfaces, routes, nftables rules, mounts with them); when the supervisor
//! dies, the init gets SIGKILL (parent-death signal). Nothing is changed outside the jail. When
//! the command has exited and nothing else runs in the jail, the init first writes its exit
//! code to a pipe ([`signals::supervise_reported`]): the supervisor exits with it while the
//! kernel still unmounts the jail's mount namespace.
//!
//! Modules: [`plan`] (what the jail is asked to be), [`spawn`] (the supervisor's side: clone,
//! the report back), [`control`] (the control socket: report and sockets on request), [`init`] (the jail's
//! PID 1: mounts, network, then reaping), [`mounts`], [`netlink`] (links, routes, nftables),
//! [`privileges`] (capabilities, `no_new_privs`), [`landlock_tier`] (the tier without
//! namespaces), [`signals`], [`probe`] (which tiers work on this machine), [`dns`] (the jail's
//! DNS answers). `unsafe` is allowed in [`sys`] only: the kernel interface.

pub mod control;
pub mod dns;
pub mod error;
mod init;
pub mod landlock_tier;
pub mod mounts;
pub mod netlink;
pub mod plan;
pub mod privileges;
pub mod probe;
pub mod signals;
pub mod spawn;
mod sys;

pub use control::{JailSockets, ListenerKind};
pub use error::{EXIT_SETUP_FAILED, JailError, UsernsFacts};
pub use mounts::{MountPlan, MountReport};
pub use plan::{DNS_PORT, FORWARDER_PORT, JailPlan};
pub use spawn::{Spawned, spawn};

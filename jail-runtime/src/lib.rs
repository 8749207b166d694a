//! The jail-runtime: the jail (`boundary run`), the policy proxy (in-process or as a pod's
//! sidecar) and the node probe (`boundary probe`, which the operator crate's node agent runs).
//! The `boundary` binary is a thin command line over this library; the library exists so fuzz
//! targets and benchmarks can reach the parsers directly.
//!
//! `unsafe_code` is denied workspace-wide; only [`sys`] (the kernel interface) allows it.

pub mod config;
pub mod dns;
pub mod forwarder;
pub mod inbound;
pub mod jail;
pub mod jails;
pub mod logging;
pub mod netlink;
pub mod proxy;
pub mod run;
pub mod session;
pub mod sidecar;
pub mod sys;
pub mod trust;

//! The jail-runtime: the jail (`boundary run`), the policy proxy (in-process or as a pod's
//! sidecar) and the node probe (`boundary probe`, which the operator crate's node agent runs).
//! The `boundary` binary is a thin command line over this library; the library exists so fuzz
//! targets and benchmarks can reach the parsers directly.
//!
//! The jail itself is the `boundary-jail` crate (`jail-runtime/jail/`), the only crate allowed
//! `unsafe`.

pub mod config;
pub mod forwarder;
pub mod inbound;
pub mod jails;
pub mod proxy;
pub mod run;
pub mod session;
pub mod sidecar;
pub mod trust;

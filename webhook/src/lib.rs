//! The mutating admission webhook: decides, per Pod, whether and how it is jailed, and injects
//! exactly what the chosen tier needs.
//!
//! The decision is a pure function ([`plan`]) of the pod, its namespace, the policies that select
//! it, the node cache and the cluster version; the server ([`server`]) is a thin HTTPS layer
//! around it.
#![forbid(unsafe_code)]

pub mod admit;
pub mod cache;
pub mod candidates;
pub mod classes;
pub mod credentials;
pub mod ecr;
pub mod error_text;
pub mod guard;
pub mod image;
pub mod inject;
pub mod metrics;
pub mod patch;
pub mod plan;
pub mod policy_index;
pub mod ports;
pub mod pull_secrets;
pub mod review;
pub mod seccomp;
pub mod server;
pub mod tables;
pub mod tls;

//! Kube-free helpers for tests and benchmarks: a test CA ([`TestCa`]), loopback HTTP(S)
//! upstreams ([`TestServer`]) and small clients ([`tls_connector`], [`free_port`],
//! [`wait_port`]). Cluster helpers (kube) live in `boundary-test-support`.
//!
//! Dev-only: setup failures of generated material (keys, certificates) panic, as a broken test
//! fixture should; I/O that can fail for environmental reasons returns `std::io::Result`.
#![forbid(unsafe_code)]

mod ca;
mod client;
pub mod metric_names;
mod server;

pub use ca::{Alpn, Leaf, TestCa};
pub use client::{free_port, tls_connector, wait_port, wait_port_within};
pub use server::{Reply, TestServer};

/// The crypto provider of the workspace (aws-lc), for every config the kit builds.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

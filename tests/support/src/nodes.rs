//! Node objects without a kubelet behind them, for the planner and the operator to classify:
//! each test puts its own into a pool (a label) and scopes its controllers to that pool.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

/// The label that puts a fake node into a test's pool.
pub const TEST_POOL: &str = "agentboundary.dev/test-pool";

/// What a fake node's `nodeInfo` says about its system.
#[derive(Clone, Copy, Debug)]
pub struct NodeSystem<'a> {
    /// `osImage`, e.g. `Bottlerocket OS 1.49.0 (aws-k8s-1.34)`.
    pub os_image: &'a str,
    /// `operatingSystem` and the `kubernetes.io/os` label: `linux` or `windows`.
    pub operating_system: &'a str,
    /// `kernelVersion`.
    pub kernel: &'a str,
}

impl<'a> NodeSystem<'a> {
    /// A Linux node with this OS image and kernel.
    pub fn linux(os_image: &'a str, kernel: &'a str) -> Self {
        NodeSystem {
            os_image,
            operating_system: "linux",
            kernel,
        }
    }
}

/// A fake node; deleted when dropped.
#[derive(Debug)]
pub struct FakeNode {
    name: String,
}

impl FakeNode {
    /// Creates Node `name` in `pool` with `system` and `labels` (the status, `nodeInfo`, is kept
    /// on create for Nodes).
    pub async fn create(
        client: &Client,
        name: &str,
        pool: &str,
        system: NodeSystem<'_>,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<FakeNode> {
        create_node(client, name, pool, system, labels).await?;
        Ok(FakeNode { name: name.into() })
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Creates a fake Node that stays until someone deletes it (for tests that delete it at a
/// moment of their own choosing).
pub async fn create_node(
    client: &Client,
    name: &str,
    pool: &str,
    system: NodeSystem<'_>,
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
    all.insert(TEST_POOL, pool);
    all.insert("kubernetes.io/os", system.operating_system);
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all},
        "status": {"nodeInfo": {
            "osImage": system.os_image, "kernelVersion": system.kernel,
            "operatingSystem": system.operating_system, "architecture": "amd64", "bootID": "",
            "containerRuntimeVersion": "containerd://1.7.0", "kubeProxyVersion": "",
            "kubeletVersion": "v1.20.2", "machineID": "", "systemUUID": ""
        }},
    }))?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating node {name}"))?;
    Ok(())
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        crate::delete_cluster_object_now::<Node>(self.name.clone());
    }
}

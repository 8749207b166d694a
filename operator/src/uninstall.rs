//! `boundary-operator uninstall`: removes what the operator wrote outside the Helm release, so
//! `helm uninstall` leaves nothing behind (the chart runs it as a `post-delete` hook Job).
//!
//! Helm deletes the objects it rendered; these are the operator's own: the node labels, the
//! namespace label `agentboundary.dev/inject=required` it set (the value from before comes
//! back), the ConfigMaps and Secrets it created (compiled policies and credentials, by their
//! contract names in every namespace; the webhook's certificates) and its leader-election Lease. It first waits until no operator Pod is left, or
//! a terminating one would write them again. Running agent pods keep the policy and credentials
//! their sidecars loaded; the operator sets no finalizers, so nothing waits on it.

use std::time::Duration;

use boundary_api::contract::{self, node_labels, objects};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Map, Value, json};

use crate::{Error, cluster};

/// Settings of `boundary-operator uninstall`.
#[derive(Clone, Debug, clap::Args)]
pub struct UninstallArgs {
    /// Label selector of the operator's Pods in its namespace: the clean-up starts once none is
    /// left.
    #[arg(long, env = contract::operator_env::UNINSTALL_OPERATOR_SELECTOR)]
    pub operator_selector: String,
    /// Seconds to wait for the operator's Pods to go before giving up (the hook then fails and
    /// `helm uninstall` says so; run it again, or `--no-hooks` and remove the labels yourself).
    #[arg(long, env = contract::operator_env::UNINSTALL_WAIT_SECONDS, default_value_t = 120)]
    pub wait_seconds: u64,
}

/// What was removed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub node_labels: usize,
    pub namespace_labels: usize,
    pub config_maps: usize,
    pub secrets: usize,
    pub leases: usize,
}

/// The merge patch that removes the operator's labels from a node, or `None` when it has none.
pub fn node_label_removal(node: &Node) -> Option<Value> {
    let ours: Map<String, Value> = node
        .labels()
        .keys()
        .filter(|k| node_labels::ALL.contains(&k.as_str()))
        .map(|k| (k.clone(), Value::Null))
        .collect();
    (!ours.is_empty()).then(|| json!({"metadata": {"labels": ours}}))
}

/// Waits until no operator Pod is left, then removes everything the operator wrote.
///
/// # Errors
/// The operator's Pods are still there after the wait, or an apiserver call failed (each names
/// what it was doing; a repeated run finishes the job).
pub async fn uninstall(
    client: Client,
    namespace: &str,
    lease_name: &str,
    webhook_secret: Option<&str>,
    args: &UninstallArgs,
) -> Result<Removed, Error> {
    wait_for_no_operator(&client, namespace, args).await?;
    let mut removed = Removed::default();

    let nodes: Api<Node> = Api::all(client.clone());
    for node in list(&nodes, &ListParams::default(), "nodes").await? {
        let Some(patch) = node_label_removal(&node) else {
            continue;
        };
        let name = node.name_any();
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube(format!("removing the labels of node {name}"), e))?;
        removed.node_labels += 1;
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace_names = Vec::new();
    for ns in list(&namespaces, &ListParams::default(), "namespaces").await? {
        namespace_names.push(ns.name_any());
        let Some(body) = cluster::inject_label(&ns, false) else {
            continue;
        };
        let name = ns.name_any();
        namespaces
            .patch(
                &name,
                &PatchParams::apply(objects::OPERATOR_INJECT_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| Error::kube(format!("giving namespace {name} its label back"), e))?;
        removed.namespace_labels += 1;
    }

    // By name in each namespace, never listed: listing Secrets would read every value in the
    // cluster (the names are the operator's, contract::objects).
    for ns in &namespace_names {
        if delete::<ConfigMap>(&client, ns, objects::POLICY_CONFIGMAP).await? {
            removed.config_maps += 1;
        }
        if delete::<Secret>(&client, ns, objects::CREDENTIALS_SECRET).await? {
            removed.secrets += 1;
        }
    }
    if let Some(secret) = webhook_secret {
        for name in [
            secret.to_owned(),
            format!("{secret}{}", objects::CA_SECRET_SUFFIX),
        ] {
            if delete::<Secret>(&client, namespace, &name).await? {
                removed.secrets += 1;
            }
        }
    }

    if delete::<Lease>(&client, namespace, lease_name).await? {
        removed.leases += 1;
    }
    Ok(removed)
}

async fn wait_for_no_operator(
    client: &Client,
    namespace: &str,
    args: &UninstallArgs,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&args.operator_selector);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_seconds);
    loop {
        let left = list(&pods, &params, "the operator's Pods").await?;
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::OperatorStillRunning {
                pods: left.iter().map(ResourceExt::name_any).collect(),
                seconds: args.wait_seconds,
            });
        }
        tracing::info!(pods = left.len(), "waiting for the operator's Pods to go");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn list<K>(api: &Api<K>, params: &ListParams, what: &str) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(params)
        .await
        .map_err(|e| Error::kube(format!("listing {what}"), e))?
        .items)
}

/// Deletes `namespace/name` of kind `K`; `false` when it was not there.
async fn delete<K>(client: &Client, namespace: &str, name: &str) -> Result<bool, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(
            format!(
                "deleting {} {namespace}/{name}",
                K::kind(&K::DynamicType::default())
            ),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
        node
    }

    #[test]
    fn only_the_operators_node_labels_are_removed() {
        let n = node(&[
            (node_labels::OS, "linux"),
            (node_labels::PROBED, "true"),
            ("kubernetes.io/hostname", "n1"),
            ("agentboundary.dev/something-else", "kept"),
        ]);
        let patch = node_label_removal(&n).expect("a patch");
        let removed = patch["metadata"]["labels"].as_object().expect("labels");
        assert_eq!(
            removed.keys().map(String::as_str).collect::<Vec<_>>(),
            [node_labels::OS, node_labels::PROBED]
        );
        assert!(removed.values().all(Value::is_null));
    }

    #[test]
    fn a_node_without_the_operators_labels_is_left_alone() {
        assert_eq!(
            node_label_removal(&node(&[("kubernetes.io/hostname", "n1")])),
            None
        );
        assert_eq!(node_label_removal(&Node::default()), None);
    }
}

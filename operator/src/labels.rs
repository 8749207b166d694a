//! Node labels from classification and probe facts (pure).
//!
//! Classification never reads the operator's own labels: they are removed from a copy of the
//! node first, so a label the operator wrote cannot keep itself alive (a stale `tiers` label
//! would otherwise be read back by [`NodeFacts::from_node`] as the truth).

use std::collections::{BTreeMap, BTreeSet};

use boundary_api::Tier;
use boundary_api::contract::{node_labels, os};
use boundary_api::nodes::NodeFacts;
use boundary_api::probe::ProbeReport;
use k8s_openapi::api::core::v1::Node;

/// Whether `key` is one of the labels the operator owns on nodes.
pub fn is_operator_label(key: &str) -> bool {
    node_labels::ALL.contains(&key)
}

/// Classifies `node` from `nodeInfo` and its labels other than the operator's own.
pub fn classify(node: &Node) -> NodeFacts {
    let mut copy = node.clone();
    if let Some(labels) = copy.metadata.labels.as_mut() {
        labels.retain(|k, _| !is_operator_label(k));
    }
    NodeFacts::from_node(&copy)
}

/// A valid label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// The operator's labels for a node with `facts` (from [`classify`]) and, when the node agent
/// reported one, its probe. Every key of [`node_labels::ALL`] is present: `Some` is the value to
/// set, `None` means the label must not be on the node.
///
/// Probe facts win over classification (tiers, user namespaces, Landlock ABI, seccomp profile)
/// and set `probed=true`; Windows nodes ignore probes (no node agent runs there, and nothing is
/// injected). Without a probe the Landlock ABI and seccomp profile are unknown and left off.
pub fn node_labels(
    facts: &NodeFacts,
    probe: Option<&ProbeReport>,
) -> BTreeMap<String, Option<String>> {
    let probe = probe.filter(|_| facts.os != os::WINDOWS);
    let (tiers, userns, landlock_abi, seccomp_profile, probed) = match probe {
        Some(p) => {
            let mut tiers: BTreeSet<Tier> = p
                .working_tiers()
                .filter_map(|name| name.parse().ok())
                .collect();
            // A node agent without SYS_ADMIN and NET_ADMIN (the default) cannot try
            // privileged-netns: its "no" says what it lacks, not what a pod granted them can
            // do, so classification (every Linux node but Fargate) decides that tier.
            if !p.facts.net_admin_and_sys_admin && facts.tiers.contains(&Tier::PrivilegedNetns) {
                tiers.insert(Tier::PrivilegedNetns);
            }
            let userns = !p.facts.apparmor_restricts_userns
                && p.facts
                    .max_user_namespaces
                    .map_or(tiers.contains(&Tier::Userns), |n| n > 0);
            let seccomp = p.seccomp_profile.clone().filter(|v| label_value(v));
            (
                tiers,
                userns,
                Some(p.facts.landlock_abi.max(0).to_string()),
                seccomp,
                Some("true".to_owned()),
            )
        }
        None => (facts.tiers.clone(), facts.userns, None, None, None),
    };
    let flag = |on: bool| on.then(|| "true".to_owned());
    let joined = tiers
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(".");
    let mut out = BTreeMap::from([
        (node_labels::OS, Some(facts.os.to_owned())),
        (node_labels::USERNS, Some(userns.to_string())),
        (node_labels::LANDLOCK_ABI, landlock_abi),
        (node_labels::SECCOMP_PROFILE, seccomp_profile),
        (node_labels::TIERS, Some(joined)),
        (node_labels::PROBED, probed),
    ]);
    for tier in Tier::ALL {
        out.insert(node_labels::for_tier(tier), flag(tiers.contains(&tier)));
    }
    out.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Whether `current` (a node's labels) already matches `desired` (from [`node_labels`]).
pub fn labels_in_sync(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, Option<String>>,
) -> bool {
    desired.iter().all(|(k, v)| current.get(k) == v.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::nodes::EKS_COMPUTE_TYPE;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn node(os_image: &str, kernel: &str, labels: &[(&str, &str)]) -> Node {
        let labels: BTreeMap<_, _> = labels.iter().map(|(k, v)| (*k, *v)).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": labels},
            "status": {"nodeInfo": {
                "osImage": os_image, "kernelVersion": kernel,
                "operatingSystem": if os_image.starts_with("Windows") { "windows" } else { "linux" },
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "systemUUID": ""
            }}
        }))
        .unwrap()
    }

    /// The labels to set, as sorted `key=value` strings without the `agentboundary.dev/` prefix.
    fn set(labels: &BTreeMap<String, Option<String>>) -> Vec<String> {
        let mut out: Vec<String> = labels
            .iter()
            .filter_map(|(k, v)| {
                let k = k.replace("agentboundary.dev/", "");
                v.as_ref().map(|v| format!("{k}={v}"))
            })
            .collect();
        out.sort();
        out
    }

    /// Asserts the labels to set, in any order.
    fn assert_set(labels: &BTreeMap<String, Option<String>>, want: &[&str]) {
        let mut want: Vec<String> = want.iter().map(|w| (*w).to_owned()).collect();
        want.sort();
        assert_eq!(set(labels), want);
    }

    fn probe(value: serde_json::Value) -> ProbeReport {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn every_os_family_gets_its_labels() {
        let cases = [
            (
                node("Amazon Linux 2023.5.20240819", "6.1.102", &[]),
                vec![
                    "os=amazon-linux-2023",
                    "tier.privileged-netns=true",
                    "tier.userns=true",
                    "tiers=userns.privileged-netns",
                    "userns=true",
                ],
            ),
            (
                node("Bottlerocket OS 1.49.0 (aws-k8s-1.34)", "6.12.40", &[]),
                vec![
                    "os=bottlerocket",
                    "tier.landlock=true",
                    "tier.privileged-netns=true",
                    "tiers=privileged-netns.landlock",
                    "userns=false",
                ],
            ),
            (
                node("Amazon Linux 2", "5.10.0", &[(EKS_COMPUTE_TYPE, "fargate")]),
                vec!["os=fargate", "tiers=", "userns=false"],
            ),
            (
                node("Windows Server 2022 Datacenter", "10.0.20348", &[]),
                vec!["os=windows", "tiers=", "userns=false"],
            ),
            (
                node("Ubuntu 24.04 LTS", "6.8.0-1009-aws", &[]),
                vec![
                    "os=ubuntu",
                    "tier.landlock=true",
                    "tier.privileged-netns=true",
                    "tiers=privileged-netns.landlock",
                    "userns=false",
                ],
            ),
        ];
        for (node, want) in cases {
            let labels = node_labels(&classify(&node), None);
            assert_eq!(labels.len(), node_labels::ALL.len());
            assert_set(&labels, &want);
            assert_eq!(labels[node_labels::PROBED], None);
            assert_eq!(labels[node_labels::LANDLOCK_ABI], None);
        }
    }

    #[test]
    fn the_operators_own_labels_do_not_feed_classification() {
        // Labels of an earlier probe (userns works) on a Bottlerocket node whose probe is gone.
        let stale = node(
            "Bottlerocket OS 1.49.0",
            "6.1.0",
            &[
                (node_labels::TIERS, "userns"),
                (node_labels::USERNS, "true"),
                (node_labels::PROBED, "true"),
                (node_labels::OS, "ubuntu"),
                (node_labels::TIER_USERNS, "true"),
                (node_labels::SECCOMP_PROFILE, "agent-boundary-userns.json"),
                (node_labels::LANDLOCK_ABI, "3"),
            ],
        );
        let labels = node_labels(&classify(&stale), None);
        assert_set(
            &labels,
            &[
                "os=bottlerocket",
                "tier.privileged-netns=true",
                "tiers=privileged-netns",
                "userns=false",
            ],
        );
        for stale_key in [
            node_labels::PROBED,
            node_labels::TIER_USERNS,
            node_labels::SECCOMP_PROFILE,
            node_labels::LANDLOCK_ABI,
        ] {
            assert_eq!(labels[stale_key], None, "{stale_key} must be removed");
        }
        let current: BTreeMap<String, String> = stale.metadata.labels.clone().unwrap();
        assert!(!labels_in_sync(&current, &labels));
        let applied: BTreeMap<String, String> = labels
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .chain([("other".to_owned(), "x".to_owned())])
            .collect();
        assert!(labels_in_sync(&applied, &labels));
    }

    #[test]
    fn probe_facts_replace_classification() {
        let bottlerocket = node("Bottlerocket OS 1.49.0", "6.12.40", &[]);
        let report = probe(json!({
            "tiers": {
                "userns": {"works": true},
                "privileged-netns": {"works": false, "reason": "missing CAP_SYS_ADMIN"},
                "landlock": {"works": true},
                "future-tier": {"works": true}
            },
            "best": "userns",
            "facts": {"kernel": "6.12.40", "maxUserNamespaces": 30000,
                      "apparmorRestrictsUserns": false, "seccompFilter": true,
                      "landlockAbi": 6, "uid": 0, "netAdminAndSysAdmin": false},
            "seccompProfile": "agent-boundary-userns.json"
        }));
        let labels = node_labels(&classify(&bottlerocket), Some(&report));
        // privileged-netns: the probe lacked the capabilities to try it; a pod that is
        // granted them can build it on any Linux node but Fargate.
        assert_set(
            &labels,
            &[
                "landlock-abi=6",
                "os=bottlerocket",
                "probed=true",
                "seccomp-profile=agent-boundary-userns.json",
                "tier.landlock=true",
                "tier.privileged-netns=true",
                "tier.userns=true",
                "tiers=userns.privileged-netns.landlock",
                "userns=true",
            ],
        );

        // A probe that held the capabilities and failed is believed.
        let tried = probe(json!({
            "tiers": {
                "userns": {"works": true},
                "privileged-netns": {"works": false, "reason": "nf_tables is not available"},
            },
            "facts": {"maxUserNamespaces": 30000, "netAdminAndSysAdmin": true}
        }));
        let labels = node_labels(&classify(&bottlerocket), Some(&tried));
        assert_set(
            &labels,
            &[
                "landlock-abi=0",
                "os=bottlerocket",
                "probed=true",
                "tier.userns=true",
                "tiers=userns",
                "userns=true",
            ],
        );

        // The kernel facts decide `userns`, not the tier alone; bad label values are dropped.
        let restricted = probe(json!({
            "tiers": {"userns": {"works": false}},
            "facts": {"maxUserNamespaces": 0, "landlockAbi": -1},
            "seccompProfile": "../../etc/passwd"
        }));
        let labels = node_labels(&classify(&bottlerocket), Some(&restricted));
        // User namespaces off (Bottlerocket's default): privileged-netns is what is left.
        assert_set(
            &labels,
            &[
                "landlock-abi=0",
                "os=bottlerocket",
                "probed=true",
                "tier.privileged-netns=true",
                "tiers=privileged-netns",
                "userns=false",
            ],
        );

        // Windows never takes probe facts.
        let windows = node("Windows Server 2022 Datacenter", "10.0", &[]);
        let labels = node_labels(&classify(&windows), Some(&report));
        assert_set(&labels, &["os=windows", "tiers=", "userns=false"]);
    }
}

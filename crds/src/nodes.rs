//! What is known about a node: its OS family, kernel, and which jail tiers work there. Shared by
//! the operator (which writes node labels from it) and the webhook's planner (which reads them).
//!
//! The operator's labels win (they come from a real probe on the node, or from its
//! classification); a node it has not labelled yet is classified here from `nodeInfo` and EKS
//! labels, with the same rules, so a fresh node is never treated as "anything goes".

use std::collections::{BTreeMap, BTreeSet};

use crate::Tier;
use crate::contract::{node_labels, os};
use k8s_openapi::api::core::v1::{Node, Taint};

/// EKS: `fargate`, `auto` (Auto Mode), `hybrid`, or absent on managed/self-managed EC2 nodes.
pub const EKS_COMPUTE_TYPE: &str = "eks.amazonaws.com/compute-type";
/// Standard OS label of every node.
pub const KUBERNETES_OS: &str = "kubernetes.io/os";
/// First kernel with Landlock ABI 4 (TCP connect restrictions).
pub const LANDLOCK_NET_KERNEL: KernelVersion = KernelVersion(6, 7);

/// `major.minor` of a Linux kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// Parses the leading `major.minor` of `uname -r` (e.g. `6.1.102-111.182.amzn2023.x86_64`).
    pub fn parse(text: &str) -> Option<KernelVersion> {
        let mut parts = text.trim().split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion(major, minor))
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Where a node's facts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The node agent probed the node (`agentboundary.dev/probed=true`).
    Probed,
    /// The operator classified the node (its labels, no probe yet).
    Labels,
    /// Classified here from `nodeInfo` and well-known labels.
    NodeInfo,
}

/// One node, as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its labels (for `nodeSelector` and affinity).
    pub labels: BTreeMap<String, String>,
    /// Its taints (for tolerations).
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
    /// OS family, one of [`boundary_api::contract::os`].
    pub os: &'static str,
    /// Kernel version, when known.
    pub kernel: Option<KernelVersion>,
    /// Unprivileged user namespaces work (sysctl, AppArmor).
    pub userns: bool,
    /// Tiers of this project's jail that work on the node.
    pub tiers: BTreeSet<Tier>,
    /// Name of the Localhost seccomp profile the node agent installed.
    pub seccomp_profile: Option<String>,
    /// Where the facts came from.
    pub source: Source,
}

impl NodeFacts {
    /// Facts of `node`: the operator's labels where present, else classification.
    pub fn from_node(node: &Node) -> NodeFacts {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        let os_image = info.map(|i| i.os_image.as_str()).unwrap_or_default();
        let operating_system = info.map(|i| i.operating_system.as_str());
        let kernel = info.and_then(|i| KernelVersion::parse(&i.kernel_version));
        let spec = node.spec.as_ref();
        let mut facts = classify(&labels, os_image, operating_system, kernel);
        facts.name = node.metadata.name.clone().unwrap_or_default();
        facts.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        facts.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        facts.labels = labels;
        facts
    }

    /// The virtual node an EKS Fargate pod lands on: a fresh micro-VM, so only what Fargate
    /// guarantees is known (no added capabilities). Its kernel is the oldest of the Fargate
    /// nodes running now (`known`), or unknown (today's Fargate runs 5.x: no Landlock networking).
    pub fn fargate(known: &[NodeFacts]) -> NodeFacts {
        let kernel = known
            .iter()
            .filter(|n| n.os == os::FARGATE)
            .map(|n| n.kernel)
            .min()
            .flatten();
        let mut tiers = BTreeSet::new();
        if kernel.is_some_and(|k| k >= LANDLOCK_NET_KERNEL) {
            tiers.insert(Tier::Landlock);
        }
        NodeFacts {
            name: "(fargate)".into(),
            labels: BTreeMap::from([(EKS_COMPUTE_TYPE.into(), "fargate".into())]),
            taints: Vec::new(),
            unschedulable: false,
            os: os::FARGATE,
            kernel,
            userns: false,
            tiers,
            seccomp_profile: None,
            source: Source::NodeInfo,
        }
    }

    /// The node the pod names in `nodeName` when it is not in the cache: nothing is known, so
    /// the common case (a Linux node with user namespaces) is assumed and said in a warning.
    pub fn unknown(name: &str) -> NodeFacts {
        let mut facts = classify(&BTreeMap::new(), "", None, None);
        facts.name = name.into();
        facts
    }

    /// Whether the node's facts are the operator's (probed or labelled) rather than guessed.
    pub fn is_labelled(&self) -> bool {
        self.source != Source::NodeInfo
    }

    /// Whether the node's kernel has Landlock networking (ABI 4, kernel 6.7+).
    pub fn landlock_net(&self) -> bool {
        self.kernel.is_some_and(|k| k >= LANDLOCK_NET_KERNEL)
    }
}

/// The OS family of a node from its `osImage` and labels.
fn os_family(
    labels: &BTreeMap<String, String>,
    os_image: &str,
    operating_system: Option<&str>,
) -> &'static str {
    let image = os_image.to_ascii_lowercase();
    if labels.get(EKS_COMPUTE_TYPE).map(String::as_str) == Some("fargate") {
        os::FARGATE
    } else if operating_system == Some("windows")
        || labels.get(KUBERNETES_OS).map(String::as_str) == Some("windows")
        || image.contains("windows")
    {
        os::WINDOWS
    } else if image.starts_with("bottlerocket") {
        os::BOTTLEROCKET
    } else if image.starts_with("amazon linux 2023") {
        os::AMAZON_LINUX_2023
    } else if image.starts_with("amazon linux 2") {
        os::AMAZON_LINUX_2
    } else if image.starts_with("ubuntu") {
        os::UBUNTU
    } else if image.is_empty() {
        os::UNKNOWN
    } else {
        os::OTHER_LINUX
    }
}

/// Ubuntu 23.10 and later restrict unprivileged user namespaces with AppArmor
/// (`kernel.apparmor_restrict_unprivileged_userns=1`).
fn ubuntu_restricts_userns(os_image: &str) -> bool {
    let version = os_image
        .split_whitespace()
        .nth(1)
        .and_then(|v| {
            let mut p = v.split('.');
            Some((
                p.next()?.parse::<u32>().ok()?,
                p.next()?.parse::<u32>().ok()?,
            ))
        })
        .unwrap_or((0, 0));
    version >= (23, 10)
}

fn classify(
    labels: &BTreeMap<String, String>,
    os_image: &str,
    operating_system: Option<&str>,
    kernel: Option<KernelVersion>,
) -> NodeFacts {
    let family = labels
        .get(node_labels::OS)
        .and_then(|v| os::ALL.iter().find(|o| *o == v).copied())
        .filter(|o| *o != os::UNKNOWN)
        .unwrap_or_else(|| os_family(labels, os_image, operating_system));
    let auto_mode = labels.get(EKS_COMPUTE_TYPE).map(String::as_str) == Some("auto");
    let guessed_userns = match family {
        // Bottlerocket ships user.max_user_namespaces=0 (Auto Mode fixes it there).
        os::FARGATE | os::WINDOWS | os::BOTTLEROCKET => false,
        os::UBUNTU => !ubuntu_restricts_userns(os_image),
        _ => !auto_mode,
    };
    let userns = match labels.get(node_labels::USERNS).map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        _ => guessed_userns,
    };
    let landlock_abi: Option<u32> = labels
        .get(node_labels::LANDLOCK_ABI)
        .and_then(|v| v.parse().ok());
    let landlock = match landlock_abi {
        Some(abi) => abi >= 4,
        None => kernel.is_some_and(|k| k >= LANDLOCK_NET_KERNEL),
    };
    let labelled_tiers: Option<BTreeSet<Tier>> = labels.get(node_labels::TIERS).map(|v| {
        v.split('.')
            .filter_map(|t| t.parse::<Tier>().ok())
            .collect()
    });
    let source = if labels.get(node_labels::PROBED).map(String::as_str) == Some("true") {
        Source::Probed
    } else if labelled_tiers.is_some() {
        Source::Labels
    } else {
        Source::NodeInfo
    };
    let tiers = labelled_tiers.unwrap_or_else(|| {
        let mut tiers = BTreeSet::new();
        if family == os::WINDOWS {
            return tiers;
        }
        if userns && family != os::FARGATE {
            tiers.insert(Tier::Userns);
        }
        // Fargate grants no added capabilities at all.
        if family != os::FARGATE {
            tiers.insert(Tier::PrivilegedNetns);
        }
        if landlock {
            tiers.insert(Tier::Landlock);
        }
        tiers
    });
    NodeFacts {
        name: String::new(),
        labels: BTreeMap::new(),
        taints: Vec::new(),
        unschedulable: false,
        os: family,
        kernel,
        userns,
        tiers,
        seccomp_profile: labels.get(node_labels::SECCOMP_PROFILE).cloned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(os_image: &str, kernel: &str, labels: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()},
            "status": {"nodeInfo": {
                "osImage": os_image, "kernelVersion": kernel, "operatingSystem": "linux",
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "systemUUID": ""
            }}
        }))
        .unwrap()
    }

    fn tiers(facts: &NodeFacts) -> Vec<&'static str> {
        facts.tiers.iter().map(|t| t.as_str()).collect()
    }

    #[test]
    fn kernels_parse() {
        assert_eq!(
            KernelVersion::parse("6.1.102-111.182.amzn2023.x86_64"),
            Some(KernelVersion(6, 1))
        );
        assert_eq!(KernelVersion::parse("6.12.9"), Some(KernelVersion(6, 12)));
        assert_eq!(KernelVersion::parse("5.10-rc1"), Some(KernelVersion(5, 10)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert_eq!(KernelVersion::parse(""), None);
    }

    #[test]
    fn eks_node_images_are_classified() {
        let cases = [
            (
                "Amazon Linux 2",
                "5.10.215-203.850.amzn2.x86_64",
                os::AMAZON_LINUX_2,
                vec!["userns", "privileged-netns"],
            ),
            (
                "Amazon Linux 2023.5.20240819",
                "6.1.102-111.182.amzn2023.x86_64",
                os::AMAZON_LINUX_2023,
                vec!["userns", "privileged-netns"],
            ),
            (
                "Bottlerocket OS 1.49.0 (aws-k8s-1.34)",
                "6.12.40",
                os::BOTTLEROCKET,
                vec!["privileged-netns", "landlock"],
            ),
            (
                "Ubuntu 22.04.4 LTS",
                "6.5.0-1022-aws",
                os::UBUNTU,
                vec!["userns", "privileged-netns"],
            ),
            (
                "Ubuntu 24.04 LTS",
                "6.8.0-1009-aws",
                os::UBUNTU,
                vec!["privileged-netns", "landlock"],
            ),
            (
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0-18-amd64",
                os::OTHER_LINUX,
                vec!["userns", "privileged-netns"],
            ),
            ("", "", os::UNKNOWN, vec!["userns", "privileged-netns"]),
        ];
        for (image, kernel, family, want) in cases {
            let facts = NodeFacts::from_node(&node(image, kernel, &[]));
            assert_eq!(facts.os, family, "{image}");
            assert_eq!(tiers(&facts), want, "{image}");
            assert_eq!(facts.source, Source::NodeInfo);
        }
    }

    #[test]
    fn operator_labels_win_over_classification() {
        let probed = node(
            "Bottlerocket OS 1.49.0 (aws-k8s-1.34)",
            "6.12.40",
            &[
                (node_labels::TIERS, "userns.landlock"),
                (node_labels::PROBED, "true"),
                (node_labels::USERNS, "true"),
                (node_labels::SECCOMP_PROFILE, "agent-boundary-userns.json"),
            ],
        );
        let facts = NodeFacts::from_node(&probed);
        assert_eq!(tiers(&facts), ["userns", "landlock"]);
        assert!(facts.userns);
        assert_eq!(facts.source, Source::Probed);
        assert_eq!(
            facts.seccomp_profile.as_deref(),
            Some("agent-boundary-userns.json")
        );

        let auto = node(
            "Bottlerocket OS 1.49.0",
            "6.12.40",
            &[(EKS_COMPUTE_TYPE, "auto")],
        );
        assert!(!NodeFacts::from_node(&auto).userns);
        let sysctl_on = node(
            "Bottlerocket OS 1.49.0",
            "6.12.40",
            &[(node_labels::USERNS, "true")],
        );
        assert_eq!(
            tiers(&NodeFacts::from_node(&sysctl_on)),
            ["userns", "privileged-netns", "landlock"]
        );
    }

    #[test]
    fn fargate_and_windows_support_no_namespaced_tier() {
        let fargate = node("Amazon Linux 2", "5.10.0", &[(EKS_COMPUTE_TYPE, "fargate")]);
        let facts = NodeFacts::from_node(&fargate);
        assert_eq!(facts.os, os::FARGATE);
        assert!(facts.tiers.is_empty());
        assert!(NodeFacts::fargate(&[]).tiers.is_empty());
        assert!(
            NodeFacts::fargate(std::slice::from_ref(&facts))
                .tiers
                .is_empty()
        );
        let newer = node(
            "Amazon Linux 2023",
            "6.12.0",
            &[(EKS_COMPUTE_TYPE, "fargate")],
        );
        let newer = NodeFacts::from_node(&newer);
        assert_eq!(
            tiers(&NodeFacts::fargate(std::slice::from_ref(&newer))),
            ["landlock"]
        );
        assert!(
            NodeFacts::fargate(&[newer, facts]).tiers.is_empty(),
            "the oldest kernel counts"
        );
        let windows = node(
            "Windows Server 2022 Datacenter",
            "10.0.20348.2461",
            &[(KUBERNETES_OS, "windows")],
        );
        let facts = NodeFacts::from_node(&windows);
        assert_eq!(facts.os, os::WINDOWS);
        assert!(facts.tiers.is_empty());
    }
}

//! The node probe's report: what `boundary probe` prints, and (plus [`ProbeReport::seccomp_profile`])
//! what the node agent writes into the `agentboundary.dev/probe-report` annotation of its own Pod
//! and the operator reads to label the node. One type for the writer and both readers, free of
//! Kubernetes types so the `boundary` binary can use it.
//!
//! Readers are lenient where versions may differ during an upgrade: facts missing from an older
//! agent's report take their defaults, unknown fields are ignored, and a `best` tier this version
//! does not know reads as none. `tiers` and `facts` themselves are required: every writer has
//! always written them, so a report without them is not a report.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Tier;

/// Everything `boundary probe` prints, and the node agent publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// Per tier, keyed by tier name (a map of names, so tiers added later pass through).
    pub tiers: BTreeMap<String, TierProbe>,
    /// The first tier that works, in order of preference.
    #[serde(default, deserialize_with = "known_tier")]
    pub best: Option<Tier>,
    /// The facts behind the verdicts.
    pub facts: ProbeFacts,
    /// Name of the Localhost seccomp profile the node agent installed and found in place; never
    /// set by `boundary probe` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<String>,
}

impl ProbeReport {
    /// The tiers that work, in the report's (name) order.
    pub fn working_tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers
            .iter()
            .filter(|(_, t)| t.works)
            .map(|(name, _)| name.as_str())
    }
}

/// The result of probing one tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierProbe {
    /// The tier can be built here.
    pub works: bool,
    /// Why not, with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Node facts behind the verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProbeFacts {
    /// `uname -r`.
    pub kernel: String,
    /// `user.max_user_namespaces`, when readable.
    pub max_user_namespaces: Option<u64>,
    /// `kernel.apparmor_restrict_unprivileged_userns` is 1.
    pub apparmor_restricts_userns: bool,
    /// The probing process runs under a seccomp filter.
    pub seccomp_filter: bool,
    /// Landlock ABI (0: none).
    pub landlock_abi: i32,
    /// Effective uid of the probing process.
    pub uid: u32,
    /// `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` were effective, so `privileged-netns` could be tried.
    pub net_admin_and_sys_admin: bool,
}

/// `best` as a tier, or none when this version does not know the name (a newer agent's tier).
fn known_tier<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Tier>, D::Error> {
    let name: Option<String> = Option::deserialize(deserializer)?;
    Ok(name.and_then(|n| n.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    fn report(seccomp_profile: Option<&str>) -> ProbeReport {
        ProbeReport {
            tiers: BTreeMap::from([
                (
                    "userns".to_owned(),
                    TierProbe {
                        works: false,
                        reason: Some("user namespaces are disabled".into()),
                    },
                ),
                (
                    "landlock".to_owned(),
                    TierProbe {
                        works: true,
                        reason: None,
                    },
                ),
            ]),
            best: Some(Tier::Landlock),
            facts: ProbeFacts {
                kernel: "6.12.40".into(),
                max_user_namespaces: Some(0),
                apparmor_restricts_userns: false,
                seccomp_filter: true,
                landlock_abi: 6,
                uid: 65532,
                net_admin_and_sys_admin: false,
            },
            seccomp_profile: seccomp_profile.map(str::to_owned),
        }
    }

    #[test]
    fn the_wire_format_keeps_its_field_names() {
        let value = serde_json::to_value(report(None)).unwrap();
        // The JSON `boundary probe` has always printed (and reports on running Pods carry).
        assert_eq!(
            value,
            json!({
                "tiers": {
                    "landlock": {"works": true},
                    "userns": {"works": false, "reason": "user namespaces are disabled"},
                },
                "best": "landlock",
                "facts": {
                    "kernel": "6.12.40", "maxUserNamespaces": 0, "apparmorRestrictsUserns": false,
                    "seccompFilter": true, "landlockAbi": 6, "uid": 65532,
                    "netAdminAndSysAdmin": false,
                },
            })
        );
        // The node agent's addition.
        let value = serde_json::to_value(report(Some("agent-boundary-userns.json"))).unwrap();
        assert_eq!(value["seccompProfile"], "agent-boundary-userns.json");
        let back: ProbeReport = serde_json::from_value(value).unwrap();
        assert_eq!(back, report(Some("agent-boundary-userns.json")));
        // No tier works: `best` is null, and reads back as none.
        let mut none = report(None);
        none.best = None;
        let value = serde_json::to_value(&none).unwrap();
        assert_eq!(value["best"], Value::Null);
        assert_eq!(serde_json::from_value::<ProbeReport>(value).unwrap(), none);
    }

    #[test]
    fn reports_of_other_versions_are_read_leniently_but_not_reports_without_tiers_or_facts() {
        // An older agent (fewer facts) or a newer one (unknown tier, fields and best).
        let report: ProbeReport = serde_json::from_value(json!({
            "tiers": {"userns": {"works": true}, "future-tier": {"works": true}},
            "best": "future-tier",
            "facts": {"landlockAbi": 3, "somethingNew": 1},
            "extra": true,
        }))
        .unwrap();
        assert_eq!(report.best, None);
        assert_eq!(report.facts.landlock_abi, 3);
        assert_eq!(report.facts.max_user_namespaces, None);
        assert_eq!(
            report.working_tiers().collect::<Vec<_>>(),
            ["future-tier", "userns"]
        );
        for broken in [
            json!({}),
            json!({"tiers": {}}),
            json!({"facts": {}}),
            json!([]),
        ] {
            assert!(
                serde_json::from_value::<ProbeReport>(broken.clone()).is_err(),
                "{broken} read as a report"
            );
        }
    }
}

//! Who may get around the jail, decided by cluster admins: namespaces where jailing is required
//! (every pod jailed or refused, the pod-level opt-out ignored), the service accounts whose pods
//! may opt out under an `Enforce` policy, and what may change on a pod once it is jailed (pod
//! UPDATE, the `ephemeralcontainers` subresource). Pure: the admission layer feeds it objects.

use std::collections::{BTreeMap, BTreeSet};

use boundary_api::contract::{self, annotations, labels};
use k8s_openapi::api::core::v1::Pod;

/// The admins' settings (webhook flags, from the chart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jailing {
    /// Namespaces where jailing is required whatever their labels (`webhook.requiredNamespaces`).
    pub required_namespaces: BTreeSet<String>,
    /// Service accounts (`namespace/name`) whose pods may carry the opt-out label under an
    /// `Enforce` policy (`webhook.optOutServiceAccounts`).
    pub opt_out_service_accounts: BTreeSet<String>,
}

/// Why jailing is required in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequiredBy {
    /// The namespace label `agentboundary.dev/inject=required`.
    NamespaceLabel,
    /// The chart value `webhook.requiredNamespaces`.
    Chart,
    /// These `ClusterBoundaryPolicy` objects (`spec.requireJailing`).
    ClusterPolicies(Vec<String>),
}

impl RequiredBy {
    /// Who set it and who can change it, for denial messages.
    pub fn describe(&self, namespace: &str) -> String {
        match self {
            RequiredBy::NamespaceLabel => format!(
                "namespace {namespace} requires jailing (label {}={}; only who may edit the Namespace can change that)",
                labels::INJECT,
                contract::INJECT_REQUIRED
            ),
            RequiredBy::Chart => format!(
                "namespace {namespace} requires jailing (the chart value webhook.requiredNamespaces; only a cluster admin can change that)"
            ),
            RequiredBy::ClusterPolicies(names) => format!(
                "namespace {namespace} requires jailing (ClusterBoundaryPolicy {} with requireJailing; only a cluster admin can change that)",
                names.join(", ")
            ),
        }
    }
}

/// Whether a pod is to be jailed, before looking at policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Jailed or refused; the pod's own label is ignored.
    Required(RequiredBy),
    /// Opted in (the pod's label, else its namespace's).
    OptedIn,
    /// The pod carries the opt-out label in a namespace that opted in.
    OptedOut,
    /// Injection is not enabled for the pod or its namespace.
    Off,
}

/// The requirement for a pod with `pod_labels` in `namespace`. `requiring` are the names of
/// the cluster policies with `requireJailing` that select the namespace.
pub fn requirement(
    jailing: &Jailing,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
    requiring: Vec<String>,
) -> Requirement {
    let namespace_value = namespace_labels.get(labels::INJECT).map(String::as_str);
    if namespace_value == Some(contract::INJECT_REQUIRED) {
        return Requirement::Required(RequiredBy::NamespaceLabel);
    }
    if jailing.required_namespaces.contains(namespace) {
        return Requirement::Required(RequiredBy::Chart);
    }
    if !requiring.is_empty() {
        return Requirement::Required(RequiredBy::ClusterPolicies(requiring));
    }
    match pod_labels.get(labels::INJECT).map(String::as_str) {
        Some(contract::INJECT_ENABLED) => Requirement::OptedIn,
        Some(contract::INJECT_DISABLED) if namespace_value == Some(contract::INJECT_ENABLED) => {
            Requirement::OptedOut
        }
        None if namespace_value == Some(contract::INJECT_ENABLED) => Requirement::OptedIn,
        _ => Requirement::Off,
    }
}

/// The pod's service account as `namespace/name` (`default` when the spec names none).
pub fn service_account(namespace: &str, pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    format!("{namespace}/{name}")
}

/// Why an opted-out pod is refused, or `None` when it may run unjailed: no `Enforce` policy
/// (`enforcing`: their names) selects it, or its service account is exempt.
pub fn refuse_opt_out(
    jailing: &Jailing,
    service_account: &str,
    enforcing: &[String],
) -> Option<String> {
    if enforcing.is_empty() || jailing.opt_out_service_accounts.contains(service_account) {
        return None;
    }
    Some(format!(
        "agentboundary.dev: this pod is labelled {}={}, but {} (Enforce) selects it, so it must be jailed. Only pods whose service account a cluster admin lists in the chart value webhook.optOutServiceAccounts may opt out (this one runs as {service_account}); remove the label, or ask a cluster admin to exempt that service account",
        labels::INJECT,
        contract::INJECT_DISABLED,
        enforcing.join(", ")
    ))
}

/// Whether a pod was jailed by this webhook (it carries the injection record).
pub fn is_jailed(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations.is_some_and(|a| a.contains_key(annotations::STATUS))
}

/// What may not change on a jailed pod by UPDATE: the injection record and the metadata the
/// webhook set, and the labels in so far as they change which policies select the pod (the
/// sidecar re-reads the labels, so a relabelled pod would choose its own policy).
/// `selecting(labels)` names the policies that select a pod with those labels.
pub fn refuse_update(
    old: &Pod,
    new: &Pod,
    selecting: impl Fn(&BTreeMap<String, String>) -> Vec<String>,
) -> Option<String> {
    if !is_jailed(old.metadata.annotations.as_ref()) {
        return None;
    }
    let empty = BTreeMap::new();
    let old_annotations = old.metadata.annotations.as_ref().unwrap_or(&empty);
    let new_annotations = new.metadata.annotations.as_ref().unwrap_or(&empty);
    for key in [annotations::STATUS, annotations::TIER, annotations::POLICY] {
        if old_annotations.get(key) != new_annotations.get(key) {
            return Some(format!(
                "agentboundary.dev: the pod is jailed and its annotation {key} records how; it cannot be changed or removed. Delete the pod and create it again"
            ));
        }
    }
    let old_labels = old.metadata.labels.as_ref().unwrap_or(&empty);
    let new_labels = new.metadata.labels.as_ref().unwrap_or(&empty);
    if old_labels.get(labels::JAILED) != new_labels.get(labels::JAILED) {
        return Some(format!(
            "agentboundary.dev: the pod is jailed and its label {} records it; it cannot be changed or removed. Delete the pod and create it again",
            labels::JAILED
        ));
    }
    if old_labels != new_labels {
        let before = selecting(old_labels);
        let after = selecting(new_labels);
        if before != after {
            return Some(format!(
                "agentboundary.dev: the pod is jailed under {}; with the new labels {} would select it instead, and a running pod's policies cannot be changed by relabelling it. Change the policies, or delete the pod and create it with the new labels",
                list_or_none(&before),
                list_or_none(&after)
            ));
        }
    }
    None
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "no policy".into()
    } else {
        names.join(", ")
    }
}

/// Why ephemeral containers may not be added to a jailed pod (`old_annotations`: the pod's
/// before the request; `added`: the names of the ephemeral containers the request adds).
pub fn refuse_ephemeral(
    old_annotations: Option<&BTreeMap<String, String>>,
    added: &[String],
) -> Option<String> {
    if added.is_empty() || !is_jailed(old_annotations) {
        return None;
    }
    Some(format!(
        "agentboundary.dev: the pod is jailed; ephemeral container {} would share its network namespace without the jail, so it is refused. To debug, copy the pod (kubectl debug --copy-to=NAME, which is jailed like any new pod), or debug the node",
        added.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.labels = Some(map(labels));
        pod.metadata.annotations = Some(map(annotations));
        pod
    }

    #[test]
    fn required_ignores_the_pods_own_label() {
        let jailing = Jailing {
            required_namespaces: ["ci".to_owned()].into(),
            ..Jailing::default()
        };
        let off = map(&[(labels::INJECT, "disabled")]);
        assert_eq!(
            requirement(&jailing, "ci", &BTreeMap::new(), &off, vec![]),
            Requirement::Required(RequiredBy::Chart)
        );
        assert_eq!(
            requirement(
                &jailing,
                "x",
                &map(&[(labels::INJECT, "required")]),
                &off,
                vec![]
            ),
            Requirement::Required(RequiredBy::NamespaceLabel)
        );
        assert_eq!(
            requirement(&jailing, "x", &BTreeMap::new(), &off, vec!["all".into()]),
            Requirement::Required(RequiredBy::ClusterPolicies(vec!["all".into()]))
        );
    }

    #[test]
    fn opt_in_and_out_as_before_elsewhere() {
        let j = Jailing::default();
        let enabled_ns = map(&[(labels::INJECT, "enabled")]);
        let none = BTreeMap::new();
        assert_eq!(
            requirement(&j, "a", &enabled_ns, &none, vec![]),
            Requirement::OptedIn
        );
        assert_eq!(
            requirement(
                &j,
                "a",
                &enabled_ns,
                &map(&[(labels::INJECT, "disabled")]),
                vec![]
            ),
            Requirement::OptedOut
        );
        assert_eq!(
            requirement(&j, "a", &none, &map(&[(labels::INJECT, "enabled")]), vec![]),
            Requirement::OptedIn
        );
        assert_eq!(requirement(&j, "a", &none, &none, vec![]), Requirement::Off);
        assert_eq!(
            requirement(
                &j,
                "a",
                &none,
                &map(&[(labels::INJECT, "disabled")]),
                vec![]
            ),
            Requirement::Off
        );
    }

    #[test]
    fn opt_out_is_refused_under_enforce_unless_the_service_account_is_exempt() {
        let j = Jailing {
            opt_out_service_accounts: ["ci/builder".to_owned()].into(),
            ..Jailing::default()
        };
        let enforcing = vec!["BoundaryPolicy agents".to_owned()];
        let message = refuse_opt_out(&j, "ci/default", &enforcing).unwrap();
        assert!(
            message.contains("webhook.optOutServiceAccounts"),
            "{message}"
        );
        assert!(message.contains("ci/default"), "{message}");
        assert!(message.contains("BoundaryPolicy agents"), "{message}");
        assert_eq!(refuse_opt_out(&j, "ci/builder", &enforcing), None);
        assert_eq!(refuse_opt_out(&j, "ci/default", &[]), None);
        // Exemption is per namespace: the same name elsewhere is not exempt.
        assert!(refuse_opt_out(&j, "dev/builder", &enforcing).is_some());
    }

    #[test]
    fn the_service_account_defaults_to_default() {
        let mut p = Pod::default();
        assert_eq!(service_account("ns", &p), "ns/default");
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("agent".into()),
            ..Default::default()
        });
        assert_eq!(service_account("ns", &p), "ns/agent");
    }

    #[test]
    fn jailed_pods_keep_their_record_and_their_policies() {
        let jailed = &[(annotations::STATUS, "{}"), (annotations::POLICY, "p")];
        let old = pod(&[("app", "agent"), (labels::JAILED, "userns")], jailed);
        let by_app = |l: &BTreeMap<String, String>| {
            if l.get("app").map(String::as_str) == Some("agent") {
                vec!["p".to_owned()]
            } else {
                vec![]
            }
        };
        // Unrelated label: fine.
        let mut new = old.clone();
        new.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        assert_eq!(refuse_update(&old, &new, by_app), None);
        // A label that deselects the policy: refused.
        let mut new = old.clone();
        new.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("app".into(), "other".into());
        let why = refuse_update(&old, &new, by_app).unwrap();
        assert!(why.contains("no policy would select"), "{why}");
        // The record removed: refused.
        let mut new = old.clone();
        new.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(annotations::STATUS);
        assert!(refuse_update(&old, &new, by_app).is_some());
        // The jailed label removed: refused.
        let mut new = old.clone();
        new.metadata.labels.as_mut().unwrap().remove(labels::JAILED);
        assert!(refuse_update(&old, &new, by_app).is_some());
        // A pod that is not jailed may change anything.
        let free = pod(&[("app", "agent")], &[]);
        let mut new = free.clone();
        new.metadata.labels = None;
        assert_eq!(refuse_update(&free, &new, by_app), None);
    }

    #[test]
    fn ephemeral_containers_are_refused_only_in_jailed_pods() {
        let jailed = map(&[(annotations::STATUS, "{}")]);
        let added = vec!["debugger".to_owned()];
        let why = refuse_ephemeral(Some(&jailed), &added).unwrap();
        assert!(
            why.contains("debugger") && why.contains("--copy-to"),
            "{why}"
        );
        assert_eq!(refuse_ephemeral(Some(&jailed), &[]), None);
        assert_eq!(refuse_ephemeral(Some(&BTreeMap::new()), &added), None);
        assert_eq!(refuse_ephemeral(None, &added), None);
    }
}

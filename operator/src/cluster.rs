//! `ClusterBoundaryPolicy`, the pure part: which namespaces a cluster policy applies to, its
//! status, and the namespace label `agentboundary.dev/inject=required` its `requireJailing` sets.
//!
//! # Which namespaces
//!
//! Those the operator manages (all, or `--watch-namespace`, or `--namespace-selector`) whose
//! labels the `namespaceSelector` matches, except the excluded ones ([`Excluded`]: the operator's
//! own namespace, `kube-system` and `BOUNDARY_EXCLUDED_NAMESPACES`, where the webhook never
//! jails either) and namespaces being deleted.
//!
//! # `requireJailing`
//!
//! The operator sets the label with server-side apply under its own field manager
//! ([`objects::OPERATOR_INJECT_FIELD_MANAGER`]), forced: an administrator's cluster policy wins
//! over a namespace owner's `enabled` or `disabled`. The value it replaced is kept in the
//! annotation [`annotations::INJECT_BEFORE_REQUIRED`] and put back when no cluster policy
//! requires jailing there any more (so a namespace that was `enabled` stays jailed). A label
//! `required` someone else set is shared, never taken away: applying the same value only adds
//! the operator as a co-owner, and releasing it leaves the other owner's value in place.

use std::collections::{BTreeMap, BTreeSet};

use boundary_api::contract::{self, annotations, labels, objects};
use boundary_api::crd::{ClusterBoundaryPolicyStatus, condition_types};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::compile::{CompiledCluster, Outcome};
use crate::status::{condition, reasons};

/// Longest `status.namespaces` list (`namespaceCount` has the total).
pub const MAX_NAMESPACES: usize = 50;

/// Namespaces no cluster policy selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Excluded(BTreeSet<String>);

impl Excluded {
    /// `kube-system`, the operator's own namespace and `extra`.
    pub fn new(own: Option<&str>, extra: &[String]) -> Excluded {
        Excluded(
            ["kube-system"]
                .into_iter()
                .chain(own)
                .chain(extra.iter().map(String::as_str))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Whether `namespace` is excluded.
    pub fn contains(&self, namespace: &str) -> bool {
        self.0.contains(namespace)
    }
}

/// The cluster policies that apply to `namespace`, sorted by name.
pub fn applying<'a>(
    clusters: &'a [CompiledCluster],
    namespace: &Namespace,
    excluded: &Excluded,
) -> Vec<&'a CompiledCluster> {
    let name = namespace.name_any();
    if excluded.contains(&name) || namespace.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let mut out: Vec<&CompiledCluster> = clusters
        .iter()
        .filter(|c| c.selects(namespace.labels()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The namespaces (of `namespaces`) `cluster` applies to, sorted.
pub fn selected_namespaces(
    cluster: &CompiledCluster,
    namespaces: &[std::sync::Arc<Namespace>],
    excluded: &Excluded,
) -> Vec<String> {
    let one = std::slice::from_ref(cluster);
    let mut out: Vec<String> = namespaces
        .iter()
        .filter(|ns| !applying(one, ns, excluded).is_empty())
        .map(|ns| ns.name_any())
        .collect();
    out.sort();
    out
}

/// The status a cluster policy should have: `RulesValid` and `ruleProblems` from its compile
/// report; `Ready` when its entry is in the published file of every namespace it applies to
/// (`unpublished`: those where it is not yet); `namespaceCount` and the first
/// [`MAX_NAMESPACES`] of `namespaces`.
pub fn desired_status(
    cluster: &CompiledCluster,
    namespaces: &[String],
    unpublished: &[String],
    previous: Option<&ClusterBoundaryPolicyStatus>,
    now: &Time,
) -> ClusterBoundaryPolicyStatus {
    let report = &cluster.report;
    let problems = report
        .problems
        .iter()
        .map(|p| match p.column {
            Some(c) => format!("{} column {c}: {}", p.field, p.message),
            None => format!("{}: {}", p.field, p.message),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let count = report.problems.len();
    let valid = match report.outcome {
        Outcome::Published => (
            "True",
            reasons::VALID,
            format!("all {} rules compile", report.rule_count),
        ),
        Outcome::RulesWithheld => (
            "False",
            reasons::INVALID_RULES,
            format!("{count} problem(s) in the rules: {problems}"),
        ),
        Outcome::Excluded => (
            "False",
            reasons::INVALID_SELECTOR,
            format!("{count} problem(s): {problems}"),
        ),
    };
    let where_ = match namespaces.len() {
        0 => "no namespace selects it".to_owned(),
        n => format!("{n} namespace(s)"),
    };
    let ready = match report.outcome {
        Outcome::Excluded => (
            "False",
            reasons::INVALID_SELECTOR,
            "published nowhere: a selector cannot be evaluated".to_owned(),
        ),
        Outcome::RulesWithheld => (
            "False",
            reasons::INVALID_RULES,
            format!(
                "published into {where_} with its {} valid deny rule(s) and without its allow \
                 rules until the rules are fixed",
                cluster.entry.as_ref().map_or(0, |e| e.deny.len())
            ),
        ),
        Outcome::Published if !unpublished.is_empty() => (
            "False",
            reasons::PUBLISHING,
            format!(
                "not yet in the compiled policy of {}",
                unpublished.join(", ")
            ),
        ),
        Outcome::Published if namespaces.is_empty() => (
            "True",
            reasons::PUBLISHED,
            "selects no namespace".to_owned(),
        ),
        Outcome::Published => (
            "True",
            reasons::PUBLISHED,
            format!("in ConfigMap {} of {where_}", objects::POLICY_CONFIGMAP),
        ),
    };
    let generation = report.generation;
    let conditions = previous.map(|p| p.conditions.as_slice());
    let cond = |type_, state| condition(conditions, type_, state, generation, now);
    let (lint_condition, lint_warnings) = match crate::status::lint_state(report) {
        Some((state, warnings)) => (Some(cond(condition_types::LINT_CLEAN, state)), warnings),
        None => (None, Vec::new()),
    };
    ClusterBoundaryPolicyStatus {
        observed_generation: generation,
        conditions: [
            cond(condition_types::RULES_VALID, valid),
            cond(condition_types::READY, ready),
        ]
        .into_iter()
        .chain(lint_condition)
        .collect(),
        rule_count: Some(i32::try_from(report.rule_count).unwrap_or(i32::MAX)),
        rule_problems: report.problems.clone(),
        namespace_count: Some(i32::try_from(namespaces.len()).unwrap_or(i32::MAX)),
        namespaces: namespaces.iter().take(MAX_NAMESPACES).cloned().collect(),
        lint_warnings,
    }
}

/// Whether `current` already says what `desired` says (conditions compared as a set).
pub fn up_to_date(
    current: Option<&ClusterBoundaryPolicyStatus>,
    desired: &ClusterBoundaryPolicyStatus,
) -> bool {
    let Some(current) = current else {
        return false;
    };
    let mut a = current.clone();
    let mut b = desired.clone();
    a.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
    b.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
    a == b
}

/// Whether the operator's inject field manager owns the inject label or the annotation of
/// `namespace` (from `metadata.managedFields`).
fn inject_owned(namespace: &Namespace) -> bool {
    namespace
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(objects::OPERATOR_INJECT_FIELD_MANAGER)
                && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| {
            let meta = &f.0["f:metadata"];
            meta["f:labels"]
                .get(format!("f:{}", labels::INJECT))
                .is_some()
                || meta["f:annotations"]
                    .get(format!("f:{}", annotations::INJECT_BEFORE_REQUIRED))
                    .is_some()
        })
}

/// The server-side apply (field manager [`objects::OPERATOR_INJECT_FIELD_MANAGER`], forced) that
/// brings `namespace` to `required` (some cluster policy applying to it has `requireJailing`)
/// or releases what the operator set, or `None` when nothing is to be done. See the module
/// documentation.
pub fn inject_label(namespace: &Namespace, required: bool) -> Option<Value> {
    let name = namespace.name_any();
    let label = namespace.labels().get(labels::INJECT);
    let before = namespace
        .annotations()
        .get(annotations::INJECT_BEFORE_REQUIRED);
    let owned = inject_owned(namespace);
    let apply = |labels: BTreeMap<&str, &str>, annotations: BTreeMap<&str, &str>| {
        let mut metadata = json!({"name": name});
        if !labels.is_empty() {
            metadata["labels"] = json!(labels);
        }
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
    };
    if required {
        let previous = before
            .map(String::as_str)
            .or(label.map(String::as_str))
            .filter(|v| *v != contract::INJECT_REQUIRED);
        let current = label.map(String::as_str) == Some(contract::INJECT_REQUIRED)
            && owned
            && before.map(String::as_str) == previous;
        if current {
            return None;
        }
        return Some(apply(
            BTreeMap::from([(labels::INJECT, contract::INJECT_REQUIRED)]),
            previous
                .map(|p| BTreeMap::from([(annotations::INJECT_BEFORE_REQUIRED, p)]))
                .unwrap_or_default(),
        ));
    }
    let set_by_us =
        owned && (label.map(String::as_str) == Some(contract::INJECT_REQUIRED) || before.is_some());
    if !set_by_us {
        return None;
    }
    // Release: the value from before comes back (owned by this manager until someone changes
    // it), or the label goes unless another manager owns it too.
    Some(apply(
        before
            .map(|b| BTreeMap::from([(labels::INJECT, b.as_str())]))
            .unwrap_or_default(),
        BTreeMap::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile_cluster;
    use boundary_api::crd::{ClusterBoundaryPolicy, RuleProblem};
    use k8s_openapi::jiff::Timestamp;
    use std::sync::Arc;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cluster(spec: &Value) -> CompiledCluster {
        let cbp: ClusterBoundaryPolicy = serde_json::from_value(json!({
            "apiVersion": "agentboundary.dev/v1alpha1",
            "kind": "ClusterBoundaryPolicy",
            "metadata": {"name": "org", "uid": "u", "generation": 4},
            "spec": spec,
        }))
        .unwrap();
        compile_cluster(&cbp)
    }

    fn namespace(name: &str, labels: &Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    #[test]
    fn namespaces_are_selected_by_labels_except_the_excluded_and_terminating() {
        let org = cluster(&json!({"namespaceSelector": {"matchExpressions": [
            {"key": "team", "operator": "In", "values": ["agents", "ml"]}]},
            "podSelector": {}, "deny": ["domain=pastebin.com"]}));
        let mut gone: Namespace = (*namespace("gone", &json!({"team": "ml"}))).clone();
        gone.metadata.deletion_timestamp = Some(time(1));
        let all = vec![
            namespace("b", &json!({"team": "ml"})),
            namespace("a", &json!({"team": "agents"})),
            namespace("other", &json!({"team": "web"})),
            namespace("bare", &json!({})),
            namespace("boundary-system", &json!({"team": "agents"})),
            namespace("kube-system", &json!({"team": "agents"})),
            namespace("infra", &json!({"team": "agents"})),
            Arc::new(gone),
        ];
        let excluded = Excluded::new(Some("boundary-system"), &["infra".into(), " ".into()]);
        assert_eq!(selected_namespaces(&org, &all, &excluded), ["a", "b"]);
        let everything = cluster(&json!({"namespaceSelector": {}, "podSelector": {}}));
        assert_eq!(
            selected_namespaces(&everything, &all, &excluded),
            ["a", "b", "bare", "other"]
        );
        let both = [everything, org];
        let names: Vec<_> = applying(&both, &all[0], &excluded)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(applying(&both, &all[5], &excluded).is_empty());
    }

    fn ready(s: &ClusterBoundaryPolicyStatus) -> (&str, &str, &str) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition_types::READY)
            .unwrap();
        (&c.status, &c.reason, &c.message)
    }

    #[test]
    fn status_counts_namespaces_bounds_the_list_and_waits_for_publication() {
        let org = cluster(&json!({"namespaceSelector": {}, "podSelector": {},
                                   "deny": ["domain=pastebin.com"], "allow": ["domain=a.com"]}));
        let names: Vec<String> = (0..60).map(|i| format!("ns-{i:02}")).collect();
        let waiting = desired_status(&org, &names, &names[..2], None, &time(10));
        assert_eq!(waiting.namespace_count, Some(60));
        assert_eq!(waiting.namespaces.len(), MAX_NAMESPACES);
        assert_eq!(waiting.namespaces[0], "ns-00");
        assert_eq!(waiting.rule_count, Some(2));
        assert_eq!(waiting.observed_generation, Some(4));
        let (state, reason, message) = ready(&waiting);
        assert_eq!((state, reason), ("False", reasons::PUBLISHING));
        assert!(message.contains("ns-00, ns-01"), "{message}");
        let done = desired_status(&org, &names, &[], Some(&waiting), &time(20));
        assert_eq!(ready(&done).0, "True");
        assert!(
            ready(&done).2.contains("60 namespace(s)"),
            "{:?}",
            ready(&done)
        );
        assert!(!up_to_date(Some(&waiting), &done));
        assert!(up_to_date(Some(&done), &done));
        // Same status again later: the transition times stay.
        let again = desired_status(&org, &names, &[], Some(&done), &time(30));
        assert!(up_to_date(Some(&done), &again));
        let serialized = serde_json::to_value(&done).unwrap();
        assert_eq!(serialized["namespaceCount"], 60);
        let none = desired_status(&org, &[], &[], None, &time(1));
        assert_eq!(ready(&none).0, "True");
        assert!(!serde_json::to_value(&none).unwrap()["namespaces"].is_array());
    }

    #[test]
    fn invalid_rules_are_reported_with_positions_and_not_ready() {
        let org = cluster(&json!({"namespaceSelector": {}, "podSelector": {},
                                   "deny": ["domain=pastebin.com", "domain=x.* method=GET"]}));
        let s = desired_status(&org, &["a".into()], &[], None, &time(1));
        assert_eq!(
            s.rule_problems,
            [RuleProblem {
                field: "spec.deny[1]".into(),
                column: Some(10),
                message: s.rule_problems[0].message.clone(),
            }]
        );
        let valid = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition_types::RULES_VALID)
            .unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", reasons::INVALID_RULES)
        );
        assert!(
            valid.message.contains("spec.deny[1] column 10"),
            "{}",
            valid.message
        );
        let (state, reason, message) = ready(&s);
        assert_eq!((state, reason), ("False", reasons::INVALID_RULES));
        assert!(message.contains("1 valid deny rule(s)"), "{message}");
        let bad = cluster(&json!({"namespaceSelector": {"matchExpressions": [
            {"key": "a", "operator": "Gt"}]}, "podSelector": {}}));
        let s = desired_status(&bad, &[], &[], None, &time(1));
        assert_eq!(ready(&s).1, reasons::INVALID_SELECTOR);
    }

    /// A namespace as the apiserver returns it after applies: `owners` are the field managers
    /// (operation Apply) that own the inject label.
    fn labelled(label: Option<&str>, before: Option<&str>, owners: &[&str]) -> Namespace {
        let mut ns = json!({"metadata": {"name": "team-a", "labels": {}, "annotations": {}}});
        if let Some(v) = label {
            ns["metadata"]["labels"][labels::INJECT] = json!(v);
        }
        if let Some(v) = before {
            ns["metadata"]["annotations"][annotations::INJECT_BEFORE_REQUIRED] = json!(v);
        }
        ns["metadata"]["managedFields"] = owners
            .iter()
            .map(|m| {
                json!({"manager": m, "operation": "Apply", "apiVersion": "v1",
                       "fieldsType": "FieldsV1",
                       "fieldsV1": {"f:metadata": {"f:labels": {format!("f:{}", labels::INJECT): {}}}}})
            })
            .collect();
        serde_json::from_value(ns).unwrap()
    }

    fn body_labels(body: &Value) -> (Value, Value) {
        (
            body["metadata"]["labels"].clone(),
            body["metadata"]["annotations"].clone(),
        )
    }

    #[test]
    fn require_jailing_takes_the_label_over_and_gives_the_old_value_back() {
        let us = objects::OPERATOR_INJECT_FIELD_MANAGER;
        // A namespace the owner opted in: required, remembering `enabled`.
        let body = inject_label(&labelled(Some("enabled"), None, &["kubectl"]), true).unwrap();
        assert_eq!(body["metadata"]["name"], "team-a");
        assert_eq!(
            body_labels(&body),
            (
                json!({labels::INJECT: "required"}),
                json!({annotations::INJECT_BEFORE_REQUIRED: "enabled"})
            )
        );
        // Applied: nothing more to do while required.
        let applied = labelled(Some("required"), Some("enabled"), &[us]);
        assert_eq!(inject_label(&applied, true), None);
        // No longer required: `enabled` comes back, the annotation goes.
        let body = inject_label(&applied, false).unwrap();
        assert_eq!(
            body_labels(&body),
            (json!({labels::INJECT: "enabled"}), Value::Null)
        );
        // Given back: stable.
        let restored = labelled(Some("enabled"), None, &[us]);
        assert_eq!(inject_label(&restored, false), None);

        // A namespace without the label: required, then the label goes again.
        let body = inject_label(&labelled(None, None, &[]), true).unwrap();
        assert_eq!(body_labels(&body).1, Value::Null);
        let applied = labelled(Some("required"), None, &[us]);
        assert_eq!(inject_label(&applied, true), None);
        let body = inject_label(&applied, false).unwrap();
        assert_eq!(body_labels(&body), (Value::Null, Value::Null));

        // `required` set by an administrator: shared while required, never removed by us.
        let by_hand = labelled(Some("required"), None, &["kubectl-label"]);
        let body = inject_label(&by_hand, true).unwrap();
        assert_eq!(body_labels(&body).0, json!({labels::INJECT: "required"}));
        assert_eq!(inject_label(&by_hand, false), None);
        // Co-owned, then released: the apply drops only our claim (the apiserver keeps the
        // value the other manager owns).
        let shared = labelled(Some("required"), None, &["kubectl-label", us]);
        assert_eq!(inject_label(&shared, true), None);
        assert_eq!(
            body_labels(&inject_label(&shared, false).unwrap()),
            (Value::Null, Value::Null)
        );
        // `disabled` by the owner, never required: untouched.
        assert_eq!(
            inject_label(&labelled(Some("disabled"), None, &["kubectl"]), false),
            None
        );
    }
}

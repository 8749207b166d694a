//! The nodes a pod can land on. Admission runs before scheduling, so the planner reasons over
//! every node the scheduler could pick: `nodeName`, `nodeSelector`, required node affinity and
//! taints the pod does not tolerate narrow the cache; EKS Fargate pods go to a virtual node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

use boundary_api::nodes::NodeFacts;

/// Label EKS puts on pods that a Fargate profile selected.
pub const FARGATE_PROFILE_LABEL: &str = "eks.amazonaws.com/fargate-profile";
/// Scheduler of EKS Fargate pods.
pub const FARGATE_SCHEDULER: &str = "fargate-scheduler";

/// Where the pod can run.
#[derive(Debug)]
pub enum Candidates<'a> {
    /// EKS Fargate: a micro-VM of its own.
    Fargate(NodeFacts),
    /// `nodeName` names a node the cache does not know.
    UnknownNode(NodeFacts),
    /// These nodes of the cache (possibly none).
    Nodes(Vec<&'a NodeFacts>),
}

/// Whether the pod runs on EKS Fargate.
pub fn is_fargate(spec: &PodSpec, labels: &BTreeMap<String, String>) -> bool {
    spec.scheduler_name.as_deref() == Some(FARGATE_SCHEDULER)
        || labels.contains_key(FARGATE_PROFILE_LABEL)
}

/// The candidate nodes of a pod.
pub fn candidates<'a>(
    spec: &PodSpec,
    labels: &BTreeMap<String, String>,
    nodes: &'a [NodeFacts],
) -> Candidates<'a> {
    if is_fargate(spec, labels) {
        return Candidates::Fargate(NodeFacts::fargate(nodes));
    }
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return match nodes.iter().find(|n| n.name == name) {
            Some(node) => Candidates::Nodes(vec![node]),
            None => Candidates::UnknownNode(NodeFacts::unknown(name)),
        };
    }
    Candidates::Nodes(nodes.iter().filter(|n| schedulable_on(spec, n)).collect())
}

/// Whether the scheduler could put the pod on `node`, as far as labels and taints go.
pub fn schedulable_on(spec: &PodSpec, node: &NodeFacts) -> bool {
    if !tolerated(spec, node) {
        return false;
    }
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| node.labels.get(k) == Some(v)));
    let affinity_ok = required_node_affinity(spec).is_none_or(|required| {
        required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node))
    });
    selector_ok && affinity_ok
}

/// The pod's required node affinity (`requiredDuringSchedulingIgnoredDuringExecution`).
pub(crate) fn required_node_affinity(spec: &PodSpec) -> Option<&NodeSelector> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
}

/// Whether the pod tolerates the node's cordon and its `NoSchedule`/`NoExecute` taints.
pub(crate) fn tolerated(spec: &PodSpec, node: &NodeFacts) -> bool {
    if node.unschedulable && !tolerates_unschedulable(spec) {
        return false;
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn tolerates_unschedulable(spec: &PodSpec) -> bool {
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    spec.tolerations
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|t| tolerates(t, &taint))
}

/// A node selector term: every expression and field must match (an empty term matches nothing,
/// as in the scheduler).
fn term_matches(term: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, value)
        })
}

pub(crate) fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        // The apiserver validates operators; an unknown one matches nothing.
        _ => false,
    }
}

/// Toleration semantics of the scheduler.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        // An empty key with Exists tolerates everything.
        return operator == "Exists" && effect_ok;
    }
    if key != taint.key || !effect_ok {
        return false;
    }
    match operator {
        "Exists" => true,
        _ => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: &[(&str, &str)], taints: &serde_json::Value) -> NodeFacts {
        let node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()},
            "spec": {"taints": taints},
        }))
        .unwrap();
        NodeFacts::from_node(&node)
    }

    fn names(spec: serde_json::Value, nodes: &[NodeFacts]) -> Vec<String> {
        let spec: PodSpec = serde_json::from_value(spec).unwrap();
        match candidates(&spec, &BTreeMap::new(), nodes) {
            Candidates::Nodes(n) => n.iter().map(|n| n.name.clone()).collect(),
            Candidates::Fargate(_) => vec!["fargate".into()],
            Candidates::UnknownNode(n) => vec![format!("unknown:{}", n.name)],
        }
    }

    #[test]
    fn selectors_affinity_and_taints_narrow_the_nodes() {
        let nodes = [
            node("a", &[("pool", "x"), ("zone", "1")], &json!([])),
            node("b", &[("pool", "y"), ("zone", "2")], &json!([])),
            node(
                "gpu",
                &[("pool", "x"), ("zone", "3")],
                &json!([{"key": "gpu", "value": "true", "effect": "NoSchedule"}]),
            ),
            node(
                "soft",
                &[("pool", "y")],
                &json!([{"key": "soft", "effect": "PreferNoSchedule"}]),
            ),
        ];
        let c = json!({"containers": []});
        assert_eq!(names(c, &nodes), ["a", "b", "soft"]);
        assert_eq!(
            names(
                json!({"containers": [], "nodeSelector": {"pool": "x"}}),
                &nodes
            ),
            ["a"]
        );
        assert_eq!(
            names(
                json!({"containers": [], "nodeSelector": {"pool": "x"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}),
                &nodes
            ),
            ["a", "gpu"]
        );
        assert_eq!(
            names(
                json!({"containers": [], "tolerations": [{"key": "gpu", "value": "false", "effect": "NoSchedule"}]}),
                &nodes
            ),
            ["a", "b", "soft"]
        );
        assert_eq!(
            names(
                json!({"containers": [], "tolerations": [{"operator": "Exists"}]}),
                &nodes
            )
            .len(),
            4
        );
        let affinity = json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["2", "3"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}
        ]}}}});
        assert_eq!(names(affinity, &nodes), ["a", "b"]);
        let numeric = json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["1"]}, {"key": "pool", "operator": "NotIn", "values": ["x"]}]}
        ]}}}});
        assert_eq!(names(numeric, &nodes), ["b"]);
        let empty_term = json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}});
        assert!(names(empty_term, &nodes).is_empty());
    }

    #[test]
    fn node_name_and_fargate_decide_alone() {
        let nodes = [node("a", &[], &json!([]))];
        assert_eq!(
            names(json!({"containers": [], "nodeName": "a"}), &nodes),
            ["a"]
        );
        assert_eq!(
            names(json!({"containers": [], "nodeName": "z"}), &nodes),
            ["unknown:z"]
        );
        assert_eq!(
            names(
                json!({"containers": [], "schedulerName": "fargate-scheduler"}),
                &nodes
            ),
            ["fargate"]
        );
        let spec: PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
        let labels = BTreeMap::from([(FARGATE_PROFILE_LABEL.to_owned(), "default".to_owned())]);
        assert!(matches!(
            candidates(&spec, &labels, &nodes),
            Candidates::Fargate(_)
        ));
    }

    #[test]
    fn cordoned_nodes_are_not_candidates() {
        let mut cordoned = node("c", &[], &json!([]));
        cordoned.unschedulable = true;
        let nodes = [cordoned, node("a", &[], &json!([]))];
        assert_eq!(names(json!({"containers": []}), &nodes), ["a"]);
    }
}

//! The node cache grouped for the planner, built once when the nodes change (not per review):
//! nodes the planner cannot tell apart (same facts, taints, cordon, and the same labels apart
//! from per-node ones such as `kubernetes.io/hostname`) form one class, so a review costs the
//! number of classes, not of nodes. Labels with many distinct values are indexed by value
//! instead, and `nodeName`, `nodeSelector` and required node affinity stay exact: a class is
//! taken whole, not at all, or as the members an index names. The semantics are those of
//! [`crate::candidates`] (the per-node computation), which a property test compares against.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use boundary_api::Tier;
use boundary_api::contract::node_labels;
use boundary_api::nodes::NodeFacts;

use crate::candidates::{self, is_fargate};

/// A label key with more distinct values than this across the nodes is indexed by value rather
/// than split into classes (hostnames, instance IDs, IPs).
pub const PER_NODE_LABEL_VALUES: usize = 32;

/// Node indexes (into [`NodeClasses::nodes`]) by a label value or a name, ascending.
type ValueIndex = HashMap<String, Vec<usize>>;

/// The nodes of the cluster, grouped into classes.
#[derive(Debug)]
pub struct NodeClasses {
    nodes: Vec<NodeFacts>,
    /// Members of each class, ascending; the first stands for the class.
    classes: Vec<Vec<usize>>,
    /// The class of each node.
    class_of: Vec<usize>,
    /// Per-node label keys: their values, indexed.
    per_node: HashMap<String, ValueIndex>,
    /// Nodes by name.
    by_name: ValueIndex,
    /// The virtual node of EKS Fargate pods (it depends on the Fargate nodes running now).
    fargate: NodeFacts,
}

impl Default for NodeClasses {
    /// No nodes.
    fn default() -> Self {
        NodeClasses::new(Vec::new())
    }
}

/// Label keys the planner reads itself (pinning to a tier): always part of the class.
fn read_by_planner(key: &str) -> bool {
    [Tier::Userns, Tier::PrivilegedNetns, Tier::Landlock]
        .iter()
        .any(|t| node_labels::for_tier(*t) == key)
}

impl NodeClasses {
    /// Groups `nodes` (their order is kept for everything the planner lists by node).
    pub fn new(nodes: Vec<NodeFacts>) -> NodeClasses {
        NodeClasses::with_per_node_threshold(nodes, PER_NODE_LABEL_VALUES)
    }

    /// Groups `nodes`, indexing label keys with more than `per_node_above` distinct values.
    /// The threshold changes the cost, never the answers (tests use small ones).
    pub fn with_per_node_threshold(nodes: Vec<NodeFacts>, per_node_above: usize) -> NodeClasses {
        let mut by_key: HashMap<&str, ValueIndex> = HashMap::new();
        let mut by_name = ValueIndex::new();
        for (i, node) in nodes.iter().enumerate() {
            for (key, value) in &node.labels {
                by_key
                    .entry(key)
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .push(i);
            }
            by_name.entry(node.name.clone()).or_default().push(i);
        }
        let per_node: HashMap<String, ValueIndex> = by_key
            .into_iter()
            .filter(|(key, values)| values.len() > per_node_above && !read_by_planner(key))
            .map(|(key, values)| (key.to_owned(), values))
            .collect();
        let mut classes: Vec<Vec<usize>> = Vec::new();
        let mut class_of = Vec::with_capacity(nodes.len());
        let mut by_key_text: HashMap<String, usize> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            let class = *by_key_text
                .entry(class_key(node, &per_node))
                .or_insert_with(|| {
                    classes.push(Vec::new());
                    classes.len() - 1
                });
            classes[class].push(i);
            class_of.push(class);
        }
        let fargate = NodeFacts::fargate(&nodes);
        NodeClasses {
            nodes,
            classes,
            class_of,
            per_node,
            by_name,
            fargate,
        }
    }

    /// Every node, in the order given.
    pub fn nodes(&self) -> &[NodeFacts] {
        &self.nodes
    }

    /// How many classes the nodes form.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    fn representative(&self, class: usize) -> &NodeFacts {
        &self.nodes[self.classes[class][0]]
    }

    /// Where a pod can run: [`candidates::candidates`], by class.
    pub fn candidates<'a>(
        &'a self,
        spec: &PodSpec,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Placement<'a> {
        if is_fargate(spec, labels) {
            return Placement::Fargate(self.fargate.clone());
        }
        if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            return match self.by_name.get(name).and_then(|found| found.first()) {
                Some(&i) => Placement::Nodes(vec![Group {
                    facts: &self.nodes[i],
                    len: 1,
                    members: Members::Class {
                        classes: self,
                        class: self.class_of[i],
                        subset: Subset::Only(vec![i]),
                    },
                }]),
                None => Placement::UnknownNode(NodeFacts::unknown(name)),
            };
        }
        let subsets = self.schedulable(spec);
        Placement::Nodes(
            subsets
                .into_iter()
                .enumerate()
                .filter_map(|(class, subset)| {
                    let len = subset.len(self.classes[class].len());
                    (len > 0).then(|| Group {
                        facts: self.representative(class),
                        len,
                        members: Members::Class {
                            classes: self,
                            class,
                            subset,
                        },
                    })
                })
                .collect(),
        )
    }

    /// The members of each class the scheduler could put the pod on.
    fn schedulable(&self, spec: &PodSpec) -> Vec<Subset> {
        let mut subsets: Vec<Subset> = (0..self.classes.len())
            .map(|class| {
                Subset::all_or_none(candidates::tolerated(spec, self.representative(class)))
            })
            .collect();
        for (key, value) in spec.node_selector.iter().flatten() {
            let equal = NodeSelectorRequirement {
                key: key.clone(),
                operator: "In".into(),
                values: Some(vec![value.clone()]),
            };
            let matching = self.label_requirement(&equal);
            and_each(&mut subsets, matching);
        }
        let required = candidates::required_node_affinity(spec);
        if let Some(required) = required {
            let mut any: Vec<Subset> = vec![Subset::none(); self.classes.len()];
            for term in &required.node_selector_terms {
                let matching = self.term(term);
                for (a, m) in any.iter_mut().zip(matching) {
                    *a = std::mem::take(a).or(m);
                }
            }
            and_each(&mut subsets, any);
        }
        subsets
    }

    /// The members of each class a node selector term matches (an empty term matches none).
    fn term(&self, term: &NodeSelectorTerm) -> Vec<Subset> {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if expressions.is_empty() && fields.is_empty() {
            return vec![Subset::none(); self.classes.len()];
        }
        let mut subsets = vec![Subset::All; self.classes.len()];
        for r in expressions {
            let matching = self.label_requirement(r);
            and_each(&mut subsets, matching);
        }
        for r in fields {
            let matching = if r.key == "metadata.name" {
                self.indexed(r, &self.by_name, |_| true)
            } else {
                self.uniform(r, |_| None)
            };
            and_each(&mut subsets, matching);
        }
        subsets
    }

    /// The members of each class a requirement on a label matches.
    fn label_requirement(&self, r: &NodeSelectorRequirement) -> Vec<Subset> {
        match self.per_node.get(&r.key) {
            None => self.uniform(r, |rep| rep.labels.get(&r.key).map(String::as_str)),
            Some(index) => self.indexed(r, index, |rep| rep.labels.contains_key(&r.key)),
        }
    }

    /// A requirement on a value every member of a class shares (`value` of its first).
    fn uniform<'s>(
        &'s self,
        r: &NodeSelectorRequirement,
        value: impl Fn(&'s NodeFacts) -> Option<&'s str>,
    ) -> Vec<Subset> {
        (0..self.classes.len())
            .map(|class| {
                Subset::all_or_none(candidates::requirement_matches(
                    r,
                    value(self.representative(class)),
                ))
            })
            .collect()
    }

    /// A requirement on a value that differs between members, found through `index`. Whether
    /// members have the value at all is the same across a class (`has`, of its first).
    fn indexed(
        &self,
        r: &NodeSelectorRequirement,
        index: &ValueIndex,
        has: impl Fn(&NodeFacts) -> bool,
    ) -> Vec<Subset> {
        let with_value: Vec<bool> = (0..self.classes.len())
            .map(|class| has(self.representative(class)))
            .collect();
        let values = r.values.as_deref().unwrap_or_default();
        // The nodes each listed (or, for other operators, matching) value names, by class.
        let mut hits: Vec<Vec<usize>> = vec![Vec::new(); self.classes.len()];
        let mut collect = |nodes: &[usize]| {
            for &i in nodes {
                hits[self.class_of[i]].push(i);
            }
        };
        let operator = r.operator.as_str();
        match operator {
            "In" | "NotIn" => {
                for value in values {
                    collect(index.get(value).map_or(&[][..], Vec::as_slice));
                }
            }
            // Whether the value exists is the same across a class.
            "Exists" | "DoesNotExist" => {}
            _ => {
                for (value, nodes) in index {
                    if candidates::requirement_matches(r, Some(value)) {
                        collect(nodes);
                    }
                }
            }
        }
        with_value
            .into_iter()
            .zip(hits)
            .map(|(has_value, mut hits)| {
                if !has_value {
                    return Subset::all_or_none(candidates::requirement_matches(r, None));
                }
                hits.sort_unstable();
                hits.dedup();
                match operator {
                    "NotIn" => Subset::Except(hits),
                    "Exists" | "DoesNotExist" => {
                        Subset::all_or_none(candidates::requirement_matches(r, Some("")))
                    }
                    // In, and the operators matched value by value above.
                    _ => Subset::Only(hits),
                }
            })
            .collect()
    }
}

/// The text that is equal for two nodes exactly when the planner cannot tell them apart.
fn class_key(node: &NodeFacts, per_node: &HashMap<String, ValueIndex>) -> String {
    // Per-node labels count by presence only (their values are indexed).
    let labels: Vec<(&String, Option<&String>)> = node
        .labels
        .iter()
        .map(|(k, v)| (k, (!per_node.contains_key(k)).then_some(v)))
        .collect();
    format!(
        "{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
        node.os,
        node.kernel,
        node.userns,
        node.tiers,
        node.seccomp_profile,
        node.source,
        node.taints,
        node.unschedulable,
        labels
    )
}

fn and_each(subsets: &mut [Subset], other: Vec<Subset>) {
    for (s, o) in subsets.iter_mut().zip(other) {
        *s = std::mem::take(s).and(o);
    }
}

/// Which members of one class: all, only these, or all but these (node indexes, ascending,
/// each a member of the class).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subset {
    All,
    Only(Vec<usize>),
    Except(Vec<usize>),
}

impl Default for Subset {
    fn default() -> Self {
        Subset::none()
    }
}

impl Subset {
    fn none() -> Subset {
        Subset::Only(Vec::new())
    }

    fn all_or_none(all: bool) -> Subset {
        if all { Subset::All } else { Subset::none() }
    }

    fn len(&self, class_len: usize) -> usize {
        match self {
            Subset::All => class_len,
            Subset::Only(v) => v.len(),
            Subset::Except(v) => class_len - v.len(),
        }
    }

    fn and(self, other: Subset) -> Subset {
        match (self, other) {
            (Subset::All, x) | (x, Subset::All) => x,
            (Subset::Only(a), Subset::Only(b)) => Subset::Only(intersection(&a, &b)),
            (Subset::Only(a), Subset::Except(b)) | (Subset::Except(b), Subset::Only(a)) => {
                Subset::Only(difference(&a, &b))
            }
            (Subset::Except(a), Subset::Except(b)) => Subset::Except(union(&a, &b)),
        }
    }

    fn or(self, other: Subset) -> Subset {
        match (self, other) {
            (Subset::All, _) | (_, Subset::All) => Subset::All,
            (Subset::Only(a), Subset::Only(b)) => Subset::Only(union(&a, &b)),
            (Subset::Only(a), Subset::Except(b)) | (Subset::Except(b), Subset::Only(a)) => {
                Subset::Except(difference(&b, &a))
            }
            (Subset::Except(a), Subset::Except(b)) => Subset::Except(intersection(&a, &b)),
        }
    }
}

fn intersection(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter()
        .copied()
        .filter(|x| b.binary_search(x).is_ok())
        .collect()
}

fn difference(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter()
        .copied()
        .filter(|x| b.binary_search(x).is_err())
        .collect()
}

fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut all: Vec<usize> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Where a pod can run.
#[derive(Debug)]
pub enum Placement<'a> {
    /// EKS Fargate: a micro-VM of its own.
    Fargate(NodeFacts),
    /// `nodeName` names a node the cache does not know.
    UnknownNode(NodeFacts),
    /// These nodes of the cache, by class (possibly none); no group is empty.
    Nodes(Vec<Group<'a>>),
}

/// Candidate nodes the planner cannot tell apart.
#[derive(Debug)]
pub struct Group<'a> {
    /// The facts they share (those of one of them; its name is its own).
    pub facts: &'a NodeFacts,
    /// How many nodes.
    pub len: usize,
    members: Members<'a>,
}

#[derive(Debug)]
enum Members<'a> {
    /// Just the node of `facts` (one outside the cache).
    Itself,
    /// Members of a class of the cache.
    Class {
        classes: &'a NodeClasses,
        class: usize,
        subset: Subset,
    },
}

impl<'a> Group<'a> {
    /// The group of one node outside the cache (Fargate's, or an unknown one).
    pub fn single(facts: &'a NodeFacts) -> Group<'a> {
        Group {
            facts,
            len: 1,
            members: Members::Itself,
        }
    }

    /// The nodes with their index in the cache (`usize::MAX` outside it).
    fn members(&self) -> Vec<(usize, &'a NodeFacts)> {
        match &self.members {
            Members::Itself => vec![(usize::MAX, self.facts)],
            Members::Class {
                classes,
                class,
                subset,
            } => {
                let all = &classes.classes[*class];
                let indexes: Vec<usize> = match subset {
                    Subset::All => all.clone(),
                    Subset::Only(v) => v.clone(),
                    Subset::Except(v) => difference(all, v),
                };
                indexes
                    .into_iter()
                    .map(|i| (i, &classes.nodes[i]))
                    .collect()
            }
        }
    }
}

/// Every node of `groups`, in the order of the cache (what listing them by node shows).
pub fn nodes_of<'a>(groups: &[&Group<'a>]) -> Vec<&'a NodeFacts> {
    let mut all: Vec<(usize, &NodeFacts)> = groups.iter().flat_map(|g| g.members()).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::candidates::Candidates;
    use proptest::prelude::*;

    fn node(name: &str, labels: &BTreeMap<String, String>, taint: Option<&str>) -> NodeFacts {
        let node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taint.map(|t| vec![serde_json::json!({"key": t, "value": "true", "effect": "NoSchedule"})]).unwrap_or_default()},
        }))
        .unwrap();
        NodeFacts::from_node(&node)
    }

    /// Names the old per-node computation gives.
    fn per_node(spec: &PodSpec, nodes: &[NodeFacts]) -> Vec<String> {
        match candidates::candidates(spec, &BTreeMap::new(), nodes) {
            Candidates::Nodes(n) => n.iter().map(|n| n.name.clone()).collect(),
            Candidates::Fargate(n) => vec![format!("fargate:{n:?}")],
            Candidates::UnknownNode(n) => vec![format!("unknown:{}", n.name)],
        }
    }

    /// Names the class-based computation gives.
    fn by_class(spec: &PodSpec, classes: &NodeClasses) -> Vec<String> {
        match classes.candidates(spec, &BTreeMap::new()) {
            Placement::Nodes(groups) => {
                for g in &groups {
                    assert_eq!(g.len, g.members().len(), "group size");
                    assert!(g.len > 0, "empty group");
                }
                nodes_of(&groups.iter().collect::<Vec<_>>())
                    .iter()
                    .map(|n| n.name.clone())
                    .collect()
            }
            Placement::Fargate(n) => vec![format!("fargate:{n:?}")],
            Placement::UnknownNode(n) => vec![format!("unknown:{}", n.name)],
        }
    }

    const KEYS: &[&str] = &["pool", "zone", "kubernetes.io/hostname", "size"];
    const VALUES: &[&str] = &["a", "b", "c", "1", "5", "12"];
    const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Bogus"];

    fn cluster() -> impl Strategy<Value = Vec<NodeFacts>> {
        prop::collection::vec(
            (
                prop::collection::btree_map(0..3usize, 0..VALUES.len(), 0..3),
                prop::option::of(prop::sample::select(vec!["gpu", "spot"])),
                any::<bool>(),
                any::<bool>(),
            ),
            0..24,
        )
        .prop_map(|nodes| {
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, (labels, taint, hostname, cordoned))| {
                    let mut labels: BTreeMap<String, String> = labels
                        .into_iter()
                        .map(|(k, v)| {
                            let key = if k == 2 { "size" } else { KEYS[k] };
                            (key.to_owned(), VALUES[v].to_owned())
                        })
                        .collect();
                    if hostname {
                        labels.insert("kubernetes.io/hostname".into(), format!("{}", i % 9));
                    }
                    // Names repeat now and then: the first one wins for nodeName.
                    let mut n = node(&format!("n{}", i % 20), &labels, taint);
                    n.unschedulable = cordoned && i % 3 == 0;
                    n
                })
                .collect()
        })
    }

    fn requirement() -> impl Strategy<Value = serde_json::Value> {
        (
            prop::sample::select(KEYS.to_vec()),
            prop::sample::select(OPERATORS.to_vec()),
            prop::collection::vec(prop::sample::select(VALUES.to_vec()), 0..3),
        )
            .prop_map(|(key, operator, values)| {
                serde_json::json!({"key": key, "operator": operator, "values": values})
            })
    }

    fn field() -> impl Strategy<Value = serde_json::Value> {
        (
            prop::sample::select(vec!["metadata.name", "metadata.other"]),
            prop::sample::select(OPERATORS.to_vec()),
            prop::collection::vec((0..22usize).prop_map(|i| format!("n{i}")), 0..3),
        )
            .prop_map(|(key, operator, values)| {
                serde_json::json!({"key": key, "operator": operator, "values": values})
            })
    }

    fn pod() -> impl Strategy<Value = PodSpec> {
        (
            prop::option::of(prop::collection::btree_map(
                prop::sample::select(KEYS.to_vec()),
                prop::sample::select(VALUES.to_vec()),
                0..3,
            )),
            prop::option::of(prop::collection::vec(
                (
                    prop::collection::vec(requirement(), 0..3),
                    prop::collection::vec(field(), 0..2),
                ),
                0..3,
            )),
            prop::collection::vec(prop::sample::select(vec!["gpu", "spot", "node.kubernetes.io/unschedulable", ""]), 0..2),
            prop::option::weighted(0.15, (0..24usize).prop_map(|i| format!("n{i}"))),
        )
            .prop_map(|(selector, terms, tolerations, node_name)| {
                let terms: Option<Vec<serde_json::Value>> = terms.map(|terms| {
                    terms
                        .into_iter()
                        .map(|(e, f)| serde_json::json!({"matchExpressions": e, "matchFields": f}))
                        .collect()
                });
                let tolerations: Vec<serde_json::Value> = tolerations
                    .into_iter()
                    .map(|key| serde_json::json!({"key": key, "operator": "Exists"}))
                    .collect();
                let mut spec = serde_json::json!({"containers": [], "tolerations": tolerations});
                if let Some(selector) = selector {
                    spec["nodeSelector"] = serde_json::json!(selector);
                }
                if let Some(terms) = terms {
                    spec["affinity"] = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}});
                }
                if let Some(name) = node_name {
                    spec["nodeName"] = serde_json::json!(name);
                }
                serde_json::from_value(spec).unwrap()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The class-based candidates are the per-node ones, in the same order, whatever the
        /// per-node threshold (which only moves labels between classes and indexes).
        #[test]
        fn classes_pick_the_nodes_the_per_node_computation_picks(
            nodes in cluster(),
            spec in pod(),
            threshold in 0..6usize,
        ) {
            let expected = per_node(&spec, &nodes);
            let classes = NodeClasses::with_per_node_threshold(nodes, threshold);
            prop_assert_eq!(by_class(&spec, &classes), expected);
        }
    }

    #[test]
    fn identical_nodes_form_one_class_and_hostnames_are_indexed() {
        let nodes: Vec<NodeFacts> = (0..100)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    &BTreeMap::from([
                        ("kubernetes.io/hostname".into(), format!("n{i}")),
                        ("pool".into(), if i < 60 { "a" } else { "b" }.into()),
                    ]),
                    None,
                )
            })
            .collect();
        let classes = NodeClasses::new(nodes);
        assert_eq!(classes.class_count(), 2);
        let spec: PodSpec = serde_json::from_value(serde_json::json!({"containers": [], "nodeSelector": {"kubernetes.io/hostname": "n70"}})).unwrap();
        assert_eq!(by_class(&spec, &classes), ["n70"]);
    }
}

//! Which policies a review reads, kept so that a review costs the policies that concern its pod,
//! not every policy of the cluster. Both views ([`crate::admit::StaticView`] and the live one in
//! [`crate::cache`]) hold these indexes; the live one rebuilds them when a policy changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use boundary_api::compiled::Selector;
use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy, compiled_selector};

/// `BoundaryPolicy` objects by namespace.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_namespace: HashMap<String, Arc<[Arc<BoundaryPolicy>]>>,
    none: Arc<[Arc<BoundaryPolicy>]>,
}

impl Policies {
    /// The policies of `namespace`, in the order given.
    pub fn in_namespace(&self, namespace: &str) -> Arc<[Arc<BoundaryPolicy>]> {
        self.by_namespace
            .get(namespace)
            .unwrap_or(&self.none)
            .clone()
    }
}

impl FromIterator<Arc<BoundaryPolicy>> for Policies {
    /// Indexes `policies` (one without a namespace is in none).
    fn from_iter<I: IntoIterator<Item = Arc<BoundaryPolicy>>>(policies: I) -> Self {
        let mut by_namespace: HashMap<String, Vec<Arc<BoundaryPolicy>>> = HashMap::new();
        for policy in policies {
            if let Some(namespace) = policy.metadata.namespace.clone() {
                by_namespace.entry(namespace).or_default().push(policy);
            }
        }
        Policies {
            by_namespace: by_namespace
                .into_iter()
                .map(|(namespace, policies)| (namespace, policies.into()))
                .collect(),
            none: Arc::new([]),
        }
    }
}

impl From<Vec<BoundaryPolicy>> for Policies {
    fn from(policies: Vec<BoundaryPolicy>) -> Self {
        policies.into_iter().map(Arc::new).collect()
    }
}

/// `ClusterBoundaryPolicy` objects with their namespace selectors read once, and the ones that
/// select each namespace, worked out on the first review from it and kept while its labels
/// stay the same: a review does not match, let alone copy, every cluster policy.
#[derive(Default)]
pub struct ClusterPolicies {
    all: Vec<(Arc<ClusterBoundaryPolicy>, Selector)>,
    selected: Mutex<HashMap<String, Selected>>,
}

/// The cluster policies selecting a namespace with these labels.
struct Selected {
    labels: BTreeMap<String, String>,
    policies: Arc<[Arc<ClusterBoundaryPolicy>]>,
}

impl ClusterPolicies {
    /// Namespaces remembered at most; past that the memory starts again (namespaces that were
    /// deleted would otherwise stay in it until the next cluster policy change).
    const REMEMBERED: usize = 10_000;

    /// The cluster policies whose `namespaceSelector` selects `namespace`, labelled `labels`, in
    /// the order given. A malformed selector selects nothing (the operator reports it).
    pub fn selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Arc<[Arc<ClusterBoundaryPolicy>]> {
        // A poisoned lock only means another review panicked while holding it; the map is
        // still whole (every write is a single insert or clear).
        let mut selected = self.selected.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = selected.get(namespace)
            && known.labels == *labels
        {
            return known.policies.clone();
        }
        let policies: Arc<[Arc<ClusterBoundaryPolicy>]> = self
            .all
            .iter()
            .filter(|(_, selector)| selector.matches(labels) == Ok(true))
            .map(|(policy, _)| policy.clone())
            .collect();
        if selected.len() >= Self::REMEMBERED && !selected.contains_key(namespace) {
            selected.clear();
        }
        selected.insert(
            namespace.to_owned(),
            Selected {
                labels: labels.clone(),
                policies: policies.clone(),
            },
        );
        policies
    }
}

impl Clone for ClusterPolicies {
    /// The same policies; what was worked out per namespace is worked out again.
    fn clone(&self) -> Self {
        ClusterPolicies {
            all: self.all.clone(),
            selected: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for ClusterPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPolicies")
            .field("policies", &self.all.len())
            .finish_non_exhaustive()
    }
}

impl FromIterator<Arc<ClusterBoundaryPolicy>> for ClusterPolicies {
    fn from_iter<I: IntoIterator<Item = Arc<ClusterBoundaryPolicy>>>(policies: I) -> Self {
        ClusterPolicies {
            all: policies
                .into_iter()
                .map(|policy| {
                    let selector = compiled_selector(&policy.spec.namespace_selector);
                    (policy, selector)
                })
                .collect(),
            selected: Mutex::default(),
        }
    }
}

impl From<Vec<ClusterBoundaryPolicy>> for ClusterPolicies {
    fn from(policies: Vec<ClusterBoundaryPolicy>) -> Self {
        policies.into_iter().map(Arc::new).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cluster_policy(name: &str, namespace_selector: &serde_json::Value) -> ClusterBoundaryPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agentboundary.dev/v1alpha1", "kind": "ClusterBoundaryPolicy",
            "metadata": {"name": name},
            "spec": {"namespaceSelector": namespace_selector, "podSelector": {}, "deny": ["domain=pastebin.com"]}
        }))
        .unwrap()
    }

    fn names(policies: &[Arc<ClusterBoundaryPolicy>]) -> Vec<&str> {
        policies
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// What every review did before the index: each policy's selector read and matched.
    fn matched_one_by_one<'a>(
        policies: &'a [ClusterBoundaryPolicy],
        labels: &BTreeMap<String, String>,
    ) -> Vec<&'a str> {
        policies
            .iter()
            .filter(|p| compiled_selector(&p.spec.namespace_selector).matches(labels) == Ok(true))
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_namespace_gets_the_policies_selecting_its_labels_as_they_are_now() {
        let index = ClusterPolicies::from(vec![
            cluster_policy("everyone", &serde_json::json!({})),
            cluster_policy(
                "agents",
                &serde_json::json!({"matchLabels": {"team": "agents"}}),
            ),
            cluster_policy(
                "not-sandbox",
                &serde_json::json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["sandbox"]}]}),
            ),
            cluster_policy(
                "malformed",
                &serde_json::json!({"matchExpressions": [{"key": "team", "operator": "Near", "values": ["agents"]}]}),
            ),
        ]);
        let agents = labels(&[("team", "agents")]);
        assert_eq!(
            names(&index.selecting("a", &agents)),
            ["everyone", "agents", "not-sandbox"]
        );
        // The same namespace relabelled: what was kept for its old labels is not used.
        let sandbox = labels(&[("team", "agents"), ("env", "sandbox")]);
        assert_eq!(
            names(&index.selecting("a", &sandbox)),
            ["everyone", "agents"]
        );
        assert_eq!(
            names(&index.selecting("a", &BTreeMap::new())),
            ["everyone", "not-sandbox"]
        );
        assert_eq!(
            names(&index.selecting("b", &agents)),
            ["everyone", "agents", "not-sandbox"]
        );
        assert!(
            ClusterPolicies::default()
                .selecting("a", &agents)
                .is_empty()
        );
    }

    #[test]
    fn more_namespaces_than_are_remembered_still_get_their_policies() {
        let index = ClusterPolicies::from(vec![cluster_policy(
            "odd",
            &serde_json::json!({"matchLabels": {"parity": "odd"}}),
        )]);
        for round in 0..2 {
            for i in 0..=ClusterPolicies::REMEMBERED {
                let parity = if i % 2 == 1 { "odd" } else { "even" };
                let selected = index.selecting(&format!("ns-{i}"), &labels(&[("parity", parity)]));
                assert_eq!(selected.len(), i % 2, "namespace {i}, round {round}");
                let remembered = index.selected.lock().unwrap().len();
                assert!(
                    remembered <= ClusterPolicies::REMEMBERED,
                    "{remembered} remembered"
                );
            }
        }
    }

    fn any_selector() -> impl Strategy<Value = serde_json::Value> {
        let key = prop::sample::select(vec!["team", "env", "tier"]);
        let value = prop::sample::select(vec!["a", "b", "c"]);
        let operator = prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Near"]);
        (
            prop::collection::btree_map(key.clone(), value.clone(), 0..2),
            prop::collection::vec((key, operator, prop::collection::vec(value, 0..3)), 0..2),
        )
            .prop_map(|(match_labels, expressions)| {
                let expressions: Vec<serde_json::Value> = expressions
                    .into_iter()
                    .map(|(key, operator, values)| {
                        serde_json::json!({"key": key, "operator": operator, "values": values})
                    })
                    .collect();
                serde_json::json!({"matchLabels": match_labels, "matchExpressions": expressions})
            })
    }

    fn any_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(vec!["team".to_owned(), "env".to_owned(), "tier".to_owned()]),
            prop::sample::select(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]),
            0..3,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Reviews from namespaces that keep or change their labels, in any order, get what
        /// matching every policy's selector one by one gives.
        #[test]
        fn any_review_gets_what_matching_every_policy_gives(
            selectors in prop::collection::vec(any_selector(), 0..8),
            reviews in prop::collection::vec((0..3_usize, any_labels()), 1..20),
        ) {
            let policies: Vec<ClusterBoundaryPolicy> = selectors
                .iter()
                .enumerate()
                .map(|(i, selector)| cluster_policy(&format!("p{i}"), selector))
                .collect();
            let index = ClusterPolicies::from(policies.clone());
            for (namespace, labels) in &reviews {
                let namespace = format!("ns-{namespace}");
                let selected = index.selecting(&namespace, labels);
                prop_assert_eq!(names(&selected), matched_one_by_one(&policies, labels));
            }
        }
    }

    #[test]
    fn namespaced_policies_are_read_by_their_namespace_in_order() {
        let policy = |name: &str, namespace: Option<&str>| -> BoundaryPolicy {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"podSelector": {}}
            }))
            .unwrap()
        };
        let index = Policies::from(vec![
            policy("b", Some("agents")),
            policy("x", Some("other")),
            policy("a", Some("agents")),
            policy("nowhere", None),
        ]);
        let read = |namespace: &str| -> Vec<String> {
            index
                .in_namespace(namespace)
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect()
        };
        assert_eq!(read("agents"), ["b", "a"]);
        assert_eq!(read("other"), ["x"]);
        assert!(read("").is_empty());
        assert!(read("missing").is_empty());
    }
}

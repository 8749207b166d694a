//! The `BoundaryPolicy` custom resource (`agentboundary.dev/v1alpha1`).
//!
//! Doc comments here are the CRD's `kubectl explain` text. The schema must stay structural and
//! free of features newer than Kubernetes 1.20 (no CEL): the cluster tests install it into a real
//! v1.20.2 apiserver.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::compiled;
use crate::credentials::Credential;
use crate::policy::{HttpRule, JailSpec, Mode, PodLocalRule, ResolvePin, TcpRule};

/// Egress policy for AI agents: which pods are jailed, how, and which network requests their
/// jailed processes may make. Everything not allowed is denied (or only recorded, in Audit mode).
// `printcolumn(...)` repeats keys such as `type_` by design of the derive.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agentboundary.dev",
    version = "v1alpha1",
    kind = "BoundaryPolicy",
    plural = "boundarypolicies",
    singular = "boundarypolicy",
    shortname = "bp",
    category = "agentboundary",
    namespaced,
    status = "BoundaryPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "BoundaryPolicy jails the selected pods' agent processes and allows only the listed \
           network requests; everything else is denied and every decision is audited.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Rules",
        type_ = "integer",
        json_path = ".status.ruleCount",
        description = "Number of rules as written, deny rules included (presets not)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].status",
        description = "Every running pod jailed under this policy is proven to enforce it"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.matchedPods",
        priority = "1",
        description = "Pods the webhook jailed under this policy"
    ),
    printcolumn(
        name = "Enforcing",
        type_ = "integer",
        json_path = ".status.enforcedPods",
        priority = "1",
        description = "Running pods whose sidecar reports every jail connected and the current policy loaded"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BoundaryPolicySpec {
    /// Pods of this namespace the policy applies to. Required; `{}` selects every pod. Pods are
    /// jailed only where injection is enabled (label `agentboundary.dev/inject=enabled` on the
    /// namespace or the pod).
    pub pod_selector: LabelSelector,
    /// Names of the containers to jail. Empty: every container of the pod except init
    /// containers and the injected sidecar.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// `Enforce` (default): requests no rule allows are denied. `Audit`: they are allowed and
    /// recorded as would-be denials. When several policies select a pod, Enforce wins.
    #[serde(default)]
    pub mode: Mode,
    /// Named rule sets maintained with the project (`claude-code`, `github-read-only`, `npm`,
    /// ...; `boundary presets show NAME` prints each one's rules). Their allow and deny rules
    /// join this policy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub presets: Vec<String>,
    /// Deny rules in Coder's grammar (`domain=pastebin.com`, `domain=github.com
    /// path=/*/git-receive-pack`): a request one of them matches is denied whatever allows it
    /// (this policy's rules or another's). A TCP, TLS-passthrough or not yet intercepted
    /// connection is denied when a deny rule names its host and port (its method and path are
    /// unseen). Each deny rule is checked on its own: a broken one is reported, the others stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub deny: Vec<String>,
    /// Structured deny rules: the fields of `http` (`tls: Passthrough` excepted), each rule
    /// denying what it matches, e.g. `{domains: [github.com], query: {service:
    /// git-receive-pack}}`. A header or query parameter sent several times matches when any
    /// occurrence does; a query that cannot be decoded matches a query condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_http: Vec<HttpRule>,
    /// Allow rules in Coder's grammar, e.g. `domain=api.anthropic.com` or
    /// `domain=github.com method=GET,HEAD path=/api/*`. Keys: `domain`, `method`, `path`,
    /// `port` (comma-separated lists; a key given twice means either value). The older
    /// `"GET,POST host/path*"` form is accepted too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub allow: Vec<String>,
    /// Structured HTTP(S) allow rules: domains, methods, paths, ports and TLS handling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// Allow rules for plain TCP (ssh, git, databases), by DNS name and port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRule>,
    /// TCP ports on the pod's own loopback (`127.0.0.1:PORT`, `[::1]:PORT`) the jailed
    /// containers may connect to: sidecars of the same pod (database proxies, Docker-in-Docker,
    /// MCP servers). Empty: none. Loopback destinations are decided by these rules only, never
    /// by `allow`, `http` or `tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_local: Vec<PodLocalRule>,
    /// Credentials the agent never holds: the jailed containers see a placeholder in `env`;
    /// the proxy puts the real value (from a Secret of this namespace, or the sidecar's AWS
    /// identity) into requests to `destinations`. A request that carries a placeholder or a real
    /// value anywhere else is denied as a credential leak attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// Names the proxy resolves to fixed addresses (the in-cluster `--resolve`). The proxy never
    /// connects to a private, loopback, link-local or metadata address unless a rule names that
    /// address or network, or it is pinned here for the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolve: Vec<ResolvePin>,
    /// How the pods are jailed: runtime, permitted tiers, node pinning, command wrapping.
    #[serde(default)]
    pub jail: JailSpec,
}

impl BoundaryPolicySpec {
    /// Number of rules as written, shown in `kubectl get bp`: deny rules (they decide requests
    /// as allow rules do) and allow rules of every kind; presets not (each expands into several
    /// rules, listed by `boundary presets show`).
    pub fn rule_count(&self) -> usize {
        self.deny.len()
            + self.deny_http.len()
            + self.allow.len()
            + self.http.len()
            + self.tcp.len()
            + self.pod_local.len()
    }
}

/// Cluster-wide egress rules set by cluster administrators: they apply to the selected pods of
/// every selected namespace under that namespace's own `BoundaryPolicy` objects. Deny rules win
/// over any allow rule; allow rules add to the namespace's. Namespace owners cannot loosen it.
// `printcolumn(...)` repeats keys such as `type_` by design of the derive.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agentboundary.dev",
    version = "v1alpha1",
    kind = "ClusterBoundaryPolicy",
    plural = "clusterboundarypolicies",
    singular = "clusterboundarypolicy",
    shortname = "cbp",
    category = "agentboundary",
    status = "ClusterBoundaryPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "ClusterBoundaryPolicy holds administrators' egress rules for the selected pods of the \
           selected namespaces: its deny rules beat every allow rule, its allow rules add to the \
           namespaces' own BoundaryPolicies, and it can make jailing required.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Required",
        type_ = "boolean",
        json_path = ".spec.requireJailing"
    ),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.namespaceCount",
        description = "Namespaces it applies to"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBoundaryPolicySpec {
    /// Namespaces the policy applies to. Required; `{}` selects every namespace except the
    /// ones the chart excludes (its own, `kube-system`, `webhook.excludeNamespaces`).
    pub namespace_selector: LabelSelector,
    /// Pods of those namespaces it applies to. Required; `{}` selects every pod.
    pub pod_selector: LabelSelector,
    /// `Enforce` (default) or `Audit`. It combines with the namespace's policies like theirs
    /// do: when any policy selecting a pod is `Enforce`, the pod's rules are enforced.
    #[serde(default)]
    pub mode: Mode,
    /// Deny rules in Coder's grammar (`domain=pastebin.com`, `domain=*.github.com method=POST
    /// path=/gists*`): a request one of them matches is denied whatever allows it. A TCP or
    /// TLS-passthrough connection is denied when a deny rule names its host and port (the proxy
    /// cannot see its method or path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub deny: Vec<String>,
    /// Structured deny rules: the fields of `http` (`tls: Passthrough` excepted), each rule
    /// denying what it matches; header and query conditions match when any occurrence does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_http: Vec<HttpRule>,
    /// Named rule sets maintained with the project, added like the policy's own rules (see
    /// `BoundaryPolicy.spec.presets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub presets: Vec<String>,
    /// Allow rules in Coder's grammar, added to those of the namespace's policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub allow: Vec<String>,
    /// Structured HTTP(S) allow rules, added to the namespace's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// Plain TCP allow rules, added to the namespace's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRule>,
    /// Makes jailing required in the selected namespaces: the operator labels them
    /// `agentboundary.dev/inject=required`, so every pod there is jailed or refused and the
    /// pod-level opt-out is ignored.
    #[serde(default)]
    pub require_jailing: bool,
}

impl ClusterBoundaryPolicySpec {
    /// Number of rules as written, deny and allow (presets not: each expands into several).
    pub fn rule_count(&self) -> usize {
        self.deny.len() + self.deny_http.len() + self.allow.len() + self.http.len() + self.tcp.len()
    }
}

/// Observed state of a `ClusterBoundaryPolicy`, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBoundaryPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `RulesValid`: every rule parses. `Ready`: the rules are published into the compiled
    /// policy of every selected namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of rules (deny and allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_count: Option<i32>,
    /// Problems found in the rules, each with its position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_problems: Vec<RuleProblem>,
    /// Number of namespaces the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_count: Option<i32>,
    /// The namespaces it applies to, sorted (at most 50; `namespaceCount` has the total).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Allow rules that open a channel out of the jail (see `LintClean`), at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lint_warnings: Vec<LintWarning>,
}

/// Observed state of a `BoundaryPolicy`, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundaryPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `RulesValid`: every rule parses. `Ready`: the compiled policy is published for the
    /// namespace. `Enforced`: every running pod jailed under this policy is proven to enforce
    /// the published policy (`True`), some are not (`False`, see `notEnforcing`), or nothing
    /// was checked yet (`Unknown`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of rules as written: deny rules (strings and structured), allow strings, HTTP,
    /// TCP and pod-local rules; presets are not counted (each expands into several rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_count: Option<i32>,
    /// Problems found in the rules, each with its position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_problems: Vec<RuleProblem>,
    /// Name of the ConfigMap holding the compiled policy of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// SHA-256 (hex) of the compiled policy last published for this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Number of pods the webhook jailed under this policy (admitted and not deleted, running
    /// or not). Being jailed by the webhook is not proof of enforcement: see `enforcedPods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<i32>,
    /// Pods the webhook jailed under this policy, by tier (counted like `matchedPods`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, i32>,
    /// Running pods jailed under this policy whose sidecar, asked by the operator, reports every
    /// jailed container connected to it and the namespace's current policy (`policyHash`)
    /// loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_pods: Option<i32>,
    /// Running pods jailed under this policy that are not proven to enforce it, and why (at most
    /// 20; the `Enforced` condition's message has the count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enforcing: Vec<NotEnforcingPod>,
    /// What the policy's pods were denied (or would have been, in Audit mode), by destination,
    /// as their sidecars report it: the most frequent 50, each with its count and first and last
    /// time. The input of `boundary suggest --from-status`. Counts are summed over the pods'
    /// sidecars since the policy selected them; after an operator restart a running pod's earlier
    /// denials are counted again only where they are newer than this list's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_destinations: Vec<crate::enforcement::DeniedDestination>,
    /// Allow rules that open a channel out of the jail (a paste site, a request bin, a tunnel, a
    /// public object store, any host, a wildcard TLD, writes to a broad wildcard): warnings, the
    /// rules stay in force. At most 20; the `LintClean` condition has the count. Silenced per
    /// code by the annotation `agentboundary.dev/lint-ignore`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lint_warnings: Vec<LintWarning>,
}

/// An allow rule that opens a channel out of the jail (`boundary check --lint` says the same).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LintWarning {
    /// Path of the rule in the spec, e.g. `spec.allow[2]` or `spec.presets[0] (github)`.
    pub field: String,
    /// `any-host`, `wildcard-tld`, `publish-anywhere` or `broad-write`.
    pub code: String,
    /// The domain pattern warned about.
    pub pattern: String,
    /// Why, and what to do instead.
    pub message: String,
}

/// A running jailed pod that is not proven to enforce its policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotEnforcingPod {
    /// The pod's name.
    pub pod: String,
    /// The jailed container concerned, when the reason is one container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `NoJailConnected` (the container runs without a jail: its image may not run `boundary
    /// run`), `JailFailed` (the jail could not be set up, or was lost), `StalePolicy` (the
    /// sidecar enforces another policy than the published one), `SidecarUnreachable` (the
    /// operator could not read the sidecar's status).
    pub reason: String,
    /// Details and what to do.
    pub message: String,
}

/// A rule that could not be compiled, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleProblem {
    /// Path of the rule in the spec, e.g. `spec.allow[2]` or `spec.http[0].paths[1]`.
    pub field: String,
    /// 1-based column in the rule string where the problem starts, for Coder-grammar rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub column: Option<i32>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Condition types of [`BoundaryPolicyStatus::conditions`].
pub mod condition_types {
    /// The compiled policy is published and reaches the selected pods.
    pub const READY: &str = "Ready";
    /// Every rule of the spec compiles.
    pub const RULES_VALID: &str = "RulesValid";
    /// Every running pod jailed under the policy is proven to enforce it.
    pub const ENFORCED: &str = "Enforced";
    /// No allow rule opens a known channel out of the jail (`False`: see `lintWarnings`; a
    /// warning, the rules are in force).
    pub const LINT_CLEAN: &str = "LintClean";
}

/// The `BoundaryPolicy` CRD object, as installed by the chart and the tests.
pub fn crd() -> CustomResourceDefinition {
    BoundaryPolicy::crd()
}

/// The `ClusterBoundaryPolicy` CRD object, as installed by the chart and the tests.
pub fn cluster_crd() -> CustomResourceDefinition {
    ClusterBoundaryPolicy::crd()
}

/// Every CRD of the API, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![crd(), cluster_crd()]
}

/// One generated CRD file: where the repository keeps it (relative to its root) and the CRD
/// it holds.
#[derive(Clone, Copy, Debug)]
pub struct CrdFile {
    /// Path relative to the repository root.
    pub path: &'static str,
    /// The CRD the file holds.
    pub crd: fn() -> CustomResourceDefinition,
}

/// Where the repository keeps the generated CRD YAML: one file per CRD, as the plain file for
/// `kubectl apply` and the tests and as the Helm chart's copy (Helm installs CRDs from its
/// `crds/` folder). `boundary-crdgen` writes all; a test fails when one differs from
/// [`crd_yaml`] of its CRD.
pub const CRD_FILES: &[CrdFile] = &[
    CrdFile {
        path: "crds/boundarypolicy.yaml",
        crd,
    },
    CrdFile {
        path: "charts/agent-boundary/crds/boundarypolicy.yaml",
        crd,
    },
    CrdFile {
        path: "crds/clusterboundarypolicy.yaml",
        crd: cluster_crd,
    },
    CrdFile {
        path: "charts/agent-boundary/crds/clusterboundarypolicy.yaml",
        crd: cluster_crd,
    },
];

/// `crd` as the YAML document committed in [`CRD_FILES`].
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    let yaml = serde_yaml_ng::to_string(crd)?;
    Ok(format!(
        "# Generated by `cargo run -p boundary-api --features kube --bin boundary-crdgen`; do not edit.\n{yaml}"
    ))
}

/// A Kubernetes label selector in the compiled policy's terms, which the sidecar, the webhook
/// and the operator all match with (`compiled::Selector::matches`); an unknown operator is kept
/// and never matches.
pub fn compiled_selector(selector: &LabelSelector) -> compiled::Selector {
    compiled::Selector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions: selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| compiled::Requirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn schema() -> Value {
        schema_of(&crd())
    }

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let crd = serde_json::to_value(crd).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Walks every subschema and returns the keys used anywhere.
    fn keys(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    out.push(k.clone());
                    keys(child, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| keys(i, out)),
            _ => {}
        }
    }

    #[test]
    fn committed_yaml_matches_the_code() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in CRD_FILES {
            let generated = crd_yaml(&(file.crd)()).unwrap();
            let committed = std::fs::read_to_string(root.join(file.path))
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.path));
            pretty_assertions::assert_eq!(
                committed,
                generated,
                "{} is stale: run `cargo run -p boundary-api --features kube --bin \
                 boundary-crdgen` (it writes every copy)",
                file.path
            );
        }
        // Every CRD is kept in both places, and each file holds the CRD its name says.
        for crd in crds() {
            let plural = crd.spec.names.plural.clone();
            let singular = crd.spec.names.singular.clone().unwrap();
            let paths: Vec<&str> = CRD_FILES
                .iter()
                .filter(|f| (f.crd)().spec.names.plural == plural)
                .map(|f| f.path)
                .collect();
            assert_eq!(
                paths,
                [
                    format!("crds/{singular}.yaml"),
                    format!("charts/agent-boundary/crds/{singular}.yaml")
                ]
            );
        }
    }

    #[test]
    fn schema_uses_nothing_kubernetes_1_20_rejects() {
        for crd in crds() {
            schema_of_crd_uses_nothing_kubernetes_1_20_rejects(&crd);
        }
    }

    fn schema_of_crd_uses_nothing_kubernetes_1_20_rejects(crd: &CustomResourceDefinition) {
        let mut all = Vec::new();
        keys(&schema_of(crd), &mut all);
        for banned in [
            "x-kubernetes-validations",
            "$ref",
            "$schema",
            "definitions",
            "$defs",
            "oneOf",
            "anyOf",
            "allOf",
        ] {
            assert!(
                !all.iter().any(|k| k == banned),
                "schema uses {banned}, which is not structural or not in Kubernetes 1.20"
            );
        }
        let crd = serde_json::to_value(crd).unwrap();
        assert!(crd["spec"].get("selectableFields").is_none());
        assert!(crd["spec"]["versions"][0].get("selectableFields").is_none());
    }

    #[test]
    fn every_spec_and_status_field_is_documented() {
        fn check(path: &str, s: &Value, missing: &mut Vec<String>) {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (name, child) in props {
                    let p = format!("{path}.{name}");
                    if child.get("description").is_none() {
                        missing.push(p.clone());
                    }
                    check(&p, child, missing);
                }
            }
            if let Some(items) = s.get("items") {
                check(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        for crd in crds() {
            let s = schema_of(&crd);
            let kind = &crd.spec.names.kind;
            check(
                &format!("{kind}.spec"),
                &s["properties"]["spec"],
                &mut missing,
            );
            check(
                &format!("{kind}.status"),
                &s["properties"]["status"],
                &mut missing,
            );
        }
        // metadata, apiVersion and kind are described by Kubernetes itself.
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    #[test]
    fn names_printer_columns_and_subresources() {
        let crd = serde_json::to_value(crd()).unwrap();
        assert_eq!(
            crd["metadata"]["name"],
            "boundarypolicies.agentboundary.dev"
        );
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["bp"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], crate::contract::VERSION);
        assert_eq!(version["subresources"], json!({"status": {}}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "Mode",
                "Rules",
                "Ready",
                "Enforced",
                "Pods",
                "Enforcing",
                "Age"
            ]
        );
    }

    #[test]
    fn pod_selector_is_required_and_enums_are_closed() {
        let s = schema();
        let spec = &s["properties"]["spec"];
        assert_eq!(spec["required"], json!(["podSelector"]));
        assert_eq!(
            spec["properties"]["mode"]["enum"],
            json!(["Enforce", "Audit"])
        );
        assert_eq!(
            spec["properties"]["jail"]["properties"]["allowedTiers"]["items"]["enum"],
            json!(["userns", "privileged-netns", "landlock"])
        );
    }

    #[test]
    fn pod_local_ports_are_validated_by_the_apiserver_and_documented() {
        let s = schema();
        let pod_local = &s["properties"]["spec"]["properties"]["podLocal"];
        assert_eq!(pod_local["type"], "array");
        let item = &pod_local["items"];
        assert_eq!(item["required"], json!(["ports"]));
        let ports = &item["properties"]["ports"];
        assert_eq!(ports["minItems"], 1);
        assert_eq!(ports["items"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(ports["items"]["maximum"].as_f64(), Some(65535.0));
        assert_eq!(ports["items"]["format"], "int32");
        // `kubectl explain` names every port the operator refuses.
        let text = ports["description"].as_str().unwrap();
        let refused: Vec<String> = crate::contract::ports::NOT_POD_LOCAL
            .iter()
            .map(ToString::to_string)
            .collect();
        let listed = format!("({})", refused.join(", "));
        assert!(text.contains(&listed), "{listed} missing in {text:?}");
    }

    #[test]
    fn cluster_policy_names_columns_and_required_fields() {
        let crd = serde_json::to_value(cluster_crd()).unwrap();
        assert_eq!(
            crd["metadata"]["name"],
            "clusterboundarypolicies.agentboundary.dev"
        );
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cbp"]));
        assert_eq!(crd["spec"]["names"]["categories"], json!(["agentboundary"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], crate::contract::VERSION);
        assert_eq!(version["subresources"], json!({"status": {}}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Mode", "Required", "Namespaces", "Ready", "Age"]);
        let s = schema_of(&cluster_crd());
        let spec = &s["properties"]["spec"];
        assert_eq!(
            spec["required"],
            json!(["namespaceSelector", "podSelector"])
        );
        assert_eq!(
            spec["properties"]["mode"]["enum"],
            json!(["Enforce", "Audit"])
        );
        assert_eq!(spec["properties"]["deny"]["items"]["minLength"], 1);
        assert_eq!(spec["properties"]["requireJailing"]["type"], "boolean");
        // Nothing namespace-specific: containers, pod-local ports and jail settings are the
        // namespace owners' business.
        for absent in ["containers", "podLocal", "jail"] {
            assert!(spec["properties"].get(absent).is_none(), "{absent}");
        }
        let status = &s["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert_eq!(status["namespaces"]["items"]["type"], "string");
    }

    /// Every example parses as the kind it names; both kinds have examples.
    #[test]
    fn examples_parse_as_policies() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let (mut namespaced, mut cluster) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let kind: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
            match kind["kind"].as_str() {
                Some("BoundaryPolicy") => {
                    let bp: BoundaryPolicy = serde_yaml_ng::from_str(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert!(bp.metadata.name.is_some(), "{}", path.display());
                    namespaced += 1;
                }
                Some("ClusterBoundaryPolicy") => {
                    let cbp: ClusterBoundaryPolicy = serde_yaml_ng::from_str(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert!(cbp.metadata.name.is_some(), "{}", path.display());
                    assert!(cbp.metadata.namespace.is_none(), "{}", path.display());
                    cluster += 1;
                }
                other => panic!("{}: unknown kind {other:?}", path.display()),
            }
        }
        assert!(namespaced >= 2, "examples missing in {}", dir.display());
        assert!(
            cluster >= 1,
            "no ClusterBoundaryPolicy in {}",
            dir.display()
        );
    }

    #[test]
    fn a_full_cluster_policy_round_trips() {
        let yaml = r#"
apiVersion: agentboundary.dev/v1alpha1
kind: ClusterBoundaryPolicy
metadata: {name: org}
spec:
  namespaceSelector: {matchLabels: {team: agents}}
  podSelector: {}
  deny: ["domain=pastebin.com", "domain=*.github.com method=POST path=/gists*"]
  allow: ["domain=api.anthropic.com"]
  http: [{domains: ["*.npmjs.org"], methods: [GET]}]
  tcp: [{domain: github.com, ports: [22]}]
  requireJailing: true
"#;
        let cbp: ClusterBoundaryPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        assert!(cbp.spec.require_jailing);
        assert_eq!(cbp.spec.mode, Mode::Enforce);
        assert_eq!(cbp.spec.rule_count(), 5);
        let again: ClusterBoundaryPolicy =
            serde_json::from_value(serde_json::to_value(&cbp).unwrap()).unwrap();
        assert_eq!(again, cbp);
    }

    #[test]
    fn a_full_policy_round_trips() {
        let yaml = r#"
apiVersion: agentboundary.dev/v1alpha1
kind: BoundaryPolicy
metadata: {name: agents, namespace: dev}
spec:
  podSelector: {matchLabels: {app: claude}}
  mode: Audit
  deny: ["domain=github.com method=POST path=/*/*/git-receive-pack"]
  denyHttp: [{domains: [github.com], query: {service: git-receive-pack}}]
  allow: ["domain=api.anthropic.com", "domain=github.com method=GET path=/api/*"]
  http: [{domains: ["*.npmjs.org"], methods: [GET], ports: [443], headers: {X-Agent: "claude*"}}]
  tcp: [{domain: github.com, ports: [22]}]
  podLocal: [{ports: [5432], description: cloud-sql-proxy}]
  jail: {runtime: builtin, allowedTiers: [userns], allowNodePinning: true, wrapCommand: true}
"#;
        let bp: BoundaryPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(bp.spec.mode, Mode::Audit);
        assert_eq!(bp.spec.rule_count(), 7, "deny rules count too");
        assert_eq!(bp.spec.pod_local[0].ports[0].get(), 5432);
        assert!(bp.spec.jail.wrap_command);
        let again: BoundaryPolicy =
            serde_json::from_value(serde_json::to_value(&bp).unwrap()).unwrap();
        assert_eq!(again, bp);
    }
    /// A value for every property of `schema`, at every depth: the last enum value (never the
    /// default), `true`, an in-range number, one-element lists and maps.
    fn sample(schema: &Value) -> Value {
        if let Some(values) = schema["enum"].as_array() {
            return values.last().cloned().unwrap_or(Value::Null);
        }
        match schema["type"].as_str() {
            Some("object") => {
                let mut out = serde_json::Map::new();
                if let Some(props) = schema["properties"].as_object() {
                    for (k, v) in props {
                        out.insert(k.clone(), sample(v));
                    }
                }
                if schema["additionalProperties"].is_object() {
                    out.insert("x-key".into(), sample(&schema["additionalProperties"]));
                }
                Value::Object(out)
            }
            Some("array") => Value::Array(vec![sample(&schema["items"])]),
            Some("integer") => json!(schema["minimum"].as_i64().unwrap_or(0).max(443)),
            Some("boolean") => json!(true),
            _ => json!("a.example.com"),
        }
    }

    /// `boundary run --policy` reads policy files without Kubernetes types
    /// (`crate::policy_file`): every field of both specs' schemas, at every depth, must be
    /// understood there (and mean the same), or a new field would be refused as unknown on a
    /// laptop, or silently differ.
    #[test]
    fn policy_files_understand_every_field_of_both_specs() {
        for (crd, kind, laptop_only_ignored) in [
            (crd(), "BoundaryPolicy", &[][..]),
            (
                cluster_crd(),
                "ClusterBoundaryPolicy",
                &["namespaceSelector", "podSelector", "requireJailing"][..],
            ),
        ] {
            let spec = sample(&schema_of(&crd)["properties"]["spec"]);
            let doc = json!({
                "apiVersion": crate::contract::API_VERSION,
                "kind": kind,
                "metadata": {"name": "p", "namespace": "n"},
                "spec": spec,
            });
            let text = serde_yaml_ng::to_string(&doc).unwrap();
            let file =
                crate::policy_file::parse(&text).unwrap_or_else(|e| panic!("{kind}: {e}\n{text}"));
            let entry = &file.policies[0].entry;
            assert_eq!(entry.cluster, kind == "ClusterBoundaryPolicy");
            let mut read = serde_json::to_value(entry).unwrap();
            let read = read.as_object_mut().unwrap();
            read.remove("name");
            read.remove("cluster");
            let mut expected = spec.as_object().unwrap().clone();
            for ignored in laptop_only_ignored {
                expected.remove(*ignored);
                read.remove(*ignored);
            }
            if entry.cluster {
                // A namespace policy's field, at its default for a cluster policy's entry.
                assert_eq!(read.remove("jail"), Some(json!({})));
            }
            assert_eq!(
                Value::Object(read.clone()),
                Value::Object(expected),
                "{kind}: read differently"
            );
        }
    }
}

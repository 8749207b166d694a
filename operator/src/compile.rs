//! Compiling the `BoundaryPolicy` objects of one namespace into the file the sidecar proxy reads
//! (pure: no I/O), with a report per policy for its status.
//!
//! # Policies with problems
//!
//! A policy whose **rules** do not compile is published *without any allow rules*: its selector,
//! containers, mode and jail settings stay in the file, its allow lists (`presets`, `allow`,
//! `http`, `tcp`, `podLocal`) are emptied. Its deny rules (`deny`, `denyHttp`) are checked one by
//! one, and each that compiles stays (a deny rule only tightens; a typo in one must not drop the
//! others). So
//!
//! * the other policies of the namespace keep working (the proxy's `rule_set` fails for a pod as
//!   soon as one selected entry has bad rules, which would deny everything to every pod the bad
//!   policy selects *and* drop the good rules of the other policies selecting it);
//! * the broken policy fails closed: nothing it would allow is allowed until it is fixed;
//! * an `Enforce` policy with a typo cannot turn a pod that an `Audit` policy also selects into
//!   an audit-only pod, which leaving the entry out of the file would do (Enforce beats Audit
//!   only when both entries are present).
//!
//! A policy whose `resolve` **pins** do not check (a host with a wildcard or an address, an
//! address that is not one: `spec.resolve[0].addresses[1]`) is treated the same way, its pins
//! withheld with its rules: a pin lifts the proxy's private-address guard for its name, so a
//! typo must not half-apply.
//!
//! A policy whose **selector** is malformed (an operator other than `In`, `NotIn`, `Exists`,
//! `DoesNotExist`; the apiserver does not check that inside custom resources) cannot be
//! evaluated at all and is left out of the file (the proxy would otherwise fail for every pod of
//! the namespace). Both cases are reported in the policy's status with the field and column.
//!
//! # Credentials
//!
//! Each credential of `spec.credentials[]` is checked on its own ([`check_credentials`]): its
//! fields (`Credential::apply`), its destinations (by the rule engine, reported at
//! `spec.credentials[i].destinations[j]…`), a name or an environment variable another credential
//! of the policy already has, or one of a credential of another policy (earlier by name) that may
//! select the same containers (`check_across_policies`: a pod would get one placeholder of the
//! two, depending on the order the webhook reads them). An invalid credential is withheld (not in the file, so the proxy
//! never puts it in and the webhook never hands out its placeholder) and reported; the policy's
//! rules and its other credentials are published as usual. A policy whose rules are withheld keeps
//! its valid credentials: they go only into requests some rule allows. Cluster policies have no
//! credentials.
//!
//! # Cluster policies
//!
//! A `ClusterBoundaryPolicy` is compiled once ([`compile_cluster`]) into one entry (`cluster:
//! true`) that goes into the file of every namespace it selects, after the namespace's own
//! entries. With problems it fails closed too, but keeps what only restricts:
//!
//! * invalid **rules** (deny or allow): its allow rules (`presets`, `allow`, `http`, `tcp`) are
//!   all withheld, so a typo can never allow anything; every deny rule that compiles stays, so a
//!   typo in one deny rule does not drop the others (the broken deny rule itself cannot be
//!   enforced and is reported); `requireJailing` still applies;
//! * a malformed **pod selector** or **namespace selector**: it cannot be evaluated and is
//!   published nowhere (as a `BoundaryPolicy` with a malformed selector).

use boundary_api::compiled::{self, CompiledPolicy, FORMAT_VERSION, PolicyEntry};
use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy, LintWarning, RuleProblem};
use boundary_api::credentials::{self, Credential};
use boundary_api::policy::HttpRule;
use boundary_api::rules::{CompileErrors, Rule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

/// The selector operators the proxy understands.
const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// What became of one policy in the compiled file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every rule compiles; the policy is in the file as written.
    Published,
    /// Some rules do not compile; the policy is in the file with no allow rules (fails
    /// closed); a cluster policy keeps the deny rules that compile.
    RulesWithheld,
    /// The selector is malformed; the policy is not in the file.
    Excluded,
}

/// The result for one policy: the facts its status is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    /// The policy's name.
    pub name: String,
    /// `metadata.generation` of the compiled object.
    pub generation: Option<i64>,
    /// Number of rules as written: deny and allow strings, structured HTTP rules of both kinds,
    /// TCP and pod-local rules (presets not: each expands into several).
    pub rule_count: usize,
    /// Every problem found, with its field and column (credentials' problems last).
    pub problems: Vec<RuleProblem>,
    /// What was published.
    pub outcome: Outcome,
    /// Number of credentials as written (`spec.credentials`).
    pub credential_count: usize,
    /// Names of the credentials withheld for their problems (in `problems`).
    pub withheld_credentials: Vec<String>,
    /// The lint's warnings on the published allow rules (none when they are withheld), less
    /// the codes the policy's `agentboundary.dev/lint-ignore` annotation silences.
    pub lint: Vec<LintWarning>,
    /// Words of that annotation that name no code.
    pub lint_unknown: Vec<String>,
}

/// `entry` without what it allows (its presets, allow, HTTP, TCP and pod-local rules, its pins).
fn withheld(entry: PolicyEntry) -> PolicyEntry {
    PolicyEntry {
        presets: Vec::new(),
        allow: Vec::new(),
        http: Vec::new(),
        tcp: Vec::new(),
        pod_local: Vec::new(),
        resolve: Vec::new(),
        ..entry
    }
}

/// The lint of a policy `entry` as compiled, silenced by the `lint-ignore` annotation in
/// `annotations`: the warnings, and the annotation's words that name no code. Only published
/// allow rules are linted (withheld ones are not enforced).
fn lint_of(
    outcome: Outcome,
    entry: &PolicyEntry,
    annotations: &std::collections::BTreeMap<String, String>,
) -> (Vec<LintWarning>, Vec<String>) {
    if outcome != Outcome::Published {
        return (Vec::new(), Vec::new());
    }
    let (ignore, unknown) = annotations
        .get(boundary_api::contract::annotations::LINT_IGNORE)
        .map(|text| boundary_api::lint::parse_ignore(text))
        .unwrap_or_default();
    let warnings = boundary_api::lint::lint_entry(entry, &ignore)
        .into_iter()
        .map(|w| LintWarning {
            field: w.field,
            code: w.code.as_str().to_owned(),
            pattern: w.pattern,
            message: w.message,
        })
        .collect();
    (warnings, unknown)
}

/// The compiled file of a namespace and a report for each of its policies (sorted by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledNamespace {
    /// The file's content.
    pub policy: CompiledPolicy,
    /// One report per policy, sorted by name.
    pub reports: Vec<PolicyReport>,
}

impl CompiledNamespace {
    /// The file as published: pretty JSON with a trailing newline. Deterministic: fields are
    /// written in declaration order, maps sorted, entries sorted by name.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.policy)
            .expect("the compiled policy has only string keys and serializable values");
        text.push('\n');
        text
    }
}

/// Compiles every policy of `namespace` (policies of other namespaces in `policies` are
/// ignored), followed by the entries of the cluster policies in `cluster` (the caller chose the
/// ones that select this namespace; see [`CompiledCluster::selects`]). See the module
/// documentation for what happens to policies with problems.
pub fn compile_namespace(
    namespace: &str,
    policies: &[BoundaryPolicy],
    cluster: &[&CompiledCluster],
) -> CompiledNamespace {
    let mut own: Vec<&BoundaryPolicy> = policies
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .collect();
    own.sort_by_key(|p| p.name_any());
    let own_specs: Vec<(String, &[Credential])> = own
        .iter()
        .map(|p| (p.name_any(), p.spec.credentials.as_slice()))
        .collect();
    let mut entries = Vec::new();
    let mut reports = Vec::new();
    for bp in own {
        let name = bp.name_any();
        let spec = &bp.spec;
        let (pod_selector, mut problems) = selector(&spec.pod_selector, "spec.podSelector");
        let mut entry = PolicyEntry {
            name: name.clone(),
            pod_selector,
            containers: spec.containers.clone(),
            mode: spec.mode,
            cluster: false,
            deny: spec.deny.clone(),
            deny_http: spec.deny_http.clone(),
            presets: spec.presets.clone(),
            allow: spec.allow.clone(),
            http: spec.http.clone(),
            tcp: spec.tcp.clone(),
            pod_local: spec.pod_local.clone(),
            credentials: Vec::new(),
            resolve: spec.resolve.clone(),
            jail: spec.jail.clone(),
        };
        let (deny, deny_http, deny_found) = checked_deny(&name, &spec.deny, &spec.deny_http);
        let mut rules_valid = deny_found.is_empty();
        problems.extend(deny_found);
        // The rest alone: the deny rules were checked one by one above.
        let rest = PolicyEntry {
            deny: Vec::new(),
            deny_http: Vec::new(),
            ..entry.clone()
        };
        if let Err(CompileErrors(found)) = rest.compile() {
            rules_valid = false;
            problems.extend(found.into_iter().map(problem));
        }
        // A bad pin fails the policy closed like a bad rule (see the module documentation).
        if let Err(CompileErrors(found)) = entry.pins() {
            problems.extend(found.into_iter().map(problem));
            rules_valid = false;
        }
        let selector_valid = problems
            .iter()
            .all(|p| !p.field.starts_with("spec.podSelector"));
        let checked = check_credentials(&name, &spec.credentials);
        problems.extend(checked.problems);
        entry.credentials = checked.valid;
        let outcome = if !selector_valid {
            Outcome::Excluded
        } else if rules_valid {
            Outcome::Published
        } else {
            Outcome::RulesWithheld
        };
        let (lint, lint_unknown) = lint_of(outcome, &entry, bp.annotations());
        match outcome {
            Outcome::Published => entries.push(entry),
            Outcome::RulesWithheld => entries.push(PolicyEntry {
                // Deny rules only tighten: the ones that compile stay.
                deny,
                deny_http,
                ..withheld(entry)
            }),
            Outcome::Excluded => {}
        }
        reports.push(PolicyReport {
            name,
            generation: bp.metadata.generation,
            rule_count: spec.rule_count(),
            problems,
            outcome,
            credential_count: spec.credentials.len(),
            withheld_credentials: checked.withheld,
            lint,
            lint_unknown,
        });
    }
    check_across_policies(&own_specs, &mut entries, &mut reports);
    let mut cluster: Vec<&CompiledCluster> = cluster.to_vec();
    cluster.sort_by(|a, b| a.name.cmp(&b.name));
    entries.extend(cluster.iter().filter_map(|c| c.entry.clone()));
    CompiledNamespace {
        policy: CompiledPolicy {
            version: FORMAT_VERSION,
            namespace: namespace.to_owned(),
            policies: entries,
        },
        reports,
    }
}

/// A `ClusterBoundaryPolicy` compiled once, for every namespace it selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledCluster {
    /// The policy's name.
    pub name: String,
    /// The policy's `metadata.uid` (for the ConfigMaps' owner references).
    pub uid: Option<String>,
    /// The namespaces it selects, by their labels (`None`: malformed, selects none).
    pub namespace_selector: Option<compiled::Selector>,
    /// Its entry in the file of each selected namespace (`None`: published nowhere).
    pub entry: Option<PolicyEntry>,
    /// Whether it makes jailing required in the namespaces it selects.
    pub require_jailing: bool,
    /// The facts its status is made from.
    pub report: PolicyReport,
}

impl CompiledCluster {
    /// Whether it applies to a namespace with `labels` (excluded namespaces are the caller's
    /// business). A policy published nowhere applies nowhere.
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.entry.is_some()
            && self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches(labels).unwrap_or(false))
    }
}

/// Compiles a `ClusterBoundaryPolicy` (see the module documentation for policies with problems).
pub fn compile_cluster(cbp: &ClusterBoundaryPolicy) -> CompiledCluster {
    let name = cbp.name_any();
    let spec = &cbp.spec;
    let (namespace_selector, mut problems) =
        selector(&spec.namespace_selector, "spec.namespaceSelector");
    let (pod_selector, pod_problems) = selector(&spec.pod_selector, "spec.podSelector");
    problems.extend(pod_problems);
    let selectors_valid = problems.is_empty();
    let mut entry = PolicyEntry {
        name: name.clone(),
        pod_selector,
        mode: spec.mode,
        cluster: true,
        presets: spec.presets.clone(),
        allow: spec.allow.clone(),
        http: spec.http.clone(),
        tcp: spec.tcp.clone(),
        ..PolicyEntry::default()
    };
    let (deny, deny_http, deny_found) = checked_deny(&name, &spec.deny, &spec.deny_http);
    let mut rules_valid = deny_found.is_empty();
    problems.extend(deny_found);
    // The allow part alone: the deny rules were checked one by one above.
    let allow_part = entry.clone();
    entry.deny = deny;
    entry.deny_http = deny_http;
    if let Err(CompileErrors(found)) = allow_part.compile() {
        rules_valid = false;
        problems.extend(found.into_iter().map(problem));
    }
    let outcome = if !selectors_valid {
        Outcome::Excluded
    } else if rules_valid {
        Outcome::Published
    } else {
        entry.presets.clear();
        entry.allow.clear();
        entry.http.clear();
        entry.tcp.clear();
        Outcome::RulesWithheld
    };
    let (lint, lint_unknown) = lint_of(outcome, &entry, cbp.annotations());
    CompiledCluster {
        name: name.clone(),
        uid: cbp.metadata.uid.clone(),
        namespace_selector: selectors_valid.then_some(namespace_selector),
        entry: (outcome != Outcome::Excluded).then_some(entry),
        require_jailing: spec.require_jailing,
        report: PolicyReport {
            name,
            generation: cbp.metadata.generation,
            rule_count: spec.rule_count(),
            problems,
            outcome,
            credential_count: 0,
            withheld_credentials: Vec::new(),
            lint,
            lint_unknown,
        },
    }
}

/// The credentials of one policy, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedCredentials {
    /// The valid ones, in spec order: what is published.
    pub valid: Vec<Credential>,
    /// Names of the withheld ones.
    pub withheld: Vec<String>,
    /// Every problem, at `spec.credentials[i]…`.
    pub problems: Vec<RuleProblem>,
}

/// Withholds, and reports, a published credential that sets the same environment variable as, or
/// has the name (and so the placeholder) of, a credential of an earlier policy (by name) that may
/// select the same pods and containers: the pod would get one of the two placeholders, and which
/// one would depend on the order the webhook reads the policies in.
fn check_across_policies(
    specs: &[(String, &[Credential])],
    entries: &mut [PolicyEntry],
    reports: &mut [PolicyReport],
) {
    for later in 1..entries.len() {
        let (earlier, rest) = entries.split_at_mut(later);
        let entry = &mut rest[0];
        let mut found = Vec::new();
        let (selector, containers) = (&entry.pod_selector, entry.containers.as_slice());
        entry.credentials.retain(|credential| {
            let envs: Vec<String> = credential
                .placeholder_env("")
                .into_iter()
                .map(|e| e.0)
                .collect();
            let env_field = if credential.inject.aws_sig_v4.is_some() {
                "inject.awsSigV4"
            } else {
                "env"
            };
            let clash =
                earlier
                    .iter()
                    .filter(|other| may_select_same(other, selector, containers))
                    .find_map(|other| {
                        other.credentials.iter().find_map(|c| {
                        if c.name == credential.name {
                            return Some(("name", format!(
                                "policy {} has a credential named {:?} too and may select the \
                                 same pods: their placeholders would be the same; rename one, or \
                                 make the pod selectors disjoint",
                                other.name, c.name
                            )));
                        }
                        let theirs: Vec<String> =
                            c.placeholder_env("").into_iter().map(|e| e.0).collect();
                        envs.iter().find(|e| theirs.contains(e)).map(|env| {
                            let message = format!(
                                "{env} is also set by credential {} of policy {}, which may \
                                 select the same pods: a container can hold only one placeholder \
                                 in it; use another variable, or make the pod selectors disjoint",
                                c.name, other.name
                            );
                            (env_field, message)
                        })
                    })
                    });
            match clash {
                Some((field, message)) => {
                    found.push((credential.name.clone(), field, message));
                    false
                }
                None => true,
            }
        });
        if found.is_empty() {
            continue;
        }
        let Some(report) = reports.iter_mut().find(|r| r.name == entry.name) else {
            continue;
        };
        let spec = specs
            .iter()
            .find(|(name, _)| *name == entry.name)
            .map_or(&[][..], |(_, c)| *c);
        for (name, field, message) in found {
            let index = spec.iter().position(|c| c.name == name).unwrap_or_default();
            report.problems.push(RuleProblem {
                field: format!("spec.credentials[{index}].{field}"),
                column: None,
                message,
            });
            report.withheld_credentials.push(name);
        }
    }
}

/// Whether some container of some pod may be selected both by `a` and by a policy with
/// `selector` and `containers` (`false` only when provably not: different container lists, or
/// label requirements that contradict).
fn may_select_same(a: &PolicyEntry, selector: &compiled::Selector, containers: &[String]) -> bool {
    if !a.containers.is_empty()
        && !containers.is_empty()
        && !a.containers.iter().any(|c| containers.contains(c))
    {
        return false;
    }
    let as_requirements = |s: &compiled::Selector| -> Vec<compiled::Requirement> {
        s.match_labels
            .iter()
            .map(|(k, v)| compiled::Requirement {
                key: k.clone(),
                operator: "In".into(),
                values: vec![v.clone()],
            })
            .chain(s.match_expressions.iter().cloned())
            .collect()
    };
    let (left, right) = (as_requirements(&a.pod_selector), as_requirements(selector));
    !left
        .iter()
        .any(|l| right.iter().any(|r| l.key == r.key && contradict(l, r)))
}

/// Whether no label value satisfies both requirements (on the same key).
fn contradict(a: &compiled::Requirement, b: &compiled::Requirement) -> bool {
    let one_way = |x: &compiled::Requirement, y: &compiled::Requirement| match (
        x.operator.as_str(),
        y.operator.as_str(),
    ) {
        ("In", "In") => !x.values.iter().any(|v| y.values.contains(v)),
        ("In", "NotIn") => x.values.iter().all(|v| y.values.contains(v)),
        ("In" | "Exists", "DoesNotExist") => true,
        _ => false,
    };
    one_way(a, b) || one_way(b, a)
}

/// Checks the credentials of policy `policy` (`boundary_api::credentials::check_policy`, the
/// check the webhook makes too), with the problems as the status shows them.
pub fn check_credentials(policy: &str, credentials: &[Credential]) -> CheckedCredentials {
    let checked = credentials::check_policy(policy, credentials);
    CheckedCredentials {
        valid: checked.valid,
        withheld: checked.withheld,
        problems: checked
            .problems
            .into_iter()
            .map(|p| RuleProblem {
                field: p.field,
                column: p.column.and_then(|c| i32::try_from(c).ok()),
                message: p.message,
            })
            .collect(),
    }
}

/// The deny rules (`spec.deny`, `spec.denyHttp`) that compile, and the problems of the others:
/// each deny rule is checked on its own, so the valid ones can be published while a broken one
/// is reported (at `spec.deny[i]`, `spec.denyHttp[i].headers.X`, with its column).
fn checked_deny(
    policy: &str,
    deny: &[String],
    deny_http: &[HttpRule],
) -> (Vec<String>, Vec<HttpRule>, Vec<RuleProblem>) {
    let mut problems = Vec::new();
    let valid_deny = valid_one_by_one(deny, "spec.deny", &mut problems, |rule| PolicyEntry {
        name: policy.to_owned(),
        deny: vec![rule],
        ..PolicyEntry::default()
    });
    let valid_deny_http = valid_one_by_one(deny_http, "spec.denyHttp", &mut problems, |rule| {
        PolicyEntry {
            name: policy.to_owned(),
            deny_http: vec![rule],
            ..PolicyEntry::default()
        }
    });
    (valid_deny, valid_deny_http, problems)
}

/// The rules of `list` that compile alone (in the entry `alone` makes of each), with the
/// problems of the others placed at `list[i]`.
fn valid_one_by_one<T: Clone>(
    rules: &[T],
    list: &str,
    problems: &mut Vec<RuleProblem>,
    alone: impl Fn(T) -> PolicyEntry,
) -> Vec<T> {
    let mut valid = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let found = placed(alone(rule.clone()).compile(), &format!("{list}[{i}]"));
        if found.is_empty() {
            valid.push(rule.clone());
        }
        problems.extend(found);
    }
    valid
}

/// The problems of a one-rule entry, moved from `spec.deny[0]…` to `field…`.
fn placed(compiled: Result<Vec<Rule>, CompileErrors>, field: &str) -> Vec<RuleProblem> {
    let found = match compiled {
        Err(CompileErrors(found)) => found,
        Ok(_) => Vec::new(),
    };
    found
        .into_iter()
        .map(|p| {
            let rest = p.field.split_once(']').map_or("", |(_, rest)| rest);
            RuleProblem {
                field: format!("{field}{rest}"),
                ..problem(p)
            }
        })
        .collect()
}

/// A rule engine problem as a status `RuleProblem`.
fn problem(p: boundary_api::rules::Problem) -> RuleProblem {
    RuleProblem {
        field: p.field,
        column: p.column.and_then(|c| i32::try_from(c).ok()),
        message: p.message,
    }
}

/// `LabelSelector` → the proxy's selector, with a problem per unknown operator (fields under
/// `field`, e.g. `spec.podSelector`).
fn selector(s: &LabelSelector, field: &str) -> (compiled::Selector, Vec<RuleProblem>) {
    let problems = s
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, r)| !OPERATORS.contains(&r.operator.as_str()))
        .map(|(i, r)| RuleProblem {
            field: format!("{field}.matchExpressions[{i}].operator"),
            column: None,
            message: format!(
                "unknown label selector operator {:?}: use In, NotIn, Exists or DoesNotExist",
                r.operator
            ),
        })
        .collect();
    (boundary_api::crd::compiled_selector(s), problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::policy::Mode;
    use pretty_assertions::assert_eq;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn policy(name: &str, spec: &serde_json::Value) -> BoundaryPolicy {
        serde_json::from_value(json!({
            "apiVersion": "agentboundary.dev/v1alpha1",
            "kind": "BoundaryPolicy",
            "metadata": {"name": name, "namespace": "agents", "generation": 3},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn published_allow_rules_are_linted_with_their_places_and_the_annotation_silences_codes() {
        let spec = json!({"podSelector": {}, "allow": ["domain=registry.npmjs.org", "domain=pastebin.com",
                          "domain=*.com"], "deny": ["domain=transfer.sh"],
                          "http": [{"domains": ["*.example.com"], "methods": ["POST"]}]});
        let out = compile_namespace("agents", &[policy("p", &spec)], &[]);
        let found: Vec<(&str, &str)> = out.reports[0]
            .lint
            .iter()
            .map(|w| (w.field.as_str(), w.code.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("spec.allow[1]", "publish-anywhere"),
                ("spec.allow[2]", "wildcard-tld"),
                ("spec.http[0].domains[0]", "broad-write"),
            ]
        );
        let mut quiet = policy("p", &spec);
        quiet.metadata.annotations = Some(BTreeMap::from([(
            boundary_api::contract::annotations::LINT_IGNORE.to_owned(),
            "publish-anywhere, broad-write,nonsense".to_owned(),
        )]));
        let out = compile_namespace("agents", &[quiet], &[]);
        let codes: Vec<&str> = out.reports[0]
            .lint
            .iter()
            .map(|w| w.code.as_str())
            .collect();
        assert_eq!(codes, ["wildcard-tld"]);
        assert_eq!(out.reports[0].lint_unknown, ["nonsense"]);
        // Withheld allow rules are not linted; a cluster policy is, like a namespaced one.
        let broken = json!({"podSelector": {}, "allow": ["domain=pastebin.com", "domain=a..b"]});
        assert!(
            compile_namespace("agents", &[policy("p", &broken)], &[]).reports[0]
                .lint
                .is_empty()
        );
        let org = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {}, "podSelector": {},
                                                          "allow": ["domain=*"]}),
        ));
        assert_eq!(org.report.lint[0].code, "any-host");
    }

    #[test]
    fn valid_policies_are_sorted_and_converted() {
        let b = policy(
            "b",
            &json!({"podSelector": {"matchLabels": {"app": "agent"},
                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]},
                    "allow": ["domain=b.com"], "tcp": [{"domain": "github.com", "ports": [22]}]}),
        );
        let a = policy(
            "a",
            &json!({"podSelector": {}, "mode": "Audit", "allow": ["domain=a.com"]}),
        );
        let mut other = policy("c", &json!({"podSelector": {}}));
        other.metadata.namespace = Some("elsewhere".into());
        let out = compile_namespace("agents", &[b, a, other], &[]);
        let names: Vec<_> = out
            .policy
            .policies
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(out.policy.version, FORMAT_VERSION);
        assert_eq!(out.policy.namespace, "agents");
        assert_eq!(out.policy.policies[0].mode, Mode::Audit);
        let b = &out.policy.policies[1];
        assert_eq!(b.pod_selector.match_labels["app"], "agent");
        assert_eq!(b.pod_selector.match_expressions[0].values, ["gold"]);
        assert_eq!(b.tcp.len(), 1);
        assert!(
            out.reports
                .iter()
                .all(|r| r.outcome == Outcome::Published && r.problems.is_empty())
        );
        assert_eq!(out.reports[1].rule_count, 2);
        assert_eq!(out.reports[1].generation, Some(3));
        // The proxy accepts what was published.
        let labels = BTreeMap::from([
            ("app".into(), "agent".into()),
            ("tier".into(), "gold".into()),
        ]);
        let (set, selected) = out.policy.rule_set(&labels, None).unwrap();
        assert_eq!(selected, ["a", "b"]);
        assert_eq!(set.rules().len(), 3);
    }

    #[test]
    fn invalid_rules_are_reported_with_positions_and_withheld() {
        let bad = policy(
            "bad",
            &json!({"podSelector": {}, "allow": ["domain=ok.com", "domain=x.* method=GET"],
                    "http": [{"domains": ["a.com"], "paths": ["no-slash"]}]}),
        );
        let audit = policy(
            "audit",
            &json!({"podSelector": {}, "mode": "Audit", "allow": ["domain=a.com"]}),
        );
        let out = compile_namespace("agents", &[bad, audit], &[]);
        let report = &out.reports[1];
        assert_eq!(report.name, "bad");
        assert_eq!(report.outcome, Outcome::RulesWithheld);
        assert_eq!(report.rule_count, 3);
        let fields: Vec<_> = report.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields.len(), 2, "{:?}", report.problems);
        assert_eq!(report.problems[0].field, "spec.allow[1]");
        assert_eq!(report.problems[0].column, Some(10), "{:?}", report.problems);
        assert!(
            report.problems[1].field.starts_with("spec.http[0]"),
            "{fields:?}"
        );
        // Published without rules, so the good policy still works and Enforce still wins.
        let entry = &out.policy.policies[1];
        assert_eq!(entry.name, "bad");
        assert!(entry.allow.is_empty() && entry.http.is_empty() && entry.tcp.is_empty());
        let (set, _) = out.policy.rule_set(&BTreeMap::new(), None).unwrap();
        assert_eq!(set.mode(), Mode::Enforce);
        assert_eq!(set.rules().len(), 1);
    }

    #[test]
    fn resolve_pins_are_published_or_reported_with_positions_and_withheld() {
        let good = policy(
            "good",
            &json!({"podSelector": {}, "allow": ["domain=api.agents.svc.cluster.local"],
                    "resolve": [{"host": "api.agents.svc.cluster.local",
                                 "addresses": ["10.96.0.20"]}]}),
        );
        let bad = policy(
            "z-bad",
            &json!({"podSelector": {}, "allow": ["domain=a.com"],
                    "resolve": [{"host": "db.internal", "addresses": ["10.0.0.5", "10.0.0"]},
                                {"host": "*.internal", "addresses": ["10.0.0.6"]}]}),
        );
        let out = compile_namespace("agents", &[good, bad], &[]);
        let (good, bad) = (&out.reports[0], &out.reports[1]);
        assert_eq!(good.outcome, Outcome::Published, "{:?}", good.problems);
        assert_eq!(out.policy.policies[0].resolve.len(), 1);
        assert_eq!(bad.outcome, Outcome::RulesWithheld);
        let fields: Vec<_> = bad.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.resolve[0].addresses[1]", "spec.resolve[1].host"]
        );
        assert!(bad.problems[0].message.contains("not an IP address"));
        assert!(bad.problems[1].message.contains("wildcard"));
        // Withheld with the rules: no half-applied pin lifts the guard.
        let entry = &out.policy.policies[1];
        assert!(entry.resolve.is_empty() && entry.allow.is_empty());
        let pins = out.policy.pins(&BTreeMap::new(), None).unwrap();
        assert_eq!(
            pins.keys().collect::<Vec<_>>(),
            ["api.agents.svc.cluster.local"]
        );
    }

    #[test]
    fn pod_local_rules_are_published_counted_and_checked_with_positions() {
        let db = policy(
            "db",
            &json!({"podSelector": {}, "allow": ["domain=a.com"],
                    "podLocal": [{"ports": [5432], "description": "cloud-sql-proxy"},
                                 {"ports": [2375, 2376]}]}),
        );
        let clash = policy(
            "clash",
            &json!({"podSelector": {}, "podLocal": [{"ports": [9000, 15090]}, {"ports": [53]}]}),
        );
        let out = compile_namespace("agents", &[db, clash], &[]);
        let (clash, db) = (&out.reports[0], &out.reports[1]);
        assert_eq!(db.outcome, Outcome::Published);
        assert_eq!(db.rule_count, 3, "one allow string and two podLocal rules");
        assert_eq!(out.policy.policies[1].pod_local.len(), 2);
        assert_eq!(clash.outcome, Outcome::RulesWithheld);
        let fields: Vec<_> = clash.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.podLocal[0].ports[1]", "spec.podLocal[1].ports[0]"]
        );
        assert!(
            clash.problems[0]
                .message
                .contains("port 15090 cannot be pod-local"),
            "{:?}",
            clash.problems
        );
        // Withheld: its good port 9000 is not allowed either (fails closed); db's are.
        assert!(out.policy.policies[0].pod_local.is_empty());
        let (set, _) = out.policy.rule_set(&BTreeMap::new(), None).unwrap();
        assert!(set.check_pod_local(5432).is_some() && set.check_pod_local(2376).is_some());
        assert!(set.check_pod_local(9000).is_none());
        // The published file carries the rules in the API's spelling.
        assert!(out.to_json().contains("\"podLocal\""), "{}", out.to_json());
    }

    #[test]
    fn malformed_selectors_are_excluded() {
        let p = policy(
            "sel",
            &json!({"podSelector": {"matchExpressions": [
                {"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Gt", "values": ["1"]}]},
                "allow": ["domain=a.com"]}),
        );
        let out = compile_namespace("agents", &[p], &[]);
        assert!(out.policy.policies.is_empty());
        assert_eq!(out.reports[0].outcome, Outcome::Excluded);
        assert_eq!(
            out.reports[0].problems[0].field,
            "spec.podSelector.matchExpressions[1].operator"
        );
        assert!(out.policy.rule_set(&BTreeMap::new(), None).is_ok());
    }

    #[test]
    fn output_and_hash_are_deterministic() {
        let a = policy(
            "a",
            &json!({"podSelector": {"matchLabels": {"z": "1", "a": "2", "m": "3"}},
                    "allow": ["domain=a.com"], "http": [{"domains": ["b.com"], "methods": ["GET"]}]}),
        );
        let b = policy("b", &json!({"podSelector": {}, "allow": ["domain=b.com"]}));
        let one = compile_namespace("agents", &[a.clone(), b.clone()], &[]);
        let two = compile_namespace("agents", &[b, a.clone()], &[]);
        assert_eq!(one.to_json(), two.to_json());
        assert_eq!(
            compiled::policy_hash(one.to_json().as_bytes()),
            compiled::policy_hash(two.to_json().as_bytes())
        );
        let parsed: CompiledPolicy = serde_json::from_str(&one.to_json()).unwrap();
        assert_eq!(parsed, one.policy);
        let changed = compile_namespace("agents", &[a], &[]);
        assert_ne!(
            compiled::policy_hash(one.to_json().as_bytes()),
            compiled::policy_hash(changed.to_json().as_bytes())
        );
    }

    fn with_credentials(credentials: &serde_json::Value) -> BoundaryPolicy {
        policy(
            "agent",
            &json!({"podSelector": {}, "allow": ["domain=api.anthropic.com"],
                    "credentials": credentials}),
        )
    }

    fn anthropic() -> serde_json::Value {
        json!({"name": "anthropic", "secretKeyRef": {"name": "llm", "key": "api-key"},
               "destinations": [{"domains": ["api.anthropic.com"], "methods": ["POST"]}],
               "inject": {"header": {"name": "x-api-key"}}, "env": "ANTHROPIC_API_KEY"})
    }

    #[test]
    fn valid_credentials_are_published_without_values() {
        let out = compile_namespace("agents", &[with_credentials(&json!([anthropic()]))], &[]);
        let report = &out.reports[0];
        assert_eq!(report.outcome, Outcome::Published);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.credential_count, 1);
        assert!(report.withheld_credentials.is_empty());
        let entry = &out.policy.policies[0];
        assert_eq!(entry.credentials.len(), 1);
        assert_eq!(entry.credentials[0].name, "anthropic");
        // The file names the Secret key, never a value, in the API's spelling.
        let text = out.to_json();
        assert!(
            text.contains("\"credentials\"") && text.contains("\"secretKeyRef\""),
            "{text}"
        );
        let parsed: CompiledPolicy = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.policies[0].credentials, entry.credentials);
    }

    #[test]
    fn invalid_credentials_are_withheld_with_their_fields_and_the_rules_stay() {
        let mut no_source = anthropic();
        no_source["name"] = json!("no-source");
        no_source["env"] = json!("OTHER_KEY");
        no_source.as_object_mut().unwrap().remove("secretKeyRef");
        let mut bad_destination = anthropic();
        bad_destination["name"] = json!("bad-destination");
        bad_destination["env"] = json!("THIRD_KEY");
        bad_destination["destinations"] = json!([
            {"domains": ["api.anthropic.com"]},
            {"domains": ["ok.com", "x.*"], "paths": ["no-slash"]}
        ]);
        let mut same_name = anthropic();
        same_name["env"] = json!("FOURTH_KEY");
        let mut same_env = anthropic();
        same_env["name"] = json!("same-env");
        let sigv4 = json!({"name": "bedrock", "destinations": [{"domains": ["bedrock-runtime.*.amazonaws.com"]}],
                           "inject": {"awsSigV4": {"identity": "Sidecar"}}});
        let mut sigv4_again = sigv4.clone();
        sigv4_again["name"] = json!("s3");
        let out = compile_namespace(
            "agents",
            &[with_credentials(&json!([
                anthropic(),
                no_source,
                bad_destination,
                same_name,
                same_env,
                sigv4,
                sigv4_again
            ]))],
            &[],
        );
        let report = &out.reports[0];
        assert_eq!(report.outcome, Outcome::Published, "the rules compile");
        let fields: Vec<_> = report
            .problems
            .iter()
            .map(|p| (p.field.as_str(), p.column))
            .collect();
        assert_eq!(
            fields,
            [
                ("spec.credentials[1].secretKeyRef", None),
                ("spec.credentials[2].destinations[1].domains[1]", None),
                ("spec.credentials[2].destinations[1].paths[0]", None),
                ("spec.credentials[3].name", None),
                ("spec.credentials[4].env", None),
                ("spec.credentials[6].inject.awsSigV4", None),
                ("spec.credentials[6].inject.awsSigV4", None),
            ],
            "{:?}",
            report.problems
        );
        assert!(
            report.problems[3]
                .message
                .contains("\"anthropic\" is also the name of spec.credentials[0]"),
            "{:?}",
            report.problems[3]
        );
        assert!(
            report.problems[4]
                .message
                .starts_with("ANTHROPIC_API_KEY is also set by spec.credentials[0]"),
            "{:?}",
            report.problems[4]
        );
        assert!(
            report.problems[5]
                .message
                .starts_with("AWS_ACCESS_KEY_ID is also set by spec.credentials[5]")
        );
        assert!(
            report.problems[6]
                .message
                .starts_with("AWS_SECRET_ACCESS_KEY is also set")
        );
        assert_eq!(
            report.withheld_credentials,
            [
                "no-source",
                "bad-destination",
                "anthropic",
                "same-env",
                "s3"
            ]
        );
        let entry = &out.policy.policies[0];
        let published: Vec<_> = entry.credentials.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(published, ["anthropic", "bedrock"]);
        assert_eq!(entry.allow, ["domain=api.anthropic.com"], "rules stay");
    }

    #[test]
    fn a_policy_with_withheld_rules_keeps_its_valid_credentials_and_an_excluded_one_none() {
        let broken = policy(
            "broken",
            &json!({"podSelector": {}, "allow": ["domain=x.*"], "credentials": [anthropic()]}),
        );
        let excluded = policy(
            "excluded",
            &json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]},
                    "credentials": [anthropic()]}),
        );
        let out = compile_namespace("agents", &[broken, excluded], &[]);
        assert_eq!(out.reports[0].outcome, Outcome::RulesWithheld);
        assert_eq!(out.policy.policies.len(), 1);
        assert_eq!(out.policy.policies[0].credentials.len(), 1);
        assert!(out.policy.policies[0].allow.is_empty());
        assert_eq!(out.reports[1].outcome, Outcome::Excluded);
    }

    /// Policy `name` with one credential.
    fn named(
        name: &str,
        selector: serde_json::Value,
        containers: serde_json::Value,
        credential: serde_json::Value,
    ) -> BoundaryPolicy {
        let spec = serde_json::Map::from_iter([
            ("podSelector".to_owned(), selector),
            ("containers".to_owned(), containers),
            (
                "credentials".to_owned(),
                serde_json::Value::Array(vec![credential]),
            ),
        ]);
        policy(name, &serde_json::Value::Object(spec))
    }

    #[test]
    fn credentials_of_policies_that_may_select_the_same_pods_may_not_share_env_or_name() {
        let mut renamed = anthropic();
        renamed["name"] = json!("other-name");
        let mut other_env = anthropic();
        other_env["env"] = json!("OTHER_KEY");
        let out = compile_namespace(
            "agents",
            &[
                named("a", json!({}), json!([]), anthropic()),
                // Same variable, selects a subset of a's pods.
                named(
                    "b",
                    json!({"matchLabels": {"app": "agent"}}),
                    json!([]),
                    renamed.clone(),
                ),
                // Same name (and so placeholder), another variable.
                named(
                    "c",
                    json!({"matchLabels": {"app": "agent"}}),
                    json!([]),
                    other_env,
                ),
            ],
            &[],
        );
        let published: Vec<_> = out
            .policy
            .policies
            .iter()
            .map(|e| e.credentials.len())
            .collect();
        assert_eq!(published, [1, 0, 0]);
        let b = &out.reports[1];
        assert_eq!(b.problems[0].field, "spec.credentials[0].env");
        assert!(
            b.problems[0]
                .message
                .starts_with("ANTHROPIC_API_KEY is also set by credential anthropic of policy a"),
            "{:?}",
            b.problems
        );
        assert_eq!(b.withheld_credentials, ["other-name"]);
        assert_eq!(b.outcome, Outcome::Published, "its rules stay");
        let c = &out.reports[2];
        assert_eq!(c.problems[0].field, "spec.credentials[0].name");
        assert!(
            c.problems[0]
                .message
                .starts_with("policy a has a credential named \"anthropic\"")
        );
    }

    #[test]
    fn credentials_of_policies_that_cannot_select_the_same_container_may_share_env_and_name() {
        let out = compile_namespace(
            "agents",
            &[
                named(
                    "a",
                    json!({"matchLabels": {"app": "one"}}),
                    json!([]),
                    anthropic(),
                ),
                named(
                    "b",
                    json!({"matchLabels": {"app": "two"}}),
                    json!([]),
                    anthropic(),
                ),
                named(
                    "c",
                    json!({"matchExpressions": [
                    {"key": "app", "operator": "NotIn", "values": ["one", "two"]},
                    {"key": "app", "operator": "Exists"}]}),
                    json!([]),
                    anthropic(),
                ),
                named(
                    "d",
                    json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
                    json!(["x"]),
                    anthropic(),
                ),
                // Same pods as d, another container.
                named(
                    "e",
                    json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
                    json!(["y"]),
                    anthropic(),
                ),
            ],
            &[],
        );
        assert!(
            out.reports.iter().all(|r| r.problems.is_empty()),
            "{:?}",
            out.reports
        );
        assert!(out.policy.policies.iter().all(|e| e.credentials.len() == 1));
    }

    #[test]
    fn deny_rules_of_a_policy_are_checked_one_by_one_and_the_valid_ones_stay() {
        let git = policy(
            "git",
            &json!({"podSelector": {},
                    "deny": ["domain=github.com method=POST path=/*/*/git-receive-pack",
                             "domain=-bad.com", "domain=a.com metod=GET"],
                    "denyHttp": [
                        {"domains": ["github.com"], "query": {"service": "git-receive-pack"}},
                        {"domains": ["b.com"], "headers": {"X Bad": "*"}},
                        {"domains": ["c.com"], "tls": "Passthrough"}],
                    "allow": ["domain=github.com"],
                    "http": [{"domains": ["d.com"], "headers": {"X-Agent": "claude*"}}]}),
        );
        let out = compile_namespace("agents", &[git], &[]);
        let report = &out.reports[0];
        assert_eq!(report.outcome, Outcome::RulesWithheld);
        assert_eq!(report.rule_count, 8, "deny rules count");
        let fields: Vec<(&str, Option<i32>)> = report
            .problems
            .iter()
            .map(|p| (p.field.as_str(), p.column))
            .collect();
        assert_eq!(
            fields,
            [
                ("spec.deny[1]", Some(8)),
                ("spec.deny[2]", Some(14)),
                ("spec.denyHttp[1].headers.X Bad", Some(2)),
                ("spec.denyHttp[2].tls", None),
            ]
        );
        assert!(report.problems[0].message.contains("cannot start with `-`"));
        let entry = &out.policy.policies[0];
        assert_eq!(
            entry.deny,
            ["domain=github.com method=POST path=/*/*/git-receive-pack"]
        );
        assert_eq!(entry.deny_http.len(), 1);
        assert_eq!(entry.deny_http[0].domains, ["github.com"]);
        assert!(entry.allow.is_empty() && entry.http.is_empty());
        // The proxy enforces what was published: the valid deny rules, nothing allowed.
        let (set, _) = out.policy.rule_set(&BTreeMap::new(), None).unwrap();
        assert_eq!((set.deny_rules().len(), set.rules().len()), (2, 0));
        assert_eq!(
            set.deny_rules()[1].origin().to_string(),
            "git spec.denyHttp[0]: domains=github.com query=service:git-receive-pack"
        );
    }

    #[test]
    fn a_valid_policy_publishes_its_deny_rules_and_conditions() {
        let git = policy(
            "git",
            &json!({"podSelector": {},
                    "deny": ["domain=github.com method=POST path=/*/*/git-receive-pack"],
                    "denyHttp": [{"domains": ["github.com"], "query": {"service": "git-receive-pack"}}],
                    "http": [{"domains": ["github.com"], "query": {"service": "git-upload-pack"}}]}),
        );
        let out = compile_namespace("agents", &[git], &[]);
        assert_eq!(
            out.reports[0].outcome,
            Outcome::Published,
            "{:?}",
            out.reports[0]
        );
        assert_eq!(out.reports[0].rule_count, 3);
        let text = out.to_json();
        assert!(text.contains("\"denyHttp\""), "{text}");
        let (set, _) = out.policy.rule_set(&BTreeMap::new(), None).unwrap();
        assert_eq!((set.deny_rules().len(), set.rules().len()), (2, 1));
    }

    #[test]
    fn a_cluster_policy_checks_its_structured_deny_rules_one_by_one() {
        let c = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {}, "podSelector": {},
                    "denyHttp": [{"domains": ["*"], "headers": {"X-Debug-Dump": "*"}},
                                 {"domains": ["x.com"], "query": {"": "*"}}],
                    "allow": ["domain=ok.com"]}),
        ));
        assert_eq!(c.report.outcome, Outcome::RulesWithheld);
        assert_eq!(c.report.rule_count, 3);
        assert_eq!(c.report.problems[0].field, "spec.denyHttp[1].query.");
        let entry = c.entry.unwrap();
        assert_eq!(entry.deny_http.len(), 1);
        assert!(entry.allow.is_empty());
    }

    fn cluster(name: &str, spec: &serde_json::Value) -> ClusterBoundaryPolicy {
        serde_json::from_value(json!({
            "apiVersion": "agentboundary.dev/v1alpha1",
            "kind": "ClusterBoundaryPolicy",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn cluster_policies_follow_the_namespace_policies_as_cluster_entries() {
        let org = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {"matchLabels": {"team": "agents"}},
                    "podSelector": {"matchLabels": {"app": "agent"}}, "mode": "Audit",
                    "deny": ["domain=pastebin.com"], "allow": ["domain=api.anthropic.com"],
                    "tcp": [{"domain": "github.com", "ports": [22]}], "requireJailing": true}),
        ));
        assert_eq!(org.report.outcome, Outcome::Published);
        assert_eq!(org.report.rule_count, 3);
        assert_eq!(org.report.generation, Some(2));
        assert!(org.require_jailing);
        assert_eq!(org.uid.as_deref(), Some("uid-org"));
        let team = BTreeMap::from([("team".to_owned(), "agents".to_owned())]);
        assert!(org.selects(&team));
        assert!(!org.selects(&BTreeMap::new()));
        // A namespace policy named like the cluster policy stays a separate entry.
        let own = policy(
            "org",
            &json!({"podSelector": {}, "allow": ["domain=a.com"]}),
        );
        let out = compile_namespace("agents", &[own], &[&org]);
        let entries: Vec<_> = out
            .policy
            .policies
            .iter()
            .map(|e| (e.name.as_str(), e.cluster))
            .collect();
        assert_eq!(entries, [("org", false), ("org", true)]);
        assert_eq!(
            out.reports.len(),
            1,
            "reports are for namespace policies only"
        );
        let entry = &out.policy.policies[1];
        assert_eq!(entry.deny, ["domain=pastebin.com"]);
        assert_eq!(entry.allow, ["domain=api.anthropic.com"]);
        assert_eq!(entry.mode, Mode::Audit);
        assert_eq!(entry.pod_selector.match_labels["app"], "agent");
        assert!(entry.containers.is_empty() && entry.pod_local.is_empty());
        let text = out.to_json();
        assert!(text.contains("\"cluster\": true"), "{text}");
        assert!(text.contains("\"deny\""), "{text}");
        // The namespace's pods get both entries' allow rules.
        let labels = BTreeMap::from([("app".to_owned(), "agent".to_owned())]);
        let (set, selected) = out.policy.rule_set(&labels, None).unwrap();
        assert_eq!(selected, ["org", "org"]);
        assert_eq!(set.mode(), Mode::Enforce);
        assert_eq!(set.rules().len(), 3);
    }

    #[test]
    fn presets_of_a_cluster_policy_reach_its_entry_and_their_deny_rules_beat_the_namespaces() {
        let org = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {}, "podSelector": {},
                    "presets": ["github-read-only", "npm"]}),
        ));
        assert_eq!(
            org.report.outcome,
            Outcome::Published,
            "{:?}",
            org.report.problems
        );
        assert_eq!(
            org.entry.as_ref().unwrap().presets,
            ["github-read-only", "npm"]
        );
        let own = policy(
            "agent",
            &json!({"podSelector": {}, "allow": ["domain=github.com"]}),
        );
        let out = compile_namespace("agents", &[own], &[&org]);
        let text = out.to_json();
        assert!(text.contains("\"github-read-only\""), "{text}");
        let (set, _) = out.policy.rule_set(&BTreeMap::new(), None).unwrap();
        let host = boundary_api::rules::Host::parse("github.com").unwrap();
        let path = boundary_api::rules::RequestPath::parse("/o/r/git-receive-pack").unwrap();
        let verdict = set.check_http(boundary_api::rules::HttpRequest::new(
            &host, 443, "POST", &path,
        ));
        let boundary_api::rules::Verdict::Denied { by, overrides } = verdict else {
            panic!("a push was not denied: {verdict:?}")
        };
        assert_eq!(
            by.origin().to_string(),
            "ClusterBoundaryPolicy org spec.presets[0] (github-read-only): domain=github.com \
             path=/*/*/git-receive-pack"
        );
        assert_eq!(
            overrides.unwrap().origin().to_string(),
            "agent spec.allow[0]: domain=github.com"
        );
        // An unknown name withholds the cluster policy's presets, with the problem at its place.
        let bad = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {}, "podSelector": {}, "presets": ["npm", "pip"]}),
        ));
        assert_eq!(bad.report.outcome, Outcome::RulesWithheld);
        assert_eq!(bad.report.problems.len(), 1);
        assert_eq!(bad.report.problems[0].field, "spec.presets[1]");
        assert!(
            bad.report.problems[0]
                .message
                .contains("unknown preset \"pip\"")
                && bad.report.problems[0].message.contains("pypi"),
            "{:?}",
            bad.report.problems
        );
        assert!(bad.entry.unwrap().presets.is_empty());
    }

    #[test]
    fn an_unknown_preset_of_a_namespace_policy_is_reported_at_its_place() {
        let own = policy(
            "agent",
            &json!({"podSelector": {}, "presets": ["claude-code", "cluade-code"]}),
        );
        let out = compile_namespace("agents", &[own], &[]);
        let report = &out.reports[0];
        assert_eq!(report.outcome, Outcome::RulesWithheld);
        let fields: Vec<_> = report.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.presets[1]"]);
        assert!(out.policy.policies[0].presets.is_empty());
    }

    #[test]
    fn a_cluster_policy_with_bad_rules_keeps_its_valid_deny_rules_and_allows_nothing() {
        let c = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {}, "podSelector": {},
                    "deny": ["domain=pastebin.com", "domain=x.* method=GET", "domain=evil.com"],
                    "allow": ["domain=ok.com"], "http": [{"domains": ["a.com"], "paths": ["no-slash"]}]}),
        ));
        assert_eq!(c.report.outcome, Outcome::RulesWithheld);
        assert_eq!(c.report.rule_count, 5);
        let fields: Vec<_> = c.report.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields.len(), 2, "{:?}", c.report.problems);
        assert_eq!(fields[0], "spec.deny[1]");
        assert_eq!(
            c.report.problems[0].column,
            Some(10),
            "{:?}",
            c.report.problems
        );
        assert!(fields[1].starts_with("spec.http[0]"), "{fields:?}");
        let entry = c.entry.as_ref().unwrap();
        assert_eq!(entry.deny, ["domain=pastebin.com", "domain=evil.com"]);
        assert!(entry.allow.is_empty() && entry.http.is_empty() && entry.tcp.is_empty());
        assert!(c.selects(&BTreeMap::new()));
        // An invalid allow rule alone withholds the allow rules and keeps every deny rule.
        let c = compile_cluster(&cluster(
            "org",
            &json!({"namespaceSelector": {}, "podSelector": {},
                    "deny": ["domain=pastebin.com"], "allow": ["domain=ok.com", "domain=x.*"]}),
        ));
        assert_eq!(c.report.outcome, Outcome::RulesWithheld);
        assert_eq!(c.report.problems[0].field, "spec.allow[1]");
        let entry = c.entry.unwrap();
        assert_eq!(entry.deny, ["domain=pastebin.com"]);
        assert!(entry.allow.is_empty());
    }

    #[test]
    fn a_cluster_policy_with_a_malformed_selector_applies_nowhere() {
        for (spec, field) in [
            (
                json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]},
                       "podSelector": {}, "deny": ["domain=pastebin.com"]}),
                "spec.namespaceSelector.matchExpressions[0].operator",
            ),
            (
                json!({"namespaceSelector": {}, "deny": ["domain=pastebin.com"],
                       "podSelector": {"matchExpressions": [{"key": "a", "operator": "exists"}]}}),
                "spec.podSelector.matchExpressions[0].operator",
            ),
        ] {
            let c = compile_cluster(&cluster("org", &spec));
            assert_eq!(c.report.outcome, Outcome::Excluded);
            assert_eq!(c.report.problems[0].field, field);
            assert!(c.entry.is_none());
            assert!(!c.selects(&BTreeMap::new()));
            let out = compile_namespace("agents", &[], &[&c]);
            assert!(out.policy.policies.is_empty());
        }
    }
}

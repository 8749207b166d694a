//! The compiled policy: the file the operator publishes per namespace (ConfigMap
//! `agent-boundary-policy`, key `policy.json`) and the jail-runtime sidecar reads and hot-reloads.
//!
//! It holds every `BoundaryPolicy` of the namespace with its selector; the sidecar picks the
//! entries that select its pod (labels from a downward-API file, so label changes apply) and the
//! jailed container, and enforces their union: allow rules OR'ed, `Enforce` beats `Audit`.
//! No entry selecting a container means nothing is allowed (fail closed).
//!
//! The operator also publishes the `ClusterBoundaryPolicy` objects selecting the namespace, as
//! entries with `cluster: true`. Their deny rules join the union too, and a deny rule of any
//! selected entry wins over every allow rule of every entry (see [`crate::rules`]); their mode
//! combines like any other entry's.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::credentials::Credential;
use crate::policy::{HttpRule, JailSpec, Mode, PodLocalRule, ResolvePin, TcpRule};
use crate::rules::{self, CompileErrors, Host, Problem, RuleSet, RuleSource};

/// Current version of the file format.
pub const FORMAT_VERSION: u32 = 1;

/// The policy hash of a compiled-policy file: SHA-256 of its bytes as published, lower-case
/// hex. The operator writes it to `BoundaryPolicy.status.policyHash`; the sidecar reports the
/// hash of the file it enforces, so the two can be compared.
pub fn policy_hash(file: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    Sha256::digest(file)
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The namespace the policies belong to.
    #[serde(default)]
    pub namespace: String,
    /// Every policy of the namespace, sorted by name.
    #[serde(default)]
    pub policies: Vec<PolicyEntry>,
}

/// One `BoundaryPolicy`, as the proxy needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    /// The policy's name.
    pub name: String,
    /// Which pods it selects.
    #[serde(default)]
    pub pod_selector: Selector,
    /// Which containers it jails (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Enforce or Audit.
    #[serde(default)]
    pub mode: Mode,
    /// `true` for a `ClusterBoundaryPolicy` (its name is then cluster-wide).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// Coder-grammar deny rules: a request one of them matches is denied whatever allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Structured deny rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_http: Vec<HttpRule>,
    /// Presets whose rules join this entry's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presets: Vec<String>,
    /// Coder-grammar rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Structured HTTP rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// TCP rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRule>,
    /// Pod-local port rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_local: Vec<PodLocalRule>,
    /// Credentials the proxy puts into requests (no values: those are in the credentials
    /// Secret, under [`crate::credentials::value_key`]). Only valid ones are published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// Names pinned to addresses (the in-cluster `--resolve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolve: Vec<ResolvePin>,
    /// Jail settings.
    #[serde(default)]
    pub jail: JailSpec,
}

impl PolicyEntry {
    /// Whether this entry applies to `container` (`None`: the caller does not know; every
    /// entry that selects the pod applies).
    pub fn applies_to(&self, container: Option<&str>) -> bool {
        match container {
            Some(c) if !self.containers.is_empty() => self.containers.iter().any(|x| x == c),
            _ => true,
        }
    }

    /// Compiles this entry's rules, deny rules included (problems name `spec.deny[i]`).
    pub fn compile(&self) -> Result<Vec<rules::Rule>, CompileErrors> {
        rules::compile(RuleSource {
            policy: Some(&self.name),
            cluster: self.cluster,
            field_prefix: "spec.",
            deny: &self.deny,
            deny_http: &self.deny_http,
            presets: &self.presets,
            allow: &self.allow,
            http: &self.http,
            tcp: &self.tcp,
            pod_local: &self.pod_local,
        })
    }
}

/// Names pinned to addresses: normalised host name → its addresses.
pub type Pins = BTreeMap<String, Vec<IpAddr>>;

impl PolicyEntry {
    /// This entry's `resolve` pins, checked (problems name `spec.resolve[i]…`).
    pub fn pins(&self) -> Result<Pins, CompileErrors> {
        check_pins(Some(&self.name), "spec.", &self.resolve)
    }
}

/// Checks `resolve` pins (of policy `policy`; fields start with `prefix`): every host an exact
/// DNS name (no wildcard, no address), every address an IPv4 or IPv6 address. The same host in
/// two pins gets the addresses of both. Every problem is listed, with its field.
pub fn check_pins(
    policy: Option<&str>,
    prefix: &str,
    pins: &[ResolvePin],
) -> Result<Pins, CompileErrors> {
    let mut out = Pins::new();
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| {
        problems.push(Problem {
            policy: policy.map(str::to_owned),
            field,
            column: None,
            message,
        });
    };
    for (i, pin) in pins.iter().enumerate() {
        let field = format!("{prefix}resolve[{i}]");
        let host = if pin.host.contains('*') {
            problem(
                format!("{field}.host"),
                format!(
                    "{:?} has a wildcard: a pin names one host exactly (a rule for the \
                     addresses, e.g. domain=10.0.0.0/8, allows a whole network)",
                    pin.host
                ),
            );
            None
        } else {
            match Host::parse(&pin.host) {
                Ok(Host::Name(name)) => Some(name),
                Ok(Host::Ip(_)) => {
                    problem(
                        format!("{field}.host"),
                        format!(
                            "{:?} is an address, not a host name: only names are resolved",
                            pin.host
                        ),
                    );
                    None
                }
                Err(e) => {
                    problem(format!("{field}.host"), e.to_string());
                    None
                }
            }
        };
        if pin.addresses.is_empty() {
            problem(
                format!("{field}.addresses"),
                "no address: give at least one IPv4 or IPv6 address".into(),
            );
        }
        let mut addresses = Vec::new();
        for (j, text) in pin.addresses.iter().enumerate() {
            match text.trim().parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => problem(
                    format!("{field}.addresses[{j}]"),
                    format!("{text:?} is not an IP address (e.g. 10.96.0.10 or fd00::10)"),
                ),
            }
        }
        if let Some(host) = host {
            let known = out.entry(host).or_default();
            for ip in addresses {
                if !known.contains(&ip) {
                    known.push(ip);
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(CompileErrors(problems))
    }
}

/// A label selector with the semantics and JSON shape of Kubernetes' `LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Exact label matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One set-based requirement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// An unknown selector operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown label selector operator {0:?} (In, NotIn, Exists, DoesNotExist)")]
pub struct BadOperator(pub String);

impl Selector {
    /// Whether `labels` satisfy the selector. The empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, BadOperator> {
        if !self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return Ok(false);
        }
        for r in &self.match_expressions {
            let value = labels.get(&r.key);
            let ok = match r.operator.as_str() {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => return Err(BadOperator(other.to_owned())),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Why a rule set could not be built from the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A policy's selector is malformed.
    #[error("policy {policy}: {source}")]
    Selector {
        /// The policy.
        policy: String,
        /// The problem.
        #[source]
        source: BadOperator,
    },
    /// A selected policy has invalid rules.
    #[error(transparent)]
    Rules(#[from] CompileErrors),
    /// The file is newer than this binary.
    #[error(
        "compiled policy format version {0} is not supported (this binary reads version {FORMAT_VERSION})"
    )]
    Version(u32),
}

impl CompiledPolicy {
    /// The entries that select a pod with `labels`, for `container`.
    pub fn select(
        &self,
        labels: &BTreeMap<String, String>,
        container: Option<&str>,
    ) -> Result<Vec<&PolicyEntry>, SelectError> {
        if self.version != FORMAT_VERSION {
            return Err(SelectError::Version(self.version));
        }
        let mut out = Vec::new();
        for entry in &self.policies {
            let selected =
                entry
                    .pod_selector
                    .matches(labels)
                    .map_err(|source| SelectError::Selector {
                        policy: entry.name.clone(),
                        source,
                    })?;
            if selected && entry.applies_to(container) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The names pinned for a pod with `labels` and `container`: the union of the `resolve`
    /// pins of the selected entries (a name pinned by two gets the addresses of both). An entry
    /// whose pins do not check is left out (the operator never publishes one): a missing pin
    /// only keeps the private-address guard closed.
    pub fn pins(
        &self,
        labels: &BTreeMap<String, String>,
        container: Option<&str>,
    ) -> Result<Pins, SelectError> {
        let mut out = Pins::new();
        for entry in self.select(labels, container)? {
            for (host, ips) in entry.pins().unwrap_or_default() {
                let known = out.entry(host).or_default();
                for ip in ips {
                    if !known.contains(&ip) {
                        known.push(ip);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The rule set for a pod with `labels` and `container`: the union of the selected entries'
    /// allow rules and deny rules (a deny rule beats every allow rule), in `Enforce` unless every
    /// one of them is `Audit`; no entry: nothing allowed.
    pub fn rule_set(
        &self,
        labels: &BTreeMap<String, String>,
        container: Option<&str>,
    ) -> Result<(RuleSet, Vec<String>), SelectError> {
        let selected = self.select(labels, container)?;
        let mode = selected
            .iter()
            .map(|e| e.mode)
            .reduce(Mode::strictest)
            .unwrap_or(Mode::Enforce);
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for entry in &selected {
            match entry.compile() {
                Ok(r) => rules.extend(r),
                Err(CompileErrors(p)) => problems.extend(p),
            }
        }
        if !problems.is_empty() {
            return Err(CompileErrors(problems).into());
        }
        let names = selected.iter().map(|e| e.name.clone()).collect();
        Ok((RuleSet::new(rules, mode), names))
    }
}

/// Parses the downward-API `labels` file: one `key="value"` per line, values Go-quoted.
pub fn parse_downward_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((key, quoted)) = line.split_once('=') else {
            continue;
        };
        let Some(inner) = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) else {
            continue;
        };
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(other) => value.push(other),
                    None => {}
                }
            } else {
                value.push(c);
            }
        }
        out.insert(key.trim().to_owned(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Host, HttpRequest, RequestPath, Verdict};

    fn pin(host: &str, addresses: &[&str]) -> ResolvePin {
        ResolvePin {
            host: host.into(),
            addresses: addresses.iter().map(|s| (*s).into()).collect(),
        }
    }

    #[test]
    fn resolve_pins_are_checked_with_their_fields() {
        let ok = check_pins(
            Some("p"),
            "spec.",
            &[
                pin("API.Example.com.", &["10.96.0.10", "fd00::10"]),
                pin("api.example.com", &["10.96.0.11", "10.96.0.10"]),
            ],
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ok["api.example.com"],
            [ip("10.96.0.10"), ip("fd00::10"), ip("10.96.0.11")]
        );
        let CompileErrors(problems) = check_pins(
            Some("p"),
            "spec.",
            &[
                pin("svc.ns.svc.cluster.local", &["10.96.0.10", "not-an-ip"]),
                pin("*.example.com", &["10.0.0.1"]),
                pin("10.0.0.1", &["10.0.0.1"]),
                pin("bad..name", &[]),
            ],
        )
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.resolve[0].addresses[1]",
                "spec.resolve[1].host",
                "spec.resolve[2].host",
                "spec.resolve[3].host",
                "spec.resolve[3].addresses",
            ]
        );
        assert!(problems[0].message.contains("not an IP address"));
        assert!(problems[1].message.contains("wildcard"));
        assert!(problems.iter().all(|p| p.policy.as_deref() == Some("p")));
    }

    #[test]
    fn the_pins_of_the_entries_selecting_a_pod_are_united() {
        let agent = Selector {
            match_labels: labels(&[("app", "agent")]),
            ..Selector::default()
        };
        let mut first = entry("a", agent.clone(), Mode::Enforce, &[]);
        first.resolve = vec![pin("db.internal", &["10.0.0.5"])];
        let mut second = entry("b", Selector::default(), Mode::Enforce, &[]);
        second.resolve = vec![
            pin("db.internal", &["10.0.0.6"]),
            pin("x.internal", &["10.0.0.7"]),
        ];
        let mut other_container = entry("c", Selector::default(), Mode::Enforce, &[]);
        other_container.containers = vec!["other".into()];
        other_container.resolve = vec![pin("y.internal", &["10.0.0.8"])];
        let mut broken = entry("d", Selector::default(), Mode::Enforce, &[]);
        broken.resolve = vec![pin("z.internal", &["nope"])];
        let file = CompiledPolicy {
            version: FORMAT_VERSION,
            namespace: "ns".into(),
            policies: vec![first, second, other_container, broken],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let pins = file
            .pins(&labels(&[("app", "agent")]), Some("agent"))
            .unwrap();
        assert_eq!(
            pins.keys().collect::<Vec<_>>(),
            ["db.internal", "x.internal"]
        );
        assert_eq!(pins["db.internal"], [ip("10.0.0.5"), ip("10.0.0.6")]);
        let unlabelled = file.pins(&labels(&[]), Some("agent")).unwrap();
        assert_eq!(unlabelled["db.internal"], [ip("10.0.0.6")]);
    }

    #[test]
    fn the_policy_hash_is_sha256_hex_of_the_bytes() {
        assert_eq!(
            policy_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            policy_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn entry(name: &str, selector: Selector, mode: Mode, allow: &[&str]) -> PolicyEntry {
        PolicyEntry {
            name: name.into(),
            pod_selector: selector,
            mode,
            allow: allow.iter().map(|s| (*s).into()).collect(),
            ..PolicyEntry::default()
        }
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let l = labels(&[("app", "agent"), ("tier", "gold")]);
        assert!(Selector::default().matches(&l).unwrap());
        let s = Selector {
            match_labels: labels(&[("app", "agent")]),
            match_expressions: vec![
                Requirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: vec!["gold".into()],
                },
                Requirement {
                    key: "debug".into(),
                    operator: "DoesNotExist".into(),
                    values: vec![],
                },
                Requirement {
                    key: "env".into(),
                    operator: "NotIn".into(),
                    values: vec!["prod".into()],
                },
            ],
        };
        assert!(s.matches(&l).unwrap());
        assert!(
            !s.matches(&labels(&[("app", "other"), ("tier", "gold")]))
                .unwrap()
        );
        let bad = Selector {
            match_expressions: vec![Requirement {
                key: "a".into(),
                operator: "Gt".into(),
                values: vec![],
            }],
            ..Selector::default()
        };
        assert!(bad.matches(&l).is_err());
    }

    #[test]
    fn union_of_selected_policies_with_enforce_winning() {
        let file = CompiledPolicy {
            version: FORMAT_VERSION,
            namespace: "agents".into(),
            policies: vec![
                entry("a", Selector::default(), Mode::Audit, &["domain=a.com"]),
                entry(
                    "b",
                    Selector {
                        match_labels: labels(&[("app", "agent")]),
                        ..Selector::default()
                    },
                    Mode::Enforce,
                    &["domain=b.com"],
                ),
                entry(
                    "c",
                    Selector {
                        match_labels: labels(&[("app", "other")]),
                        ..Selector::default()
                    },
                    Mode::Audit,
                    &["domain=c.com"],
                ),
            ],
        };
        let (set, names) = file
            .rule_set(&labels(&[("app", "agent")]), Some("main"))
            .unwrap();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(set.mode(), Mode::Enforce);
        let path = RequestPath::parse("/").unwrap();
        let allowed = |h: &str| {
            set.check_http(HttpRequest {
                host: &Host::parse(h).unwrap(),
                port: 443,
                method: "GET",
                path: &path,
                headers: &[],
                query: None,
            })
            .is_allow()
        };
        assert!(allowed("a.com") && allowed("b.com") && !allowed("c.com"));

        let (set, _) = file.rule_set(&labels(&[("app", "x")]), None).unwrap();
        assert_eq!(set.mode(), Mode::Audit, "only Audit policies select it");
        let (set, names) = file.rule_set(&labels(&[("app", "other")]), None).unwrap();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(set.rules().len(), 2);
    }

    #[test]
    fn containers_narrow_and_nothing_selected_fails_closed() {
        let mut e = entry(
            "only-agent",
            Selector::default(),
            Mode::Audit,
            &["domain=a.com"],
        );
        e.containers = vec!["agent".into()];
        let file = CompiledPolicy {
            version: 1,
            policies: vec![e],
            ..CompiledPolicy::default()
        };
        let (set, names) = file.rule_set(&BTreeMap::new(), Some("sidecar")).unwrap();
        assert!(names.is_empty() && set.rules().is_empty());
        assert_eq!(set.mode(), Mode::Enforce);
        assert_eq!(
            file.rule_set(&BTreeMap::new(), Some("agent")).unwrap().1,
            ["only-agent"]
        );
    }

    #[test]
    fn bad_rules_and_versions_are_errors() {
        let file = CompiledPolicy {
            version: 1,
            policies: vec![entry(
                "bad",
                Selector::default(),
                Mode::Enforce,
                &["domain=x.*"],
            )],
            ..CompiledPolicy::default()
        };
        let err = file.rule_set(&BTreeMap::new(), None).unwrap_err();
        assert!(
            err.to_string().contains("bad: spec.allow[0] column"),
            "{err}"
        );
        let future = CompiledPolicy {
            version: 9,
            ..CompiledPolicy::default()
        };
        assert!(matches!(
            future.rule_set(&BTreeMap::new(), None),
            Err(SelectError::Version(9))
        ));
    }

    #[test]
    fn pod_local_rules_are_read_from_the_file_and_unioned() {
        let file: CompiledPolicy = serde_json::from_value(serde_json::json!({
            "version": 1,
            "policies": [
                {"name": "db", "podSelector": {}, "podLocal": [{"ports": [5432], "description": "cloud-sql-proxy"}]},
                {"name": "dind", "podSelector": {}, "mode": "Audit", "podLocal": [{"ports": [2375, 2376]}]},
                {"name": "other", "podSelector": {"matchLabels": {"app": "x"}}, "podLocal": [{"ports": [8080]}]}
            ]
        }))
        .unwrap();
        let (set, names) = file.rule_set(&BTreeMap::new(), None).unwrap();
        assert_eq!(names, ["db", "dind"]);
        let allowed: Vec<u16> = [5432, 2375, 2376, 8080, 5433]
            .into_iter()
            .filter(|p| set.check_pod_local(*p).is_some())
            .collect();
        assert_eq!(allowed, [5432, 2375, 2376]);
        assert_eq!(set.mode(), Mode::Enforce);
        // Written back only when present, in the API's spelling.
        let json = serde_json::to_value(&file.policies[0]).unwrap();
        assert_eq!(
            json["podLocal"],
            serde_json::json!([{"ports": [5432], "description": "cloud-sql-proxy"}])
        );
        assert!(
            serde_json::to_value(PolicyEntry::default())
                .unwrap()
                .get("podLocal")
                .is_none()
        );
        let bad = CompiledPolicy {
            version: 1,
            policies: vec![PolicyEntry {
                name: "bad".into(),
                pod_local: vec![PodLocalRule {
                    ports: vec![crate::Port::new(53).unwrap()],
                    description: None,
                }],
                ..PolicyEntry::default()
            }],
            ..CompiledPolicy::default()
        };
        let err = bad.rule_set(&BTreeMap::new(), None).unwrap_err();
        assert!(
            err.to_string().contains("bad: spec.podLocal[0].ports[0]"),
            "{err}"
        );
    }

    /// A namespace's own policy allowing widely and a `ClusterBoundaryPolicy`'s entry, as the
    /// operator publishes them.
    fn with_cluster_entry(cluster_mode: &str, own_mode: &str) -> CompiledPolicy {
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "namespace": "agents",
            "policies": [
                {
                    "name": "no-exfiltration",
                    "cluster": true,
                    "podSelector": {},
                    "mode": cluster_mode,
                    "deny": [
                        "domain=pastebin.com",
                        "domain=*.github.com method=POST,PATCH path=/gists,/gists/*"
                    ],
                    "allow": ["domain=proxy.corp.example"]
                },
                {
                    "name": "agent",
                    "podSelector": {"matchLabels": {"app": "agent"}},
                    "mode": own_mode,
                    "allow": ["domain=*"],
                    "http": [{"domains": ["pastebin.com"], "tls": "Passthrough"}],
                    "tcp": [{"domain": "api.github.com", "ports": [22]}]
                }
            ]
        }))
        .unwrap()
    }

    fn verdict<'a>(set: &'a RuleSet, method: &str, host: &str, path: &str) -> Verdict<'a> {
        let host = Host::parse(host).unwrap();
        let path = RequestPath::parse(path).unwrap();
        set.check_http(HttpRequest {
            host: &host,
            port: 443,
            method,
            path: &path,
            headers: &[],
            query: None,
        })
    }

    #[test]
    fn a_cluster_entrys_deny_rules_beat_the_namespaces_allow_rules() {
        let file = with_cluster_entry("Enforce", "Enforce");
        let (set, names) = file
            .rule_set(&labels(&[("app", "agent")]), Some("main"))
            .unwrap();
        assert_eq!(names, ["no-exfiltration", "agent"]);
        assert_eq!((set.rules().len(), set.deny_rules().len()), (4, 2));
        // Whole-host deny: beats `domain=*` of the other entry, named as the cluster's rule.
        let Verdict::Denied { by, overrides } = verdict(&set, "GET", "pastebin.com", "/x") else {
            panic!("domain=* allowed a denied host")
        };
        assert_eq!(
            by.origin().to_string(),
            "ClusterBoundaryPolicy no-exfiltration spec.deny[0]: domain=pastebin.com"
        );
        assert_eq!(
            overrides.unwrap().origin().to_string(),
            "agent spec.allow[0]: domain=*"
        );
        // Method and path: only matching requests are denied.
        let Verdict::Denied { by, .. } = verdict(&set, "POST", "api.github.com", "/gists") else {
            panic!("POST /gists allowed")
        };
        assert_eq!(by.origin().field, "spec.deny[1]");
        assert!(
            verdict(&set, "PATCH", "api.github.com", "/gists/7")
                .deny_rule()
                .is_some()
        );
        assert!(verdict(&set, "GET", "api.github.com", "/gists").is_allow());
        assert!(verdict(&set, "POST", "api.github.com", "/repos").is_allow());
        assert!(verdict(&set, "POST", "github.com", "/gists").is_allow());
        // The cluster entry's allow rules add to the namespace's.
        let (own_only, _) = file.rule_set(&labels(&[]), None).unwrap();
        assert!(verdict(&own_only, "GET", "proxy.corp.example", "/").is_allow());
        assert!(!verdict(&own_only, "GET", "example.org", "/").is_allow());
    }

    #[test]
    fn connections_and_tls_to_denied_hosts_are_refused_before_looking_inside() {
        let file = with_cluster_entry("Enforce", "Enforce");
        let (set, _) = file.rule_set(&labels(&[("app", "agent")]), None).unwrap();
        let paste = Host::parse("pastebin.com").unwrap();
        let gh = Host::parse("api.github.com").unwrap();
        // The namespace's passthrough and TCP rules are beaten: the proxy cannot see the method
        // or path, so a deny rule for the host and port decides.
        assert!(matches!(
            set.check_passthrough(&paste, 443),
            Verdict::Denied {
                overrides: Some(_),
                ..
            }
        ));
        let Verdict::Denied { by, overrides } = set.check_tcp(&gh, 22) else {
            panic!("TCP allowed to a host a deny rule names")
        };
        assert_eq!(by.origin().field, "spec.deny[1]");
        assert_eq!(overrides.unwrap().origin().field, "spec.tcp[0]");
        // TLS: refused before a certificate only for a whole-host deny.
        assert!(!set.may_allow_http(&paste, 443));
        assert!(set.may_allow_http(&gh, 443));
        assert!(set.may_allow_http(&Host::parse("example.org").unwrap(), 443));
    }

    #[test]
    fn a_cluster_entrys_mode_combines_like_any_other() {
        let selected = labels(&[("app", "agent")]);
        for (cluster, own, expected) in [
            ("Audit", "Enforce", Mode::Enforce),
            ("Enforce", "Audit", Mode::Enforce),
            ("Audit", "Audit", Mode::Audit),
        ] {
            let (set, _) = with_cluster_entry(cluster, own)
                .rule_set(&selected, None)
                .unwrap();
            assert_eq!(set.mode(), expected, "cluster {cluster}, namespace {own}");
            // In Audit the verdict is the same; the proxy lets it through and records it.
            assert!(
                verdict(&set, "GET", "pastebin.com", "/")
                    .deny_rule()
                    .is_some()
            );
        }
    }

    #[test]
    fn deny_rule_problems_name_spec_deny_and_the_column() {
        let entry = PolicyEntry {
            name: "admins".into(),
            cluster: true,
            deny: vec!["domain=ok.com".into(), "domain=a.com metod=POST".into()],
            allow: vec!["domain=ok.com".into()],
            ..PolicyEntry::default()
        };
        let CompileErrors(problems) = entry.compile().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.deny[1]");
        assert_eq!(problems[0].column, Some(14));
        assert_eq!(problems[0].policy.as_deref(), Some("admins"));
        let file = CompiledPolicy {
            version: 1,
            policies: vec![entry],
            ..CompiledPolicy::default()
        };
        let err = file.rule_set(&BTreeMap::new(), None).unwrap_err();
        assert!(
            err.to_string().contains("admins: spec.deny[1] column 14"),
            "{err}"
        );
        // Written back only when present.
        let json = serde_json::to_value(PolicyEntry::default()).unwrap();
        assert!(json.get("deny").is_none() && json.get("cluster").is_none());
    }

    #[test]
    fn downward_api_labels_file() {
        let text = "app=\"agent\"\npod-template-hash=\"5d8\"\nquoted=\"a\\\"b\\\\c\"\n";
        let l = parse_downward_labels(text);
        assert_eq!(l["app"], "agent");
        assert_eq!(l["quoted"], "a\"b\\c");
        assert_eq!(l.len(), 3);
    }
}

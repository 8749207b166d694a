//! Policy files on a laptop: the `BoundaryPolicy` and `ClusterBoundaryPolicy` YAML a cluster
//! uses (one or more documents, `kubectl apply -f` style), read without Kubernetes types into
//! [`PolicyEntry`] values for `boundary run --policy` and `boundary check --policy`.
//!
//! Unknown fields are errors naming the document and the field (a typo must not silently drop
//! a rule); so are other kinds, other API versions and values of the wrong type. A test in
//! `crd` (feature `kube`) keeps this reader and the CRD's schema from drifting apart.
//!
//! What a pod-only field means here: selectors (`podSelector`, `containers`,
//! `namespaceSelector`) and `jail`, `requireJailing` select pods or shape their jail, so with no
//! pod they are ignored, each with a note. Every document of the file applies.

use std::fmt;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::compiled::{PolicyEntry, Selector};
use crate::contract::API_VERSION;
use crate::policy::{HttpRule, Mode, TcpRule};

/// The kinds a policy file may hold.
pub const KINDS: [&str; 2] = ["BoundaryPolicy", "ClusterBoundaryPolicy"];

/// One policy of a file, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePolicy {
    /// 1-based index of its YAML document in the file.
    pub document: usize,
    /// The policy, as the sidecar would hold it (`cluster: true` for a
    /// `ClusterBoundaryPolicy`).
    pub entry: PolicyEntry,
}

impl FilePolicy {
    /// `BoundaryPolicy web` or `ClusterBoundaryPolicy no-paste`.
    pub fn describe(&self) -> String {
        let kind = if self.entry.cluster {
            KINDS[1]
        } else {
            KINDS[0]
        };
        format!("{kind} {}", self.entry.name)
    }
}

/// A parsed policy file: its policies in file order, and notes on what was ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFile {
    /// The policies.
    pub policies: Vec<FilePolicy>,
    /// What a laptop ignores (pod selectors, jail settings), one line each.
    pub notes: Vec<String>,
}

/// A problem in a policy file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    /// 1-based document index (0: the file as a whole).
    pub document: usize,
    /// `BoundaryPolicy web`, when known.
    pub policy: Option<String>,
    /// The field (`spec.http[0].domian`), when known.
    pub field: Option<String>,
    /// 1-based line and column in the file, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 0 {
            write!(f, "document {}", self.document)?;
            if let Some(policy) = &self.policy {
                write!(f, " ({policy})")?;
            }
        } else {
            f.write_str("file")?;
        }
        if let Some((line, column)) = self.position {
            write!(f, ", line {line} column {column}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem of a file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct FileProblems(pub Vec<FileProblem>);

/// A `ClusterBoundaryPolicy`'s spec, free of Kubernetes types.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterSpec {
    #[serde(default)]
    namespace_selector: Selector,
    #[serde(default)]
    pod_selector: Selector,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    deny_http: Vec<HttpRule>,
    #[serde(default)]
    presets: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    http: Vec<HttpRule>,
    #[serde(default)]
    tcp: Vec<TcpRule>,
    #[serde(default)]
    require_jailing: bool,
}

/// Parses a policy file: every document, every problem.
pub fn parse(text: &str) -> Result<PolicyFile, FileProblems> {
    let mut out = PolicyFile::default();
    let mut problems = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                problems.push(FileProblem {
                    document: index,
                    policy: None,
                    field: None,
                    position: e.location().map(|l| (l.line(), l.column())),
                    message: yaml_message(&e),
                });
                // The parser cannot go on after a syntax error.
                break;
            }
        };
        if value.is_null() {
            // An empty document (`---` at the end): kubectl skips it too.
            continue;
        }
        match document_policy(index, value, &mut out.notes) {
            Ok(entry) => out.policies.push(FilePolicy {
                document: index,
                entry,
            }),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() && out.policies.is_empty() {
        problems.push(FileProblem {
            document: 0,
            policy: None,
            field: None,
            position: None,
            message: format!("no policy in it (documents of kind {})", KINDS.join(" or ")),
        });
    }
    let mut names: Vec<(&str, bool)> = Vec::new();
    for p in &out.policies {
        let key = (p.entry.name.as_str(), p.entry.cluster);
        if names.contains(&key) {
            problems.push(FileProblem {
                document: p.document,
                policy: Some(p.describe()),
                field: Some("metadata.name".into()),
                position: None,
                message: "another document of this kind has the same name".into(),
            });
        }
        names.push(key);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(FileProblems(problems))
    }
}

/// The [`crate::contract::annotations::LINT_IGNORE`] annotation of each policy of a file that
/// has one: `(name, cluster, value)`, in file order. Documents that do not parse are skipped
/// ([`parse`] reports them).
pub fn lint_ignores(text: &str) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let Ok(value) = Value::deserialize(document) else {
            break;
        };
        let kind = value.get("kind").and_then(Value::as_str);
        let metadata = value.get("metadata");
        let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str);
        let ignore = metadata
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(crate::contract::annotations::LINT_IGNORE))
            .and_then(Value::as_str);
        if let (Some(kind), Some(name), Some(ignore)) = (kind, name, ignore) {
            out.push((name.to_owned(), kind == KINDS[1], ignore.to_owned()));
        }
    }
    out
}

/// `serde_yaml`'s message without its own " at line L column C" (the position is kept apart).
fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn document_policy(
    index: usize,
    value: Value,
    notes: &mut Vec<String>,
) -> Result<PolicyEntry, Vec<FileProblem>> {
    let problem = |policy: Option<&str>, field: Option<&str>, message: String| FileProblem {
        document: index,
        policy: policy.map(str::to_owned),
        field: field.map(str::to_owned),
        position: None,
        message,
    };
    let Value::Mapping(mut top) = value else {
        return Err(vec![problem(
            None,
            None,
            "expected a mapping with apiVersion, kind, metadata and spec".into(),
        )]);
    };
    let kind = take_string(&mut top, "kind");
    let kind = match kind.as_deref() {
        Some(k) if KINDS.contains(&k) => k.to_owned(),
        Some(k) => {
            return Err(vec![problem(
                None,
                Some("kind"),
                format!(
                    "kind {k:?} is not a policy: a policy file holds {} documents",
                    KINDS.join(" and ")
                ),
            )]);
        }
        None => {
            return Err(vec![problem(
                None,
                Some("kind"),
                format!("kind is missing (expected {})", KINDS.join(" or ")),
            )]);
        }
    };
    let name = top
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(vec![problem(
            None,
            Some("metadata.name"),
            "a policy needs a name (it names its rules in decisions and audit records)".into(),
        )]);
    };
    let describe = format!("{kind} {name}");
    let mut problems = Vec::new();
    match take_string(&mut top, "apiVersion").as_deref() {
        Some(API_VERSION) => {}
        other => problems.push(problem(
            Some(&describe),
            Some("apiVersion"),
            format!("{other:?} is not {API_VERSION:?}"),
        )),
    }
    top.remove("metadata");
    // What `kubectl get -o yaml` adds; never read.
    top.remove("status");
    let spec = top.remove("spec").unwrap_or(Value::Mapping(Mapping::new()));
    for key in top.keys() {
        problems.push(problem(
            Some(&describe),
            Some(&key_text(key)),
            "unknown field (a policy has apiVersion, kind, metadata, spec)".into(),
        ));
    }
    let Value::Mapping(mut spec) = spec else {
        problems.push(problem(
            Some(&describe),
            Some("spec"),
            "expected a mapping".into(),
        ));
        return Err(problems);
    };
    let entry = if kind == KINDS[1] {
        cluster_entry(&name, &describe, spec, notes)
    } else {
        // `name` and `cluster` are the compiled file's, not the spec's: here they are unknown.
        for own in ["name", "cluster"] {
            if spec.contains_key(own) {
                problems.push(problem(
                    Some(&describe),
                    Some(&format!("spec.{own}")),
                    "unknown field".into(),
                ));
            }
        }
        spec.insert("name".into(), Value::String(name.clone()));
        namespaced_entry(&describe, spec, notes)
    };
    match entry {
        Ok(entry) if problems.is_empty() => Ok(entry),
        Ok(_) => Err(problems),
        Err(typed_problems) => {
            problems.extend(typed_problems.into_iter().map(|(field, message)| {
                problem(Some(&describe), Some(&format!("spec.{field}")), message)
            }));
            Err(problems)
        }
    }
}

/// A `BoundaryPolicy`'s spec (with its name put in) as the compiled entry.
fn namespaced_entry(
    describe: &str,
    spec: Mapping,
    notes: &mut Vec<String>,
) -> Result<PolicyEntry, Vec<(String, String)>> {
    typed::<PolicyEntry>(Value::Mapping(spec)).inspect(|e| {
        if e.pod_selector != Selector::default() || !e.containers.is_empty() {
            notes.push(format!(
                "{describe}: podSelector and containers are ignored: on a laptop every policy \
                 of the file applies to the one jailed command"
            ));
        }
        if e.jail != crate::policy::JailSpec::default() {
            notes.push(format!(
                "{describe}: spec.jail is ignored: choose the tier with --tier"
            ));
        }
    })
}

/// A `ClusterBoundaryPolicy`'s spec as the compiled entry (`cluster: true`).
fn cluster_entry(
    name: &str,
    describe: &str,
    spec: Mapping,
    notes: &mut Vec<String>,
) -> Result<PolicyEntry, Vec<(String, String)>> {
    typed::<ClusterSpec>(Value::Mapping(spec)).map(|s| {
        if s.namespace_selector != Selector::default() || s.pod_selector != Selector::default() {
            notes.push(format!(
                "{describe}: namespaceSelector and podSelector are ignored: on a laptop every \
                 policy of the file applies"
            ));
        }
        if s.require_jailing {
            notes.push(format!(
                "{describe}: requireJailing is ignored: it labels namespaces in a cluster"
            ));
        }
        PolicyEntry {
            name: name.to_owned(),
            mode: s.mode,
            cluster: true,
            deny: s.deny,
            deny_http: s.deny_http,
            presets: s.presets,
            allow: s.allow,
            http: s.http,
            tcp: s.tcp,
            ..PolicyEntry::default()
        }
    })
}

/// Deserializes a spec, collecting every unknown field (with its path) and the first type error.
fn typed<T: serde::de::DeserializeOwned>(spec: Value) -> Result<T, Vec<(String, String)>> {
    let mut unknown = Vec::new();
    let result: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        spec,
        &mut |path: serde_ignored::Path<'_>| unknown.push(field_path(&path)),
    ));
    let mut problems: Vec<(String, String)> = unknown
        .into_iter()
        .map(|f| (f, "unknown field".to_owned()))
        .collect();
    match result {
        Ok(value) if problems.is_empty() => Ok(value),
        Ok(_) => Err(problems),
        Err(e) => {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            problems.push((if path == "." { String::new() } else { path }, message));
            Err(problems)
        }
    }
}

/// `http[0].domian` from `serde_ignored`'s path (which starts at the spec's root).
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn take_string(map: &mut Mapping, key: &str) -> Option<String> {
    map.remove(key).and_then(|v| v.as_str().map(str::to_owned))
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
apiVersion: agentboundary.dev/v1alpha1
kind: BoundaryPolicy
metadata:
  name: web
  namespace: agents
spec:
  podSelector:
    matchLabels: {app: agent}
  mode: Audit
  allow:
    - domain=api.github.com method=GET
  tcp:
    - {domain: github.com, ports: [22]}
---
apiVersion: agentboundary.dev/v1alpha1
kind: ClusterBoundaryPolicy
metadata:
  name: no-paste
spec:
  namespaceSelector: {}
  podSelector: {}
  deny:
    - domain=pastebin.com
---
";

    #[test]
    fn several_documents_of_both_kinds_are_read() {
        let file = parse(TWO).unwrap();
        assert_eq!(file.policies.len(), 2);
        let web = &file.policies[0];
        assert_eq!((web.document, web.entry.name.as_str()), (1, "web"));
        assert_eq!(web.entry.mode, Mode::Audit);
        assert_eq!(web.entry.allow, ["domain=api.github.com method=GET"]);
        assert_eq!(web.entry.tcp[0].domain, "github.com");
        assert!(!web.entry.cluster);
        let paste = &file.policies[1];
        assert_eq!(paste.document, 2);
        assert!(paste.entry.cluster);
        assert_eq!(paste.entry.deny, ["domain=pastebin.com"]);
        assert_eq!(paste.describe(), "ClusterBoundaryPolicy no-paste");
        assert_eq!(file.notes.len(), 1, "{:?}", file.notes);
        assert!(file.notes[0].contains("BoundaryPolicy web: podSelector"));
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unknown_fields_are_errors_naming_document_and_field() {
        let text = TWO.replace(
            "    - {domain: github.com",
            "    - {domian: x, domain: github.com",
        );
        let text = text.replace(
            "  deny:\n",
            "  requireJailing: true\n  denny: []\n  deny:\n",
        );
        assert_eq!(
            problems(&text),
            [
                "document 1 (BoundaryPolicy web), spec.tcp[0].domian: unknown field",
                "document 2 (ClusterBoundaryPolicy no-paste), spec.denny: unknown field"
            ]
        );
        // Fields of the other kind are unknown too.
        let text = TWO.replace("  deny:\n", "  containers: [a]\n  deny:\n");
        assert_eq!(
            problems(&text),
            ["document 2 (ClusterBoundaryPolicy no-paste), spec.containers: unknown field"]
        );
        let text = TWO.replace(
            "kind: BoundaryPolicy\n",
            "kind: BoundaryPolicy\nstatuss: {}\n",
        );
        assert_eq!(
            problems(&text),
            [
                "document 1 (BoundaryPolicy web), statuss: unknown field (a policy has apiVersion, kind, metadata, spec)"
            ]
        );
        let text = TWO.replace("  mode: Audit\n", "  mode: Audit\n  name: x\n");
        assert_eq!(
            problems(&text),
            ["document 1 (BoundaryPolicy web), spec.name: unknown field"]
        );
    }

    #[test]
    fn wrong_types_kinds_and_versions_are_named() {
        let text = TWO.replace("ports: [22]", "ports: [seventy]");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("document 1 (BoundaryPolicy web), spec.tcp[0].ports[0]: "),
            "{p:?}"
        );
        let text = TWO.replace("mode: Audit", "mode: Audited");
        let p = problems(&text);
        assert!(
            p[0].starts_with("document 1 (BoundaryPolicy web), spec.mode: unknown variant"),
            "{p:?}"
        );
        let text = format!("{TWO}apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n");
        assert_eq!(
            problems(&text),
            [
                "document 3, kind: kind \"ConfigMap\" is not a policy: a policy file holds BoundaryPolicy and ClusterBoundaryPolicy documents"
            ]
        );
        let text = TWO.replacen("agentboundary.dev/v1alpha1", "agentboundary.dev/v1", 1);
        assert_eq!(
            problems(&text),
            [
                "document 1 (BoundaryPolicy web), apiVersion: Some(\"agentboundary.dev/v1\") is not \"agentboundary.dev/v1alpha1\""
            ]
        );
        let text = TWO.replace("  name: no-paste\n", "  labels: {}\n");
        assert_eq!(
            problems(&text),
            [
                "document 2, metadata.name: a policy needs a name (it names its rules in decisions and audit records)"
            ]
        );
        let text = TWO.replace("name: no-paste", "name: web");
        assert!(parse(&text).is_ok(), "names are per kind");
        let text = format!("{TWO}{}", TWO.split("---").next().unwrap());
        assert_eq!(
            problems(&text),
            [
                "document 3 (BoundaryPolicy web), metadata.name: another document of this kind has the same name"
            ]
        );
    }

    #[test]
    fn syntax_errors_have_line_and_column_and_empty_files_are_refused() {
        let text = "apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata: {name: a\nspec: {}\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("document 1, line 4 column "), "{p:?}");
        assert_eq!(
            problems("---\n"),
            ["file: no policy in it (documents of kind BoundaryPolicy or ClusterBoundaryPolicy)"]
        );
        assert_eq!(
            problems("- a\n"),
            ["document 1: expected a mapping with apiVersion, kind, metadata and spec"]
        );
    }

    #[test]
    fn a_policy_without_spec_fields_is_empty_and_its_rules_compile_with_its_name() {
        let file = parse(
            "apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata: {name: a}\nspec:\n  allow: [\"domain=a.com\", \"metod=GET\"]\n",
        )
        .unwrap();
        let e = file.policies[0].entry.compile().unwrap_err();
        assert!(
            e.0[0]
                .to_string()
                .starts_with("a: spec.allow[1] column 1: "),
            "{e}"
        );
        assert_eq!(e.0[0].field, "spec.allow[1]");
        assert_eq!(e.0[0].policy.as_deref(), Some("a"));
    }
}

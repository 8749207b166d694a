//! The CRD compatibility check: compares the CRDs of this tree with those of the previous release
//! and lists every change that would break objects already stored, or clients written against
//! the old schema, within a version that both serve.
//!
//! Kubernetes serves every stored object through the current schema of its version: a dropped
//! field is pruned from stored objects without an error, a new required field or a tighter bound
//! makes every update of an old object fail, a changed default rewrites what old objects mean.
//! Such changes need a new API version (see `docs/api-versions.md`); adding optional fields,
//! widening bounds, adding enum values or a new version are compatible.
//!
//! Pure: YAML text in, a sorted list of [`Incompatibility`] out. `boundary-crd-compat` (the
//! binary) reads the files; `tests/scripts/crd-compat.sh` picks the baseline (the last git tag's
//! CRDs, or the committed `crds/compat-baseline/` while there is no tag).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

/// A CRD file that is not a readable `apiextensions.k8s.io/v1` `CustomResourceDefinition`.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// Not YAML.
    #[error("{source_name}: not YAML: {error}")]
    Yaml {
        /// The file (or git object) the text came from.
        source_name: String,
        /// The parser's message, with line and column.
        error: serde_yaml_ng::Error,
    },
    /// YAML, but not a CRD this check can compare.
    #[error("{source_name}, document {document}: {reason}")]
    NotACrd {
        /// The file (or git object) the text came from.
        source_name: String,
        /// 1-based YAML document index.
        document: usize,
        /// What is wrong.
        reason: String,
    },
    /// The same CRD twice among the files of one side.
    #[error("{source_name}: the CRD {name} is defined twice")]
    Duplicate {
        /// The file holding the second definition.
        source_name: String,
        /// `metadata.name` of the CRD.
        name: String,
    },
}

/// One incompatible change, with the CRD, the served version and the field path it concerns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Incompatibility {
    /// `metadata.name` of the CRD, e.g. `boundarypolicies.agentboundary.dev`.
    pub crd: String,
    /// The API version whose schema changed; `None` for a change of the whole CRD.
    pub version: Option<String>,
    /// The field, e.g. `.spec.http[*].ports[*]` (`.` for the object itself); empty for a change
    /// of the CRD outside any schema.
    pub path: String,
    /// What changed and why it breaks, e.g. `minimum raised from 1 to 2`.
    pub change: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.crd)?;
        if let Some(version) = &self.version {
            write!(f, " {version}")?;
        }
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        write!(f, ": {}", self.change)
    }
}

/// The CRDs of one side, by `metadata.name`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrdSet {
    crds: BTreeMap<String, Value>,
}

impl CrdSet {
    /// Adds every CRD of a (multi-document) YAML text; empty documents are skipped.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<(), CompatError> {
        use serde::Deserialize;
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let document_number = index + 1;
            let value = Value::deserialize(document).map_err(|error| CompatError::Yaml {
                source_name: source_name.to_owned(),
                error,
            })?;
            if value.is_null() {
                continue;
            }
            let not_a_crd = |reason: &str| CompatError::NotACrd {
                source_name: source_name.to_owned(),
                document: document_number,
                reason: reason.to_owned(),
            };
            if value.get("apiVersion").and_then(Value::as_str) != Some("apiextensions.k8s.io/v1")
                || value.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition")
            {
                return Err(not_a_crd(
                    "not an apiextensions.k8s.io/v1 CustomResourceDefinition",
                ));
            }
            let Some(name) = value.pointer("/metadata/name").and_then(Value::as_str) else {
                return Err(not_a_crd("no metadata.name"));
            };
            if !value.pointer("/spec/versions").is_some_and(Value::is_array) {
                return Err(not_a_crd("no spec.versions list"));
            }
            let name = name.to_owned();
            if self.crds.insert(name.clone(), value).is_some() {
                return Err(CompatError::Duplicate {
                    source_name: source_name.to_owned(),
                    name,
                });
            }
        }
        Ok(())
    }

    /// How many CRDs the set holds.
    pub fn len(&self) -> usize {
        self.crds.len()
    }

    /// Whether the set holds no CRD.
    pub fn is_empty(&self) -> bool {
        self.crds.is_empty()
    }
}

/// Every incompatible change from `released` to `current`, sorted by CRD, version and path.
pub fn compare(released: &CrdSet, current: &CrdSet) -> Vec<Incompatibility> {
    let mut found = Vec::new();
    for (name, old) in &released.crds {
        let Some(new) = current.crds.get(name) else {
            found.push(Incompatibility {
                crd: name.clone(),
                version: None,
                path: String::new(),
                change: "the CRD was removed (deleting a CRD deletes every object of it)".into(),
            });
            continue;
        };
        compare_crd(name, old, new, &mut found);
    }
    found.sort();
    found.dedup();
    found
}

fn compare_crd(name: &str, old: &Value, new: &Value, found: &mut Vec<Incompatibility>) {
    let mut crd_change = |change: String| {
        found.push(Incompatibility {
            crd: name.to_owned(),
            version: None,
            path: String::new(),
            change,
        });
    };
    for field in [
        "/spec/group",
        "/spec/scope",
        "/spec/names/kind",
        "/spec/names/plural",
        "/spec/names/singular",
        "/spec/names/listKind",
    ] {
        let (before, after) = (old.pointer(field), new.pointer(field));
        if before != after {
            crd_change(format!(
                "{} changed from {} to {}",
                field.trim_start_matches('/').replace('/', "."),
                show(before),
                show(after)
            ));
        }
    }
    for list in ["/spec/names/shortNames", "/spec/names/categories"] {
        for gone in missing_strings(old.pointer(list), new.pointer(list)) {
            crd_change(format!(
                "{} no longer has {gone:?} (kubectl commands using it stop working)",
                list.trim_start_matches('/').replace('/', ".")
            ));
        }
    }

    let new_versions = versions(new);
    for (version, old_version) in versions(old) {
        if !is_served(old_version) {
            continue;
        }
        let Some(new_version) = new_versions.get(version).filter(|v| is_served(v)) else {
            found.push(Incompatibility {
                crd: name.to_owned(),
                version: Some(version.to_owned()),
                path: String::new(),
                change: "this served version is no longer served (clients and stored objects of it break)"
                    .into(),
            });
            continue;
        };
        let mut in_version = |path: &str, change: String| {
            found.push(Incompatibility {
                crd: name.to_owned(),
                version: Some(version.to_owned()),
                path: path.to_owned(),
                change,
            });
        };
        for subresource in ["status", "scale"] {
            let pointer = format!("/subresources/{subresource}");
            let (before, after) = (old_version.pointer(&pointer), new_version.pointer(&pointer));
            if before.is_some() && before != after {
                in_version(
                    "",
                    format!(
                        "subresource {subresource} changed from {} to {}",
                        show(before),
                        show(after)
                    ),
                );
            }
        }
        let root = "/schema/openAPIV3Schema";
        match (old_version.pointer(root), new_version.pointer(root)) {
            (Some(before), Some(after)) => {
                compare_schema(before, after, ".", &mut in_version);
            }
            (Some(_), None) => in_version(
                "",
                "the schema was removed (every field would be pruned)".into(),
            ),
            (None, _) => {}
        }
    }
}

fn versions(crd: &Value) -> BTreeMap<&str, &Value> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|version| Some((version.get("name")?.as_str()?, version)))
        .collect()
}

fn is_served(version: &Value) -> bool {
    version.get("served").and_then(Value::as_bool) == Some(true)
}

/// A value for a message: `absent`, or its compact JSON.
fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_owned(), Value::to_string)
}

fn strings(value: Option<&Value>) -> BTreeSet<String> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|item| {
            item.as_str()
                .map_or_else(|| item.to_string(), str::to_owned)
        })
        .collect()
}

/// Members of `before`'s list that `after`'s lacks.
fn missing_strings(before: Option<&Value>, after: Option<&Value>) -> Vec<String> {
    let after = strings(after);
    strings(before)
        .into_iter()
        .filter(|item| !after.contains(item))
        .collect()
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn child_path(path: &str, suffix: &str) -> String {
    if path == "." {
        format!(".{suffix}")
    } else {
        format!("{path}.{suffix}")
    }
}

/// Keywords compared as a whole: any new or changed value may refuse what was accepted, or
/// change how stored objects merge or read.
const TIGHTEN_WHEN_ADDED_OR_CHANGED: [(&str, &str); 6] = [
    (
        "format",
        "values that are not of the new format are refused",
    ),
    ("pattern", "values that do not match are refused"),
    ("multipleOf", "values that are no multiple are refused"),
    ("not", "values it matches are refused"),
    ("oneOf", "values that match none (or several) are refused"),
    ("anyOf", "values that match none are refused"),
];

/// Keywords whose any change, added, removed or changed, changes what stored objects mean.
const CHANGE_IS_BREAKING: [(&str, &str); 7] = [
    ("type", "stored values of the old type no longer validate"),
    (
        "default",
        "objects without the field read differently (defaults apply to stored objects too)",
    ),
    (
        "x-kubernetes-int-or-string",
        "stored values of the other kind no longer validate",
    ),
    (
        "x-kubernetes-embedded-resource",
        "embedded objects are validated differently",
    ),
    (
        "x-kubernetes-list-type",
        "server-side apply merges the list differently",
    ),
    (
        "x-kubernetes-list-map-keys",
        "server-side apply merges the list by other keys",
    ),
    (
        "x-kubernetes-map-type",
        "server-side apply merges the map differently",
    ),
];

/// Lower bounds: a new or raised value tightens.
const LOWER_BOUNDS: [&str; 4] = ["minimum", "minLength", "minItems", "minProperties"];
/// Upper bounds: a new or lowered value tightens.
const UPPER_BOUNDS: [&str; 4] = ["maximum", "maxLength", "maxItems", "maxProperties"];

#[allow(clippy::too_many_lines)]
fn compare_schema(old: &Value, new: &Value, path: &str, report: &mut impl FnMut(&str, String)) {
    for (key, why) in CHANGE_IS_BREAKING {
        let (before, after) = (old.get(key), new.get(key));
        if before != after {
            report(
                path,
                format!(
                    "{key} changed from {} to {} ({why})",
                    show(before),
                    show(after)
                ),
            );
        }
    }
    for (key, why) in TIGHTEN_WHEN_ADDED_OR_CHANGED {
        let (before, after) = (old.get(key), new.get(key));
        if after.is_some() && before != after {
            report(
                path,
                format!(
                    "{key} changed from {} to {} ({why})",
                    show(before),
                    show(after)
                ),
            );
        }
    }
    // allOf only ever adds constraints: any new member tightens.
    for member in added_members(old, new, "allOf") {
        report(
            path,
            format!("allOf gained {member} (values it refuses are refused)"),
        );
    }
    // CEL rules (apiextensions v1, Kubernetes 1.25+): a new rule may refuse stored objects.
    for rule in added_members(old, new, "x-kubernetes-validations") {
        report(
            path,
            format!("validation rule {rule} added (stored objects may fail it)"),
        );
    }

    if let Some(after) = new.get("enum").and_then(Value::as_array) {
        match old.get("enum").and_then(Value::as_array) {
            None => report(
                path,
                format!(
                    "enum added ({}): every other value, accepted before, is refused",
                    Value::Array(after.clone())
                ),
            ),
            Some(before) => {
                let removed: Vec<String> = before
                    .iter()
                    .filter(|value| !after.contains(value))
                    .map(Value::to_string)
                    .collect();
                if !removed.is_empty() {
                    report(
                        path,
                        format!("enum narrowed: {} no longer allowed", removed.join(", ")),
                    );
                }
            }
        }
    }

    for key in LOWER_BOUNDS {
        let (before, after) = (
            old.get(key).and_then(Value::as_f64),
            new.get(key).and_then(Value::as_f64),
        );
        match (before, after) {
            (None, Some(_)) => report(
                path,
                format!(
                    "{key} {} added (smaller values are refused)",
                    show(new.get(key))
                ),
            ),
            (Some(b), Some(a)) if a > b => report(
                path,
                format!(
                    "{key} raised from {} to {} (values in between are refused)",
                    show(old.get(key)),
                    show(new.get(key))
                ),
            ),
            _ => {}
        }
    }
    for key in UPPER_BOUNDS {
        let (before, after) = (
            old.get(key).and_then(Value::as_f64),
            new.get(key).and_then(Value::as_f64),
        );
        match (before, after) {
            (None, Some(_)) => report(
                path,
                format!(
                    "{key} {} added (larger values are refused)",
                    show(new.get(key))
                ),
            ),
            (Some(b), Some(a)) if a < b => report(
                path,
                format!(
                    "{key} lowered from {} to {} (values in between are refused)",
                    show(old.get(key)),
                    show(new.get(key))
                ),
            ),
            _ => {}
        }
    }
    for key in ["exclusiveMinimum", "exclusiveMaximum", "uniqueItems"] {
        if flag(new, key) && !flag(old, key) {
            report(
                path,
                format!("{key} set (values accepted before are refused)"),
            );
        }
    }
    if flag(old, "nullable") && !flag(new, "nullable") {
        report(
            path,
            "no longer nullable (stored nulls and clients writing null are refused)".into(),
        );
    }
    if flag(old, "x-kubernetes-preserve-unknown-fields")
        && !flag(new, "x-kubernetes-preserve-unknown-fields")
    {
        report(
            path,
            "no longer preserves unknown fields (the apiserver prunes them from stored objects)"
                .into(),
        );
    }

    let old_required = strings(old.get("required"));
    for field in strings(new.get("required")) {
        if !old_required.contains(&field) {
            report(
                path,
                format!("{field} became required (objects without it can no longer be updated)"),
            );
        }
    }

    let empty = serde_json::Map::new();
    let old_properties = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_properties = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_preserves = flag(new, "x-kubernetes-preserve-unknown-fields");
    for (field, before) in old_properties {
        let field_path = child_path(path, field);
        match new_properties.get(field) {
            Some(after) => compare_schema(before, after, &field_path, report),
            None if new_preserves => {}
            None => report(
                &field_path,
                "field dropped (the apiserver silently prunes it from stored objects)".into(),
            ),
        }
    }
    if flag(old, "x-kubernetes-preserve-unknown-fields") {
        for field in new_properties.keys() {
            if !old_properties.contains_key(field) {
                report(
                    &child_path(path, field),
                    "field given a schema where any value was kept before (stored values may not validate)"
                        .into(),
                );
            }
        }
    }

    match (
        old.get("additionalProperties"),
        new.get("additionalProperties"),
    ) {
        (Some(before), Some(after)) if before.is_object() && after.is_object() => {
            compare_schema(before, after, &child_path(path, "*"), report);
        }
        (Some(before), after) if before != &Value::Bool(false) && after != Some(before) => report(
            &child_path(path, "*"),
            format!(
                "map values' schema changed from {} to {} (stored entries may be pruned or refused)",
                show(Some(before)),
                show(after)
            ),
        ),
        _ => {}
    }

    match (old.get("items"), new.get("items")) {
        (Some(before), Some(after)) => {
            compare_schema(before, after, &format!("{path}[*]"), report);
        }
        (Some(_), None) => report(
            &format!("{path}[*]"),
            "the items' schema was removed (their fields would be pruned)".into(),
        ),
        _ => {}
    }
}

/// The members of the array `key` of `new` that the same array of `old` lacks.
fn added_members<'a>(
    old: &'a Value,
    new: &'a Value,
    key: &'a str,
) -> impl Iterator<Item = &'a Value> {
    let members = move |schema: &'a Value| {
        schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    let before: Vec<&Value> = members(old).collect();
    members(new).filter(move |member| !before.contains(member))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [selector]
            properties:
              selector: {type: string}
              mode: {type: string, enum: [Enforce, Audit], default: Enforce}
              ports:
                type: array
                items: {type: integer, format: int32, minimum: 1, maximum: 65535}
              labels:
                type: object
                additionalProperties: {type: string}
              note: {type: string, nullable: true, maxLength: 100}
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  properties:
                    type: {type: string}
";

    fn set(text: &str) -> CrdSet {
        let mut set = CrdSet::default();
        set.add_yaml("test.yaml", text).unwrap();
        set
    }

    /// The changes from BASE to BASE with `from` replaced by `to`, as display lines.
    fn changes(from: &str, to: &str) -> Vec<String> {
        assert!(BASE.contains(from), "the test's BASE has no {from:?}");
        compare(&set(BASE), &set(&BASE.replacen(from, to, 1)))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn one_change(from: &str, to: &str) -> String {
        let found = changes(from, to);
        assert_eq!(found.len(), 1, "expected one change, got {found:#?}");
        found.into_iter().next().unwrap()
    }

    #[test]
    fn the_same_crds_are_compatible() {
        assert_eq!(compare(&set(BASE), &set(BASE)), Vec::new());
    }

    #[test]
    fn committed_crds_are_compatible_with_themselves() {
        let mut crds = CrdSet::default();
        for file in ["boundarypolicy.yaml", "clusterboundarypolicy.yaml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            crds.add_yaml(file, &std::fs::read_to_string(path).unwrap())
                .unwrap();
        }
        assert_eq!(crds.len(), 2);
        assert_eq!(compare(&crds, &crds), Vec::new());
    }

    #[test]
    fn compatible_changes_pass() {
        for (from, to) in [
            // A new optional field.
            (
                "selector: {type: string}",
                "selector: {type: string}\n              extra: {type: string}",
            ),
            // A wider enum, wider bounds, a dropped format or pattern, description text.
            ("enum: [Enforce, Audit]", "enum: [Enforce, Audit, Off]"),
            ("minimum: 1, maximum: 65535", "minimum: 0"),
            ("maxLength: 100", "maxLength: 200"),
            ("type: integer, format: int32,", "type: integer,"),
            (
                "selector: {type: string}",
                "selector: {type: string, description: Which pods}",
            ),
            // No longer required; becomes nullable.
            ("required: [selector]", "required: []"),
            (
                "type: string}\n              mode",
                "type: string, nullable: true}\n              mode",
            ),
        ] {
            assert_eq!(changes(from, to), Vec::<String>::new(), "{from} -> {to}");
        }
    }

    #[test]
    fn a_new_version_is_compatible_and_its_schema_is_not_compared() {
        let new = BASE.replacen(
            "  versions:\n",
            "  versions:\n  - name: v1beta1\n    served: true\n    storage: false\n    schema:\n      openAPIV3Schema: {type: object}\n",
            1,
        );
        assert_eq!(compare(&set(BASE), &set(&new)), Vec::new());
    }

    #[test]
    fn a_dropped_field_is_named_with_its_path() {
        assert_eq!(
            one_change(
                "              note: {type: string, nullable: true, maxLength: 100}\n",
                ""
            ),
            "widgets.example.dev v1alpha1 .spec.note: field dropped (the apiserver silently prunes it from stored objects)"
        );
    }

    #[test]
    fn a_changed_type_is_refused() {
        assert_eq!(
            one_change("selector: {type: string}", "selector: {type: integer}"),
            r#"widgets.example.dev v1alpha1 .spec.selector: type changed from "string" to "integer" (stored values of the old type no longer validate)"#
        );
    }

    #[test]
    fn a_new_required_field_is_refused() {
        assert_eq!(
            one_change("required: [selector]", "required: [selector, mode]"),
            "widgets.example.dev v1alpha1 .spec: mode became required (objects without it can no longer be updated)"
        );
    }

    #[test]
    fn a_narrowed_or_new_enum_is_refused() {
        assert_eq!(
            one_change("enum: [Enforce, Audit]", "enum: [Enforce]"),
            r#"widgets.example.dev v1alpha1 .spec.mode: enum narrowed: "Audit" no longer allowed"#
        );
        assert!(
            one_change(
                "selector: {type: string}",
                "selector: {type: string, enum: [a]}"
            )
            .contains(".spec.selector: enum added")
        );
    }

    #[test]
    fn tightened_validation_is_refused() {
        for (from, to, expected) in [
            (
                "minimum: 1,",
                "minimum: 2,",
                ".spec.ports[*]: minimum raised from 1 to 2",
            ),
            (
                "maximum: 65535",
                "maximum: 1024",
                ".spec.ports[*]: maximum lowered",
            ),
            (
                "maxLength: 100",
                "maxLength: 10",
                ".spec.note: maxLength lowered",
            ),
            (
                "selector: {type: string}",
                "selector: {type: string, minLength: 1}",
                ".spec.selector: minLength 1 added",
            ),
            (
                "selector: {type: string}",
                "selector: {type: string, pattern: '^a'}",
                ".spec.selector: pattern changed",
            ),
            (
                "selector: {type: string}",
                "selector: {type: string, format: uri}",
                ".spec.selector: format changed",
            ),
            ("nullable: true, ", "", ".spec.note: no longer nullable"),
            (
                "type: array\n                items",
                "type: array\n                maxItems: 3\n                items",
                ".spec.ports: maxItems 3 added",
            ),
        ] {
            let change = one_change(from, to);
            assert!(change.contains(expected), "{from} -> {to}: {change}");
        }
    }

    #[test]
    fn new_all_of_members_and_validation_rules_are_refused_kept_ones_are_not() {
        let rule = "note: {type: string, nullable: true, maxLength: 100, x-kubernetes-validations: [{rule: 'self.size() > 1'}]}";
        let one = one_change("note: {type: string, nullable: true, maxLength: 100}", rule);
        assert!(
            one.contains("validation rule") && one.contains("spec.note"),
            "{one}"
        );
        let all_of =
            "note: {type: string, nullable: true, maxLength: 100, allOf: [{minLength: 2}]}";
        let one = one_change(
            "note: {type: string, nullable: true, maxLength: 100}",
            all_of,
        );
        assert!(one.contains("allOf gained"), "{one}");
        // The same members on both sides change nothing.
        let both = set(&BASE.replacen(
            "note: {type: string, nullable: true, maxLength: 100}",
            rule,
            1,
        ));
        assert!(compare(&both, &both).is_empty());
    }

    #[test]
    fn changed_defaults_and_merge_semantics_are_refused() {
        assert!(
            one_change("default: Enforce", "default: Audit")
                .contains(".spec.mode: default changed")
        );
        assert!(
            one_change("x-kubernetes-list-type: map", "x-kubernetes-list-type: set")
                .contains(".spec.conditions: x-kubernetes-list-type changed")
        );
    }

    #[test]
    fn map_values_and_list_items_are_compared() {
        assert!(
            one_change(
                "additionalProperties: {type: string}",
                "additionalProperties: {type: integer}"
            )
            .starts_with("widgets.example.dev v1alpha1 .spec.labels.*: type changed")
        );
        assert!(
            one_change("                    type: {type: string}\n", "").starts_with(
                "widgets.example.dev v1alpha1 .spec.conditions[*].type: field dropped"
            )
        );
    }

    #[test]
    fn dropped_versions_names_and_crds_are_refused() {
        assert!(
            one_change("served: true", "served: false")
                .contains("widgets.example.dev v1alpha1: this served version is no longer served")
        );
        assert!(one_change("shortNames: [wd]", "shortNames: []").contains("no longer has \"wd\""));
        assert!(one_change("scope: Namespaced", "scope: Cluster").contains("spec.scope changed"));
        assert!(
            one_change("subresources: {status: {}}", "subresources: {}")
                .contains("subresource status")
        );
        assert_eq!(
            compare(&set(BASE), &CrdSet::default())[0].to_string(),
            "widgets.example.dev: the CRD was removed (deleting a CRD deletes every object of it)"
        );
    }

    #[test]
    fn several_changes_are_all_listed_sorted() {
        let new = BASE
            .replacen("selector: {type: string}", "selector: {type: integer}", 1)
            .replacen("enum: [Enforce, Audit]", "enum: [Audit]", 1);
        let found = compare(&set(BASE), &set(&new));
        let paths: Vec<&str> = found.iter().map(|change| change.path.as_str()).collect();
        assert_eq!(paths, [".spec.mode", ".spec.selector"]);
    }

    #[test]
    fn bad_input_is_an_error_with_its_place() {
        let mut crds = CrdSet::default();
        let err = crds.add_yaml("a.yaml", "kind: [").unwrap_err().to_string();
        assert!(err.starts_with("a.yaml: not YAML: "), "{err}");
        assert!(err.contains("line"), "{err}");
        let err = crds
            .add_yaml("b.yaml", "---\n---\napiVersion: v1\nkind: ConfigMap\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "b.yaml, document 2: not an apiextensions.k8s.io/v1 CustomResourceDefinition"
        );
        crds.add_yaml("c.yaml", BASE).unwrap();
        let err = crds.add_yaml("d.yaml", BASE).unwrap_err().to_string();
        assert_eq!(err, "d.yaml: the CRD widgets.example.dev is defined twice");
    }
}

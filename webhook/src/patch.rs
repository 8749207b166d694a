//! The JSON Patch from the pod as admitted to the pod as planned.
//!
//! Injection and stripping only ever change `metadata.annotations`, `metadata.labels` and
//! `spec.affinity`,
//! `spec.containers`, `spec.initContainers`, `spec.volumes` and `spec.readinessGates`, so only
//! those are compared:
//! serialising and diffing the whole pod was most of a review's cost. Both sides of each
//! section go through the same typed round trip, so fields this build does not know are never
//! touched. The golden tests check, for every case, that the patch turns the input into exactly
//! the planned pod.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde_json::Value;

fn value<T: Serialize>(item: &T) -> Value {
    // Serialising Kubernetes types to a Value cannot fail (string keys, no non-finite floats).
    serde_json::to_value(item).unwrap_or(Value::Null)
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn remove(path: PointerBuf) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation { path })
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// `op` with `prefix` put in front of its path.
fn prefixed(prefix: &PointerBuf, op: PatchOperation) -> PatchOperation {
    match op {
        PatchOperation::Add(o) => add(prefix.concat(&o.path), o.value),
        PatchOperation::Remove(o) => remove(prefix.concat(&o.path)),
        PatchOperation::Replace(o) => PatchOperation::Replace(ReplaceOperation {
            path: prefix.concat(&o.path),
            value: o.value,
        }),
        // `diff` makes only the three above; anything else is kept as it is.
        other => other,
    }
}

/// Operations turning `before` into `after` at `path`.
fn section<T: Serialize + PartialEq>(
    path: PointerBuf,
    before: Option<&T>,
    after: Option<&T>,
    ops: &mut Vec<PatchOperation>,
) {
    match (before, after) {
        (None, None) => {}
        (None, Some(b)) => ops.push(add(path, value(b))),
        (Some(_), None) => ops.push(remove(path)),
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => {
            let diff = json_patch::diff(&value(a), &value(b));
            ops.extend(diff.0.into_iter().map(|op| prefixed(&path, op)));
        }
    }
}

/// A list compared item by item: changed items are diffed, added ones appended, removed ones
/// removed from the end (injection appends, stripping removes what it appended).
fn list<T: Serialize + PartialEq>(
    path: &[&str],
    before: Option<&Vec<T>>,
    after: Option<&Vec<T>>,
    ops: &mut Vec<PatchOperation>,
) {
    let at = |i: usize| {
        let mut p = pointer(path);
        p.push_back(i);
        p
    };
    match (before, after) {
        (Some(a), Some(b)) => {
            let common = a.len().min(b.len());
            for i in 0..common {
                section(at(i), Some(&a[i]), Some(&b[i]), ops);
            }
            for (i, item) in b.iter().enumerate().skip(common) {
                ops.push(add(at(i), value(item)));
            }
            for i in (common..a.len()).rev() {
                ops.push(remove(at(i)));
            }
        }
        (a, b) => section(pointer(path), a, b, ops),
    }
}

/// Key by key changes of `metadata.<field>` (annotations, labels).
fn string_map(
    field: &str,
    before: Option<&std::collections::BTreeMap<String, String>>,
    after: Option<&std::collections::BTreeMap<String, String>>,
    ops: &mut Vec<PatchOperation>,
) {
    let (Some(before), Some(after)) = (before, after) else {
        section(pointer(&["metadata", field]), before, after, ops);
        return;
    };
    for (key, old) in before {
        let path = pointer(&["metadata", field, key]);
        match after.get(key) {
            None => ops.push(remove(path)),
            Some(new) if new != old => {
                ops.push(PatchOperation::Replace(ReplaceOperation {
                    path,
                    value: Value::String(new.clone()),
                }));
            }
            Some(_) => {}
        }
    }
    for (key, new) in after.iter().filter(|(k, _)| !before.contains_key(*k)) {
        ops.push(add(
            pointer(&["metadata", field, key]),
            Value::String(new.clone()),
        ));
    }
}

/// The patch from `original` to `planned`.
pub fn between(original: &Pod, planned: &Pod) -> Patch {
    let mut ops = Vec::new();
    string_map(
        "annotations",
        original.metadata.annotations.as_ref(),
        planned.metadata.annotations.as_ref(),
        &mut ops,
    );
    string_map(
        "labels",
        original.metadata.labels.as_ref(),
        planned.metadata.labels.as_ref(),
        &mut ops,
    );
    if let (Some(a), Some(b)) = (&original.spec, &planned.spec) {
        section(
            pointer(&["spec", "affinity"]),
            a.affinity.as_ref(),
            b.affinity.as_ref(),
            &mut ops,
        );
        list(
            &["spec", "containers"],
            Some(&a.containers),
            Some(&b.containers),
            &mut ops,
        );
        list(
            &["spec", "initContainers"],
            a.init_containers.as_ref(),
            b.init_containers.as_ref(),
            &mut ops,
        );
        list(
            &["spec", "volumes"],
            a.volumes.as_ref(),
            b.volumes.as_ref(),
            &mut ops,
        );
        list(
            &["spec", "readinessGates"],
            a.readiness_gates.as_ref(),
            b.readiness_gates.as_ref(),
            &mut ops,
        );
    }
    Patch(ops)
}

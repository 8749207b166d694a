//! The JSON Patch from the pod as admitted to the pod as planned.
//!
//! Injection and stripping only ever change `metadata.annotations`, `metadata.labels` and
//! `spec.affinity`,
//! `spec.containers`, `spec.initContainers`, `spec.volumes` and `spec.readinessGates`, so only
//! those are compared:
//! serialising and diffing the whole pod was most of a review's cost. Both sides of each
//! section go through the same typed round trip, so fields this build does not know are never
//! touched. Containers are compared field by field and only their differing fields serialised
//! (a jailed container's probes, resources and own env are not), giving exactly the operations
//! a diff of the whole serialised containers gives. The golden tests check, for every case,
//! that the patch turns the input into exactly the planned pod; `tests/golden.rs` also checks
//! it operation for operation against the whole-container diff on random pods.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, Pod};
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

/// A list compared item by item: changed items are diffed by `item`, added ones appended,
/// removed ones removed from the end (injection appends, stripping removes what it appended).
fn list<T: Serialize + PartialEq>(
    path: &[&str],
    before: Option<&Vec<T>>,
    after: Option<&Vec<T>>,
    item: fn(&PointerBuf, &T, &T, &mut Vec<PatchOperation>),
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
                if a[i] != b[i] {
                    item(&at(i), &a[i], &b[i], ops);
                }
            }
            for (i, added) in b.iter().enumerate().skip(common) {
                ops.push(add(at(i), value(added)));
            }
            for i in (common..a.len()).rev() {
                ops.push(remove(at(i)));
            }
        }
        (a, b) => section(pointer(path), a, b, ops),
    }
}

/// `json_patch::diff` of the two items' serialised forms, under `path`.
fn by_value<T: Serialize>(path: &PointerBuf, before: &T, after: &T, ops: &mut Vec<PatchOperation>) {
    let diff = json_patch::diff(&value(before), &value(after));
    ops.extend(diff.0.into_iter().map(|op| prefixed(path, op)));
}

/// The operations `json_patch::diff` makes on one serialised container's fields, built field by
/// field so that only the fields that differ are serialised (a jailed container's unchanged
/// probes, resources and most of its env are never turned into JSON): the same operations in
/// the same order, at the same depth, so fields this build does not know are never touched.
struct Fields<'o> {
    path: PointerBuf,
    ops: &'o mut Vec<PatchOperation>,
    /// Fields only `before` has: `diff` removes them after every other change, in key order.
    removed: Vec<&'static str>,
}

impl Fields<'_> {
    fn at(&self, key: &str) -> PointerBuf {
        let mut path = self.path.clone();
        path.push_back(key);
        path
    }

    /// A field that is not an array (scalars and objects).
    fn one<T: Serialize + PartialEq>(
        &mut self,
        key: &'static str,
        before: Option<&T>,
        after: Option<&T>,
    ) {
        match (before, after) {
            (None, None) => {}
            (Some(_), None) => self.removed.push(key),
            (None, Some(b)) => self.ops.push(add(self.at(key), value(b))),
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => by_value(&self.at(key), a, b, self.ops),
        }
    }

    /// An array field: `diff` compares arrays index by index, removing from the end.
    fn array<T: Serialize + PartialEq>(
        &mut self,
        key: &'static str,
        before: Option<&Vec<T>>,
        after: Option<&Vec<T>>,
    ) {
        let (Some(a), Some(b)) = (before, after) else {
            return self.one(key, before, after);
        };
        if a == b {
            return;
        }
        let base = self.at(key);
        let at = |i: usize| {
            let mut p = base.clone();
            p.push_back(i);
            p
        };
        let common = a.len().min(b.len());
        for i in 0..common {
            if a[i] != b[i] {
                by_value(&at(i), &a[i], &b[i], self.ops);
            }
        }
        for (i, added) in b.iter().enumerate().skip(common) {
            self.ops.push(add(at(i), value(added)));
        }
        // `diff` removes the surplus one at a time at the same index.
        for _ in common..a.len() {
            self.ops.push(remove(at(common)));
        }
    }

    fn finish(self) {
        for key in &self.removed {
            let path = self.at(key);
            self.ops.push(remove(path));
        }
    }
}

/// Operations turning container `before` into `after` at `path`: exactly what
/// `json_patch::diff` gives on their serialised forms (property-tested against it).
#[allow(clippy::too_many_lines)] // one line per field of `Container`
fn container(
    path: &PointerBuf,
    before: &Container,
    after: &Container,
    ops: &mut Vec<PatchOperation>,
) {
    // Every field by name, so that a field added to `Container` fails to compile here rather
    // than going missing from the patch. Keys in serialisation (alphabetical) order.
    let Container {
        args,
        command,
        env,
        env_from,
        image,
        image_pull_policy,
        lifecycle,
        liveness_probe,
        name,
        ports,
        readiness_probe,
        resize_policy,
        resources,
        restart_policy,
        security_context,
        startup_probe,
        stdin,
        stdin_once,
        termination_message_path,
        termination_message_policy,
        tty,
        volume_devices,
        volume_mounts,
        working_dir,
    } = after;
    let a = before;
    let mut f = Fields {
        path: path.clone(),
        ops,
        removed: Vec::new(),
    };
    f.array("args", a.args.as_ref(), args.as_ref());
    f.array("command", a.command.as_ref(), command.as_ref());
    f.array("env", a.env.as_ref(), env.as_ref());
    f.array("envFrom", a.env_from.as_ref(), env_from.as_ref());
    f.one("image", a.image.as_ref(), image.as_ref());
    f.one(
        "imagePullPolicy",
        a.image_pull_policy.as_ref(),
        image_pull_policy.as_ref(),
    );
    f.one("lifecycle", a.lifecycle.as_ref(), lifecycle.as_ref());
    f.one(
        "livenessProbe",
        a.liveness_probe.as_ref(),
        liveness_probe.as_ref(),
    );
    f.one("name", Some(&a.name), Some(name));
    f.array("ports", a.ports.as_ref(), ports.as_ref());
    f.one(
        "readinessProbe",
        a.readiness_probe.as_ref(),
        readiness_probe.as_ref(),
    );
    f.array(
        "resizePolicy",
        a.resize_policy.as_ref(),
        resize_policy.as_ref(),
    );
    f.one("resources", a.resources.as_ref(), resources.as_ref());
    f.one(
        "restartPolicy",
        a.restart_policy.as_ref(),
        restart_policy.as_ref(),
    );
    f.one(
        "securityContext",
        a.security_context.as_ref(),
        security_context.as_ref(),
    );
    f.one(
        "startupProbe",
        a.startup_probe.as_ref(),
        startup_probe.as_ref(),
    );
    f.one("stdin", a.stdin.as_ref(), stdin.as_ref());
    f.one("stdinOnce", a.stdin_once.as_ref(), stdin_once.as_ref());
    f.one(
        "terminationMessagePath",
        a.termination_message_path.as_ref(),
        termination_message_path.as_ref(),
    );
    f.one(
        "terminationMessagePolicy",
        a.termination_message_policy.as_ref(),
        termination_message_policy.as_ref(),
    );
    f.one("tty", a.tty.as_ref(), tty.as_ref());
    f.array(
        "volumeDevices",
        a.volume_devices.as_ref(),
        volume_devices.as_ref(),
    );
    f.array(
        "volumeMounts",
        a.volume_mounts.as_ref(),
        volume_mounts.as_ref(),
    );
    f.one("workingDir", a.working_dir.as_ref(), working_dir.as_ref());
    f.finish();
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
            container,
            &mut ops,
        );
        list(
            &["spec", "initContainers"],
            a.init_containers.as_ref(),
            b.init_containers.as_ref(),
            container,
            &mut ops,
        );
        list(
            &["spec", "volumes"],
            a.volumes.as_ref(),
            b.volumes.as_ref(),
            by_value,
            &mut ops,
        );
        list(
            &["spec", "readinessGates"],
            a.readiness_gates.as_ref(),
            b.readiness_gates.as_ref(),
            by_value,
            &mut ops,
        );
    }
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, SeccompProfile,
        SecurityContext, VolumeMount,
    };
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "run", "--", "/x~y/z", "BOUNDARY_TIER", ""])
            .prop_map(str::to_owned)
    }

    fn words() -> impl Strategy<Value = Option<Vec<String>>> {
        prop::option::of(prop::collection::vec(word(), 0..4))
    }

    fn env_var() -> impl Strategy<Value = EnvVar> {
        (word(), prop::option::of(word()), any::<bool>()).prop_map(|(name, value, from)| EnvVar {
            name,
            value,
            value_from: from.then(|| EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
        })
    }

    fn mount() -> impl Strategy<Value = VolumeMount> {
        (word(), word(), prop::option::of(any::<bool>())).prop_map(|(name, path, ro)| VolumeMount {
            name,
            mount_path: path,
            read_only: ro,
            ..VolumeMount::default()
        })
    }

    fn security_context() -> impl Strategy<Value = SecurityContext> {
        (
            prop::option::of(prop::option::of(prop::collection::vec(word(), 0..3))),
            prop::option::of(word()),
            prop::option::of(0i64..3),
        )
            .prop_map(|(caps, seccomp, user)| SecurityContext {
                capabilities: caps.map(|add| Capabilities {
                    add,
                    ..Capabilities::default()
                }),
                seccomp_profile: seccomp.map(|type_| SeccompProfile {
                    type_,
                    ..SeccompProfile::default()
                }),
                run_as_user: user,
                ..SecurityContext::default()
            })
    }

    fn any_container() -> impl Strategy<Value = Container> {
        (
            (words(), words(), word(), prop::option::of(word())),
            prop::option::of(prop::collection::vec(env_var(), 0..5)),
            prop::option::of(prop::collection::vec(mount(), 0..4)),
            prop::option::of(security_context()),
            prop::option::of(prop::collection::vec(1i32..4, 0..3)),
            (prop::option::of(word()), prop::option::of(any::<bool>())),
        )
            .prop_map(
                |((args, command, name, image), env, mounts, sc, ports, (dir, tty))| Container {
                    args,
                    command,
                    name,
                    image,
                    env,
                    volume_mounts: mounts,
                    security_context: sc,
                    ports: ports.map(|ports| {
                        ports
                            .into_iter()
                            .map(|container_port| ContainerPort {
                                container_port,
                                ..ContainerPort::default()
                            })
                            .collect()
                    }),
                    working_dir: dir,
                    tty,
                    ..Container::default()
                },
            )
    }

    /// A container and another made from it as injection and stripping do: lists extended,
    /// shortened or edited in place, fields set, changed or removed.
    fn edited() -> impl Strategy<Value = (Container, Container)> {
        (
            any_container(),
            any_container(),
            prop::collection::vec(0u8..12, 0..6),
        )
            .prop_map(|(before, other, edits)| {
                let mut after = before.clone();
                for edit in edits {
                    match edit {
                        0 => after
                            .env
                            .get_or_insert_default()
                            .extend(other.env.clone().unwrap_or_default()),
                        1 => after.env.clone_from(&other.env),
                        2 => {
                            if let Some(env) = after.env.as_mut() {
                                env.retain(|e| e.name != "a");
                            }
                        }
                        3 => after
                            .volume_mounts
                            .get_or_insert_default()
                            .extend(other.volume_mounts.clone().unwrap_or_default()),
                        4 => after.security_context.clone_from(&other.security_context),
                        5 => {
                            let mut wrapped =
                                vec!["boundary".to_owned(), "run".into(), "--".into()];
                            wrapped.extend(after.command.take().unwrap_or_default());
                            after.command = Some(wrapped);
                        }
                        6 => after.args.clone_from(&other.args),
                        7 => after.image.clone_from(&other.image),
                        8 => after.name.clone_from(&other.name),
                        9 => after.ports.clone_from(&other.ports),
                        10 => after.tty = other.tty,
                        _ => after.working_dir.clone_from(&other.working_dir),
                    }
                }
                (before, after)
            })
    }

    fn field_by_field(before: &Container, after: &Container) -> Vec<PatchOperation> {
        let mut ops = Vec::new();
        super::container(
            &pointer(&["spec", "containers", "0"]),
            before,
            after,
            &mut ops,
        );
        ops
    }

    fn whole(before: &Container, after: &Container) -> Vec<PatchOperation> {
        let mut ops = Vec::new();
        section(
            pointer(&["spec", "containers", "0"]),
            Some(before),
            Some(after),
            &mut ops,
        );
        ops
    }

    /// Every field of `Container` set, so that a misspelt key or one out of order shows.
    fn every_field() -> Container {
        let probe = serde_json::json!({"exec": {"command": ["true"]}});
        serde_json::from_value(serde_json::json!({
            "args": ["a"], "command": ["c"], "env": [{"name": "E", "value": "v"}],
            "envFrom": [{"prefix": "P_"}], "image": "i", "imagePullPolicy": "Always",
            "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}, "livenessProbe": probe,
            "name": "n", "ports": [{"containerPort": 1}], "readinessProbe": probe,
            "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
            "resources": {"limits": {"cpu": "1"}}, "restartPolicy": "Always",
            "securityContext": {"runAsUser": 1}, "startupProbe": probe, "stdin": true,
            "stdinOnce": true, "terminationMessagePath": "/t", "terminationMessagePolicy": "File",
            "tty": true, "volumeDevices": [{"name": "d", "devicePath": "/d"}],
            "volumeMounts": [{"name": "m", "mountPath": "/m"}], "workingDir": "/w"
        }))
        .expect("a valid container")
    }

    #[test]
    fn every_field_is_diffed_under_its_own_key_in_order() {
        let full = every_field();
        let keys = value(&full).as_object().map_or(0, serde_json::Map::len);
        assert_eq!(keys, 24, "a field of Container is not set in the test");
        let bare = Container {
            name: "m".into(),
            ..Container::default()
        };
        for (before, after) in [(&full, &bare), (&bare, &full)] {
            let ops = field_by_field(before, after);
            assert_eq!(ops, whole(before, after));
            assert_eq!(ops.len(), 24);
        }
        let mut changed: Value = value(&full);
        for field in changed
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            if let Some(s) = field.as_str() {
                *field = Value::String(format!("{s}2"));
            } else if let Some(items) = field.as_array_mut() {
                items.push(items[0].clone());
            }
        }
        let changed: Container = serde_json::from_value(changed).expect("still a container");
        assert_eq!(field_by_field(&full, &changed), whole(&full, &changed));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The field-by-field diff makes exactly the operations `json_patch::diff` makes on the
        /// whole serialised containers, and they turn one into the other.
        #[test]
        fn containers_diff_field_by_field_as_json_patch_does((before, after) in edited()) {
            let ops = field_by_field(&before, &after);
            prop_assert_eq!(&ops, &whole(&before, &after));
            let mut pod = serde_json::json!({"spec": {"containers": [value(&before)]}});
            json_patch::patch(&mut pod, &ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&pod["spec"]["containers"][0], &value(&after));
        }

        /// The same for unrelated containers.
        #[test]
        fn unrelated_containers_diff_as_json_patch_does(before in any_container(), after in any_container()) {
            prop_assert_eq!(field_by_field(&before, &after), whole(&before, &after));
        }
    }
}

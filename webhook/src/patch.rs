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
//!
//! One walk makes the operations for two [`Sink`]s: [`between`] keeps them as `json_patch`
//! operations (to apply and compare), [`written`] writes them straight into the patch's JSON,
//! each value serialised from its typed object. Building `Value` trees, writing them and
//! dropping them was half of a review's instructions.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Serialize;
use serde_json::Value;

fn value<T: Serialize + ?Sized>(item: &T) -> Value {
    // Serialising Kubernetes types to a Value cannot fail (string keys, no non-finite floats).
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// Where the walk's operations go.
trait Sink {
    fn add<T: Serialize + ?Sized>(&mut self, path: Path, value: &T);
    fn replace<T: Serialize + ?Sized>(&mut self, path: Path, value: &T);
    fn remove(&mut self, path: Path);

    /// The operations `json_patch::diff` makes from `before` to `after`, under `prefix`.
    fn diff<T: Serialize + ?Sized>(&mut self, prefix: &Path, before: &T, after: &T) {
        for op in json_patch::diff(&value(before), &value(after)).0 {
            match op {
                PatchOperation::Add(o) => self.add(prefix.concat(o.path.as_str()), &o.value),
                PatchOperation::Remove(o) => self.remove(prefix.concat(o.path.as_str())),
                PatchOperation::Replace(o) => {
                    self.replace(prefix.concat(o.path.as_str()), &o.value);
                }
                // `diff` makes only the three above.
                PatchOperation::Move(_) | PatchOperation::Copy(_) | PatchOperation::Test(_) => {}
            }
        }
    }
}

/// The operations as `json_patch` values.
impl Sink for Vec<PatchOperation> {
    fn add<T: Serialize + ?Sized>(&mut self, path: Path, item: &T) {
        self.push(PatchOperation::Add(AddOperation {
            path: path.into_pointer(),
            value: value(item),
        }));
    }

    fn replace<T: Serialize + ?Sized>(&mut self, path: Path, item: &T) {
        self.push(PatchOperation::Replace(ReplaceOperation {
            path: path.into_pointer(),
            value: value(item),
        }));
    }

    fn remove(&mut self, path: Path) {
        self.push(PatchOperation::Remove(RemoveOperation {
            path: path.into_pointer(),
        }));
    }
}

/// The operations written as the patch's JSON, in the shape `json_patch` serialises them.
#[derive(Default)]
struct Written {
    json: Vec<u8>,
}

impl Written {
    /// A jailed pod's patch is a few KiB (the sidecar, volumes, the wrapped command).
    const FIRST_CAPACITY: usize = 8 << 10;

    fn begin(&mut self, op: &str, path: &Path) {
        if self.json.is_empty() {
            self.json.reserve(Self::FIRST_CAPACITY);
            self.json.push(b'[');
        } else {
            self.json.push(b',');
        }
        self.json.extend_from_slice(br#"{"op":""#);
        self.json.extend_from_slice(op.as_bytes());
        self.json.extend_from_slice(br#"","path":"#);
        // Writing into a Vec cannot fail, nor can serialising a string.
        let _ = serde_json::to_writer(&mut self.json, &path.0);
    }

    fn value<T: Serialize + ?Sized>(&mut self, item: &T) {
        self.json.extend_from_slice(br#","value":"#);
        // Kubernetes types serialise without failing (string keys, no non-finite floats).
        let _ = serde_json::to_writer(&mut self.json, item);
        self.json.push(b'}');
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.json.is_empty() {
            self.json.push(b']');
        }
        self.json
    }
}

impl Sink for Written {
    fn add<T: Serialize + ?Sized>(&mut self, path: Path, item: &T) {
        self.begin("add", &path);
        self.value(item);
    }

    fn replace<T: Serialize + ?Sized>(&mut self, path: Path, item: &T) {
        self.begin("replace", &path);
        self.value(item);
    }

    fn remove(&mut self, path: Path) {
        self.begin("remove", &path);
        self.json.push(b'}');
    }
}

/// A JSON Pointer (RFC 6901) being built, each token escaped as it is added: `jsonptr`'s
/// builders allocate per token, and a review builds a few dozen paths.
#[derive(Clone, Debug)]
struct Path(String);

impl Path {
    fn of(tokens: &[&str]) -> Path {
        let mut path = Path(String::with_capacity(64));
        for token in tokens {
            path.push(token);
        }
        path
    }

    fn push(&mut self, token: &str) {
        self.0.push('/');
        if !token.contains(['~', '/']) {
            self.0.push_str(token);
            return;
        }
        for c in token.chars() {
            match c {
                '~' => self.0.push_str("~0"),
                '/' => self.0.push_str("~1"),
                c => self.0.push(c),
            }
        }
    }

    fn index(&mut self, index: usize) {
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = write!(self.0, "/{index}");
    }

    fn with(&self, token: &str) -> Path {
        let mut path = self.clone();
        path.push(token);
        path
    }

    fn with_index(&self, index: usize) -> Path {
        let mut path = self.clone();
        path.index(index);
        path
    }

    /// This path followed by `rest`, a pointer already encoded.
    fn concat(&self, rest: &str) -> Path {
        Path(format!("{}{rest}", self.0))
    }

    fn into_pointer(self) -> PointerBuf {
        PointerBuf::parse(self.0).expect("escaped tokens make a valid JSON Pointer")
    }
}

/// Operations turning `before` into `after` at `path`.
fn section<T: Serialize + PartialEq, S: Sink>(
    path: Path,
    before: Option<&T>,
    after: Option<&T>,
    ops: &mut S,
) {
    match (before, after) {
        (None, None) => {}
        (None, Some(b)) => ops.add(path, b),
        (Some(_), None) => ops.remove(path),
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => ops.diff(&path, a, b),
    }
}

/// A list compared item by item: changed items are diffed by `item`, added ones appended,
/// removed ones removed from the end (injection appends, stripping removes what it appended).
fn list<T: Serialize + PartialEq, S: Sink>(
    path: &[&str],
    before: Option<&Vec<T>>,
    after: Option<&Vec<T>>,
    item: fn(&Path, &T, &T, &mut S),
    ops: &mut S,
) {
    let base = Path::of(path);
    let at = |i: usize| base.with_index(i);
    match (before, after) {
        (Some(a), Some(b)) => {
            let common = a.len().min(b.len());
            for i in 0..common {
                if a[i] != b[i] {
                    item(&at(i), &a[i], &b[i], ops);
                }
            }
            for (i, added) in b.iter().enumerate().skip(common) {
                ops.add(at(i), added);
            }
            for i in (common..a.len()).rev() {
                ops.remove(at(i));
            }
        }
        (a, b) => section(base, a, b, ops),
    }
}

/// `json_patch::diff` of the two items' serialised forms, under `path`.
fn by_value<T: Serialize, S: Sink>(path: &Path, before: &T, after: &T, ops: &mut S) {
    ops.diff(path, before, after);
}

/// The operations `json_patch::diff` makes on one serialised container's fields, built field by
/// field so that only the fields that differ are serialised (a jailed container's unchanged
/// probes, resources and most of its env are never turned into JSON): the same operations in
/// the same order, at the same depth, so fields this build does not know are never touched.
struct Fields<'o, S> {
    path: Path,
    ops: &'o mut S,
    /// Fields only `before` has: `diff` removes them after every other change, in key order.
    removed: Vec<&'static str>,
}

impl<S: Sink> Fields<'_, S> {
    fn at(&self, key: &str) -> Path {
        self.path.with(key)
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
            (None, Some(b)) => self.ops.add(self.at(key), b),
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => self.ops.diff(&self.at(key), a, b),
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
        let at = |i: usize| base.with_index(i);
        let common = a.len().min(b.len());
        for i in 0..common {
            if a[i] != b[i] {
                self.ops.diff(&at(i), &a[i], &b[i]);
            }
        }
        for (i, added) in b.iter().enumerate().skip(common) {
            self.ops.add(at(i), added);
        }
        // `diff` removes the surplus one at a time at the same index.
        for _ in common..a.len() {
            self.ops.remove(at(common));
        }
    }

    fn finish(self) {
        for key in &self.removed {
            let path = self.at(key);
            self.ops.remove(path);
        }
    }
}

/// Operations turning container `before` into `after` at `path`: exactly what
/// `json_patch::diff` gives on their serialised forms (property-tested against it).
#[allow(clippy::too_many_lines)] // one line per field of `Container`
fn container<S: Sink>(path: &Path, before: &Container, after: &Container, ops: &mut S) {
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
fn string_map<S: Sink>(
    field: &str,
    before: Option<&std::collections::BTreeMap<String, String>>,
    after: Option<&std::collections::BTreeMap<String, String>>,
    ops: &mut S,
) {
    let (Some(before), Some(after)) = (before, after) else {
        section(Path::of(&["metadata", field]), before, after, ops);
        return;
    };
    // Paths are made only for the keys that change: most keep their value.
    let base = Path::of(&["metadata", field]);
    for (key, old) in before {
        match after.get(key) {
            None => ops.remove(base.with(key)),
            Some(new) if new != old => ops.replace(base.with(key), new),
            Some(_) => {}
        }
    }
    for (key, new) in after.iter().filter(|(k, _)| !before.contains_key(*k)) {
        ops.add(base.with(key), new);
    }
}

/// The walk from `original` to `planned`, into `ops`.
fn walk<S: Sink>(original: &Pod, planned: &Pod, ops: &mut S) {
    string_map(
        "annotations",
        original.metadata.annotations.as_ref(),
        planned.metadata.annotations.as_ref(),
        ops,
    );
    string_map(
        "labels",
        original.metadata.labels.as_ref(),
        planned.metadata.labels.as_ref(),
        ops,
    );
    if let (Some(a), Some(b)) = (&original.spec, &planned.spec) {
        section(
            Path::of(&["spec", "affinity"]),
            a.affinity.as_ref(),
            b.affinity.as_ref(),
            ops,
        );
        list(
            &["spec", "containers"],
            Some(&a.containers),
            Some(&b.containers),
            container,
            ops,
        );
        list(
            &["spec", "initContainers"],
            a.init_containers.as_ref(),
            b.init_containers.as_ref(),
            container,
            ops,
        );
        list(
            &["spec", "volumes"],
            a.volumes.as_ref(),
            b.volumes.as_ref(),
            by_value,
            ops,
        );
        list(
            &["spec", "readinessGates"],
            a.readiness_gates.as_ref(),
            b.readiness_gates.as_ref(),
            by_value,
            ops,
        );
    }
}

/// The patch from `original` to `planned`.
pub fn between(original: &Pod, planned: &Pod) -> Patch {
    let mut ops = Vec::new();
    walk(original, planned, &mut ops);
    Patch(ops)
}

/// [`between`] written as JSON: the same operations, each value serialised straight from its
/// typed object. Empty (no bytes at all) when there is nothing to change.
pub fn written(original: &Pod, planned: &Pod) -> Vec<u8> {
    let mut ops = Written::default();
    walk(original, planned, &mut ops);
    ops.finish()
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

    /// The field-by-field operations of the first container, into a fresh sink.
    fn field_by_field_into<S: Sink + Default>(before: &Container, after: &Container) -> S {
        let mut ops = S::default();
        super::container(
            &Path::of(&["spec", "containers", "0"]),
            before,
            after,
            &mut ops,
        );
        ops
    }

    fn field_by_field(before: &Container, after: &Container) -> Vec<PatchOperation> {
        field_by_field_into(before, after)
    }

    /// The field-by-field operations as [`Written`] writes them, parsed (`[]` for none).
    fn written_field_by_field(before: &Container, after: &Container) -> Value {
        let json = field_by_field_into::<Written>(before, after).finish();
        if json.is_empty() {
            return Value::Array(Vec::new());
        }
        serde_json::from_slice(&json).expect("the written patch is JSON")
    }

    fn whole(before: &Container, after: &Container) -> Vec<PatchOperation> {
        let mut ops = Vec::new();
        section(
            Path::of(&["spec", "containers", "0"]),
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
            assert_eq!(written_field_by_field(before, after), value(&ops));
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
        let ops = field_by_field(&full, &changed);
        assert_eq!(ops, whole(&full, &changed));
        assert_eq!(written_field_by_field(&full, &changed), value(&ops));
    }

    #[test]
    fn paths_escape_as_jsonptr_does() {
        for tokens in [
            &["metadata", "annotations", "agentboundary.dev/policy"][..],
            &["a~b", "~1", "/", "~", "", "ü/~0"],
            &[],
        ] {
            let mut path = Path::of(tokens);
            path.index(12);
            let mut want = PointerBuf::from_tokens(tokens.iter().copied());
            want.push_back(12);
            assert_eq!(path.into_pointer(), want, "{tokens:?}");
        }
        assert_eq!(
            Path::of(&["spec"]).concat("/a~1b/0").into_pointer(),
            PointerBuf::from_tokens(["spec", "a/b", "0"])
        );
    }

    #[test]
    fn a_written_patch_is_what_json_patch_serialises_and_nothing_when_empty() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": {"a": "1", "gone": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .expect("a pod");
        assert!(written(&pod, &pod).is_empty(), "no change, no bytes");
        let mut planned = pod.clone();
        let annotations = planned.metadata.annotations.get_or_insert_default();
        annotations.insert("a".into(), "2".into());
        annotations.remove("gone");
        annotations.insert("new/~key".into(), "\"quoted\"".into());
        planned.metadata.labels = Some([("l".to_owned(), "v".to_owned())].into());
        let spec = planned.spec.as_mut().expect("a spec");
        spec.containers[0].args = Some(vec!["--flag".into()]);
        spec.containers.push(Container {
            name: "sidecar".into(),
            ..Container::default()
        });
        let ops = between(&pod, &planned);
        assert_eq!(ops.0.len(), 6, "{ops:?}");
        assert_eq!(
            String::from_utf8(written(&pod, &planned)).expect("UTF-8"),
            serde_json::to_string(&ops).expect("a patch serialises"),
            "byte for byte the serialised json_patch operations"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The field-by-field diff makes exactly the operations `json_patch::diff` makes on the
        /// whole serialised containers, and they turn one into the other.
        #[test]
        fn containers_diff_field_by_field_as_json_patch_does((before, after) in edited()) {
            let ops = field_by_field(&before, &after);
            prop_assert_eq!(&ops, &whole(&before, &after));
            prop_assert_eq!(written_field_by_field(&before, &after), value(&ops));
            let mut pod = serde_json::json!({"spec": {"containers": [value(&before)]}});
            json_patch::patch(&mut pod, &ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&pod["spec"]["containers"][0], &value(&after));
        }

        /// The same for unrelated containers.
        #[test]
        fn unrelated_containers_diff_as_json_patch_does(before in any_container(), after in any_container()) {
            let ops = field_by_field(&before, &after);
            prop_assert_eq!(&ops, &whole(&before, &after));
            prop_assert_eq!(written_field_by_field(&before, &after), value(&ops));
        }
    }
}

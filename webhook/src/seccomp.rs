//! The legacy seccomp annotations (`seccomp.security.alpha.kubernetes.io/pod`,
//! `container.seccomp.security.alpha.kubernetes.io/<name>`). Older manifests still use them, and
//! apiservers up to 1.26 copy them into the `seccompProfile` fields *after* mutating admission,
//! so a pod that admission sees without a profile may run under `RuntimeDefault`. The planner
//! therefore plans the pod as it will be stored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, SeccompProfile, SecurityContext};

/// The pod-level annotation.
pub const POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
/// Prefix of the per-container annotation (the container's name follows).
pub const CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// The annotation of container `name`.
pub fn container_annotation(name: &str) -> String {
    format!("{CONTAINER_ANNOTATION_PREFIX}{name}")
}

/// The profile an annotation value stands for (`None`: a value the apiserver would reject).
pub fn profile_of(value: &str) -> Option<SeccompProfile> {
    let (type_, localhost_profile) = match value {
        "runtime/default" | "docker/default" => ("RuntimeDefault", None),
        "unconfined" => ("Unconfined", None),
        other => (
            "Localhost",
            Some(other.strip_prefix("localhost/")?.to_owned()),
        ),
    };
    Some(SeccompProfile {
        type_: type_.into(),
        localhost_profile,
    })
}

/// The annotation value of a profile (the apiserver requires field and annotation to agree).
pub fn annotation_of(profile: &SeccompProfile) -> Option<String> {
    match profile.type_.as_str() {
        "RuntimeDefault" => Some("runtime/default".into()),
        "Unconfined" => Some("unconfined".into()),
        "Localhost" => Some(format!(
            "localhost/{}",
            profile.localhost_profile.as_deref().unwrap_or_default()
        )),
        _ => None,
    }
}

/// Whether `annotations` holds a legacy seccomp annotation (when none does,
/// [`with_annotations`] gives the spec unchanged and need not copy it).
pub fn any_annotation(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .keys()
        .any(|k| k == POD_ANNOTATION || k.starts_with(CONTAINER_ANNOTATION_PREFIX))
}

/// `spec` with every annotation's profile in the field it will be copied to, where that field
/// is unset (a field that is set wins, as in the apiserver).
pub fn with_annotations(spec: &PodSpec, annotations: &BTreeMap<String, String>) -> PodSpec {
    let mut spec = spec.clone();
    if let Some(profile) = annotations.get(POD_ANNOTATION).and_then(|v| profile_of(v)) {
        let sc = spec.security_context.get_or_insert_with(Default::default);
        if sc.seccomp_profile.is_none() {
            sc.seccomp_profile = Some(profile);
        }
    }
    for c in &mut spec.containers {
        let Some(profile) = annotations
            .get(&container_annotation(&c.name))
            .and_then(|v| profile_of(v))
        else {
            continue;
        };
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        if sc.seccomp_profile.is_none() {
            sc.seccomp_profile = Some(profile);
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSecurityContext};

    fn profile(type_: &str, localhost: Option<&str>) -> SeccompProfile {
        SeccompProfile {
            type_: type_.into(),
            localhost_profile: localhost.map(Into::into),
        }
    }

    #[test]
    fn annotation_values_map_to_profiles_and_back() {
        for (value, expected, back) in [
            (
                "runtime/default",
                Some(profile("RuntimeDefault", None)),
                "runtime/default",
            ),
            (
                "docker/default",
                Some(profile("RuntimeDefault", None)),
                "runtime/default",
            ),
            (
                "unconfined",
                Some(profile("Unconfined", None)),
                "unconfined",
            ),
            (
                "localhost/agent-boundary-userns.json",
                Some(profile("Localhost", Some("agent-boundary-userns.json"))),
                "localhost/agent-boundary-userns.json",
            ),
        ] {
            let got = profile_of(value);
            assert_eq!(got, expected, "{value}");
            assert_eq!(annotation_of(&got.unwrap()).as_deref(), Some(back));
        }
        assert_eq!(profile_of("something/else"), None);
    }

    #[test]
    fn annotations_fill_unset_fields_only() {
        let spec = PodSpec {
            containers: vec![
                Container {
                    name: "agent".into(),
                    ..Container::default()
                },
                Container {
                    name: "tool".into(),
                    security_context: Some(SecurityContext {
                        seccomp_profile: Some(profile("Unconfined", None)),
                        ..SecurityContext::default()
                    }),
                    ..Container::default()
                },
                Container {
                    name: "other".into(),
                    ..Container::default()
                },
            ],
            ..PodSpec::default()
        };
        let annotations: BTreeMap<String, String> = [
            (POD_ANNOTATION.to_owned(), "runtime/default".to_owned()),
            (container_annotation("agent"), "unconfined".to_owned()),
            (container_annotation("tool"), "runtime/default".to_owned()),
        ]
        .into();
        let view = with_annotations(&spec, &annotations);
        let field = |i: usize| {
            view.containers[i]
                .security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.clone())
        };
        assert_eq!(
            view.security_context.and_then(|s| s.seccomp_profile),
            Some(profile("RuntimeDefault", None))
        );
        assert_eq!(field(0), Some(profile("Unconfined", None)));
        assert_eq!(
            field(1),
            Some(profile("Unconfined", None)),
            "the field wins"
        );
        assert_eq!(
            field(2),
            None,
            "the pod level applies through the pod field"
        );

        let own = PodSpec {
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(profile("Unconfined", None)),
                ..PodSecurityContext::default()
            }),
            ..spec
        };
        assert_eq!(
            with_annotations(&own, &annotations)
                .security_context
                .and_then(|s| s.seccomp_profile),
            Some(profile("Unconfined", None))
        );
    }
}

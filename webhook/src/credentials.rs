//! The credentials of the policies selecting a pod, as the webhook applies them (pure): which
//! are usable, the placeholder env the jailed containers get, the ways a jailed container would
//! still receive a real value (conflicts), and the pod's AWS identity that must stay with the
//! sidecar when a credential signs with it.
//!
//! The real values never pass through the webhook: it only names the Secret the operator writes
//! and mounts it into the sidecar.

use std::collections::BTreeSet;
use std::fmt;

use boundary_api::contract::objects;
use boundary_api::credentials::{Apply, AwsSource, Credential, PLACEHOLDER_PREFIX, check_policy};
use k8s_openapi::api::core::v1::{Container, EnvVar, KeyToPath, PodSpec, VolumeMount};

/// Env vars that hand a container the pod's AWS identity (IRSA web identity, EKS Pod Identity),
/// as EKS's pod identity webhook sets them. Taken from the jailed containers when a credential
/// signs with the sidecar's identity.
pub const AWS_IDENTITY_ENV: [&str; 4] = [
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// Env vars of the same webhook that only say where to sign and are no identity: the jailed
/// containers keep them, and the sidecar gets them too (its STS and signing region).
pub const AWS_REGION_ENV: [&str; 3] = [
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_STS_REGIONAL_ENDPOINTS",
];

/// The projected token volumes of IRSA and EKS Pod Identity.
pub const AWS_TOKEN_VOLUMES: [&str; 2] = ["aws-iam-token", "eks-pod-identity-token"];

/// Pod annotation read by EKS's pod identity webhook: containers (comma-separated) it leaves
/// without the pod's AWS identity. Set for the jailed containers, so the identity stays out of
/// them when that webhook runs after this one.
pub const EKS_SKIP_CONTAINERS: &str = "eks.amazonaws.com/skip-containers";

/// A credential of a selecting policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyCredential {
    /// The `BoundaryPolicy`.
    pub policy: String,
    /// The credential.
    pub credential: Credential,
}

impl PolicyCredential {
    /// `credential anthropic of BoundaryPolicy agents`.
    pub fn describe(&self) -> String {
        format!(
            "credential {} of BoundaryPolicy {}",
            self.credential.name, self.policy
        )
    }

    /// The hosts the proxy puts it in for, for messages.
    pub fn destinations(&self) -> String {
        let hosts: BTreeSet<&str> = self
            .credential
            .destinations
            .iter()
            .flat_map(|d| d.domains.iter().map(String::as_str))
            .collect();
        hosts.into_iter().collect::<Vec<_>>().join(", ")
    }

    fn signs_with_sidecar_identity(&self) -> bool {
        matches!(
            self.credential.apply(),
            Ok(Apply::SigV4 {
                source: AwsSource::Sidecar
            })
        )
    }
}

/// The credentials the operator publishes (`boundary_api::credentials::check_policy`, the same
/// check, per policy); each other one gets a warning (the operator reports its problems in the
/// policy's status and publishes it nowhere, so its placeholder would be refused).
pub fn usable<'a>(
    all: &'a [PolicyCredential],
    warnings: &mut Vec<String>,
) -> Vec<&'a PolicyCredential> {
    let mut out: Vec<&PolicyCredential> = Vec::new();
    let mut start = 0;
    while start < all.len() {
        let policy = &all[start].policy;
        let end = start
            + all[start..]
                .iter()
                .take_while(|c| &c.policy == policy)
                .count();
        let group = &all[start..end];
        let specs: Vec<Credential> = group.iter().map(|c| c.credential.clone()).collect();
        let checked = check_policy(policy, &specs);
        for (i, c) in group.iter().enumerate() {
            let problems: Vec<String> = checked
                .problems
                .iter()
                .filter(|p| p.field.starts_with(&format!("spec.credentials[{i}].")))
                .map(ToString::to_string)
                .collect();
            if !problems.is_empty() {
                warnings.push(format!(
                    "agentboundary.dev: {} is not injected: {} (see the policy's status.ruleProblems)",
                    c.describe(),
                    problems.join("; ")
                ));
                continue;
            }
            // The placeholder names the credential, not its policy.
            if let Some(first) = out.iter().find(|o| o.credential.name == c.credential.name) {
                warnings.push(format!(
                    "agentboundary.dev: {} and {} have the same name, so their placeholders are the same and the proxy cannot tell them apart; rename one",
                    first.describe(),
                    c.describe()
                ));
            }
            out.push(c);
        }
        start = end;
    }
    out
}

/// The placeholder env of the usable credentials, `(name, placeholder)`: one value per name,
/// the first credential's (policies by name, credentials in order); a later one that wants the
/// same name gets a warning.
pub fn placeholder_env(
    usable: &[&PolicyCredential],
    nonce: &str,
    warnings: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut owner: Vec<&PolicyCredential> = Vec::new();
    for c in usable {
        for (name, value) in c.credential.placeholder_env(nonce) {
            if let Some(i) = out.iter().position(|(n, _)| *n == name) {
                warnings.push(format!(
                    "agentboundary.dev: {} wants {name}, which already holds the placeholder of {}; give one of them another spec.credentials[].env",
                    c.describe(),
                    owner[i].describe()
                ));
                continue;
            }
            out.push((name, value));
            owner.push(c);
        }
    }
    out
}

/// Whether a usable credential signs with the sidecar's AWS identity.
pub fn sidecar_identity_needed(usable: &[&PolicyCredential]) -> bool {
    usable.iter().any(|c| c.signs_with_sidecar_identity())
}

/// The Secret key a conflict is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// A key of a credential's Secret (`key`: `None` for every key, awsSigV4's `secretName`).
    Credential {
        /// The credential.
        credential: &'a PolicyCredential,
        /// The Secret.
        secret: &'a str,
        /// The key.
        key: Option<&'a str>,
    },
    /// The namespace's credentials Secret, which holds every credential's value.
    CredentialsSecret,
}

/// How a jailed container would receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// `env[].valueFrom.secretKeyRef`.
    Env {
        /// The env var.
        name: String,
        /// The key it takes.
        key: String,
    },
    /// `envFrom[].secretRef`.
    EnvFrom,
    /// A secret volume, or a projected one with a secret source, mounted in the container.
    Volume {
        /// The volume.
        volume: String,
        /// Where it is mounted.
        mount_path: String,
    },
}

/// A jailed container that would receive a real value the agent must never hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict<'a> {
    /// The container.
    pub container: String,
    /// Whose value.
    pub source: Source<'a>,
    /// How.
    pub via: Via,
}

impl Conflict<'_> {
    fn secret(&self) -> &str {
        match &self.source {
            Source::Credential { secret, .. } => secret,
            Source::CredentialsSecret => objects::CREDENTIALS_SECRET,
        }
    }
}

impl fmt::Display for Conflict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let container = &self.container;
        let secret = self.secret();
        let what = match &self.source {
            Source::Credential {
                credential,
                key: Some(key),
                ..
            } => format!(
                "key {key} of Secret {secret}, the value of {}",
                credential.describe()
            ),
            Source::Credential { credential, .. } => {
                format!("Secret {secret}, the AWS keys of {}", credential.describe())
            }
            Source::CredentialsSecret => format!(
                "Secret {secret}, which holds the real value of every credential in the namespace"
            ),
        };
        let (how, fix) = match &self.via {
            Via::Env { name, key } => {
                let own = match &self.source {
                    Source::Credential { credential, .. } => credential
                        .credential
                        .placeholder_env("")
                        .iter()
                        .any(|(n, _)| n == name),
                    Source::CredentialsSecret => false,
                };
                let set = if own {
                    " (the webhook sets it to the credential's placeholder)"
                } else {
                    ""
                };
                (
                    format!("env {name} (secretKeyRef {secret}/{key})"),
                    format!("remove env {name} from container {container}{set}"),
                )
            }
            Via::EnvFrom => (
                format!("envFrom secretRef {secret}"),
                format!("remove the envFrom secretRef {secret} from container {container}"),
            ),
            Via::Volume { volume, mount_path } => (
                format!("volume {volume} mounted at {mount_path}"),
                format!(
                    "remove the volumeMount of {volume} from container {container} (or Secret {secret} from the volume)"
                ),
            ),
        };
        write!(
            f,
            "jailed container {container} receives {what}, through {how}: {fix}"
        )?;
        match &self.source {
            Source::Credential { credential, .. } => write!(
                f,
                "; the proxy puts it in for {}",
                credential.destinations()
            ),
            Source::CredentialsSecret => f.write_str("; only the sidecar may read it"),
        }
    }
}

/// Whether `wanted` (a key, or any key) is among a Secret's keys as a volume maps them, and
/// under which file path (`None`: any path, the keys are not known here).
fn volume_paths(
    items: Option<&Vec<KeyToPath>>,
    wanted: Option<&str>,
) -> Option<Vec<Option<String>>> {
    match (items, wanted) {
        (None, Some(key)) => Some(vec![Some(key.to_owned())]),
        (None, None) => Some(vec![None]),
        (Some(items), wanted) => {
            let paths: Vec<Option<String>> = items
                .iter()
                .filter(|i| wanted.is_none_or(|k| i.key == k))
                .map(|i| Some(i.path.clone()))
                .collect();
            (!paths.is_empty()).then_some(paths)
        }
    }
}

/// Whether a mount shows a file of the volume at `path` (`None`: some file, path unknown).
fn mount_shows(mount: &VolumeMount, path: Option<&str>) -> bool {
    if mount
        .sub_path_expr
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        // Expanded by the kubelet from the container's env: cannot be ruled out here.
        return true;
    }
    let sub = mount
        .sub_path
        .as_deref()
        .unwrap_or_default()
        .trim_matches('/');
    if sub.is_empty() {
        return true;
    }
    match path {
        None => true,
        Some(path) => {
            let path = path.trim_matches('/');
            path == sub || path.starts_with(&format!("{sub}/"))
        }
    }
}

/// The volumes of `spec` that carry `secret` (`key`: one key, `None`: any), with the file paths
/// they put it at.
fn secret_volumes<'s>(
    spec: &'s PodSpec,
    secret: &str,
    key: Option<&str>,
) -> Vec<(&'s str, Vec<Option<String>>)> {
    let mut out = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let mut paths = Vec::new();
        if let Some(s) = v.secret.as_ref()
            && s.secret_name.as_deref() == Some(secret)
            && let Some(p) = volume_paths(s.items.as_ref(), key)
        {
            paths.extend(p);
        }
        for projection in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = projection.secret.as_ref()
                && s.name == secret
                && let Some(p) = volume_paths(s.items.as_ref(), key)
            {
                paths.extend(p);
            }
        }
        if !paths.is_empty() {
            out.push((v.name.as_str(), paths));
        }
    }
    out
}

/// How container `c` receives Secret `secret` (`key`, or any key).
fn received(spec: &PodSpec, c: &Container, secret: &str, key: Option<&str>) -> Vec<Via> {
    let mut out = Vec::new();
    for e in c.env.iter().flatten() {
        if let Some(r) = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            && r.name == secret
            && key.is_none_or(|k| r.key == k)
        {
            out.push(Via::Env {
                name: e.name.clone(),
                key: r.key.clone(),
            });
        }
    }
    if c.env_from
        .iter()
        .flatten()
        .any(|f| f.secret_ref.as_ref().is_some_and(|r| r.name == secret))
    {
        out.push(Via::EnvFrom);
    }
    for (volume, paths) in secret_volumes(spec, secret, key) {
        for m in c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == volume)
        {
            if paths.iter().any(|p| mount_shows(m, p.as_deref())) {
                out.push(Via::Volume {
                    volume: volume.to_owned(),
                    mount_path: m.mount_path.clone(),
                });
            }
        }
    }
    out
}

/// Every way a jailed container receives a real value: a usable credential's Secret key (env,
/// envFrom, mounted volume), or the namespace's credentials Secret itself.
pub fn conflicts<'a>(
    spec: &PodSpec,
    jailed: &[&Container],
    usable: &[&'a PolicyCredential],
) -> Vec<Conflict<'a>> {
    let mut out = Vec::new();
    for c in jailed {
        for credential in usable {
            let Some((secret, key)) = credential.credential.secret_source() else {
                continue;
            };
            for via in received(spec, c, secret, key) {
                out.push(Conflict {
                    container: c.name.clone(),
                    source: Source::Credential {
                        credential,
                        secret,
                        key,
                    },
                    via,
                });
            }
        }
        for via in received(spec, c, objects::CREDENTIALS_SECRET, None) {
            out.push(Conflict {
                container: c.name.clone(),
                source: Source::CredentialsSecret,
                via,
            });
        }
    }
    out
}

/// The pod's AWS identity as a container has it: the identity and region env vars and the
/// mounts of the token volumes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AwsIdentity {
    /// Env vars, in the container's order.
    pub env: Vec<EnvVar>,
    /// Mounts of [`AWS_TOKEN_VOLUMES`].
    pub mounts: Vec<VolumeMount>,
}

impl AwsIdentity {
    /// What of the pod's AWS identity `c` has.
    pub fn of(c: &Container) -> AwsIdentity {
        AwsIdentity {
            env: c
                .env
                .iter()
                .flatten()
                .filter(|e| {
                    AWS_IDENTITY_ENV.contains(&e.name.as_str())
                        || AWS_REGION_ENV.contains(&e.name.as_str())
                })
                .cloned()
                .collect(),
            mounts: c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| AWS_TOKEN_VOLUMES.contains(&m.name.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Adds what `other` has that this lacks (by env name and mount path; the first wins).
    pub fn merge(&mut self, other: AwsIdentity) {
        for e in other.env {
            if !self.env.iter().any(|x| x.name == e.name) {
                self.env.push(e);
            }
        }
        for m in other.mounts {
            if !self.mounts.iter().any(|x| x.mount_path == m.mount_path) {
                self.mounts.push(m);
            }
        }
    }

    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.mounts.is_empty()
    }
}

/// Whether an env var holds a placeholder (this webhook's, from any injection).
pub fn is_placeholder(e: &EnvVar) -> bool {
    e.value_from.is_none()
        && e.value
            .as_deref()
            .is_some_and(|v| v.starts_with(PLACEHOLDER_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn credential(spec: serde_json::Value) -> PolicyCredential {
        PolicyCredential {
            policy: "agents".into(),
            credential: serde_json::from_value(spec).unwrap(),
        }
    }

    fn anthropic() -> PolicyCredential {
        credential(json!({
            "name": "anthropic",
            "secretKeyRef": {"name": "anthropic", "key": "api-key"},
            "destinations": [{"domains": ["api.anthropic.com"]}],
            "inject": {"header": {"name": "x-api-key"}},
            "env": "ANTHROPIC_API_KEY"
        }))
    }

    fn bedrock_keys() -> PolicyCredential {
        credential(json!({
            "name": "bedrock",
            "destinations": [{"domains": ["bedrock-runtime.us-east-1.amazonaws.com"]}],
            "inject": {"awsSigV4": {"secretName": "aws-keys"}}
        }))
    }

    fn pod(spec: serde_json::Value) -> PodSpec {
        serde_json::from_value(spec).unwrap()
    }

    fn found(spec: &PodSpec, credentials: &[PolicyCredential]) -> Vec<(String, Via)> {
        let usable: Vec<&PolicyCredential> = credentials.iter().collect();
        let jailed: Vec<&Container> = spec.containers.iter().collect();
        conflicts(spec, &jailed, &usable)
            .into_iter()
            .map(|c| (c.container, c.via))
            .collect()
    }

    #[test]
    fn env_of_the_same_secret_key_conflicts_and_other_keys_do_not() {
        let spec = pod(json!({"containers": [{"name": "agent", "env": [
            {"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}},
            {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "org-id"}}},
            {"name": "ELSEWHERE", "valueFrom": {"secretKeyRef": {"name": "other", "key": "api-key"}}},
            {"name": "PLAIN", "value": "x"}
        ]}]}));
        assert_eq!(
            found(&spec, &[anthropic()]),
            [(
                "agent".to_owned(),
                Via::Env {
                    name: "ANTHROPIC_API_KEY".into(),
                    key: "api-key".into()
                }
            )]
        );
    }

    #[test]
    fn any_key_of_an_aws_secret_conflicts() {
        let spec = pod(json!({"containers": [{"name": "agent", "env": [
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "aws-keys", "key": "AWS_SECRET_ACCESS_KEY"}}}
        ]}]}));
        assert_eq!(found(&spec, &[bedrock_keys()]).len(), 1);
        assert!(found(&spec, &[anthropic()]).is_empty());
    }

    #[test]
    fn env_from_the_secret_conflicts_with_or_without_prefix() {
        let spec = pod(json!({"containers": [
            {"name": "agent", "envFrom": [{"secretRef": {"name": "anthropic"}, "prefix": "X_"}]},
            {"name": "other", "envFrom": [{"configMapRef": {"name": "anthropic"}}]}
        ]}));
        assert_eq!(
            found(&spec, &[anthropic()]),
            [("agent".to_owned(), Via::EnvFrom)]
        );
    }

    #[test]
    fn a_secret_volume_conflicts_only_where_mounted_and_only_with_the_key() {
        let spec = pod(json!({
            "containers": [
                {"name": "agent", "volumeMounts": [{"name": "keys", "mountPath": "/keys"}]},
                {"name": "quiet"}
            ],
            "volumes": [{"name": "keys", "secret": {"secretName": "anthropic"}}]
        }));
        assert_eq!(
            found(&spec, &[anthropic()]),
            [(
                "agent".to_owned(),
                Via::Volume {
                    volume: "keys".into(),
                    mount_path: "/keys".into()
                }
            )]
        );
        // Items that leave the key out, or a subPath of another file: no conflict.
        let items = pod(json!({
            "containers": [{"name": "agent", "volumeMounts": [
                {"name": "keys", "mountPath": "/keys"},
                {"name": "all", "mountPath": "/org", "subPath": "org-id"}
            ]}],
            "volumes": [
                {"name": "keys", "secret": {"secretName": "anthropic", "items": [{"key": "org-id", "path": "org"}]}},
                {"name": "all", "secret": {"secretName": "anthropic"}}
            ]
        }));
        assert!(found(&items, &[anthropic()]).is_empty());
        // A subPath that is the key's file, or a subPathExpr (unknown until the kubelet runs).
        let sub = pod(json!({
            "containers": [{"name": "agent", "volumeMounts": [
                {"name": "all", "mountPath": "/key", "subPath": "api-key"},
                {"name": "all", "mountPath": "/any", "subPathExpr": "$(WHICH)"}
            ]}],
            "volumes": [{"name": "all", "secret": {"secretName": "anthropic"}}]
        }));
        assert_eq!(found(&sub, &[anthropic()]).len(), 2);
    }

    #[test]
    fn a_projected_secret_source_conflicts() {
        let spec = pod(json!({
            "containers": [{"name": "agent", "volumeMounts": [{"name": "mixed", "mountPath": "/p"}]}],
            "volumes": [{"name": "mixed", "projected": {"sources": [
                {"configMap": {"name": "settings"}},
                {"secret": {"name": "anthropic", "items": [{"key": "api-key", "path": "deep/key"}]}}
            ]}}]
        }));
        assert_eq!(found(&spec, &[anthropic()]).len(), 1);
    }

    #[test]
    fn the_credentials_secret_conflicts_even_without_credentials() {
        let spec = pod(json!({
            "containers": [{"name": "agent", "envFrom": [{"secretRef": {"name": "agent-boundary-credentials"}}]}]
        }));
        let jailed: Vec<&Container> = spec.containers.iter().collect();
        let got = conflicts(&spec, &jailed, &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].source, Source::CredentialsSecret);
        assert!(got[0].to_string().contains("only the sidecar may read it"));
    }

    #[test]
    fn the_message_names_container_secret_key_credential_fix_and_destinations() {
        let spec = pod(json!({"containers": [{"name": "agent", "env": [
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}}
        ]}]}));
        let a = anthropic();
        let jailed: Vec<&Container> = spec.containers.iter().collect();
        let text = conflicts(&spec, &jailed, &[&a])[0].to_string();
        assert_eq!(
            text,
            "jailed container agent receives key api-key of Secret anthropic, the value of credential anthropic of BoundaryPolicy agents, through env KEY (secretKeyRef anthropic/api-key): remove env KEY from container agent; the proxy puts it in for api.anthropic.com"
        );
    }

    #[test]
    fn unusable_credentials_are_left_out_with_a_warning_and_duplicate_env_names_warn() {
        // In one policy, the operator's own check: an invalid credential and one that sets the
        // same variable as an earlier one are withheld, so they get no placeholder here either.
        let mut broken = anthropic();
        broken.credential.secret_key_ref = None;
        broken.credential.name = "broken".into();
        broken.credential.env = Some("BROKEN_KEY".into());
        let mut second = anthropic();
        second.credential.name = "second".into();
        let all = [broken, anthropic(), second];
        let mut warnings = Vec::new();
        let usable = usable(&all, &mut warnings);
        assert_eq!(usable.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("secretKeyRef"), "{warnings:?}");
        assert!(
            warnings[1].contains("credential second") && warnings[1].contains("ANTHROPIC_API_KEY"),
            "{warnings:?}"
        );
        // A destination the rule engine refuses: withheld by the operator, so no placeholder.
        let mut bad_domain = anthropic();
        bad_domain.credential.destinations[0].domains = vec!["exa mple.com".into()];
        let mut warnings = Vec::new();
        assert!(super::usable(&[bad_domain], &mut warnings).is_empty());
        assert!(
            warnings[0].contains("spec.credentials[0].destinations[0]"),
            "{warnings:?}"
        );
        // Across policies (which the operator checks only where they may select the same
        // containers): the first credential's placeholder, and a warning.
        let mut third = anthropic();
        third.policy = "models".into();
        third.credential.name = "third".into();
        let all = [anthropic(), third];
        let mut warnings = Vec::new();
        let usable = super::usable(&all, &mut warnings);
        assert_eq!(usable.len(), 2, "{warnings:?}");
        let env = placeholder_env(&usable, "abcdefghijklmnop", &mut warnings);
        assert_eq!(
            env,
            [(
                "ANTHROPIC_API_KEY".to_owned(),
                "boundary-ph-abcdefghijklmnop-anthropic".to_owned()
            )]
        );
        assert!(
            warnings[0].contains("credential third") && warnings[0].contains("ANTHROPIC_API_KEY"),
            "{warnings:?}"
        );
        // The same name in two policies: one placeholder for two credentials.
        let mut other_policy = anthropic();
        other_policy.policy = "models".into();
        other_policy.credential.env = Some("CLAUDE_KEY".into());
        let all = [anthropic(), other_policy];
        let mut warnings = Vec::new();
        assert_eq!(super::usable(&all, &mut warnings).len(), 2);
        assert!(
            warnings[0].contains("BoundaryPolicy models") && warnings[0].contains("same name"),
            "{warnings:?}"
        );
    }
}

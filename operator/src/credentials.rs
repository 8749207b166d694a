//! The namespace's credentials Secret ([`objects::CREDENTIALS_SECRET`]): the real values of the
//! published credentials (`spec.credentials[]`), copied from the Secrets they reference, one key
//! per credential ([`credentials::value_key`]) holding a [`CredentialValue`] as JSON. Mounted
//! into the sidecars only (the webhook's business); the compiled policy names the credentials
//! but never holds a value.
//!
//! Pure: what the Secret should hold ([`wanted`], [`collect`], [`secret`]); the controller
//! ([`crate::policy`]) reads the referenced Secrets and writes this one. A referenced Secret or
//! key that is missing or unusable leaves that credential's key out (the sidecar then refuses
//! requests to its destinations: fail closed) and is reported by a message that names the Secret
//! and the key, never a value.

use std::collections::{BTreeMap, BTreeSet};

use boundary_api::compiled::CompiledPolicy;
use boundary_api::contract::{self, API_VERSION, labels, objects};
use boundary_api::crd::BoundaryPolicy;
use boundary_api::credentials::{self, AwsKeys, Credential, CredentialValue, aws_keys};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::Error;

/// Value of [`labels::COMPONENT`] on the credentials Secrets.
pub const COMPONENT_CREDENTIALS: &str = "credentials";

/// One value the credentials Secret should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The policy the credential belongs to.
    pub policy: String,
    /// The credential, as published.
    pub credential: Credential,
    /// Its key in the credentials Secret.
    pub key: String,
    /// The Secret (in the namespace) its value comes from.
    pub secret: String,
    /// The key of that Secret; `None`: an `awsSigV4.secretName` Secret (its `AWS_*` keys).
    pub secret_key: Option<String>,
}

/// The values the credentials Secret of the namespace of `file` should hold: every published
/// credential of a namespace policy that has a Secret source (not the sidecar's AWS identity).
pub fn wanted(file: &CompiledPolicy) -> Vec<Wanted> {
    file.policies
        .iter()
        .filter(|entry| !entry.cluster)
        .flat_map(|entry| {
            entry.credentials.iter().filter_map(|credential| {
                let (secret, key) = credential.secret_source()?;
                Some(Wanted {
                    policy: entry.name.clone(),
                    credential: credential.clone(),
                    key: credentials::value_key(&entry.name, &credential.name),
                    secret: secret.to_owned(),
                    secret_key: key.map(str::to_owned),
                })
            })
        })
        .collect()
}

/// Whether `policy` has a credential whose value comes from Secret `secret` (of its namespace),
/// valid or not: a change to that Secret reconciles the namespace.
pub fn references(policy: &BoundaryPolicy, secret: &str) -> bool {
    policy
        .spec
        .credentials
        .iter()
        .any(|c| c.secret_source().is_some_and(|(name, _)| name == secret))
}

/// The names of the Secrets `wanted` reads, each once.
pub fn referenced(wanted: &[Wanted]) -> BTreeSet<&str> {
    wanted.iter().map(|w| w.secret.as_str()).collect()
}

/// The `data` of each referenced Secret as read (`None`: the Secret does not exist).
pub type SourceSecrets = BTreeMap<String, Option<BTreeMap<String, ByteString>>>;

/// What the credentials Secret holds and what could not be put in it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Its data: value key → value.
    pub values: BTreeMap<String, CredentialValue>,
    /// Per policy, one message per credential left out (naming the Secret and key, never a
    /// value).
    pub missing: BTreeMap<String, Vec<String>>,
}

// The values stay out of logs: only the keys and the messages are shown.
impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collected")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .field("missing", &self.missing)
            .finish()
    }
}

/// The value of each of `wanted` from `sources` (the referenced Secrets of `namespace`).
pub fn collect(namespace: &str, wanted: &[Wanted], sources: &SourceSecrets) -> Collected {
    let mut out = Collected::default();
    for w in wanted {
        match value_of(namespace, w, sources) {
            Ok(value) => {
                out.values.insert(w.key.clone(), value);
            }
            Err(message) => out
                .missing
                .entry(w.policy.clone())
                .or_default()
                .push(format!("credential {}: {message}", w.credential.name)),
        }
    }
    out
}

fn value_of(
    namespace: &str,
    w: &Wanted,
    sources: &SourceSecrets,
) -> Result<CredentialValue, String> {
    let Some(Some(data)) = sources.get(&w.secret) else {
        return Err(format!(
            "Secret {namespace}/{} not found (create it, or fix the name)",
            w.secret
        ));
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        let Some(bytes) = data.get(key) else {
            return Ok(None);
        };
        let value = std::str::from_utf8(&bytes.0).map_err(|_| {
            format!(
                "key {key} of Secret {namespace}/{} is not UTF-8 text",
                w.secret
            )
        })?;
        // `kubectl create secret --from-file` keeps the file's final newline, which no header
        // value can hold.
        let value = value.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(format!(
                "key {key} of Secret {namespace}/{} is empty",
                w.secret
            ));
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        {
            return Err(format!(
                "key {key} of Secret {namespace}/{} holds control characters, which cannot go \
                 into a request header",
                w.secret
            ));
        }
        Ok(Some(value.to_owned()))
    };
    let required = |key: &str| -> Result<String, String> {
        text(key)?.ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no key {key} (keys: {})",
                w.secret,
                data.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    };
    match &w.secret_key {
        Some(key) => {
            // The header format was checked with the credential; the value is checked above.
            let value = required(key)?;
            Ok(CredentialValue::Value(value))
        }
        None => Ok(CredentialValue::Aws(AwsKeys {
            access_key_id: required(aws_keys::ACCESS_KEY_ID)?,
            secret_access_key: required(aws_keys::SECRET_ACCESS_KEY)?,
            session_token: text(aws_keys::SESSION_TOKEN)?,
        })),
    }
}

/// The credentials Secret of `namespace` holding `values`, owned by `owners` (the policies whose
/// credentials it holds, so the garbage collector removes it with the last of them).
pub fn secret(
    namespace: &str,
    owners: &[&BoundaryPolicy],
    values: &BTreeMap<String, CredentialValue>,
) -> Result<Secret, Error> {
    let owner_references = owners
        .iter()
        .map(|p| {
            Ok(OwnerReference {
                api_version: API_VERSION.into(),
                kind: "BoundaryPolicy".into(),
                name: p.name_any(),
                uid: p.uid().ok_or(Error::MissingField("metadata.uid"))?,
                controller: None,
                block_owner_deletion: None,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let data = values
        .iter()
        .map(|(key, value)| {
            let json = serde_json::to_vec(value)
                .expect("a credential value has only string fields and serializes");
            (key.clone(), ByteString(json))
        })
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(objects::CREDENTIALS_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (
                    labels::MANAGED_BY.into(),
                    contract::MANAGED_BY_OPERATOR.into(),
                ),
                (labels::PART_OF.into(), contract::PART_OF.into()),
                (labels::COMPONENT.into(), COMPONENT_CREDENTIALS.into()),
            ])),
            owner_references: Some(owner_references),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}

/// Whether `existing` already has the data, type, labels and owners of `desired`.
pub fn secret_current(existing: Option<&Secret>, desired: &Secret) -> bool {
    let Some(existing) = existing else {
        return false;
    };
    let uids = |s: &Secret| -> BTreeSet<String> {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.clone())
            .collect()
    };
    let data = |s: &Secret| s.data.clone().unwrap_or_default();
    let labels_ok = desired
        .labels()
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    data(existing) == data(desired)
        && existing.type_ == desired.type_
        && uids(existing) == uids(desired)
        && labels_ok
}

/// What the credentials Secret of a namespace is made from, short: the credentials wanted, their
/// owners, the `resourceVersion` of each Secret read (`rv_of`) and of the credentials Secret
/// itself. While it stays the same, nothing needs to be read or written again (values are not
/// kept in memory; a rotated Secret has a new `resourceVersion`).
pub fn fingerprint(
    wanted: &[Wanted],
    owners: &[&BoundaryPolicy],
    rv_of: impl Fn(&str) -> Option<String>,
    own_rv: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for w in wanted {
        let credential = serde_json::to_string(&w.credential).unwrap_or_default();
        let _ = writeln!(text, "{}\0{}\0{credential}", w.policy, w.key);
    }
    for p in owners {
        let _ = writeln!(text, "owner\0{}", p.uid().unwrap_or_default());
    }
    for secret in referenced(wanted) {
        let rv = rv_of(secret).unwrap_or_else(|| "-".into());
        let _ = writeln!(text, "secret\0{secret}\0{rv}");
    }
    let _ = writeln!(text, "own\0{}", own_rv.unwrap_or("-"));
    boundary_api::compiled::policy_hash(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile_namespace;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn policy(name: &str, credentials: &serde_json::Value) -> BoundaryPolicy {
        serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "BoundaryPolicy",
            "metadata": {"name": name, "namespace": "agents", "uid": format!("uid-{name}")},
            "spec": {"podSelector": {}, "allow": ["domain=api.anthropic.com"],
                     "credentials": credentials},
        }))
        .unwrap()
    }

    fn agent() -> BoundaryPolicy {
        policy(
            "agent",
            &json!([
                {"name": "anthropic", "secretKeyRef": {"name": "llm", "key": "api-key"},
                 "destinations": [{"domains": ["api.anthropic.com"]}],
                 "inject": {"header": {"name": "x-api-key"}}, "env": "ANTHROPIC_API_KEY"},
                {"name": "github", "secretKeyRef": {"name": "gh", "key": "token"},
                 "destinations": [{"domains": ["github.com"]}],
                 "inject": {"basicAuth": {"username": "x-access-token"}}, "env": "GITHUB_TOKEN"},
                {"name": "bedrock", "destinations": [{"domains": ["bedrock-runtime.*.amazonaws.com"]}],
                 "inject": {"awsSigV4": {"secretName": "aws"}}},
                {"name": "s3", "destinations": [{"domains": ["*.s3.amazonaws.com"]}],
                 "inject": {"awsSigV4": {"identity": "Sidecar"}}},
            ]),
        )
    }

    /// The data of a Secret with these keys.
    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn sources(llm: &str) -> SourceSecrets {
        BTreeMap::from([
            ("llm".to_owned(), Some(data(&[("api-key", llm)]))),
            ("gh".to_owned(), Some(data(&[("token", "ghp_real\n")]))),
            (
                "aws".to_owned(),
                Some(data(&[
                    ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
                    ("AWS_SECRET_ACCESS_KEY", "wJalrREAL"),
                ])),
            ),
        ])
    }

    fn wanted_of(policies: &[BoundaryPolicy]) -> Vec<Wanted> {
        wanted(&compile_namespace("agents", policies, &[]).policy)
    }

    /// The Secret's data as `{key: JSON}`.
    fn content(secret: &Secret) -> BTreeMap<String, serde_json::Value> {
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), serde_json::from_slice(&v.0).unwrap()))
            .collect()
    }

    #[test]
    fn the_secret_holds_each_published_value_as_json_under_its_value_key() {
        let policies = [agent()];
        let wanted = wanted_of(&policies);
        let keys: Vec<_> = wanted.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            ["agent.anthropic", "agent.github", "agent.bedrock"],
            "the sidecar identity needs no value"
        );
        let collected = collect("agents", &wanted, &sources("sk-ant-real"));
        assert!(collected.missing.is_empty(), "{collected:?}");
        let secret = secret("agents", &[&policies[0]], &collected.values).unwrap();
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("agent-boundary-credentials")
        );
        assert_eq!(secret.labels()[labels::COMPONENT], COMPONENT_CREDENTIALS);
        assert_eq!(
            secret.labels()[labels::MANAGED_BY],
            contract::MANAGED_BY_OPERATOR
        );
        assert_eq!(secret.owner_references()[0].uid, "uid-agent");
        assert_eq!(
            content(&secret),
            BTreeMap::from([
                (
                    "agent.anthropic".to_owned(),
                    json!({"value": "sk-ant-real"})
                ),
                ("agent.github".to_owned(), json!({"value": "ghp_real"})),
                (
                    "agent.bedrock".to_owned(),
                    json!({"aws": {"accessKeyId": "AKIAREAL", "secretAccessKey": "wJalrREAL"}})
                ),
            ])
        );
        // What the sidecar reads back.
        let file = &secret.data.as_ref().unwrap()["agent.anthropic"].0;
        let value: CredentialValue = serde_json::from_slice(file).unwrap();
        assert_eq!(value, CredentialValue::Value("sk-ant-real".into()));
        assert!(secret_current(Some(&secret), &secret));
        assert!(!secret_current(None, &secret));
    }

    #[test]
    fn a_rotated_secret_changes_the_content_and_the_fingerprint() {
        let policies = [agent()];
        let wanted = wanted_of(&policies);
        let owners = [&policies[0]];
        let before = secret(
            "agents",
            &owners,
            &collect("agents", &wanted, &sources("sk-ant-old")).values,
        )
        .unwrap();
        let after = secret(
            "agents",
            &owners,
            &collect("agents", &wanted, &sources("sk-ant-new")).values,
        )
        .unwrap();
        assert_eq!(
            content(&after)["agent.anthropic"],
            json!({"value": "sk-ant-new"})
        );
        assert!(!secret_current(Some(&before), &after));
        let rv = |v: &'static str| move |name: &str| (name == "llm").then(|| v.to_owned());
        let one = fingerprint(&wanted, &owners, rv("1"), Some("7"));
        assert_eq!(one, fingerprint(&wanted, &owners, rv("1"), Some("7")));
        assert_ne!(one, fingerprint(&wanted, &owners, rv("2"), Some("7")));
        assert_ne!(one, fingerprint(&wanted, &owners, rv("1"), Some("8")));
        assert_ne!(one, fingerprint(&wanted[..1], &owners, rv("1"), Some("7")));
    }

    #[test]
    fn missing_secrets_and_keys_leave_the_key_out_with_a_message_naming_them() {
        let policies = [agent()];
        let wanted = wanted_of(&policies);
        let mut sources = sources("sk-ant-real");
        sources.insert("llm".into(), Some(data(&[("other", "x")])));
        sources.insert("gh".into(), None);
        sources.insert(
            "aws".into(),
            Some(data(&[("AWS_ACCESS_KEY_ID", "AKIAREAL")])),
        );
        let collected = collect("agents", &wanted, &sources);
        assert!(collected.values.is_empty(), "{collected:?}");
        assert_eq!(
            collected.missing["agent"],
            [
                "credential anthropic: Secret agents/llm has no key api-key (keys: other)",
                "credential github: Secret agents/gh not found (create it, or fix the name)",
                "credential bedrock: Secret agents/aws has no key AWS_SECRET_ACCESS_KEY (keys: \
                 AWS_ACCESS_KEY_ID)",
            ]
        );
        // A Secret not read at all counts as missing too; unusable values are left out.
        let mut bad = self::sources("line\u{7}bell");
        bad.remove("gh");
        bad.insert("aws".into(), Some(data(&[("AWS_ACCESS_KEY_ID", "")])));
        let collected = collect("agents", &wanted, &bad);
        let messages = &collected.missing["agent"];
        assert!(messages[0].contains("control characters"), "{messages:?}");
        assert!(
            messages[1].contains("Secret agents/gh not found"),
            "{messages:?}"
        );
        assert!(messages[2].contains("is empty"), "{messages:?}");
        assert!(!format!("{messages:?}").contains("bell"));
    }

    #[test]
    fn values_never_show_in_debug_output_or_messages() {
        let policies = [agent()];
        let wanted = wanted_of(&policies);
        let collected = collect("agents", &wanted, &sources("sk-ant-real"));
        let shown = format!("{collected:?}");
        assert!(shown.contains("agent.anthropic"), "{shown}");
        for value in ["sk-ant-real", "ghp_real", "AKIAREAL", "wJalrREAL"] {
            assert!(!shown.contains(value), "{shown}");
        }
    }

    #[test]
    fn only_valid_credentials_of_namespace_policies_are_wanted_and_referenced() {
        let bad = policy(
            "bad",
            &json!([{"name": "x", "secretKeyRef": {"name": "other", "key": "k"},
                     "destinations": [{"domains": ["x.*"]}],
                     "inject": {"header": {"name": "x-api-key"}}}]),
        );
        assert!(references(&bad, "other") && !references(&bad, "llm"));
        assert!(references(&agent(), "aws") && references(&agent(), "gh"));
        let wanted = wanted_of(&[agent(), bad]);
        assert_eq!(
            referenced(&wanted).into_iter().collect::<Vec<_>>(),
            ["aws", "gh", "llm"]
        );
        assert!(wanted.iter().all(|w| w.policy == "agent"));
    }

    /// The shipped examples with credentials compile without a problem and want the values
    /// their comments tell to create.
    #[test]
    fn the_credential_examples_compile_and_want_their_secrets() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.contains("\nkind: BoundaryPolicy\n") {
                continue;
            }
            let mut bp: BoundaryPolicy = serde_yaml_ng::from_str(&text).unwrap();
            bp.metadata.namespace = Some("agents".into());
            let name = bp.name_any();
            let out = compile_namespace("agents", std::slice::from_ref(&bp), &[]);
            assert!(
                out.reports[0].problems.is_empty(),
                "{name}: {:?}",
                out.reports[0].problems
            );
            assert_eq!(
                out.policy.policies[0].credentials.len(),
                bp.spec.credentials.len(),
                "{name}"
            );
            let sources: Vec<_> = wanted(&out.policy)
                .into_iter()
                .map(|w| format!("{}:{}", w.secret, w.secret_key.unwrap_or_default()))
                .collect();
            found.insert(name, sources);
        }
        let sources = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let credentials_examples = [
            (
                "claude-code-api-key",
                sources(&["anthropic-api-key:api-key"]),
            ),
            ("claude-code-bedrock", sources(&[])),
            ("claude-code-bedrock-keys", sources(&["bedrock-aws-keys:"])),
            (
                "github-token",
                sources(&["github-token:token", "github-token:token"]),
            ),
        ];
        for (name, want) in credentials_examples {
            assert_eq!(found.get(name), Some(&want), "{name}");
        }
    }
}

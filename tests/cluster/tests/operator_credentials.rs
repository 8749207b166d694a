//! The operator's credentials (`spec.credentials[]`) against a real kube-apiserver: its policy
//! controller runs in this test process, scoped to the test's namespace; the referenced Secrets
//! are real, and everything is observed through the API.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use boundary_api::compiled::CompiledPolicy;
use boundary_api::contract::{MANAGED_BY_OPERATOR, labels, objects};
use boundary_api::crd::{BoundaryPolicy, BoundaryPolicyStatus, condition_types};
use boundary_api::credentials::{CredentialValue, value_key};
use boundary_operator::status::CREDENTIALS_READY;
use boundary_operator::{Config, Shutdown};
use boundary_test_support::{TestNamespace, client, eventually, install_crds};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The policy controller, running in this process until dropped.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

fn start_policies(client: &Client, ns: &TestNamespace) -> Running {
    let config = Config {
        watch_namespace: Some(ns.name().into()),
        retry_seconds: 1,
        ..Config::default()
    };
    let (stop, shutdown) = Shutdown::new();
    let run = boundary_operator::policy::run(client.clone(), config, shutdown);
    let task = tokio::spawn(async move {
        if let Err(err) = run.await {
            eprintln!("controller: {err}");
        }
    });
    Running { stop, task }
}

async fn create_secret(
    ns: &TestNamespace,
    name: &str,
    pairs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let data = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {name}"))?;
    Ok(())
}

async fn patch_secret(ns: &TestNamespace, name: &str, patch: &Value) -> anyhow::Result<()> {
    ns.api::<Secret>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("patching Secret {name}"))?;
    Ok(())
}

async fn create_policy(
    ns: &TestNamespace,
    name: &str,
    spec: &Value,
) -> anyhow::Result<BoundaryPolicy> {
    let object = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1",
        "kind": "BoundaryPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    ns.api::<BoundaryPolicy>()
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating policy {name}"))
}

fn condition<'a>(status: &'a BoundaryPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The policy once its status describes its current generation and `check` holds.
async fn status_when(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    check: impl Fn(&BoundaryPolicyStatus) -> bool,
) -> anyhow::Result<BoundaryPolicyStatus> {
    let api = ns.api::<BoundaryPolicy>();
    eventually(WAIT, &format!("{name}: {what}"), || async {
        let bp = api.get(name).await?;
        let Some(status) = bp.status else {
            return Ok(None);
        };
        let current = status.observed_generation == bp.metadata.generation;
        Ok((current && check(&status)).then_some(status))
    })
    .await
}

/// The message of the first Warning Event with `reason` on policy `agent`.
async fn event_note(ns: &TestNamespace, reason: &str) -> anyhow::Result<String> {
    let events = ns.api::<Event>();
    eventually(WAIT, &format!("a {reason} Event on the policy"), || async {
        let list = events.list(&kube::api::ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.name.as_deref() == Some("agent")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|e| e.message.clone().unwrap_or_default()))
    })
    .await
}

/// The credentials Secret's data as `{key: CredentialValue}`.
fn values(secret: &Secret) -> anyhow::Result<BTreeMap<String, CredentialValue>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| Ok((k.clone(), serde_json::from_slice(&v.0)?)))
        .collect()
}

/// The credentials Secret once `check` holds for its values.
async fn credentials_when(
    ns: &TestNamespace,
    what: &str,
    check: impl Fn(&BTreeMap<String, CredentialValue>) -> bool,
) -> anyhow::Result<Secret> {
    let api = ns.api::<Secret>();
    eventually(WAIT, &format!("credentials Secret: {what}"), || async {
        let Some(secret) = api.get_opt(objects::CREDENTIALS_SECRET).await? else {
            return Ok(None);
        };
        Ok(check(&values(&secret)?).then_some(secret))
    })
    .await
}

fn value(text: &str) -> CredentialValue {
    CredentialValue::Value(text.into())
}

/// The anthropic credential of policy `agent` (x-api-key from Secret llm), an AWS `SigV4` credential
/// from Secret aws, and an invalid one (no Secret for a header).
fn agent_spec() -> Value {
    json!({"podSelector": {}, "allow": ["domain=api.anthropic.com"], "credentials": [
        {"name": "anthropic", "secretKeyRef": {"name": "llm", "key": "api-key"},
         "destinations": [{"domains": ["api.anthropic.com"]}],
         "inject": {"header": {"name": "x-api-key"}}, "env": "ANTHROPIC_API_KEY"},
        {"name": "bedrock", "destinations": [{"domains": ["bedrock-runtime.*.amazonaws.com"]}],
         "inject": {"awsSigV4": {"secretName": "aws"}}},
        {"name": "broken", "destinations": [{"domains": ["example.com"]}],
         "inject": {"header": {"name": "authorization"}}, "env": "BROKEN_TOKEN"},
    ]})
}

/// A namespace with Secrets `llm` and `aws`, the policy controller, and policy `agent`
/// ([`agent_spec`]).
async fn setup(prefix: &str) -> anyhow::Result<(TestNamespace, Running, BoundaryPolicy)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix, &[]).await?;
    create_secret(&ns, "llm", &[("api-key", "sk-ant-first\n")]).await?;
    create_secret(
        &ns,
        "aws",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIATESTFIRST"),
            ("AWS_SECRET_ACCESS_KEY", "secret-first"),
        ],
    )
    .await?;
    let operator = start_policies(&client, &ns);
    let bp = create_policy(&ns, "agent", &agent_spec()).await?;
    Ok((ns, operator, bp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_credentials_are_published_and_their_values_copied_into_the_namespace_secret()
-> anyhow::Result<()> {
    let (ns, _operator, bp) = setup("operator-credentials").await?;
    let (anthropic, bedrock) = (
        value_key("agent", "anthropic"),
        value_key("agent", "bedrock"),
    );

    // The values, as the sidecar reads them; the invalid credential has none.
    let secret = credentials_when(&ns, "both values", |v| v.len() == 2).await?;
    let copied = values(&secret)?;
    assert_eq!(
        copied[&anthropic],
        value("sk-ant-first"),
        "the final newline is dropped"
    );
    let CredentialValue::Aws(keys) = &copied[&bedrock] else {
        anyhow::bail!("{bedrock}: not AWS keys");
    };
    assert_eq!(
        (
            keys.access_key_id.as_str(),
            keys.secret_access_key.as_str(),
            keys.session_token.as_deref()
        ),
        ("AKIATESTFIRST", "secret-first", None)
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.labels()[labels::MANAGED_BY], MANAGED_BY_OPERATOR);
    let owners: Vec<_> = secret
        .owner_references()
        .iter()
        .map(|o| o.uid.clone())
        .collect();
    assert_eq!(owners, [bp.uid().unwrap_or_default()]);

    // The compiled file names the valid credentials and holds no value (it is written right
    // after the credentials Secret).
    let cms = ns.api::<ConfigMap>();
    let (file, text) = eventually(WAIT, "the ConfigMap with the credentials", || async {
        let Some(cm) = cms.get_opt(objects::POLICY_CONFIGMAP).await? else {
            return Ok(None);
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(objects::POLICY_CONFIGMAP_KEY))
            .cloned()
            .unwrap_or_default();
        let file: CompiledPolicy = serde_json::from_str(&text)?;
        let published = file
            .policies
            .first()
            .is_some_and(|e| !e.credentials.is_empty());
        Ok(published.then_some((file, text)))
    })
    .await?;
    let names: Vec<_> = file.policies[0]
        .credentials
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["anthropic", "bedrock"],
        "the invalid one is withheld"
    );
    for leaked in ["sk-ant-first", "AKIATESTFIRST", "secret-first"] {
        assert!(!text.contains(leaked), "{text}");
    }

    // Status: the invalid credential is reported where it is, the others are ready.
    let status = status_when(&ns, "agent", "CredentialsReady=True", |s| {
        condition(s, CREDENTIALS_READY).is_some_and(|c| c.status == "True")
    })
    .await?;
    let fields: Vec<_> = status
        .rule_problems
        .iter()
        .map(|p| p.field.as_str())
        .collect();
    assert_eq!(
        fields,
        ["spec.credentials[2].secretKeyRef"],
        "{:?}",
        status.rule_problems
    );
    let rules_valid = condition(&status, condition_types::RULES_VALID).context("RulesValid")?;
    assert_eq!(
        (rules_valid.status.as_str(), rules_valid.reason.as_str()),
        ("False", "InvalidCredentials")
    );
    assert_eq!(
        condition(&status, condition_types::READY).map(|c| c.status.as_str()),
        Some("True")
    );
    let note = event_note(&ns, "InvalidCredentials").await?;
    assert!(note.contains("spec.credentials[2].secretKeyRef"), "{note}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_missing_and_recreated_source_secrets_reach_the_credentials_secret()
-> anyhow::Result<()> {
    let (ns, _operator, _) = setup("operator-rotation").await?;
    let (anthropic, bedrock) = (
        value_key("agent", "anthropic"),
        value_key("agent", "bedrock"),
    );
    credentials_when(&ns, "both values", |v| v.len() == 2).await?;

    // A rotated value reaches the credentials Secret (no restart, no policy change).
    patch_secret(
        &ns,
        "llm",
        &json!({"stringData": {"api-key": "sk-ant-second"}}),
    )
    .await?;
    credentials_when(&ns, "the rotated value", |v| {
        v.get(&anthropic) == Some(&value("sk-ant-second"))
    })
    .await?;

    // A key that goes away: the value is left out, the status and an Event name Secret and key.
    patch_secret(
        &ns,
        "llm",
        &json!({"data": {"api-key": null}, "stringData": {"other": "x"}}),
    )
    .await?;
    credentials_when(&ns, "no anthropic value", |v| {
        !v.contains_key(&anthropic) && v.contains_key(&bedrock)
    })
    .await?;
    let missing = format!("Secret {}/llm has no key api-key", ns.name());
    let status = status_when(&ns, "agent", "CredentialsReady=False", |s| {
        condition(s, CREDENTIALS_READY).is_some_and(|c| c.status == "False")
    })
    .await?;
    let ready = condition(&status, CREDENTIALS_READY).context("CredentialsReady")?;
    assert_eq!(ready.reason, "ValueMissing");
    assert!(ready.message.contains(&missing), "{}", ready.message);
    let note = event_note(&ns, "CredentialValueMissing").await?;
    assert!(note.contains(&missing), "{note}");
    assert!(!note.contains("sk-ant"), "{note}");

    // A deleted source Secret, then a new one: the value comes back.
    ns.api::<Secret>()
        .delete("llm", &DeleteParams::default())
        .await?;
    create_secret(&ns, "llm", &[("api-key", "sk-ant-third")]).await?;
    credentials_when(&ns, "the value of the re-created Secret", |v| {
        v.get(&anthropic) == Some(&value("sk-ant-third"))
    })
    .await?;
    status_when(&ns, "agent", "CredentialsReady=True again", |s| {
        condition(s, CREDENTIALS_READY).is_some_and(|c| c.status == "True")
    })
    .await?;

    // Someone edits the credentials Secret: the operator puts it back.
    let mut tampered = serde_json::Map::new();
    tampered.insert(anthropic.clone(), json!(r#"{"value":"tampered"}"#));
    patch_secret(
        &ns,
        objects::CREDENTIALS_SECRET,
        &json!({"stringData": tampered}),
    )
    .await?;
    credentials_when(&ns, "repaired", |v| {
        v.get(&anthropic) == Some(&value("sk-ant-third"))
    })
    .await?;

    // No credential needs it any more: the credentials Secret goes, the condition too.
    ns.api::<BoundaryPolicy>()
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"credentials": null}})),
        )
        .await?;
    let api = ns.api::<Secret>();
    eventually(WAIT, "the credentials Secret deleted", || async {
        Ok(api
            .get_opt(objects::CREDENTIALS_SECRET)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    status_when(&ns, "agent", "no CredentialsReady, RulesValid=True", |s| {
        condition(s, CREDENTIALS_READY).is_none()
            && condition(s, condition_types::RULES_VALID).is_some_and(|c| c.status == "True")
    })
    .await?;
    Ok(())
}

//! The BoundaryPolicy CRD against a real kube-apiserver: it installs, valid objects are accepted
//! (with the schema's defaults applied), invalid ones are rejected by the apiserver's own
//! validation, and status goes through the status subresource into `kubectl get bp`.

use anyhow::Context;
use boundary_api::crd::{BoundaryPolicy, BoundaryPolicyStatus, condition_types};
use boundary_api::{Mode, Tier};
use boundary_test_support::{TestNamespace, client, eventually, install_crds, kubectl_output};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::Duration;

fn policy_json(name: &str, spec: &Value) -> Value {
    json!({
        "apiVersion": "agentboundary.dev/v1alpha1",
        "kind": "BoundaryPolicy",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn dynamic_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("agentboundary.dev", "v1alpha1", "BoundaryPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "boundarypolicies");
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Creates the raw object and returns the apiserver's rejection (code, message).
async fn rejection(api: &Api<DynamicObject>, name: &str, spec: Value) -> (u16, String) {
    let obj: DynamicObject = serde_json::from_value(policy_json(name, &spec)).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!("the apiserver accepted invalid spec {spec}"),
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(other) => panic!("unexpected error for {spec}: {other}"),
    }
}

#[tokio::test]
async fn crd_installs_and_a_valid_policy_is_accepted_with_defaults() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "crd-valid", &[]).await?;
    let api = dynamic_api(&client, ns.name());

    let full = json!({
        "podSelector": {"matchLabels": {"app": "claude"}},
        "containers": ["agent"],
        "mode": "Audit",
        "allow": ["domain=api.anthropic.com", "domain=github.com method=GET path=/api/*"],
        "http": [{"domains": ["*.npmjs.org"], "methods": ["GET"], "paths": ["/*"], "ports": [443], "tls": "Intercept"}],
        "tcp": [{"domain": "github.com", "ports": [22]}],
        "podLocal": [{"ports": [5432, 2375], "description": "cloud-sql-proxy and dind"}],
        "jail": {"runtime": "coder-boundary", "allowedTiers": ["userns", "landlock"], "allowNodePinning": true, "wrapCommand": true}
    });
    let obj: DynamicObject = serde_json::from_value(policy_json("full", &full))?;
    api.create(&PostParams::default(), &obj)
        .await
        .context("creating a full policy")?;

    // Minimal: only the required selector; the apiserver fills in the schema's defaults.
    let minimal: DynamicObject =
        serde_json::from_value(policy_json("minimal", &json!({"podSelector": {}})))?;
    api.create(&PostParams::default(), &minimal).await?;

    let typed: Api<BoundaryPolicy> = ns.api();
    let full = typed.get("full").await?;
    assert_eq!(full.spec.mode, Mode::Audit);
    assert_eq!(full.spec.rule_count(), 5);
    assert_eq!(full.spec.pod_local[0].ports[1].get(), 2375);
    assert_eq!(full.spec.jail.allowed_tiers, [Tier::Userns, Tier::Landlock]);
    assert_eq!(full.spec.tcp[0].ports[0].get(), 22);
    let minimal = typed.get("minimal").await?;
    assert_eq!(
        minimal.spec.mode,
        Mode::Enforce,
        "default mode applied by the apiserver"
    );
    assert_eq!(minimal.spec.rule_count(), 0);
    Ok(())
}

fn without_list_indices(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if close > 0 && after[..close].bytes().all(|b| b.is_ascii_digit()) => {
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_shipped_examples_are_accepted() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "crd-examples", &[]).await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/examples");
    let mut cluster_examples = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path.to_string_lossy();
        if std::fs::read_to_string(&path)?.contains("\nkind: ClusterBoundaryPolicy\n") {
            // Cluster-scoped: it would outlive the test and select other tests' namespaces, so
            // the apiserver validates it without storing it.
            let out = kubectl_output(&["apply", "--dry-run=server", "-f", &file])?;
            assert!(out.contains("created (server dry run)"), "{out}");
            cluster_examples += 1;
        } else {
            kubectl_output(&["apply", "-n", ns.name(), "-f", &file])?;
        }
    }
    assert!(cluster_examples >= 1);
    let out = kubectl_output(&["get", "bp", "-n", ns.name(), "-o", "name"])?;
    assert!(out.contains("coding-agent"), "{out}");
    assert!(out.contains("audit-rollout"), "{out}");
    Ok(())
}

#[tokio::test]
async fn invalid_policies_are_rejected_by_the_apiserver_with_its_message() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "crd-invalid", &[]).await?;
    let api = dynamic_api(&client, ns.name());

    let cases = [
        (
            "unknown-mode",
            json!({"podSelector": {}, "mode": "Block"}),
            vec![
                "spec.mode",
                "Unsupported value: \"Block\"",
                "\"Enforce\"",
                "\"Audit\"",
            ],
        ),
        (
            "missing-selector",
            json!({"allow": ["domain=example.com"]}),
            vec!["spec.podSelector", "Required value"],
        ),
        (
            "allow-not-a-list",
            json!({"podSelector": {}, "allow": "domain=example.com"}),
            vec!["spec.allow", "must be of type array"],
        ),
        (
            "port-as-string",
            json!({"podSelector": {}, "tcp": [{"domain": "github.com", "ports": ["22"]}]}),
            vec!["spec.tcp.ports", "must be of type integer"],
        ),
        (
            "port-out-of-range",
            json!({"podSelector": {}, "http": [{"domains": ["a.com"], "ports": [70000]}]}),
            vec!["spec.http.ports", "less than or equal to 65535"],
        ),
        (
            "tcp-without-ports",
            json!({"podSelector": {}, "tcp": [{"domain": "github.com"}]}),
            vec!["spec.tcp.ports", "Required value"],
        ),
        (
            "pod-local-port-out-of-range",
            json!({"podSelector": {}, "podLocal": [{"ports": [70000]}]}),
            vec!["spec.podLocal.ports", "less than or equal to 65535"],
        ),
        (
            "pod-local-without-ports",
            json!({"podSelector": {}, "podLocal": [{"description": "db"}]}),
            vec!["spec.podLocal.ports", "Required value"],
        ),
        (
            "pod-local-empty-ports",
            json!({"podSelector": {}, "podLocal": [{"ports": []}]}),
            vec!["spec.podLocal.ports", "at least 1 items"],
        ),
        (
            "http-without-domains",
            json!({"podSelector": {}, "http": [{"domains": []}]}),
            vec!["spec.http.domains", "at least 1 items"],
        ),
        (
            "unknown-tier",
            json!({"podSelector": {}, "jail": {"allowedTiers": ["nsjail"]}}),
            vec!["spec.jail.allowedTiers", "Unsupported value: \"nsjail\""],
        ),
        (
            "unknown-runtime",
            json!({"podSelector": {}, "jail": {"runtime": "gvisor"}}),
            vec!["spec.jail.runtime", "Unsupported value: \"gvisor\""],
        ),
        (
            "empty-rule-string",
            json!({"podSelector": {}, "allow": [""]}),
            vec!["spec.allow", "at least 1 chars long"],
        ),
        (
            "pinning-not-bool",
            json!({"podSelector": {}, "jail": {"allowNodePinning": "yes"}}),
            vec!["spec.jail.allowNodePinning", "must be of type boolean"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, expected) in cases {
        let (code, message) = rejection(&api, name, spec).await;
        // Newer apiservers put list indices into field paths (`spec.tcp[0].ports[0]`), 1.20 does
        // not (`spec.tcp.ports`): compare without them so the test holds on both.
        let message = without_list_indices(&message);
        if code != 422 {
            failures.push(format!("{name}: HTTP {code} (want 422): {message}"));
        }
        for needle in expected {
            if !message.contains(needle) {
                failures.push(format!("{name}: message lacks {needle:?}: {message}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn status_goes_through_the_subresource_and_shows_in_kubectl_get() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "crd-status", &[]).await?;
    let api: Api<BoundaryPolicy> = ns.api();
    let raw = dynamic_api(&client, ns.name());
    let obj: DynamicObject = serde_json::from_value(policy_json(
        "agents",
        &json!({"podSelector": {}, "allow": ["domain=a.com", "domain=b.com"]}),
    ))?;
    raw.create(&PostParams::default(), &obj).await?;

    // A status sent with the main resource is ignored: status is a subresource.
    let ignored = json!({"status": {"ruleCount": 99}});
    api.patch("agents", &PatchParams::default(), &Patch::Merge(&ignored))
        .await?;
    assert_eq!(api.get("agents").await?.status, None);

    let generation = api.get("agents").await?.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = BoundaryPolicyStatus {
        observed_generation: generation,
        rule_count: Some(2),
        matched_pods: Some(3),
        conditions: vec![
            Condition {
                type_: condition_types::READY.into(),
                status: "True".into(),
                reason: "Published".into(),
                message: "compiled policy published".into(),
                last_transition_time: now.clone(),
                observed_generation: generation,
            },
            Condition {
                type_: condition_types::RULES_VALID.into(),
                status: "True".into(),
                reason: "Compiled".into(),
                message: "2 rules".into(),
                last_transition_time: now,
                observed_generation: generation,
            },
        ],
        ..BoundaryPolicyStatus::default()
    };
    let patch = json!({
        "apiVersion": "agentboundary.dev/v1alpha1",
        "kind": "BoundaryPolicy",
        "status": status,
    });
    api.patch_status(
        "agents",
        &PatchParams::apply("boundary-tests").force(),
        &Patch::Apply(&patch),
    )
    .await
    .context("server-side apply of status")?;
    let stored = api.get("agents").await?;
    assert_eq!(stored.status.as_ref().and_then(|s| s.rule_count), Some(2));
    assert_eq!(
        stored.metadata.generation, generation,
        "status writes keep the generation"
    );

    let table = kubectl_output(&["get", "bp", "-n", ns.name()])?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "MODE", "RULES", "READY", "ENFORCED", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["agents", "Enforce", "2", "True"], "{table}");

    let wide = kubectl_output(&["get", "boundarypolicies", "-o", "wide", "-n", ns.name()])?;
    assert!(
        wide.lines().next().unwrap_or_default().contains("PODS"),
        "{wide}"
    );
    assert!(
        wide.lines().nth(1).unwrap_or_default().contains(" 3 "),
        "{wide}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    // The apiserver republishes its OpenAPI document a few seconds after a CRD changes.
    let text = eventually(
        Duration::from_mins(1),
        "kubectl explain bp.spec.mode",
        || async {
            let out = kubectl_output(&["explain", "boundarypolicy.spec.mode"])?;
            Ok(out
                .contains("requests no rule allows are denied")
                .then_some(out))
        },
    )
    .await?;
    assert!(
        text.contains("Enforce beats") || text.contains("Enforce wins"),
        "{text}"
    );
    let tiers = kubectl_output(&["explain", "bp.spec.jail.allowedTiers"])?;
    assert!(tiers.contains("Tiers this policy permits"), "{tiers}");
    Ok(())
}

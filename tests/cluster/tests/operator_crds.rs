//! The CRDs follow the release (`boundary_operator::crds`) against a real kube-apiserver.
//!
//! The project's own CRDs are shared by every test running at the same time, so this test runs
//! the operator's code on a copy of `BoundaryPolicy`'s CRD in a group of its own: an "older
//! release" of it without `spec.credentials`, installed as Helm's `crds/` would (unmarked), which
//! prunes that field; then the operator's apply, after which the field is kept; then a rollback
//! (an older operator), which leaves the newer CRD alone.

use std::time::Duration;

use anyhow::Context as _;
use boundary_api::contract::annotations;
use boundary_operator::crds::{Plan, ensure};
use boundary_test_support::{TestNamespace, client, delete_cluster_object_now, eventually};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client, ResourceExt as _};
use semver::Version;
use serde_json::{Value, json};

const GROUP: &str = "crd-release.test.agentboundary.dev";

/// `BoundaryPolicy`'s CRD moved to [`GROUP`]; `without_credentials` plays the older release.
fn test_crd(without_credentials: bool) -> anyhow::Result<CustomResourceDefinition> {
    let mut crd = serde_json::to_value(boundary_api::crd::crd())?;
    crd["metadata"]["name"] = json!(format!("boundarypolicies.{GROUP}"));
    crd["spec"]["group"] = json!(GROUP);
    if without_credentials {
        for version in crd["spec"]["versions"]
            .as_array_mut()
            .context("no versions")?
        {
            version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                .as_object_mut()
                .context("no spec properties")?
                .remove("credentials")
                .context("the CRD has no spec.credentials")?;
        }
    }
    Ok(serde_json::from_value(crd)?)
}

fn marked(mut crd: CustomResourceDefinition, release: &Version) -> CustomResourceDefinition {
    crd.annotations_mut()
        .insert(annotations::CRD_RELEASE.into(), release.to_string());
    crd
}

fn policies(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, "v1alpha1", "BoundaryPolicy");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "boundarypolicies"),
    )
}

/// Creates a policy with a credential and returns what the apiserver stored of `spec`.
async fn stored_spec(api: &Api<DynamicObject>, name: &str) -> anyhow::Result<Value> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "BoundaryPolicy",
        "metadata": {"name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": "agent"}},
            "allow": ["domain=api.anthropic.com"],
            "credentials": [{
                "name": "anthropic",
                "secretKeyRef": {"name": "keys", "key": "anthropic"},
                "destinations": [{"domains": ["api.anthropic.com"]}],
                "inject": {"header": {"name": "x-api-key"}},
            }],
        },
    }))?;
    // The apiserver may serve the new schema a moment after the CRD says Established: a 404
    // (no such resource yet) is retried, any other refusal is the answer.
    let created = eventually(Duration::from_secs(30), "the policy is created", || async {
        match api.create(&PostParams::default(), &object).await {
            Ok(created) => Ok(Some(created)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(other) => Err(other.into()),
        }
    })
    .await?;
    Ok(created.data["spec"].clone())
}

#[tokio::test]
async fn the_operator_brings_an_older_crd_to_its_release_and_a_rollback_keeps_the_newer_one()
-> anyhow::Result<()> {
    let client = client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = format!("boundarypolicies.{GROUP}");
    let _ = crds.delete(&name, &DeleteParams::default()).await;
    eventually(
        Duration::from_mins(1),
        "an earlier run's CRD is gone",
        || async { Ok(crds.get_opt(&name).await?.is_none().then_some(())) },
    )
    .await?;
    let cleanup = Cleanup(name.clone());

    // The older release, as Helm's crds/ installs it: created, unmarked, without credentials.
    crds.create(&PostParams::default(), &test_crd(true)?)
        .await?;
    let ours = Version::new(0, 3, 0);
    let older = Version::new(0, 2, 0);
    let newer_crd = marked(test_crd(false)?, &ours);
    eventually(
        Duration::from_mins(1),
        "the older CRD is Established",
        || async {
            let crd = crds.get(&name).await?;
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            Ok(established.then_some(()))
        },
    )
    .await?;
    let ns = TestNamespace::create(&client, "crd-release", &[]).await?;
    let api = policies(&client, ns.name());
    let before = stored_spec(&api, "before").await?;
    assert!(
        before.get("credentials").is_none(),
        "the older schema prunes spec.credentials (the upgrade problem itself): {before}"
    );

    // The upgraded operator applies its release's CRD: the new field is kept from then on.
    let done = ensure(&client, std::slice::from_ref(&newer_crd), &ours).await?;
    assert_eq!(done, [(name.clone(), Plan::Apply)]);
    let applied = crds.get(&name).await?;
    assert_eq!(
        applied.annotations().get(annotations::CRD_RELEASE),
        Some(&ours.to_string())
    );
    let after = stored_spec(&api, "after").await?;
    assert_eq!(
        after["credentials"][0]["name"], "anthropic",
        "the release's schema keeps spec.credentials: {after}"
    );

    // A rollback: the older operator leaves the newer CRD, and the stored field, alone.
    let done = ensure(&client, &[marked(test_crd(true)?, &older)], &older).await?;
    assert_eq!(done, [(name.clone(), Plan::KeepNewer(ours.clone()))]);
    let kept = api.get("after").await?;
    assert_eq!(
        kept.data["spec"]["credentials"][0]["name"], "anthropic",
        "after the rollback the stored credential is still served"
    );
    drop(cleanup);
    Ok(())
}

/// Deletes the test CRD when dropped (also when the test fails half-way).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_cluster_object_now::<CustomResourceDefinition>(self.0.clone());
    }
}

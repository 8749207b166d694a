//! The CRDs follow the release. Helm installs a chart's `crds/` once and never upgrades them, so
//! after `helm upgrade` the apiserver would prune the release's new fields from every policy
//! written against the old schema, without an error. The leading operator therefore applies the
//! CRDs it was built with at start (server-side apply, forced over Helm's first install), and
//! marks them with its release ([`annotations::CRD_RELEASE`]).
//!
//! A rollback runs an older operator: it leaves CRDs of a newer release alone, because an older
//! schema would hide the newer fields of stored objects (the apiserver prunes on read as well).

use std::time::Duration;

use boundary_api::contract::{annotations, objects};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use semver::Version;

use crate::Error;

/// This build's release version (the workspace's, which the chart's `appVersion` follows).
pub fn release() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate version is semver")
}

/// The CRDs this release applies: the API's CRDs marked with `release`.
pub fn desired(release: &Version) -> Vec<CustomResourceDefinition> {
    boundary_api::crd::crds()
        .into_iter()
        .map(|mut crd| {
            crd.annotations_mut()
                .insert(annotations::CRD_RELEASE.into(), release.to_string());
            crd
        })
        .collect()
}

/// What to do with one CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Apply ours: the cluster has none, one from an older or the same release, or one nobody
    /// marked (the chart's first install, `kubectl apply -f crds/`).
    Apply,
    /// Leave the cluster's: it comes from a newer release (we are a rollback).
    KeepNewer(Version),
}

/// The plan for our CRD of `release` given the cluster's (`None`: absent). An unreadable mark
/// counts as no mark: the schema we were built with is the one we can vouch for.
pub fn plan(release: &Version, cluster: Option<&CustomResourceDefinition>) -> Plan {
    let theirs = cluster
        .and_then(|crd| crd.annotations().get(annotations::CRD_RELEASE))
        .and_then(|mark| Version::parse(mark).ok());
    match theirs {
        Some(theirs) if theirs > *release => Plan::KeepNewer(theirs),
        _ => Plan::Apply,
    }
}

/// Applies [`desired`] CRDs where [`plan`] says so and waits until the apiserver serves them.
/// Returns, per CRD, the plan carried out.
pub async fn ensure(
    client: &Client,
    crds: &[CustomResourceDefinition],
    release: &Version,
) -> Result<Vec<(String, Plan)>, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut done = Vec::with_capacity(crds.len());
    for crd in crds {
        let name = crd.name_any();
        let kube = |action: &str| {
            let action = format!("{action} CustomResourceDefinition {name}");
            move |source| Error::Kube { action, source }
        };
        let cluster = api.get_opt(&name).await.map_err(kube("reading"))?;
        let plan = plan(release, cluster.as_ref());
        match &plan {
            Plan::KeepNewer(theirs) => tracing::warn!(
                crd = %name, %theirs, ours = %release,
                "the cluster's CRD comes from a newer release: kept (this operator is older, e.g. after a rollback)"
            ),
            Plan::Apply => {
                api.patch(
                    &name,
                    &PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force(),
                    &Patch::Apply(crd),
                )
                .await
                .map_err(kube("applying"))?;
                wait_established(&api, &name).await?;
                tracing::info!(crd = %name, release = %release, "CRD applied");
            }
        }
        done.push((name, plan));
    }
    Ok(done)
}

/// Waits until the apiserver reports `name` Established with its schema (at most a minute).
async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<(), Error> {
    for _ in 0..120 {
        let crd = api.get(name).await.map_err(|source| Error::Kube {
            action: format!("reading CustomResourceDefinition {name}"),
            source,
        })?;
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::CrdNotEstablished(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(release: Option<&str>) -> CustomResourceDefinition {
        let mut crd = boundary_api::crd::crd();
        if let Some(release) = release {
            crd.annotations_mut()
                .insert(annotations::CRD_RELEASE.into(), release.into());
        }
        crd
    }

    #[test]
    fn older_same_unmarked_and_absent_crds_are_applied() {
        let ours = Version::new(0, 3, 0);
        for cluster in [
            None,
            Some(marked(None)),
            Some(marked(Some("0.2.9"))),
            Some(marked(Some("0.3.0"))),
            Some(marked(Some("0.3.0-rc.1"))),
            Some(marked(Some("not a version"))),
        ] {
            assert_eq!(plan(&ours, cluster.as_ref()), Plan::Apply, "{cluster:?}");
        }
    }

    #[test]
    fn a_newer_release_is_kept_by_an_older_operator() {
        let ours = Version::new(0, 3, 0);
        assert_eq!(
            plan(&ours, Some(&marked(Some("0.4.0")))),
            Plan::KeepNewer(Version::new(0, 4, 0))
        );
        assert_eq!(
            plan(&ours, Some(&marked(Some("0.3.1")))),
            Plan::KeepNewer(Version::new(0, 3, 1))
        );
    }

    #[test]
    fn the_desired_crds_are_the_apis_marked_with_the_release() {
        let release = release();
        let desired = desired(&release);
        let api = boundary_api::crd::crds();
        assert_eq!(desired.len(), api.len());
        for (mut ours, theirs) in desired.into_iter().zip(api) {
            assert_eq!(
                ours.annotations_mut().remove(annotations::CRD_RELEASE),
                Some(release.to_string())
            );
            if ours.annotations().is_empty() {
                ours.metadata.annotations = None;
            }
            assert_eq!(ours, theirs);
        }
    }
}

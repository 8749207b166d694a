//! The local cluster's real node: a pod from a locally built `FROM scratch` image is scheduled,
//! runs the static `boundary` binary (`boundary probe`), and its logs come back through the
//! apiserver. Every later end-to-end test relies on this path.

use std::time::Duration;

use boundary_test_support::{TestNamespace, client, image, wait_for_pod_phase};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

#[tokio::test]
async fn a_pod_from_the_local_jail_runtime_image_runs_on_the_node() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "node-smoke", &[]).await?;
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "boundary",
                "image": image("jail-runtime"),
                "imagePullPolicy": "IfNotPresent",
                "args": ["probe"],
            }],
        },
    }))?;
    ns.create_pod(&pod).await?;
    let done = wait_for_pod_phase(&pods, "probe", &["Succeeded"], Duration::from_mins(2)).await?;
    assert!(
        done.spec.and_then(|s| s.node_name).is_some(),
        "the pod was scheduled"
    );
    let logs = pods.logs("probe", &LogParams::default()).await?;
    let report: serde_json::Value = serde_json::from_str(logs.trim())
        .map_err(|e| anyhow::anyhow!("probe printed no JSON ({e}): {logs}"))?;
    let tiers = report["tiers"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no tiers in {report}"))?;
    let mut names: Vec<&str> = tiers.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["landlock", "privileged-netns", "userns"],
        "{report}"
    );
    // A pod without added capabilities cannot build the privileged tier, and says why.
    assert_eq!(tiers["privileged-netns"]["works"], false, "{report}");
    assert!(
        tiers["privileged-netns"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("CAP_SYS_ADMIN")),
        "{report}"
    );
    assert_eq!(report["facts"]["netAdminAndSysAdmin"], false, "{report}");
    assert!(
        report["facts"]["kernel"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{report}"
    );
    Ok(())
}

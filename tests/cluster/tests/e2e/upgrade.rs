//! Upgrades (issue 20), on the real node: the previous release (its own chart and images, built
//! from its commit in RELEASES by tests/scripts/previous-release.sh) installed with agents
//! running, upgraded to this release pulled from an OCI registry (Debian's `docker-registry`:
//! the chart by `helm push`, the images by the node's runtime), rolled back, rolled forward and
//! uninstalled.

use super::real_pods::local_registry;
use super::*;

/// The previous release: `BOUNDARY_PREVIOUS_RELEASE` (its version, the tag of its images) and
/// `BOUNDARY_PREVIOUS_CHART` (its chart), which tests/scripts/previous-release.sh prints.
struct Previous {
    version: String,
    chart: PathBuf,
}

impl Previous {
    fn from_env() -> anyhow::Result<Previous> {
        let (Some(version), Some(chart)) = (
            std::env::var_os("BOUNDARY_PREVIOUS_RELEASE"),
            std::env::var_os("BOUNDARY_PREVIOUS_CHART"),
        ) else {
            bail!(
                "BOUNDARY_PREVIOUS_RELEASE and BOUNDARY_PREVIOUS_CHART are not set: run \
                 `eval \"$(tests/scripts/previous-release.sh)\"` first (cluster-tests.sh does)"
            );
        };
        Ok(Previous {
            version: version.to_string_lossy().into_owned(),
            chart: chart.into(),
        })
    }
}

/// `helm ARGS` against the test cluster; its output, or an error with it.
fn helm_run(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm());
    cmd.args(args);
    if let Some(kubeconfig) = std::env::var_os("KUBECONFIG") {
        cmd.arg("--kubeconfig").arg(kubeconfig);
    }
    run(&mut cmd)
}

/// The `--set` values of a release with two webhook replicas on this node.
fn release_values(images: &[String]) -> Vec<String> {
    let mut values = node_values();
    values.push("webhook.replicas=2".into());
    values.extend(images.iter().cloned());
    values
}

/// `helm install` or `upgrade` of `chart` with `values` (and `extra` arguments), waiting.
fn helm_release(verb: &str, chart: &str, values: &[String], extra: &[&str]) -> anyhow::Result<()> {
    let mut args = vec![
        verb,
        RELEASE,
        chart,
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ];
    args.extend(extra);
    let sets: Vec<String> = values.iter().map(|v| format!("--set={v}")).collect();
    args.extend(sets.iter().map(String::as_str));
    helm_run(&args).map(drop)
}

/// The images of the release's Deployments and DaemonSet (`name=image`, sorted).
async fn release_images(client: &Client) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let mut images: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}")))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter_map(|c| c.image.clone())
        .collect();
    images.sort();
    images.dedup();
    Ok(images)
}

/// Waits until every running pod of the release runs an image ending in `:tag`, from
/// `registry` when given.
async fn release_runs(client: &Client, tag: &str, registry: Option<&str>) -> anyhow::Result<()> {
    eventually(
        Duration::from_mins(3),
        &format!("the release's pods run the images tagged {tag}"),
        || async {
            let images = release_images(client).await?;
            let all = !images.is_empty()
                && images.iter().all(|i| {
                    i.ends_with(&format!(":{tag}"))
                        && registry.is_none_or(|r| i.starts_with(&format!("{r}/")))
                });
            if all {
                Ok(Some(()))
            } else {
                bail!("images now: {images:?}")
            }
        },
    )
    .await
}

/// The release the project's CRDs are marked with (`agentboundary.dev/release`).
fn crd_release() -> anyhow::Result<String> {
    kubectl_output(&[
        "get",
        "crd",
        "boundarypolicies.agentboundary.dev",
        "-o",
        "jsonpath={.metadata.annotations.agentboundary\\.dev/release}",
    ])
}

/// The agent's fetches since `from` (a byte offset of its log): `(allowed ok, wrong)`, where
/// wrong is an allowed request that failed or a denied one that got through.
async fn fetches_since(
    pods: &Api<Pod>,
    pod: &str,
    from: usize,
) -> anyhow::Result<(usize, Vec<String>)> {
    let text = logs(pods, pod, "agent").await?;
    let mut ok = 0;
    let mut wrong = Vec::new();
    for line in text.get(from..).unwrap_or_default().lines() {
        if line.contains(&format!("fetch https://{ALLOWED}/ok -> 200")) {
            ok += 1;
        } else if line.contains(&format!("fetch https://{ALLOWED}/ok ->"))
            || line.contains(&format!("fetch https://{DENIED}/no -> 200"))
        {
            wrong.push(line.to_owned());
        }
    }
    Ok((ok, wrong))
}

/// The agent `pod` answered right all along since `from` and still does: at least two more
/// allowed fetches, none wrong. Returns the log's new length.
async fn kept_working(
    pods: &Api<Pod>,
    pod: &str,
    from: usize,
    when: &str,
) -> anyhow::Result<usize> {
    let now = logs(pods, pod, "agent").await?.len();
    eventually(
        Duration::from_mins(1),
        &format!("agent {pod} keeps working {when}"),
        || async {
            let (ok, wrong) = fetches_since(pods, pod, now).await?;
            Ok((ok >= 2).then_some(wrong))
        },
    )
    .await?;
    let (_, wrong) = fetches_since(pods, pod, from).await?;
    anyhow::ensure!(
        wrong.is_empty(),
        "agent {pod} {when}: wrong answers {wrong:?}"
    );
    Ok(logs(pods, pod, "agent").await?.len())
}

/// Every field of `sent` is in `stored` with the same value (the apiserver may add defaults).
fn kept(sent: &Value, stored: &Value, path: &str, lost: &mut Vec<String>) {
    match (sent, stored) {
        (Value::Object(s), Value::Object(t)) => {
            for (k, v) in s {
                match t.get(k) {
                    Some(w) => kept(v, w, &format!("{path}.{k}"), lost),
                    None => lost.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(s), Value::Array(t)) if s.len() == t.len() => {
            for (i, (v, w)) in s.iter().zip(t).enumerate() {
                kept(v, w, &format!("{path}[{i}]"), lost);
            }
        }
        _ if sent == stored => {}
        _ => lost.push(format!("{path}: {sent} became {stored}")),
    }
}

/// Every example `BoundaryPolicy` of crds/examples, created in `namespace` (not opted in),
/// comes back with every field it was written with.
fn examples_are_kept(namespace: &str) -> anyhow::Result<usize> {
    let examples = repo_root().join("crds/examples");
    let mut count = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files {
        let file = file.to_string_lossy().into_owned();
        let local: Value = serde_json::from_str(&kubectl_output(&[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &file,
        ])?)?;
        let items = match local.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => vec![local],
        };
        for sent in items.iter().filter(|i| i["kind"] == "BoundaryPolicy") {
            let name = sent["metadata"]["name"]
                .as_str()
                .context("an example without a name")?;
            // kubectl's client-side rendering names the namespace `default`.
            let mut object = sent.clone();
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            let dir = tempfile::tempdir()?;
            let path = dir.path().join(format!("{name}.json"));
            std::fs::write(&path, serde_json::to_vec(&object)?)?;
            kubectl_output(&["apply", "-n", namespace, "-f", &path.to_string_lossy()])?;
            let stored: Value = serde_json::from_str(&kubectl_output(&[
                "get",
                "boundarypolicy",
                "-n",
                namespace,
                name,
                "-o",
                "json",
            ])?)?;
            let mut lost = Vec::new();
            kept(
                &sent["spec"],
                &stored["spec"],
                &format!("{name}.spec"),
                &mut lost,
            );
            anyhow::ensure!(
                lost.is_empty(),
                "{file}: the apiserver did not keep {lost:?}"
            );
            count += 1;
        }
    }
    Ok(count)
}

/// What the release and its operator leave behind, as `what: objects` lines (empty: nothing).
async fn leftovers(client: &Client, namespaces: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    let webhooks = kubectl_output(&[
        "get",
        "mutatingwebhookconfigurations",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ])?;
    if !webhooks.trim().is_empty() {
        left.push(format!("webhook configurations: {}", webhooks.trim()));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await?.items {
        let ours: Vec<&String> = node
            .labels()
            .keys()
            .filter(|k| contract::node_labels::ALL.contains(&k.as_str()))
            .collect();
        if !ours.is_empty() {
            left.push(format!("labels of node {}: {ours:?}", node.name_any()));
        }
    }
    for ns in namespaces {
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        if configmaps
            .get_opt(objects::POLICY_CONFIGMAP)
            .await?
            .is_some()
        {
            left.push(format!("ConfigMap {ns}/{}", objects::POLICY_CONFIGMAP));
        }
        let policies: Api<boundary_api::crd::BoundaryPolicy> = Api::namespaced(client.clone(), ns);
        for p in policies.list(&ListParams::default()).await?.items {
            if !p.finalizers().is_empty() {
                left.push(format!(
                    "finalizers of policy {ns}/{}: {:?}",
                    p.name_any(),
                    p.finalizers()
                ));
            }
        }
    }
    let release_objects = kubectl_output(&[
        "get",
        "deployments,daemonsets,services,serviceaccounts,secrets,leases,jobs",
        "-n",
        RELEASE_NAMESPACE,
        "-o",
        "name",
    ])?;
    let release_objects: Vec<&str> = release_objects
        .lines()
        .filter(|l| {
            !l.starts_with("serviceaccount/default") && !l.starts_with("secret/default-token")
        })
        .collect();
    if !release_objects.is_empty() {
        left.push(format!("in {RELEASE_NAMESPACE}: {release_objects:?}"));
    }
    let cluster_roles = kubectl_output(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ])?;
    if !cluster_roles.trim().is_empty() {
        left.push(format!("cluster roles: {}", cluster_roles.trim()));
    }
    Ok(left)
}

/// This release in `registry`: the images pushed by the node's runtime, then their names removed
/// from the node, so that the release's pods must pull them; the chart packaged and pushed by
/// helm. The chart's `oci://` reference.
fn push_chart(registry: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().to_string_lossy().into_owned();
    helm_run(&[
        "package",
        &repo_root().join("charts/agent-boundary").to_string_lossy(),
        "--destination",
        &out,
    ])?;
    let package = std::fs::read_dir(dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("helm package wrote no .tgz")?;
    let runtime = NodeRuntime::local()?;
    let version = env!("CARGO_PKG_VERSION");
    for name in ["jail-runtime", "boundary-webhook", "boundary-operator"] {
        let pushed = format!("agent-boundary/{name}:{version}");
        runtime.push_to_plain_http_registry(&image(name), registry, &pushed)?;
        runtime.untag(&format!("{registry}/{pushed}"))?;
    }
    helm_run(&[
        "push",
        &package.to_string_lossy(),
        &format!("oci://{registry}/charts"),
        "--plain-http",
    ])?;
    Ok(format!("oci://{registry}/charts/agent-boundary"))
}

/// `helm uninstall` of the release, waiting (its clean-up hook included).
fn helm_uninstall() -> anyhow::Result<()> {
    helm_run(&[
        "uninstall",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "3m",
    ])
    .map(drop)
}

/// `helm uninstall` (its clean-up hook included) leaves nothing behind.
async fn uninstall_leaves_nothing(client: &Client, namespaces: &[&str]) -> anyhow::Result<()> {
    helm_uninstall()?;
    eventually(Duration::from_mins(1), "nothing left behind", || async {
        let left = leftovers(client, namespaces).await?;
        if left.is_empty() {
            Ok(Some(()))
        } else {
            bail!("left: {left:#?}")
        }
    })
    .await
}

/// The previous release installed from nothing (an earlier test's release goes first, and its
/// uninstall hook runs), its pods running its images.
async fn install_previous(client: &Client, previous: &Previous) -> anyhow::Result<()> {
    // From nothing: an earlier test's release goes (its uninstall hook runs too).
    if helm_run(&["status", RELEASE, "--namespace", RELEASE_NAMESPACE]).is_ok() {
        helm_uninstall()?;
    }
    let repo = boundary_test_support::image_repo();
    let previous_images: Vec<String> = [
        ("jailRuntime", "jail-runtime"),
        ("webhook", "boundary-webhook"),
        ("operator", "boundary-operator"),
    ]
    .iter()
    .flat_map(|(key, name)| {
        [
            format!("{key}.image.repository={repo}/{name}"),
            format!("{key}.image.tag={}", previous.version),
        ]
    })
    .collect();
    let previous_chart = previous.chart.to_string_lossy().into_owned();
    helm_release(
        "install",
        &previous_chart,
        &release_values(&previous_images),
        &[],
    )?;
    webhook_answers(client).await?;
    release_runs(client, &previous.version, None).await?;
    Ok(())
}

/// A fresh install straight from the registry (`helm install oci://`): the operator publishes
/// the policy again and the webhook jails a new pod with the sidecar pulled from there. Then
/// back to the release the other tests install (local chart and images) while the registry is
/// still there to serve the pods being replaced: the next test would otherwise pay for that
/// inside its own time limit, against a registry that is gone.
async fn fresh_install_jails(
    world: &World,
    chart: &str,
    values: &[String],
    registry: &str,
) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    helm_release(
        "install",
        chart,
        values,
        &["--version", version, "--plain-http"],
    )?;
    webhook_answers(&world.client).await?;
    release_runs(&world.client, version, Some(registry)).await?;
    let pods: Api<Pod> = world.ns.api();
    let fresh = world
        .ns
        .create_pod(&agent_pod(world, "agent-fresh", &json!({}))?)
        .await?;
    let sidecar = container(&fresh, contract::containers::SIDECAR)?
        .image
        .clone()
        .unwrap_or_default();
    anyhow::ensure!(
        sidecar == format!("{registry}/agent-boundary/jail-runtime:{version}"),
        "the release installed from the registry injected {sidecar}"
    );
    fetches_as_the_policy_says(&pods, "agent-fresh").await?;
    install(&world.client, &[]).await
}

/// 20. Upgrade, rollback and uninstall with agents running: the previous release is installed
///     with two webhook replicas and an agent runs; the release is upgraded to this one, whose
///     chart and images come from an OCI registry; the agent keeps answering right throughout
///     (same pod, no restart), the CRDs carry this release, the example policies keep every
///     field, a new pod gets this release's sidecar from the registry; `helm rollback` goes back
///     to the previous images and keeps the newer CRDs; rolled forward again, `helm uninstall`
///     leaves no webhook configuration, node label, ConfigMap, Secret, Lease or finalizer; the
///     agents keep running; the webhook refused no admission from first to last; and
///     `helm install oci://` from the registry works from nothing.
#[tokio::test]
async fn an_upgrade_from_the_previous_release_keeps_agents_working_and_uninstall_leaves_nothing()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    if boundary_test_support::local_cluster_state().is_none() {
        eprintln!(
            "NOT RUN: this test builds the previous release's images into the local cluster's node and starts a registry there"
        );
        return Ok(());
    }
    let previous = Previous::from_env()?;
    let version = env!("CARGO_PKG_VERSION");
    anyhow::ensure!(
        previous.version != version,
        "the previous release is this version ({version})"
    );
    let client = client().await?;
    install_previous(&client, &previous).await?;
    let node = probed_node(&client).await?;
    let world = world_of(client.clone(), "e2e-upgrade").await?;
    let examples = TestNamespace::create(&client, "e2e-upgrade-examples", &[]).await?;
    let result = async {
        let pods: Api<Pod> = world.ns.api();
        let old_agent = world.ns.create_pod(&agent_pod(&world, "agent-old", &json!({}))?).await?;
        fetches_as_the_policy_says(&pods, "agent-old").await?;
        let sidecar_image = container(&old_agent, contract::containers::SIDECAR)?
            .image
            .clone()
            .unwrap_or_default();
        anyhow::ensure!(
            sidecar_image.ends_with(&format!(":{}", previous.version)),
            "the previous release injected {sidecar_image}"
        );
        let mut seen = logs(&pods, "agent-old", "agent").await?.len();

        let burst_pod: Pod = serde_json::from_value(json!({
            "metadata": {"generateName": "burst-", "labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "agent", "image": image("e2e-tools"),
                     "imagePullPolicy": "IfNotPresent", "command": ["/usr/local/bin/e2e-tools"], "args": ["sleep"]}]},
        }))?;
        let burst = Burst::start(pods.clone(), burst_pod);

        // This release into the registry: the images by the node's runtime, then their names
        // removed from the node, so that the release's pods must pull them; the chart by helm.
        let registry = local_registry(&internal_ip(&node)?)?;
        let chart = push_chart(&registry.address)?;
        let mut oci_args = vec!["--version", version, "--plain-http"];
        if helm_major()? >= 4 {
            oci_args.push("--force-conflicts");
        }
        let current_values = release_values(&[format!("imageRegistry={}", registry.address)]);

        helm_release("upgrade", &chart, &current_values, &oci_args)?;
        webhook_answers(&client).await?;
        release_runs(&client, version, Some(&registry.address)).await?;
        eventually(Duration::from_mins(1), "the CRDs carry this release", || async {
            Ok((crd_release()? == version).then_some(()))
        })
        .await?;
        seen = kept_working(&pods, "agent-old", seen, "through the upgrade").await?;
        the_same_pod_without_restarts(&pods, &old_agent).await?;
        let kept_examples = examples_are_kept(examples.name())?;
        let new_agent = world.ns.create_pod(&agent_pod(&world, "agent-new", &json!({}))?).await?;
        let new_sidecar = container(&new_agent, contract::containers::SIDECAR)?
            .image
            .clone()
            .unwrap_or_default();
        anyhow::ensure!(
            new_sidecar == format!("{}/agent-boundary/jail-runtime:{version}", registry.address),
            "this release injected {new_sidecar}"
        );
        fetches_as_the_policy_says(&pods, "agent-new").await?;
        let mut seen_new = logs(&pods, "agent-new", "agent").await?.len();

        helm_run(&["rollback", RELEASE, "1", "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m"])?;
        webhook_answers(&client).await?;
        release_runs(&client, &previous.version, None).await?;
        let after_rollback = crd_release()?;
        anyhow::ensure!(
            after_rollback == version,
            "a rollback keeps the newer CRDs (marked {version}); they are marked {after_rollback}"
        );
        seen = kept_working(&pods, "agent-old", seen, "through the rollback").await?;
        seen_new = kept_working(&pods, "agent-new", seen_new, "through the rollback").await?;

        helm_release("upgrade", &chart, &current_values, &oci_args)?;
        webhook_answers(&client).await?;
        release_runs(&client, version, Some(&registry.address)).await?;
        let admissions = burst.finish().await?;
        eprintln!(
            "upgrade: {} -> {version} (OCI) -> rollback -> {version}: {} admissions jailed, {} unjailed, {} refused, slowest {} ms; {kept_examples} example policies kept every field",
            previous.version,
            admissions.admitted,
            admissions.unjailed,
            admissions.refused.len(),
            admissions.slowest.as_millis()
        );
        anyhow::ensure!(admissions.refused.is_empty(), "refused admissions: {:?}", admissions.refused);
        anyhow::ensure!(admissions.unjailed == 0, "{} pods admitted unjailed", admissions.unjailed);
        anyhow::ensure!(admissions.admitted >= 20, "the burst ran through it all ({})", admissions.admitted);

        uninstall_leaves_nothing(&client, &[world.ns.name(), examples.name()]).await?;
        kept_working(&pods, "agent-old", seen, "after the uninstall").await?;
        kept_working(&pods, "agent-new", seen_new, "after the uninstall").await?;
        the_same_pod_without_restarts(&pods, &old_agent).await?;
        the_same_pod_without_restarts(&pods, &new_agent).await?;

        // The registry lives until here: it serves the fresh install's images.
        fresh_install_jails(&world, &chart, &current_values, &registry.address).await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

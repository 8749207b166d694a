//! Faults without harm (issue 19), on the real node with the chart installed: the sidecar of a
//! running agent killed, the webhook's pods deleted and its Deployment rolled during a burst of
//! pod creations, the operator killed mid-reconcile and mid-certificate-reissue, the node agent
//! restarted, and the policy ConfigMap deleted under a running pod. Each case prints its figure
//! (`chaos: ...`). The apiserver outage is `tests/outage.rs`.

use std::time::Instant;

use jiff::Timestamp;

use super::*;

/// The release's pods of one component.
async fn component_pods(client: &Client, component: &str) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    Ok(pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
        .await?
        .items)
}

/// The node runtime's id of container `container` of `pod`.
fn container_id(pod: &Pod, container: &str) -> anyhow::Result<String> {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container))
        .with_context(|| format!("no status of container {container}"))?;
    let id = status
        .container_id
        .as_deref()
        .with_context(|| format!("container {container} has no id yet"))?;
    Ok(NodeRuntime::local()?.container_id(id)?.to_owned())
}

fn running(pod: &Pod, container: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}

fn restarts(pod: &Pod, container: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container))
        .map_or(0, |c| c.restart_count)
}

/// Log lines of `pod`/`container` with the kubelet's timestamps, as (time, line).
async fn timed_logs(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
) -> anyhow::Result<Vec<(Timestamp, String)>> {
    let text = pods
        .logs(
            pod,
            &LogParams {
                container: Some(container.into()),
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (time, rest) = l.split_once(' ')?;
            let time: Timestamp = time.parse().ok()?;
            Some((time, rest.to_owned()))
        })
        .collect())
}

/// 1. The sidecar of a running agent is killed (as an OOM kill or crash would). Meanwhile the
///    agent fails closed and nothing reaches the denied server; once the kubelet restarted the
///    sidecar, the same agent process's next HTTPS requests work again (the CA it trusts is
///    kept), and the audit says the sidecar restarted and what was refused meanwhile.
#[tokio::test]
async fn a_killed_sidecar_comes_back_and_the_running_agent_works_again() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-chaos-sidecar").await?;
    let ns = &world.ns;
    let result = async {
        let pods: Api<Pod> = ns.api();
        let sidecar = contract::containers::SIDECAR;
        ns.create_pod(&agent_pod(&world, "agent", &json!({}))?).await?;
        fetches_as_the_policy_says(&pods, "agent").await?;
        // The agent's log can show its first answers before the kubelet has written the
        // sidecar's container id into the pod's status.
        let pod = eventually(
            Duration::from_mins(1),
            "the pod's status shows the sidecar running",
            || async {
                let pod = pods.get("agent").await?;
                Ok((running(&pod, sidecar) && container_id(&pod, sidecar).is_ok()).then_some(pod))
            },
        )
        .await?;
        let agent_restarts = restarts(&pod, "agent");
        // Killed twice: the kubelet restarts a crashed container at once the first time and
        // after its crash-loop back-off (10 s) the second, so the agent meets the outage.
        NodeRuntime::local()?.kill(&container_id(&pod, sidecar)?)?;
        let pod = eventually(Duration::from_mins(2), "the kubelet restarts the sidecar", || async {
            let pod = pods.get("agent").await?;
            let back = restarts(&pod, sidecar) >= 1
                && running(&pod, sidecar)
                && container_id(&pod, sidecar).is_ok();
            Ok(back.then_some(pod))
        })
        .await?;
        let killed_at = Timestamp::now();
        let started = Instant::now();
        NodeRuntime::local()?.kill(&container_id(&pod, sidecar)?)?;
        eventually(Duration::from_mins(2), "the kubelet restarts the sidecar again", || async {
            let pod = pods.get("agent").await?;
            Ok((restarts(&pod, sidecar) >= 2).then_some(()))
        })
        .await?;
        let ok = format!("fetch https://{ALLOWED}/ok -> 200");
        let recovered_at = eventually(
            Duration::from_mins(2),
            "the running agent's allowed request works again",
            || async {
                let lines = timed_logs(&pods, "agent", "agent").await?;
                let after: Vec<&(Timestamp, String)> =
                    lines.iter().filter(|(t, _)| *t > killed_at).collect();
                match after.iter().find(|(_, l)| l.contains(&ok)) {
                    Some((t, _)) => Ok(Some(*t)),
                    None => bail!(
                        "since the kill:\n{}",
                        after
                            .iter()
                            .rev()
                            .take(6)
                            .map(|(_, l)| l.as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                }
            },
        )
        .await?;
        let recovery = recovered_at.duration_since(killed_at).as_millis();
        // The same process: the agent container did not restart.
        let pod = pods.get("agent").await?;
        assert_eq!(restarts(&pod, "agent"), agent_restarts, "the agent was not restarted");
        let lines = timed_logs(&pods, "agent", "agent").await?;
        let meanwhile: Vec<&String> = lines
            .iter()
            .filter(|(t, _)| *t > killed_at && *t < recovered_at)
            .map(|(_, l)| l)
            .collect();
        assert!(
            !meanwhile.iter().any(|l| l.contains("-> 200") && l.contains(DENIED)),
            "nothing leaks meanwhile: {meanwhile:?}"
        );
        let denied_server = logs(&pods, "denied", "server").await?;
        assert!(
            !denied_server.contains(" GET "),
            "the denied server was never reached:\n{denied_server}"
        );
        let after = timed_logs(&pods, "agent", "agent").await?;
        assert!(
            after
                .iter()
                .filter(|(t, _)| *t > recovered_at)
                .all(|(_, l)| !l.contains("UnknownIssuer")),
            "no certificate errors after the restart"
        );
        let (restart, refused) = restart_audited(&pods).await?;
        assert_eq!(restart["ca"], "reused", "{restart}");
        eprintln!(
            "chaos: sidecar killed twice (the second restart after the kubelet's back-off): the agent's next allowed request worked {recovery} ms after the second kill ({} s until the kubelet restarted it); {refused} connections refused meanwhile and audited; denied server reached 0 times",
            started.elapsed().as_secs()
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(ns, result).await
}

/// The sidecar's audit of its restart and of the connections refused meanwhile. The refusals
/// are reported when `boundary run`'s session reconnects, which may come a moment after the
/// first allowed request.
async fn restart_audited(pods: &Api<Pod>) -> anyhow::Result<(Value, usize)> {
    let sidecar = contract::containers::SIDECAR;
    eventually(
        Duration::from_secs(30),
        "the audit has the restart and the refusals meanwhile",
        || async {
            let audit = logs(pods, "agent", sidecar).await?;
            let records: Vec<Value> = audit
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let restart = records
                .iter()
                .find(|r| r["kind"] == "sidecar-restart")
                .cloned();
            let refused = records
                .iter()
                .filter(|r| r["kind"] == "unreachable-sidecar")
                .count();
            match restart {
                Some(r) if refused >= 1 => Ok(Some((r, refused))),
                _ => bail!("so far:\n{}", tail(&audit, 12)),
            }
        },
    )
    .await
}

/// 2. With two webhook replicas, one webhook pod is deleted and then the Deployment rolled while
///    pods are created without pause (server-side dry runs, which go through admission like any
///    create): no admission is refused and every pod is jailed.
#[tokio::test]
async fn the_webhook_deleted_and_rolled_during_a_burst_loses_no_admission() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let client = client().await?;
    install(&client, &["webhook.replicas=2"]).await?;
    let ns = TestNamespace::create(
        &client,
        "e2e-chaos-webhook",
        &[(labels::INJECT, contract::INJECT_ENABLED)],
    )
    .await?;
    let result = async {
        policy_with(&ns, json!({})).await?;
        let pods: Api<Pod> = ns.api();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"generateName": "burst-", "labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "agent", "image": image("e2e-tools"),
                     "imagePullPolicy": "IfNotPresent", "command": ["/usr/local/bin/e2e-tools"], "args": ["sleep"]}]},
        }))?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        // The default ServiceAccount must exist before the burst measures the webhook.
        eventually(Duration::from_mins(1), "a first pod is admitted", || async {
            Ok(pods.create(&dry_run, &pod).await.ok().map(|_| ()))
        })
        .await?;
        let burst = Burst::start(pods.clone(), pod.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let webhook_pods = component_pods(&client, "webhook").await?;
        anyhow::ensure!(webhook_pods.len() == 2, "two webhook pods: {}", webhook_pods.len());
        let release_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
        release_pods
            .delete(&webhook_pods[0].name_any(), &kube::api::DeleteParams::default())
            .await?;
        let deployment = webhook_deployment(&client).await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
        eventually(Duration::from_mins(2), "two webhook pods ready again", || async {
            let d = deployments.get(&deployment).await?;
            Ok((d.status.and_then(|s| s.ready_replicas) == Some(2)).then_some(()))
        })
        .await?;
        let restarted_at = Timestamp::now().to_string();
        deployments
            .patch(
                &deployment,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                    "e2e.agentboundary.dev/restartedAt": restarted_at}}}}})),
            )
            .await?;
        eventually(Duration::from_mins(3), "the rollout completes", || async {
            let d = deployments.get(&deployment).await?;
            let status = d.status.unwrap_or_default();
            let done = status.updated_replicas == Some(2)
                && status.ready_replicas == Some(2)
                && status.replicas == Some(2)
                && status.observed_generation == d.metadata.generation;
            Ok(done.then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let Admissions {
            admitted,
            unjailed,
            refused,
            slowest,
        } = burst.finish().await?;
        eprintln!(
            "chaos: webhook pod deleted and Deployment rolled with 2 replicas: {admitted} admissions jailed, {unjailed} unjailed, {} refused, slowest {} ms",
            refused.len(),
            slowest.as_millis()
        );
        assert!(refused.is_empty(), "refused admissions: {refused:?}");
        assert_eq!(unjailed, 0, "every pod jailed");
        assert!(admitted >= 20, "the burst ran through the faults ({admitted})");
        anyhow::Ok(())
    }
    .await;
    install(&client, &[]).await?;
    dump_on_error(&ns, result).await
}

/// 3. The operator is killed while it publishes a burst of policy edits, and again right after
///    its certificates were taken away (a forced re-issue): the next operator pod converges —
///    every policy published and Ready, the webhook's certificate valid for the caBundle (pods are
///    admitted and jailed again).
#[tokio::test]
async fn the_operator_killed_mid_reconcile_and_mid_reissue_converges() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let client = client().await?;
    install(&client, &[]).await?;
    let ns = TestNamespace::create(
        &client,
        "e2e-chaos-operator",
        &[(labels::INJECT, contract::INJECT_ENABLED)],
    )
    .await?;
    let result = async {
        let api: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
        let started = Instant::now();
        for i in 0..12 {
            let object = json!({
                "apiVersion": contract::API_VERSION, "kind": "BoundaryPolicy",
                "metadata": {"name": format!("p{i}")},
                "spec": {"podSelector": {"matchLabels": {"app": format!("a{i}")}},
                         "allow": [format!("domain=host{i}.example.com")]},
            });
            api.patch(&format!("p{i}"), &PatchParams::apply("e2e-test").force(), &Patch::Apply(&object))
                .await?;
            if i == 5 {
                kill_operator(&client).await?;
            }
        }
        let configmaps: Api<ConfigMap> = ns.api();
        eventually(Duration::from_mins(3), "every policy published and Ready", || async {
            let text = configmaps
                .get_opt(objects::POLICY_CONFIGMAP)
                .await?
                .and_then(|c| c.data)
                .and_then(|d| d.get(objects::POLICY_CONFIGMAP_KEY).cloned())
                .unwrap_or_default();
            let all_published = (0..12).all(|i| text.contains(&format!("host{i}.example.com")));
            let list = api.list(&ListParams::default()).await?;
            let all_ready = list.items.len() == 12
                && list.items.iter().all(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.observed_generation == p.metadata.generation
                            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                });
            Ok((all_published && all_ready).then_some(()))
        })
        .await?;
        let reconcile_recovery = started.elapsed();

        let reissue = operator_killed_after_its_certificates_went(&client, &ns).await?;
        eprintln!(
            "chaos: operator killed mid-reconcile: 12 policies published and Ready {} ms after the first edit; killed after its certificates were deleted: webhook trusted again after {} s",
            reconcile_recovery.as_millis(),
            reissue.as_secs()
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&ns, result).await
}

/// 4. The node agent is restarted: the node keeps its labels (the operator does not forget a
///    node whose agent is briefly gone), the new agent reports again, and pods are jailed in the
///    same tier meanwhile.
#[tokio::test]
async fn a_restarted_node_agent_changes_nothing_for_new_pods() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-chaos-agent").await?;
    let ns = &world.ns;
    let result = async {
        let before = probed_node(&world.client).await?;
        let tiers = before.labels().get(contract::node_labels::TIERS).cloned();
        let release_pods: Api<Pod> = Api::namespaced(world.client.clone(), RELEASE_NAMESPACE);
        let agents = component_pods(&world.client, "node-agent").await?;
        let old = agents.first().context("no node agent pod")?.name_any();
        let started = Instant::now();
        release_pods
            .delete(&old, &kube::api::DeleteParams::default().grace_period(0))
            .await?;
        // Meanwhile a pod is planned in the same tier.
        let pod = agent_pod(&world, "during", &json!({}))?;
        create_in_tier(&world, &pod, "userns").await?;
        let reported = eventually(Duration::from_mins(2), "the new node agent reports", || async {
            let now = component_pods(&world.client, "node-agent").await?;
            Ok(now
                .iter()
                .find(|p| {
                    p.name_any() != old
                        && p.annotations().contains_key(annotations::PROBE_REPORT)
                })
                .map(|_| started.elapsed()))
        })
        .await?;
        let after = probed_node(&world.client).await?;
        assert_eq!(
            after.labels().get(contract::node_labels::TIERS).cloned(),
            tiers,
            "the node's tiers did not change"
        );
        eprintln!(
            "chaos: node agent restarted: a pod was jailed in userns meanwhile, the new agent reported after {} ms, node labels unchanged",
            reported.as_millis()
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(ns, result).await
}

/// 5. The namespace's policy ConfigMap is deleted under a running pod while no operator can put
///    it back: the pod keeps enforcing the last policy (the allowed request works, the other is
///    still refused) and says so; with the operator back, the ConfigMap is published again.
#[tokio::test]
async fn a_deleted_policy_config_map_leaves_running_pods_on_their_last_policy() -> anyhow::Result<()>
{
    let _lock = exclusive()?;
    let world = world("e2e-chaos-configmap").await?;
    let ns = &world.ns;
    let deployments: Api<Deployment> = Api::namespaced(world.client.clone(), RELEASE_NAMESPACE);
    let operator = deployments
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|d| d.name_any().ends_with("-operator"))
        .context("no operator Deployment")?
        .name_any();
    let result = async {
        let pods: Api<Pod> = ns.api();
        ns.create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        fetches_as_the_policy_says(&pods, "agent").await?;
        deployments
            .patch(
                &operator,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
        eventually(Duration::from_mins(1), "no operator pod left", || async {
            Ok(component_pods(&world.client, "operator")
                .await?
                .is_empty()
                .then_some(()))
        })
        .await?;
        let configmaps: Api<ConfigMap> = ns.api();
        configmaps
            .delete(
                objects::POLICY_CONFIGMAP,
                &kube::api::DeleteParams::default(),
            )
            .await?;
        let deleted_at = Timestamp::now();
        // The kubelet syncs volumes about once a minute: watch long enough to see it act.
        let said = eventually(
            Duration::from_mins(3),
            "the sidecar says the policy file is gone and keeps the last policy",
            || async {
                let audit = logs(&pods, "agent", contract::containers::SIDECAR).await?;
                Ok(audit
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|r| r["kind"] == "policy-missing"))
            },
        )
        .await;
        // Whether or not the kubelet removed the file, enforcement goes on as before.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let lines = timed_logs(&pods, "agent", "agent").await?;
        let later: Vec<&String> = lines
            .iter()
            .filter(|(t, _)| t.duration_since(deleted_at).as_secs() > 60)
            .map(|(_, l)| l)
            .collect();
        assert!(
            later
                .iter()
                .any(|l| l.contains(&format!("https://{ALLOWED}/ok -> 200")))
                && later
                    .iter()
                    .any(|l| l.contains(&format!("https://{ALLOWED}/secret -> 403"))),
            "the last policy is still enforced a minute after the deletion: {later:?}"
        );
        let record = said?;
        eprintln!("chaos: policy ConfigMap deleted: the sidecar said {record} and kept enforcing");
        deployments
            .patch(
                &operator,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 1}})),
            )
            .await?;
        eventually(
            Duration::from_mins(2),
            "the operator publishes the ConfigMap again",
            || async {
                Ok(configmaps
                    .get_opt(objects::POLICY_CONFIGMAP)
                    .await?
                    .map(|_| ()))
            },
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    install(&world.client, &[]).await?;
    dump_on_error(ns, result).await
}

/// Deletes the operator's pods at once (no grace).
async fn kill_operator(client: &Client) -> anyhow::Result<()> {
    let release_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    for p in component_pods(client, "operator").await? {
        release_pods
            .delete(
                &p.name_any(),
                &kube::api::DeleteParams::default().grace_period(0),
            )
            .await?;
    }
    Ok(())
}

/// Both certificate Secrets deleted (a new CA and serving certificate must be made and the
/// caBundle patched) and the operator killed at once; returns how long until pods are admitted
/// and jailed again.
async fn operator_killed_after_its_certificates_went(
    client: &Client,
    ns: &TestNamespace,
) -> anyhow::Result<Duration> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let webhook_secret = secrets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|s| s.name_any())
        .find(|n| n.ends_with("-webhook-tls") || n.ends_with("-webhook"))
        .context("no webhook Secret")?;
    let ca_secret = format!("{webhook_secret}-ca");
    let old_ca = secrets
        .get(&ca_secret)
        .await?
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("no CA")?;
    let started = Instant::now();
    for name in [webhook_secret.clone(), ca_secret.clone()] {
        let _ = secrets
            .delete(&name, &kube::api::DeleteParams::default())
            .await;
    }
    kill_operator(client).await?;
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "after-", "labels": {"app": "a1"}},
        "spec": {"containers": [{"name": "agent", "image": image("e2e-tools"),
                 "imagePullPolicy": "IfNotPresent", "command": ["/usr/local/bin/e2e-tools"], "args": ["sleep"]}]},
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let configurations: Api<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    > = Api::all(client.clone());
    eventually(
        Duration::from_mins(2),
        "a new CA is made and published",
        || async {
            let Some(ca) = secrets.get_opt(&ca_secret).await? else {
                return Ok(None);
            };
            let Some(new) = ca.data.and_then(|d| d.get("ca.crt").cloned()) else {
                return Ok(None);
            };
            if new == old_ca {
                bail!("still the old CA");
            }
            let list = configurations.list(&ListParams::default()).await?;
            // The bundle holds the new CA (and the old one only while both are trusted).
            let pem = String::from_utf8_lossy(&new.0).into_owned();
            let published = list
                .items
                .iter()
                .filter(|c| c.name_any().starts_with(RELEASE))
                .flat_map(|c| c.webhooks.iter().flatten())
                .all(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| String::from_utf8_lossy(&b.0).contains(pem.trim()))
                });
            Ok(published.then_some(()))
        },
    )
    .await?;
    eventually(
        Duration::from_mins(4),
        "new certificates in place: pods admitted and jailed again",
        || async {
            match pods.create(&dry_run, &pod).await {
                Ok(p) if p.annotations().contains_key(annotations::STATUS) => Ok(Some(())),
                Ok(_) => bail!("admitted unjailed"),
                Err(e) => bail!("{e}"),
            }
        },
    )
    .await?;
    Ok(started.elapsed())
}

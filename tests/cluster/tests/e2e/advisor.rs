//! End to end, the advisor loop of issue 15 in the cluster: a policy in Audit mode with no allow
//! rule, an agent doing its work, the denials it would have had in the policy's
//! `status.deniedDestinations`, `boundary suggest --from-status` (the real binary, from the
//! sidecar's image) writing the policy, `kubectl apply` of it, and the agent working under it in
//! Enforce mode while a host it never used is refused.

use super::*;

#[tokio::test]
async fn audit_then_suggest_from_the_status_then_enforce_lets_the_agent_work() -> anyhow::Result<()>
{
    let _lock = exclusive()?;
    let world = world("e2e-advisor").await?;
    let result = async {
        let ns = &world.ns;
        policy_with(ns, json!({"mode": "Audit"})).await?;
        let work = [
            format!("https://{ALLOWED}/v1/items/1"),
            format!("https://{ALLOWED}/v1/items/2"),
        ];
        let fetching = |name: &str, urls: &[String]| fetching(&world, name, urls);
        ns.create_pod(&fetching("audited", &work)?).await?;
        let pods: Api<Pod> = ns.api();
        // Audit mode: let through, recorded as would-deny.
        logs_show(
            &pods,
            "audited",
            "agent",
            &[&format!("fetch {} -> 200", work[1])],
        )
        .await?;

        let policies: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
        denied_destinations_when(ns, "the would-be denials", |denied| {
            denied
                .iter()
                .any(|d| d.host == ALLOWED && d.decision == "would-deny")
        })
        .await?;

        let object = kubectl_output(&["get", "bp", "agents", "-n", ns.name(), "-o", "json"])?;
        let yaml = suggest_from_status(&object)?;
        eprintln!("suggested:\n{yaml}");
        assert!(yaml.contains("mode: Enforce"), "{yaml}");
        assert!(yaml.contains(ALLOWED), "{yaml}");
        let file = std::env::temp_dir().join(format!("suggested-{}.yaml", ns.name()));
        std::fs::write(&file, &yaml)?;
        let file_arg = file.to_string_lossy().into_owned();
        kubectl_output(&["apply", "-n", ns.name(), "-f", &file_arg])?;
        let _ = std::fs::remove_file(&file);
        eventually(
            Duration::from_mins(1),
            "the suggested policy is Ready",
            || async {
                let p = policies.get("agents").await?;
                let ready = p.spec.mode == boundary_api::Mode::Enforce
                    && p.status.as_ref().is_some_and(|s| {
                        s.observed_generation == p.metadata.generation
                            && s.conditions
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                Ok(ready.then_some(()))
            },
        )
        .await?;

        // Enforced: the same work goes through, a host it never used is refused.
        let mut enforced = work.to_vec();
        enforced.push(format!("https://{DENIED}/never-used"));
        ns.create_pod(&fetching("enforced", &enforced)?).await?;
        logs_show(
            &pods,
            "enforced",
            "agent",
            &[
                &format!("fetch {} -> 200", work[0]),
                &format!("fetch {} -> 200", work[1]),
                // No rule could allow the host: refused at its TLS handshake.
                &format!(
                    "fetch https://{DENIED}/never-used -> error: TLS handshake: received fatal \
                     alert: AccessDenied"
                ),
            ],
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// The agent pod `name` with `fetch` of `urls` every 2 s.
fn fetching(world: &World, name: &str, urls: &[String]) -> anyhow::Result<Pod> {
    let mut pod = agent_pod(world, name, &json!({}))?;
    let agent = pod
        .spec
        .as_mut()
        .and_then(|s| s.containers.iter_mut().find(|c| c.name == "agent"))
        .context("no agent container")?;
    let mut args = vec!["fetch".to_owned(), "--every".to_owned(), "2".to_owned()];
    args.extend(urls.iter().cloned());
    agent.args = Some(args);
    Ok(pod)
}

/// `boundary suggest --from-status -` of a policy `object` (JSON): the real binary, from the
/// image the sidecars run.
fn suggest_from_status(object: &str) -> anyhow::Result<String> {
    let out = NodeRuntime::local()?.run_from_image(
        &image("jail-runtime"),
        "/usr/local/bin/boundary",
        &["suggest", "--from-status", "-"],
        object.as_bytes(),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "boundary suggest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

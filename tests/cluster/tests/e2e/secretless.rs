//! End to end, credentials the agent never holds (issue 13): a policy binds a Secret to the
//! `allowed` HTTPS service; the agent sends the placeholder it finds in its environment and the
//! service receives the real value; the same placeholder sent to another allowed host is refused
//! as a leak attempt; the agent's container holds no trace of the Secret; a changed Secret is
//! used without restarting the pod.

use boundary_api::credentials::PLACEHOLDER_PREFIX;

use super::*;

const FIRST: &str = "sk-e2e-first-7f3a9c";
const SECOND: &str = "sk-e2e-second-41d8b2";

/// What the `allowed` server shows for a header value (`e2e-tools serve --show-header`): the
/// agent never sees the value in the answer either.
fn fingerprint(value: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(value.as_bytes());
    let hex = digest.iter().take(6).fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    });
    format!("sha256:{hex}")
}

async fn api_key_secret(ns: &TestNamespace, value: &str) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-api-key"},
        "stringData": {"api-key": value},
    }))?;
    ns.api::<Secret>()
        .patch(
            "agent-api-key",
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// `kubectl exec POD -c CONTAINER -- e2e-tools trace TEXT`: where TEXT occurs in the container.
fn trace(namespace: &str, pod: &str, container: &str, text: &str) -> anyhow::Result<String> {
    boundary_test_support::kubectl_output(&[
        "exec",
        "-n",
        namespace,
        pod,
        "-c",
        container,
        "--",
        "/usr/local/bin/e2e-tools",
        "trace",
        text,
    ])
}

/// The leak attempt is audited as one, the injection too, and no audit line holds the value or
/// the whole placeholder.
async fn leak_audited(pods: &Api<Pod>, placeholder: &str) -> anyhow::Result<()> {
    let audit = logs_show(pods, "agent", contract::containers::SIDECAR, &["leak"]).await?;
    let leak = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|d| d["host"] == DENIED && d["decision"] == "deny" && d.get("leak").is_some())
        .with_context(|| format!("no leak line for {DENIED}:\n{}", tail(&audit, 20)))?;
    assert_eq!(leak["leak"]["credential"], "api", "{leak}");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"credential\":\"api\"") && l.contains(ALLOWED)),
        "no audit line says the credential went to {ALLOWED}:\n{}",
        tail(&audit, 20)
    );
    assert!(
        !audit.contains(FIRST),
        "the value is in the audit:\n{audit}"
    );
    assert!(
        !audit.contains(placeholder),
        "the placeholder is in the audit unredacted"
    );
    Ok(())
}

/// A pod that would also hand its agent the bound Secret is refused, saying why and what to
/// remove.
async fn a_pod_handing_the_agent_the_secret_is_refused(world: &World) -> anyhow::Result<()> {
    let mut leaky = agent_pod(world, "leaky", &json!({}))?;
    leaky.spec.as_mut().context("spec")?.containers[0].env = Some(vec![serde_json::from_value(
        json!({"name": "AGENT_API_KEY", "valueFrom": {"secretKeyRef": {"name": "agent-api-key", "key": "api-key"}}}),
    )?]);
    match world.ns.create_pod(&leaky).await {
        Ok(_) => bail!("a pod whose agent receives the bound Secret was admitted"),
        Err(e) => {
            let message = format!("{e:#}");
            assert!(
                message.contains("agent-api-key") && message.contains("remove env AGENT_API_KEY"),
                "{message}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_secret_bound_by_the_policy_reaches_the_service_and_never_the_agent() -> anyhow::Result<()>
{
    let _lock = exclusive()?;
    let world = world("e2e-secretless").await?;
    let result = async {
        let ns = world.ns.name();
        api_key_secret(&world.ns, FIRST).await?;
        policy_with(
            &world.ns,
            json!({
                "allow": [format!("domain={ALLOWED}"), format!("domain={DENIED}")],
                "credentials": [{
                    "name": "api",
                    "secretKeyRef": {"name": "agent-api-key", "key": "api-key"},
                    "destinations": [{"domains": [ALLOWED]}],
                    "inject": {"header": {"name": "x-api-key"}},
                    "env": "AGENT_API_KEY",
                }],
            }),
        )
        .await?;
        let pods: Api<Pod> = world.ns.api();
        let tools = "/usr/local/bin/e2e-tools";
        let agent = agent_pod(
            &world,
            "agent",
            &json!({"containers": [
                {
                    "name": "agent",
                    "image": image("e2e-tools"),
                    "imagePullPolicy": "IfNotPresent",
                    "command": [tools],
                    "args": ["fetch", "--every", "2", "--header-from-env", "x-api-key=AGENT_API_KEY",
                             format!("https://{ALLOWED}/ok"), format!("https://{DENIED}/leak")],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                },
            ]}),
        )?;
        let created = world.ns.create_pod(&agent).await?;
        let env = &container(&created, "agent")?.env;
        let placeholder = env
            .iter()
            .flatten()
            .find(|e| e.name == "AGENT_API_KEY")
            .and_then(|e| e.value.clone())
            .context("the webhook set no AGENT_API_KEY on the agent")?;
        assert!(placeholder.starts_with(PLACEHOLDER_PREFIX), "{placeholder}");
        let shown = logs_show(
            &pods,
            "agent",
            "agent",
            &[
                &format!("fetch https://{ALLOWED}/ok -> 200 hello from allowed: GET /ok x-api-key={}", fingerprint(FIRST)),
                &format!("fetch https://{DENIED}/leak -> 403"),
            ],
        )
        .await?;
        assert!(
            !shown.contains(&format!("x-api-key={}", fingerprint(&placeholder))),
            "the service saw the placeholder:\n{}",
            tail(&shown, 6)
        );
        leak_audited(&pods, &placeholder).await?;
        // Inside the agent's container (processes, environment, every file it can read,
        // the volumes it shares with the sidecar) the Secret's value is nowhere.
        let found = trace(ns, "agent", "agent", FIRST)?;
        assert_eq!(found.trim(), "trace: none", "{found}");
        // The check can fail: the placeholder is found, in the agent's environment.
        let placeholder_found = trace(ns, "agent", "agent", &placeholder)?;
        assert!(
            placeholder_found.contains("/environ"),
            "trace did not find the placeholder in the agent's environment: {placeholder_found}"
        );

        // A changed Secret reaches the running pod: the next requests carry the new value.
        let started = std::time::Instant::now();
        api_key_secret(&world.ns, SECOND).await?;
        logs_show(
            &pods,
            "agent",
            "agent",
            &[&format!(
                "fetch https://{ALLOWED}/ok -> 200 hello from allowed: GET /ok x-api-key={}", fingerprint(SECOND)
            )],
        )
        .await?;
        eprintln!(
            "figure: the rotated Secret was used {:.1} s after the change",
            started.elapsed().as_secs_f64()
        );
        the_same_pod_without_restarts(&pods, &created).await?;
        let found = trace(ns, "agent", "agent", SECOND)?;
        assert_eq!(found.trim(), "trace: none", "{found}");

        a_pod_handing_the_agent_the_secret_is_refused(&world).await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

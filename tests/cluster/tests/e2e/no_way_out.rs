//! End to end, the ways around a jail (issue 18): the pod opt-out label under an Enforce policy,
//! namespaces where jailing is required (also for a pod whose own service account may create
//! pods, and when the webhook is down under `failurePolicy: Ignore`), ephemeral containers and
//! relabelling of jailed pods, and a `ClusterBoundaryPolicy` deny beating a namespaced allow.

use boundary_api::crd::ClusterBoundaryPolicy;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use super::*;

/// A pod of the `e2e-tools` image, `app=<app>`, `extra` merged into the pod.
fn tool_pod(name: &str, app: &str, extra: &Value) -> anyhow::Result<Pod> {
    let mut pod = json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "agent", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/e2e-tools"], "args": ["sleep"],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    });
    merge_deep(&mut pod, extra);
    Ok(serde_json::from_value(pod)?)
}

fn merge_deep(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge_deep(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn is_jailed(pod: &Pod) -> bool {
    pod.annotations().contains_key(annotations::STATUS) && pod.labels().contains_key(labels::JAILED)
}

/// The apiserver's answer to a refused create, with the webhook's message.
async fn refused(ns: &TestNamespace, pod: &Pod) -> anyhow::Result<String> {
    match ns.create_pod(pod).await {
        Ok(created) => bail!(
            "pod {} was admitted (jailed: {}), expected a refusal",
            created.name_any(),
            is_jailed(&created)
        ),
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// 1. Under an Enforce policy the pod opt-out label is refused; a service account a cluster
///    admin listed in `webhook.optOutServiceAccounts` may opt out.
#[tokio::test]
async fn the_opt_out_label_is_refused_under_enforce_unless_the_service_account_is_exempt()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-optout").await?;
    let ns = &world.ns;
    let result = async {
        let opted_out =
            json!({"metadata": {"labels": {labels::INJECT: contract::INJECT_DISABLED}}});
        let message = refused(ns, &tool_pod("escape", "agent", &opted_out)?).await?;
        assert!(
            message.contains("webhook.optOutServiceAccounts")
                && message.contains(&format!("{}/default", ns.name()))
                && message.contains("BoundaryPolicy agents"),
            "the refusal says why and who can change it: {message}"
        );
        // A pod no Enforce policy selects may still opt out (the test servers do).
        let other = ns
            .create_pod(&tool_pod("unselected", "tool", &opted_out)?)
            .await?;
        assert!(!is_jailed(&other));

        let exempt = format!("webhook.optOutServiceAccounts={{{}/builder}}", ns.name());
        install(&world.client, &[&exempt]).await?;
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "builder"}}))?;
        ns.api::<ServiceAccount>()
            .create(&PostParams::default(), &account)
            .await?;
        let mut as_builder = opted_out.clone();
        as_builder["spec"] = json!({"serviceAccountName": "builder"});
        let pod = tool_pod("exempt", "agent", &as_builder)?;
        let created = eventually(
            Duration::from_mins(1),
            "the restarted webhook admits the exempt service account's opt-out",
            || async {
                match ns.api::<Pod>().create(&PostParams::default(), &pod).await {
                    Ok(p) => Ok(Some(p)),
                    Err(e) => bail!("{e}"),
                }
            },
        )
        .await?;
        assert!(!is_jailed(&created), "opted out: not injected");
        anyhow::Ok(())
    }
    .await;
    install(&world.client, &[]).await?;
    dump_on_error(ns, result).await
}

/// A client acting as `system:serviceaccount:<namespace>:<name>`.
async fn impersonating(namespace: &str, name: &str) -> anyhow::Result<Client> {
    let mut config = boundary_test_support::config().await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    Ok(Client::try_from(config)?)
}

/// 2. In a namespace labelled `required` every pod is jailed or refused: the opt-out label is
///    ignored, a privileged container or an init container or a pod no policy selects is refused
///    with who can change it, a pod whose own service account may create pods cannot create an
///    unjailed one, and with the webhook down pods there are refused although the chart says
///    `failurePolicy: Ignore`.
#[tokio::test]
async fn a_required_namespace_jails_or_refuses_every_pod_whoever_creates_it() -> anyhow::Result<()>
{
    let _lock = exclusive()?;
    let client = client().await?;
    install(&client, &["webhook.failurePolicy=Ignore"]).await?;
    let ns = TestNamespace::create(
        &client,
        "e2e-required",
        &[(labels::INJECT, contract::INJECT_REQUIRED)],
    )
    .await?;
    let result = async {
        policy_with(&ns, json!({})).await?;
        let opted_out =
            json!({"metadata": {"labels": {labels::INJECT: contract::INJECT_DISABLED}}});
        let jailed = ns
            .create_pod(&tool_pod("opted-out", "agent", &opted_out)?)
            .await?;
        assert!(
            is_jailed(&jailed),
            "the opt-out is ignored where jailing is required"
        );

        let privileged = json!({"spec": {"containers": [{
            "name": "dind", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
            "args": ["sleep"], "securityContext": {"privileged": true}}]}});
        let mut two = tool_pod("with-dind", "agent", &json!({}))?;
        let dind: Pod = serde_json::from_value(json!({"spec": privileged["spec"].clone()}))?;
        two.spec
            .as_mut()
            .context("spec")?
            .containers
            .extend(dind.spec.context("spec")?.containers);
        let message = refused(&ns, &two).await?;
        assert!(
            message.contains("requires jailing") && message.contains("dind"),
            "{message}"
        );
        let init = json!({"spec": {"initContainers": [{
            "name": "fetch", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent", "args": ["sleep"]}]}});
        let message = refused(&ns, &tool_pod("with-init", "agent", &init)?).await?;
        assert!(message.contains("init container fetch"), "{message}");
        let message = refused(&ns, &tool_pod("unselected", "tool", &json!({}))?).await?;
        assert!(
            message.contains("no BoundaryPolicy or ClusterBoundaryPolicy selects this pod"),
            "{message}"
        );

        an_agent_that_creates_pods_cannot_escape(&ns, &two, &init).await?;
        refused_while_the_webhook_is_down(&client, &ns).await
    };
    let result = Box::pin(result).await;
    install(&client, &[]).await?;
    dump_on_error(&ns, result).await
}

/// An agent whose service account may create pods tries pods that would run unjailed.
async fn an_agent_that_creates_pods_cannot_escape(
    ns: &TestNamespace,
    with_dind: &Pod,
    init: &Value,
) -> anyhow::Result<()> {
    let opted_out = json!({"metadata": {"labels": {labels::INJECT: contract::INJECT_DISABLED}}});
    {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "agent"}}))?;
        ns.api::<ServiceAccount>()
            .create(&PostParams::default(), &account)
            .await?;
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "pod-creator"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get"]}],
        }))?;
        ns.api::<Role>()
            .create(&PostParams::default(), &role)
            .await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "agent-creates-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-creator"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns.name()}],
        }))?;
        ns.api::<RoleBinding>()
            .create(&PostParams::default(), &binding)
            .await?;
        let as_agent: Api<Pod> =
            Api::namespaced(impersonating(ns.name(), "agent").await?, ns.name());
        let mut escapes = vec![
            tool_pod("escape-optout", "tool", &opted_out)?,
            tool_pod(
                "escape-hostnet",
                "agent",
                &json!({"spec": {"hostNetwork": true}}),
            )?,
            tool_pod("escape-init", "agent", init)?,
        ];
        escapes.push(with_dind.clone());
        escapes[3].metadata.name = Some("escape-dind".into());
        let mut outcomes = Vec::new();
        for pod in &escapes {
            let name = pod.name_any();
            match as_agent.create(&PostParams::default(), pod).await {
                Ok(created) => bail!(
                    "{name} created by the agent (jailed: {})",
                    is_jailed(&created)
                ),
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 403, "{name}: {status:?}");
                    assert!(
                        status.message.contains("requires jailing"),
                        "{name}: {}",
                        status.message
                    );
                    outcomes.push(format!("{name}: refused"));
                }
                Err(e) => bail!("{name}: {e}"),
            }
        }
        let allowed = as_agent
            .create(
                &PostParams::default(),
                &tool_pod("by-agent", "agent", &json!({}))?,
            )
            .await?;
        assert!(is_jailed(&allowed), "what the agent may create is jailed");
        eprintln!("as the agent's service account: {outcomes:?}, a jailable pod: jailed");
    }
    Ok(())
}

/// The webhook down: a required namespace fails closed despite `failurePolicy: Ignore`.
async fn refused_while_the_webhook_is_down(
    client: &Client,
    ns: &TestNamespace,
) -> anyhow::Result<()> {
    {
        webhook_scaled_to_zero(client).await?;
        let message = refused(ns, &tool_pod("while-down", "agent", &json!({}))?).await?;
        assert!(
            message.contains("required.webhook.agentboundary.dev"),
            "the apiserver names the required webhook: {message}"
        );
        let enabled = TestNamespace::create(
            client,
            "e2e-required-other",
            &[(labels::INJECT, contract::INJECT_ENABLED)],
        )
        .await?;
        let admitted = enabled
            .create_pod(&tool_pod("ignored", "tool", &json!({}))?)
            .await?;
        assert!(
            !is_jailed(&admitted),
            "failurePolicy Ignore applies elsewhere"
        );
    }
    Ok(())
}

/// The subresource through which ephemeral containers are added, as Kubernetes 1.20 serves it
/// (`EphemeralContainers`, alpha; 1.22+ takes a Pod).
async fn add_ephemeral(client: &Client, namespace: &str, pod: &str) -> Result<(), kube::Error> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/ephemeralcontainers");
    let current: Value = client
        .request(
            http::Request::get(&path)
                .body(Vec::new())
                .map_err(kube::Error::HttpError)?,
        )
        .await?;
    let mut next = current.clone();
    let list = next["ephemeralContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut list = list;
    list.push(json!({"name": "debugger", "image": image("e2e-tools"),
                     "imagePullPolicy": "IfNotPresent", "args": ["sleep"],
                     "terminationMessagePolicy": "File"}));
    next["ephemeralContainers"] = Value::Array(list);
    let body = serde_json::to_vec(&next).map_err(kube::Error::SerdeError)?;
    let request = http::Request::put(&path)
        .header("content-type", "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request::<Value>(request).await.map(|_| ())
}

/// 3. Nothing is added around a running jail: an ephemeral container (`kubectl debug`) is
///    refused in a jailed pod (and accepted in an unjailed one, so the feature is on), and a
///    relabelling that would move the pod onto another policy is refused.
#[tokio::test]
async fn ephemeral_containers_and_relabelling_cannot_get_around_a_running_jail()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-debug").await?;
    let ns = &world.ns;
    let result = async {
        let pods: Api<Pod> = ns.api();
        let agent = ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        assert!(is_jailed(&agent));
        wait_for_pod_phase(&pods, "agent", &["Running"], Duration::from_mins(2)).await?;
        let err = add_ephemeral(&world.client, ns.name(), "agent")
            .await
            .expect_err("an ephemeral container in a jailed pod must be refused");
        let message = err.to_string();
        assert!(
            message.contains("debugger") && message.contains("--copy-to"),
            "{message}"
        );
        // An unjailed pod (the test server, opted out) takes one: the refusal is ours.
        add_ephemeral(&world.client, ns.name(), "allowed").await?;

        let relabel = json!({"metadata": {"labels": {"app": "moved"}}});
        let err = pods
            .patch("agent", &PatchParams::default(), &Patch::Merge(&relabel))
            .await
            .expect_err("moving a jailed pod off its policy must be refused");
        assert!(err.to_string().contains("BoundaryPolicy agents"), "{err}");
        let unrelated = json!({"metadata": {"labels": {"team": "ml"}}});
        pods.patch("agent", &PatchParams::default(), &Patch::Merge(&unrelated))
            .await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(ns, result).await
}

/// 4. A `ClusterBoundaryPolicy` deny rule beats the namespace's allow: the path the namespace's
///    policy allows and the cluster policy denies gets 403 naming the cluster policy, and the
///    sidecar's audit records it as denied by that rule.
#[tokio::test]
async fn a_cluster_policy_deny_beats_a_namespaced_allow_in_the_audit() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-cluster").await?;
    let ns = &world.ns;
    let cluster_policies: Api<ClusterBoundaryPolicy> = Api::all(world.client.clone());
    let name = format!("{}-deny", ns.name());
    let result = async {
        // The namespace allows the whole host; the admins deny one path on it, in namespaces
        // labelled for it (1.20 namespaces have no name label).
        policy(ns, &[format!("domain={ALLOWED}")]).await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(world.client.clone());
        namespaces
            .patch(
                ns.name(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"e2e-cluster-policy": ns.name()}}})),
            )
            .await?;
        let object = json!({
            "apiVersion": contract::API_VERSION, "kind": "ClusterBoundaryPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"e2e-cluster-policy": ns.name()}},
                "podSelector": {"matchLabels": {"app": "agent"}},
                "deny": [format!("domain={ALLOWED} path=/secret")],
            },
        });
        cluster_policies
            .patch(
                &name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&object),
            )
            .await?;
        let configmaps: Api<ConfigMap> = ns.api();
        eventually(
            Duration::from_mins(1),
            "the cluster policy is published into the namespace",
            || async {
                let cm = configmaps.get_opt(objects::POLICY_CONFIGMAP).await?;
                let text = cm
                    .and_then(|c| c.data)
                    .and_then(|d| d.get("policy.json").cloned())
                    .unwrap_or_default();
                Ok(text.contains(&name).then_some(()))
            },
        )
        .await?;
        let pods: Api<Pod> = ns.api();
        ns.create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        logs_show(
            &pods,
            "agent",
            "agent",
            &[
                &format!("fetch https://{ALLOWED}/ok -> 200"),
                &format!("fetch https://{ALLOWED}/secret -> 403"),
            ],
        )
        .await?;
        let text = logs(&pods, "agent", contract::containers::SIDECAR).await?;
        let record = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["path"] == "/secret" && r.to_string().contains("ClusterBoundaryPolicy"))
            .with_context(|| {
                format!(
                    "no audit record of /secret naming the cluster policy:\n{}",
                    tail(&text, 20)
                )
            })?;
        assert_eq!(record["decision"], "deny", "{record}");
        assert!(record.to_string().contains(&name), "{record}");
        eprintln!("audit: {record}");
        anyhow::Ok(())
    }
    .await;
    let _ = cluster_policies
        .delete(&name, &kube::api::DeleteParams::default())
        .await;
    dump_on_error(ns, result).await
}

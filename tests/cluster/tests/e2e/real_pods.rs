//! End to end with pods shaped like the ones real platforms make (`../shared/research/REAL-PODS.md`):
//! a CI runner with a privileged dind sidecar and an init container, run-to-completion Jobs on a
//! cluster without native sidecars, a server with a readiness probe behind a Service, legacy
//! seccomp annotations, and a pod re-created from its mutated spec.

use k8s_openapi::api::batch::v1::Job;

use super::*;

const TOOLS: &str = "/usr/local/bin/e2e-tools";

/// The audit records (decisions, inbound connections) of the sidecar of `pod`.
async fn audit_records(pods: &Api<Pod>, pod: &str) -> anyhow::Result<Vec<Value>> {
    Ok(logs(pods, pod, contract::containers::SIDECAR)
        .await?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("decision").is_some() || v.get("kind").is_some())
        .collect())
}

/// Waits until the sidecar of `pod` has audited a record for which `wanted` holds.
async fn audited(
    pods: &Api<Pod>,
    pod: &str,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(
        Duration::from_mins(2),
        &format!("{pod}'s audit shows {what}"),
        || async {
            let records = audit_records(pods, pod).await?;
            match records.iter().find(|r| wanted(r)) {
                Some(found) => Ok(Some(found.clone())),
                None => bail!(
                    "so far:\n{}",
                    records
                        .iter()
                        .rev()
                        .take(8)
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        },
    )
    .await
}

fn env_names(pod: &Pod, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(container(pod, name)?
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect())
}

fn wrapped(pod: &Pod, name: &str) -> anyhow::Result<bool> {
    Ok(container(pod, name)?
        .command
        .as_ref()
        .and_then(|c| c.first())
        .is_some_and(|first| first == contract::paths::BOUNDARY_BIN))
}

/// Whether this machine lets a container hold every capability: runc applies a privileged
/// container's full set, which fails where the sandbox withholds some from root (CI here lacks
/// `CAP_SYS_RESOURCE`).
fn privileged_containers_can_start() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_owned()))
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|bounding| bounding.count_ones() >= 41)
}

/// dind's securityContext: privileged where the machine allows it; elsewhere a capability the jail
/// would drop, which the webhook treats the same way (left out of the jail, with a warning).
fn dind_security_context() -> Value {
    if privileged_containers_can_start() {
        json!({"privileged": true, "runAsUser": 0})
    } else {
        eprintln!(
            "NOTE: this machine withholds capabilities from root, so a privileged container cannot start; dind adds SYS_PTRACE instead (the same rule leaves it out of the jail)"
        );
        json!({"runAsUser": 0, "capabilities": {"add": ["SYS_PTRACE"]}})
    }
}

/// 7. A GitHub Actions runner in dind mode: an init container, the runner, and a privileged
///    `dind` sidecar serving the Docker API on the pod's loopback. With a policy that names no
///    containers, the runner is jailed and dind is left out (with a warning) and keeps its
///    privileges; the runner reaches dind's port through a pod-local rule, is refused the port
///    no rule names, and the sidecar audits both.
#[tokio::test]
async fn a_ci_runner_with_a_privileged_dind_sidecar_jails_only_the_runner() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-dind").await?;
    let result = async {
        policy_with(
            &world.ns,
            json!({"allow": [format!("domain={ALLOWED} path=/ok")], "podLocal": [{"ports": [2375], "description": "dind"}]}),
        )
        .await?;
        let pods: Api<Pod> = world.ns.api();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "runner", "labels": {"app": "agent"}},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "initContainers": [{
                    "name": "init-dind-externals", "image": image("e2e-tools"),
                    "imagePullPolicy": "IfNotPresent", "command": [TOOLS, "exit", "0"],
                }],
                "containers": [
                    {
                        "name": "runner", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                        "command": [TOOLS, "talk", "127.0.0.1:2375", "--every", "2"],
                        "env": [{"name": "DOCKER_HOST", "value": "tcp://localhost:2375"}],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    },
                    {
                        "name": "step", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                        "command": [TOOLS, "talk", "127.0.0.1:2376", "--every", "2"],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    },
                    {
                        "name": "dind", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                        "command": [TOOLS, "echo", "--addr", "127.0.0.1:2375"],
                        "ports": [{"containerPort": 2375}, {"containerPort": 2376}],
                        "securityContext": dind_security_context(),
                    },
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }))?;
        let created = world.ns.create_pod(&pod).await?;
        assert!(wrapped(&created, "runner")? && wrapped(&created, "step")?);
        assert!(!wrapped(&created, "dind")?, "dind is not jailed");
        assert!(
            !env_names(&created, "dind")?.iter().any(|n| n.starts_with("BOUNDARY_")),
            "dind has none of the jail's env"
        );
        let reviews = decision_context(&world.client, world.ns.name(), "runner").await;
        assert!(
            reviews.contains("container dind is left out of the jail"),
            "the webhook warned that dind is left out:\n{reviews}"
        );
        let runner = logs_show(&pods, "runner", "runner", &["talk 127.0.0.1:2375 -> answer \"ping\""]).await?;
        // The jail accepts the connection before the proxy decides; a denial closes it unanswered.
        let step = logs_show(&pods, "runner", "step", &["talk 127.0.0.1:2376 -> "]).await?;
        assert!(
            !step.contains("answer \"ping\""),
            "the port no rule names never answers:\n{step}"
        );
        let allowed = audited(&pods, "runner", "the pod-local allow", |r| {
            r.to_string().contains("2375") && r["decision"] == "allow"
        })
        .await?;
        let denied = audited(&pods, "runner", "the pod-local deny", |r| {
            r.to_string().contains("2376") && r["decision"] == "deny"
        })
        .await?;
        eprintln!(
            "runner: {}\nstep: {}\naudit: {allowed}\n       {denied}",
            tail(&runner, 1),
            tail(&step, 1)
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

fn job(world: &World, name: &str, command: &[String]) -> anyhow::Result<Job> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "agent", "job": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "hostAliases": world.host_aliases,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "agent", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                        "command": command,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }))?)
}

/// The Job's one pod, once it ran to completion, with its containers' exit codes.
async fn finished_job_pod(
    world: &World,
    name: &str,
) -> anyhow::Result<(Pod, BTreeMap<String, i32>)> {
    let pods: Api<Pod> = world.ns.api();
    eventually(
        Duration::from_mins(2),
        &format!("job {name}'s pod ended"),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("job={name}")))
                .await?;
            let Some(pod) = list.items.into_iter().next() else {
                return Ok(None);
            };
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if !["Succeeded", "Failed"].contains(&phase.as_str()) {
                bail!("pod {} is {phase}", pod.name_any());
            }
            let codes = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .filter_map(|c| {
                    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                    Some((c.name.clone(), code))
                })
                .collect();
            Ok(Some((pod, codes)))
        },
    )
    .await
}

/// 8. Run to completion on a cluster without native sidecars (1.20): a Job whose jailed agent
///    exits 0 completes (the classic sidecar exits by itself once the agent has, after writing
///    the audit), and one whose agent exits 3 fails with the agent's own code.
#[tokio::test]
async fn jobs_complete_with_the_agents_exit_code_without_native_sidecars() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-jobs").await?;
    let result = async {
        let jobs: Api<Job> = world.ns.api();
        let ok = job(
            &world,
            "fix-issue",
            &[
                TOOLS.into(),
                "fetch".into(),
                format!("https://{ALLOWED}/ok"),
            ],
        )?;
        let failing = job(
            &world,
            "failing-step",
            &[TOOLS.into(), "exit".into(), "3".into()],
        )?;
        for j in [&ok, &failing] {
            jobs.create(&PostParams::default(), j).await?;
        }
        let (pod, codes) = finished_job_pod(&world, "fix-issue").await?;
        assert_eq!(codes.get("agent"), Some(&0), "{codes:?}");
        assert_eq!(
            codes.get(contract::containers::SIDECAR),
            Some(&0),
            "{codes:?}"
        );
        let pods: Api<Pod> = world.ns.api();
        let records = audit_records(&pods, &pod.name_any()).await?;
        assert!(
            records
                .iter()
                .any(|r| r["host"] == ALLOWED && r["decision"] == "allow"),
            "the audit written before the sidecar exited has the request: {records:?}"
        );
        eventually(
            Duration::from_mins(1),
            "job fix-issue succeeded",
            || async {
                let status = jobs.get("fix-issue").await?.status.unwrap_or_default();
                Ok((status.succeeded == Some(1)).then_some(()))
            },
        )
        .await?;

        let (_, codes) = finished_job_pod(&world, "failing-step").await?;
        assert_eq!(codes.get("agent"), Some(&3), "{codes:?}");
        eventually(
            Duration::from_mins(1),
            "job failing-step failed",
            || async {
                let status = jobs.get("failing-step").await?.status.unwrap_or_default();
                Ok((status.failed == Some(1)).then_some(()))
            },
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// 9. An OpenHands-style runtime: a server in the jail on 8080 with a readiness probe on its named
///    port becomes Ready and answers a client through its Service, each inbound connection
///    audited; a port it serves but does not declare stays unreachable.
#[tokio::test]
async fn a_server_in_the_jail_is_probed_and_reached_through_its_service() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-server").await?;
    let result = async {
        let pods: Api<Pod> = world.ns.api();
        let runtime: Pod = serde_json::from_value(json!({
            "metadata": {"name": "runtime", "labels": {"app": "agent", "role": "runtime"}},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "runtime", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                        "command": [TOOLS, "serve-http", "--addr", "0.0.0.0:8080", "--name", "runtime"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/alive", "port": "http"}, "periodSeconds": 2},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    },
                    {
                        "name": "undeclared", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                        "command": [TOOLS, "serve-http", "--addr", "0.0.0.0:9090", "--name", "undeclared"],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    },
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }))?;
        world.ns.create_pod(&runtime).await?;
        let ready = eventually(Duration::from_mins(2), "the jailed server is Ready", || async {
            let pod = pods.get("runtime").await?;
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok(ready.then_some(pod))
        })
        .await?;
        let pod_ip = ready
            .status
            .and_then(|s| s.pod_ip)
            .context("the runtime pod has no IP")?;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "runtime"},
            "spec": {"selector": {"role": "runtime"}, "ports": [{"port": 8080, "targetPort": "http"}]},
        }))?;
        let service = world
            .ns
            .api::<Service>()
            .create(&PostParams::default(), &service)
            .await?;
        let service_ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service has no cluster IP")?;
        let client_pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "client", "labels": {labels::INJECT: contract::INJECT_DISABLED}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "client", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                    // Again every second: kube-proxy may program the new Service a moment
                    // after the server is ready.
                    "command": [TOOLS, "fetch", "--timeout", "5", "--every", "1",
                                format!("http://{service_ip}:8080/from-client"),
                                format!("http://{pod_ip}:9090/undeclared")],
                }],
            },
        }))?;
        world.ns.create_pod(&client_pod).await?;
        let answers = logs_show(&pods, "client", "client", &["/from-client -> 200", "/undeclared ->"]).await?;
        assert!(
            answers.contains("-> 200 hello from runtime: GET /from-client"),
            "the Service reaches the jailed server:\n{answers}"
        );
        assert!(
            answers.contains("/undeclared -> error"),
            "an undeclared port stays closed:\n{answers}"
        );
        let inbound = audited(&pods, "runtime", "an inbound connection on 8080", |r| {
            r.to_string().contains("inbound") && r.to_string().contains("8080")
        })
        .await?;
        eprintln!("client:\n{answers}\naudit: {inbound}");
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// 10. Older manifests set seccomp with the alpha annotation, which the apiserver turns into
///     `RuntimeDefault` only after admission: the jailed container still gets the node agent's
///     Localhost profile (the container annotation made to agree) and works.
#[tokio::test]
async fn legacy_seccomp_annotations_get_the_profile_the_jail_needs() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-legacy-seccomp").await?;
    let result = async {
        probed_node(&world.client).await?;
        let pods: Api<Pod> = world.ns.api();
        let mut pod = agent_pod(&world, "agent", &json!({}))?;
        pod.metadata.annotations = Some(BTreeMap::from([
            (
                "seccomp.security.alpha.kubernetes.io/pod".to_owned(),
                "runtime/default".to_owned(),
            ),
            (
                "container.seccomp.security.alpha.kubernetes.io/inspect".to_owned(),
                "docker/default".to_owned(),
            ),
        ]));
        let created = world.ns.create_pod(&pod).await?;
        for name in ["agent", "inspect"] {
            let profile = container(&created, name)?
                .security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.clone())
                .with_context(|| format!("no seccomp profile on {name}"))?;
            assert_eq!(
                (profile.type_.as_str(), profile.localhost_profile.as_deref()),
                ("Localhost", Some(objects::SECCOMP_PROFILE)),
                "{name}; {}",
                decision_context(&world.client, world.ns.name(), "agent").await
            );
        }
        fetches_as_the_policy_says(&pods, "agent").await?;
        jailed_without_capabilities(&pods, "agent").await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// 11. A pod re-created from the mutated spec of a jailed one (as `kubectl get -o yaml | kubectl
///     create -f -` or a controller copying pods does, without the status annotation) is jailed
///     once, not wrapped twice, and works.
#[tokio::test]
async fn a_pod_recreated_from_its_mutated_spec_is_jailed_once() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-recreated").await?;
    let result = async {
        let pods: Api<Pod> = world.ns.api();
        world
            .ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        let original = pods.get("agent").await?;
        let mut copy: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "agent-copy",
                "labels": original.labels(),
                "annotations": original.annotations(),
            },
            "spec": original.spec,
        }))?;
        copy.annotations_mut().remove(annotations::STATUS);
        let created = world.ns.create_pod(&copy).await?;
        let command = container(&created, "agent")?
            .command
            .clone()
            .unwrap_or_default();
        let boundaries = command
            .iter()
            .filter(|w| w.as_str() == contract::paths::BOUNDARY_BIN)
            .count();
        assert_eq!(boundaries, 1, "wrapped once: {command:?}");
        fetches_as_the_policy_says(&pods, "agent-copy").await?;
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// Creates or replaces policy `name` of the namespace (Enforce, pods `app=<name>`).
async fn named_policy(ns: &TestNamespace, name: &str, spec: Value) -> anyhow::Result<()> {
    let mut full = json!({"podSelector": {"matchLabels": {"app": name}}, "mode": "Enforce"});
    merge(&mut full, &spec);
    pin_services(ns, &mut full).await?;
    let object = json!({
        "apiVersion": contract::API_VERSION, "kind": "BoundaryPolicy",
        "metadata": {"name": name}, "spec": full,
    });
    let api: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&object),
    )
    .await?;
    Ok(())
}

/// Waits until policy `name`'s status satisfies `wanted`.
async fn policy_status(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    wanted: impl Fn(&boundary_api::crd::BoundaryPolicyStatus) -> bool,
) -> anyhow::Result<boundary_api::crd::BoundaryPolicyStatus> {
    let api: Api<boundary_api::crd::BoundaryPolicy> = ns.api();
    eventually(
        Duration::from_mins(2),
        &format!("policy {name}: {what}"),
        || async {
            let status = api.get(name).await?.status.unwrap_or_default();
            if wanted(&status) {
                Ok(Some(status))
            } else {
                bail!("status so far: {}", serde_json::to_string(&status)?)
            }
        },
    )
    .await
}

fn condition(
    status: &boundary_api::crd::BoundaryPolicyStatus,
    type_: &str,
) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn pod_condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// 12. Status tells enforcement from injection: a pod whose image does not run `boundary run`
///     (no `wrapCommand`) is jailed by the webhook but never connects a jail, so its policy says
///     `Enforced=False` with `NoJailConnected` and names it, while the wrapped pod's policy counts
///     it as enforcing; with the readiness gate on, only the enforcing pod becomes Ready.
#[tokio::test]
async fn policy_status_counts_only_pods_whose_jail_enforces_and_gates_readiness()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-enforced").await?;
    let result = async {
        install(&world.client, &["webhook.enforcementReadinessGate=true"]).await?;
        named_policy(
            &world.ns,
            "plain",
            json!({"allow": [format!("domain={ALLOWED}")]}),
        )
        .await?;
        let pods: Api<Pod> = world.ns.api();
        world
            .ns
            .create_pod(&agent_pod(&world, "agent", &json!({}))?)
            .await?;
        let plain: Pod = serde_json::from_value(json!({
            "metadata": {"name": "plain", "labels": {"app": "plain"}},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "agent", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                    "command": [TOOLS, "sleep"],
                }],
            },
        }))?;
        let created = world.ns.create_pod(&plain).await?;
        assert!(
            created
                .spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| g
                    .iter()
                    .any(|g| g.condition_type == contract::conditions::ENFORCED)),
            "the webhook added the readiness gate"
        );
        let agents = policy_status(&world.ns, "agents", "the agent pod enforces", |s| {
            s.enforced_pods == Some(1)
                && condition(s, "Enforced").is_some_and(|(status, _)| status == "True")
        })
        .await?;
        let plains = policy_status(&world.ns, "plain", "the plain pod does not", |s| {
            condition(s, "Enforced").is_some_and(|(status, _)| status == "False")
                && s.not_enforcing
                    .iter()
                    .any(|p| p.pod == "plain" && p.reason == "NoJailConnected")
        })
        .await?;
        let ready = eventually(
            Duration::from_mins(2),
            "the enforcing pod is Ready",
            || async {
                let pod = pods.get("agent").await?;
                Ok((pod_condition(&pod, "Ready").as_deref() == Some("True")).then_some(pod))
            },
        )
        .await?;
        assert_eq!(
            pod_condition(&ready, contract::conditions::ENFORCED).as_deref(),
            Some("True")
        );
        let unready = eventually(
            Duration::from_mins(1),
            "the plain pod's gate is False",
            || async {
                let pod = pods.get("plain").await?;
                Ok(
                    (pod_condition(&pod, contract::conditions::ENFORCED).as_deref()
                        == Some("False"))
                    .then_some(pod),
                )
            },
        )
        .await?;
        assert_ne!(pod_condition(&unready, "Ready").as_deref(), Some("True"));
        eprintln!(
            "agents: enforcedPods {:?} {:?}\nplain: {:?}",
            agents.enforced_pods,
            condition(&agents, "Enforced"),
            plains.not_enforcing
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

/// A `docker-registry` (Debian's package) on the node's IP, with the e2e-tools image pushed into
/// it by the node's runtime; stopped on drop.
pub(super) struct LocalRegistry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub(super) address: String,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry listens on the node's IP (the pods' bridge of the local cluster), which pods and
/// the webhook reach, over plain HTTP (see `NodeRuntime::push_to_plain_http_registry`).
pub(super) fn local_registry(node_ip: &str) -> anyhow::Result<LocalRegistry> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind((node_ip, 0))?
        .local_addr()?
        .port();
    let address = format!("{node_ip}:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.path().join("data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting docker-registry (Debian package docker-registry)")?;
    let registry = LocalRegistry {
        child,
        _dir: dir,
        address,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&registry.address).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "docker-registry did not listen on {}",
            registry.address
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    NodeRuntime::local()?.push_to_plain_http_registry(
        &image("e2e-tools"),
        &registry.address,
        "e2e-tools:dev",
    )?;
    Ok(registry)
}

/// 13. Images run by their entrypoint: a container without `command` (only `args`) under
///     `wrapCommand` gets its image's ENTRYPOINT from the registry and runs jailed; an image the
///     registry does not have is refused with the image, the cause and the fix.
#[tokio::test]
async fn a_container_without_command_gets_its_images_entrypoint_from_the_registry()
-> anyhow::Result<()> {
    let _lock = exclusive()?;
    if boundary_test_support::local_cluster_state().is_none() {
        eprintln!(
            "NOT RUN: this test starts a registry on the node of the local cluster; with KUBECONFIG set, the registry tests of the webhook (webhook/tests/registry.rs) cover the lookups"
        );
        return Ok(());
    }
    let world = world("e2e-entrypoint").await?;
    let node = probed_node(&world.client).await?;
    let registry = local_registry(&internal_ip(&node)?)?;
    let result = async {
        install(
            &world.client,
            &[&format!(
                "webhook.imageLookup.insecureRegistries={{{}}}",
                registry.address
            )],
        )
        .await?;
        let pods: Api<Pod> = world.ns.api();
        let mut pod = agent_pod(&world, "agent", &json!({}))?;
        let spec = pod.spec.as_mut().context("no spec")?;
        for c in &mut spec.containers {
            c.image = Some(format!("{}/e2e-tools:dev", registry.address));
            c.command = None;
        }
        let created = world.ns.create_pod(&pod).await?;
        let command = container(&created, "agent")?
            .command
            .clone()
            .unwrap_or_default();
        assert_eq!(
            command,
            [contract::paths::BOUNDARY_BIN, "run", "--", TOOLS],
            "the image's entrypoint, wrapped"
        );
        fetches_as_the_policy_says(&pods, "agent").await?;
        jailed_without_capabilities(&pods, "agent").await?;

        let mut missing = agent_pod(&world, "missing", &json!({}))?;
        let spec = missing.spec.as_mut().context("no spec")?;
        for c in &mut spec.containers {
            c.image = Some(format!("{}/no-such-image:1", registry.address));
            c.command = None;
        }
        let refused = world.ns.create_pod(&missing).await;
        let message = format!("{:#}", refused.err().context("the pod was admitted")?);
        assert!(
            message.contains("no-such-image") && message.contains("set command:"),
            "the denial names the image and the fix: {message}"
        );
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}

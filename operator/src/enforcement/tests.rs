//! Tests of the enforcement decision (tables, no apiserver) and of asking real HTTP servers on
//! loopback.

use super::*;
use boundary_api::enforcement::JailReport;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PUBLISHED: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const OLD: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn facts(phase: &str, jailed: &[&str], runs: &[(&str, ContainerRun)]) -> PodFacts {
    PodFacts {
        name: "agent-0".into(),
        phase: phase.into(),
        sidecar: true,
        jailed: Some(jailed.iter().map(|s| (*s).to_owned()).collect()),
        containers: runs
            .iter()
            .map(|(n, r)| ((*n).to_owned(), r.clone()))
            .collect(),
    }
}

fn running(names: &[&str]) -> PodFacts {
    let runs: Vec<_> = names.iter().map(|n| (*n, ContainerRun::Running)).collect();
    facts("Running", names, &runs)
}

fn jail(container: &str, state: JailState) -> JailReport {
    JailReport {
        container: container.into(),
        tier: "userns".into(),
        state,
        since: "2026-01-01T00:00:00Z".into(),
        ..JailReport::default()
    }
}

#[allow(clippy::unnecessary_wraps)] // the tables hold `Option<Observation>`
fn seen(hash: &str, jails: Vec<JailReport>) -> Option<Observation> {
    Some(Observation::Status(SidecarStatus {
        policy_hash: hash.into(),
        policy_loaded: true,
        jails,
        ..SidecarStatus::default()
    }))
}

/// What a verdict is, for the table: the reason (or the kind), the container, a message part.
fn kind(v: &Verdict) -> (&str, Option<&str>, &str) {
    match v {
        Verdict::Enforced => (reasons::ENFORCED, None, ""),
        Verdict::NotEnforcing {
            container,
            reason,
            message,
        } => (reason, container.as_deref(), message.as_str()),
        Verdict::Exited => ("Exited", None, ""),
        Verdict::Pending => ("Pending", None, ""),
        Verdict::NotChecked => ("NotChecked", None, ""),
        Verdict::Unverifiable => ("Unverifiable", None, ""),
    }
}

/// What, the pod, the observation, the reason (or kind), the container, part of the message.
type PodRow<'a> = (
    &'a str,
    PodFacts,
    Option<Observation>,
    &'a str,
    Option<&'a str>,
    &'a str,
);

#[test]
#[allow(clippy::too_many_lines)] // one table
fn each_situation_of_a_pod_gets_its_verdict() {
    let failed = JailReport {
        error: Some("user namespaces are disabled (user.max_user_namespaces=0)".into()),
        ..jail("agent", JailState::Failed)
    };
    let exited = JailReport {
        exit_code: Some(3),
        ..jail("agent", JailState::Exited)
    };
    let mut coder = running(&["agent"]);
    coder.sidecar = false;
    let mut no_record = running(&["agent"]);
    no_record.jailed = None;
    let not_loaded = Some(Observation::Status(SidecarStatus {
        policy_hash: String::new(),
        policy_loaded: false,
        jails: vec![jail("agent", JailState::Connected)],
        ..SidecarStatus::default()
    }));
    let table: Vec<PodRow<'_>> = vec![
        (
            "connected and current",
            running(&["agent"]),
            seen(PUBLISHED, vec![jail("agent", JailState::Connected)]),
            reasons::ENFORCED,
            None,
            "",
        ),
        (
            "the image does not run boundary run",
            running(&["agent"]),
            seen(PUBLISHED, vec![]),
            reasons::NO_JAIL_CONNECTED,
            Some("agent"),
            "does not run `boundary run`",
        ),
        (
            "one of two containers has no jail",
            running(&["agent", "tool"]),
            seen(PUBLISHED, vec![jail("agent", JailState::Connected)]),
            reasons::NO_JAIL_CONNECTED,
            Some("tool"),
            "container tool has not connected",
        ),
        (
            "a jail for another container does not count",
            running(&["agent"]),
            seen(PUBLISHED, vec![jail("other", JailState::Connected)]),
            reasons::NO_JAIL_CONNECTED,
            Some("agent"),
            "",
        ),
        (
            "the sidecar enforces the previous policy",
            running(&["agent"]),
            seen(OLD, vec![jail("agent", JailState::Connected)]),
            reasons::STALE_POLICY,
            None,
            "enforces policy sha256 aaaaaaaaaaaa, the published one is sha256 bbbbbbbbbbbb",
        ),
        (
            "no policy file loaded",
            running(&["agent"]),
            not_loaded,
            reasons::STALE_POLICY,
            None,
            "no policy file loaded",
        ),
        (
            "a missing jail is worse than a stale policy",
            running(&["agent"]),
            seen(OLD, vec![]),
            reasons::NO_JAIL_CONNECTED,
            Some("agent"),
            "",
        ),
        (
            "the jail could not be set up",
            facts(
                "Running",
                &["agent"],
                &[("agent", ContainerRun::Waiting("CrashLoopBackOff".into()))],
            ),
            seen(PUBLISHED, vec![failed]),
            reasons::JAIL_FAILED,
            Some("agent"),
            "could not be set up: user namespaces are disabled (user.max_user_namespaces=0) (the \
             container is waiting: CrashLoopBackOff)",
        ),
        (
            "the jail's connection was lost",
            running(&["agent"]),
            seen(PUBLISHED, vec![jail("agent", JailState::Lost)]),
            reasons::JAIL_FAILED,
            Some("agent"),
            "lost its connection",
        ),
        (
            "the sidecar cannot be asked",
            running(&["agent"]),
            Some(Observation::Unreachable("connection refused".into())),
            reasons::SIDECAR_UNREACHABLE,
            None,
            "connection refused",
        ),
        (
            "not asked yet",
            running(&["agent"]),
            None,
            "NotChecked",
            None,
            "",
        ),
        (
            "a restarted container has a connected jail again",
            running(&["agent"]),
            seen(
                PUBLISHED,
                vec![exited.clone(), jail("agent", JailState::Connected)],
            ),
            reasons::ENFORCED,
            None,
            "",
        ),
        (
            "a restarted container whose new run has no jail",
            running(&["agent"]),
            seen(PUBLISHED, vec![exited.clone()]),
            reasons::NO_JAIL_CONNECTED,
            Some("agent"),
            "previous one exited with 3",
        ),
        (
            "a container that exited after running jailed, another still connected",
            facts(
                "Running",
                &["agent", "tool"],
                &[
                    ("agent", ContainerRun::Terminated(3)),
                    ("tool", ContainerRun::Running),
                ],
            ),
            seen(
                PUBLISHED,
                vec![exited.clone(), jail("tool", JailState::Connected)],
            ),
            reasons::ENFORCED,
            None,
            "",
        ),
        (
            "every jailed container ran to completion, the pod still runs",
            facts(
                "Running",
                &["agent"],
                &[("agent", ContainerRun::Terminated(0))],
            ),
            seen(PUBLISHED, vec![exited]),
            "Exited",
            None,
            "",
        ),
        (
            "a container that exited without ever being jailed",
            facts(
                "Running",
                &["agent"],
                &[("agent", ContainerRun::Terminated(0))],
            ),
            seen(PUBLISHED, vec![]),
            reasons::NO_JAIL_CONNECTED,
            Some("agent"),
            "(the container exited with 0)",
        ),
        (
            "a jail state this build does not know",
            running(&["agent"]),
            seen(PUBLISHED, vec![jail("agent", JailState::Unknown)]),
            reasons::NO_JAIL_CONNECTED,
            Some("agent"),
            "does not know",
        ),
        (
            "a pod that completed",
            facts("Succeeded", &["agent"], &[]),
            None,
            "Exited",
            None,
            "",
        ),
        (
            "a pod that failed",
            facts("Failed", &["agent"], &[]),
            Some(Observation::Unreachable("gone".into())),
            "Exited",
            None,
            "",
        ),
        (
            "a pod not started",
            facts("Pending", &["agent"], &[]),
            None,
            "Pending",
            None,
            "",
        ),
        (
            "the coder-boundary runtime has no sidecar",
            coder,
            None,
            "Unverifiable",
            None,
            "",
        ),
        (
            "the webhook's record is gone",
            no_record,
            seen(PUBLISHED, vec![jail("agent", JailState::Connected)]),
            reasons::UNKNOWN_CONTAINERS,
            None,
            "agentboundary.dev/status",
        ),
    ];
    let mut failures = Vec::new();
    for (what, pod, observation, reason, container, message) in &table {
        let verdict = decide(pod, observation.as_ref(), PUBLISHED);
        let (got_reason, got_container, got_message) = kind(&verdict);
        if got_reason != *reason || got_container != *container || !got_message.contains(message) {
            failures.push(format!(
                "{what}: want {reason} {container:?} containing {message:?}, got {verdict:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn pod(value: &serde_json::Value) -> Pod {
    serde_json::from_value(value.clone()).unwrap()
}

fn jailed_pod() -> serde_json::Value {
    json!({
        "metadata": {
            "name": "agent-0", "namespace": "agents", "uid": "u1",
            "labels": {"agentboundary.dev/jailed": "userns", "app": "agent"},
            "annotations": {
                "agentboundary.dev/policy": "coding",
                "agentboundary.dev/status": r#"{"version":1,"runtime":"builtin","row":"userns","tier":"userns","mode":"Enforce","policies":["coding"],"sidecar":"native","containers":[{"name":"agent","addedEnv":["BOUNDARY_TIER"]}]}"#,
                "kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}",
            },
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        },
        "spec": {
            "containers": [{"name": "agent", "image": "agent:1", "command": ["claude"]}],
            "readinessGates": [{"conditionType": "agentboundary.dev/enforced"}],
            "nodeName": "n1",
        },
        "status": {
            "phase": "Running", "podIP": "10.1.2.3", "hostIP": "192.168.0.1",
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "agentboundary.dev/enforced", "status": "True", "reason": "Enforced"},
            ],
            "containerStatuses": [{
                "name": "agent", "image": "agent:1", "imageID": "sha256:1", "ready": true,
                "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }],
        },
    })
}

#[test]
fn pod_facts_come_from_the_webhook_record_and_the_kubelet_and_survive_trimming() {
    let full = pod(&jailed_pod());
    let want = PodFacts {
        name: "agent-0".into(),
        phase: "Running".into(),
        sidecar: true,
        jailed: Some(vec!["agent".into()]),
        containers: [("agent".to_owned(), ContainerRun::Running)].into(),
    };
    assert_eq!(PodFacts::of(&full), want);
    assert!(gated(&full));
    assert_eq!(current_condition(&full).unwrap().status, "True");
    assert_eq!(
        target(&full, 15090),
        Some("10.1.2.3:15090".parse().unwrap())
    );

    let mut trimmed = full.clone();
    trim(&mut trimmed);
    assert_eq!(PodFacts::of(&trimmed), want);
    assert!(gated(&trimmed));
    assert_eq!(current_condition(&trimmed), current_condition(&full));
    assert_eq!(target(&trimmed, 15090), target(&full, 15090));
    assert_eq!(PodKey::of(&trimmed), PodKey::of(&full));
    let value = serde_json::to_value(&trimmed).unwrap();
    assert_eq!(
        value["metadata"]["labels"],
        json!({"agentboundary.dev/jailed": "userns"})
    );
    assert!(value["metadata"].get("managedFields").is_none());
    assert!(
        value["metadata"]["annotations"]
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none()
    );
    assert_eq!(value["spec"]["containers"], json!([]));
    assert_eq!(value["status"]["conditions"].as_array().unwrap().len(), 1);
    assert_eq!(value["status"]["containerStatuses"][0]["imageID"], "");
    assert_eq!(value["status"]["containerStatuses"][0]["image"], "");

    // The coder-boundary runtime: no sidecar; a finished container; no IP yet.
    let mut coder = jailed_pod();
    coder["metadata"]["annotations"]["agentboundary.dev/status"] =
        json!(r#"{"sidecar":"none","containers":[{"name":"agent"}]}"#);
    coder["status"]["containerStatuses"][0]["state"] = json!({"terminated": {"exitCode": 7}});
    coder["status"]["podIP"] = serde_json::Value::Null;
    let coder = pod(&coder);
    let facts = PodFacts::of(&coder);
    assert!(!facts.sidecar);
    assert_eq!(facts.containers["agent"], ContainerRun::Terminated(7));
    assert_eq!(target(&coder, 15090), None);

    // A pod being deleted, or not running, is not asked.
    let mut deleting = jailed_pod();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(target(&pod(&deleting), 15090), None);
    let mut pending = jailed_pod();
    pending["status"]["phase"] = json!("Pending");
    assert_eq!(target(&pod(&pending), 15090), None);
}

#[test]
fn the_webhook_record_is_read_as_the_webhook_writes_it() {
    use boundary_webhook::inject::{InjectionStatus, JailedContainer, STATUS_VERSION, SidecarKind};
    let record = InjectionStatus {
        version: STATUS_VERSION,
        runtime: boundary_api::JailRuntime::Builtin,
        row: "userns".into(),
        tier: Some(boundary_api::Tier::Userns),
        mode: boundary_api::Mode::Enforce,
        policies: vec!["coding".into()],
        sidecar: SidecarKind::Classic,
        containers: vec![
            JailedContainer {
                name: "agent".into(),
                added_env: vec!["BOUNDARY_TIER".into()],
                ..JailedContainer::default()
            },
            JailedContainer {
                name: "tool".into(),
                ..JailedContainer::default()
            },
        ],
        pin: None,
        readiness_gate: true,
    };
    let mut value = jailed_pod();
    value["metadata"]["annotations"]["agentboundary.dev/status"] =
        json!(serde_json::to_string(&record).unwrap());
    let facts = PodFacts::of(&pod(&value));
    assert!(facts.sidecar);
    assert_eq!(facts.jailed, Some(vec!["agent".into(), "tool".into()]));
    let none = InjectionStatus {
        sidecar: SidecarKind::None,
        ..record
    };
    value["metadata"]["annotations"]["agentboundary.dev/status"] =
        json!(serde_json::to_string(&none).unwrap());
    assert!(!PodFacts::of(&pod(&value)).sidecar);
}

fn not_enforcing(pod: &str, reason: &'static str) -> Verdict {
    Verdict::NotEnforcing {
        container: Some("agent".into()),
        reason,
        message: format!("{pod} is broken"),
    }
}

/// What, the verdicts by pod, checks on, the condition's status, reason and message part.
type PolicyRow<'a> = (
    &'a str,
    Vec<(&'a str, Verdict)>,
    bool,
    &'a str,
    &'a str,
    &'a str,
);

#[test]
#[allow(clippy::too_many_lines)] // one table
fn a_policy_is_enforced_only_when_every_running_pod_proves_it() {
    let enforced = Verdict::Enforced;
    let table: Vec<PolicyRow<'_>> = vec![
        (
            "all enforce",
            vec![
                ("a", enforced.clone()),
                ("b", enforced.clone()),
                ("c", Verdict::Exited),
            ],
            true,
            "True",
            reasons::ENFORCED,
            "all 2 running pod(s)",
        ),
        (
            "one does not",
            vec![
                ("a", enforced.clone()),
                ("b", not_enforcing("b", reasons::NO_JAIL_CONNECTED)),
            ],
            true,
            "False",
            reasons::NO_JAIL_CONNECTED,
            "1 of 2 running pod(s) not proven to enforce: b (agent): b is broken",
        ),
        (
            "different reasons",
            vec![
                ("b", not_enforcing("b", reasons::NO_JAIL_CONNECTED)),
                ("a", not_enforcing("a", reasons::STALE_POLICY)),
                ("c", Verdict::NotChecked),
            ],
            true,
            "False",
            reasons::NOT_ENFORCING,
            "2 of 3 running pod(s) not proven to enforce: a (agent): a is broken; b (agent)",
        ),
        (
            "many failing: three named, the rest counted",
            (0..25)
                .map(|i| {
                    let name: &'static str = Box::leak(format!("p{i:02}").into_boxed_str());
                    (name, not_enforcing(name, reasons::SIDECAR_UNREACHABLE))
                })
                .collect(),
            true,
            "False",
            reasons::SIDECAR_UNREACHABLE,
            "25 of 25 running pod(s) not proven to enforce: p00 (agent): p00 is broken; p01 \
             (agent): p01 is broken; p02 (agent): p02 is broken; and 22 more",
        ),
        (
            "some not asked yet",
            vec![("a", enforced.clone()), ("b", Verdict::NotChecked)],
            true,
            "Unknown",
            reasons::CHECKING,
            "1 of 2 running pod(s) not checked yet",
        ),
        (
            "no running pod",
            vec![("a", Verdict::Exited), ("b", Verdict::Pending)],
            true,
            "Unknown",
            reasons::NO_RUNNING_PODS,
            "",
        ),
        (
            "only coder-boundary pods",
            vec![("a", Verdict::Unverifiable)],
            true,
            "Unknown",
            reasons::NOT_VERIFIABLE,
            "coder-boundary",
        ),
        (
            "checks off",
            vec![("a", enforced.clone())],
            false,
            "Unknown",
            reasons::CHECKS_DISABLED,
            "BOUNDARY_ENFORCEMENT_INTERVAL_SECONDS=0",
        ),
    ];
    for (what, verdicts, enabled, status, reason, message) in table {
        let summary = summarize(verdicts.iter().map(|(p, v)| (*p, v)));
        let (got_status, got_reason, got_message) = policy_condition(&summary, enabled);
        assert_eq!(
            (got_status, got_reason.as_str()),
            (status, reason),
            "{what}: {got_message}"
        );
        assert!(got_message.contains(message), "{what}: {got_message}");
    }
    let summary = summarize(
        [
            ("b", not_enforcing("b", reasons::JAIL_FAILED)),
            ("a", Verdict::Enforced),
        ]
        .iter()
        .map(|(p, v)| (*p, v)),
    );
    assert_eq!(summary.enforced, 1);
    assert_eq!(
        summary.not_enforcing,
        [NotEnforcingPod {
            pod: "b".into(),
            container: Some("agent".into()),
            reason: reasons::JAIL_FAILED.into(),
            message: "b is broken".into(),
        }]
    );
}

#[test]
fn the_pod_condition_waits_out_a_policy_update_in_flight() {
    let grace = Duration::from_mins(3);
    let stale = Verdict::NotEnforcing {
        container: None,
        reason: reasons::STALE_POLICY,
        message: "old".into(),
    };
    assert_eq!(pod_condition(&stale, Duration::from_secs(10), grace), None);
    assert_eq!(
        pod_condition(&stale, Duration::from_secs(200), grace),
        Some(("False", reasons::STALE_POLICY, "old".into()))
    );
    assert_eq!(
        pod_condition(
            &not_enforcing("p", reasons::NO_JAIL_CONNECTED),
            Duration::ZERO,
            grace
        ),
        Some((
            "False",
            reasons::NO_JAIL_CONNECTED,
            "agent: p is broken".into()
        ))
    );
    let (status, reason, _) = pod_condition(&Verdict::Enforced, Duration::ZERO, grace).unwrap();
    assert_eq!((status, reason), ("True", reasons::ENFORCED));
    for quiet in [
        Verdict::NotChecked,
        Verdict::Exited,
        Verdict::Pending,
        Verdict::Unverifiable,
    ] {
        assert_eq!(pod_condition(&quiet, Duration::ZERO, grace), None);
    }
}

#[test]
fn a_round_reports_the_namespaces_whose_observations_changed_and_forgets_gone_pods() {
    let key = |ns: &str, name: &str| PodKey {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("{ns}/{name}"),
    };
    let ok = Observation::Status(SidecarStatus::default());
    let down = Observation::Unreachable("refused".into());
    let observations = Observations::default();
    let all: BTreeSet<_> = [key("a", "1"), key("b", "1")].into();
    let changed = observations.record(
        vec![(key("a", "1"), ok.clone()), (key("b", "1"), ok.clone())],
        &all,
    );
    assert_eq!(changed, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    let changed = observations.record(
        vec![(key("a", "1"), ok.clone()), (key("b", "1"), down.clone())],
        &all,
    );
    assert_eq!(changed, BTreeSet::from(["b".to_owned()]));
    assert_eq!(observations.get(&key("b", "1")), Some(down));
    let only_a: BTreeSet<_> = [key("a", "1")].into();
    assert!(
        observations
            .record(vec![(key("a", "1"), ok.clone())], &only_a)
            .is_empty()
    );
    assert_eq!(observations.get(&key("b", "1")), None);
}

// ---------------------------------------------------------------------------------------------
// Real servers on loopback

/// What a test server does with a connection.
#[derive(Clone)]
enum Behaviour {
    /// Reads the request and answers with this status line and body.
    Answer(&'static str, String),
    /// Accepts and never answers.
    Silent,
}

/// A server on 127.0.0.1 that treats every connection as `behaviour` says, and records the
/// request lines it read.
async fn server(behaviour: Behaviour) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut silent_streams = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            match behaviour.clone() {
                Behaviour::Silent => silent_streams.push(stream),
                Behaviour::Answer(status, body) => {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head);
                        seen.lock()
                            .unwrap()
                            .push(text.lines().next().unwrap_or_default().to_owned());
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn sidecars_are_asked_over_http_and_every_failure_is_named() {
    let status = json!({
        "policyHash": PUBLISHED, "policyLoaded": true,
        "jails": [{"container": "agent", "tier": "userns", "state": "connected", "since": "2026-01-01T00:00:00Z"}],
    });
    let (good, good_requests) = server(Behaviour::Answer("200 OK", status.to_string())).await;
    let (old, _) = server(Behaviour::Answer("404 Not Found", "not found".into())).await;
    let (garbage, _) = server(Behaviour::Answer("200 OK", "<html>".into())).await;
    let (huge, _) = server(Behaviour::Answer(
        "200 OK",
        "x".repeat(MAX_STATUS_BYTES + 1),
    ))
    .await;
    let (silent, _) = server(Behaviour::Silent).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let targets = vec![
        ("good", good),
        ("old", old),
        ("garbage", garbage),
        ("huge", huge),
        ("silent", silent),
        ("closed", closed),
    ];
    let results: BTreeMap<&str, Observation> = poll(targets, Duration::from_millis(500), 2)
        .await
        .into_iter()
        .collect();
    assert_eq!(results.len(), 6);
    let Observation::Status(answer) = &results["good"] else {
        panic!("good: {:?}", results["good"]);
    };
    assert_eq!(answer.policy_hash, PUBLISHED);
    assert_eq!(answer.jails[0].state, JailState::Connected);
    assert_eq!(
        good_requests.lock().unwrap().as_slice(),
        ["GET /status HTTP/1.1"]
    );
    let error = |name: &str| match &results[name] {
        Observation::Unreachable(e) => e.clone(),
        other @ Observation::Status(_) => panic!("{name}: {other:?}"),
    };
    assert!(
        error("old").contains("answered 404") && error("old").contains("upgrade"),
        "{}",
        error("old")
    );
    assert!(
        error("garbage").contains("not the expected JSON"),
        "{}",
        error("garbage")
    );
    assert!(error("huge").contains("more than"), "{}", error("huge"));
    assert!(
        error("silent").contains("did not answer within 500 ms"),
        "{}",
        error("silent")
    );
    assert!(
        error("closed").contains("connecting to the sidecar"),
        "{}",
        error("closed")
    );

    // The verdicts they lead to.
    let pod = running(&["agent"]);
    assert_eq!(
        decide(&pod, results.get("good"), PUBLISHED),
        Verdict::Enforced
    );
    assert_eq!(
        kind(&decide(&pod, results.get("silent"), PUBLISHED)).0,
        reasons::SIDECAR_UNREACHABLE
    );
}

#[tokio::test]
async fn one_slow_sidecar_does_not_hold_up_the_others() {
    // With one request at a time, a silent sidecar first in line costs its timeout, then the
    // others are still asked.
    let (silent, _) = server(Behaviour::Silent).await;
    let body = json!({"policyHash": OLD, "policyLoaded": true, "jails": []}).to_string();
    let mut targets = vec![(0, silent)];
    for i in 1..=3 {
        let (addr, _) = server(Behaviour::Answer("200 OK", body.clone())).await;
        targets.push((i, addr));
    }
    let results = poll(targets, Duration::from_millis(300), 1).await;
    let answered = results
        .iter()
        .filter(|(_, o)| matches!(o, Observation::Status(s) if s.policy_hash == OLD))
        .count();
    assert_eq!(answered, 3, "{results:?}");
}

#[tokio::test]
async fn the_poller_asks_running_jailed_pods_records_the_answers_and_triggers_their_namespace() {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    // One server on every loopback address; it answers by the address it was reached on, so
    // each pod (127.0.0.N) gets its own answer.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ip = stream.local_addr().unwrap().ip().to_string();
            log.lock().unwrap().push(ip.clone());
            let jails = if ip == "127.0.0.1" {
                json!([{"container": "agent", "tier": "userns", "state": "connected", "since": "x"}])
            } else {
                json!([])
            };
            let body =
                json!({"policyHash": PUBLISHED, "policyLoaded": true, "jails": jails}).to_string();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    let with = |name: &str, ip: &str, phase: &str, sidecar: &str| {
        let mut p = jailed_pod();
        p["metadata"]["name"] = json!(name);
        p["metadata"]["uid"] = json!(name);
        p["status"]["podIP"] = json!(ip);
        p["status"]["phase"] = json!(phase);
        p["metadata"]["annotations"]["agentboundary.dev/status"] = json!(format!(
            r#"{{"sidecar":"{sidecar}","containers":[{{"name":"agent"}}]}}"#
        ));
        let mut pod = pod(&p);
        trim(&mut pod);
        pod
    };
    let pods = [
        with("wrapped", "127.0.0.1", "Running", "native"),
        with("unwrapped", "127.0.0.2", "Running", "classic"),
        with("pending", "127.0.0.3", "Pending", "native"),
        with("coder", "127.0.0.4", "Running", "none"),
    ];
    let (store, mut writer) = reflector::store::<Pod>();
    writer.apply_watcher_event(&Event::Init);
    for p in &pods {
        writer.apply_watcher_event(&Event::InitApply(p.clone()));
    }
    writer.apply_watcher_event(&Event::InitDone);

    let observations = Observations::default();
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let (stop, shutdown) = Shutdown::new();
    let config = EnforcementConfig {
        interval_seconds: 1,
        sidecar_port: port,
        ..EnforcementConfig::default()
    };
    let poller = tokio::spawn(run_checks(
        store,
        observations.clone(),
        tx,
        config,
        Metrics::default(),
        shutdown,
    ));
    let triggered = tokio::time::timeout(Duration::from_mins(1), rx.next())
        .await
        .expect("a round within a minute")
        .unwrap();
    assert_eq!(triggered.name, "agents");
    let verdict = |p: &Pod| {
        decide(
            &PodFacts::of(p),
            observations.get(&PodKey::of(p)).as_ref(),
            PUBLISHED,
        )
    };
    assert_eq!(verdict(&pods[0]), Verdict::Enforced);
    assert_eq!(kind(&verdict(&pods[1])).0, reasons::NO_JAIL_CONNECTED);
    assert_eq!(observations.get(&PodKey::of(&pods[2])), None);
    assert_eq!(observations.get(&PodKey::of(&pods[3])), None);
    let mut seen: Vec<String> = asked.lock().unwrap().clone();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        ["127.0.0.1", "127.0.0.2"],
        "only running pods with a sidecar are asked"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), poller)
        .await
        .expect("the poller stops on shutdown")
        .unwrap();
}

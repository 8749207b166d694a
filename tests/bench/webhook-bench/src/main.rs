//! Load benchmark of the admission webhook's HTTPS server against a floor, in one run on one
//! machine:
//!
//! - the webhook: [`boundary_webhook::server`] with the decider of [`admitter`];
//! - the floor: a minimal axum + rustls server that reads the body and returns a constant
//!   `AdmissionReview` (what any HTTPS webhook costs at least);
//! - floor+: the same server returning a constant copy of the webhook's own answer to the
//!   review, patch included (what any webhook jailing this pod costs at least: the rest of the
//!   webhook's CPU is its own work).
//!
//! All are driven over HTTPS keep-alive (HTTP/1.1) with the same ~5 KiB review of a Pod:
//!
//! - fixed rate (open loop): reviews are sent on a schedule whatever the answers do, and
//!   latency counts from the scheduled send time, so a slow server is not hidden by a client
//!   that waits for it (coordinated omission); achieved rate and p50/p90/p99/p99.9;
//! - max throughput (closed loop): every connection sends its next review as soon as the last
//!   one is answered; reviews per second and the ratio webhook/floor.
//!
//! The servers run on their own runtimes (named threads, so their CPU time per review is
//! measured apart from the client's).
#![forbid(unsafe_code)]
// Figures for humans: counts are far below 2^52, so float casts are exact enough.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::http::header;
use axum::routing::post;
use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy};
use boundary_api::nodes::NodeFacts;
use boundary_test_kit::{Alpn, Leaf, TestCa};
use boundary_webhook::admit::{Planner, StaticView};
use boundary_webhook::classes::NodeClasses;
use boundary_webhook::inject::Settings;
use boundary_webhook::plan::Cluster;
use boundary_webhook::review::Admit;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower_service::Service;

/// Times the decider alone at `nodes` nodes and `policies` policies: parsing the review, then
/// planning and patching, per review. Returns parse+plan+patch per review: reading the Pod
/// is part of parsing the review (it is read as the review is), so the sum is what compares
/// across versions.
fn decide_only(
    body: &[u8],
    nodes: usize,
    policies: usize,
    rounds: u32,
) -> anyhow::Result<Duration> {
    let admit = admitter(nodes, policies);
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(boundary_webhook::review::parse(std::hint::black_box(body))?);
    }
    let parse = start.elapsed() / rounds;
    let request = boundary_webhook::review::parse(body)?;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(admit.admit(std::hint::black_box(&request)));
    }
    let decide = start.elapsed() / rounds;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let response = admit.admit(&request);
        std::hint::black_box(response.to_review_json()?);
    }
    let respond = start.elapsed() / rounds;
    println!(
        "Decider alone (one thread, no HTTP/TLS), {nodes} nodes, {policies} + {policies} cluster policies: parse {:.1} µs, plan+patch {:.1} µs, plan+patch+serialise {:.1} µs per review",
        parse.as_secs_f64() * 1e6,
        decide.as_secs_f64() * 1e6,
        respond.as_secs_f64() * 1e6
    );
    Ok(parse + decide)
}

/// The decider at the server's cluster size and at the large one, and their ratio.
fn decide_rows(args: &Args) -> anyhow::Result<()> {
    let body = review_body();
    let (mut small, mut large) = (Vec::new(), Vec::new());
    // Interleaved, so that load from elsewhere on the machine hits both alike.
    for _ in 0..args.rounds {
        small.push(us(decide_only(
            &body,
            args.nodes,
            args.policies,
            args.decide_reviews.max(1),
        )?));
        large.push(us(decide_only(
            &body,
            args.large_nodes,
            args.large_policies,
            args.decide_reviews.max(1),
        )?));
    }
    let (small, large) = (median(small), median(large));
    println!(
        "  webhook: decider alone, parse + plan + patch: {small:.1} µs per review at {} nodes/{} + {} cluster policies; \
         {large:.1} µs at {} nodes/{} + {} cluster policies: {:.2}x (target: at most 1.2x, i.e. flat)",
        args.nodes,
        args.policies,
        args.policies,
        args.large_nodes,
        args.large_policies,
        args.large_policies,
        large / small
    );
    Ok(())
}

/// The admitter under test: the real planner over a fixed cluster view of `nodes` nodes (by
/// default 200: three quarters Amazon Linux 2023 nodes labelled by the operator, one quarter
/// tainted Bottlerocket nodes, each with its own hostname label), an opted-in namespace with
/// three policies, two of which select the benchmark's pod, and `policies - 3` more policies
/// in 100 other namespaces; and as many `ClusterBoundaryPolicy` objects: the administrators'
/// guardrails, which select the opted-in namespace and the pod, and `policies - 1` more, each
/// selecting namespaces labelled for one of 100 other teams. Every review runs candidate
/// selection, policy selection, row choice, injection and the diff.
fn admitter(nodes: usize, policies: usize) -> Arc<dyn Admit> {
    Arc::new(Planner::new(
        bench_view(nodes, policies),
        Settings::default(),
    ))
}

#[allow(clippy::too_many_lines)] // Literal objects.
fn bench_view(node_count: usize, policy_count: usize) -> StaticView {
    let node = |name: String,
                os_image: &str,
                kernel: &str,
                labels: serde_json::Value,
                taints: serde_json::Value| {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"nodeInfo": {
                "osImage": os_image, "kernelVersion": kernel, "operatingSystem": "linux",
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://1.7.22",
                "kubeProxyVersion": "", "kubeletVersion": "v1.33.4", "machineID": "", "systemUUID": ""
            }}
        }))
        .expect("a valid Node literal");
        NodeFacts::from_node(&node)
    };
    let general = node_count - node_count / 4;
    let mut nodes: Vec<NodeFacts> = (0..general)
        .map(|i| {
            let name = format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250);
            node(
                name.clone(),
                "Amazon Linux 2023.5.20240819",
                "6.1.102-111.182.amzn2023.x86_64",
                serde_json::json!({
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux", "topology.kubernetes.io/zone": format!("us-east-1{}", ["a", "b", "c"][i % 3]),
                    "eks.amazonaws.com/nodegroup": "general", "agentboundary.dev/os": "amazon-linux-2023",
                    "agentboundary.dev/tiers": "userns.privileged-netns", "agentboundary.dev/userns": "true",
                    "tier.agentboundary.dev/userns": "true", "tier.agentboundary.dev/privileged-netns": "true"
                }),
                serde_json::json!([]),
            )
        })
        .collect();
    nodes.extend((0..node_count / 4).map(|i| {
        let name = format!("ip-10-1-{}-{}.ec2.internal", i / 250, i % 250);
        node(
            name.clone(),
            "Bottlerocket OS 1.49.0 (aws-k8s-1.34)",
            "6.12.40",
            serde_json::json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "eks.amazonaws.com/nodegroup": "gpu"}),
            serde_json::json!([{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]),
        )
    }));
    let in_namespace = |name: &str, namespace: &str, spec: serde_json::Value| -> BoundaryPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec
        }))
        .expect("a valid policy literal")
    };
    let policy = |name: &str, spec: serde_json::Value| -> BoundaryPolicy {
        in_namespace(name, "agents", spec)
    };
    // Other teams' policies, in namespaces of their own.
    let others = (3..policy_count.max(3)).map(|i| {
        in_namespace(
            &format!("team-policy-{i}"),
            &format!("team-{}", i % 100),
            serde_json::json!({"podSelector": {"matchLabels": {"app": format!("app-{i}")}}, "allow": ["domain=example.com", "domain=*.github.com method=GET"]}),
        )
    });
    let namespaces = [(
        "agents".to_owned(),
        [("agentboundary.dev/inject".to_owned(), "enabled".to_owned())].into(),
    )]
    .into();
    let policies: Vec<BoundaryPolicy> = vec![
            policy(
                "coding-agents",
                serde_json::json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "coding-agent"}}, "containers": ["agent"], "allow": ["domain=api.anthropic.com", "domain=github.com method=GET,HEAD"]}),
            ),
            policy(
                "platform-team",
                serde_json::json!({"podSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["platform", "infra"]}]}, "mode": "Audit", "allow": ["domain=*.npmjs.org"]}),
            ),
            policy(
                "other",
                serde_json::json!({"podSelector": {"matchLabels": {"app": "other"}}, "allow": ["domain=example.com"]}),
            ),
        ]
        .into_iter()
        .chain(others)
        .collect();
    let cluster_policy = |name: &str, spec: serde_json::Value| -> ClusterBoundaryPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agentboundary.dev/v1alpha1", "kind": "ClusterBoundaryPolicy",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("a valid cluster policy literal")
    };
    let cluster_policies: Vec<ClusterBoundaryPolicy> = std::iter::once(cluster_policy(
        "guardrails",
        serde_json::json!({"namespaceSelector": {"matchLabels": {"agentboundary.dev/inject": "enabled"}}, "podSelector": {}, "deny": ["domain=pastebin.com", "domain=*.github.com method=POST path=/gists*"], "allow": ["domain=api.anthropic.com"]}),
    ))
    .chain((1..policy_count.max(1)).map(|i| {
        cluster_policy(
            &format!("team-guardrails-{i}"),
            serde_json::json!({"namespaceSelector": {"matchLabels": {"team": format!("team-{}", i % 100)}}, "podSelector": {}, "deny": ["domain=pastebin.com"]}),
        )
    }))
    .collect();
    StaticView {
        cluster_policies: cluster_policies.into(),
        nodes: Arc::new(NodeClasses::new(nodes)),
        namespaces,
        policies: policies.into(),
        cluster: Cluster { minor: 33 },
    }
}

/// Load benchmark of the webhook's HTTPS server against a constant-response floor.
#[derive(Debug, Parser)]
struct Args {
    /// Reviews per second of the fixed-rate runs.
    #[arg(long, env = "BENCH_RATE", default_value_t = 1000)]
    rate: u64,
    /// Seconds per fixed-rate run.
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections of the fixed-rate runs.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 8)]
    connections: usize,
    /// Keep-alive connections of the max-throughput runs.
    #[arg(long, env = "BENCH_MAX_CONNECTIONS", default_value_t = 8)]
    max_connections: usize,
    /// Seconds per max-throughput run.
    #[arg(long, env = "BENCH_MAX_SECONDS", default_value_t = 5)]
    max_seconds: u64,
    /// Reviews per timed loop of the decider rows (few under `valgrind --tool=callgrind`,
    /// whose instruction counts are repeatable whatever the load).
    #[arg(long, env = "BENCH_DECIDE_REVIEWS", default_value_t = 2000)]
    decide_reviews: u32,
    /// Rounds of each measurement; figures are medians.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Nodes of the cluster the server and the first decider row plan over.
    #[arg(long, env = "BENCH_NODES", default_value_t = 200)]
    nodes: usize,
    /// Policies (three in the pod's namespace, the rest in 100 others), and as many cluster
    /// policies (one selecting the pod's namespace, the rest 100 others).
    #[arg(long, env = "BENCH_POLICIES", default_value_t = 3)]
    policies: usize,
    /// Nodes of the second decider row (the cost must not grow with them).
    #[arg(long, env = "BENCH_LARGE_NODES", default_value_t = 10_000)]
    large_nodes: usize,
    /// Policies, and as many cluster policies, of the second decider row.
    #[arg(long, env = "BENCH_LARGE_POLICIES", default_value_t = 500)]
    large_policies: usize,
    /// Worker threads of each server's runtime.
    #[arg(long, env = "BENCH_SERVER_THREADS", default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the client's runtime.
    #[arg(long, env = "BENCH_CLIENT_THREADS", default_value_t = 1)]
    client_threads: usize,
    /// Leave the webhook's per-review log line out (by default it is written, as JSON, to
    /// nowhere: formatting it is part of the cost).
    #[arg(long, env = "BENCH_NO_LOGS")]
    no_logs: bool,
    /// Run only these parts (comma list of decide, fixed-rate, max); all by default. `decide`
    /// times the decider alone (parse, plan, patch) in this thread, without HTTP or TLS.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',', default_values_t = [Part::Decide, Part::FixedRate, Part::Max])]
    only: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Debug)]
enum Part {
    Decide,
    FixedRate,
    Max,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(
            self.to_possible_value()
                .expect("no skipped variants")
                .get_name(),
        )
    }
}

const NAME: &str = "localhost";

/// A server under test.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// Prefix of the names of its runtime's threads.
    threads: &'static str,
}

fn server_runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Starts the real webhook server on `runtime`.
fn start_webhook(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    serving: &Leaf,
    admit: Arc<dyn Admit>,
) -> anyhow::Result<SocketAddr> {
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, &serving.cert_pem)?;
    std::fs::write(&key_file, &serving.key_pem)?;
    let config = boundary_webhook::server::Config {
        https_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        plain_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert_file,
        key_file,
        ..boundary_webhook::server::Config::default()
    };
    let server = runtime
        .block_on(boundary_webhook::server::Server::bind(
            config,
            admit,
            Arc::new(AtomicBool::new(true)),
        ))
        .context("starting the webhook server")?;
    let addr = server.https_addr();
    runtime.spawn(server.run(std::future::pending()));
    Ok(addr)
}

/// The constant answer of the floor: a review response admitting without a patch.
const FLOOR_RESPONSE: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"bench-request","allowed":true}}"#;

/// Starts a floor on `runtime`: axum + rustls, body read whole, the constant `answer`.
fn start_floor(
    runtime: &tokio::runtime::Runtime,
    tls: Arc<rustls::ServerConfig>,
    answer: Bytes,
) -> anyhow::Result<SocketAddr> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = Router::new().route(
        "/mutate",
        post(move |_body: Bytes| {
            let answer = answer.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], answer) }
        }),
    );
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request| router.clone().call(request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A realistic review: a Pod with two containers, env, volumes, labels, as the apiserver sends
/// it on CREATE (after the built-in admission plugins filled in defaults).
#[allow(clippy::too_many_lines)] // One literal object.
fn review_body() -> Bytes {
    let env: Vec<serde_json::Value> = [
        ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
        ("AGENT_TASK_QUEUE", "tasks.default.svc.cluster.local:5672"),
        ("AGENT_WORKDIR", "/workspace"),
        ("GIT_AUTHOR_NAME", "agent"),
        ("GIT_AUTHOR_EMAIL", "agent@example.com"),
        ("HOME", "/home/agent"),
        ("NODE_OPTIONS", "--max-old-space-size=4096"),
        ("LOG_LEVEL", "info"),
    ]
    .iter()
    .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
    .chain([
        serde_json::json!({"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "agent-credentials", "key": "api-key"}}}),
        serde_json::json!({"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "agent-credentials", "key": "github-token"}}}),
        serde_json::json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
    ])
    .collect();
    let api_access_mount = serde_json::json!({"name": "kube-api-access-7xk2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "coding-agent-6d8f9c7b5-",
            "namespace": "agents",
            "uid": "8b0f3c2e-5d7a-4e1b-9c6f-2a4d8e1f7b3c",
            "creationTimestamp": null,
            "labels": {
                "app.kubernetes.io/name": "coding-agent",
                "app.kubernetes.io/instance": "coding-agent-team-a",
                "app.kubernetes.io/version": "1.4.2",
                "team": "platform",
                "pod-template-hash": "6d8f9c7b5",
                "agentboundary.dev/inject": "enabled"
            },
            "annotations": {
                "kubectl.kubernetes.io/default-container": "agent",
                "prometheus.io/scrape": "false"
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "coding-agent-6d8f9c7b5",
                "uid": "1e2d3c4b-5a69-4788-9a0b-c1d2e3f40516", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "serviceAccountName": "coding-agent",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "initContainers": [{
                "name": "clone",
                "image": "alpine/git:2.45.2",
                "args": ["clone", "--depth=1", "https://github.com/example/service.git", "/workspace/service"],
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}, api_access_mount],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "containers": [
                {
                    "name": "agent",
                    "image": "ghcr.io/example/coding-agent:1.4.2",
                    "command": ["claude"],
                    "args": ["--print", "--output-format", "stream-json", "--max-turns", "50"],
                    "workingDir": "/workspace/service",
                    "env": env,
                    "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"cpu": "2", "memory": "4Gi"}
                    },
                    "volumeMounts": [
                        {"name": "workspace", "mountPath": "/workspace"},
                        {"name": "agent-config", "mountPath": "/home/agent/.config/agent", "readOnly": true},
                        {"name": "cache", "mountPath": "/home/agent/.cache"},
                        api_access_mount
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": 9090, "scheme": "HTTP"},
                        "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent"
                },
                {
                    "name": "log-shipper",
                    "image": "fluent/fluent-bit:3.1.4",
                    "env": [
                        {"name": "FLUENT_HOST", "value": "logs.observability.svc"},
                        {"name": "FLUENT_PORT", "value": "24224"}
                    ],
                    "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                    "volumeMounts": [{"name": "cache", "mountPath": "/logs", "readOnly": true}, api_access_mount],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent"
                }
            ],
            "volumes": [
                {"name": "workspace", "emptyDir": {"sizeLimit": "10Gi"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "agent-config", "configMap": {"name": "coding-agent-config", "defaultMode": 420}},
                {"name": "kube-api-access-7xk2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        },
        "status": {}
    });
    // In the order the apiserver writes them (its Go type's: kind and operation before the
    // object, which the webhook relies on to read a Pod CREATE's object once); `json!` would
    // sort the keys.
    let request = [
        ("uid", serde_json::json!("bench-request")),
        ("kind", serde_json::json!({"group": "", "version": "v1", "kind": "Pod"})),
        ("resource", serde_json::json!({"group": "", "version": "v1", "resource": "pods"})),
        ("requestKind", serde_json::json!({"group": "", "version": "v1", "kind": "Pod"})),
        ("requestResource", serde_json::json!({"group": "", "version": "v1", "resource": "pods"})),
        ("namespace", serde_json::json!("agents")),
        ("operation", serde_json::json!("CREATE")),
        ("userInfo", serde_json::json!({
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "0b6b9a8e-2f7e-4c8e-8d62-6f1c2c1f9a10",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
        })),
        ("object", pod),
        ("oldObject", serde_json::Value::Null),
        ("dryRun", serde_json::json!(false)),
        ("options", serde_json::json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"})),
    ]
    .iter()
    .map(|(key, value)| format!("{}:{value}", serde_json::Value::from(*key)))
    .collect::<Vec<_>>()
    .join(",");
    Bytes::from(format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{{request}}}}}"#
    ))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tls
        .connect(NAME.try_into()?, tcp)
        .await
        .context("TLS handshake")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn connections(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    n: usize,
) -> anyhow::Result<Vec<Sender>> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(connect(addr, tls).await?);
    }
    Ok(senders)
}

/// Sends one review and reads the whole answer, which must be a 200 admitting the pod.
async fn review(sender: &mut Sender, body: &Bytes) -> anyhow::Result<()> {
    sender.ready().await.context("connection closed")?;
    let request = Request::post("/mutate")
        .header(header::HOST, NAME)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))?;
    let response = sender.send_request(request).await.context("request")?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .context("response body")?
        .to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`.
fn cpu_time(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let dir = task.path();
        let named = std::fs::read_to_string(dir.join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(prefix));
        if !named {
            continue;
        }
        // First field of schedstat: nanoseconds on a CPU (finer than stat's 10 ms ticks).
        if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += Duration::from_nanos(ns);
        }
    }
    total
}

/// Latencies of one fixed-rate run.
struct FixedRate {
    achieved: f64,
    errors: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    cpu_per_review: Duration,
}

async fn fixed_rate(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
    args: &Args,
) -> anyhow::Result<FixedRate> {
    let senders = connections(target.addr, tls, args.connections).await?;
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate as f64);
    let stagger = Duration::from_secs_f64(1.0 / args.rate as f64);
    let cpu_before = cpu_time(target.threads);
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut scheduled = start + stagger * i as u32;
            let mut previous_end = Instant::now();
            while scheduled < end {
                tokio::time::sleep_until(scheduled).await;
                let sent = Instant::now();
                // Late because the server had not answered the last review yet: that wait is
                // the server's. Late because of the client's timer: that is not.
                let from = if previous_end > scheduled {
                    scheduled
                } else {
                    sent
                };
                if review(&mut sender, &body).await.is_err() {
                    errors += 1;
                }
                previous_end = Instant::now();
                latencies.push(previous_end - from);
                scheduled += interval;
            }
            (latencies, errors, previous_end)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut last = start;
    for task in tasks {
        let (l, e, finished) = task.await?;
        latencies.extend(l);
        errors += e;
        last = last.max(finished);
    }
    let cpu = cpu_time(target.threads).saturating_sub(cpu_before);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let done = latencies.len();
    Ok(FixedRate {
        achieved: (done - errors) as f64 / (last - start).as_secs_f64(),
        errors,
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        p999: pct(0.999),
        max: latencies.last().copied().unwrap_or_default(),
        cpu_per_review: cpu / u32::try_from(done.max(1)).unwrap_or(u32::MAX),
    })
}

/// Throughput of one closed-loop run.
struct MaxRate {
    rate: f64,
    errors: usize,
    cpu_per_review: Duration,
}

async fn max_rate(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
    args: &Args,
) -> anyhow::Result<MaxRate> {
    let senders = connections(target.addr, tls, args.max_connections).await?;
    let cpu_before = cpu_time(target.threads);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.max_seconds);
    let mut tasks = Vec::new();
    for mut sender in senders {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0usize, 0usize);
            while Instant::now() < end {
                if review(&mut sender, &body).await.is_err() {
                    errors += 1;
                }
                done += 1;
            }
            (done, errors)
        }));
    }
    let (mut done, mut errors) = (0, 0);
    for task in tasks {
        let (d, e) = task.await?;
        done += d;
        errors += e;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time(target.threads).saturating_sub(cpu_before);
    Ok(MaxRate {
        rate: (done - errors) as f64 / elapsed.as_secs_f64(),
        errors,
        cpu_per_review: cpu / u32::try_from(done.max(1)).unwrap_or(u32::MAX),
    })
}

/// Sends a few reviews first: connection setup, allocator and caches warm, answers checked.
async fn warm_up(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
) -> anyhow::Result<()> {
    let mut sender = connect(target.addr, tls).await?;
    for _ in 0..200 {
        review(&mut sender, body)
            .await
            .with_context(|| format!("warm-up review to the {}", target.name))?;
    }
    Ok(())
}

/// The median of some figures (the middle one, or the lower middle).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `measure` for each target in every round (alternating the order, so neither always
/// goes first) and returns the runs per target.
async fn rounds<T, F, Fut>(
    targets: &[Target],
    rounds: usize,
    mut measure: F,
) -> anyhow::Result<Vec<Vec<T>>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut runs: Vec<Vec<T>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = if round % 2 == 0 {
                k
            } else {
                targets.len() - 1 - k
            };
            let run = measure(i)
                .await
                .with_context(|| format!("measuring the {}", targets[i].name))?;
            runs[i].push(run);
        }
    }
    Ok(runs)
}

async fn bench(
    args: &Args,
    targets: &[Target],
    tls: tokio_rustls::TlsConnector,
) -> anyhow::Result<()> {
    let body = review_body();
    for target in targets {
        warm_up(target, &tls, &body).await?;
    }
    println!(
        "Webhook server vs floor (axum + rustls, constant answer): HTTPS keep-alive HTTP/1.1, \
         {:.1} KiB AdmissionReview of a Pod; each server on {} thread(s), client on {}; \
         webhook logs {}; medians of {} rounds.",
        body.len() as f64 / 1024.0,
        args.server_threads,
        args.client_threads,
        if args.no_logs {
            "off"
        } else {
            "on (JSON, discarded)"
        },
        args.rounds,
    );
    let mut fixed = None;
    if args.only.contains(&Part::FixedRate) {
        fixed = Some(fixed_rate_table(args, targets, &tls, &body).await?);
    }
    let mut closed_loop = None;
    if args.only.contains(&Part::Max) {
        closed_loop = Some(max_rate_table(args, targets, &tls, &body).await?);
    }
    if let (Some(fixed), Some([webhook, floor])) = (&fixed, closed_loop) {
        // At a fixed rate below the maximum each review starts on an idle core, and the work
        // costs more than back to back: the fixed-rate ratio to the floor is set by how much
        // more work the webhook does, times that.
        println!(
            "  cold start: server CPU per review at {} reviews/s vs closed loop: webhook {:.1}x \
             ({:.1} vs {:.1} µs), floor {:.1}x ({:.1} vs {:.1} µs)",
            args.rate,
            fixed.cpu[0] / webhook,
            fixed.cpu[0],
            webhook,
            fixed.cpu[1] / floor,
            fixed.cpu[1],
            floor,
        );
    }
    if let Some(fixed) = fixed {
        println!(
            "  webhook p99 at {} reviews/s: {:.3} ms (target: under 2 ms)",
            args.rate, fixed.p99_webhook
        );
    }
    Ok(())
}

fn errors_note(errors: usize) -> String {
    if errors > 0 {
        format!("  ({errors} errors)")
    } else {
        String::new()
    }
}

/// Prints the fixed-rate figures; returns the webhook's p99 in ms.
async fn fixed_rate_table(
    args: &Args,
    targets: &[Target],
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
) -> anyhow::Result<FixedRateSummary> {
    println!(
        "Fixed rate: {} reviews/s for {} s over {} connections (latency from the scheduled \
         send time):",
        args.rate, args.seconds, args.connections
    );
    let runs = rounds(targets, args.rounds, |i| {
        fixed_rate(&targets[i], tls, body, args)
    })
    .await?;
    for (target, runs) in targets.iter().zip(&runs) {
        let of = |f: &dyn Fn(&FixedRate) -> f64| median(runs.iter().map(f).collect());
        println!(
            "  {:8} {:7.0} reviews/s  p50 {:6.3} ms  p90 {:6.3} ms  p99 {:6.3} ms  p99.9 {:6.3} ms  max {:7.3} ms  server CPU {:5.1} µs/review{}",
            target.name,
            of(&|r| r.achieved),
            of(&|r| ms(r.p50)),
            of(&|r| ms(r.p90)),
            of(&|r| ms(r.p99)),
            of(&|r| ms(r.p999)),
            of(&|r| ms(r.max)),
            of(&|r| us(r.cpu_per_review)),
            errors_note(runs.iter().map(|r| r.errors).sum()),
        );
    }
    // Ratios are taken within a round, then the median.
    let cpu = |runs: &[FixedRate]| median(runs.iter().map(|r| us(r.cpu_per_review)).collect());
    let cpu_ratio_to = |floor: &[FixedRate]| {
        median(
            runs[0]
                .iter()
                .zip(floor)
                .map(|(webhook, floor)| us(webhook.cpu_per_review) / us(floor.cpu_per_review))
                .collect(),
        )
    };
    println!(
        "  webhook: server CPU per review vs the floor ({} nodes, {} + {} cluster policies) at {} reviews/s: \
         {:.1}x ({:.1} vs {:.1} µs) (target: within 1.5x of the floor)",
        args.nodes,
        args.policies,
        args.policies,
        args.rate,
        cpu_ratio_to(&runs[1]),
        cpu(&runs[0]),
        cpu(&runs[1]),
    );
    println!(
        "  webhook: server CPU per review vs the floor sending the same answer (floor+): \
         {:.1}x ({:.1} vs {:.1} µs): the webhook's own work is {:.1} µs per review",
        cpu_ratio_to(&runs[2]),
        cpu(&runs[0]),
        cpu(&runs[2]),
        cpu(&runs[0]) - cpu(&runs[2]),
    );
    Ok(FixedRateSummary {
        p99_webhook: median(runs[0].iter().map(|r| ms(r.p99)).collect()),
        cpu: [cpu(&runs[0]), cpu(&runs[1])],
    })
}

/// What the summary lines after both tables need of the fixed-rate runs.
struct FixedRateSummary {
    p99_webhook: f64,
    /// Median server CPU per review (µs) of the webhook and of the floor.
    cpu: [f64; 2],
}

/// Prints the closed-loop figures and the webhook/floor ratios; returns the webhook's and the
/// floor's median server CPU per review (µs).
async fn max_rate_table(
    args: &Args,
    targets: &[Target],
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
) -> anyhow::Result<[f64; 2]> {
    println!(
        "Max throughput (closed loop): {} connections, {} s per run:",
        args.max_connections, args.max_seconds
    );
    let runs = rounds(targets, args.rounds, |i| {
        max_rate(&targets[i], tls, body, args)
    })
    .await?;
    for (target, runs) in targets.iter().zip(&runs) {
        println!(
            "  {:8} {:7.0} reviews/s  server CPU {:5.1} µs/review{}",
            target.name,
            median(runs.iter().map(|r| r.rate).collect()),
            median(runs.iter().map(|r| us(r.cpu_per_review)).collect()),
            errors_note(runs.iter().map(|r| r.errors).sum()),
        );
    }
    // Ratios are taken within a round, then the median.
    let pairs = || runs[0].iter().zip(&runs[1]);
    let ratio = median(
        pairs()
            .map(|(webhook, floor)| webhook.rate / floor.rate)
            .collect(),
    );
    let cpu_ratio = median(
        pairs()
            .map(|(webhook, floor)| us(webhook.cpu_per_review) / us(floor.cpu_per_review))
            .collect(),
    );
    println!(
        "  webhook/floor throughput {ratio:.2} (target >= 0.67, i.e. within 1.5x of the floor); \
         server CPU per review webhook/floor {cpu_ratio:.2}"
    );
    let cpu = |runs: &[MaxRate]| median(runs.iter().map(|r| us(r.cpu_per_review)).collect());
    Ok([cpu(&runs[0]), cpu(&runs[1])])
}

/// mimalloc instead of glibc's malloc: the webhook binary's allocator, so that the in-process
/// server measured is the one shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate == 0 || args.connections == 0 || args.max_connections == 0 || args.rounds == 0 {
        bail!("--rate, --connections, --max-connections and --rounds must be at least 1");
    }
    if args.nodes < 4 || args.large_nodes < 4 {
        bail!("--nodes and --large-nodes must be at least 4");
    }
    if args.only.contains(&Part::Decide) {
        decide_rows(&args)?;
    }
    // The benchmark measures real work only if the sample pod is jailed (planned and patched).
    let sample = boundary_webhook::review::parse(&review_body()).context("the sample review")?;
    let admit = admitter(args.nodes, args.policies);
    let answer = admit.admit(&sample);
    if answer.patch.is_none() {
        bail!("the benchmark's pod was not jailed: {answer:?}");
    }
    eprintln!(
        "sample review: allowed={}, tier {:?}, {} warnings, patch {} bytes (base64)",
        answer.allowed,
        answer.audit_annotations.get("tier"),
        answer.warnings.len(),
        answer.patch.as_ref().map_or(0, |p| p.len().div_ceil(3) * 4)
    );
    if !args.no_logs {
        // The webhook's per-review event, formatted by the webhook's own set-up and thrown away.
        let json = boundary_telemetry::LogArgs::default()
            .or_defaults("info", boundary_telemetry::LogFormat::Json);
        tracing::subscriber::set_global_default(boundary_telemetry::subscriber(
            &json,
            std::io::sink,
            false,
        )?)?;
    }
    let dir = tempfile::tempdir()?;
    let ca = TestCa::named("webhook bench CA");
    let webhook_runtime = server_runtime(args.server_threads, "webhook-server")?;
    let floor_runtime = server_runtime(args.server_threads, "floor-server")?;
    let answer_floor_runtime = server_runtime(args.server_threads, "floor-answer")?;
    let webhook_answer = Bytes::from(answer.to_review_json()?);
    let targets = [
        Target {
            name: "webhook",
            addr: start_webhook(&webhook_runtime, dir.path(), &ca.leaf(&[NAME]), admit)?,
            threads: "webhook-server",
        },
        Target {
            name: "floor",
            addr: start_floor(
                &floor_runtime,
                ca.server_config(&[NAME], Alpn::Http1),
                Bytes::from_static(FLOOR_RESPONSE.as_bytes()),
            )?,
            threads: "floor-server",
        },
        Target {
            name: "floor+",
            addr: start_floor(
                &answer_floor_runtime,
                ca.server_config(&[NAME], Alpn::Http1),
                webhook_answer.clone(),
            )?,
            threads: "floor-answer",
        },
    ];
    println!(
        "floor: a constant {} B answer; floor+: a constant copy of the webhook's own answer to \
         the review ({:.1} KiB, its patch included), which any webhook jailing this pod must send",
        FLOOR_RESPONSE.len(),
        webhook_answer.len() as f64 / 1024.0
    );
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    client.block_on(bench(&args, &targets, ca.connector(Alpn::Http1)))?;
    // Servers and client stop with their runtimes.
    drop(client);
    webhook_runtime.shutdown_background();
    floor_runtime.shutdown_background();
    answer_floor_runtime.shutdown_background();
    Ok(())
}

//! `boundary-operator` as a process, stopped with a real SIGTERM while it leads: it releases
//! its Lease (so a standby takes over at once) and exits 0.
//!
//! The Kubernetes API is a stand-in on loopback: Leases are kept as written (create, read,
//! replace with the resourceVersion check), every other list is empty (or, for one path, never
//! answered) and every watch stays open without events. Leader election against a real apiserver is tested in tests/cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const EVENTUALLY: Duration = Duration::from_mins(1);
const LEASE_NAMESPACE: &str = "agent-boundary";
const IDENTITY: &str = "operator-under-test";

/// The stand-in's Leases by name, and every write made to them.
#[derive(Default)]
struct Leases {
    stored: BTreeMap<String, Value>,
    writes: Vec<(Method, Value)>,
    version: u64,
    /// A path whose list is never answered.
    stalled: Option<&'static str>,
}

type Shared = Arc<Mutex<Leases>>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status(code: StatusCode, reason: &str) -> Response {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "message": reason, "code": code.as_u16()}),
    )
}

async fn answer(State(leases): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "",
                    "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "gc",
                    "platform": "linux/amd64"}),
        );
    }
    let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases");
    if let Some(rest) = path.strip_prefix(&collection) {
        let body = axum::body::to_bytes(request.into_body(), 1 << 20)
            .await
            .unwrap();
        let mut leases = leases.lock().unwrap();
        let name = rest.trim_start_matches('/').to_owned();
        return match method {
            Method::GET if !name.is_empty() => match leases.stored.get(&name) {
                Some(lease) => json_response(StatusCode::OK, lease),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            Method::POST | Method::PUT => {
                let mut lease: Value = serde_json::from_slice(&body).unwrap();
                let name = lease["metadata"]["name"].as_str().unwrap().to_owned();
                let current = leases
                    .stored
                    .get(&name)
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                let conflict = match method {
                    Method::POST => current.is_some(),
                    _ => current != Some(lease["metadata"]["resourceVersion"].clone()),
                };
                if conflict {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                leases.writes.push((method.clone(), lease.clone()));
                leases.version += 1;
                lease["metadata"]["resourceVersion"] = json!(leases.version.to_string());
                leases.stored.insert(name, lease.clone());
                let code = if method == Method::POST {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json_response(code, &lease)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        };
    }
    if method != Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    }
    let stalled = leases.lock().unwrap().stalled;
    if stalled == Some(path.as_str()) {
        return std::future::pending().await;
    }
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    if watch {
        let silence = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        return (
            [("content-type", "application/json")],
            axum::body::Body::from_stream(silence),
        )
            .into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

async fn stand_in_apiserver(leases: Shared) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(answer).with_state(leases);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn holder(leases: &Shared) -> Option<String> {
    leases
        .lock()
        .unwrap()
        .stored
        .values()
        .next()
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(ToOwned::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_leading_operator_releases_its_lease_and_exits_0() {
    sigterm_while_leading(None).await;
}

/// kube-runtime's graceful shutdown waits forever for a controller whose store was never
/// listed; this failed in CI when SIGTERM came a moment after the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_a_controllers_first_list_still_exits_0() {
    sigterm_while_leading(Some("/api/v1/nodes")).await;
}

/// Starts the operator against the stand-in (which never answers the list of `stalled`), sends
/// SIGTERM once it leads, and checks it releases the Lease and exits 0.
async fn sigterm_while_leading(stalled: Option<&'static str>) {
    let leases = Shared::default();
    leases.lock().unwrap().stalled = stalled;
    let apiserver = stand_in_apiserver(leases.clone()).await;
    let kubeconfig = std::env::temp_dir().join(format!(
        "operator-shutdown-{}-{}.yaml",
        std::process::id(),
        stalled.is_some()
    ));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: 'http://{apiserver}'}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_boundary-operator"))
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env(boundary_api::contract::env::POD_NAME, IDENTITY)
        .env(boundary_api::contract::env::POD_NAMESPACE, LEASE_NAMESPACE)
        .env("BOUNDARY_LEASE_NAMESPACE", LEASE_NAMESPACE)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("operator: {line}");
        }
    });

    let deadline = Instant::now() + EVENTUALLY;
    while holder(&leases).as_deref() != Some(IDENTITY) {
        assert!(
            Instant::now() < deadline,
            "the operator never took the Lease"
        );
        assert!(child.try_wait().unwrap().is_none(), "the operator exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writes_before = leases.lock().unwrap().writes.len();

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(EVENTUALLY, child.wait())
        .await
        .expect("the operator did not exit after SIGTERM")
        .unwrap();
    let _ = std::fs::remove_file(&kubeconfig);
    assert_eq!(exit.code(), Some(0), "{exit}");

    // The last write, made after the signal, gave the Lease up.
    let leases = leases.lock().unwrap();
    assert!(
        leases.writes.len() > writes_before,
        "no Lease write after SIGTERM"
    );
    let (method, last) = leases.writes.last().unwrap();
    assert_eq!(method, Method::PUT);
    assert!(
        last["spec"]["holderIdentity"]
            .as_str()
            .is_none_or(str::is_empty),
        "the Lease was not released: {last}"
    );
}

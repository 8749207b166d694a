//! The node agent's apiserver client over real HTTPS: a loopback server with its own CA stands
//! in for the apiserver, only to check the request's shape, authentication and the mapping of
//! answers to errors (the real apiserver is in `tests/cluster/tests/node_agent.rs`). The last
//! test runs the `boundary node-agent` binary against it for what needs failure injection:
//! retries after errors, no rewrite of an unchanged report, SIGTERM.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boundary::node_agent::apiserver::{ApiError, ApiServer, Endpoint, annotation_patch};
use bytes::Bytes;
use common::{TempDir, TestCa, boundary_bin};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One request as the fake apiserver saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    content_type: String,
    host: String,
    user_agent: String,
    body: Vec<u8>,
}

/// A loopback HTTPS server that records requests and answers with queued (status, body) pairs,
/// then `200 {}` when the queue is empty.
struct FakeApiserver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
}

impl FakeApiserver {
    async fn start(ca: &TestCa) -> FakeApiserver {
        let tls = ca.server_config(&["localhost", "127.0.0.1"], false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let (s, a) = (seen.clone(), answers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, a, tls) = (s.clone(), a.clone(), tls.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await
                    else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, a) = (s.clone(), a.clone());
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let mut seen = Seen {
                                method: req.method().to_string(),
                                path: req.uri().path().to_owned(),
                                authorization: header("authorization"),
                                content_type: header("content-type"),
                                host: header("host"),
                                user_agent: header("user-agent"),
                                body: Vec::new(),
                            };
                            seen.body = req.into_body().collect().await.unwrap().to_bytes().into();
                            s.lock().unwrap().push(seen);
                            let (status, body) = a
                                .lock()
                                .unwrap()
                                .pop_front()
                                .unwrap_or((200, "{}".to_owned()));
                            let response = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApiserver {
            addr,
            seen,
            answers,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn answer(&self, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .push_back((status, body.to_owned()));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": message, "reason": reason, "code": code})
    .to_string()
}

struct Files {
    dir: TempDir,
}

impl Files {
    fn new(ca: &TestCa, token: &str) -> Files {
        let dir = TempDir::new("node-agent");
        std::fs::copy(&ca.pem_path, dir.path().join("ca.crt")).unwrap();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self, url: &str) -> ApiServer {
        ApiServer::new(
            Endpoint::parse(url).unwrap(),
            self.path("token"),
            self.path("ca.crt"),
        )
    }
}

#[tokio::test]
async fn the_patch_is_an_authenticated_merge_patch_of_the_pod() {
    let ca = TestCa::new();
    let server = FakeApiserver::start(&ca).await;
    let files = Files::new(&ca, "token-one");
    let api = files.client(&server.url());
    let patch = annotation_patch("agentboundary.dev/probe-report", r#"{"best":"userns"}"#);

    api.merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let first = &seen[0];
    assert_eq!(first.method, "PATCH");
    assert_eq!(
        first.path,
        "/api/v1/namespaces/agent-boundary/pods/node-agent-x1"
    );
    assert_eq!(first.content_type, "application/merge-patch+json");
    assert_eq!(
        first.authorization, "Bearer token-one",
        "trimmed, as a bearer"
    );
    assert_eq!(first.host, format!("127.0.0.1:{}", server.addr.port()));
    assert!(first.user_agent.starts_with("boundary-node-agent/"));
    assert_eq!(first.body, patch);

    // The token file is read again for each request (projected tokens rotate).
    std::fs::write(files.path("token"), "token-two").unwrap();
    api.merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap();
    assert_eq!(server.seen()[1].authorization, "Bearer token-two");
}

#[tokio::test]
async fn answers_and_failures_map_to_errors_that_carry_the_message_and_the_fix() {
    let ca = TestCa::new();
    let server = FakeApiserver::start(&ca).await;
    let files = Files::new(&ca, "token");
    let api = files.client(&server.url());
    let patch = annotation_patch("agentboundary.dev/probe-report", "{}");

    server.answer(
        403,
        &status_body(
            403,
            "Forbidden",
            "pods \"node-agent-x1\" is forbidden: User \"system:serviceaccount:agent-boundary:node-agent\" cannot patch resource \"pods\"",
        ),
    );
    let err = api
        .merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Forbidden { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("may not patch pods in namespace agent-boundary")
            && text.contains("cannot patch resource"),
        "{text}"
    );

    server.answer(
        404,
        &status_body(404, "NotFound", "pods \"gone\" not found"),
    );
    let err = api
        .merge_patch_pod("agent-boundary", "gone", patch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::PodNotFound { .. }), "{err}");
    assert!(err.to_string().contains("pods \"gone\" not found"), "{err}");

    server.answer(401, &status_body(401, "Unauthorized", "Unauthorized"));
    let err = api
        .merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized { .. }), "{err}");

    server.answer(500, "etcdserver: request timed out");
    let err = api
        .merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Status { status: 500, .. }) && err.is_transient(),
        "{err}"
    );
    assert!(
        err.to_string().contains("etcdserver: request timed out"),
        "{err}"
    );

    // A name that would change the path is refused before anything is sent.
    let before = server.seen().len();
    let err = api
        .merge_patch_pod("agent-boundary", "../../nodes/x", patch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::BadName { .. }), "{err}");
    assert_eq!(server.seen().len(), before);

    // Not the server's CA: the TLS handshake fails, and nothing (no token) was sent.
    let other = TestCa::new();
    std::fs::copy(&other.pem_path, files.path("ca.crt")).unwrap();
    let err = api
        .merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Tls { .. }), "{err}");
    assert_eq!(server.seen().len(), before);

    // No token file: says which file and what to check.
    std::fs::remove_file(files.path("token")).unwrap();
    let err = api
        .merge_patch_pod("agent-boundary", "node-agent-x1", patch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Token { .. }), "{err}");

    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(files.path("token"), "t").unwrap();
    let err = files
        .client(&format!("https://127.0.0.1:{closed}"))
        .merge_patch_pod("agent-boundary", "node-agent-x1", patch)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn the_agent_retries_failures_publishes_once_and_stops_on_sigterm() {
    let ca = TestCa::new();
    let server = FakeApiserver::start(&ca).await;
    let files = Files::new(&ca, "token");
    // The first two attempts fail (apiserver overloaded): retried after 1 s, then 2 s.
    server.answer(503, &status_body(503, "ServiceUnavailable", "try later"));
    server.answer(503, &status_body(503, "ServiceUnavailable", "try later"));
    let sysctl = files.path("max_user_namespaces");
    std::fs::write(&sysctl, "0\n").unwrap();
    let log = std::fs::File::create(files.path("agent.log")).unwrap();
    let mut agent = tokio::process::Command::new(boundary_bin())
        .args(["node-agent", "--interval-seconds", "1"])
        .arg("--api-server")
        .arg(server.url())
        .arg("--token-file")
        .arg(files.path("token"))
        .arg("--ca-file")
        .arg(files.path("ca.crt"))
        .args(["--set-max-user-namespaces", "4321"])
        .arg("--max-user-namespaces-file")
        .arg(&sysctl)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env(boundary_api::contract::env::POD_NAME, "node-agent-x1")
        .env(boundary_api::contract::env::POD_NAMESPACE, "agent-boundary")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(files.path("agent.log")).unwrap_or_default();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.seen().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no third attempt: {:?}\n{}",
            server.seen(),
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The third attempt succeeded; the report does not change, so nothing more is sent over
    // several intervals.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "{seen:?}\n{}", agent_log());
    assert!(seen.windows(2).all(|w| w[0].body == w[1].body));
    let patch: serde_json::Value = serde_json::from_slice(&seen[2].body).unwrap();
    let report: serde_json::Value = serde_json::from_str(
        patch["metadata"]["annotations"]["agentboundary.dev/probe-report"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for tier in ["userns", "privileged-netns", "landlock"] {
        assert!(report["tiers"][tier]["works"].is_boolean(), "{report}");
    }
    assert!(
        report.get("seccompProfile").is_none(),
        "not asked to install"
    );
    // The sysctl switch ran (on the stand-in file).
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "4321\n");
    let log = agent_log();
    assert!(
        log.contains("try later") && log.contains("probe report published"),
        "{log}"
    );
    assert!(log.contains("set it to 4321"), "{log}");

    let pid = agent.id().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), agent.wait())
        .await
        .expect("stops within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", agent_log());
}

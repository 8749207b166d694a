//! `boundary-node-agent` as a process: its switches, its retries, what it sends and SIGTERM.
//!
//! Two stand-ins, because neither a cluster nor the `boundary` package is at hand here (the real
//! apiserver and the real probe are in `tests/cluster/tests/node_agent.rs`):
//! - the apiserver is a loopback HTTPS server with its own CA that records each request and
//!   answers with the status the test sets, to check the request's shape, the token, and what
//!   the agent does with refusals;
//! - `boundary` is a shell script that counts its calls and prints the report file the test
//!   writes, so the test knows how many rounds the agent made and can change the report.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boundary_api::contract::{annotations, node_agent_env, objects};
use boundary_api::probe::ProbeReport;
use boundary_operator::certs;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// How long the agent gets to show what a test waits for (a bound, not a measurement).
const EVENTUALLY: Duration = Duration::from_secs(30);
const TOKEN: &str = "agent-token";

/// A request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    authorization: String,
    body: Value,
    /// What the stand-in answered.
    status: StatusCode,
}

#[derive(Debug)]
struct State {
    /// The status the next requests get.
    answer: StatusCode,
    seen: Vec<Seen>,
}

/// The stand-in apiserver: HTTPS on loopback with a certificate of its own CA.
struct StandInApiserver {
    url: String,
    ca_pem: String,
    state: Arc<Mutex<State>>,
}

impl StandInApiserver {
    async fn start() -> StandInApiserver {
        let now = certs::unix_now();
        let ca = certs::pki::generate_ca(now, 3600).unwrap();
        let serving =
            certs::pki::generate_serving(now, 3600, &ca, &BTreeSet::from(["127.0.0.1".to_owned()]))
                .unwrap();
        let chain = CertificateDer::pem_slice_iter(serving.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            answer: StatusCode::OK,
            seen: Vec::new(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(answer(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        StandInApiserver {
            url,
            ca_pem: ca.cert,
            state,
        }
    }

    fn answer_with(&self, status: StatusCode) {
        self.state.lock().unwrap().answer = status;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The `PATCH` requests answered with 200 so far, as the annotation values they set.
    fn published(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "PATCH" && s.status == StatusCode::OK)
            .filter_map(|s| {
                s.body["metadata"]["annotations"][annotations::PROBE_REPORT]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
}

/// Records the request and answers with the current status: the Pod for 200, else a Status.
async fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (method, path) = (
        request.method().to_string(),
        request.uri().path().to_owned(),
    );
    let (content_type, authorization) = (header("content-type"), header("authorization"));
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = {
        let mut state = state.lock().unwrap();
        let status = state.answer;
        state.seen.push(Seen {
            method,
            path,
            content_type,
            authorization,
            body,
            status,
        });
        status
    };
    let reply = if status == StatusCode::OK {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "node-agent-1", "namespace": "agent-boundary"}})
    } else {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": status.as_u16(),
               "reason": "Forbidden",
               "message": "pods \"node-agent-1\" is forbidden: User \"system:serviceaccount:agent-boundary:node-agent\" cannot patch resource \"pods\""})
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap()
}

/// The files of one agent run: token, CA, the stand-in `boundary`, its report and call count.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(ca_pem: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca_pem).unwrap();
        let boundary = dir.path().join("boundary");
        std::fs::write(
            &boundary,
            format!(
                "#!/bin/sh\n[ \"$*\" = probe ] || exit 2\necho . >> '{0}/probes'\ncat '{0}/report.json'\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&boundary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = Files { dir };
        files.set_report(&report(false));
        std::fs::write(files.path("max_user_namespaces"), "0\n").unwrap();
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_report(&self, report: &Value) {
        std::fs::write(self.path("report.json"), report.to_string()).unwrap();
    }

    /// How often the agent ran the probe.
    fn probes(&self) -> usize {
        std::fs::read_to_string(self.path("probes"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

/// What the stand-in `boundary probe` prints.
fn report(userns: bool) -> Value {
    json!({
        "tiers": {"userns": {"works": userns}, "landlock": {"works": true}},
        "best": if userns { "userns" } else { "landlock" },
        "facts": {"kernel": "6.12.40", "maxUserNamespaces": if userns { 5 } else { 0 },
                  "apparmorRestrictsUserns": false, "seccompFilter": false, "landlockAbi": 6,
                  "uid": 0, "netAdminAndSysAdmin": false},
    })
}

/// The agent process; its standard error (JSON lines) is collected.
struct Agent {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl Agent {
    fn start(env: &[(&str, &str)], args: &[&str]) -> Agent {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_boundary-node-agent"))
            // Nothing of this machine's environment (KUBERNETES_SERVICE_HOST, BOUNDARY_*).
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stderr.take().unwrap(),
        ));
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("agent: {line}");
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        Agent { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `done` holds, failing with the log if the agent exits or never gets there.
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Agent) -> bool) {
        let deadline = Instant::now() + EVENTUALLY;
        while !done(self) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the agent exited before {what}:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "never {what}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and returns the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().unwrap().to_string();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(kill.success());
        let exit = tokio::time::timeout(EVENTUALLY, self.child.wait())
            .await
            .expect("the agent did not stop after SIGTERM")
            .unwrap();
        exit.code()
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn the_agent_publishes_changed_reports_on_its_own_pod_retries_refusals_and_stops_on_sigterm()
{
    let apiserver = StandInApiserver::start().await;
    let files = Files::new(&apiserver.ca_pem);
    let seccomp_dir = files.path("kubelet/seccomp");
    apiserver.answer_with(StatusCode::FORBIDDEN);
    let (boundary, token, ca, sysctl, seccomp) = (
        path_arg(&files.path("boundary")),
        path_arg(&files.path("token")),
        path_arg(&files.path("ca.crt")),
        path_arg(&files.path("max_user_namespaces")),
        path_arg(&seccomp_dir),
    );
    let mut agent = Agent::start(
        &[
            (boundary_api::contract::env::POD_NAME, "node-agent-1"),
            (boundary_api::contract::env::POD_NAMESPACE, "agent-boundary"),
            (node_agent_env::BOUNDARY_BIN, &boundary),
            (node_agent_env::API_SERVER, &apiserver.url),
            (node_agent_env::TOKEN_FILE, &token),
            (node_agent_env::CA_FILE, &ca),
            (node_agent_env::PROBE_INTERVAL_SECONDS, "1"),
            (node_agent_env::SET_MAX_USER_NAMESPACES, "5"),
            (node_agent_env::MAX_USER_NAMESPACES_FILE, &sysctl),
            (node_agent_env::SECCOMP_DIR, &seccomp),
        ],
        &[],
    );

    // Refused by RBAC: the fix is in the log, and the agent keeps trying.
    agent
        .until("retrying after 403", |a| a.log().contains("\"failures\":2"))
        .await;
    let log = agent.log();
    assert!(
        log.contains("403 Forbidden")
            && log.contains("may not patch pods in namespace agent-boundary")
            && log.contains("verbs [get, patch]")
            && log.contains("system:serviceaccount:agent-boundary:node-agent"),
        "{log}"
    );
    // The switches ran before the probe: the sysctl is raised and the profile in place.
    assert_eq!(
        std::fs::read_to_string(files.path("max_user_namespaces")).unwrap(),
        "5\n"
    );
    assert!(seccomp_dir.join(objects::SECCOMP_PROFILE).is_file());

    // Allowed: the report is published once, as a merge patch of the agent's own Pod.
    apiserver.answer_with(StatusCode::OK);
    agent
        .until("published", |_| !apiserver.published().is_empty())
        .await;
    let patch = apiserver
        .seen()
        .into_iter()
        .rfind(|s| s.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.path,
        "/api/v1/namespaces/agent-boundary/pods/node-agent-1"
    );
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(patch.authorization, format!("Bearer {TOKEN}"));
    let published: Value = serde_json::from_str(&apiserver.published()[0]).unwrap();
    // What `boundary probe` printed, plus the profile the agent installed.
    let mut want = report(false);
    want["seccompProfile"] = json!(objects::SECCOMP_PROFILE);
    assert_eq!(published, want);
    serde_json::from_value::<ProbeReport>(published).expect("the operator reads it");

    // Unchanged reports are not written again, however many rounds go by.
    let probes = files.probes();
    agent
        .until("probed three more times", |_| files.probes() >= probes + 3)
        .await;
    assert_eq!(apiserver.published().len(), 1, "{:?}", apiserver.seen());

    // A changed report is.
    files.set_report(&report(true));
    agent
        .until("published again", |_| apiserver.published().len() == 2)
        .await;
    let published: Value = serde_json::from_str(&apiserver.published()[1]).unwrap();
    assert_eq!(published["best"], "userns");
    assert_eq!(published["seccompProfile"], objects::SECCOMP_PROFILE);

    assert_eq!(agent.terminate().await, Some(0));
}

#[tokio::test]
async fn a_probe_that_fails_is_retried_and_publishes_nothing() {
    let apiserver = StandInApiserver::start().await;
    let files = Files::new(&apiserver.ca_pem);
    std::fs::write(files.path("report.json"), "boundary 0.0.1").unwrap();
    let (boundary, token, ca) = (
        path_arg(&files.path("boundary")),
        path_arg(&files.path("token")),
        path_arg(&files.path("ca.crt")),
    );
    let mut agent = Agent::start(
        &[
            (boundary_api::contract::env::POD_NAME, "node-agent-1"),
            (boundary_api::contract::env::POD_NAMESPACE, "agent-boundary"),
        ],
        &[
            "--boundary-bin",
            &boundary,
            "--api-server",
            &apiserver.url,
            "--token-file",
            &token,
            "--ca-file",
            &ca,
            "--interval-seconds",
            "1",
        ],
    );
    agent
        .until("retrying the probe", |a| a.log().contains("\"failures\":2"))
        .await;
    let log = agent.log();
    assert!(
        log.contains("probing the node failed") && log.contains("printed no probe report"),
        "{log}"
    );
    assert!(apiserver.seen().is_empty(), "{:?}", apiserver.seen());
    // It recovers once the probe does.
    files.set_report(&report(true));
    agent
        .until("published", |_| apiserver.published().len() == 1)
        .await;
    assert_eq!(agent.terminate().await, Some(0));
}

#[tokio::test]
async fn bad_configuration_exits_2_and_says_what_to_set() {
    for (env, args, says) in [
        (
            vec![(boundary_api::contract::env::POD_NAMESPACE, "agent-boundary")],
            vec!["--api-server", "https://127.0.0.1:6443"],
            "BOUNDARY_POD_NAME is not set",
        ),
        (
            vec![
                (boundary_api::contract::env::POD_NAME, "a"),
                (boundary_api::contract::env::POD_NAMESPACE, "agent-boundary"),
            ],
            vec![],
            "no apiserver address",
        ),
        (
            vec![
                (boundary_api::contract::env::POD_NAME, "a"),
                (boundary_api::contract::env::POD_NAMESPACE, "agent-boundary"),
            ],
            vec!["--api-server", "http://127.0.0.1:6443"],
            "only reached over https",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_boundary-node-agent"))
            .env_clear()
            .envs(env)
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
}

//! What a pod needs from `boundary run` and `boundary sidecar`, with the real binaries on real
//! namespaces: the session between them (exit codes, failed and lost jails), the sidecar exiting
//! by itself so Jobs complete, `GET /status`, a nested `boundary run` refused, and inbound ports
//! for servers in the jail.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    As, Sidecar, TempDir, TestCa, TestServer, boundary, compiled, http_get, jailed, output,
    require_root, stderr, stdout,
};
use serde_json::Value;

/// `boundary run --proxy-socket` as jailed container `name`, running `script`.
fn in_pod(
    sidecar: &Sidecar,
    who: As,
    name: &str,
    extra: &[&str],
    script: &str,
) -> tokio::process::Command {
    let mut cmd = boundary(who);
    cmd.arg("run")
        .args(["--proxy-socket", sidecar.socket.to_str().unwrap()])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .env("BOUNDARY_CONTAINER_NAME", name);
    cmd
}

fn jail_of<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["jails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["container"] == name)
}

async fn wait_status(sidecar: &Sidecar, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let status = sidecar.status().await;
        if f(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {}", sidecar.status().await);
}

fn state_is(status: &Value, name: &str, state: &str) -> bool {
    jail_of(status, name).is_some_and(|j| j["state"] == state)
}

fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` ports free now and different from each other: all are held until all are chosen (the
/// kernel may hand out a port it just took back, and two equal ports fail the test).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// GETs `/` until a server answers 200 (it starts in the jail meanwhile).
async fn get_until_ok(port: u16) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        match http_get(local(port), "/").await {
            Ok((200, body)) => return body,
            Ok((code, body)) => last = format!("{code} {body}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing answered on inbound port {port}: {last}");
}

/// The sidecar's audit trail (standard output) once it has exited, or so far.
fn requests_to(audit: &[Value], path: &str) -> Vec<Value> {
    audit
        .iter()
        .filter(|r| r["path"] == path)
        .cloned()
        .collect()
}

#[tokio::test]
async fn with_all_exited_the_sidecar_exits_once_every_jailed_container_has_ended() {
    require_root();
    let http = TestServer::start(None).await;
    let mut sidecar = Sidecar::start(
        &compiled(&["domain=allowed.test"]),
        &[
            "--resolve",
            "allowed.test=127.0.0.1",
            "--exit-when",
            "all-exited",
            "--jailed-containers",
            "agent,helper",
        ],
    )
    .await;
    let script = |path: &str, code: i32| {
        format!(
            "curl -sS http://allowed.test:{}/{path}; exit {code}",
            http.port()
        )
    };
    let out = output(in_pod(
        &sidecar,
        As::Nobody,
        "agent",
        &[],
        &script("first", 3),
    ))
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("hello GET allowed.test"),
        "{}",
        stdout(&out)
    );
    let status = sidecar.status().await;
    let agent = jail_of(&status, "agent").unwrap();
    assert_eq!(agent["state"], "exited", "{status}");
    assert_eq!(agent["exitCode"], 3, "{status}");
    assert_eq!(agent["tier"], "userns", "{status}");

    // The sidecar is still there for the other container (its request goes through).
    let out = output(in_pod(
        &sidecar,
        As::Root,
        "helper",
        &[],
        &script("second", 0),
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("/second"), "{}", stdout(&out));
    let exit = sidecar
        .exit_within(Duration::from_secs(30))
        .await
        .expect("the sidecar exits once both jailed containers have ended");
    assert_eq!(exit.code(), Some(0));
    let audit = sidecar.audit().await;
    for (path, container) in [("/first", "agent"), ("/second", "helper")] {
        let records = requests_to(&audit, path);
        assert!(
            records
                .iter()
                .any(|r| r["decision"] == "allow" && r["container"] == container),
            "the audit written before exit holds {path}: {audit:?}"
        );
    }
}

#[tokio::test]
async fn with_all_succeeded_a_failure_keeps_the_sidecar_until_a_later_success() {
    require_root();
    let http = TestServer::start(None).await;
    let mut sidecar = Sidecar::start(
        &compiled(&["domain=allowed.test"]),
        &[
            "--resolve",
            "allowed.test=127.0.0.1",
            "--exit-when",
            "all-succeeded",
            "--jailed-containers",
            "agent,helper",
        ],
    )
    .await;
    let out = output(in_pod(&sidecar, As::Root, "helper", &[], "true")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = output(in_pod(&sidecar, As::Nobody, "agent", &[], "exit 1")).await;
    assert_eq!(out.status.code(), Some(1));
    let status = sidecar.status().await;
    assert!(state_is(&status, "agent", "exited"), "{status}");
    assert_eq!(jail_of(&status, "agent").unwrap()["exitCode"], 1);
    // The kubelet restarts the failed container; its run reconnects and still has a proxy.
    let script = format!("curl -sS http://allowed.test:{}/retry", http.port());
    let out = output(in_pod(&sidecar, As::Nobody, "agent", &[], &script)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("/retry"), "{}", stdout(&out));
    let exit = sidecar
        .exit_within(Duration::from_secs(30))
        .await
        .expect("the sidecar exits once every jailed container has succeeded");
    assert_eq!(exit.code(), Some(0));
    let audit = sidecar.audit().await;
    assert_eq!(requests_to(&audit, "/retry").len(), 1, "{audit:?}");
}

#[tokio::test]
async fn with_never_the_sidecar_stays_after_every_container_has_ended() {
    require_root();
    let http = TestServer::start(None).await;
    let mut sidecar = Sidecar::start(
        &compiled(&["domain=allowed.test"]),
        &[
            "--resolve",
            "allowed.test=127.0.0.1",
            "--jailed-containers",
            "agent,helper",
        ],
    )
    .await;
    for name in ["agent", "helper"] {
        let out = output(in_pod(&sidecar, As::Nobody, name, &[], "true")).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let status = sidecar.status().await;
    assert!(
        state_is(&status, "agent", "exited") && state_is(&status, "helper", "exited"),
        "{status}"
    );
    // Still serving: a later jailed request goes through.
    let script = format!("curl -sS http://allowed.test:{}/later", http.port());
    let out = output(in_pod(&sidecar, As::Nobody, "agent", &[], &script)).await;
    assert!(stdout(&out).contains("/later"), "{}", stderr(&out));
    assert!(sidecar.running());
}

#[tokio::test]
async fn status_reports_the_policy_hash_and_every_jails_state() {
    require_root();
    let mut sidecar = Sidecar::start(&compiled(&["domain=a.test"]), &[]).await;
    let file = std::fs::read(sidecar.policy.path()).unwrap();
    let status = sidecar.status().await;
    assert_eq!(
        status["policyHash"],
        boundary_api::compiled::policy_hash(&file),
        "{status}"
    );
    assert_eq!(status["policyLoaded"], true);
    assert_eq!(status["jails"], serde_json::json!([]));

    // A new version is reported once it is enforced; a bad one is not.
    sidecar.policy.publish(&compiled(&["domain=b.test"]));
    let file = std::fs::read(sidecar.policy.path()).unwrap();
    let hash = boundary_api::compiled::policy_hash(&file);
    wait_status(&sidecar, "the new policy's hash", |s| {
        s["policyHash"] == hash
    })
    .await;
    sidecar
        .policy
        .publish(&serde_json::json!({"version": "not a policy"}));
    for _ in 0..200 {
        let (_, metrics) = http_get(sidecar.metrics, "/metrics").await.unwrap();
        if metrics.contains("agent_boundary_policy_reloads_total{result=\"error\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = sidecar.status().await;
    assert_eq!(
        status["policyHash"], hash,
        "the rejected file is not enforced"
    );

    // Connected, then lost when its `boundary run` is killed (OOM, SIGKILL).
    let mut sleeper = in_pod(&sidecar, As::Nobody, "sleeper", &[], "sleep 600")
        .spawn()
        .unwrap();
    let status = wait_status(&sidecar, "sleeper connected", |s| {
        state_is(s, "sleeper", "connected")
    })
    .await;
    let jail = jail_of(&status, "sleeper").unwrap();
    assert_eq!(jail["tier"], "userns");
    assert!(jail.get("exitCode").is_none(), "{status}");
    let since: jiff::Timestamp = jail["since"].as_str().unwrap().parse().unwrap();
    assert!(since <= jiff::Timestamp::now());
    sleeper.kill().await.unwrap();
    wait_status(&sidecar, "sleeper lost", |s| state_is(s, "sleeper", "lost")).await;

    // A jail that cannot start says why.
    let out = output(in_pod(
        &sidecar,
        As::Nobody,
        "broken",
        &["--tier", "privileged-netns"],
        "true",
    ))
    .await;
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let status = sidecar.status().await;
    let broken = jail_of(&status, "broken").unwrap();
    assert_eq!(broken["state"], "failed", "{status}");
    assert_eq!(broken["tier"], "privileged-netns", "{status}");
    assert_eq!(broken["exitCode"], 125, "{status}");
    assert!(
        broken["error"].as_str().unwrap().contains("CAP_SYS_ADMIN"),
        "{status}"
    );
    assert!(sidecar.running());
}

#[tokio::test]
async fn a_restarted_sidecar_keeps_the_states_and_boundary_run_announces_itself_again() {
    require_root();
    let mut sidecar = Sidecar::start(
        &compiled(&[]),
        &[
            "--exit-when",
            "all-exited",
            "--jailed-containers",
            "agent,helper",
        ],
    )
    .await;
    // One container ended before the sidecar crashed: the restarted sidecar still knows.
    let out = output(in_pod(&sidecar, As::Root, "helper", &[], "exit 5")).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let mut agent = in_pod(&sidecar, As::Nobody, "agent", &[], "read line; exit 7");
    agent.stdin(std::process::Stdio::piped());
    let mut agent = agent.spawn().unwrap();
    wait_status(&sidecar, "agent connected", |s| {
        state_is(s, "agent", "connected")
    })
    .await;
    sidecar.restart().await;
    let status = wait_status(&sidecar, "agent connected to the new sidecar", |s| {
        state_is(s, "agent", "connected")
    })
    .await;
    assert_eq!(jail_of(&status, "agent").unwrap()["tier"], "userns");
    assert_eq!(
        jail_of(&status, "helper").unwrap()["exitCode"],
        5,
        "{status}"
    );
    // The command ends: the new sidecar gets the exit code and, its condition met, exits.
    tokio::io::AsyncWriteExt::write_all(agent.stdin.as_mut().unwrap(), b"go\n")
        .await
        .unwrap();
    let code = agent.wait().await.unwrap().code();
    assert_eq!(code, Some(7));
    let exit = sidecar
        .exit_within(Duration::from_secs(30))
        .await
        .expect("the restarted sidecar learnt of the exit");
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn boundary_run_inside_a_jail_refuses_to_nest() {
    require_root();
    let script = format!(
        "{} run -- boundary-should-not-run; echo inner=$?",
        common::boundary_bin()
    );
    for who in [As::Root, As::Nobody] {
        let out = jailed(who, &["--container", "agent"], &script).await;
        assert!(out.status.success(), "{who:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("inner=125"),
            "{who:?}: {}",
            stdout(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains("already jailed (tier userns, container agent)")
                && err.contains("Run the command directly: boundary-should-not-run"),
            "{who:?}: {err}"
        );
    }
}

#[tokio::test]
async fn listed_inbound_ports_reach_servers_in_the_jail_and_are_audited() {
    require_root();
    for who in [As::Root, As::Nobody] {
        let [port, unlisted, empty] = free_ports();
        let dir = TempDir::new("inbound");
        let audit_file = dir.path().join("audit.jsonl");
        let script = format!(
            "python3 -m http.server {unlisted} --bind 127.0.0.1 >/dev/null 2>&1 & \
             exec python3 -m http.server {port} --bind 127.0.0.1"
        );
        let mut cmd = boundary(who);
        cmd.arg("run")
            .args(["--inbound-port", &format!("{port},{empty}")])
            .args(["--audit-file", audit_file.to_str().unwrap()])
            .args(["--", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let body = get_until_ok(port).await;
        assert!(body.contains("Directory listing"), "{who:?}: {body}");
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let (code, _) = http_get(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), "/")
                .await
                .unwrap();
            assert_eq!(code, 200, "{who:?}: the inbound port over IPv6");
        }
        // Not listed: nothing listens in this network namespace.
        assert!(
            tokio::net::TcpStream::connect(local(unlisted))
                .await
                .is_err(),
            "{who:?}: an unlisted port is reachable"
        );
        // Listed, but nothing listens in the jail: accepted here, then closed.
        assert!(http_get(local(empty), "/").await.is_err(), "{who:?}");

        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&audit_file).unwrap();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let served = records
            .iter()
            .find(|r| r["kind"] == "inbound" && r["port"] == port && r.get("refused").is_none())
            .unwrap_or_else(|| panic!("{who:?}: no inbound record for {port}:\n{text}"));
        assert!(
            served["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{served}"
        );
        assert!(served["bytes_in"].as_u64().unwrap() > 0, "{served}");
        assert!(served["bytes_out"].as_u64().unwrap() > 0, "{served}");
        assert!(served["duration_ms"].is_u64(), "{served}");
        assert_eq!(served["tier"], "userns", "{served}");
        assert!(
            records
                .iter()
                .any(|r| r["kind"] == "inbound" && r["port"] == empty && r["refused"] == true),
            "{who:?}: the refused connection is audited:\n{text}"
        );
    }
}

#[tokio::test]
async fn in_a_pod_inbound_connections_are_audited_by_the_sidecar() {
    require_root();
    let mut sidecar = Sidecar::start(&compiled(&[]), &[]).await;
    let port = free_port();
    let script = format!("exec python3 -m http.server {port} --bind 127.0.0.1");
    let mut cmd = in_pod(
        &sidecar,
        As::Nobody,
        "web",
        &["--inbound-port", &port.to_string()],
        &script,
    );
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let body = get_until_ok(port).await;
    assert!(body.contains("Directory listing"), "{body}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap()
        .code();
    assert_eq!(code, Some(143), "SIGTERM reached the server");
    let status = sidecar.status().await;
    let web = jail_of(&status, "web").unwrap();
    assert_eq!(web["state"], "exited", "{status}");
    assert_eq!(web["exitCode"], 143, "{status}");
    let audit = sidecar.audit().await;
    assert!(
        audit.iter().any(|r| r["kind"] == "inbound"
            && r["port"] == port
            && r["container"] == "web"
            && r["tier"] == "userns"
            && r["bytes_out"].as_u64().unwrap_or(0) > 0
            && r.get("refused").is_none()),
        "{audit:?}"
    );
    assert!(sidecar.running());
}

#[tokio::test]
async fn an_inbound_port_in_use_stops_the_jail_with_the_cause() {
    require_root();
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = jailed(As::Nobody, &["--inbound-port", &port], "sleep 20; echo ran").await;
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stdout(&out).contains("ran"), "the command was stopped");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("0.0.0.0:{port}")) && err.contains("listens on it"),
        "{err}"
    );
}

/// A jailed command that runs until its standard input ends and, for every line `PATH` it reads,
/// makes an HTTPS request to `https://allowed.test:PORT/PATH` and prints the answer (or curl's
/// error) and `END PATH`: one process, one trust bundle (the one `boundary run` made at its
/// start) for the whole test.
struct LongRunningAgent {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl LongRunningAgent {
    fn start(sidecar: &Sidecar, port: u16) -> LongRunningAgent {
        let script = format!(
            "while read path; do curl -sS --max-time 10 https://allowed.test:{port}/$path 2>&1 | head -c 300; echo; echo END $path; done"
        );
        let mut cmd = in_pod(sidecar, As::Nobody, "agent", &[], &script);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        LongRunningAgent {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        }
    }

    /// Asks for `path`; what curl printed.
    async fn get(&mut self, path: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        tokio::io::AsyncWriteExt::write_all(stdin, format!("{path}\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        let end = format!("END {path}");
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .expect("the jailed command answers")
                .unwrap()
                .expect("the jailed command still runs");
            if line == end {
                return answer;
            }
            answer.push_str(&line);
            answer.push('\n');
        }
    }

    /// Ends the command; its exit code and `boundary run`'s standard error.
    async fn finish(mut self) -> (Option<i32>, String) {
        drop(self.child.stdin.take());
        let out = tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        (out.status.code(), stderr(&out))
    }
}

/// An HTTPS server for `allowed.test` and a sidecar allowing it, with `extra` flags.
async fn https_pod(upstream_ca: &TestCa, extra: &[&str]) -> (TestServer, Sidecar) {
    let https = TestServer::start(Some(
        upstream_ca.server_config(&["allowed.test"], common::Alpn::Http1),
    ))
    .await;
    let mut args = vec![
        "--resolve",
        "allowed.test=127.0.0.1",
        "--upstream-ca",
        upstream_ca.pem_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start(&compiled(&["domain=allowed.test"]), &args).await;
    (https, sidecar)
}

/// The sidecar's audit trail once `f` holds for it.
async fn audit_until(sidecar: &Sidecar, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let audit = sidecar.audit().await;
        if f(&audit) {
            return audit;
        }
    }
    panic!("{what}: {:?}", sidecar.audit().await);
}

/// Whether the test server answered a request for `/path`.
fn served(answer: &str, path: &str) -> bool {
    answer.contains("hello GET allowed.test") && answer.contains(&format!(" /{path} "))
}

fn mode(path: &std::path::Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

#[tokio::test]
async fn a_restarted_sidecar_keeps_its_ca_so_the_running_jail_keeps_working() {
    require_root();
    let upstream_ca = TestCa::new();
    let dir = TempDir::new("kept-ca");
    let kept = dir.path().join("ca");
    let (https, mut sidecar) = https_pod(&upstream_ca, &["--ca-dir", kept.to_str().unwrap()]).await;
    assert_eq!(mode(&kept.join("ca.key")), 0o600, "the CA key is private");
    assert_eq!(mode(&kept), 0o700);
    assert_eq!(
        std::fs::read_to_string(kept.join("ca.crt")).unwrap(),
        sidecar.ca_pem
    );
    let first_ca = sidecar.ca_pem.clone();

    let mut agent = LongRunningAgent::start(&sidecar, https.port());
    let answer = agent.get("before").await;
    assert!(served(&answer, "before"), "{answer}");
    wait_status(&sidecar, "agent connected", |s| {
        state_is(s, "agent", "connected")
    })
    .await;

    // The sidecar crashes; meanwhile the jail's connections fail closed.
    sidecar.kill().await;
    let requests_before = https.requests.load(std::sync::atomic::Ordering::SeqCst);
    for path in ["during-1", "during-2"] {
        let answer = agent.get(path).await;
        assert!(!answer.contains("hello"), "{answer}");
    }
    assert_eq!(
        https.requests.load(std::sync::atomic::Ordering::SeqCst),
        requests_before,
        "nothing reached the server while the sidecar was down"
    );

    // The kubelet restarts it: the same process's next HTTPS request works, because the CA it
    // trusts since its start is the one the new sidecar presents.
    sidecar.start_again().await;
    assert_eq!(sidecar.ca_pem, first_ca, "the kept CA is reused");
    wait_status(&sidecar, "agent reconnected", |s| {
        state_is(s, "agent", "connected")
    })
    .await;
    let answer = agent.get("after").await;
    assert!(served(&answer, "after"), "{answer}");

    // The restored state says `connected` before the session is back: wait for its report.
    let audit = audit_until(&sidecar, "the refusals reported", |audit| {
        audit
            .iter()
            .any(|r| r["kind"] == "unreachable-sidecar-summary")
    })
    .await;
    let restart = audit
        .iter()
        .find(|r| r["kind"] == "sidecar-restart")
        .unwrap_or_else(|| panic!("no restart record: {audit:?}"));
    assert_eq!(restart["ca"], "reused", "{restart}");
    let jails = restart["jails"].as_array().unwrap();
    assert!(
        jails
            .iter()
            .any(|j| j["container"] == "agent" && j["state"] == "connected"),
        "the states the previous run left: {restart}"
    );
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|r| r["kind"] == "unreachable-sidecar")
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "one record per refused connection: {audit:?}"
    );
    for r in &refused {
        assert_eq!(r["container"], "agent", "{r}");
        assert_eq!(r["host"], "allowed.test", "{r}");
        assert_eq!(r["port"], https.port(), "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["tier"], "userns", "{r}");
        r["at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap();
    }
    let summary = audit
        .iter()
        .find(|r| r["kind"] == "unreachable-sidecar-summary")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(summary["refused"], 2, "{summary}");
    assert_eq!(summary["dropped"], 0, "{summary}");

    let (code, log) = agent.finish().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        log.matches("the boundary sidecar is not reachable").count(),
        1,
        "boundary run says it once per outage, not per connection: {log}"
    );
}

/// The same crash without `--ca-dir`: the restarted sidecar's new CA is not the one the running
/// jail trusts (the bug `--ca-dir` fixes; this shows the test above can fail).
#[tokio::test]
async fn without_a_ca_dir_a_restarted_sidecar_is_not_trusted_by_the_running_jail() {
    require_root();
    let upstream_ca = TestCa::new();
    let (https, mut sidecar) = https_pod(&upstream_ca, &[]).await;
    let mut agent = LongRunningAgent::start(&sidecar, https.port());
    let answer = agent.get("before").await;
    assert!(served(&answer, "before"), "{answer}");
    wait_status(&sidecar, "agent connected", |s| {
        state_is(s, "agent", "connected")
    })
    .await;
    let first_ca = sidecar.ca_pem.clone();
    sidecar.restart().await;
    assert_ne!(sidecar.ca_pem, first_ca);
    wait_status(&sidecar, "agent reconnected", |s| {
        state_is(s, "agent", "connected")
    })
    .await;
    let answer = agent.get("after").await;
    assert!(!answer.contains("hello"), "{answer}");
    assert!(answer.contains("certificate"), "{answer}");
    let audit = sidecar.audit().await;
    let restart = audit
        .iter()
        .find(|r| r["kind"] == "sidecar-restart")
        .unwrap_or_else(|| panic!("the jails' state file tells a restart: {audit:?}"));
    assert_eq!(restart["ca"], "ephemeral", "{restart}");
    let _ = agent.finish().await;
}

#[tokio::test]
async fn a_corrupt_kept_ca_is_replaced_and_the_restart_says_so() {
    require_root();
    let upstream_ca = TestCa::new();
    let dir = TempDir::new("corrupt-ca");
    let kept = dir.path().join("ca");
    std::fs::create_dir(&kept).unwrap();
    // A crash in the middle of a write, as it could look without the rename.
    std::fs::write(kept.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    std::fs::write(kept.join("ca.key"), "").unwrap();
    let (https, sidecar) = https_pod(&upstream_ca, &["--ca-dir", kept.to_str().unwrap()]).await;
    assert_eq!(
        std::fs::read_to_string(kept.join("ca.crt")).unwrap(),
        sidecar.ca_pem
    );
    assert_eq!(mode(&kept.join("ca.key")), 0o600);
    // The new CA works for a jail that starts now.
    let mut agent = LongRunningAgent::start(&sidecar, https.port());
    let answer = agent.get("fresh").await;
    assert!(served(&answer, "fresh"), "{answer}");
    let audit = sidecar.audit().await;
    let restart = audit
        .iter()
        .find(|r| r["kind"] == "sidecar-restart")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(restart["ca"], "new", "{restart}");
    assert!(
        restart["ca_replaced"].as_str().unwrap().contains("ca.crt"),
        "{restart}"
    );
    let (code, log) = agent.finish().await;
    assert_eq!(code, Some(0), "{log}");
}

/// `GET /kept` to `host` as the jail's forwarder sends it; the raw answer.
async fn plain_get(sidecar: &Sidecar, host: &str, port: u16) -> String {
    let mut stream = sidecar.connect(host, port).await;
    let request = format!("GET /kept HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer),
    )
    .await;
    answer
}

#[tokio::test]
async fn a_deleted_policy_file_keeps_the_last_policy_and_says_so_until_it_is_back() {
    require_root();
    let http = TestServer::start(None).await;
    let mut sidecar = Sidecar::start(
        &compiled(&["domain=allowed.test"]),
        &["--resolve", "allowed.test=127.0.0.1"],
    )
    .await;
    let hash = sidecar.status().await["policyHash"].clone();
    assert_eq!(sidecar.status().await["policyFile"], "present");
    sidecar.policy.delete();
    let status = wait_status(&sidecar, "the policy file reported missing", |s| {
        s["policyFile"] == "missing"
    })
    .await;
    assert_eq!(status["policyHash"], hash, "the last policy stays in force");
    assert_eq!(status["policyLoaded"], true);
    let (_, metrics) = http_get(sidecar.metrics, "/metrics").await.unwrap();
    assert!(
        metrics.contains("agent_boundary_policy_file_missing 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_boundary_policy_reloads_total{result=\"error\"} 0"),
        "a deleted file is not a rejected version: {metrics}"
    );
    // Still enforced: the allowed host is reached, another is not.
    let allowed = plain_get(&sidecar, "allowed.test", http.port()).await;
    assert!(served(&allowed, "kept"), "{allowed}");
    let denied = plain_get(&sidecar, "other.test", http.port()).await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    // Said once, however long it stays missing.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    sidecar.policy.restore(&compiled(&["domain=other.test"]));
    let status = wait_status(&sidecar, "the policy file back", |s| {
        s["policyFile"] == "present" && s["policyHash"] != hash
    })
    .await;
    assert_eq!(status["policyLoaded"], true);
    let (_, metrics) = http_get(sidecar.metrics, "/metrics").await.unwrap();
    assert!(
        metrics.contains("agent_boundary_policy_file_missing 0"),
        "{metrics}"
    );
    let denied = plain_get(&sidecar, "allowed.test", http.port()).await;
    assert!(
        denied.starts_with("HTTP/1.1 403"),
        "the returned policy is enforced: {denied}"
    );
    let audit = audit_until(&sidecar, "the policy file's return audited", |audit| {
        audit.iter().any(|r| r["kind"] == "policy-restored")
    })
    .await;
    let missing: Vec<&Value> = audit
        .iter()
        .filter(|r| r["kind"] == "policy-missing")
        .collect();
    assert_eq!(missing.len(), 1, "{audit:?}");
    assert_eq!(missing[0]["policyHash"], hash);
    assert_eq!(missing[0]["kept"], "last-loaded");
    assert!(
        audit.iter().any(|r| r["kind"] == "policy-restored"),
        "{audit:?}"
    );
    assert!(sidecar.running());
}

#[tokio::test]
async fn status_counts_what_the_jail_was_denied_by_destination_for_the_operator() {
    require_root();
    let sidecar = Sidecar::start(&compiled(&["domain=allowed.test"]), &[]).await;
    let before = sidecar.status().await;
    assert!(before.get("denied").is_none(), "{before}");
    let session = before["session"].as_str().unwrap().to_owned();
    assert!(!session.is_empty(), "{before}");
    // A real client in a pod's jail: two uploads under one path prefix (the query, which may
    // carry a secret, is never kept) and a read elsewhere.
    let script = "for p in '/api/v1/paste?key=s3cret' /api/v1/other /; do \
                  curl -s -o /dev/null -w '%{http_code}\\n' -X POST http://paste.test$p; done";
    let out = output(in_pod(&sidecar, As::Nobody, "agent", &[], script)).await;
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["403"; 3],
        "{}",
        stderr(&out)
    );
    let status = wait_status(&sidecar, "three denials counted", |s| {
        s["denied"]
            .as_array()
            .is_some_and(|d| d.iter().map(|e| e["count"].as_i64().unwrap()).sum::<i64>() == 3)
    })
    .await;
    let mut denied: Vec<(String, String, String, i64)> = status["denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["container"], "agent", "{d}");
            assert_eq!(d["decision"], "deny", "{d}");
            assert_eq!(d["port"], 80, "{d}");
            assert!(d["firstSeen"].as_str().unwrap() <= d["lastSeen"].as_str().unwrap());
            (
                d["host"].as_str().unwrap().to_owned(),
                d["method"].as_str().unwrap().to_owned(),
                d["pathPrefix"].as_str().unwrap().to_owned(),
                d["count"].as_i64().unwrap(),
            )
        })
        .collect();
    denied.sort();
    assert_eq!(
        denied,
        [
            ("paste.test".into(), "POST".into(), "/".into(), 1),
            ("paste.test".into(), "POST".into(), "/api/v1".into(), 2),
        ]
    );
    assert!(!status.to_string().contains("s3cret"), "{status}");
    assert_eq!(status["session"], session.as_str());
}

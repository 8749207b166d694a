//! The advisor and the lint with the real binary: `boundary check --lint` (exit codes, text and
//! JSON, the annotation and flag that silence a code), `boundary suggest` on recorded audit
//! files (the policy reads back with `boundary check --policy` and allows every request it was
//! made from, nothing else), bad input, `--from-status`, and the whole loop in a real jail:
//! an agent-like script in Audit mode with no rule against loopback HTTPS servers, `boundary
//! suggest --all` of its audit, the same script in Enforce under the suggested policy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{As, TempDir, TestCa, TestServer, boundary, jailed, output, require_root, stderr};
use tokio::io::AsyncWriteExt as _;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/tests/golden/advisor")
        .join(name)
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `boundary SUBCOMMAND ARGS` with `stdin`: (exit code, stdout, stderr).
async fn boundary_with(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut cmd = boundary(As::Root);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning boundary");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).await.unwrap();
    drop(pipe);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let mut cmd = boundary(As::Root);
    cmd.args(args);
    let out = output(cmd).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

#[tokio::test]
async fn check_lint_warns_with_exit_codes_and_codes_can_be_silenced() {
    let (code, out, err) = run(&[
        "check",
        "--lint",
        "--allow",
        "domain=pastebin.com",
        "--allow",
        "domain=registry.npmjs.org method=GET",
        "--preset",
        "github",
    ])
    .await;
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(
            "warning: --preset[0] (github): domain=api.github.com: publish-anywhere \
             api.github.com: POST /gists"
        ),
        "{out}"
    );
    assert!(
        lines[1].starts_with("warning: --allow[0]: publish-anywhere pastebin.com: "),
        "{out}"
    );

    // Nothing to warn about: exit 0.
    let (code, out, _) = run(&["check", "--lint", "--preset", "npm,pypi"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("no lint warnings"), "{out}");

    // JSON, and a flag that silences a code.
    let (code, out, _) = run(&[
        "check",
        "--lint",
        "--output",
        "json",
        "--allow",
        "domain=*.com",
        "--allow",
        "domain=*.example.com",
        "--lint-ignore",
        "broad-write",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let warnings = json["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{json:#}");
    assert_eq!(warnings[0]["code"], "wildcard-tld");
    assert_eq!(warnings[0]["field"], "--allow[0]");
    assert_eq!(json["lintVersion"], 1);

    // A policy file: places in the file's terms; its annotation silences its own warnings; a
    // deny rule of the same policy that covers the rule silences it too.
    let dir = TempDir::new("lint");
    let file = write(
        &dir,
        "p.yaml",
        "apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata:\n  name: agent\n\
         spec:\n  podSelector: {}\n  http:\n    - domains: [api.example.com, webhook.site]\n  \
         allow: [\"domain=paste.ee\"]\n  deny: [\"domain=paste.ee\"]\n---\n\
         apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata:\n  name: quiet\n  \
         annotations:\n    agentboundary.dev/lint-ignore: \"any-host\"\nspec:\n  podSelector: {}\n  \
         allow: [\"domain=*\"]\n",
    );
    let (code, out, err) = run(&["check", "--lint", "--policy", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>().len(),
        1,
        "only webhook.site: {out}"
    );
    assert!(
        out.starts_with("warning: agent: spec.http[0].domains[1]: publish-anywhere webhook.site: "),
        "{out}"
    );

    // Bad input: exit 2 with the reason.
    let (code, _, err) = run(&["check", "--lint", "--lint-ignore", "nope"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("unknown code(s) nope"), "{err}");
    let (code, _, err) = run(&["check", "--lint", "--policy", "/nonexistent/p.yaml"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/p.yaml"), "{err}");
    let (code, _, err) = run(&["check", "--lint", "https://a.example/"]).await;
    assert_eq!(code, 2, "{err}");
}

/// `boundary check --policy FILE` of each request of an audit file: (allowed, denied) URLs.
async fn check_each(policy: &Path, audit: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(audit).unwrap();
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["denied_by"] == "deny-rule" {
            continue;
        }
        let host = r["host"].as_str().unwrap();
        let port = r["port"].as_u64().unwrap();
        let mut args = vec!["check".to_owned(), "--policy".to_owned()];
        args.push(policy.to_str().unwrap().to_owned());
        let url = match r["scheme"].as_str().unwrap() {
            "tcp" => format!("tcp://{host}:{port}"),
            scheme => {
                args.push(r["method"].as_str().unwrap().to_owned());
                format!("{scheme}://{host}:{port}{}", r["path"].as_str().unwrap())
            }
        };
        args.push(url.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&refs).await;
        match code {
            0 => allowed.push(url),
            1 => denied.push(url),
            _ => panic!("{url}: {out}{err}"),
        }
    }
    (allowed, denied)
}

#[tokio::test]
async fn suggest_prints_the_golden_policy_which_boundary_check_reads_back() {
    let dir = TempDir::new("suggest");
    let audit = golden("audit-run.jsonl");
    let (code, yaml, err) = run(&[
        "suggest",
        "--name",
        "agent",
        "--namespace",
        "agents",
        "--pod-selector",
        "app=agent",
        audit.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        yaml,
        std::fs::read_to_string(golden("audit-run.yaml")).unwrap()
    );
    let policy = write(&dir, "policy.yaml", &yaml);
    let (allowed, denied) = check_each(&policy, &audit).await;
    assert_eq!(denied, Vec::<String>::new());
    assert_eq!(allowed.len(), 21);
    // Nothing it did not see: another host, another method, another path.
    for request in [
        vec!["https://other.example.test/"],
        vec!["DELETE", "http://api.example.test:18080/v1/items/4"],
        vec!["GET", "http://api.example.test:18080/v2/items/1"],
        vec!["http://api.example.test:80/v1/items/1"],
        vec!["tcp://db.example.test:5433"],
        vec!["POST", "http://pastebin.com:18080/api/api_post.php"],
    ] {
        let mut args = vec!["check", "--policy", policy.to_str().unwrap()];
        args.extend(request.iter().copied());
        let (code, out, _) = run(&args).await;
        assert_eq!(code, 1, "{request:?}: {out}");
    }

    // The same from standard input, as `kubectl logs --prefix` prints it.
    let logs = std::fs::read_to_string(golden("kubectl-logs.txt")).unwrap();
    let (code, from_logs, err) = boundary_with(
        &[
            "suggest",
            "--name",
            "agent",
            "--namespace",
            "agents",
            "--pod-selector",
            "app=agent",
            "-",
        ],
        &logs,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(from_logs, yaml);
    assert!(
        err.contains("skipped 1 line(s) that are not audit records: line 4 of standard input"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_reported_with_its_place_and_never_panics() {
    let dir = TempDir::new("suggest-bad");
    let (code, _, err) = run(&["suggest", "/nonexistent/audit.jsonl"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/audit.jsonl"), "{err}");
    let record = std::fs::read_to_string(golden("audit-run.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let mixed = write(
        &dir,
        "x.jsonl",
        &format!(
            "{record}\nnot json\n{{\"kind\":\"inbound\"}}\n{{\"decision\":\"allow\"}}\n\u{0}\u{ff}garbage\n\n{}\n",
            &record[..record.len() / 2]
        ),
    );
    let (code, yaml, err) = run(&["suggest", mixed.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let name = mixed.display();
    assert!(
        err.contains(&format!(
            "skipped 4 line(s) that are not audit records: line 2 of {name}, line 4 of {name}, \
             line 5 of {name}, line 7 of {name}"
        )),
        "{err}"
    );
    assert!(yaml.contains("paths: [\"/v1/items/1\"]"), "{yaml}");
    let (code, _, err) = run(&["suggest", "--pod-selector", "novalue"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["suggest", "--mode", "sometimes", mixed.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = boundary_with(&["suggest", "--from-status", "-"], "kind: Pod\n").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--from-status standard input"), "{err}");
}

#[tokio::test]
async fn from_status_keeps_the_spec_and_appends_what_was_denied() {
    let object = r#"{
  "apiVersion": "agentboundary.dev/v1alpha1",
  "kind": "BoundaryPolicy",
  "metadata": {"name": "agent", "namespace": "agents", "uid": "1234", "generation": 3},
  "spec": {"podSelector": {"matchLabels": {"app": "agent"}}, "mode": "Audit",
           "presets": ["npm"], "allow": ["domain=api.example.com method=GET"]},
  "status": {"observedGeneration": 3, "deniedDestinations": [
    {"host": "api.example.com", "port": 443, "method": "POST", "pathPrefix": "/v1/jobs",
     "decision": "would-deny", "count": 12, "firstSeen": "2026-01-01T00:00:00Z",
     "lastSeen": "2026-01-01T01:00:00Z"},
    {"host": "db.example.com", "port": 5432, "decision": "would-deny", "count": 1,
     "firstSeen": "2026-01-01T00:00:00Z", "lastSeen": "2026-01-01T00:00:00Z"}]}
}"#;
    let (code, yaml, err) = boundary_with(&["suggest", "--from-status", "-"], object).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        yaml.contains("  name: \"agent\"\n  namespace: \"agents\"\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("  allow:\n    - domain=api.example.com method=GET\n"),
        "{yaml}"
    );
    assert!(yaml.contains("  presets:\n    - \"npm\"\n"), "{yaml}");
    assert!(
        yaml.contains(
            "# 12 requests, 12 denied, 2026-01-01T00:00:00.000Z .. 2026-01-01T01:00:00.000Z"
        ),
        "{yaml}"
    );
    let dir = TempDir::new("from-status");
    let policy = write(&dir, "p.yaml", &yaml);
    let policy = policy.to_str().unwrap();
    for (request, expected) in [
        (vec!["POST", "https://api.example.com/v1/jobs/9/run"], 0),
        (vec!["GET", "https://api.example.com/anything"], 0),
        (vec!["GET", "https://registry.npmjs.org/x"], 0),
        (vec!["tcp://db.example.com:5432"], 0),
        (vec!["POST", "https://api.example.com/v2/x"], 1),
    ] {
        let mut args = vec!["check", "--mode", "enforce", "--policy", policy];
        args.extend(request.iter().copied());
        let (code, out, err) = run(&args).await;
        assert_eq!(code, expected, "{request:?}: {out}{err}\n{yaml}");
    }
}

/// The advisor loop in a real jail: Audit with no rule, `suggest --all`, Enforce with the
/// suggestion: everything the script did works, a host it never touched is refused.
#[tokio::test]
async fn the_suggested_policy_lets_the_same_agent_work_in_enforce_and_nothing_else() {
    require_root();
    let ca = TestCa::new();
    let names = ["api.agent.test", "files.agent.test", "never.agent.test"];
    let https = TestServer::start(Some(ca.server_config(&names, common::Alpn::Http1))).await;
    let dir = TempDir::new("suggest-loop");
    let audit = dir.path().join("audit.jsonl");
    let p = https.port();
    let agent = format!(
        "set -e; \
         curl -sSf https://api.agent.test:{p}/v1/models; \
         curl -sSf -X POST -d '{{\"q\":1}}' https://api.agent.test:{p}/v1/chat; \
         for i in 1 2 3; do curl -sSf https://files.agent.test:{p}/pkg/$i.tgz; done; \
         python3 -c \"import urllib.request,ssl; print(urllib.request.urlopen('https://api.agent.test:{p}/v1/usage').read().decode())\"; \
         echo agent-done"
    );
    let mut base: Vec<String> = Vec::new();
    for name in names {
        base.extend(["--resolve".to_owned(), format!("{name}=127.0.0.1")]);
    }
    base.extend([
        "--upstream-ca".to_owned(),
        ca.pem_path.to_str().unwrap().to_owned(),
    ]);
    let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
    args.extend(["--mode", "audit", "--audit-file", audit.to_str().unwrap()]);
    let out = jailed(As::Nobody, &args, &agent).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("agent-done"),
        "{text}{}",
        stderr(&out)
    );

    let (code, yaml, err) = run(&["suggest", "--all", audit.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(yaml.contains("domains: [\"api.agent.test\"]"), "{yaml}");
    assert!(!yaml.contains("never.agent.test"), "{yaml}");
    let policy = write(&dir, "policy.yaml", &yaml);

    let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
    args.extend(["--mode", "enforce", "--policy", policy.to_str().unwrap()]);
    let out = jailed(As::Nobody, &args, &agent).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("agent-done"),
        "the agent failed under its suggested policy:\n{yaml}\n{text}{}",
        stderr(&out)
    );
    let refused = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' https://never.agent.test:{p}/ 2>&1; echo; \
         curl -sS -o /dev/null -w '%{{http_code}}' -X DELETE https://api.agent.test:{p}/v1/models; echo"
    );
    let out = jailed(As::Nobody, &args, &refused).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        !lines[0].ends_with("200"),
        "never.agent.test reached: {text}"
    );
    assert_eq!(lines.last().copied(), Some("403"), "{text}");
}

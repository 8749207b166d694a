//! Policy files on a laptop, with the real binary: `boundary check` (exit codes, text and JSON,
//! errors with their place) and `boundary run --policy` in a real jail with curl, then JVMs in
//! the jail trusting the proxy's CA with no flags (`java Fetch.java`, `HttpClient` and
//! `HttpsURLConnection`).

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use common::{
    As, TempDir, TestCa, TestServer, boundary, jailed, output, require_root, stderr, stdout,
};

/// A namespace's policy in Audit (allowing GETs under `/x` of `allowed.test`, on any port, and
/// plain TCP to `git.test:22`) and the cluster administrators' deny rule, in Enforce.
const POLICY: &str = "\
# the file a cluster uses
apiVersion: agentboundary.dev/v1alpha1
kind: BoundaryPolicy
metadata:
  name: agent
  namespace: agents
spec:
  podSelector:
    matchLabels: {app: agent}
  mode: Audit
  allow:
    - domain=allowed.test method=GET path=/x/*
  http:
    - domains: [api.allowed.test]
      methods: [GET]
      ports: [8443]
  tcp:
    - {domain: git.test, ports: [22]}
---
apiVersion: agentboundary.dev/v1alpha1
kind: ClusterBoundaryPolicy
metadata:
  name: no-secrets
spec:
  namespaceSelector: {}
  podSelector: {}
  deny:
    - domain=allowed.test path=/x/secret/*
";

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `boundary check ARGS`: (exit code, stdout, stderr).
async fn check(args: &[&str]) -> (i32, String, String) {
    let mut cmd = boundary(As::Root);
    cmd.arg("check").args(args);
    let out = output(cmd).await;
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

#[tokio::test]
async fn check_prints_the_decision_the_rule_and_why_with_exit_codes() {
    let dir = TempDir::new("check");
    let file = write(&dir, "policy.yaml", POLICY);
    let policy = file.to_str().unwrap();

    let (code, out, err) = check(&["--policy", policy, "GET", "https://allowed.test/x/1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "allow: GET https://allowed.test:443/x/1 (Enforce mode; forwarded upstream)\n  \
         allowed by: agent spec.allow[0]: domain=allowed.test method=GET path=/x/*\n"
    );
    assert!(
        err.contains("podSelector and containers are ignored"),
        "the laptop's notes: {err}"
    );

    // Enforce (the cluster policy) beats Audit: the deny rule refuses it.
    let (code, out, _) =
        check(&["--policy", policy, "GET", "https://allowed.test/x/secret/k"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(
            "deny: GET https://allowed.test:443/x/secret/k (Enforce mode; answered 403)\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("  deny rule: ClusterBoundaryPolicy no-secrets spec.deny[0]: domain=allowed.test path=/x/secret/*\n"),
        "{out}"
    );
    assert!(
        out.contains("  beats the allow rule: agent spec.allow[0]"),
        "{out}"
    );

    // Method, path and port missed: each named, with the rule.
    let (code, out, _) = check(&["--policy", policy, "POST", "https://allowed.test/x/1"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("method not allowed by agent spec.allow[0]"),
        "{out}"
    );
    let (code, out, _) = check(&["--policy", policy, "https://allowed.test/y"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("path not allowed by agent spec.allow[0]"),
        "{out}"
    );
    let (code, out, _) = check(&["--policy", policy, "https://api.allowed.test:8443/v1"]).await;
    assert_eq!(code, 0, "a non-default port: {out}");
    assert!(out.contains("agent spec.http[0]"), "{out}");
    let (code, out, _) = check(&["--policy", policy, "http://api.allowed.test:8080/v1"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("port not allowed by agent spec.http[0]"),
        "{out}"
    );

    // No rule for the host: TLS is refused before any certificate.
    let (code, out, _) = check(&["--policy", policy, "https://evil.test/"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("refused with a TLS alert"), "{out}");
    assert!(
        out.contains("why: no rule allows HTTPS to evil.test:443"),
        "{out}"
    );

    // TCP rules.
    let (code, out, _) = check(&["--policy", policy, "tcp://git.test:22"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("relayed as plain TCP"), "{out}");
    assert!(out.contains("agent spec.tcp[0]"), "{out}");
    let (code, _, _) = check(&["--policy", policy, "tcp://git.test:23"]).await;
    assert_eq!(code, 1);

    // Flags join the file; --mode overrides the policies' modes.
    let (code, out, _) = check(&[
        "--policy",
        policy,
        "--allow",
        "domain=evil.test",
        "https://evil.test/",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed by: --allow[0]: domain=evil.test"),
        "{out}"
    );
    let (code, out, _) = check(&[
        "--policy",
        policy,
        "--deny",
        "domain=allowed.test",
        "https://allowed.test/x/1",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("deny rule: --deny[0]: domain=allowed.test"),
        "{out}"
    );

    // Audit only (the namespace's policy alone): let through, said so, exit 0.
    let audit_only = write(&dir, "audit.yaml", POLICY.split("---").next().unwrap());
    let audit_only = audit_only.to_str().unwrap();
    let (code, out, _) = check(&["--policy", audit_only, "https://evil.test/"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("would-deny: GET https://evil.test:443/ (Audit mode;"),
        "{out}"
    );
    let (code, out, _) = check(&[
        "--policy",
        audit_only,
        "--mode",
        "enforce",
        "https://evil.test/",
    ])
    .await;
    assert_eq!(code, 1, "{out}");

    // JSON for CI.
    let (code, out, _) = check(&[
        "--policy",
        policy,
        "--output",
        "json",
        "PUT",
        "https://allowed.test/x/secret/a?b=1",
    ])
    .await;
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["mode"], "Enforce");
    assert_eq!(v["stage"], "request");
    assert_eq!(v["rule"]["policy"], "no-secrets");
    assert_eq!(v["rule"]["cluster"], true);
    assert_eq!(v["rule"]["field"], "spec.deny[0]");
    assert_eq!(v["rule"]["deny"], true);
    assert_eq!(v["path"], "/x/secret/a");
    assert_eq!(v["port"], 443);
}

/// Header and query conditions: `--header` and the URL's query reach the engine.
#[tokio::test]
async fn check_passes_headers_and_the_query_to_the_rules() {
    let dir = TempDir::new("check-headers");
    let file = write(
        &dir,
        "policy.yaml",
        "apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata: {name: agent}\n\
         spec:\n  podSelector: {}\n  http:\n    - domains: [api.test]\n      \
         headers: {X-Team: red-*}\n      query: {ref: main}\n",
    );
    let policy = file.to_str().unwrap();
    let url = "https://api.test/a?ref=main";
    let (code, out, err) = check(&["--policy", policy, "--header", "x-team: red-1", url]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("allowed by: agent spec.http[0]"), "{out}");
    let (code, out, _) = check(&["--policy", policy, url]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("headers not allowed by agent spec.http[0]"),
        "{out}"
    );
    let (code, out, _) = check(&[
        "--policy",
        policy,
        "--header",
        "X-Team: red-1",
        "https://api.test/a?ref=dev",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        out.contains("query not allowed by agent spec.http[0]"),
        "{out}"
    );
    let (code, _, err) = check(&["--policy", policy, "--header", "X-Team", url]).await;
    assert_eq!(code, 2);
    assert!(err.contains("expected 'Name: value'"), "{err}");
}

#[tokio::test]
async fn check_refuses_bad_input_with_exit_code_2_and_the_place() {
    let dir = TempDir::new("check-bad");
    let typo = write(
        &dir,
        "typo.yaml",
        &POLICY.replace(
            "    - {domain: git.test",
            "    - {domian: x, domain: git.test",
        ),
    );
    let (code, out, err) = check(&["--policy", typo.to_str().unwrap(), "https://a.test/"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.is_empty());
    assert!(
        err.contains(
            "typo.yaml: document 1 (BoundaryPolicy agent), spec.tcp[0].domian: unknown field"
        ),
        "{err}"
    );
    let bad_rule = write(
        &dir,
        "rule.yaml",
        &POLICY.replace(
            "domain=allowed.test path=/x/secret/*",
            "domain=allowed.test metod=GET",
        ),
    );
    let (code, _, err) = check(&["--policy", bad_rule.to_str().unwrap(), "https://a.test/"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("document 2 (ClusterBoundaryPolicy no-secrets), spec.deny[0] column 21: "),
        "{err}"
    );
    let other_kind = write(
        &dir,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    );
    let (code, _, err) =
        check(&["--policy", other_kind.to_str().unwrap(), "https://a.test/"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("document 1, kind: kind \"ConfigMap\" is not a policy"),
        "{err}"
    );
    let syntax = write(
        &dir,
        "syntax.yaml",
        "kind: BoundaryPolicy\nmetadata: {name: a\nspec: {}\n",
    );
    let (code, _, err) = check(&["--policy", syntax.to_str().unwrap(), "https://a.test/"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("document 1, line 3 column "), "{err}");
    for args in [
        &["--allow", "domain=a.test", "ftp://a.test/"][..],
        &["--allow", "domain=a.test", "tcp://a.test"][..],
        &["--allow", "metod=GET", "https://a.test/"][..],
        &["--policy", "/nonexistent.yaml", "https://a.test/"][..],
        &["--allow", "domain=a.test"][..],
    ] {
        let (code, _, err) = check(args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.is_empty());
    }
}

/// `boundary run --policy` (and `BOUNDARY_POLICY`) in a real jail, with curl.
#[tokio::test]
async fn run_enforces_a_policy_file_in_a_real_jail() {
    require_root();
    let ca = TestCa::new();
    let https = TestServer::start(Some(
        ca.server_config(&["allowed.test", "evil.test"], common::Alpn::Http1),
    ))
    .await;
    let dir = TempDir::new("run-policy");
    let file = write(&dir, "policy.yaml", POLICY);
    let script = format!(
        "curl -sS https://allowed.test:{p}/x/1; echo; \
         curl -sS https://allowed.test:{p}/x/secret/k | head -c 400; echo; \
         curl -sS https://evil.test:{p}/ 2>&1 | head -c 300; echo",
        p = https.port()
    );
    let base = [
        "--resolve",
        "allowed.test=127.0.0.1",
        "--resolve",
        "evil.test=127.0.0.1",
        "--upstream-ca",
        ca.pem_path.to_str().unwrap(),
    ];
    let mut args = base.to_vec();
    args.extend(["--policy", file.to_str().unwrap()]);
    let out = jailed(As::Nobody, &args, &script).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(
        text.contains(&format!("hello GET allowed.test:{} /x/1", https.port())),
        "{text}"
    );
    assert!(
        text.contains("Denied by a deny rule")
            && text.contains("ClusterBoundaryPolicy no-secrets spec.deny[0]"),
        "{text}"
    );
    assert!(text.contains("alert access denied"), "{text}");
    assert_eq!(
        https.requests.load(Ordering::SeqCst),
        1,
        "only /x/1 reached it"
    );

    // The same file from the environment, joined by a flag.
    let mut cmd = boundary(As::Nobody);
    cmd.env(boundary_api::contract::boundary_env::POLICY, &file)
        .arg("run")
        .args(base)
        .args(["--allow", "domain=evil.test"])
        .args(["--", "sh", "-c"])
        .arg(format!("curl -sS https://evil.test:{}/e", https.port()));
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("hello GET evil.test:{} /e", https.port())),
        "{}",
        stdout(&out)
    );

    // An invalid file stops it before anything starts.
    let bad = write(
        &dir,
        "bad.yaml",
        &POLICY.replace("mode: Audit", "mode: Sometimes"),
    );
    let out = jailed(As::Nobody, &["--policy", bad.to_str().unwrap()], "true").await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("document 1 (BoundaryPolicy agent), spec.mode: unknown variant"),
        "{}",
        stderr(&out)
    );
}

const FETCH_JAVA: &str = r#"
import java.net.URI;
import java.net.URL;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import javax.net.ssl.HttpsURLConnection;

public class Fetch {
    public static void main(String[] args) {
        // One JVM for every case: a JVM's start (and compiling this file) takes seconds.
        for (String client : new String[] {"httpclient", "urlconnection"}) {
            for (String url : args) {
                try {
                    System.out.println(client + " " + fetch(client, url));
                } catch (Exception e) {
                    System.out.println(client + " failed: " + e);
                }
            }
        }
    }

    static String fetch(String client, String url) throws Exception {
        if (client.equals("httpclient")) {
            HttpResponse<String> r = HttpClient.newHttpClient().send(
                HttpRequest.newBuilder(URI.create(url)).build(),
                HttpResponse.BodyHandlers.ofString());
            return r.statusCode() + " " + r.body();
        }
        HttpsURLConnection c = (HttpsURLConnection) new URL(url).openConnection();
        int status = c.getResponseCode();
        byte[] body = (status >= 400 ? c.getErrorStream() : c.getInputStream()).readAllBytes();
        return status + " " + new String(body).lines().findFirst().orElse("");
    }
}
"#;

/// The JDKs of this machine to try: Debian's `java`, and Temurin's layout when present.
fn jdks() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/usr/bin/java")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/jvm") {
        out.extend(
            entries
                .flatten()
                .map(|e| e.path().join("bin/java"))
                .filter(|p| p.to_string_lossy().contains("temurin") && p.is_file()),
        );
    }
    out.retain(|p| p.is_file());
    out
}

/// A script running `Fetch.java` with every JDK: `maven.test` (allowed) then `evil.test`.
fn java_script(jdks: &[PathBuf], source: &std::path::Path, port: u16) -> String {
    use std::fmt::Write as _;
    let mut script = String::new();
    for java in jdks {
        // No flags: the JVM's default trust store is the jail's.
        let _ = write!(
            script,
            "{} -XX:-UsePerfData {} https://maven.test:{port}/repo/a.pom https://evil.test:{port}/x; ",
            java.display(),
            source.display()
        );
    }
    script
}

/// Every JDK's both clients fetched from `maven.test` and were refused `evil.test` (`refusal`:
/// the TLS handshake's alert, or the explicit proxy's 403 to CONNECT), with no certificate
/// error; nothing else reached the upstream.
fn assert_java_results(
    text: &str,
    jdks: &[PathBuf],
    port: u16,
    upstream: &TestServer,
    refusal: &str,
) {
    for client in ["httpclient", "urlconnection"] {
        let ok = format!("{client} 200 hello GET maven.test:{port} /repo/a.pom");
        assert_eq!(text.matches(&ok).count(), jdks.len(), "{ok}:\n{text}");
        let denied = text
            .lines()
            .filter(|l| l.starts_with(&format!("{client} failed: ")) && l.contains(refusal))
            .count();
        assert_eq!(
            denied,
            jdks.len(),
            "evil.test refused in the handshake:\n{text}"
        );
    }
    assert!(!text.contains("PKIX"), "no certificate errors:\n{text}");
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        2 * jdks.len(),
        "only maven.test reached the upstream"
    );
}

/// Runs `cmd` to completion: JVMs that compile their source first take a while on a busy
/// machine, so the limit is two minutes rather than `common::output`'s 30 s.
async fn slow_output(mut cmd: tokio::process::Command) -> std::process::Output {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    tokio::time::timeout(std::time::Duration::from_mins(2), cmd.output())
        .await
        .expect("the JVMs finished within 2 minutes")
        .expect("spawning boundary")
}

fn java_setup() -> (Vec<PathBuf>, TestCa, TempDir, PathBuf) {
    let jdks = jdks();
    assert!(
        !jdks.is_empty(),
        "no java: tests/scripts/setup.sh installs openjdk-17-jdk-headless"
    );
    let ca = TestCa::new();
    let dir = TempDir::new("java");
    let source = write(&dir, "Fetch.java", FETCH_JAVA);
    (jdks, ca, dir, source)
}

/// Standalone, in a namespaced tier (the store bound over the JDKs' `cacerts`) and in the
/// landlock tier (no mount namespace: `JAVA_TOOL_OPTIONS` names the store and the proxy).
#[tokio::test]
async fn java_in_the_jail_trusts_the_proxy_ca_with_no_flags() {
    require_root();
    let (jdks, ca, _dir, source) = java_setup();
    for tier in ["userns", "landlock"] {
        let https = TestServer::start(Some(
            ca.server_config(&["maven.test", "evil.test"], common::Alpn::Http1),
        ))
        .await;
        let p = https.port();
        let args = [
            "--tier",
            tier,
            "--allow",
            "domain=maven.test",
            "--resolve",
            "maven.test=127.0.0.1",
            "--resolve",
            "evil.test=127.0.0.1",
            "--upstream-ca",
            ca.pem_path.to_str().unwrap(),
        ];
        let mut cmd = boundary(As::Nobody);
        cmd.arg("run")
            .args(args)
            .args(["--", "sh", "-c", &java_script(&jdks, &source, p)]);
        let out = slow_output(cmd).await;
        let text = stdout(&out);
        assert!(out.status.success(), "{tier}: {}\n{text}", stderr(&out));
        let refusal = if tier == "landlock" { "403" } else { "SSL" };
        assert_java_results(&text, &jdks, p, &https, refusal);
    }
}

/// In a pod the jail trusts the sidecar's CA: the same Java store, built from it.
#[tokio::test]
async fn java_in_a_pods_jail_trusts_the_sidecars_ca() {
    require_root();
    let (jdks, ca, _dir, source) = java_setup();
    let https = TestServer::start(Some(
        ca.server_config(&["maven.test", "evil.test"], common::Alpn::Http1),
    ))
    .await;
    let p = https.port();
    let sidecar = common::Sidecar::for_upstream(
        &common::compiled(&["domain=maven.test"]),
        &["maven.test", "evil.test"],
        Some(&ca),
        &[],
    )
    .await;
    let mut cmd = boundary(As::Nobody);
    cmd.arg("run")
        .args(["--proxy-socket", sidecar.socket.to_str().unwrap()])
        .args(["--", "sh", "-c", &java_script(&jdks, &source, p)])
        .env("BOUNDARY_CONTAINER_NAME", "agent");
    let out = slow_output(cmd).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert_java_results(&text, &jdks, p, &https, "SSL");
}

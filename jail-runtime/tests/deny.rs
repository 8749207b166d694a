//! Deny rules with real clients and servers on loopback: a `ClusterBoundaryPolicy`'s entry in the
//! sidecar's compiled policy file (`cluster: true`), whose deny rules beat the namespace's allow
//! rules over plain HTTP, intercepted HTTPS, TLS before any certificate, plain TCP and CONNECT, in
//! Enforce and in Audit mode; and `boundary run --deny` in a real jail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{As, Sidecar, TempDir, TestCa, TestServer, jailed, require_root, stderr, stdout};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const UPLOAD_DENY: &str = "ClusterBoundaryPolicy no-exfiltration spec.deny[0]: domain=api.test method=POST path=/upload/*";
const PASTE_DENY: &str = "ClusterBoundaryPolicy no-exfiltration spec.deny[1]: domain=paste.test";

/// The compiled policy file as the operator publishes it: the cluster administrators' entry and
/// the namespace's own policy, which allows every host and plain TCP to `paste.test`.
fn policy(mode: &str, tcp_port: u16) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "namespace": "agents",
        "policies": [
            {
                "name": "agent",
                "podSelector": {},
                "mode": mode,
                "allow": ["domain=*"],
                "tcp": [
                    {"domain": "paste.test", "ports": [tcp_port]},
                    {"domain": "api.test", "ports": [tcp_port]}
                ]
            },
            {
                "name": "no-exfiltration",
                "cluster": true,
                "podSelector": {},
                "mode": mode,
                "deny": ["domain=api.test method=POST path=/upload/*", "domain=paste.test"]
            }
        ]
    })
}

/// A server that speaks first (like ssh) and counts its connections.
async fn banner_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"SSH-2.0-test\r\n").await;
        }
    });
    (port, count)
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn request<S>(io: S, method: &str, path: &str, host: &str) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Everything the server sends until it closes (10 s at most): `None` if it stays open.
async fn read_to_close(mut stream: tokio::net::UnixStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

fn find(
    records: &[serde_json::Value],
    what: impl Fn(&serde_json::Value) -> bool,
) -> &serde_json::Value {
    records
        .iter()
        .find(|r| what(r))
        .unwrap_or_else(|| panic!("no such audit record in {records:#?}"))
}

/// Upstream servers on loopback and a sidecar enforcing [`policy`] in `mode`.
struct Setup {
    http: TestServer,
    https: TestServer,
    tcp_port: u16,
    tcp_connections: Arc<AtomicUsize>,
    sidecar: Sidecar,
    _ca: TestCa,
}

impl Setup {
    async fn start(mode: &str) -> Setup {
        let ca = TestCa::new();
        let http = TestServer::start(None).await;
        let https = TestServer::start(Some(
            ca.server_config(&["api.test", "paste.test"], common::Alpn::Http1),
        ))
        .await;
        let (tcp_port, tcp_connections) = banner_server().await;
        let sidecar = Sidecar::start(
            &policy(mode, tcp_port),
            &[
                "--resolve",
                "api.test=127.0.0.1",
                "--resolve",
                "paste.test=127.0.0.1",
                "--upstream-ca",
                ca.pem_path.to_str().unwrap(),
            ],
        )
        .await;
        Setup {
            http,
            https,
            tcp_port,
            tcp_connections,
            sidecar,
            _ca: ca,
        }
    }
}

#[tokio::test]
async fn a_cluster_deny_rule_with_method_and_path_denies_only_matching_requests() {
    require_root();
    let Setup {
        http,
        https,
        sidecar,
        ..
    } = Setup::start("Enforce").await;
    let api = format!("api.test:{}", http.port());

    // Plain HTTP: the deny rule's method and path decide, request by request.
    let stream = sidecar.connect("api.test", http.port()).await;
    let (status, body) = request(stream, "GET", "/upload/a", &api).await;
    assert_eq!(status, 200, "GET is not denied: {body}");
    let stream = sidecar.connect("api.test", http.port()).await;
    let (status, body) = request(stream, "POST", "/other", &api).await;
    assert_eq!(status, 200, "another path is not denied: {body}");
    let before = http.requests.load(Ordering::SeqCst);
    let stream = sidecar.connect("api.test", http.port()).await;
    let (status, body) = request(stream, "POST", "/upload/a", &api).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(UPLOAD_DENY),
        "the 403 names the rule:\n{body}"
    );
    assert!(
        body.contains("no allow rule can let this request through"),
        "{body}"
    );
    assert!(
        body.contains("It overrides the allow rule agent spec.allow[0]: domain=*"),
        "{body}"
    );
    assert!(body.contains("cluster's administrators"), "{body}");
    assert!(
        !body.contains("--allow") && !body.contains("To allow it"),
        "no allow rule is suggested:\n{body}"
    );
    assert_eq!(http.requests.load(Ordering::SeqCst), before, "never sent");

    // Intercepted HTTPS: the same request is refused inside TLS.
    let stream = sidecar.connect("api.test", https.port()).await;
    let tls = sidecar
        .tls(false)
        .connect("api.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    let api_tls = format!("api.test:{}", https.port());
    let (status, body) = request(tls, "POST", "/upload/b", &api_tls).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(UPLOAD_DENY), "{body}");

    // The audit trail names the deny rule, as denied by a deny rule.
    let records = sidecar.audit().await;
    let upload = find(&records, |r| {
        r["method"] == "POST" && r["path"] == "/upload/a"
    });
    assert_eq!(upload["decision"], "deny");
    assert_eq!(upload["rule"], UPLOAD_DENY);
    assert_eq!(upload["denied_by"], "deny-rule");
    assert_eq!(upload["status"], 403);
    assert!(
        upload["reason"]
            .as_str()
            .unwrap()
            .contains("wins over the allow rule agent spec.allow[0]: domain=*"),
        "{upload}"
    );
    let https_upload = find(&records, |r| r["path"] == "/upload/b");
    assert_eq!(
        (&https_upload["scheme"], &https_upload["rule"]),
        (&"https".into(), &UPLOAD_DENY.into())
    );
    let allowed = find(&records, |r| r["path"] == "/other");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["rule"], "agent spec.allow[0]: domain=*");
    assert!(allowed.get("denied_by").is_none(), "{allowed}");
}

#[tokio::test]
async fn a_cluster_whole_host_deny_beats_domain_star_over_https_http_tcp_and_connect() {
    require_root();
    let Setup {
        http,
        https,
        tcp_port,
        tcp_connections,
        sidecar,
        ..
    } = Setup::start("Enforce").await;
    // HTTPS refused before any certificate is minted...
    let https_before = https.connections.load(Ordering::SeqCst);
    let stream = sidecar.connect("paste.test", https.port()).await;
    let refused = sidecar
        .tls(false)
        .connect("paste.test".try_into().unwrap(), stream)
        .await
        .expect_err("TLS to a denied host succeeded");
    assert!(
        format!("{refused:?}").contains("AccessDenied"),
        "a TLS access_denied alert: {refused:?}"
    );
    // ...plain HTTP answered 403 naming the rule...
    let stream = sidecar.connect("paste.test", http.port()).await;
    let paste = format!("paste.test:{}", http.port());
    let (status, body) = request(stream, "GET", "/", &paste).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(PASTE_DENY), "{body}");
    // ...and the namespace's TCP rule for it does not relay.
    let stream = sidecar.connect("paste.test", tcp_port).await;
    let got = read_to_close(stream)
        .await
        .expect("the connection is closed");
    assert!(
        got.is_empty(),
        "nothing of the server reached the client: {got:?}"
    );
    // A deny rule with a method and path names api.test too: the proxy cannot see them in
    // plain TCP, so the namespace's TCP rule for api.test is beaten as well (fail closed).
    let stream = sidecar.connect("api.test", tcp_port).await;
    let got = read_to_close(stream)
        .await
        .expect("the connection is closed");
    assert!(got.is_empty(), "{got:?}");
    // The explicit proxy refuses a CONNECT tunnel to paste.test.
    let mut explicit = tokio::net::TcpStream::connect(sidecar.explicit)
        .await
        .unwrap();
    let connect =
        format!("CONNECT paste.test:{tcp_port} HTTP/1.1\r\nHost: paste.test:{tcp_port}\r\n\r\n");
    explicit.write_all(connect.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), explicit.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains(PASTE_DENY), "{answer}");
    assert_eq!(
        https.connections.load(Ordering::SeqCst),
        https_before,
        "no upstream connection for the denied host"
    );
    assert_eq!(tcp_connections.load(Ordering::SeqCst), 0);

    let records = sidecar.audit().await;
    for (scheme, port) in [
        ("tls", https.port()),
        ("http", http.port()),
        ("tcp", tcp_port),
    ] {
        let r = find(&records, |r| {
            r["host"] == "paste.test" && r["scheme"] == scheme && r["port"] == port
        });
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["rule"], PASTE_DENY, "{r}");
        assert_eq!(r["denied_by"], "deny-rule", "{r}");
    }
    let api_tcp = find(&records, |r| {
        r["host"] == "api.test" && r["scheme"] == "tcp"
    });
    assert_eq!(api_tcp["decision"], "deny", "{api_tcp}");
    assert_eq!(api_tcp["rule"], UPLOAD_DENY, "{api_tcp}");
    assert!(
        api_tcp["reason"]
            .as_str()
            .unwrap()
            .contains("cannot see the method or path of a plain TCP connection"),
        "{api_tcp}"
    );
    let connect = find(&records, |r| r["method"] == "CONNECT");
    assert_eq!(
        (&connect["decision"], &connect["rule"]),
        (&"deny".into(), &PASTE_DENY.into())
    );
}

#[tokio::test]
async fn in_audit_mode_what_a_deny_rule_matches_is_relayed_and_recorded_as_would_deny() {
    require_root();
    let Setup {
        http,
        https,
        tcp_port,
        tcp_connections,
        sidecar,
        ..
    } = Setup::start("Audit").await;
    let stream = sidecar.connect("api.test", http.port()).await;
    let api = format!("api.test:{}", http.port());
    let (status, body) = request(stream, "POST", "/upload/a", &api).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello POST api.test"), "{body}");
    // HTTPS to a whole-host-denied name is intercepted and forwarded.
    let stream = sidecar.connect("paste.test", https.port()).await;
    let tls = sidecar
        .tls(false)
        .connect("paste.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    let paste = format!("paste.test:{}", https.port());
    let (status, body) = request(tls, "GET", "/x", &paste).await;
    assert_eq!(status, 200, "{body}");
    // The TCP rule relays, the deny rule notwithstanding.
    let mut stream = sidecar.connect("paste.test", tcp_port).await;
    let mut banner = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner[..n], b"SSH-2.0-test\r\n");
    drop(stream);
    assert_eq!(tcp_connections.load(Ordering::SeqCst), 1);

    let records = sidecar.audit().await;
    for (what, record, rule) in [
        (
            "http",
            find(&records, |r| r["path"] == "/upload/a"),
            UPLOAD_DENY,
        ),
        ("https", find(&records, |r| r["path"] == "/x"), PASTE_DENY),
        (
            "tcp",
            find(&records, |r| r["scheme"] == "tcp" && r["port"] == tcp_port),
            PASTE_DENY,
        ),
    ] {
        assert_eq!(record["decision"], "would-deny", "{what}: {record}");
        assert_eq!(record["mode"], "Audit", "{what}: {record}");
        assert_eq!(record["rule"], rule, "{what}: {record}");
        assert_eq!(record["denied_by"], "deny-rule", "{what}: {record}");
    }
}

#[tokio::test]
async fn boundary_run_deny_rules_hold_in_a_real_jail() {
    require_root();
    let ca = TestCa::new();
    let http = TestServer::start(None).await;
    let https = TestServer::start(Some(
        ca.server_config(&["allowed.test", "other.test"], common::Alpn::Http1),
    ))
    .await;
    let audit = TempDir::new("deny-audit");
    let audit_file = audit.path().join("audit.jsonl");
    let script = format!(
        "curl -sS http://allowed.test:{h}/x; \
         curl -sS http://allowed.test:{h}/secret/key; \
         curl -sS https://other.test:{s}/w 2>&1 | head -c 300; echo",
        h = http.port(),
        s = https.port()
    );
    let args = [
        "--allow",
        "domain=*",
        "--deny",
        "domain=allowed.test path=/secret/*",
        "--deny",
        "domain=other.test",
        "--resolve",
        "allowed.test=127.0.0.1",
        "--resolve",
        "other.test=127.0.0.1",
        "--upstream-ca",
        ca.pem_path.to_str().unwrap(),
        "--audit-file",
        audit_file.to_str().unwrap(),
    ];
    let out = jailed(As::Nobody, &args, &script).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(
        text.contains(&format!("hello GET allowed.test:{} /x", http.port())),
        "{text}"
    );
    assert!(
        text.contains("Denied by a deny rule")
            && text.contains("--deny[0]: domain=allowed.test path=/secret/*"),
        "{text}"
    );
    assert!(
        !text.contains("ClusterBoundaryPolicy"),
        "a command-line rule is not the cluster's:\n{text}"
    );
    assert!(text.contains("alert access denied"), "{text}");
    assert_eq!(https.connections.load(Ordering::SeqCst), 0);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let secret = find(&records, |r| r["path"] == "/secret/key");
    assert_eq!(secret["decision"], "deny");
    assert_eq!(
        secret["rule"],
        "--deny[0]: domain=allowed.test path=/secret/*"
    );
    assert_eq!(secret["denied_by"], "deny-rule");
    let other = find(&records, |r| r["host"] == "other.test");
    assert_eq!(other["scheme"], "tls");
    assert_eq!(other["rule"], "--deny[1]: domain=other.test");
}

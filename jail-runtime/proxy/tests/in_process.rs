//! The policy proxy in-process, as any user (no namespaces, no binary): `Proxy::start` with its
//! rules, `serve_connection` and `serve_explicit` over `UnixStream::pair()`, real HTTP(S)
//! upstreams on loopback reached through the resolve map, a test CA for them, and the audit
//! trail read back from its file. Each request or connection is checked for its answer and its
//! single audit line.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use boundary_api::Mode;
use boundary_api::rules::{self, RuleSet, RuleSource};
use boundary_proxy::audit::{Format, Identity, Options, Sink};
use boundary_proxy::policy::{PolicyStore, Source};
use boundary_proxy::tls::CertAuthority;
use boundary_proxy::{Destination, Proxy, ProxyConfig};
use boundary_test_kit::{Alpn, TestCa, TestServer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Names the proxy resolves to loopback, where the test upstreams listen.
const NAMES: [&str; 4] = ["api.test", "pass.test", "nothing.test", "open.test"];

/// A proxy started in this process, with its audit file.
struct InProcess {
    proxy: Proxy,
    ca_pem: String,
    audit: PathBuf,
    _dir: TempDir,
}

impl InProcess {
    /// A proxy enforcing `allow` and `deny` (Coder grammar; a `tls=Passthrough` rule is
    /// structured) in `mode`, trusting `upstream_ca` for upstreams.
    fn start(allow: &[&str], deny: &[&str], mode: Mode, upstream_ca: &TestCa) -> InProcess {
        InProcess::start_with(allow, deny, &[], mode, upstream_ca, Options::default())
    }

    /// As [`InProcess::start`], with TCP rules and audit options.
    fn start_with(
        allow: &[&str],
        deny: &[&str],
        tcp: &[boundary_api::TcpRule],
        mode: Mode,
        upstream_ca: &TestCa,
        audit_options: Options,
    ) -> InProcess {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (allow, deny) = (strings(allow), strings(deny));
        let http = [boundary_api::HttpRule {
            domains: vec!["pass.test".into()],
            tls: boundary_api::TlsMode::Passthrough,
            ..boundary_api::HttpRule::default()
        }];
        let compiled = rules::compile(RuleSource {
            policy: Some("agent"),
            field_prefix: "spec.",
            allow: &allow,
            deny: &deny,
            http: &http,
            tcp,
            ..RuleSource::default()
        })
        .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("in-process")
            .tempdir()
            .unwrap();
        let audit = dir.path().join("audit.jsonl");
        let ca = CertAuthority::generate("in-process").unwrap();
        let ca_pem = ca.ca_pem().to_owned();
        let resolve: HashMap<String, IpAddr> = NAMES
            .iter()
            .map(|n| ((*n).to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .collect();
        let proxy = Proxy::start(ProxyConfig {
            session: "in-process".into(),
            identity: Identity::default(),
            tier: None,
            policy: PolicyStore::load(Source::Static(Arc::new(RuleSet::new(compiled, mode))))
                .unwrap(),
            upstream_cas: vec![upstream_ca.pem_path.clone()],
            resolve,
            upstream_dns: None,
            audit: Sink::File(audit.clone()),
            audit_options,
            ca: Arc::new(ca),
            upstream_timeout: Duration::from_secs(10),
            credential_values: boundary_proxy::credentials::values::ValueSource::None,
        })
        .unwrap();
        InProcess {
            proxy,
            ca_pem,
            audit,
            _dir: dir,
        }
    }

    /// A connection as the jail's forwarder hands it over: to `name` on `port`.
    fn connect(&self, name: &str, port: u16) -> UnixStream {
        let (client, served) = UnixStream::pair().unwrap();
        let dest = Destination {
            dst: format!("198.18.0.9:{port}").parse().unwrap(),
            name: Some(name.to_owned()),
            container: Some("agent".into()),
            tier: None,
        };
        let proxy = self.proxy.clone();
        tokio::spawn(async move { proxy.serve_connection(Box::new(served), dest).await });
        client
    }

    /// An explicit-proxy client's connection (`HTTP_PROXY`, CONNECT).
    fn explicit(&self) -> UnixStream {
        let (client, served) = UnixStream::pair().unwrap();
        let proxy = self.proxy.clone();
        tokio::spawn(async move {
            proxy
                .serve_explicit(Box::new(served), Some("agent".into()), None)
                .await;
        });
        client
    }

    /// A TLS client trusting the proxy's CA (interception) and speaking HTTP/1.1.
    fn tls_client(&self) -> tokio_rustls::TlsConnector {
        connector(&self.ca_pem)
    }

    /// The audit lines once there are `count` of them; then, after the writer had time for
    /// more, that there are still exactly `count`.
    async fn audit_lines(&self, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            self.proxy.flush().await;
            if self.read_audit().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.proxy.flush().await;
        let lines = self.read_audit();
        assert_eq!(lines.len(), count, "one audit line each: {lines:#?}");
        lines
    }

    fn read_audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http1<S>(io: S) -> Sender
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request on `sender`: (status, body).
async fn send(sender: &mut Sender, method: &str, path: &str, host: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_allowed_request_is_forwarded_and_audited_once() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let proxy = InProcess::start(&["domain=api.test path=/v1/*"], &[], Mode::Enforce, &ca);
    let mut sender = http1(proxy.connect("api.test", up.port())).await;
    let host = format!("api.test:{}", up.port());
    let (status, body) = send(&mut sender, "GET", "/v1/items", &host).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello GET api.test"), "{body}");
    let lines = proxy.audit_lines(1).await;
    let line = &lines[0];
    assert_eq!(field(line, "decision"), "allow");
    assert_eq!(field(line, "scheme"), "http");
    assert_eq!(field(line, "method"), "GET");
    assert_eq!(field(line, "path"), "/v1/items");
    assert_eq!(field(line, "container"), "agent");
    assert_eq!(line["status"], 200);
    assert!(field(line, "rule").contains("spec.allow[0]"), "{line}");
    assert_eq!(line["bytes_in"], 4, "the request body: {line}");
    assert_eq!(
        line["bytes_out"].as_u64().unwrap(),
        body.len() as u64,
        "{line}"
    );
}

#[tokio::test]
async fn a_request_no_rule_allows_gets_403_with_the_rule_that_would_allow_it() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let proxy = InProcess::start(&["domain=api.test path=/v1/*"], &[], Mode::Enforce, &ca);
    let mut sender = http1(proxy.connect("api.test", up.port())).await;
    let host = format!("api.test:{}", up.port());
    let (status, body) = send(&mut sender, "GET", "/admin", &host).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("boundary run --allow \"domain=api.test method=GET path=/admin\""),
        "the 403 names the rule that would allow it:\n{body}"
    );
    assert!(
        body.contains("path not allowed"),
        "and the rule that came close:\n{body}"
    );
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let lines = proxy.audit_lines(1).await;
    assert_eq!(field(&lines[0], "decision"), "deny");
    assert_eq!(lines[0]["status"], 403);
    assert!(
        field(&lines[0], "reason").contains("path not allowed by"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_deny_rule_beats_the_allow_rule_and_is_named() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let proxy = InProcess::start(
        &["domain=api.test"],
        &["domain=api.test method=POST path=/upload/*"],
        Mode::Enforce,
        &ca,
    );
    let mut sender = http1(proxy.connect("api.test", up.port())).await;
    let host = format!("api.test:{}", up.port());
    let (status, body) = send(&mut sender, "POST", "/upload/a", &host).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("spec.deny[0]"),
        "names the deny rule:\n{body}"
    );
    assert!(
        body.contains("It overrides the allow rule agent spec.allow[0]"),
        "{body}"
    );
    assert!(
        !body.contains("boundary run --allow"),
        "no allow rule is suggested:\n{body}"
    );
    assert_eq!(send(&mut sender, "POST", "/other", &host).await.0, 200);
    let lines = proxy.audit_lines(2).await;
    assert_eq!(field(&lines[0], "decision"), "deny");
    assert_eq!(field(&lines[0], "denied_by"), "deny-rule");
    assert!(
        field(&lines[0], "rule").contains("spec.deny[0]"),
        "{}",
        lines[0]
    );
    assert_eq!(field(&lines[1], "decision"), "allow");
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "only the allowed request went out"
    );
}

#[tokio::test]
async fn in_audit_mode_a_refused_request_is_forwarded_as_would_deny() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let proxy = InProcess::start(&["domain=api.test path=/v1/*"], &[], Mode::Audit, &ca);
    let mut sender = http1(proxy.connect("api.test", up.port())).await;
    let host = format!("api.test:{}", up.port());
    assert_eq!(send(&mut sender, "GET", "/admin", &host).await.0, 200);
    let lines = proxy.audit_lines(1).await;
    assert_eq!(field(&lines[0], "decision"), "would-deny");
    assert_eq!(field(&lines[0], "mode"), "Audit");
    assert_eq!(lines[0]["status"], 200);
}

#[tokio::test]
async fn tls_to_a_host_no_rule_allows_gets_an_alert_before_any_certificate() {
    let ca = TestCa::new();
    let up = TestServer::start(Some(ca.server_config(&["nothing.test"], Alpn::Http1))).await;
    let proxy = InProcess::start(&["domain=api.test"], &[], Mode::Enforce, &ca);
    let stream = proxy.connect("nothing.test", up.port());
    let name = rustls::pki_types::ServerName::try_from("nothing.test").unwrap();
    let err = proxy
        .tls_client()
        .connect(name, stream)
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("AccessDenied"),
        "a TLS access_denied alert: {err}"
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        0,
        "no upstream connection"
    );
    let lines = proxy.audit_lines(1).await;
    assert_eq!(field(&lines[0], "scheme"), "tls");
    assert_eq!(field(&lines[0], "decision"), "deny");
    assert!(
        field(&lines[0], "reason").contains("no rule allows HTTPS to nothing.test"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn intercepted_https_is_checked_request_by_request() {
    let ca = TestCa::new();
    let up = TestServer::start(Some(ca.server_config(&["api.test"], Alpn::Http1))).await;
    let proxy = InProcess::start(&["domain=api.test path=/v1/*"], &[], Mode::Enforce, &ca);
    let stream = proxy.connect("api.test", up.port());
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = proxy.tls_client().connect(name, stream).await.unwrap();
    let mut sender = http1(tls).await;
    let host = format!("api.test:{}", up.port());
    assert_eq!(send(&mut sender, "GET", "/v1/a", &host).await.0, 200);
    assert_eq!(send(&mut sender, "GET", "/admin", &host).await.0, 403);
    let lines = proxy.audit_lines(2).await;
    assert_eq!(field(&lines[0], "scheme"), "https");
    assert_eq!(field(&lines[0], "decision"), "allow");
    assert_eq!(field(&lines[1], "decision"), "deny");
}

#[tokio::test]
async fn passthrough_relays_tls_uninspected() {
    let ca = TestCa::new();
    let up = TestServer::start(Some(ca.server_config(&["pass.test"], Alpn::Http1))).await;
    let proxy = InProcess::start(&[], &[], Mode::Enforce, &ca);
    let stream = proxy.connect("pass.test", up.port());
    // The client trusts the upstream's CA only, not the proxy's: it talks to the upstream itself.
    let upstream_ca = std::fs::read_to_string(&ca.pem_path).unwrap();
    let name = rustls::pki_types::ServerName::try_from("pass.test").unwrap();
    let tls = connector(&upstream_ca).connect(name, stream).await.unwrap();
    let mut sender = http1(tls).await;
    let (status, body) = send(&mut sender, "GET", "/x", "pass.test").await;
    assert_eq!(status, 200, "{body}");
    drop(sender);
    let lines = proxy.audit_lines(1).await;
    assert_eq!(field(&lines[0], "scheme"), "tls");
    assert_eq!(field(&lines[0], "decision"), "allow");
    assert!(
        field(&lines[0], "rule").contains("spec.http[0]"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].get("path").is_none(),
        "nothing inside is seen: {}",
        lines[0]
    );
}

#[tokio::test]
async fn connect_tunnels_to_an_allowed_host_and_refuses_others() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let proxy = InProcess::start(&["domain=api.test path=/v1/*"], &[], Mode::Enforce, &ca);

    let mut client = proxy.explicit();
    let connect = format!(
        "CONNECT api.test:{0} HTTP/1.1\r\nHost: api.test:{0}\r\n\r\n",
        up.port()
    );
    client.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    // The rest of the response head, up to its blank line.
    let mut end = Vec::new();
    while !end.ends_with(b"\r\n\r\n") {
        end.push(client.read_u8().await.unwrap());
    }
    let mut sender = http1(client).await;
    let host = format!("api.test:{}", up.port());
    assert_eq!(send(&mut sender, "GET", "/v1/a", &host).await.0, 200);
    assert_eq!(
        send(&mut sender, "GET", "/admin", &host).await.0,
        403,
        "checked inside the tunnel"
    );

    let mut refused = http1(proxy.explicit()).await;
    let req = Request::builder()
        .method("CONNECT")
        .uri("nothing.test:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = refused.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("no rule allows this host"),
        "{body:?}"
    );

    let lines = proxy.audit_lines(3).await;
    let summary: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| (field(l, "method"), field(l, "host"), field(l, "decision")))
        .collect();
    for expected in [
        ("GET", "api.test", "allow"),
        ("GET", "api.test", "deny"),
        ("CONNECT", "nothing.test", "deny"),
    ] {
        assert!(summary.contains(&expected), "{expected:?} in {summary:?}");
    }
}

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_checked_and_audited_once() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let proxy = InProcess::start(&["domain=api.test path=/v1/*"], &[], Mode::Enforce, &ca);
    let mut sender = http1(proxy.connect("api.test", up.port())).await;
    let host = format!("api.test:{}", up.port());
    assert_eq!(send(&mut sender, "GET", "/v1/a", &host).await.0, 200);
    assert_eq!(send(&mut sender, "GET", "/admin", &host).await.0, 403);
    assert_eq!(
        send(&mut sender, "GET", "/v1/b", &host).await.0,
        200,
        "the connection survives a denial"
    );
    let lines = proxy.audit_lines(3).await;
    let paths: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (field(l, "path"), field(l, "decision")))
        .collect();
    assert_eq!(
        paths,
        [("/v1/a", "allow"), ("/admin", "deny"), ("/v1/b", "allow")]
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn a_client_that_sends_nothing_to_a_host_no_rule_allows_is_closed_and_audited_once() {
    let ca = TestCa::new();
    let proxy = InProcess::start(&["domain=api.test"], &[], Mode::Enforce, &ca);
    let mut client = proxy.connect("nothing.test", 22);
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty(), "closed without an answer");
    let lines = proxy.audit_lines(1).await;
    assert_eq!(field(&lines[0], "scheme"), "tcp");
    assert_eq!(field(&lines[0], "decision"), "deny");
    assert!(
        field(&lines[0], "reason").contains("add a tcp rule {domain: nothing.test, ports: [22]}"),
        "{}",
        lines[0]
    );
}

mod ocsf_schema;

/// The OCSF events whose `unmapped` has `key` = `value`.
fn ocsf_with<'a>(lines: &'a [Value], key: &str, value: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["unmapped"][key].as_str() == Some(value))
        .collect()
}

#[tokio::test]
async fn ocsf_records_of_every_kind_are_valid_ocsf_1_3_0() {
    let ca = TestCa::new();
    let up = TestServer::start(None).await;
    let tls_up = TestServer::start(Some(
        ca.server_config(&["api.test", "pass.test"], Alpn::Http1),
    ))
    .await;
    let tcp = [boundary_api::TcpRule {
        domain: "open.test".into(),
        ports: vec![boundary_api::Port::new(up.port()).unwrap()],
    }];
    let ocsf = Options {
        format: Format::Ocsf,
        rotation: None,
    };
    let proxy = InProcess::start_with(
        &["domain=api.test path=/v1/*", "domain=localhost"],
        &["domain=api.test path=/v1/secret/*"],
        &tcp,
        Mode::Enforce,
        &ca,
        ocsf,
    );
    let host = format!("api.test:{}", up.port());
    let mut sender = http1(proxy.connect("api.test", up.port())).await;
    // Allowed (the query never reaches the trail), no rule, a deny rule, PATCH (activity 99).
    assert_eq!(
        send(&mut sender, "GET", "/v1/items?token=q-secret", &host)
            .await
            .0,
        200
    );
    assert_eq!(send(&mut sender, "GET", "/admin", &host).await.0, 403);
    assert_eq!(send(&mut sender, "GET", "/v1/secret/x", &host).await.0, 403);
    assert_eq!(send(&mut sender, "PATCH", "/v1/items", &host).await.0, 200);
    drop(sender);
    // Intercepted HTTPS.
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = proxy
        .tls_client()
        .connect(name, proxy.connect("api.test", tls_up.port()))
        .await
        .unwrap();
    let mut sender = http1(tls).await;
    assert_eq!(send(&mut sender, "POST", "/v1/a", "api.test").await.0, 200);
    drop(sender);
    // TLS passthrough: the client trusts the upstream's CA, not the proxy's.
    let upstream_ca = std::fs::read_to_string(&ca.pem_path).unwrap();
    let name = rustls::pki_types::ServerName::try_from("pass.test").unwrap();
    let tls = connector(&upstream_ca)
        .connect(name, proxy.connect("pass.test", tls_up.port()))
        .await
        .unwrap();
    let mut sender = http1(tls).await;
    assert_eq!(send(&mut sender, "GET", "/x", "pass.test").await.0, 200);
    drop(sender);
    // A TCP rule: relayed as is.
    let mut relayed = proxy.connect("open.test", up.port());
    relayed
        .write_all(b"GET /raw HTTP/1.1\r\nHost: open.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    relayed.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // The relay's record is written once both directions ended.
    drop(relayed);
    // No rule for a raw connection: closed.
    let mut closed = proxy.connect("nothing.test", 22);
    let mut nothing = Vec::new();
    closed.read_to_end(&mut nothing).await.unwrap();
    // CONNECT to a host no rule allows.
    let mut refused = http1(proxy.explicit()).await;
    let req = Request::builder()
        .method("CONNECT")
        .uri("nothing.test:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(refused.send_request(req).await.unwrap().status(), 403);
    // The private-address guard: `localhost` is allowed by name but resolves (not pinned) to
    // loopback.
    let mut guarded = http1(proxy.connect("localhost", up.port())).await;
    let local = format!("localhost:{}", up.port());
    assert_eq!(send(&mut guarded, "GET", "/", &local).await.0, 403);
    drop(guarded);
    // Events, through the proxy's own entry points as `boundary run` and the sidecar use them.
    for refused in [false, true] {
        proxy.proxy.record_inbound(
            Some("agent".into()),
            None,
            boundary_proxy::session::InboundEvent {
                peer: "10.1.2.3:45678".parse().unwrap(),
                port: 8080,
                refused,
                bytes_in: 10,
                bytes_out: 20,
                duration_ms: 3,
            },
        );
    }
    let events = [
        (
            "sidecar-restart",
            serde_json::json!({"ca": "new", "ca_replaced": "expired", "jails": []}),
        ),
        (
            "policy-missing",
            serde_json::json!({"file": "/etc/p.json", "policyHash": null, "kept": "deny-all"}),
        ),
        (
            "policy-restored",
            serde_json::json!({"file": "/etc/p.json"}),
        ),
        (
            "unreachable-sidecar",
            serde_json::json!({"decision": "deny", "reason": "unreachable", "destination": "198.18.0.5:443", "host": "api.test", "port": 443, "at": "2026-01-01T00:00:00Z"}),
        ),
        (
            "unreachable-sidecar-summary",
            serde_json::json!({"refused": 1, "listed": 1, "dropped": 0}),
        ),
        (
            "credential-leak",
            serde_json::json!({"decision": "deny", "host": "api.test", "port": 443, "method": "POST", "path": "/upload", "reason": "leak", "leak": {"credential": "api", "where": "body"}}),
        ),
    ];
    for (kind, detail) in events.clone() {
        proxy
            .proxy
            .record_event(kind, Some("agent".into()), None, detail);
    }
    let lines = proxy.audit_lines(12 + events.len()).await;
    let text = serde_json::to_string(&lines).unwrap();
    assert!(
        !text.contains("q-secret") && !text.contains('?'),
        "no query: {text}"
    );
    ocsf_schema::assert_valid(&lines);

    let http: Vec<&Value> = lines.iter().filter(|l| l["class_uid"] == 4002).collect();
    let allowed = http
        .iter()
        .find(|l| l["http_request"]["url"]["path"] == "/v1/items" && l["activity_id"] == 3)
        .expect("the allowed GET");
    assert_eq!(allowed["http_response"]["code"], 200);
    assert_eq!(allowed["action_id"], 1);
    assert_eq!(allowed["dst_endpoint"]["hostname"], "api.test");
    assert_eq!(allowed["metadata"]["uid"], "in-process");
    assert!(field(&allowed["unmapped"], "rule").contains("spec.allow[0]"));
    let patch = http.iter().find(|l| l["activity_id"] == 99).expect("PATCH");
    assert_eq!(patch["activity_name"], "Patch");
    let https = http
        .iter()
        .find(|l| l["http_request"]["url"]["scheme"] == "https")
        .expect("intercepted HTTPS");
    assert_eq!(https["http_request"]["http_method"], "POST");
    let denied: Vec<&&Value> = http.iter().filter(|l| l["action_id"] == 2).collect();
    assert!(
        denied
            .iter()
            .all(|l| l["disposition_id"] == 2 && l["severity_id"] == 3),
        "{denied:#?}"
    );
    assert_eq!(ocsf_with(&lines, "denied_by", "deny-rule").len(), 1);
    let guard = ocsf_with(&lines, "denied_by", "private-address-guard");
    assert_eq!(guard.len(), 1, "{lines:#?}");
    assert_eq!(guard[0]["dst_endpoint"]["hostname"], "localhost");

    let network: Vec<&Value> = lines
        .iter()
        .filter(|l| l["class_uid"] == 4001 && l["connection_info"]["direction_id"] == 2)
        .collect();
    let tcp = ocsf_with(&lines, "scheme", "tcp");
    let relay = tcp
        .iter()
        .find(|l| l["activity_id"] == 1)
        .expect("the TCP relay");
    assert!(
        relay["traffic"]["bytes_out"].as_u64().unwrap() > 0,
        "{relay}"
    );
    let connect = tcp
        .iter()
        .find(|l| l["unmapped"]["method"] == "CONNECT")
        .expect("the CONNECT refusal");
    assert_eq!(
        (
            connect["activity_id"].as_u64(),
            connect["action_id"].as_u64()
        ),
        (Some(5), Some(2))
    );
    assert_eq!(ocsf_with(&lines, "scheme", "tls")[0]["class_uid"], 4001);
    assert!(network.len() >= 4, "{network:#?}");

    let inbound = ocsf_with(&lines, "kind", "inbound");
    assert_eq!(inbound.len(), 2);
    assert_eq!(inbound[0]["connection_info"]["direction_id"], 1);
    assert_eq!(inbound[0]["src_endpoint"]["ip"], "10.1.2.3");
    assert_eq!(inbound[1]["activity_id"], 5);
    for (kind, class) in [
        ("sidecar-restart", 6002),
        ("policy-missing", 0),
        ("policy-restored", 0),
        ("unreachable-sidecar", 4001),
        ("unreachable-sidecar-summary", 0),
        ("credential-leak", 4002),
    ] {
        let found = ocsf_with(&lines, "kind", kind);
        assert_eq!(found.len(), 1, "{kind}");
        assert_eq!(found[0]["class_uid"], class, "{kind}");
        assert_eq!(found[0]["unmapped"]["container"], "agent", "{kind}");
    }

    // Audit mode: let through, recorded as would-deny, Allowed with Medium severity.
    let audit_mode = InProcess::start_with(
        &["domain=api.test path=/v1/*"],
        &[],
        &[],
        Mode::Audit,
        &ca,
        ocsf,
    );
    let mut sender = http1(audit_mode.connect("api.test", up.port())).await;
    assert_eq!(send(&mut sender, "DELETE", "/admin", &host).await.0, 200);
    let lines = audit_mode.audit_lines(1).await;
    ocsf_schema::assert_valid(&lines);
    let line = &lines[0];
    assert_eq!(line["unmapped"]["decision"], "would-deny");
    assert_eq!(line["unmapped"]["mode"], "Audit");
    assert_eq!(
        (line["action_id"].as_u64(), line["severity_id"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(line["activity_id"], 2);
}
